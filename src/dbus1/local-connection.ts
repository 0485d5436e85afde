/**
 * A kdbus connection the daemon holds on behalf of someone else: a legacy dbus1 client of a
 * legacy endpoint, an upstream peer of the bridge. It drives the bus as a transport drives
 * it for a client process — Handle.ioctl on real kdbus command structs, messages read out
 * of its own pool and freed — so policy, quotas, metadata and notifications are the bus's
 * own, with the identity (credentials, pid) of the one it stands for. Three commands skip
 * the ioctl while the connection is up, with the same outcome: RECV, FREE and CONN_INFO.
 *
 * It deals in kdbus bytes only: payloads go out and come in as buffers, and translating them
 * (GVariant, dbus1) is someone else's business.
 *
 * Reception: when the bus wakes the connection, a drain is scheduled (never run inside the
 * waking command: handlers send, and the bus is not re-entrant). The drain RECVs while the
 * connection polls readable, copies each slice out of the pool, FREEs it, and hands the
 * decoded message to the handler.
 */
import {
  Attach, Cmd, HelloFlags, ItemType, KDBUS_DST_ID_NAME, KDBUS_MATCH_ID_ANY, KDBUS_PAYLOAD_DBUS, Limits, MatchFlags, MsgFlags, Off,
  RecvReturn, SendFlags, StructSize,
} from '../abi/constants';
import { fail, KdbusError } from '../abi/errno';
import { ItemWriter } from '../abi/items';
import { getU64, putU64 } from '../abi/words';
import type { CallContext, Credentials, ImportedFile } from '../bus/caller';
import { writeConnInfo } from '../bus/cmd-info';
import { recvNext, type RecvResult } from '../bus/recv';
import type { Connection } from '../bus/connection';
import { nowNs } from '../bus/deadline';
import { openHandle, Poll, type Handle, type KdbusNode } from '../bus/handle';
import { SparseStorage } from '../bus/pool-storage';
import { logger } from '../log/logger';
import { afterContinuations } from '../os/fd-watch';
import { sealedMemfd } from '../os/sealed-memfd';
import { FileKeeper, LocalCaller } from './local-caller';
import {
  decodeBloomParameter, decodeInfo, decodeList, decodeReceived, type InfoRecord, type KdbusMessage, type ListEntry,
  type Pids, type Received, type UnixCreds,
} from './pool-records';
import { payloadBuffers, POOLED_PAYLOAD_MIN } from '../bus/payload-buffers';

/** Whom the connection stands for: the opener of the file and the caller of every ioctl. */
export interface LocalIdentity {
  creds: Credentials;
  pid: number;
  /** Default: pid. */
  tid?: number;
  /** CAP_IPC_OWNER in the daemon's user namespace. */
  privileged: boolean;
}

export interface LocalConnectionOptions {
  /** Metadata the connection wants on what it receives (KDBUS_ATTACH_*). */
  attachFlagsRecv: bigint;
  /** Metadata it lets receivers see; default: all. */
  attachFlagsSend?: bigint;
  /** HELLO_ACCEPT_FD: receive messages carrying files (others get ECOMM sending them). */
  acceptFds?: boolean;
  /** HELLO_MONITOR: a privileged eavesdropper that sees every message and cannot send. */
  monitor?: boolean;
  /** Bytes, a multiple of 4096; default 16 MiB, as sd-bus asks. */
  poolSize?: number;
  /** CONN_DESCRIPTION. */
  description?: string;
  /**
   * Metadata to show instead of the process's (CREDS, PIDS, SECLABEL items of HELLO): for
   * peers without a local process. Only the bus owner or a privileged opener may fake; a
   * faking connection's messages carry no process metadata at all.
   */
  fake?: { creds?: UnixCreds; pids?: Pids; seclabel?: string };
}

/** A memfd range to send, taken over by the bus like the message's other files. */
export interface OutgoingMemfd {
  file: ImportedFile;
  start: number;
  size: number;
}

/** Bytes the connection puts into a sealed memfd of its own, sent as a PAYLOAD_MEMFD. */
export interface OutgoingSealed {
  sealed: Buffer;
}

