/**
 * A connection: what HELLO makes of an endpoint handle. It owns its pool, incoming queue,
 * quota table, match entries, name records, and the reply trackers of the calls it made.
 * disconnect() tears all of that down in kdbus's order, so a connection that goes away
 * hands its names on, tells its callers (REPLY_DEAD / EPIPE), and frees its queue.
 */
import { HelloFlags, ItemType, Limits, NameFlags, PolicyAccess } from '../abi/constants';
import { Errno, fail, KdbusError } from '../abi/errno';
import type { Bus } from './bus';
import type { Credentials, Opener } from './caller';
import type { Endpoint } from './endpoint';
import type { Staging } from './message';
import type { ProcMetadata } from './metadata';
import type { NameOwner } from './names';
import type { PolicyDb } from './policy';
import type { Pool } from './pool';
import { Queue, QueueEntry } from './queue';
import type { QuotaTable } from './quota';
import { ReplyTracker } from './reply';
import type { KdbusUser } from './user';
import { notifyIdChange, notifyReply, applyNameChanges, flushNotifications } from './notify';
import { logger } from '../log/logger';
import { DAEMON_VIEW, type NamespaceView } from '../os/namespaces';
import { delayUntil, nowNs } from './deadline';
import type { HeldAccount } from '../os/held-budget';

export const enum ConnKind {
  ORDINARY,
  ACTIVATOR,
  POLICY_HOLDER,
  MONITOR,
}

export function kindOf(helloFlags: bigint): ConnKind {
  if (helloFlags & HelloFlags.ACTIVATOR) return ConnKind.ACTIVATOR;
  if (helloFlags & HelloFlags.POLICY_HOLDER) return ConnKind.POLICY_HOLDER;
  if (helloFlags & HelloFlags.MONITOR) return ConnKind.MONITOR;
  return ConnKind.ORDINARY;
}

export interface ConnectionInit {
  id: bigint;
  ep: Endpoint;
  helloFlags: bigint;
  opener: Opener;
  user: KdbusUser;
  attachSend: bigint;
  attachRecv: bigint;
  description: string | undefined;
  pool: Pool;
  quota: QuotaTable;
  meta: ProcMetadata | undefined;
  fakeMeta: ProcMetadata | undefined;
  /** Pid and tid of the task that said HELLO (metadata and namespace anchor). */
  pid: number;
  /** The namespaces metadata is translated into for this connection; default: the daemon's. */
  view?: NamespaceView;
}

export class Connection implements NameOwner {
  readonly id: bigint;
  readonly helloFlags: bigint;
  readonly kind: ConnKind;
  readonly ep: Endpoint;
  readonly bus: Bus;
  readonly user: KdbusUser;
  /** Credentials of the opener of the file: what policy decisions use for this connection. */
  readonly cred: Credentials;
  /** What its match entries cost the daemon, counted with its user's (the opener's uid). */
  private readonly matchBytes: HeldAccount;
  readonly privileged: boolean;
  readonly owner: boolean;
  readonly pid: number;
  readonly view: NamespaceView;
  attachSend: bigint;
  attachRecv: bigint;
  readonly description: string | undefined;
  readonly pool: Pool;
  readonly quota: QuotaTable;
  readonly queue = new Queue();
  /** Messages and payload bytes this connection sent and was given, for `kdbus-cuse status`. */
  readonly counters = { sent: 0, sentBytes: 0, received: 0, receivedBytes: 0 };
  /** HELLO-time process snapshot (CONN_INFO), or the faked one a privileged client gave. */
  readonly meta: ProcMetadata | undefined;
  readonly fakeMeta: ProcMetadata | undefined;
  lostCount = 0;
  active = false;
  /** Calls this connection made that still wait for a reply (it is their reply destination). */
  readonly replies = new Set<ReplyTracker>();
  /** Calls made to this connection that it has to answer (it is their reply source). */
  readonly pendingCalls = new Set<ReplyTracker>();
  /** Trackers alive for calls this connection made, async and sync (EMLINK at 128). */
  requestCount = 0;
  private readonly wakeListeners = new Set<() => void>();
  private replyTimer: NodeJS.Timeout | undefined;
  private replyTimerDeadline = 0n;

