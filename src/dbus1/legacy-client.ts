/**
 * One client of the legacy endpoint: a dbus1 connection on a unix socket that is, after
 * Hello, a kdbus connection of its own on the bus (the role systemd-bus-proxyd played per
 * client). It authenticates the client (SASL EXTERNAL), routes its messages to the driver or
 * through kdbus, and turns what kdbus delivers (messages, name and id notifications, reply
 * failures) into dbus1, filtered by the client's match rules exactly.
 *
 * The client owns its socket stream, its kdbus connection (and with it names, matches,
 * pending replies and pool), once it became a monitor a monitor connection, and while it
 * eavesdrops an Eavesdropper; close() releases all of them.
 */
import { Attach, KDBUS_DST_ID_BROADCAST, KDBUS_DST_ID_NAME, ListFlags, NameFlags } from '../abi/constants';
import { KdbusError } from '../abi/errno';
import type { ImportedFile } from '../bus/caller';
import { nowNs } from '../bus/deadline';
import type { KdbusNode } from '../bus/handle';
import { logger } from '../log/logger';
import { callerIdentity } from '../os/caller-identity';
import type { HeldBudget } from '../os/held-budget';
import { ImportedFd } from '../os/pidfd-files';
import { readTask } from '../os/proc';
import { closeFd, type PeerCred } from '../os/unix-socket';
import { Bloom } from './bloom';
import { answerUnaddressed, callDriver, DBusError, DriverError, driverErrorOf, type DriverBus, type DriverClient } from './driver';
import { LocalConnection, type MatchRule as KdbusRule } from './local-connection';
import { kdbusIdOfUniqueName, kdbusMatchOf, MatchRule, type NameOwners } from './match-rule';
import { Eavesdropper } from './eavesdropper';
import { decodeMessage, encodeDecodedMessage, encodeMessage, MessageFlag, MessageType, UnknownMessageType, type Message } from './message';
import { MessageStream } from './message-stream';
import { withReusedOutput } from './output-buffer';
import { closeMessageFiles, closePayloadFiles, type KdbusMessage, type Received } from './pool-records';
import { SaslServer } from './sasl';
import type { ConnectionCounts, MatchRuleCounts } from './stats';
import {
  DRIVER_NAME, driverReply, driverSignal, errorReply, fromKdbus, matchView, nameOwnerChanged, toKdbus, uniqueName,
  uniqueNameChanged,
} from './translate';

/** What the endpoint gives each of its clients. */
export interface LegacyEndpointContext {
  readonly node: KdbusNode;
  readonly guid: string;
  readonly bus: DriverBus;
  /** uid of the bus's owner: with root, the only one who may monitor or change activation. */
  readonly ownerUid: number;
  readonly limits: LegacyLimits;
  /**
   * Descriptors and bytes of unfinished messages, and bytes queued for clients that do not
   * read, counted over all clients (held-budget.ts).
   */
  readonly heldFds: HeldBudget;
  readonly heldBytes: HeldBudget;
  readonly unsentBytes: HeldBudget;
  /** Current owners of the bus's names, for match rules. */
  readonly owners: NameOwners;
  /** Whether a name has an owner now: a well-known name's primary owner, a unique name's connection. */
  isOwned(name: string): boolean;
  /**
   * Clients that became monitors. The driver's traffic never crosses kdbus, so clients show
   * it to them: calls to the driver and the driver's answers and name signals.
   */
  readonly monitors: Set<LegacyClient>;
  /** Clients that eavesdrop (Eavesdropper): the driver's calls are shown to them too. */
  readonly eavesdroppers: Set<LegacyClient>;
  /** The match rules of all clients, for Debug.Stats. */
  readonly rules: MatchRuleCounts;
  /**
   * The legacy clients on the bus by kdbus id: their name changes they show monitors
   * themselves, and the driver reaches them by id (systemd's connection, statistics).
   */
  readonly legacyClients: Map<bigint, LegacyClient>;
  /** The client said Hello: it is a connection of the bus now, no longer an incomplete one. */
  registered(client: LegacyClient): void;
  forget(client: LegacyClient): void;
}