export interface OutgoingMessage {
  /** A connection id, KDBUS_DST_ID_BROADCAST, or a well-known name. */
  dst: bigint | string;
  /** KDBUS_MSG_* flags; SIGNAL is added when a bloom filter is given. */
  flags?: bigint;
  cookie: bigint;
  /** For replies. */
  cookieReply?: bigint;
  /** Absolute CLOCK_MONOTONIC deadline of a call (EXPECT_REPLY); default: 25 s from now, as sd-bus. */
  timeoutNs?: bigint;
  priority?: bigint;
  /** Default KDBUS_PAYLOAD_DBUS. */
  payloadType?: bigint;
  /** PAYLOAD_VEC (buffers, read in place by the bus) and PAYLOAD_MEMFD items, in order. Empty buffers are skipped. */
  payload?: ReadonlyArray<Buffer | OutgoingMemfd | OutgoingSealed>;
  /** FDS. The bus takes these and the memfds over: they are closed once delivered, or when sending fails. */
  fds?: readonly ImportedFile[];
  /** Signal's bloom filter (generation 0), exactly the bus's bloom size. */
  bloom?: Buffer;
}

/** One rule of a match entry (MATCH_ADD item); ids default to KDBUS_MATCH_ID_ANY, an absent name to any name. */
export type MatchRule =
  | { kind: 'bloom-mask'; mask: Buffer }
  | { kind: 'sender-name'; name: string }
  | { kind: 'sender-id'; id: bigint }
  | { kind: 'dst-id'; id: bigint }
  | { kind: 'name-add' | 'name-remove' | 'name-change'; oldId?: bigint; newId?: bigint; name?: string }
  | { kind: 'id-add' | 'id-remove'; id?: bigint };

const DEFAULT_POOL_SIZE = 16 * 1024 * 1024;
const DEFAULT_CALL_TIMEOUT_NS = 25_000_000_000n;

const NAME_ITEM: Record<'name-add' | 'name-remove' | 'name-change', ItemType> = {
  'name-add': ItemType.NAME_ADD,
  'name-remove': ItemType.NAME_REMOVE,
  'name-change': ItemType.NAME_CHANGE,
};

/**
 * Drains run as microtasks, right after the command that queued the message, but at most
 * this many before the event loop gets its turn (the budget is refilled once the work of
 * the callback or turn that spent it is done): two local connections answering each other
 * would otherwise keep the loop from ever reaching a socket.
 */
const MICROTASK_DRAINS = 1024;
let microtaskDrains = MICROTASK_DRAINS;
const SETTLED = Promise.resolve();
let refillScheduled = false;

function refillDrains(): void {
  refillScheduled = false;
  microtaskDrains = MICROTASK_DRAINS;
}

function scheduleDrain(drain: () => void): void {
  if (microtaskDrains === 0) {
    setImmediate(drain);
    return;
  }
  microtaskDrains--;
  if (!refillScheduled) {
    refillScheduled = true;
    afterContinuations(refillDrains);
  }
  // A reaction on a settled promise rather than queueMicrotask, which makes an AsyncResource
  // for every drain; the order is the same (one microtask queue).
  void SETTLED.then(drain);
}

const NO_PARTS: ReadonlyArray<Buffer | OutgoingMemfd> = [];
const NO_FILES: readonly ImportedFile[] = [];
const INCOMPLETE_FDS = Number(RecvReturn.INCOMPLETE_FDS);
const NOT_LATIN1_TEXT = /[^\x01-\xff]/;
/** A name a NAME item carries as it is (latin1, no NUL) in a command far below the size limit. */
const isPlainName = (name: string): boolean => name.length <= Limits.NAME_MAX_LEN && !NOT_LATIN1_TEXT.test(name);
/** connInfo's record under construction, copied out before anything else can run. */
const infoScratch = new ItemWriter(256);

/** The words of KDBUS_PAYLOAD_DBUS ("DBusDBus": the same 32 bits twice). */
const PAYLOAD_DBUS_WORD = Number(KDBUS_PAYLOAD_DBUS & 0xffff_ffffn);

