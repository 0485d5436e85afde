/**
 * One bus joined to an upstream D-Bus bus (a dbus-daemon or dbus-broker, the machine's
 * system bus for instance), so that kdbus clients reach its services and its clients reach
 * kdbus services.
 *
 * - Upstream peers appear on the bus as stand-ins (UpstreamPeer): one kdbus connection per
 *   upstream unique name, holding the well-known names its peer owns upstream, with the
 *   peer's credentials. The bridge's own upstream connection watches NameOwnerChanged to
 *   keep them true, and takes the upstream signals kdbus clients may want.
 * - Each kdbus client that deals with upstream gets its own upstream connection as its own
 *   uid (ClientLink): its calls, replies and broadcasts go out there, and its names are
 *   requested there; upstream's answer is the client's NAME_ACQUIRE result (BusBridge).
 * - Messages are translated (GVariant ↔ dbus1) on the way; unique names in headers map
 *   between the two sides (a stand-in's ":1.<kdbus id>" ↔ the peer's upstream name, a
 *   client's link name ↔ ":1.<client id>"). Bodies are carried as they are.
 *
 * When upstream goes away, its stand-ins leave the bus (kdbus clients see ID_REMOVE and
 * NAME_REMOVE), the links close, and the bridge reconnects with a growing delay; once back,
 * each client's names are requested again. Nothing on the bus waits for it meanwhile.
 */
import { KDBUS_DST_ID_BROADCAST, MsgFlags, NameFlags } from '../abi/constants';
import { fail, KdbusError } from '../abi/errno';
import type { BusBridge } from '../bus/bridge';
import type { Bus } from '../bus/bus';
import { acquireName } from '../bus/cmd-names';
import type { Connection } from '../bus/connection';
import { nowNs } from '../bus/deadline';
import type { KdbusNode } from '../bus/handle';
import { NameExistsError } from '../bus/names';
import { applyNameChanges, flushNotifications } from '../bus/notify';
import { logger } from '../log/logger';
import { ImportedFd } from '../os/pidfd-files';
import { closeFd } from '../os/unix-socket';
import { Bloom } from './bloom';
import { ClientLink, RequestNameReply, type PendingCall } from './client-link';
import { DBusError } from './driver';
import { LocalConnection, type LocalIdentity } from './local-connection';
import { MessageFlag, MessageType, type Message } from './message';
import { closeMessageFiles, closePayloadFiles, type KdbusMessage, type Received } from './pool-records';
import { DRIVER_NAME, fromKdbus, toKdbus, uniqueName } from './translate';
import { UpstreamConnection } from './upstream-connection';
import { UpstreamPeer, type PeerCredentials } from './upstream-peer';
import type { Value, Variant } from './value';

const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 5000;
/** A link that upstream dropped while the bus stayed is tried again after this long. */
const LINK_RETRY_MS = 1000;
const NAME_OWNER_CHANGED_RULE = `type='signal',sender='${DRIVER_NAME}',interface='${DRIVER_NAME}',member='NameOwnerChanged'`;
/**
 * Every upstream broadcast signal, while some client has a match for messages: kdbus clients
 * select theirs with bloom masks, which cannot be turned back into match rules, so the bus
 * here does the selecting.
 */
const SIGNAL_RULE = "type='signal'";
const TAP_COOKIE = 1n;
/** Cookies of what the bridge itself says on the bus (error replies): above any dbus1 serial. */
const FIRST_OWN_COOKIE = 1n << 32n;

/** A bus's bridge to an upstream bus: whether it is connected, and what stands for what. */
export interface UpstreamStatus {
  bus: string;
  address: string;
  state: 'down' | 'connecting' | 'up';
  /** The bridge's own unique name upstream, while up. */
  uniqueName?: string;
  /** Upstream peers with a stand-in on the bus. */
  peers: number;
  /** kdbus clients with a connection upstream. */
  clients: number;
}