/** dbus-daemon's session-bus defaults, except where noted. */
export interface LegacyLimits {
  /** From connecting to the reply to Hello, as dbus-daemon's auth_timeout. */
  authTimeoutMs: number;
  maxMessageBytes: number;
  maxOutgoingBytes: number;
  maxFdsPerMessage: number;
  maxMatchRules: number;
  /**
   * Connections of one user that have not said Hello yet; a newer one closes the oldest.
   * dbus-daemon's max_incomplete_connections counts all users' together (64 on a system
   * bus); counted per user, one user's connections cannot push out another's.
   */
  maxIncompletePerUser: number;
}

export const DEFAULT_LEGACY_LIMITS: LegacyLimits = {
  authTimeoutMs: 30_000,
  maxMessageBytes: 128 * 1024 * 1024,
  maxOutgoingBytes: 128 * 1024 * 1024,
  maxFdsPerMessage: 16,
  maxMatchRules: 512,
  maxIncompletePerUser: 64,
};

const NAME_IN_QUEUE = NameFlags.IN_QUEUE;
/** Cookies of the client's own kdbus matches; AddMatch rules count up from FIRST_RULE_COOKIE. */
const OWN_NAMES_COOKIE = 1n;
const UNICAST_SIGNALS_COOKIE = 2n;
const FIRST_RULE_COOKIE = 16n;
const U32_MAX = 0xffff_ffffn;
const NO_FILES: readonly ImportedFile[] = [];
const NO_FDS: readonly number[] = [];

interface InstalledRule {
  rule: MatchRule;
  cookie: bigint;
}

export class LegacyClient implements DriverClient {
  private readonly stream: MessageStream;
  private readonly sasl: SaslServer;
  private authTimer: NodeJS.Timeout | undefined;
  private unixFds = false;
  private authenticated = false;
  private connection: LocalConnection | undefined;
  private monitorConn: LocalConnection | undefined;
  private monitorRules: MatchRule[] = [];
  private eavesdropper: Eavesdropper | undefined;
  private bloom: Bloom | undefined;
  private readonly rules: InstalledRule[] = [];
  private peakRules = 0;
  private nextCookie = FIRST_RULE_COOKIE;
  private closed = false;
  uniqueName = '';
  trusted = false;
  private readonly label: string;

  constructor(private readonly ctx: LegacyEndpointContext, fd: number, private readonly peer: PeerCred) {
    this.label = `legacy client pid ${peer.pid} (${comm(peer.pid)}, uid ${peer.uid})`;
    this.sasl = new SaslServer({ peerUid: peer.uid, guid: ctx.guid, unixFdsPossible: true });
    this.stream = new MessageStream(fd, {
      auth: (b) => this.onAuth(b),
      message: (raw) => this.onMessage(raw),
      closed: (reason) => this.onClosed(reason),
    }, {
      maxMessageBytes: ctx.limits.maxMessageBytes,
      maxOutgoingBytes: ctx.limits.maxOutgoingBytes,
      maxQueuedFds: ctx.limits.maxFdsPerMessage * 4,
      heldFds: ctx.heldFds.account(peer.uid),
      heldBytes: ctx.heldBytes.account(peer.uid),
      unsentBytes: ctx.unsentBytes.account(peer.uid),
    });
    this.authTimer = setTimeout(() => {
      const stage = this.authenticated ? 'no Hello' : 'authentication not done';
      this.close(`${stage} within ${ctx.limits.authTimeoutMs} ms of connecting`);
    }, ctx.limits.authTimeoutMs);
    this.authTimer.unref();
  }

  /** Who connected, as the kernel said (SO_PEERCRED). */
  get uid(): number {
    return this.peer.uid;
  }

  get conn(): LocalConnection {
    if (!this.connection) throw new DriverError(DBusError.Failed, 'not registered with Hello');
    return this.connection;
  }

  close(reason: string): void {
    this.stream.close(reason);
  }

  // --- from the client ---------------------------------------------------------------------

