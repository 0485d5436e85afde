/**
 * What `kdbus-cuse status` shows: a snapshot of the daemon's buses, endpoints and
 * connections, as plain data (it travels as JSON over the control socket), and its rendering
 * as text tables in the manner of `busctl list`.
 */
import { NameFlags } from '../abi/constants';
import type { Domain } from '../bus/domain';
import { ConnKind, type Connection } from '../bus/connection';
import type { UpstreamStatus } from '../dbus1/upstream-bridge';

export interface ConnectionStatus {
  id: string;
  kind: 'ordinary' | 'activator' | 'policy-holder' | 'monitor';
  pid: number;
  comm: string;
  uid: number;
  description: string;
  /** Well-known names: held, or waited for ("(queued)"). */
  names: string[];
  queued: number;
  poolUsed: number;
  poolSize: number;
  sent: number;
  sentBytes: number;
  received: number;
  receivedBytes: number;
}

export interface BusStatus {
  name: string;
  id: string;
  uid: number;
  endpoints: Array<{ name: string; mode: string; uid: number; gid: number }>;
  connections: ConnectionStatus[];
}

export interface DaemonStatus {
  version: string;
  pid: number;
  uptimeSeconds: number;
  transports: string[];
  legacy: Array<{ bus: string; addresses: string[]; clients: number }>;
  upstream: UpstreamStatus[];
  buses: BusStatus[];
}

const KINDS: Record<ConnKind, ConnectionStatus['kind']> = {
  [ConnKind.ORDINARY]: 'ordinary',
  [ConnKind.ACTIVATOR]: 'activator',
  [ConnKind.POLICY_HOLDER]: 'policy-holder',
  [ConnKind.MONITOR]: 'monitor',
};

function connectionStatus(c: Connection): ConnectionStatus {
  const names: string[] = [];
  for (const r of c.bus.names.records(c)) names.push(r.flags & NameFlags.IN_QUEUE ? `${r.name} (queued)` : r.name);
  return {
    id: c.id.toString(),
    kind: KINDS[c.kind],
    pid: c.pid,
    comm: c.meta?.pidComm?.toString() ?? '',
    uid: c.cred.uid,
    description: c.description ?? '',
    names: names.sort(),
    queued: c.queue.size,
    poolUsed: c.pool.accountedSize,
    poolSize: c.pool.size,
    ...c.counters,
  };
}

export function busesStatus(domain: Domain): BusStatus[] {
  return [...domain.buses.values()].map((bus) => ({
    name: bus.name,
    id: bus.id128.toString('hex'),
    uid: bus.uid,
    endpoints: [...bus.endpoints.values()].map((ep) => ({ name: ep.name, mode: ep.mode.toString(8).padStart(4, '0'), uid: ep.uid, gid: ep.gid })),
    connections: [...bus.connections.values()].map(connectionStatus).sort((a, b) => Number(BigInt(a.id) - BigInt(b.id))),
  }));
}

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)];
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function renderStatus(s: DaemonStatus): string {
  const out: string[] = [
    `kdbus-cuse ${s.version}, pid ${s.pid}, up ${s.uptimeSeconds} s`,
    ...s.transports.map((t) => `transport ${t}`),
    ...s.legacy.map((l) => `legacy endpoint of ${l.bus}: ${l.addresses.join(' ')} (${l.clients} client${l.clients === 1 ? '' : 's'})`),
    ...s.upstream.map((u) => `upstream of ${u.bus}: ${u.address}, ${u.state}${u.uniqueName ? ` as ${u.uniqueName}` : ''} ` +
      `(${u.peers} upstream peer${u.peers === 1 ? '' : 's'}, ${u.clients} kdbus client${u.clients === 1 ? '' : 's'} upstream)`),
  ];
  for (const bus of s.buses) {
    out.push('', `bus ${bus.name} (id ${bus.id}, owner uid ${bus.uid}): ${bus.connections.length} connection${bus.connections.length === 1 ? '' : 's'}`);
    out.push(...table(['ENDPOINT', 'MODE', 'UID', 'GID'], bus.endpoints.map((e) => [e.name, e.mode, String(e.uid), String(e.gid)])).map((l) => `  ${l}`));
    const rows = bus.connections.map((c) => [
      `:1.${c.id}`, String(c.pid), c.comm || '-', String(c.uid), c.kind === 'ordinary' ? '' : c.kind,
      String(c.queued), `${bytes(c.poolUsed)}/${bytes(c.poolSize)}`,
      `${c.sent}/${bytes(c.sentBytes)}`, `${c.received}/${bytes(c.receivedBytes)}`,
      [c.description, ...c.names].filter(Boolean).join(' '),
    ]);
    out.push(...table(['ID', 'PID', 'COMM', 'UID', 'KIND', 'QUEUE', 'POOL', 'SENT', 'RECEIVED', 'NAMES'], rows).map((l) => `  ${l}`));
  }
  return `${out.join('\n')}\n`;
}