  constructor(init: ConnectionInit) {
    this.id = init.id;
    this.helloFlags = init.helloFlags;
    this.kind = kindOf(init.helloFlags);
    this.ep = init.ep;
    this.bus = init.ep.bus;
    this.user = init.user;
    this.cred = init.opener.creds;
    this.matchBytes = this.bus.domain.matchBytes.account(init.opener.creds.uid);
    this.privileged = init.ep.isPrivileged(init.opener);
    this.owner = init.ep.isOwner(init.opener);
    this.pid = init.pid;
    this.view = init.view ?? DAEMON_VIEW;
    this.attachSend = init.attachSend;
    this.attachRecv = init.attachRecv;
    this.description = init.description;
    this.pool = init.pool;
    this.quota = init.quota;
    this.meta = init.meta;
    this.fakeMeta = init.fakeMeta;
  }

  get isOrdinary(): boolean {
    return this.kind === ConnKind.ORDINARY;
  }
  get isMonitor(): boolean {
    return this.kind === ConnKind.MONITOR;
  }
  get isActivator(): boolean {
    return this.kind === ConnKind.ACTIVATOR;
  }
  get isPolicyHolder(): boolean {
    return this.kind === ConnKind.POLICY_HOLDER;
  }

  /** Log prefix naming the connection, so every line about it can be traced. */
  /** How log lines name the connection: id, bus, pid and command, description. */
  get label(): string {
    const comm = this.meta?.pidComm?.toString();
    return `conn ${this.id} (${this.bus.name}, pid ${this.pid}${comm ? ` ${comm}` : ''}${this.description ? `, ${this.description}` : ''})`;
  }

  /** Names held as primary owner or activator holding the name: what OWNED_NAME and TALK use. */
  ownedNames(): Array<{ name: string; flags: bigint }> {
    const out: Array<{ name: string; flags: bigint }> = [];
    for (const r of this.bus.names.records(this)) if (!(r.flags & NameFlags.IN_QUEUE)) out.push(r);
    return out;
  }

  onWake(listener: () => void): () => void {
    this.wakeListeners.add(listener);
    return () => this.wakeListeners.delete(listener);
  }

  /** Something a poller or a blocked sync SEND waits for changed. */
  wake(): void {
    for (const l of this.wakeListeners) l();
  }

  /** POLLIN condition of kdbus: queued messages or lost ones to report. */
  get readable(): boolean {
    return !this.queue.empty || this.lostCount > 0;
  }

  /**
   * Its match entries would cost `bytes` from now on: recorded, or ENOMEM with nothing
   * recorded when that is more than its user's share (held-budget.ts). Less always fits.
   */
  holdMatchBytes(bytes: number): void {
    if (!this.matchBytes.hold(bytes)) throw fail('ENOMEM', `match entries of connection ${this.id}: ${this.matchBytes.refusal}`);
  }

  lostMessage(): void {
    if (++this.lostCount === 1) this.wake();
  }

  // --- policy (kdbus_conn_policy_*) ------------------------------------------------------

  /** Whether any name `whom` holds grants at least `access` in `db` for `creds`. */
  private queryAll(creds: Credentials, db: PolicyDb, whom: Connection, access: PolicyAccess): boolean {
    for (const r of this.bus.names.records(whom)) {
      if (r.flags & NameFlags.IN_QUEUE) continue;
      if (db.access(creds, r.name) >= access) return true;
    }
    return false;
  }

  canOwnName(creds: Credentials, name: string): boolean {
    if (this.ep.policy && this.ep.policy.access(creds, name) < PolicyAccess.OWN) return false;
    if (this.owner) return true;
    return this.bus.policy.access(creds, name) >= PolicyAccess.OWN;
  }