  private onAuth(bytes: Buffer): void {
    const step = this.sasl.feed(bytes);
    if (step.output.length > 0) this.stream.writeRaw(step.output);
    if (step.disconnect !== undefined) {
      this.close(`authentication failed: ${step.disconnect}`);
      return;
    }
    if (step.done) {
      this.authenticated = true;
      this.unixFds = step.done.unixFds;
      this.stream.startMessages(step.done.rest, step.done.unixFds);
    }
  }

  private onMessage(raw: Buffer): void {
    let m: Message;
    let unknownType = false;
    try {
      m = decodeMessage(raw);
    } catch (e) {
      if (!(e instanceof UnknownMessageType)) {
        this.close(`sent an invalid message: ${(e as Error).message}`);
        return;
      }
      m = e.decoded;
      unknownType = true;
    }
    const n = m.unixFds ?? 0;
    if (n > this.ctx.limits.maxFdsPerMessage) {
      this.close(`sent a message with ${n} descriptors (at most ${this.ctx.limits.maxFdsPerMessage})`);
      return;
    }
    let files: readonly ImportedFile[] = NO_FILES;
    if (n > 0) {
      const fds = this.stream.takeFds(n);
      if (!fds) {
        this.close(`a message announced ${n} descriptors that did not arrive`);
        return;
      }
      try {
        files = fds.map((fd) => new ImportedFd(fd));
      } catch (e) {
        fds.forEach(closeFd);
        this.close(`sent a descriptor that cannot be passed on: ${(e as Error).message}`);
        return;
      }
    }
    if (answerUnaddressed(this, m)) {
      files.forEach((f) => f.close());
      return;
    }
    if (!this.connection) {
      files.forEach((f) => f.close());
      if (m.type === MessageType.MethodCall && m.destination === DRIVER_NAME && m.member === 'Hello' && (m.interface ?? DRIVER_NAME) === DRIVER_NAME) {
        this.hello(m);
      } else {
        this.close('sent a message other than Hello before Hello');
      }
      return;
    }
    m.sender = this.uniqueName;
    if (this.monitorConn) {
      files.forEach((f) => f.close());
      this.close('a monitor sent a message (monitors may only listen)');
      return;
    }
    if (unknownType) {
      files.forEach((f) => f.close());
      this.refuseUnknownType(m);
      return;
    }
    if (m.destination === DRIVER_NAME) {
      files.forEach((f) => f.close());
      this.showMonitors(m);
      callDriver(this, this.ctx.bus, m);
      return;
    }
    this.toBus(m, files);
  }

  /**
   * dbus-daemon routes a message of an unknown type like any other, and then its policy
   * refuses it (AccessDenied); a destination that has no owner fails before that, as for
   * any message.
   */
  private refuseUnknownType(m: Message): void {
    const dest = m.destination;
    if (dest === undefined) {
      logger.debug(`${this.uniqueName}: a message of unknown type ${m.type} to nobody was dropped`);
      return;
    }
    let error: [string, string] = [DBusError.AccessDenied, 'Message bus will not accept messages of unknown type'];
    if (!this.ctx.isOwned(dest)) {
      error = m.flags & MessageFlag.NoAutoStart
        ? [DBusError.NameHasNoOwner, `Name "${dest}" does not exist`]
        : [DBusError.ServiceUnknown, `The name ${dest} was not provided by any .service files`];
    }
    this.sendToClient(errorReply(m, DRIVER_NAME, ...error));
  }

