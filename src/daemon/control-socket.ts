/**
 * The control socket of `kdbus-cuse status` and `kdbus-cuse monitor`: one JSON request
 * line, then one JSON answer (status) or a JSON line per message until the client hangs up
 * (monitor). Who may ask is the file system's decision: the socket is 0600 (root only), or
 * 0660 with the configured group.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { logger } from '../log/logger';
import { MatchRule, MatchRuleInvalid } from '../dbus1/match-rule';
import type { Domain } from '../bus/domain';
import { MonitorFeed } from './monitor-feed';
import { busesStatus, type DaemonStatus } from './status';

export type ControlRequest = { command: 'status' } | { command: 'monitor'; bus?: string; rules?: string[] };

/** What the daemon tells about itself besides the buses. */
export interface ControlInfo {
  version: string;
  transports(): string[];
  legacy(): DaemonStatus['legacy'];
  upstream(): DaemonStatus['upstream'];
}

const MAX_REQUEST = 64 * 1024;

export class ControlSocket {
  private server: net.Server | undefined;
  private readonly feeds = new Set<MonitorFeed>();
  private readonly sockets = new Set<net.Socket>();
  private readonly started = Date.now();

  constructor(
    private readonly file: string,
    private readonly domain: Domain,
    private readonly info: ControlInfo,
    private readonly group: number | undefined,
  ) {}

  async start(): Promise<void> {
    fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o755 });
    fs.rmSync(this.file, { force: true });
    const server = net.createServer((s) => this.serve(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.file, () => resolve());
    });
    server.on('error', (e) => logger.warn(`control socket: ${e.message}`));
    this.server = server;
    if (this.group !== undefined) {
      fs.chownSync(this.file, process.getuid?.() ?? 0, this.group);
      fs.chmodSync(this.file, 0o660);
    } else {
      fs.chmodSync(this.file, 0o600);
    }
  }

  private serve(s: net.Socket): void {
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    let buf = '';
    s.setEncoding('utf8');
    s.on('error', () => s.destroy());
    const onData = (chunk: string): void => {
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > MAX_REQUEST) this.fail(s, 'request too long');
        return;
      }
      s.off('data', onData);
      let req: ControlRequest;
      try {
        req = JSON.parse(buf.slice(0, nl)) as ControlRequest;
      } catch {
        this.fail(s, 'the request is not JSON');
        return;
      }
      this.handle(s, req);
    };
    s.on('data', onData);
  }

  private fail(s: net.Socket, error: string): void {
    s.end(`${JSON.stringify({ error })}\n`);
  }

  private handle(s: net.Socket, req: ControlRequest): void {
    if (req.command === 'status') {
      const status: DaemonStatus = {
        version: this.info.version,
        pid: process.pid,
        uptimeSeconds: Math.round((Date.now() - this.started) / 1000),
        transports: this.info.transports(),
        legacy: this.info.legacy(),
        upstream: this.info.upstream(),
        buses: busesStatus(this.domain),
      };
      s.end(`${JSON.stringify(status)}\n`);
      return;
    }
    if (req.command === 'monitor') {
      this.monitor(s, req);
      return;
    }
    this.fail(s, `unknown command ${JSON.stringify((req as { command?: unknown }).command)}`);
  }

  private monitor(s: net.Socket, req: { bus?: string; rules?: string[] }): void {
    const bus = req.bus ? this.domain.buses.get(req.bus) : this.domain.buses.values().next().value;
    if (!bus) {
      this.fail(s, req.bus ? `no bus named ${req.bus} (see kdbus-cuse status)` : 'the daemon has no bus');
      return;
    }
    let rules: MatchRule[];
    try {
      rules = (req.rules ?? []).map((r) => MatchRule.parse(r).eavesdropping());
    } catch (e) {
      this.fail(s, e instanceof MatchRuleInvalid ? `invalid match rule: ${e.message}` : String(e));
      return;
    }
    let feed: MonitorFeed | undefined;
    const end = (): void => {
      if (!feed) return;
      feed.close();
      this.feeds.delete(feed);
      feed = undefined;
    };
    try {
      feed = new MonitorFeed(bus, rules, (rec) => {
        // A monitor that does not read loses records rather than growing the daemon.
        if (s.writableLength < 4 * 1024 * 1024) s.write(`${JSON.stringify(rec)}\n`);
      }, (why) => {
        this.fail(s, why);
        end();
      });
    } catch (e) {
      this.fail(s, `cannot monitor ${bus.name}: ${(e as Error).message}`);
      return;
    }
    this.feeds.add(feed);
    s.write(`${JSON.stringify({ monitoring: bus.name })}\n`);
    s.on('close', end);
  }

  async stop(): Promise<void> {
    for (const f of this.feeds) f.close();
    this.feeds.clear();
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) {
      server.close();
      fs.rmSync(this.file, { force: true });
    }
  }
}