/**
 * DST_NAME items by name, as ItemWriter.string writes them: a connection sends to the same
 * few names again and again. Bounded, as the names come from clients.
 */
const dstNameItems = new Map<string, Buffer>();
const DST_NAME_ITEMS_KEPT = 256;

function dstNameItem(name: string): Buffer {
  let item = dstNameItems.get(name);
  if (item === undefined) {
    item = Buffer.from(new ItemWriter(64).string(ItemType.DST_NAME, name).finish());
    if (dstNameItems.size >= DST_NAME_ITEMS_KEPT) dstNameItems.clear();
    dstNameItems.set(name, item);
  }
  return item;
}


export class LocalConnection {
  /** The connection's unique id. */
  readonly id: bigint;
  /** The bus's id128 (HELLO), what dbus1 calls the bus id (GetId, SASL's OK). */
  readonly busId: Buffer;
  /** MAKE_ACCESS_* flags of the bus. */
  readonly busFlags: bigint;
  /** The bus's bloom parameters: filter size in bytes and number of hash functions. */
  readonly bloom: { readonly size: number; readonly nHash: number };

  private readonly caller: LocalCaller;
  private readonly keeper = new FileKeeper();
  private readonly ctx: CallContext;
  private readonly conn: Connection;
  private readonly w = new ItemWriter(1024);
  /** RECV's fields, filled by each receive(). */
  private readonly received: RecvResult = { dropped: 0, offset: 0, size: 0, msgFlags: 0n };
  private readonly freeBuf = Buffer.alloc(StructSize.cmd_free);
  private readonly freeAddr: bigint;
  private readonly sendBuf = Buffer.alloc(StructSize.cmd_send);
  private readonly sendAddr: bigint;
  private readonly stopWake: () => void;
  private messageHandler: ((r: Received) => void) | undefined;
  /** The handler is done with what it gets when it returns (onMessage's `transient`). */
  private transient = false;
  /** The reusable buffer the record being handled was read into, if it was. */
  private lease: Buffer | undefined;
  private droppedHandler: ((count: number) => void) | undefined;
  private disconnectHandler: (() => void) | undefined;
  /** Addresses mapped for the message being sent. */
  private readonly staged: bigint[] = [];
  /** The file numbers of the message being sent's payload parts (-1: a vector). */
  private readonly fileNos: number[] = [];
  private scheduled = false;
  /** drain() is running (flush() must not start it again from a handler). */
  private draining = false;
  private closed = false;
  private disconnectReported = false;

  /** Opens `endpoint` as `who` and says HELLO. Errors are the bus's KdbusErrors (EPERM, ESHUTDOWN, ...). */
  static open(endpoint: KdbusNode, who: LocalIdentity, opts: LocalConnectionOptions): LocalConnection {
    // Nobody maps this pool: it lives in the daemon's heap, whatever the transports use.
    const handle = openHandle(endpoint, { creds: who.creds, privileged: who.privileged, pid: who.pid, poolStorage: (size) => new SparseStorage(size) });
    try {
      return new LocalConnection(handle, who, opts);
    } catch (e) {
      handle.release();
      throw e;
    }
  }