  private hello(m: Message): void {
    let conn: LocalConnection;
    try {
      const id = callerIdentity(this.peer.pid);
      conn = LocalConnection.open(this.ctx.node, { creds: id.creds, pid: id.tgid, privileged: id.privileged }, {
        attachFlagsRecv: 0n,
        acceptFds: this.unixFds,
        description: description('legacy', this.peer.pid),
      });
      this.trusted = id.creds.euid === 0 || id.creds.euid === this.ctx.ownerUid;
    } catch (e) {
      const [name, text] = driverErrorOf(e);
      this.sendToClient(errorReply(m, DRIVER_NAME, name, text));
      this.close(`Hello refused: ${text}`);
      return;
    }
    clearTimeout(this.authTimer);
    this.authTimer = undefined;
    this.ctx.registered(this);
    this.connection = conn;
    this.uniqueName = uniqueName(conn.id);
    this.ctx.legacyClients.set(conn.id, this);
    this.bloom = new Bloom(conn.bloom.size, conn.bloom.nHash);
    // fromBus is done with a message when it returns: encoded for the client, or dropped.
    conn.onMessage((r) => this.fromBus(r), { transient: true });
    conn.onDisconnect(() => this.close('the bus went away'));
    const self = conn.id;
    // dbus-daemon tells a client about its own names whatever its rules say (NameAcquired,
    // NameLost); kdbus delivers unicast signals only where a match asks for them.
    for (const rule of [
      { kind: 'name-add', newId: self }, { kind: 'name-change', newId: self },
      { kind: 'name-change', oldId: self }, { kind: 'name-remove', oldId: self },
    ] as KdbusRule[]) conn.addMatch(OWN_NAMES_COOKIE, [rule]);
    // dbus-daemon hands a signal to its destination whatever that one's rules say. kdbus
    // matches the dst_id a sender wrote: this connection's id, or KDBUS_DST_ID_NAME for a
    // signal sent to one of its names (the only name-addressed messages that reach it).
    conn.addMatch(UNICAST_SIGNALS_COOKIE, [{ kind: 'dst-id', id: self }]);
    conn.addMatch(UNICAST_SIGNALS_COOKIE, [{ kind: 'dst-id', id: KDBUS_DST_ID_NAME }]);
    m.sender = this.uniqueName;
    this.sendToClient(driverReply(m, 's', [this.uniqueName]));
    this.sendToClient(driverSignal('NameAcquired', 's', [this.uniqueName], this.uniqueName));
    logger.debug(`${this.label} is ${this.uniqueName}`);
  }

  private toBus(m: Message, files: readonly ImportedFile[]): void {
    const dest = m.destination;
    const name = dest !== undefined && !dest.startsWith(':') ? dest : undefined;
    // An owned name is the common case: only an unowned one may need activating.
    if (name !== undefined && !(m.flags & MessageFlag.NoAutoStart) && !this.ctx.isOwned(name) && this.ctx.bus.isActivatable(name)) {
      this.ctx.bus.startService(name, this).then(
        () => this.toBus(m, files),
        (e: unknown) => {
          files.forEach((f) => f.close());
          this.showMonitors(m);
          this.sendToClient(errorReply(m, DRIVER_NAME, ...driverErrorOf(e)));
        },
      );
      return;
    }
    // The bus copies the message into its receivers' pools within send(): then its bytes are done with.
    withReusedOutput((bytes) => {
      let out;
      try {
        out = toKdbus(m, files, this.bloom!, nowNs(), true, bytes);
      } catch (e) {
        files.forEach((f) => f.close());
        this.close(`sent a message kdbus cannot carry: ${(e as Error).message}`);
        return;
      }
      if (!out) {
        files.forEach((f) => f.close());
        return;
      }
      try {
        this.conn.send(out);
      } catch (e) {
        if (!(e instanceof KdbusError)) throw e;
        // A reply nobody waits for (EBADSLT) cannot cross kdbus; whatever else the bus refuses
        // earns an error, as dbus-daemon sends one even where NO_REPLY_EXPECTED asks for none.
        if (e.code === 'EBADSLT') {
          logger.debug(`${this.uniqueName}: a reply to ${dest} was dropped: ${e.message}`);
          return;
        }
        // dbus-daemon's monitors see a message before the bus finds it has nowhere to go;
        // kdbus's see what it delivers.
        this.showMonitors(m);
        this.sendToClient(errorReply(m, DRIVER_NAME, ...sendError(e, m)));
      }
    });
  }

  // --- to the client -----------------------------------------------------------------------

  /** DriverClient: the driver's answers. */
  send(m: Message): void {
    this.sendToClient(m);
  }