  canTalkTo(creds: Credentials, to: Connection): boolean {
    if (this.ep.policy && !this.queryAll(creds, this.ep.policy, to, PolicyAccess.TALK)) return false;
    if (this.owner) return true;
    // A stand-in for an upstream peer: the upstream bus judges the message, sent as the caller.
    if (this.bus.bridge?.isOwn(to)) return true;
    if (creds.euid === to.cred.uid) return true;
    return this.queryAll(creds, this.bus.policy, to, PolicyAccess.TALK);
  }

  canSeeName(creds: Credentials, name: string): boolean {
    if (!this.ep.policy) return true;
    return this.ep.policy.access(creds, name) >= PolicyAccess.SEE;
  }

  canSee(creds: Credentials, whom: Connection): boolean {
    return !this.ep.policy || this.queryAll(creds, this.ep.policy, whom, PolicyAccess.SEE);
  }

  canSeeNotification(staging: Staging): boolean {
    switch (staging.notifyType) {
      case ItemType.NAME_ADD:
      case ItemType.NAME_REMOVE:
      case ItemType.NAME_CHANGE:
        return this.canSeeName(this.cred, staging.notificationView().name!);
      default:
        return true;
    }
  }

  // --- delivery (kdbus_conn_entry_insert) --------------------------------------------------

  private makeEntry(staging: Staging, reply: ReplyTracker | undefined, nameId: bigint): QueueEntry {
    if (!this.active) throw fail('ENXIO', `destination ${this.id} is disconnected`);
    if (!this.isMonitor && !(this.helloFlags & HelloFlags.ACCEPT_FD) && staging.nFds > 0) {
      throw fail('ECOMM', `destination ${this.id} does not accept file descriptors`);
    }
    const { slice, charge } = staging.emit(this);
    return new QueueEntry(slice, charge, staging.priority, staging.gaps?.ref(), reply?.ref(), nameId);
  }

  /** Queues a message; throws what the sender of a unicast gets back. */
  deliver(staging: Staging, reply?: ReplyTracker, nameId = 0n): void {
    const entry = this.makeEntry(staging, reply, nameId);
    if (reply) reply.replyDst.linkReply(reply);
    this.counters.received++;
    this.counters.receivedBytes += staging.payload.length;
    this.queue.push(entry);
    this.wake();
  }

  /** Delivery where failure only counts as a lost message (broadcasts, signals, monitors). */
  deliverOrLose(staging: Staging): void {
    try {
      this.deliver(staging);
    } catch (e) {
      if (!(e instanceof KdbusError)) throw e;
      this.lostMessage();
    }
  }

  /**
   * A reply to a synchronous caller goes straight into the caller's pool, bypassing its
   * queue. Returns the errno for the replier; the caller wakes with EREMOTEIO where the
   * replier gets ECOMM, so both sides can tell whose fds were refused.
   */
  deliverSyncReply(staging: Staging, tracker: ReplyTracker): void {
    let err = 0;
    let thrown: KdbusError | undefined;
    if (tracker.waiting) {
      try {
        tracker.entry = this.makeEntry(staging, undefined, 0n);
        this.counters.received++;
        this.counters.receivedBytes += staging.payload.length;
      } catch (e) {
        if (!(e instanceof KdbusError)) throw e;
        thrown = e;
        err = e.errno;
      }
    } else {
      thrown = fail('ENXIO', `caller ${this.id} stopped waiting for the reply`);
      err = thrown.errno;
    }
    tracker.wakeup(err === Errno.ECOMM ? Errno.EREMOTEIO : err);
    this.unlinkReply(tracker);
    if (thrown) throw thrown;
  }

  // --- reply tracking -------------------------------------------------------------------

  /** The returned tracker holds one reference for the caller of this function. */
  newReplyTracker(callee: Connection, cookie: bigint, nameId: bigint, deadlineNs: bigint, sync: boolean): ReplyTracker {
    if (this.requestCount >= Limits.CONN_MAX_REQUESTS_PENDING) {
      throw fail('EMLINK', `connection ${this.id} already waits for ${Limits.CONN_MAX_REQUESTS_PENDING} replies`);
    }
    this.requestCount++;
    return new ReplyTracker(callee, this, cookie, nameId, deadlineNs, sync);
  }

