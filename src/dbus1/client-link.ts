/**
 * A kdbus client's own connection to the upstream bus, authenticated as the client's uid
 * and groups (never the daemon's), so that upstream policy and polkit judge the client.
 * Upstream knows the client by this connection's unique name: what the client sends
 * upstream goes out here, what upstream peers send to that name or to the client's names
 * comes in here, and the names the client owns are requested here.
 *
 * Calls the client makes upstream get this connection's serials; each remembers the
 * client's cookie and the stand-in the client addressed, which is who answers it on the bus.
 */
import { NameFlags } from '../abi/constants';
import { fail, KdbusError } from '../abi/errno';
import type { Connection } from '../bus/connection';
import { nowNs } from '../bus/deadline';
import { logger } from '../log/logger';
import { closeFd } from '../os/unix-socket';
import { MessageType, type Message } from './message';
import { UpstreamCallError, UpstreamConnection } from './upstream-connection';
import type { UpstreamPeer } from './upstream-peer';

/** dbus1 RequestName flags and answers (D-Bus specification). */
const DBUS_NAME_FLAG_ALLOW_REPLACEMENT = 1;
const DBUS_NAME_FLAG_REPLACE_EXISTING = 2;
const DBUS_NAME_FLAG_DO_NOT_QUEUE = 4;
export const RequestNameReply = { PrimaryOwner: 1, InQueue: 2, Exists: 3, AlreadyOwner: 4 } as const;

/** A call the client made upstream, waiting for its answer. */
export interface PendingCall {
  /** The client's cookie, what its reply must name. */
  cookie: bigint;
  /** The stand-in the client sent the call to: the bus expects the reply from it. */
  via: UpstreamPeer;
  /** The call's kdbus deadline (CLOCK_MONOTONIC ns): the bus has told the client by then. */
  deadlineNs: bigint;
}

/** Past this many calls waiting, those whose deadline passed are forgotten (upstream may never answer). */
const PRUNE_ABOVE = 1024;

export interface ClientLinkEvents {
  /** A message from upstream for the client. `call` is set for answers to its calls. */
  message(link: ClientLink, m: Message, fds: number[], call: PendingCall | undefined): void;
  /** The link is up under `uniqueName`. */
  up(link: ClientLink): void;
  /** The link failed or was closed; calls still waiting for answers are given back. */
  down(link: ClientLink, reason: string, unanswered: PendingCall[]): void;
}

/** Work for the connection; undefined when the link closed before connecting. */
type Step = (c: UpstreamConnection | undefined) => void;

export class ClientLink {
  private conn: UpstreamConnection | undefined;
  private waiting: Step[] | undefined = [];
  private readonly pending = new Map<bigint, PendingCall>();
  /** Calls that waited for the connection and never went out. */
  private readonly unsent: PendingCall[] = [];
  private closed = false;
  /** Set when the client left before the link was up: what it sent still goes out first. */
  private closeWhenUp: string | undefined;
  readonly ready: Promise<UpstreamConnection>;

  constructor(
    readonly client: Connection,
    address: string,
    private readonly events: ClientLinkEvents,
  ) {
    const c = client.cred;
    this.ready = UpstreamConnection.connect(address, {
      as: { uid: c.euid, gid: c.egid, groups: c.groups },
      label: `upstream link of :1.${client.id}`,
      handlers: {
        message: (m, fds) => this.fromUpstream(m, fds),
        closed: (reason) => this.finish(reason),
      },
    });
    this.ready.then((conn) => {
      if (this.closed) {
        conn.close('the client is gone');
        return;
      }
      this.conn = conn;
      logger.debug(`:1.${client.id} is ${conn.uniqueName} upstream`);
      this.events.up(this);
      const waiting = this.waiting ?? [];
      this.waiting = undefined;
      for (const s of waiting) s(conn);
      if (this.closeWhenUp !== undefined) this.close(this.closeWhenUp);
    }, (e: unknown) => this.finish(`no upstream connection as uid ${c.euid}: ${(e as Error).message}`));
  }

  /** Whether send() hands a message on before it returns, rather than keeping it until the link is up. */
  get sendsNow(): boolean {
    return this.conn !== undefined;
  }

  /** The client's unique name upstream, once connected. */
  get uniqueName(): string | undefined {
    return this.conn?.uniqueName;
  }

  private run(step: Step): void {
    if (this.conn) step(this.conn);
    else this.waiting!.push(step);
  }