  /** DriverClient: dbus-daemon shows a driver call to eavesdroppers once it was answered without an error. */
  answered(call: Message): void {
    for (const c of this.ctx.eavesdroppers) {
      c.eavesdropper?.flush();
      c.offer(call);
    }
  }

  /** A message from outside the client's kdbus connection (the driver's, or one overheard), sent if a rule takes it. */
  private offer(m: Message): void {
    if (this.wants(m)) this.sendToClient(m, NO_FDS, true);
  }

  /**
   * `shown`: monitors have seen it already (it is their own capture). `decoded`: m is as a
   * decoder gave it, sender and destination aside (see encodeDecodedMessage).
   */
  private sendToClient(m: Message, fds: readonly number[] = NO_FDS, shown = false, decoded = false): boolean {
    if (!shown && m.sender === DRIVER_NAME && m.member !== 'NameOwnerChanged') this.showMonitors(m);
    // The stream copies what the socket does not take at once: the bytes are done with after send().
    return withReusedOutput((out) => {
      let raw: Buffer;
      try {
        raw = decoded ? encodeDecodedMessage(m, out) : encodeMessage(m, out);
      } catch (e) {
        logger.warn(`${this.uniqueName || this.label}: a message for it could not be encoded: ${(e as Error).message}`);
        fds.forEach(closeFd);
        return true;
      }
      return this.stream.send(raw, fds);
    });
  }

  /**
   * A broadcast of the driver's own (ActivatableServicesChanged), offered to every client of
   * the endpoint: a monitor sees it (once, as it is offered once), another client if one of
   * its rules takes it.
   */
  driverBroadcast(m: Message): void {
    if (this.monitorConn) {
      this.monitorConn.flush();
      this.capture(m);
    } else if (this.connection) {
      this.offer(m);
    }
  }

  private wants(m: Message): boolean {
    const view = matchView(m);
    return this.rules.some((r) => r.rule.matches(view, this.ctx.owners));
  }

  private fromBus(r: Received): void {
    switch (r.kind) {
      case 'message':
        return this.deliver(r);
      case 'name-add':
      case 'name-change':
      case 'name-remove': {
        const self = this.conn.id;
        const lost = r.kind !== 'name-add' && r.oldId === self && !(r.oldFlags & NAME_IN_QUEUE);
        const acquired = r.kind !== 'name-remove' && r.newId === self && !(r.newFlags & NAME_IN_QUEUE);
        if (lost) this.sendToClient(driverSignal('NameLost', 's', [r.name], this.uniqueName));
        const changed = nameOwnerChanged(r);
        // Monitors see a legacy client's name change from the client, in dbus-daemon's order
        // (NameLost, NameOwnerChanged, NameAcquired), once: from the new owner if legacy.
        if (changed && (r.newId === self || (r.oldId === self && !this.ctx.legacyClients.has(r.newId)))) this.showMonitors(changed);
        if (changed && this.wants(changed)) this.sendToClient(changed);
        if (acquired) this.sendToClient(driverSignal('NameAcquired', 's', [r.name], this.uniqueName));
        return;
      }
      case 'id-add':
      case 'id-remove': {
        const changed = uniqueNameChanged(r.id, r.kind === 'id-add');
        if (this.wants(changed)) this.sendToClient(changed);
        return;
      }
      case 'reply-timeout':
      case 'reply-dead': {
        if (r.cookie > U32_MAX) return;
        const call = { serial: r.cookie, sender: this.uniqueName } as Message;
        const text = r.kind === 'reply-timeout'
          ? 'Did not receive a reply. Possible causes include: the remote application did not send a reply, the message bus security policy blocked the reply, the reply timeout expired, or the network connection was broken.'
          : 'Message recipient disconnected from message bus without replying';
        this.sendToClient(errorReply(call, DRIVER_NAME, DBusError.NoReply, text));
        return;
      }
    }
  }

