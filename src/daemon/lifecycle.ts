/**
 * The daemon's life under a service manager (systemd, OpenRC, a container runtime): ready
 * once started, reload on SIGHUP, stop on SIGTERM or SIGINT, each step reported through
 * sd_notify when the manager asked for it (NOTIFY_SOCKET) and in the log in any case.
 *
 * Signals are taken over when this object is made, before the daemon starts, so a SIGTERM
 * during start-up stops the daemon cleanly once it is up instead of killing it with its
 * nodes left in place, and a SIGHUP then does not end the process (its default action).
 */
import type { Config } from '../config/config';
import { logger } from '../log/logger';
import type { SdNotifier } from '../os/sd-notify';
import type { Daemon } from './daemon';
import { applyReload } from './reload';

type Request = { kind: 'reload' } | { kind: 'stop'; signal: string };

export interface LifecycleOptions {
  /** Present when a service manager asked for notifications. */
  notifier: SdNotifier | undefined;
  /** Reads the configuration again from the same file and flags; throws what loading throws. */
  readConfig: () => Config;
}

export class ServiceLifecycle {
  private readonly queue: Request[] = [];
  private wake: (() => void) | undefined;
  private readonly handlers: Array<[NodeJS.Signals, () => void]>;

  constructor(private readonly daemon: Daemon, private readonly opts: LifecycleOptions) {
    this.handlers = [
      ['SIGTERM', () => this.push({ kind: 'stop', signal: 'SIGTERM' })],
      ['SIGINT', () => this.push({ kind: 'stop', signal: 'SIGINT' })],
      ['SIGHUP', () => this.push({ kind: 'reload' })],
    ];
    for (const [sig, h] of this.handlers) process.on(sig, h);
  }

  private push(r: Request): void {
    this.queue.push(r);
    this.wake?.();
  }

  private async next(): Promise<Request> {
    while (this.queue.length === 0) await new Promise<void>((resolve) => (this.wake = resolve));
    this.wake = undefined;
    // A stop outranks reloads still waiting; reloads asked for together are one reload.
    const stop = this.queue.find((r) => r.kind === 'stop');
    this.queue.length = 0;
    return stop ?? { kind: 'reload' };
  }

  /**
   * Call once the daemon has started: reports ready, serves reloads, and resolves with the
   * signal's name when a stop was asked for (the manager has been told STOPPING=1). Signals
   * after that are logged and otherwise ignored: the stop is under way.
   */
  async run(): Promise<string> {
    this.notify((n) => n.ready(this.status()));
    for (;;) {
      const r = await this.next();
      if (r.kind === 'stop') {
        logger.info(`${r.signal}: shutting down`);
        this.notify((n) => n.stopping(`shutting down (${r.signal})`));
        this.release();
        return r.signal;
      }
      await this.reload();
    }
  }

  private async reload(): Promise<void> {
    logger.info('SIGHUP: reloading the configuration');
    this.notify((n) => n.reloading('reloading the configuration'));
    let note: string | undefined;
    try {
      const next = this.opts.readConfig();
      const { pending } = await applyReload(this.daemon, next);
      if (pending.length > 0) note = `waiting for a restart: ${pending.join(', ')}`;
      logger.info(`reload done${note ? `; ${note}` : ''}`);
    } catch (e) {
      note = `reload failed, previous configuration kept: ${(e as Error).message}`;
      logger.error(note);
    }
    this.notify((n) => n.ready(this.status(note)));
  }

  /** The one-line state systemctl status shows. */
  private status(note?: string): string {
    return `serving ${this.daemon.config.buses.join(', ')}${note ? `; ${note}` : ''}`;
  }

  /** A failed notification must not take the daemon down; the manager's timeout reports it. */
  private notify(send: (n: SdNotifier) => void): void {
    if (!this.opts.notifier) return;
    try {
      send(this.opts.notifier);
    } catch (e) {
      logger.warn((e as Error).message);
    }
  }

  /** Stops serving signals as requests; later ones are only logged until the process exits. */
  private release(): void {
    for (const [sig, h] of this.handlers) process.off(sig, h);
    for (const [sig] of this.handlers) process.on(sig, () => logger.info(`${sig}: already shutting down`));
  }
}