  private constructor(
    readonly handle: Handle,
    who: LocalIdentity,
    opts: LocalConnectionOptions,
  ) {
    const caller = new LocalCaller();
    this.caller = caller;
    this.ctx = { mem: caller, files: caller, installer: this.keeper, pid: who.pid, tid: who.tid ?? who.pid, creds: who.creds };

    const w = this.w.reset();
    w.u64(0).u64((opts.acceptFds ? HelloFlags.ACCEPT_FD : 0n) | (opts.monitor ? HelloFlags.MONITOR : 0n)).u64(0);
    w.u64(opts.attachFlagsSend ?? Attach.ALL).u64(opts.attachFlagsRecv);
    w.u64(0).u64(0).u64(opts.poolSize ?? DEFAULT_POOL_SIZE).u64(0).u64(0).zeros(16);
    if (opts.description !== undefined) w.string(ItemType.CONN_DESCRIPTION, opts.description);
    const fake = opts.fake;
    if (fake?.creds) {
      const c = fake.creds;
      w.itemU64(ItemType.CREDS, c.uid, c.euid, c.suid, c.fsuid, c.gid, c.egid, c.sgid, c.fsgid);
    }
    if (fake?.pids) w.itemU64(ItemType.PIDS, fake.pids.pid, fake.pids.tid, fake.pids.ppid);
    if (fake?.seclabel !== undefined) w.string(ItemType.SECLABEL, fake.seclabel, 'utf8');
    const hello = this.runCommand(Cmd.HELLO);
    this.id = hello.readBigUInt64LE(Off.hello.id);
    this.busFlags = hello.readBigUInt64LE(Off.hello.bus_flags);
    this.busId = Buffer.from(hello.subarray(Off.hello.id128, Off.hello.id128 + 16));
    const itemsOffset = getU64(hello, Off.hello.offset);
    const itemsSize = getU64(hello, Off.hello.items_size);

    this.conn = handle.connection!;
    this.freeBuf.writeUInt32LE(StructSize.cmd_free, 0);
    this.freeAddr = caller.map(this.freeBuf, false);
    this.sendBuf.writeUInt32LE(StructSize.cmd_send, 0);
    this.sendAddr = caller.map(this.sendBuf, false);

    const bloom = decodeBloomParameter(this.readAndFree(itemsOffset, itemsSize));
    if (!bloom) throw fail('EOPNOTSUPP', 'HELLO returned no KDBUS_ITEM_BLOOM_PARAMETER');
    this.bloom = bloom;
    this.stopWake = handle.onWake(this.wake);
  }

  /** Still connected: not closed, and the bus has not shut the connection down. */
  get connected(): boolean {
    return !this.closed && (this.handle.poll() & Poll.HUP) === 0;
  }

  // --- sending ---------------------------------------------------------------------------

  /** An asynchronous SEND: returns once the message is queued (or dropped, for signals). */
  send(msg: OutgoingMessage): void {
    try {
      // A caller-memory address is below 2^47: exact as a number.
      putU64(this.sendBuf, Off.send.msg_address, Number(this.stageMessage(msg, 0n)));
      this.run(Cmd.SEND, this.sendAddr);
    } finally {
      this.unstage();
    }
  }

  /**
   * A synchronous call (SEND with SYNC_REPLY): resolves with the reply, rejects with what
   * kdbus returned (ETIMEDOUT, EPIPE, ECANCELED, ESHUTDOWN, EREMOTEIO, ...). EXPECT_REPLY
   * is implied. `signal` interrupts the wait (EINTR), as a signal interrupts a client's ioctl.
   */
  async call(msg: OutgoingMessage, opts: { signal?: AbortSignal } = {}): Promise<KdbusMessage> {
    const cmd = Buffer.alloc(StructSize.cmd_send);
    cmd.writeUInt32LE(StructSize.cmd_send, Off.cmd.size);
    cmd.writeBigUInt64LE(SendFlags.SYNC_REPLY, Off.cmd.flags);
    const keeper = new FileKeeper();
    const ctx: CallContext = { ...this.ctx, installer: keeper };
    if (opts.signal) ctx.signal = opts.signal;
    const cmdAddr = this.caller.map(cmd, false);
    try {
      let pending: void | Promise<void>;
      try {
        cmd.writeBigUInt64LE(this.stageMessage(msg, MsgFlags.EXPECT_REPLY), Off.send.msg_address);
        pending = this.handle.ioctl(Cmd.SEND, cmdAddr, ctx);
      } finally {
        this.unstage();
      }
      if (!pending) throw new Error('SEND with SYNC_REPLY returned without waiting');
      await pending;
      if (this.closed) throw fail('ESHUTDOWN', 'the connection was closed before its reply was read');
      const slice = this.readAndFree(getU64(cmd, Off.send.reply_offset), getU64(cmd, Off.send.reply_msg_size));
      const incomplete = (cmd.readUInt32LE(Off.send.reply_return_flags) & INCOMPLETE_FDS) !== 0;
      const reply = decodeReceived(slice, keeper.lookup, incomplete);
      if (reply?.kind !== 'message') throw fail('EBADMSG', 'a synchronous call was answered by something that is not a message');
      return reply;
    } finally {
      keeper.reset();
      this.caller.unmap(cmdAddr);
    }
  }