  private deliver(k: KdbusMessage): void {
    const fds = k.fds.length === 0 ? NO_FDS : k.fds.map((f) => f?.fd ?? -1);
    let m: Message;
    try {
      m = fromKdbus(k, this.uniqueName);
    } catch (e) {
      // Untranslatable (a 64-bit cookie, a foreign payload) or a malformed GVariant message
      // from a kdbus client: the legacy client never sees it.
      return this.drop(k, (e as Error).message);
    }
    // The payload's memfds were read in.
    closePayloadFiles(k);
    if (k.dstId === KDBUS_DST_ID_BROADCAST && !this.wants(m)) return this.drop(k, 'no match rule of the client takes it');
    if (fds.includes(-1)) return this.drop(k, 'a descriptor of it could not be received');
    if (!this.sendToClient(m, fds, false, true)) {
      for (const f of k.fds) f?.close();
      this.refuseForFullQueue(m);
    }
  }

  private drop(k: KdbusMessage, why: string): void {
    closeMessageFiles(k);
    logger.debug(`${this.uniqueName}: a message from :1.${k.srcId} was dropped: ${why}`);
  }

  /** dbus-daemon answers a call to a client that does not read with LimitsExceeded. */
  private refuseForFullQueue(m: Message): void {
    logger.warn(`${this.uniqueName}: does not read its messages; one from ${m.sender} was refused`);
    if (m.type !== MessageType.MethodCall || m.flags & MessageFlag.NoReplyExpected || !m.sender) return;
    const reply = errorReply(m, this.uniqueName, DBusError.LimitsExceeded, `The maximum number of pending bytes for ${this.uniqueName} was reached`);
    reply.destination = m.sender;
    const out = toKdbus(reply, [], this.bloom!, nowNs());
    try {
      if (out) this.conn.send(out);
    } catch (e) {
      logger.debug(`${this.uniqueName}: could not refuse a call: ${(e as Error).message}`);
    }
  }

  // --- match rules (the driver calls these) --------------------------------------------------

  addMatch(rule: MatchRule): void {
    if (this.rules.length >= this.ctx.limits.maxMatchRules) {
      throw new DriverError(DBusError.LimitsExceeded, `Connection "${this.uniqueName}" is not allowed to add more match rules (maximum ${this.ctx.limits.maxMatchRules})`);
    }
    const cookie = this.nextCookie++;
    try {
      for (const entry of kdbusEntries(rule, this.bloom!)) this.conn.addMatch(cookie, entry);
      if (rule.eavesdrop) this.startEavesdropping();
    } catch (e) {
      this.safeRemoveMatch(cookie);
      throw e;
    }
    this.rules.push({ rule, cookie });
    this.peakRules = Math.max(this.peakRules, this.rules.length);
    this.ctx.rules.added(this.rules.length);
  }

  removeMatch(rule: MatchRule): boolean {
    const i = this.rules.findIndex((r) => r.rule.equals(rule));
    if (i < 0) return false;
    const [removed] = this.rules.splice(i, 1);
    this.ctx.rules.removed();
    this.safeRemoveMatch(removed!.cookie);
    if (!this.rules.some((r) => r.rule.eavesdrop)) this.stopEavesdropping();
    return true;
  }

  /** Debug.Stats: the rules as the client gave them. */
  matchRules(): string[] {
    return this.rules.map((r) => r.rule.toString());
  }

  /** Debug.Stats: what dbus-daemon counts of a connection of its own. */
  statsCounts(): NonNullable<ConnectionCounts['legacy']> {
    return {
      matchRules: this.rules.length,
      peakMatchRules: this.peakRules,
      incomingBytes: this.stream.incomingBytes,
      incomingFds: this.stream.queuedFds,
      outgoingMessages: this.stream.outgoingMessages,
      outgoingBytes: this.stream.outgoingBytes,
      outgoingFds: this.stream.outgoingFds,
    };
  }

  /** Only a client that may become a monitor sees what others address to each other; another's eavesdrop='true' rules take broadcasts alone. */
  private startEavesdropping(): void {
    if (this.eavesdropper || !this.trusted) return;
    const id = callerIdentity(this.peer.pid);
    this.eavesdropper = new Eavesdropper({
      node: this.ctx.node,
      creds: id.creds,
      pid: id.tgid,
      description: description('legacy-eavesdrop', this.peer.pid),
      owners: this.ctx.owners,
      self: this.uniqueName,
      overhear: (m) => this.offer(m),
    });
    this.ctx.eavesdroppers.add(this);
  }