  /**
   * Sends `m` upstream as the client; a call that wants an answer is remembered under its
   * serial. `fds` go with it (the stream closes them once sent; here if it never goes).
   * False, with the fds closed, if the link is closed.
   */
  send(m: Message, fds: number[], call: PendingCall | undefined): boolean {
    if (this.closed) {
      fds.forEach(closeFd);
      return false;
    }
    this.run((c) => {
      if (!c) {
        fds.forEach(closeFd);
        if (call) this.unsent.push(call);
        return;
      }
      try {
        const serial = c.send(m, fds);
        if (call) {
          if (this.pending.size >= PRUNE_ABOVE) this.prune();
          this.pending.set(serial, call);
        }
      } catch (e) {
        fds.forEach(closeFd);
        logger.debug(`${c.uniqueName}: a message to ${m.destination ?? 'everyone'} was not sent: ${(e as Error).message}`);
        if (call) this.unsent.push(call);
      }
    });
    return true;
  }

  private prune(): void {
    const now = nowNs();
    for (const [serial, call] of this.pending) if (call.deadlineNs < now) this.pending.delete(serial);
  }

  /**
   * RequestName upstream with the kdbus NAME_ACQUIRE flags mapped; resolves to upstream's
   * answer (RequestNameReply). Rejects with the KdbusError the client should get.
   */
  async requestName(name: string, kdbusFlags: bigint): Promise<number> {
    let flags = 0;
    if (kdbusFlags & NameFlags.ALLOW_REPLACEMENT) flags |= DBUS_NAME_FLAG_ALLOW_REPLACEMENT;
    if (kdbusFlags & NameFlags.REPLACE_EXISTING) flags |= DBUS_NAME_FLAG_REPLACE_EXISTING;
    if (!(kdbusFlags & NameFlags.QUEUE)) flags |= DBUS_NAME_FLAG_DO_NOT_QUEUE;
    let conn: UpstreamConnection;
    try {
      conn = await this.ready;
    } catch (e) {
      throw fail('ECONNREFUSED', `the upstream bus refused a connection as uid ${this.client.cred.euid}: ${(e as Error).message}`);
    }
    try {
      const reply = await conn.callDriver('RequestName', 'su', [name, flags]);
      return Number(reply.body[0]);
    } catch (e) {
      throw nameError(e, name);
    }
  }

  /** ReleaseName upstream, answer unheeded: the name is released here already. */
  releaseName(name: string): void {
    if (this.closed) return;
    this.run((c) => {
      c?.callDriver('ReleaseName', 's', [name]).catch((e: unknown) => {
        logger.debug(`${c.uniqueName}: ReleaseName ${name} upstream: ${(e as Error).message}`);
      });
    });
  }

  private fromUpstream(m: Message, fds: number[]): void {
    let call: PendingCall | undefined;
    if ((m.type === MessageType.MethodReturn || m.type === MessageType.Error) && m.replySerial !== undefined) {
      call = this.pending.get(m.replySerial);
      this.pending.delete(m.replySerial);
    }
    this.events.message(this, m, fds, call);
  }

  private finish(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    const waiting = this.waiting ?? [];
    this.waiting = undefined;
    for (const s of waiting) s(undefined);
    const unanswered = [...this.pending.values(), ...this.unsent];
    this.pending.clear();
    this.unsent.length = 0;
    this.events.down(this, reason, unanswered);
  }

  /**
   * Hangs up: upstream releases the client's names and forgets its unique name. A link
   * still connecting first sends what the client sent meanwhile, as kdbus delivers what a
   * client sent before it closed.
   */
  close(reason: string): void {
    if (this.closed) return;
    const conn = this.conn;
    if (!conn && this.waiting!.length > 0) {
      this.closeWhenUp = reason;
      return;
    }
    this.finish(reason);
    conn?.close(reason);
  }
}

/** What a RequestName error upstream means to a kdbus client. */
function nameError(e: unknown, name: string): KdbusError {
  if (e instanceof UpstreamCallError) {
    if (e.name === 'org.freedesktop.DBus.Error.AccessDenied') return fail('EPERM', `upstream policy does not let this client own ${name}: ${e.text}`);
    if (e.name === 'org.freedesktop.DBus.Error.InvalidArgs') return fail('EINVAL', `upstream refuses the name ${name}: ${e.text}`);
    if (e.name === 'org.freedesktop.DBus.Error.LimitsExceeded') return fail('E2BIG', `upstream limits: ${e.text}`);
    return fail('EIO', `upstream answered RequestName ${name} with ${e.name}: ${e.text}`);
  }
  return fail('EIO', `upstream went away while asked for ${name}: ${(e as Error).message}`);
}