  /**
   * Builds the kdbus_msg in caller memory and returns its address. Payload buffers are
   * mapped, not copied; unstage() unmaps everything once SEND has read it.
   */
  private stageMessage(msg: OutgoingMessage, extraFlags: bigint): bigint {
    const w = this.w.reset();
    const caller = this.caller;
    const staged = this.staged;
    let flags = msg.flags ?? 0n;
    if (extraFlags !== 0n) flags |= extraFlags;
    if (msg.bloom) flags |= MsgFlags.SIGNAL;
    const byName = typeof msg.dst === 'string';
    let word56 = msg.cookieReply ?? 0n;
    if (flags & MsgFlags.EXPECT_REPLY) word56 = msg.timeoutNs ?? nowNs() + DEFAULT_CALL_TIMEOUT_NS;
    w.u64(0).u64(flags).u64(msg.priority ?? 0n).u64(byName ? KDBUS_DST_ID_NAME : (msg.dst as bigint)).u64(0);
    const payloadType = msg.payloadType ?? KDBUS_PAYLOAD_DBUS;
    if (payloadType === KDBUS_PAYLOAD_DBUS) w.u32(PAYLOAD_DBUS_WORD).u32(PAYLOAD_DBUS_WORD);
    else w.u64(payloadType);
    w.u64(msg.cookie).u64(word56);
    if (byName) {
      const name = msg.dst as string;
      if (name.length <= Limits.NAME_MAX_LEN) w.bytes(dstNameItem(name));
      else w.string(ItemType.DST_NAME, name);
    }

    // Files are offered before anything can fail, so that every one of them is consumed;
    // a memfd made here is offered as soon as it exists.
    const payload = msg.payload ?? NO_PARTS;
    const fds = msg.fds ?? NO_FILES;
    const fileNos = this.fileNos;
    fileNos.length = 0;
    for (let i = 0; i < payload.length; i++) {
      const part = payload[i]!;
      fileNos.push(Buffer.isBuffer(part) || 'sealed' in part ? -1 : caller.offerFile(part.file));
    }
    const firstFd = fds.length > 0 ? caller.offerFile(fds[0]!) : 0;
    for (let i = 1; i < fds.length; i++) caller.offerFile(fds[i]!);
    for (let i = 0; i < payload.length; i++) {
      const part = payload[i]!;
      if (!Buffer.isBuffer(part) && 'sealed' in part) {
        fileNos[i] = caller.offerFile(sealedMemfd(part.sealed, this.conn.bus.domain.bodyBytes.account(this.conn.cred.uid)));
      }
    }

    for (let i = 0; i < payload.length; i++) {
      const part = payload[i]!;
      if (Buffer.isBuffer(part)) {
        if (part.length === 0) continue;
        const addr = caller.map(part, true);
        staged.push(addr);
        w.itemU64(ItemType.PAYLOAD_VEC, part.length, Number(addr));
      } else {
        const at = w.beginItem(ItemType.PAYLOAD_MEMFD);
        const size = 'sealed' in part ? part.sealed.length : part.size;
        w.u64('sealed' in part ? 0 : part.start).u64(size).i32(fileNos[i]!).u32(0).endItem(at);
      }
    }
    if (fds.length > 0) {
      const at = w.beginItem(ItemType.FDS);
      for (let i = 0; i < fds.length; i++) w.i32(firstFd + i);
      w.endItem(at);
    }
    if (msg.bloom) {
      const at = w.beginItem(ItemType.BLOOM_FILTER);
      w.u64(0).bytes(msg.bloom).endItem(at);
    }
    const built = w.finish();
    built.writeUInt32LE(built.length, Off.msg.size);
    const addr = caller.map(built, false);
    staged.push(addr);
    return addr;
  }