  private stopEavesdropping(): void {
    this.eavesdropper?.close();
    this.eavesdropper = undefined;
    this.ctx.eavesdroppers.delete(this);
  }

  private safeRemoveMatch(cookie: bigint): void {
    try {
      this.conn.removeMatch(cookie);
    } catch (e) {
      if (!(e instanceof KdbusError && e.code === 'EBADSLT')) throw e;
    }
  }

  // --- monitoring ------------------------------------------------------------------------

  becomeMonitor(rules: MatchRule[]): void {
    if (!this.trusted) throw new DriverError(DBusError.AccessDenied, 'Only the bus owner or root may become a monitor');
    const id = callerIdentity(this.peer.pid);
    // As with dbus-daemon, a monitor owns nothing, not even its unique name: its ordinary
    // connection goes first (the monitor does not see its own names go), and it is told it
    // lost each name once the call is answered.
    const conn = this.conn;
    const names = conn.listNames(ListFlags.NAMES).filter((e) => e.id === conn.id).flatMap((e) => e.names.map((n) => n.name));
    conn.onMessage(undefined);
    conn.onDisconnect(undefined);
    this.ctx.legacyClients.delete(conn.id);
    conn.close();
    this.ctx.rules.removed(this.rules.splice(0).length);
    this.stopEavesdropping();
    // kdbus monitors must be privileged; the endpoint vouches for a client it found trusted.
    this.monitorConn = LocalConnection.open(this.ctx.node, { creds: id.creds, pid: id.tgid, privileged: true }, {
      attachFlagsRecv: 0n,
      acceptFds: this.unixFds,
      monitor: true,
      description: description('legacy-monitor', this.peer.pid),
    });
    this.monitorRules = rules.map((r) => r.eavesdropping());
    this.monitorConn.onMessage((r) => this.monitored(r));
    this.monitorConn.onDisconnect(() => this.close('the bus went away'));
    this.ctx.monitors.add(this);
    setImmediate(() => {
      for (const name of [...names, this.uniqueName]) this.sendToClient(driverSignal('NameLost', 's', [name], this.uniqueName));
    });
    logger.info(`${this.uniqueName} (${this.label}) became a monitor`);
  }

  /**
   * A message of the driver's conversation with some client, for every monitor that wants
   * it, after what the bus delivered to the monitor before it: a client's signal comes
   * before the driver call it made next.
   */
  private showMonitors(m: Message): void {
    for (const monitor of this.ctx.monitors) {
      if (monitor === this) continue;
      monitor.monitorConn?.flush();
      monitor.capture(m);
    }
  }

  private capture(m: Message): void {
    const view = matchView(m);
    if (this.monitorRules.length > 0 && !this.monitorRules.some((rule) => rule.matches(view, this.ctx.owners))) return;
    this.sendToClient(m.unixFds === undefined ? m : { ...m, unixFds: undefined }, [], true);
  }

  private monitored(r: Received): void {
    let m: Message | undefined;
    if (r.kind === 'message') {
      const dest = r.dstId === KDBUS_DST_ID_BROADCAST || r.dstId === 0n ? '' : uniqueName(r.dstId);
      try {
        m = fromKdbus(r, dest);
      } catch (e) {
        logger.debug(`${this.uniqueName}: a monitored message could not be shown: ${(e as Error).message}`);
      }
      closeMessageFiles(r);
      if (m && m.destination === '') m.destination = undefined;
    } else if (r.kind === 'name-add' || r.kind === 'name-change' || r.kind === 'name-remove') {
      if (this.ctx.legacyClients.has(r.newId) || this.ctx.legacyClients.has(r.oldId)) return;
      m = nameOwnerChanged(r);
    } else if (r.kind === 'id-add' || r.kind === 'id-remove') {
      m = uniqueNameChanged(r.id, r.kind === 'id-add');
    }
    if (m) this.capture(m);
  }

  // --- teardown ----------------------------------------------------------------------------