export class UpstreamBridge implements BusBridge {
  private state: 'down' | 'connecting' | 'up' | 'stopped' = 'down';
  private busConn: UpstreamConnection | undefined;
  private retryMs = RETRY_FIRST_MS;
  private retryTimer: NodeJS.Timeout | undefined;
  private readonly peers = new Map<string, UpstreamPeer>();
  private driver: UpstreamPeer | undefined;
  private readonly links = new Map<bigint, ClientLink>();
  private readonly linkByName = new Map<string, ClientLink>();
  private readonly linkTimers = new Set<NodeJS.Timeout>();
  /** kdbus ids of the stand-ins and of the tap. */
  private readonly ownIds = new Set<bigint>();
  /**
   * Links still connecting: a unique name that appears upstream meanwhile may be one of
   * them, so its stand-in waits until they all know their names.
   */
  private readonly connecting = new Set<ClientLink>();
  private readonly deferredPeers = new Set<string>();
  /** Names whose owner changed while the snapshot of names was being taken. */
  private changedSinceSnapshot: Set<string> | undefined;
  /** Clients with a match that can take broadcasts: while there are some, upstream signals come in. */
  private readonly listeners = new Set<bigint>();
  /** The signal subscription upstream, while there is one (settles once upstream has it). */
  private subscription: Promise<void> | undefined;
  /** Watches the bus for what kdbus clients broadcast, to publish it upstream. */
  private tap: LocalConnection | undefined;
  private readonly bloom: Bloom;
  private readonly node: KdbusNode;
  private readonly daemon: LocalIdentity;
  private ownCookie = FIRST_OWN_COOKIE;

  constructor(readonly bus: Bus, readonly address: string) {
    this.bloom = new Bloom(bus.bloom.size, Number(bus.bloom.nHash));
    this.node = { kind: 'endpoint', ep: bus.defaultEndpoint };
    const uid = process.geteuid?.() ?? 0;
    const gid = process.getegid?.() ?? 0;
    this.daemon = {
      creds: { uid, euid: uid, suid: uid, fsuid: uid, gid, egid: gid, sgid: gid, fsgid: gid, groups: [] },
      pid: process.pid,
      privileged: true,
    };
  }

  start(): void {
    this.bus.bridge = this;
    const tap = LocalConnection.open(this.node, this.daemon, { attachFlagsRecv: 0n, description: 'upstream-tap' });
    this.ownIds.add(tap.id);
    tap.addMatch(TAP_COOKIE, []);
    // What fromTap keeps past its return is copied (fromKdbus without borrowing).
    tap.onMessage((r) => this.fromTap(r), { transient: true });
    this.tap = tap;
    void this.connect();
  }

  private get stopped(): boolean {
    return this.state === 'stopped';
  }

  /** For `kdbus-cuse status`. */
  status(): UpstreamStatus {
    const s: UpstreamStatus = {
      bus: this.bus.name, address: this.address, state: this.state === 'stopped' ? 'down' : this.state,
      peers: this.peers.size, clients: this.links.size,
    };
    if (this.state === 'up' && this.busConn) s.uniqueName = this.busConn.uniqueName;
    return s;
  }

  /** Leaves upstream and the bus: links, stand-ins and the tap go. */
  stop(): void {
    if (this.state === 'stopped') return;
    this.state = 'stopped';
    if (this.retryTimer) clearTimeout(this.retryTimer);
    const conn = this.busConn;
    this.busConn = undefined;
    this.dropUpstream('the daemon is shutting down');
    conn?.close('the daemon is shutting down');
    this.closeOwn(this.tap);
    this.tap = undefined;
    if (this.bus.bridge === this) this.bus.bridge = undefined;
  }

  // --- the bridge's own upstream connection ----------------------------------------------