  linkReply(t: ReplyTracker): void {
    if (t.linked) return;
    t.linked = true;
    t.ref();
    this.replies.add(t);
    t.replySrc.pendingCalls.add(t);
    if (!t.sync) this.scheduleReplyScan(t.deadlineNs);
  }

  unlinkReply(t: ReplyTracker): void {
    if (!t.linked) return;
    t.linked = false;
    this.replies.delete(t);
    t.replySrc.pendingCalls.delete(t);
    t.unref();
  }

  findReply(cookie: bigint, from: Connection | undefined): ReplyTracker | undefined {
    for (const t of this.replies) if (t.cookie === cookie && (!from || t.replySrc === from)) return t;
    return undefined;
  }

  scheduleReplyScan(deadline: bigint): void {
    if (this.replyTimer && this.replyTimerDeadline <= deadline) return;
    if (this.replyTimer) clearTimeout(this.replyTimer);
    this.replyTimerDeadline = deadline;
    this.replyTimer = setTimeout(() => this.scanReplies(), delayUntil(deadline));
    this.replyTimer.unref();
  }

  /** REPLY_TIMEOUT for async calls past their deadline; re-arms for the next one. */
  private scanReplies(): void {
    this.replyTimer = undefined;
    if (!this.active) return;
    const now = nowNs();
    let next = 0n;
    for (const t of [...this.replies]) {
      if (t.sync && !t.interrupted) continue;
      if (t.deadlineNs > now) {
        if (next === 0n || t.deadlineNs < next) next = t.deadlineNs;
        continue;
      }
      if (t.deadlineNs !== 0n && !t.interrupted) notifyReply(this.bus, ItemType.REPLY_TIMEOUT, this.id, t.cookie);
      this.unlinkReply(t);
    }
    if (next !== 0n) this.scheduleReplyScan(next);
    flushNotifications(this.bus);
  }

  // --- teardown ---------------------------------------------------------------------------

  /**
   * BYEBYE (ensureQueueEmpty) and close(): deactivate, release names, then drain. Returns
   * false, changing nothing, if BYEBYE finds messages queued.
   */
  disconnect(ensureQueueEmpty: boolean): boolean {
    if (!this.active) return true;
    if (ensureQueueEmpty && !this.queue.empty) return false;
    this.active = false;
    const bus = this.bus;

    applyNameChanges(bus, bus.names.releaseAll(this));
    bus.policy.removeOwner(this);
    if (!this.isMonitor) notifyIdChange(bus, ItemType.ID_REMOVE, this.id, this.helloFlags);

    bus.connections.delete(this.id);
    bus.monitors.delete(this);
    this.ep.connections.delete(this);
    bus.matches.removeConnection(this);
    this.matchBytes.hold(0);

    // kdbus_conn_release() tells the caller of every queued call, answered or timed out,
    // sync or not, without unlinking its tracker: a caller whose request is still linked
    // hears REPLY_DEAD again from the loop over pending calls below.
    for (const entry of this.queue.entries()) {
      this.queue.remove(entry);
      const t = entry.reply;
      if (t) notifyReply(bus, ItemType.REPLY_DEAD, t.replyDst.id, t.cookie);
      entry.dispose();
    }
    for (const t of [...this.replies]) this.unlinkReply(t);
    for (const t of [...this.pendingCalls]) {
      if (t.sync) t.wakeup(Errno.EPIPE);
      else notifyReply(bus, ItemType.REPLY_DEAD, t.replyDst.id, t.cookie);
      t.replyDst.unlinkReply(t);
    }
    if (this.replyTimer) clearTimeout(this.replyTimer);
    this.replyTimer = undefined;
    this.user.connections--;
    this.wake();
    flushNotifications(bus);
    if (bus.bridge && this.isOrdinary && !bus.bridge.isOwn(this)) bus.bridge.connectionGone(this);
    logger.verbose(`${this.label}: disconnected`);
    return true;
  }
}
