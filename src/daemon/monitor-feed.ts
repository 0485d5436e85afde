/**
 * The traffic of a bus as `kdbus-cuse monitor` shows it: a kdbus monitor connection the
 * daemon holds, every message it sees decoded (kdbus header, and for D-Bus payloads the
 * GVariant message) into plain records, filtered by D-Bus match rules.
 */
import { KDBUS_DST_ID_BROADCAST, KDBUS_PAYLOAD_DBUS } from '../abi/constants';
import type { Bus } from '../bus/bus';
import { decodeGVariantMessage } from '../dbus1/gvariant-message';
import { LocalConnection } from '../dbus1/local-connection';
import type { MatchRule, NameOwners } from '../dbus1/match-rule';
import { MessageType, type Message } from '../dbus1/message';
import { payloadBytes, type Received } from '../dbus1/pool-records';
import { matchView, nameOwnerChanged, nameOwnersOf, uniqueName, uniqueNameChanged } from '../dbus1/translate';
import { Variant, type Value } from '../dbus1/value';

export interface MonitorRecord {
  /** Microseconds since the epoch, when the daemon saw it. */
  time: number;
  kind: 'method_call' | 'method_return' | 'error' | 'signal' | 'kdbus' | 'notification';
  sender: string;
  destination?: string;
  cookie: string;
  replyCookie?: string;
  flags: string;
  path?: string;
  interface?: string;
  member?: string;
  errorName?: string;
  signature?: string;
  /** The body rendered as text, one line per argument. */
  body?: string[];
  size: number;
  fds: number;
  /** For notifications and undecodable payloads: what it was. */
  note?: string;
}

const TYPE_NAMES: Record<number, MonitorRecord['kind']> = {
  [MessageType.MethodCall]: 'method_call',
  [MessageType.MethodReturn]: 'method_return',
  [MessageType.Error]: 'error',
  [MessageType.Signal]: 'signal',
};

/** A value as busctl monitor prints it: type, then contents. */
export function renderValue(v: Value): string {
  if (v instanceof Variant) return `VARIANT "${v.signature}" ${renderValue(v.value)}`;
  if (Buffer.isBuffer(v)) return `BYTES ${v.length > 64 ? `${v.subarray(0, 64).toString('hex')}… (${v.length} bytes)` : v.toString('hex')}`;
  if (Array.isArray(v)) return `{ ${v.map((x) => renderValue(x as Value)).join('; ')} }`;
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'bigint') return v.toString();
  return String(v);
}

export class MonitorFeed {
  private readonly conn: LocalConnection;
  private readonly owners: NameOwners;

  constructor(
    bus: Bus,
    private readonly rules: MatchRule[],
    private readonly emit: (r: MonitorRecord) => void,
    private readonly onEnd: (why: string) => void,
  ) {
    const root = { uid: 0, euid: 0, suid: 0, fsuid: 0, gid: 0, egid: 0, sgid: 0, fsgid: 0, groups: [] };
    this.conn = LocalConnection.open({ kind: 'endpoint', ep: bus.defaultEndpoint }, { creds: root, pid: process.pid, privileged: true }, {
      attachFlagsRecv: 0n,
      monitor: true,
      acceptFds: true,
      description: 'kdbus-cuse-monitor',
    });
    this.owners = nameOwnersOf(bus);
    this.conn.onMessage((r) => this.seen(r));
    this.conn.onDropped((n) => this.emit({ time: Date.now() * 1000, kind: 'kdbus', sender: '', cookie: '0', flags: '0', size: 0, fds: 0, note: `${n} messages lost: the monitor fell behind` }));
    this.conn.onDisconnect(() => this.onEnd(`bus ${bus.name} went away`));
  }

  private wanted(m: Message): boolean {
    if (this.rules.length === 0) return true;
    const view = matchView(m);
    return this.rules.some((r) => r.matches(view, this.owners));
  }

  private seen(r: Received): void {
    const time = Date.now() * 1000;
    if (r.kind !== 'message') {
      let m: Message | undefined;
      if (r.kind === 'name-add' || r.kind === 'name-change' || r.kind === 'name-remove') m = nameOwnerChanged(r);
      else if (r.kind === 'id-add' || r.kind === 'id-remove') m = uniqueNameChanged(r.id, r.kind === 'id-add');
      if (m && !this.wanted(m)) return;
      const note = r.kind === 'reply-timeout' || r.kind === 'reply-dead' ? `${r.kind} for cookie ${r.cookie}` : m ? `NameOwnerChanged ${m.body.map((x) => JSON.stringify(x)).join(' ')}` : r.kind;
      this.emit({ time, kind: 'notification', sender: 'kernel', cookie: '0', flags: '0', size: 0, fds: 0, note });
      return;
    }
    for (const f of r.fds) f?.close();
    const destination = r.dstName ?? (r.dstId === KDBUS_DST_ID_BROADCAST ? undefined : uniqueName(r.dstId));
    const base = {
      time,
      sender: uniqueName(r.srcId),
      cookie: r.cookie.toString(),
      flags: `0x${r.flags.toString(16)}`,
      size: r.payload.reduce((n, p) => n + (Buffer.isBuffer(p) ? p.length : p.size), 0),
      fds: r.fds.length,
      ...(destination !== undefined ? { destination } : {}),
      ...(r.cookieReply ? { replyCookie: r.cookieReply.toString() } : {}),
    };
    if (r.payloadType !== KDBUS_PAYLOAD_DBUS) {
      if (this.rules.length === 0) this.emit({ ...base, kind: 'kdbus', note: `payload type 0x${r.payloadType.toString(16)}` });
      return;
    }
    let m: Message;
    try {
      m = decodeGVariantMessage(payloadBytes(r));
    } catch (e) {
      if (this.rules.length === 0) this.emit({ ...base, kind: 'kdbus', note: `undecodable D-Bus payload: ${(e as Error).message}` });
      return;
    }
    m.sender = base.sender;
    m.destination = destination;
    if (!this.wanted(m)) return;
    const rec: MonitorRecord = { ...base, kind: TYPE_NAMES[m.type]!, signature: m.signature, body: m.body.map(renderValue) };
    if (m.path !== undefined) rec.path = m.path;
    if (m.interface !== undefined) rec.interface = m.interface;
    if (m.member !== undefined) rec.member = m.member;
    if (m.errorName !== undefined) rec.errorName = m.errorName;
    this.emit(rec);
  }

  close(): void {
    this.conn.close();
  }
}