  private async connect(): Promise<void> {
    this.state = 'connecting';
    let conn: UpstreamConnection;
    try {
      conn = await UpstreamConnection.connect(this.address, {
        label: `bridge of bus ${this.bus.name}`,
        handlers: { message: (m, fds) => this.fromBus(m, fds), closed: (reason) => this.lost(conn, reason) },
      });
    } catch (e) {
      this.retry(`cannot connect: ${(e as Error).message}`);
      return;
    }
    if (this.stopped) {
      conn.close('the daemon is shutting down');
      return;
    }
    this.busConn = conn;
    try {
      await conn.callDriver('AddMatch', 's', [NAME_OWNER_CHANGED_RULE]);
      this.changedSinceSnapshot = new Set();
      const names = (await conn.callDriver('ListNames', '', [])).body[0] as string[];
      const wellKnown = names.filter((n) => !n.startsWith(':') && n !== DRIVER_NAME);
      const owners = await Promise.all(wellKnown.map((n) => conn.callDriver('GetNameOwner', 's', [n]).then((r) => r.body[0] as string, () => '')));
      const driverCreds = await this.credentialsOf(conn, DRIVER_NAME);
      if (this.busConn !== conn) return;
      const changed = this.changedSinceSnapshot;
      this.changedSinceSnapshot = undefined;
      for (const n of names) if (n.startsWith(':') && n !== conn.uniqueName && !changed.has(n)) this.peerFor(n);
      wellKnown.forEach((n, i) => {
        if (owners[i] && !changed.has(n)) this.ownerChanged(n, '', owners[i]!);
      });
      this.driver = this.newPeer(DRIVER_NAME);
      this.driver.open(driverCreds);
      this.driver.acquireName(DRIVER_NAME);
    } catch (e) {
      conn.close(`setting up the bridge failed: ${(e as Error).message}`);
      return;
    }
    this.state = 'up';
    this.retryMs = RETRY_FIRST_MS;
    logger.info(`bus ${this.bus.name}: upstream ${this.address} connected as ${conn.uniqueName}; ${this.peers.size} upstream peers`);
    void this.subscribe();
    this.restoreNames();
  }

  /**
   * Takes upstream broadcast signals while some client has a match that can receive them,
   * and stops when none has. Resolves once upstream has the rule.
   */
  private subscribe(): Promise<void> | undefined {
    const conn = this.busConn;
    if (!conn || this.state !== 'up') return undefined;
    const wanted = this.listeners.size > 0;
    if (wanted && !this.subscription) {
      this.subscription = conn.callDriver('AddMatch', 's', [SIGNAL_RULE]).then(() => undefined, (e: unknown) => {
        logger.warn(`bus ${this.bus.name}: upstream refused the signal subscription: ${(e as Error).message}`);
      });
    } else if (!wanted && this.subscription) {
      const added = this.subscription;
      this.subscription = undefined;
      // After the AddMatch it undoes: upstream counts identical rules, so a quick re-add stays.
      void added.then(() => conn.callDriver('RemoveMatch', 's', [SIGNAL_RULE])).catch(() => undefined);
    }
    return this.subscription;
  }

