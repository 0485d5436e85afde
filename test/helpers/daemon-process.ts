/**
 * `kdbus-cuse serve` as a child process of a test: its combined output, how it ended, and a
 * stop that escalates to SIGKILL when SIGTERM is ignored.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

const PROJECT = path.resolve(__dirname, '..', '..', '..');

export class DaemonProcess {
  log = '';
  exited: string | undefined;
  readonly child: ChildProcess;
  private readonly done: Promise<void>;

  constructor(args: string[]) {
    this.child = spawn(process.execPath, [path.join(PROJECT, 'bin/kdbus-cuse'), 'serve', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout!.on('data', (d: Buffer) => (this.log += d.toString()));
    this.child.stderr!.on('data', (d: Buffer) => (this.log += d.toString()));
    this.done = new Promise((resolve) =>
      this.child.on('exit', (code, signal) => {
        this.exited = signal ? `signal ${signal}` : `code ${code}`;
        resolve();
      }),
    );
  }

  /** The last lines of the daemon's log, for a failure message. */
  tail(lines = 30): string {
    return this.log.trimEnd().split('\n').slice(-lines).join('\n');
  }

  /** How it ended: SIGTERM's result, or a note that SIGKILL was needed after `ms`. */
  async stop(ms: number): Promise<string> {
    if (!this.exited) this.child.kill('SIGTERM');
    const timeout = new Promise<void>((resolve) => setTimeout(resolve, ms));
    await Promise.race([this.done, timeout]);
    if (!this.exited) {
      this.child.kill('SIGKILL');
      await this.done;
      return 'killed after SIGTERM was ignored';
    }
    return this.exited;
  }
}
