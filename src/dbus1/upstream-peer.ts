/**
 * The stand-in of one upstream peer on the kdbus bus: a connection the bridge holds so that
 * kdbus clients see the peer as they see each other (an id, its names, its credentials in
 * CONN_INFO, ID_ and NAME_ notifications) and can address it. What kdbus clients send it,
 * the bridge carries upstream; what the peer sends them, the stand-in sends on the bus.
 *
 * Its identity (GetConnectionCredentials upstream) takes a round trip, and HELLO needs it:
 * until then, what the bridge asks of the stand-in waits, in order.
 */
import { NameFlags } from '../abi/constants';
import { KdbusError } from '../abi/errno';
import type { KdbusNode } from '../bus/handle';
import { logger } from '../log/logger';
import { LocalConnection, type LocalIdentity, type OutgoingMessage } from './local-connection';
import type { Pids, UnixCreds, Received } from './pool-records';

/** What the upstream bus says of a peer (GetConnectionCredentials). */
export interface PeerCredentials {
  uid?: number;
  pid?: number;
  seclabel?: string;
}

export interface UpstreamPeerEvents {
  /** What kdbus clients sent the stand-in; r's payload is valid until this returns (copy what is kept). */
  message(peer: UpstreamPeer, r: Received): void;
  /** The stand-in is on the bus under `id` (before anything it waited to do). */
  opened(id: bigint): void;
  /** The stand-in left the bus. */
  closed(id: bigint): void;
  /**
   * A client here holds `name` without allowing replacement though upstream gave it to the
   * peer: the client lost it upstream (its connection dropped). True once it let go here.
   */
  contested(name: string): boolean;
}

type Action = (conn: LocalConnection) => void;

export class UpstreamPeer {
  private conn: LocalConnection | undefined;
  private waiting: Action[] | undefined = [];
  private closed = false;
  /** The peer left before its stand-in could say HELLO: what it sent still goes out first. */
  private leaving = false;

  constructor(
    /** The peer's unique name upstream (or the upstream driver's name). */
    readonly upstreamName: string,
    private readonly node: KdbusNode,
    private readonly daemon: LocalIdentity,
    private readonly events: UpstreamPeerEvents,
  ) {}

  /** The stand-in's kdbus id, once it said HELLO. */
  get id(): bigint | undefined {
    return this.conn?.id;
  }

  /** Says HELLO with the peer's credentials and runs what waited for it. */
  open(creds: PeerCredentials): void {
    if (this.closed || this.conn) return;
    let conn: LocalConnection;
    try {
      conn = LocalConnection.open(this.node, this.daemon, {
        attachFlagsRecv: 0n,
        acceptFds: true,
        // CONN_DESCRIPTION allows no ':' (upstream :1.5 shows as upstream-1.5).
        description: `upstream-${this.upstreamName.replace(/^:/, '').replace(/[^A-Za-z0-9_.-]/g, '_')}`,
        fake: fakeMetadata(creds),
      });
    } catch (e) {
      logger.warn(`upstream peer ${this.upstreamName}: no stand-in on the bus: ${(e as Error).message}`);
      this.close();
      return;
    }
    this.conn = conn;
    this.events.opened(conn.id);
    conn.onMessage((r) => this.events.message(this, r), { transient: true });
    conn.onDisconnect(() => this.close());
    const waiting = this.waiting ?? [];
    this.waiting = undefined;
    for (const a of waiting) this.run(a);
    if (this.leaving) this.close();
  }

  private run(action: Action): void {
    if (this.closed) return;
    if (!this.conn) {
      this.waiting!.push(action);
      return;
    }
    action(this.conn);
  }

  /**
   * Takes `name` here because upstream says the peer owns it. Whoever holds it here gives
   * way: other stand-ins and clients only hold what upstream let them, and upstream moved it.
   */
  acquireName(name: string): void {
    const flags = NameFlags.REPLACE_EXISTING | NameFlags.ALLOW_REPLACEMENT;
    this.run((c) => {
      try {
        c.acquireName(name, flags);
      } catch (e) {
        if (!(e instanceof KdbusError)) throw e;
        if (e.code === 'EEXIST' && this.events.contested(name)) {
          this.acquireName(name);
          return;
        }
        logger.warn(`upstream peer ${this.upstreamName} owns ${name}, but here: ${e.message}`);
      }
    });
  }

  releaseName(name: string): void {
    this.run((c) => {
      try {
        c.releaseName(name);
      } catch (e) {
        if (!(e instanceof KdbusError)) throw e;
      }
    });
  }

  /**
   * Sends on the bus as the peer. `failed` hears the KdbusError of a message the bus
   * refused (no such destination, a full queue, policy).
   */
  send(msg: OutgoingMessage, failed: (e: KdbusError) => void): void {
    if (this.closed) {
      for (const f of msg.fds ?? []) f.close();
      return;
    }
    this.run((c) => {
      try {
        c.send(msg);
      } catch (e) {
        if (!(e instanceof KdbusError)) throw e;
        failed(e);
      }
    });
  }

  /**
   * The peer left upstream: its id and names go from the bus, after what it sent. A stand-in
   * still waiting for its credentials closes once it said HELLO (open() always follows).
   */
  leave(): void {
    if (this.conn || !this.waiting || this.waiting.length === 0) this.close();
    else this.leaving = true;
  }

  /** Gone at once, with whatever still waits (upstream went away). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.waiting = undefined;
    const conn = this.conn;
    if (!conn) return;
    // The bus asks the bridge whether a leaving connection is its own: it still is, until closed.
    conn.close();
    this.events.closed(conn.id);
  }
}

/** HELLO's faked metadata: what upstream knows of the peer, no more. */
function fakeMetadata(creds: PeerCredentials): { creds?: UnixCreds; pids?: Pids; seclabel?: string } {
  const fake: { creds?: UnixCreds; pids?: Pids; seclabel?: string } = {};
  if (creds.uid !== undefined) {
    const u = creds.uid;
    // dbus1 knows a peer's uid alone; its group is unknown, and kdbus has no "unknown".
    fake.creds = { uid: u, euid: u, suid: u, fsuid: u, gid: 0xffff_ffff, egid: 0xffff_ffff, sgid: 0xffff_ffff, fsgid: 0xffff_ffff };
  }
  if (creds.pid !== undefined) fake.pids = { pid: creds.pid, tid: creds.pid, ppid: 0 };
  if (creds.seclabel !== undefined) fake.seclabel = creds.seclabel;
  return fake;
}