  private unstage(): void {
    const staged = this.staged;
    for (let i = 0; i < staged.length; i++) this.caller.unmap(staged[i]!);
    staged.length = 0;
    this.caller.settleFiles();
  }

  // --- receiving -------------------------------------------------------------------------

  /**
   * Sets the receiver of messages and notifications (undefined: leave them queued). The
   * handler owns the files in what it gets and must close them. Payload buffers are views
   * into a copy of the pool slice, valid for as long as they are referenced; with
   * `transient`, only until the handler returns (a large copy is then a reused buffer).
   */
  onMessage(handler: ((r: Received) => void) | undefined, opts: { transient?: boolean } = {}): void {
    this.messageHandler = handler;
    this.transient = opts.transient ?? false;
    if (handler) this.wake();
  }

  /** Called with the count of messages the bus could not queue for this connection (RECV's dropped_msgs). */
  onDropped(handler: ((count: number) => void) | undefined): void {
    this.droppedHandler = handler;
  }

  /** Called once when the bus shuts the connection down (bus or endpoint gone), not on close(). */
  onDisconnect(handler: (() => void) | undefined): void {
    this.disconnectHandler = handler;
    if (handler) this.wake();
  }

  private readonly wake = (): void => {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    scheduleDrain(this.drain);
  };

  /**
   * Hands on at once what the bus has queued for this connection, rather than on the next
   * turn: for a message from outside the bus (the driver's) that must not overtake it.
   * Nothing happens while the handler is already being handed messages.
   */
  flush(): void {
    if (!this.draining) this.drain();
  }

  private readonly drain = (): void => {
    this.scheduled = false;
    this.draining = true;
    try {
      this.handOn();
    } finally {
      this.draining = false;
    }
  };

  private handOn(): void {
    while (this.messageHandler && !this.closed && (this.handle.poll() & Poll.IN) !== 0) {
      const r = this.receive();
      try {
        if (r === null) break;
        if (r) this.messageHandler?.(r);
      } catch (e) {
        logger.error(`local connection ${this.id}: message handler failed: ${(e as Error).stack ?? String(e)}`);
      } finally {
        if (this.lease) payloadBuffers.give(this.lease);
        this.lease = undefined;
      }
    }
    const onDisconnect = this.disconnectHandler;
    if (onDisconnect && !this.closed && !this.disconnectReported && (this.handle.poll() & Poll.HUP) !== 0) {
      this.disconnectReported = true;
      onDisconnect();
    }
  }

  /**
   * One RECV: the decoded message, undefined for something not worth handing on (an
   * unknown kernel item, or only a dropped count), null when RECV failed otherwise. Straight
   * to the bus, not through the ioctl: there is no struct to parse nor to write back to.
   */
  private receive(): Received | undefined | null {
    const r = this.received;
    let got: boolean;
    try {
      got = recvNext(this.conn, this.ctx, r);
    } catch (e) {
      if (!(e instanceof KdbusError)) throw e;
      logger.warn(`local connection ${this.id}: RECV failed: ${e.message}`);
      return null;
    }
    if (r.dropped > 0) this.droppedHandler?.(r.dropped);
    if (!got) return undefined;
    const slice = this.transient && r.size >= POOLED_PAYLOAD_MIN ? this.readLeased(r.offset, r.size) : this.readAndFree(r.offset, r.size);
    const incomplete = (r.msgFlags & RecvReturn.INCOMPLETE_FDS) !== 0n;
    try {
      return decodeReceived(slice, this.keeper.lookup, incomplete);
    } finally {
      this.keeper.reset();
    }
  }

  /**
   * FREE of a slice the bus just handed out. Straight to the pool while the connection is
   * up: the ioctl would add only the parsing of its argument, and that on every message.
   * Otherwise the ioctl, for the error it gives.
   */
  private free(offset: number): void {
    const conn = this.handle.connection;
    if (!this.closed && conn?.active) {
      conn.pool.freeByOffset(offset);
      return;
    }
    // Pool offsets are below 2^32 (pools are at most 4 GiB): no BigInt on this path.
    this.freeBuf.writeUInt32LE(offset, Off.free.offset);
    this.run(Cmd.FREE, this.freeAddr);
  }

