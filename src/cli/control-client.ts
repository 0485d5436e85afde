/**
 * `kdbus-cuse status` and `kdbus-cuse monitor`: clients of the running daemon's control
 * socket (src/daemon/control-socket.ts).
 */
import net from 'node:net';
import { controlPath, defaults, loadFile } from '../config/config';
import type { MonitorRecord } from '../daemon/monitor-feed';
import { renderStatus, type DaemonStatus } from '../daemon/status';
import { parseArgs, UsageError } from './args';

export const STATUS_HELP = `Usage: kdbus-cuse status [--json] [--control PATH | --config FILE]

Shows the running daemon's buses, endpoints and connections: id, pid, command, uid,
names, queued messages, pool use, and messages and bytes sent and received.

Options:
  --json            the status as JSON
  --control PATH    the daemon's control socket (default: control.sock beside the
                    transport socket, e.g. /run/kdbus-cuse/control.sock for root)
  --config FILE     read the control socket's path from the daemon's configuration
`;

export const MONITOR_HELP = `Usage: kdbus-cuse monitor [--bus NAME] [--json] [--control PATH | --config FILE] [RULE...]

Shows every message on a bus as it passes, like busctl monitor. RULEs are D-Bus match
rules (e.g. "interface='org.example.Foo'" or "sender='org.example.Svc'"); a message is
shown when any rule matches it, or always without rules. Ends with Ctrl-C.

Options:
  --bus NAME        the bus to watch (default: the daemon's first bus)
  --json            one JSON object per message
  --control PATH    the daemon's control socket
  --config FILE     read the control socket's path from the daemon's configuration
`;

const COMMON = { json: { value: false }, control: { value: true }, config: { value: true }, help: { value: false } };

function socketOf(flags: Map<string, string[]>): string {
  const control = flags.get('control')?.[0];
  if (control) return control;
  const file = flags.get('config')?.[0];
  return controlPath(file ? loadFile(file) : defaults());
}

/** Connects, sends the request line, and hands every answer line to onLine. */
function converse(file: string, request: object, onLine: (line: string) => boolean | void): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createConnection(file);
    let buf = '';
    let code = 0;
    s.setEncoding('utf8');
    s.on('connect', () => s.write(`${JSON.stringify(request)}\n`));
    s.on('data', (chunk: string) => {
      buf += chunk;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const answer = JSON.parse(line) as { error?: string };
        if (answer.error !== undefined) {
          process.stderr.write(`kdbus-cuse: ${answer.error}\n`);
          code = 1;
        } else if (onLine(line) === false) {
          s.end();
        }
      }
    });
    s.on('error', (e: NodeJS.ErrnoException) => {
      const why = e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? 'is the daemon running?' : e.code === 'EACCES' ? 'only root or the configured control group may use it' : e.message;
      process.stderr.write(`kdbus-cuse: cannot reach the daemon at ${file}: ${why}\n`);
      resolve(1);
    });
    s.on('close', () => resolve(code));
    process.once('SIGINT', () => s.end());
  });
}

export async function status(argv: readonly string[]): Promise<number> {
  const { flags, positional } = parseArgs(argv, COMMON);
  if (flags.has('help')) {
    process.stdout.write(STATUS_HELP);
    return 0;
  }
  if (positional.length > 0) throw new UsageError(`status takes no arguments, got "${positional[0]}"`);
  return converse(socketOf(flags), { command: 'status' }, (line) => {
    process.stdout.write(flags.has('json') ? `${line}\n` : renderStatus(JSON.parse(line) as DaemonStatus));
  });
}

export async function monitor(argv: readonly string[]): Promise<number> {
  const { flags, positional } = parseArgs(argv, { ...COMMON, bus: { value: true } });
  if (flags.has('help')) {
    process.stdout.write(MONITOR_HELP);
    return 0;
  }
  const bus = flags.get('bus')?.[0];
  const request = { command: 'monitor', rules: positional, ...(bus ? { bus } : {}) };
  return converse(socketOf(flags), request, (line) => {
    const rec = JSON.parse(line) as MonitorRecord | { monitoring: string };
    if ('monitoring' in rec) {
      if (!flags.has('json')) process.stderr.write(`Monitoring bus ${rec.monitoring}.\n`);
      return;
    }
    process.stdout.write(flags.has('json') ? `${line}\n` : renderRecord(rec));
  });
}

/** A record in the manner of busctl monitor: header line, addressing, then the body. */
export function renderRecord(r: MonitorRecord): string {
  const time = new Date(r.time / 1000).toISOString();
  if (r.kind === 'notification' || r.kind === 'kdbus') return `‣ ${r.kind} ${time}  ${r.note ?? ''}\n`;
  const lines = [
    `‣ Type=${r.kind}  Cookie=${r.cookie}${r.replyCookie ? `  ReplyCookie=${r.replyCookie}` : ''}  Flags=${r.flags}  Size=${r.size}${r.fds ? `  Fds=${r.fds}` : ''}  ${time}`,
    `  Sender=${r.sender}  Destination=${r.destination ?? '(broadcast)'}${r.path ? `  Path=${r.path}` : ''}${r.interface ? `  Interface=${r.interface}` : ''}${r.member ? `  Member=${r.member}` : ''}${r.errorName ? `  ErrorName=${r.errorName}` : ''}`,
  ];
  if (r.body && r.body.length > 0) lines.push(`  MESSAGE "${r.signature}" {`, ...r.body.map((b) => `          ${b};`), '  };');
  return `${lines.join('\n')}\n\n`;
}