  private onClosed(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.authTimer);
    this.ctx.monitors.delete(this);
    if (this.connection) this.ctx.legacyClients.delete(this.connection.id);
    this.ctx.rules.removed(this.rules.splice(0).length);
    this.stopEavesdropping();
    this.monitorConn?.close();
    this.connection?.close();
    this.ctx.forget(this);
    logger.debug(`${this.uniqueName || this.label} disconnected: ${reason}`);
  }
}

/**
 * The kdbus match entries that let through what `rule` may match: broadcasts (bloom mask,
 * sender), and the NAME_/ID_ notifications behind NameOwnerChanged. The exact rule is
 * checked again on every message (a bloom mask has false positives).
 */
function kdbusEntries(rule: MatchRule, bloom: Bloom): KdbusRule[][] {
  // eavesdrop='true' takes broadcasts as the rule without it does; what it adds, messages
  // addressed to others, kdbus shows only to monitors: the client's Eavesdropper has one.
  const parts = kdbusMatchOf(rule, 'safe');
  const entries: KdbusRule[][] = [];
  if (rule.sender !== DRIVER_NAME && (rule.type === undefined || rule.type === 'signal')) {
    const entry: KdbusRule[] = [];
    if (parts.bloomKeys.length > 0) entry.push({ kind: 'bloom-mask', mask: bloom.mask(parts.bloomKeys) });
    if (parts.senderId !== undefined) entry.push({ kind: 'sender-id', id: parts.senderId });
    if (parts.senderName !== undefined) entry.push({ kind: 'sender-name', name: parts.senderName });
    entries.push(entry);
  }
  const noc = parts.nameOwnerChanged;
  if (noc) {
    const id = (n?: string): bigint | undefined => (n === undefined || n === '' ? undefined : kdbusIdOfUniqueName(n));
    const named = noc.arg0 !== undefined && !noc.arg0.startsWith(':') ? noc.arg0 : undefined;
    if (noc.arg0 === undefined || named !== undefined) {
      for (const kind of ['name-add', 'name-change', 'name-remove'] as const) {
        const e: KdbusRule = { kind };
        if (named !== undefined) e.name = named;
        const oldId = id(noc.arg1);
        const newId = id(noc.arg2);
        if (oldId !== undefined) e.oldId = oldId;
        if (newId !== undefined) e.newId = newId;
        entries.push([e]);
      }
    }
    if (noc.arg0 === undefined || noc.arg0.startsWith(':')) {
      const unique = id(noc.arg0);
      for (const kind of ['id-add', 'id-remove'] as const) entries.push([unique === undefined ? { kind } : { kind, id: unique }]);
    }
  }
  return entries;
}

/**
 * dbus-daemon's error for a message it cannot pass on. An unowned destination is one it
 * tried to activate, unless the message said NO_AUTO_START.
 */
function sendError(e: KdbusError, m: Message): [string, string] {
  switch (e.code) {
    case 'ESRCH':
    case 'ENXIO':
    case 'EADDRNOTAVAIL':
    case 'ECONNRESET':
      if (m.flags & MessageFlag.NoAutoStart) return [DBusError.NameHasNoOwner, `Name "${m.destination}" does not exist`];
      return [DBusError.ServiceUnknown, `The name ${m.destination} was not provided by any .service files`];
    case 'ECOMM':
      return [DBusError.NotSupported, 'Tried to send message with Unix file descriptors to a client that doesn\'t support that.'];
    case 'EMSGSIZE':
      return [DBusError.LimitsExceeded, `The message is too large for the bus: ${e.message}`];
    default:
      return driverErrorOf(e);
  }
}

/** CONN_DESCRIPTION allows letters, digits and '_', with '-' or '.' between them. */
function description(kind: string, pid: number): string {
  const c = comm(pid).replace(/[^A-Za-z0-9_]+/g, '_');
  return `${kind}-${c}`;
}

function comm(pid: number): string {
  try {
    return readTask(pid, pid, Attach.PID_COMM).pidComm?.toString() ?? '?';
  } catch {
    return '?';
  }
}