  // --- names -----------------------------------------------------------------------------

  /**
   * NAME_ACQUIRE; returns the record's flags (PRIMARY, IN_QUEUE, ACQUIRED, ...). EEXIST when
   * taken and not queued, EPERM by policy.
   */
  acquireName(name: string, flags = 0n): bigint {
    this.w.reset().u64(0).u64(flags).u64(0).string(ItemType.NAME, name);
    return this.runCommand(Cmd.NAME_ACQUIRE).readBigUInt64LE(Off.cmd.return_flags);
  }

  /** NAME_RELEASE: ESRCH for a name nobody has, EADDRINUSE for one this connection does not hold. */
  releaseName(name: string): void {
    this.w.reset().u64(0).u64(0).u64(0).string(ItemType.NAME, name);
    this.runCommand(Cmd.NAME_RELEASE);
  }

  /** LIST with KDBUS_LIST_* flags. */
  listNames(flags: bigint): ListEntry[] {
    this.w.reset().u64(0).u64(flags).u64(0).u64(0).u64(0);
    const out = this.runCommand(Cmd.LIST);
    const size = getU64(out, Off.list.list_size);
    if (size === 0) return [];
    return decodeList(this.readAndFree(getU64(out, Off.list.offset), size));
  }

  /** CONN_INFO by id (ENXIO) or well-known name (ESRCH); shows `attachFlags` & what the subject allows. */
  connInfo(subject: bigint | string, attachFlags: bigint): InfoRecord {
    // The record CONN_INFO would put in the pool, built straight from the bus: the driver
    // asks for every call of an sd-bus service (its privilege check), and the ioctl, the
    // pool slice and FREE would cost more than the answer. What the command's own checks
    // would refuse (a connection shut down, a name that is no latin1 string) takes the ioctl.
    const conn = this.handle.connection;
    if (!this.closed && conn?.active && (typeof subject === 'bigint' || isPlainName(subject))) {
      const w = infoScratch.reset();
      writeConnInfo(w, conn, this.ctx.creds, typeof subject === 'bigint' ? subject : 0n, typeof subject === 'string' ? subject : undefined, attachFlags);
      // Decoded records keep views of their bytes for CMDLINE only: then they get a copy.
      const record = w.finish();
      return decodeInfo((attachFlags & Attach.CMDLINE) === 0n ? record : Buffer.from(record));
    }
    const w = this.w.reset().u64(0).u64(0).u64(0);
    w.u64(typeof subject === 'bigint' ? subject : 0n).u64(attachFlags).u64(0).u64(0);
    if (typeof subject === 'string') w.string(ItemType.NAME, subject);
    const out = this.runCommand(Cmd.CONN_INFO);
    return decodeInfo(this.readAndFree(getU64(out, Off.info_cmd.offset), getU64(out, Off.info_cmd.info_size)));
  }

  /** BUS_CREATOR_INFO: the bus's id, flags, name and creator metadata. */
  busCreatorInfo(attachFlags: bigint): InfoRecord {
    this.w.reset().u64(0).u64(0).u64(0).u64(0).u64(attachFlags).u64(0).u64(0);
    const out = this.runCommand(Cmd.BUS_CREATOR_INFO);
    return decodeInfo(this.readAndFree(getU64(out, Off.info_cmd.offset), getU64(out, Off.info_cmd.info_size)));
  }

  private readAndFree(offset: number, size: number): Buffer {
    const data = this.conn.pool.storage.read(offset, size);
    this.free(offset);
    return data;
  }

  /** readAndFree into a reusable buffer, given back when the handler returns (drain). */
  private readLeased(offset: number, size: number): Buffer {
    const lease = payloadBuffers.take(size);
    this.conn.pool.storage.readInto(offset, size, lease);
    this.free(offset);
    this.lease = lease;
    return lease.subarray(0, size);
  }