  private retry(reason: string): void {
    if (this.state === 'stopped') return;
    this.state = 'down';
    // The first failure is news; the attempts after it only matter when debugging.
    const level = this.retryMs === RETRY_FIRST_MS ? 'warn' : 'verbose';
    logger.log(level, `bus ${this.bus.name}: upstream ${this.address}: ${reason}; trying again in ${this.retryMs} ms`);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.connect();
    }, this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
  }

  private lost(conn: UpstreamConnection, reason: string): void {
    if (this.busConn !== conn) return;
    this.busConn = undefined;
    this.subscription = undefined;
    this.dropUpstream('upstream is gone');
    this.retry(`lost (${reason}); its peers left the bus`);
  }

  /** Everything that stands for upstream leaves the bus. */
  private dropUpstream(reason: string): void {
    for (const t of this.linkTimers) clearTimeout(t);
    this.linkTimers.clear();
    for (const link of [...this.links.values()]) link.close(reason);
    for (const p of this.peers.values()) p.close();
    this.peers.clear();
    this.driver?.close();
    this.driver = undefined;
    this.deferredPeers.clear();
    this.changedSinceSnapshot = undefined;
  }

  private async credentialsOf(conn: UpstreamConnection, name: string): Promise<PeerCredentials> {
    try {
      const reply = await conn.callDriver('GetConnectionCredentials', 's', [name]);
      const creds: PeerCredentials = {};
      for (const [key, v] of reply.body[0] as Array<[string, Variant]>) {
        if (key === 'UnixUserID') creds.uid = v.value as number;
        else if (key === 'ProcessID') creds.pid = v.value as number;
        else if (key === 'LinuxSecurityLabel') creds.seclabel = (v.value as Buffer).toString('utf8').replace(/\0+$/, '');
      }
      return creds;
    } catch (e) {
      logger.debug(`upstream: no credentials for ${name}: ${(e as Error).message}`);
      return {};
    }
  }

  /** Messages to the bridge's own connection: NameOwnerChanged and broadcast signals. */
  private fromBus(m: Message, fds: number[]): void {
    if (m.type !== MessageType.Signal) {
      fds.forEach(closeFd);
      if (m.type === MessageType.MethodCall && !(m.flags & MessageFlag.NoReplyExpected) && m.sender) {
        this.busConn?.send(dbusError(m, DBusError.UnknownMethod, 'The bridge of kdbus-cuse answers no calls'), []);
      }
      return;
    }
    if (m.sender === DRIVER_NAME) {
      fds.forEach(closeFd);
      if (m.member === 'NameOwnerChanged' && m.signature === 'sss') {
        const [name, oldOwner, newOwner] = m.body as [string, string, string];
        this.ownerChanged(name, oldOwner, newOwner);
      }
      return;
    }
    // Unicast signals reach their link; what comes here unicast was meant for the bridge.
    if (m.destination !== undefined || m.sender === undefined || this.linkByName.has(m.sender)) {
      fds.forEach(closeFd);
      return;
    }
    this.toBus(this.peerFor(m.sender), m, fds, undefined);
  }

  /** NameOwnerChanged upstream: stand-ins come and go, and hold what their peers hold. */
  private ownerChanged(name: string, oldOwner: string, newOwner: string): void {
    this.changedSinceSnapshot?.add(name);
    if (name.startsWith(':')) {
      if (newOwner !== '' && oldOwner === '') {
        if (this.connecting.size > 0) this.deferredPeers.add(name);
        else if (!this.isOurs(name)) this.peerFor(name);
      } else if (newOwner === '') {
        this.deferredPeers.delete(name);
        const p = this.peers.get(name);
        if (p) {
          this.peers.delete(name);
          p.leave();
        }
      }
      return;
    }
    if (name === DRIVER_NAME) return;
    const before = oldOwner === '' ? undefined : this.peers.get(oldOwner);
    if (newOwner !== '' && !this.isOurs(newOwner)) {
      // Taking over in one step shows kdbus clients one NAME_CHANGE, as upstream made it.
      this.peerFor(newOwner).acquireName(name);
    } else {
      before?.releaseName(name);
    }
  }

  private isOurs(upstreamName: string): boolean {
    return upstreamName === this.busConn?.uniqueName || this.linkByName.has(upstreamName);
  }

  // --- stand-ins ---------------------------------------------------------------------------

  private newPeer(upstreamName: string): UpstreamPeer {
    return new UpstreamPeer(upstreamName, this.node, this.daemon, {
      message: (p, r) => this.fromStandIn(p, r),
      opened: (id) => this.ownIds.add(id),
      closed: (id) => this.ownIds.delete(id),
      contested: (name) => {
        const holder = this.bus.names.primaryOwner(name);
        if (!holder || this.ownIds.has(holder.id)) return false;
        logger.info(`:1.${holder.id} lost ${name} upstream; it goes to upstream's owner here too`);
        this.releaseHere(holder, name);
        return true;
      },
    });
  }

  /** The stand-in of an upstream peer, made (and its credentials asked for) on first sight. */
  private peerFor(upstreamName: string): UpstreamPeer {
    let p = this.peers.get(upstreamName);
    if (p) return p;
    p = this.newPeer(upstreamName);
    this.peers.set(upstreamName, p);
    const conn = this.busConn;
    if (conn) void this.credentialsOf(conn, upstreamName).then((creds) => p!.open(creds));
    return p;
  }

  private closeOwn(c: LocalConnection | undefined): void {
    if (!c) return;
    c.close();
    this.ownIds.delete(c.id);
  }

  /**
   * What a kdbus client sent a stand-in: out upstream through the client's link, to the
   * peer the stand-in stands for (or, for the upstream driver's stand-in, to the name the
   * client asked for).
   */
  private fromStandIn(via: UpstreamPeer, r: Received): void {
    if (r.kind !== 'message') return;
    const call = r.flags & MsgFlags.EXPECT_REPLY ? { cookie: r.cookie, via, deadlineNs: r.timeoutNs } : undefined;
    const refuse = (why: string): void => {
      closeMessageFiles(r);
      if (call) this.answerUnreachable(call, r.srcId, why);
      else logger.debug(`:1.${r.srcId}: a message to ${via.upstreamName} was dropped: ${why}`);
    };
    const link = this.linkFor(r.srcId);
    if (!link) return refuse('upstream is out of reach');
    if (r.fds.includes(null)) return refuse('a descriptor of it could not be received');
    let m: Message;
    try {
      m = fromKdbus(r, '', link.sendsNow);
    } catch (e) {
      return refuse(`it cannot go upstream: ${(e as Error).message}`);
    }
    // The payload's memfds were read in.
    closePayloadFiles(r);
    m.sender = undefined;
    m.destination = r.dstName ?? via.upstreamName;
    if (!link.send(m, fdsOf(r), call) && call) this.answerUnreachable(call, r.srcId, 'the upstream link of the caller is closed');
  }

  /** Broadcasts on the bus: what a client broadcasts is published upstream as its signal. */
  private fromTap(r: Received): void {
    if (r.kind !== 'message') return;
    // The tap's copy is only read: what it holds open is closed whatever becomes of it.
    try {
      this.publish(r);
    } finally {
      closeMessageFiles(r);
    }
  }

  private publish(r: KdbusMessage): void {
    if (r.dstId !== KDBUS_DST_ID_BROADCAST || this.ownIds.has(r.srcId)) return;
    const link = this.linkFor(r.srcId);
    if (!link) return;
    let m: Message;
    try {
      m = fromKdbus(r, '', link.sendsNow);
    } catch (e) {
      logger.debug(`:1.${r.srcId}: a broadcast cannot go upstream: ${(e as Error).message}`);
      return;
    }
    m.sender = undefined;
    m.destination = undefined;
    link.send(m, [], undefined);
  }

  /**
   * Puts an upstream message on the bus, sent by the stand-in of its upstream sender:
   * `client` is the kdbus id it is for (undefined for a broadcast).
   */
  private toBus(from: UpstreamPeer, m: Message, fds: number[], client: bigint | undefined, call?: PendingCall): void {
    let files: ImportedFd[];
    try {
      files = fds.map((fd) => new ImportedFd(fd));
    } catch (e) {
      fds.forEach(closeFd);
      logger.debug(`upstream ${m.sender}: a message with a descriptor that cannot be passed on was dropped: ${(e as Error).message}`);
      return;
    }
    const local: Message = { ...m, sender: undefined };
    if (client === undefined) local.destination = undefined;
    else if (m.destination === undefined || m.destination.startsWith(':')) local.destination = uniqueName(client);
    if (call) local.replySerial = call.cookie;
    let out;
    try {
      out = toKdbus(local, files, this.bloom, nowNs());
    } catch (e) {
      files.forEach((f) => f.close());
      logger.debug(`upstream ${m.sender}: a message kdbus cannot carry was dropped: ${(e as Error).message}`);
      return;
    }
    if (!out) {
      files.forEach((f) => f.close());
      return;
    }
    const link = client === undefined ? undefined : this.links.get(client);
    from.send(out, (e) => {
      if (m.type !== MessageType.MethodCall || m.flags & MessageFlag.NoReplyExpected || !link) return;
      const [name, text] = e.code === 'ESRCH' || e.code === 'ENXIO'
        ? [DBusError.ServiceUnknown, `The name ${m.destination} is not owned on the kdbus bus: ${e.message}`]
        : [DBusError.Failed, `kdbus refused the call: ${e.message}`];
      link.send(dbusError(m, name, text), [], undefined);
    });
  }

  /** A call that will get no answer from upstream: the caller hears it from the stand-in it called. */
  private answerUnreachable(call: PendingCall, client: bigint, why: string): void {
    const m: Message = {
      type: MessageType.Error, flags: MessageFlag.NoReplyExpected, serial: this.nextOwnCookie(), replySerial: call.cookie,
      errorName: DBusError.NoReply, destination: uniqueName(client), signature: 's', body: [`No reply from upstream: ${why}`],
    };
    const out = toKdbus(m, [], this.bloom, nowNs());
    if (out) call.via.send(out, () => undefined);
  }

  private nextOwnCookie(): bigint {
    return this.ownCookie++;
  }

  // --- client links --------------------------------------------------------------------------

  /** The upstream link of a kdbus client, made on first need; undefined while upstream is out of reach. */
  private linkFor(id: bigint): ClientLink | undefined {
    const existing = this.links.get(id);
    if (existing) return existing;
    if (this.state !== 'up' || this.ownIds.has(id)) return undefined;
    const client = this.bus.connection(id);
    if (!client || !client.isOrdinary || !client.active) return undefined;
    const link = new ClientLink(client, this.address, {
      message: (l, m, fds, call) => this.fromLink(l, m, fds, call),
      up: (l) => {
        this.linkByName.set(l.uniqueName!, l);
        this.linkUp(l);
      },
      down: (l, reason, unanswered) => this.linkDown(l, reason, unanswered),
    });
    this.links.set(id, link);
    this.connecting.add(link);
    return link;
  }

  /** A link knows its name: unique names that appeared meanwhile and are not links get stand-ins. */
  private linkUp(link: ClientLink): void {
    this.connecting.delete(link);
    if (this.connecting.size > 0) return;
    for (const n of this.deferredPeers) if (!this.isOurs(n)) this.peerFor(n);
    this.deferredPeers.clear();
  }

  /** What upstream sends a client: calls and signals from peers, answers to its calls. */
  private fromLink(link: ClientLink, m: Message, fds: number[], call: PendingCall | undefined): void {
    const client = link.client.id;
    if (m.type === MessageType.MethodReturn || m.type === MessageType.Error) {
      if (!call) {
        fds.forEach(closeFd);
        return;
      }
      this.toBus(call.via, m, fds, client, call);
      return;
    }
    if (m.sender === DRIVER_NAME || m.sender === undefined) {
      // NameAcquired, NameLost: the bus tells the client itself with NAME_ notifications.
      fds.forEach(closeFd);
      return;
    }
    this.toBus(this.peerFor(m.sender), m, fds, client);
  }

  private linkDown(link: ClientLink, reason: string, unanswered: PendingCall[]): void {
    const id = link.client.id;
    if (this.links.get(id) === link) this.links.delete(id);
    const name = link.uniqueName;
    if (name !== undefined && this.linkByName.get(name) === link) this.linkByName.delete(name);
    if (this.connecting.has(link)) this.linkUp(link);
    for (const call of unanswered) this.answerUnreachable(call, id, reason);
    logger.debug(`upstream link of :1.${id} closed: ${reason}`);
    if (this.state !== 'up' || !link.client.active) return;
    // Upstream dropped the client alone: claim its names again in a while.
    const timer = setTimeout(() => {
      this.linkTimers.delete(timer);
      if (link.client.active && this.state === 'up' && !this.links.has(id)) this.restoreNamesOf(link.client);
    }, LINK_RETRY_MS);
    this.linkTimers.add(timer);
  }

  // --- names ---------------------------------------------------------------------------------

  async acquireName(conn: Connection, name: string, flags: bigint): Promise<bigint> {
    const link = this.linkFor(conn.id);
    // Upstream out of reach: the name is taken here, and claimed upstream once it is back.
    if (!link) return acquireName(conn, name, flags);
    const answer = await link.requestName(name, flags);
    if (!conn.active) throw fail('ESHUTDOWN', `connection ${conn.id} went away while upstream was asked for ${name}`);
    switch (answer) {
      case RequestNameReply.PrimaryOwner:
        // Upstream chose this client; whoever holds the name here gives way as upstream's owner did.
        return acquireName(conn, name, flags | NameFlags.REPLACE_EXISTING);
      case RequestNameReply.InQueue:
        return acquireName(conn, name, (flags & ~NameFlags.REPLACE_EXISTING) | NameFlags.QUEUE);
      case RequestNameReply.AlreadyOwner:
        return acquireName(conn, name, flags);
      case RequestNameReply.Exists:
        throw new NameExistsError(flags & (NameFlags.ALLOW_REPLACEMENT | NameFlags.QUEUE), name);
      default:
        throw fail('EIO', `upstream answered RequestName ${name} with ${answer}, which D-Bus does not define`);
    }
  }

  nameReleased(conn: Connection, name: string): void {
    this.links.get(conn.id)?.releaseName(name);
  }

  connectionGone(conn: Connection): void {
    this.links.get(conn.id)?.close('the kdbus client disconnected');
    if (this.listeners.delete(conn.id)) void this.subscribe();
  }

  matchesChanged(conn: Connection): Promise<void> | undefined {
    if ((this.bus.matches.db(conn)?.messageEntries ?? 0) > 0) this.listeners.add(conn.id);
    else this.listeners.delete(conn.id);
    return this.subscribe();
  }

  unownedName(): Connection | undefined {
    const id = this.state === 'up' ? this.driver?.id : undefined;
    return id === undefined ? undefined : this.bus.connection(id);
  }

  isOwn(conn: Connection): boolean {
    return this.ownIds.has(conn.id);
  }

  /** After upstream came back: every client's names are claimed again. */
  private restoreNames(): void {
    for (const conn of this.bus.connections.values()) {
      if (conn.isOrdinary && !this.ownIds.has(conn.id)) this.restoreNamesOf(conn);
    }
  }

  /**
   * Claims upstream what a client holds here. A name upstream gave to someone else meanwhile
   * is the client's no longer (NAME_REMOVE or NAME_CHANGE tells it), or it waits in the queue.
   */
  private restoreNamesOf(conn: Connection): void {
    const held = [...this.bus.names.records(conn)].filter((r) => !(r.flags & NameFlags.ACTIVATOR));
    if (held.length === 0) return;
    const link = this.linkFor(conn.id);
    if (!link) return;
    for (const r of held) {
      const flags = r.flags & (NameFlags.ALLOW_REPLACEMENT | NameFlags.QUEUE);
      link.requestName(r.name, flags).then((answer) => {
        if (!conn.active || answer === RequestNameReply.PrimaryOwner || answer === RequestNameReply.AlreadyOwner) return;
        if (answer === RequestNameReply.InQueue && r.flags & NameFlags.IN_QUEUE) return;
        this.releaseHere(conn, r.name);
        if (answer === RequestNameReply.InQueue) this.acquireHere(conn, r.name, flags | NameFlags.QUEUE);
      }, (e: unknown) => {
        logger.warn(`:1.${conn.id}: ${r.name} could not be claimed upstream again: ${(e as Error).message}`);
      });
    }
    logger.info(`:1.${conn.id}: claiming ${held.length} name(s) upstream again`);
  }

  private releaseHere(conn: Connection, name: string): void {
    try {
      applyNameChanges(this.bus, this.bus.names.release(conn, name));
    } catch (e) {
      if (!(e instanceof KdbusError)) throw e;
    }
    flushNotifications(this.bus);
  }

  private acquireHere(conn: Connection, name: string, flags: bigint): void {
    try {
      acquireName(conn, name, flags);
    } catch (e) {
      if (!(e instanceof KdbusError)) throw e;
    }
    flushNotifications(this.bus);
  }
}

function fdsOf(r: KdbusMessage): number[] {
  return r.fds.map((f) => f!.fd);
}

/** An error reply to `to`, for its sender upstream. */
function dbusError(to: Message, name: string, text: string): Message {
  const m: Message = {
    type: MessageType.Error, flags: MessageFlag.NoReplyExpected, serial: 0n, replySerial: to.serial, errorName: name,
    signature: 's', body: [text] as Value[],
  };
  if (to.sender !== undefined) m.destination = to.sender;
  return m;
}