  // --- matches and attach flags ----------------------------------------------------------

  /**
   * MATCH_ADD: one entry of `rules` (all must match), or of ready-made item bytes. With
   * `replace`, the entries with the same cookie are replaced.
   */
  addMatch(cookie: bigint, rules: readonly MatchRule[] | Buffer, opts: { replace?: boolean } = {}): void {
    const w = this.w.reset().u64(0).u64(opts.replace ? MatchFlags.REPLACE : 0n).u64(0).u64(cookie);
    if (Buffer.isBuffer(rules)) w.bytes(rules);
    else for (const r of rules) writeRule(w, r);
    this.runCommand(Cmd.MATCH_ADD);
  }

  /** MATCH_REMOVE: every entry with the cookie; EBADSLT if there is none. */
  removeMatch(cookie: bigint): void {
    this.w.reset().u64(0).u64(0).u64(0).u64(cookie);
    this.runCommand(Cmd.MATCH_REMOVE);
  }

  /** UPDATE of the attach masks. */
  update(attach: { recv?: bigint; send?: bigint }): void {
    const w = this.w.reset().u64(0).u64(0).u64(0);
    if (attach.send !== undefined) w.itemU64(ItemType.ATTACH_FLAGS_SEND, attach.send);
    if (attach.recv !== undefined) w.itemU64(ItemType.ATTACH_FLAGS_RECV, attach.recv);
    this.runCommand(Cmd.UPDATE);
  }

  // --- teardown --------------------------------------------------------------------------

  /**
   * BYEBYE while still connected, then the last close of the handle: names released,
   * ID_REMOVE sent, queued calls answered with REPLY_DEAD, pending call() promises
   * rejected with ESHUTDOWN. Idempotent.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopWake();
    if ((this.handle.poll() & Poll.HUP) === 0) {
      try {
        this.w.reset().u64(0).u64(0).u64(0);
        this.runCommand(Cmd.BYEBYE);
      } catch (e) {
        // EBUSY: messages still queued; the release below discards them, as close() does.
        if (!(e instanceof KdbusError)) throw e;
      }
    }
    this.handle.release();
  }

  // --- ioctl plumbing --------------------------------------------------------------------

  /** Runs the command built in `w`, returns the struct as the bus left it (a view into `w`). */
  private runCommand(cmd: number): Buffer {
    const struct = this.w.finish();
    struct.writeUInt32LE(struct.length, Off.cmd.size);
    const addr = this.caller.map(struct, false);
    try {
      this.run(cmd, addr);
    } finally {
      this.caller.unmap(addr);
    }
    return struct;
  }

  private run(cmd: number, addr: bigint): void {
    if (this.handle.ioctl(cmd, addr, this.ctx)) throw new Error(`kdbus ioctl 0x${cmd.toString(16)} went asynchronous`);
  }
}

function writeRule(w: ItemWriter, r: MatchRule): void {
  switch (r.kind) {
    case 'bloom-mask':
      w.item(ItemType.BLOOM_MASK, r.mask);
      break;
    case 'sender-name':
      w.string(ItemType.NAME, r.name);
      break;
    case 'sender-id':
      w.itemU64(ItemType.ID, r.id);
      break;
    case 'dst-id':
      w.itemU64(ItemType.DST_ID, r.id);
      break;
    case 'id-add':
    case 'id-remove':
      w.itemU64(r.kind === 'id-add' ? ItemType.ID_ADD : ItemType.ID_REMOVE, r.id ?? KDBUS_MATCH_ID_ANY, 0n);
      break;
    default: {
      // kdbus_notify_name_change: old_id {id, flags}, new_id {id, flags}, then the name if any.
      const at = w.beginItem(NAME_ITEM[r.kind]);
      w.u64(r.oldId ?? KDBUS_MATCH_ID_ANY).u64(0).u64(r.newId ?? KDBUS_MATCH_ID_ANY).u64(0);
      if (r.name !== undefined) w.bytes(Buffer.from(r.name, 'latin1')).zeros(1);
      w.endItem(at);
    }
  }
}
