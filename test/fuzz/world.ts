/**
 * One world of the fuzz run: a domain with a bus full of live peers (ordinary connections
 * of two users and on a custom endpoint, a monitor, activators, policy holders) and handles
 * in every role, seen from the fake client process that owns them. Every ioctl goes through
 * call(), which judges it:
 *  - only a KdbusError with an errno kdbus can return for that command and role may come
 *    out (errno-oracle.ts); any other exception fails the run;
 *  - the bus writes only into the command struct (and the SEND's message) it was given;
 *  - poll() agrees with the connection's state; a negotiation never changes the role;
 *  - what lands in the pool is well-formed, and message data is what the sender sent;
 *  - every promise settles (sync SENDs by their deadline, or at teardown).
 * Between calls check() verifies that every file reference the bus imported is closed
 * exactly when no queued message holds it any more, that pool accounting matches the
 * queues and that reply trackers are consistently linked; teardown() closes everything and
 * checks that no bus, charge, tracker, pool slice, name, match, file or timer is left.
 */
import { Cmd, ItemType, KDBUS_FLAG_NEGOTIATE, MsgFlags, Off, U64_MAX } from '../../src/abi/constants';
import { Errno, errnoName, KdbusError } from '../../src/abi/errno';
import type { Bus } from '../../src/bus/bus';
import type { CallContext, Credentials } from '../../src/bus/caller';
import type { Connection } from '../../src/bus/connection';
import { Domain } from '../../src/bus/domain';
import type { Endpoint } from '../../src/bus/endpoint';
import { type Handle, type KdbusNode, openHandle, Poll } from '../../src/bus/handle';
import type { Interruption } from '../../src/bus/interruption';
import { allowedErrnos, commandName, type HandleRole } from './errno-oracle';
import { FileRef, FuzzFile, FuzzFiles, FuzzMemory, locatePayload, payloadPattern } from './fake-process';
import { type GenContext, Rng } from './generators';
import type { VirtualClock } from './virtual-clock';

export const ROOT = 0;
export const OTHER_UID = 1000;
/** Names every world uses; activators and policy holders are set up for some of them. */
const NAMES = ['org.fuzz.A', 'org.fuzz.B', 'org.fuzz.C', 'org.fuzz.Q', 'org.fuzz.Act0', 'org.fuzz.Act1', 'org.fuzz.Act2', 'com.other.X'];
/** A sync call may overrun its deadline by this much (virtual time) before it counts as hung. */
const HANG_GRACE_NS = 100_000_000n;
/** Real-time bound for a promise to settle when nothing is left to wait for. */
const PROMISE_BOUND_MS = 5000;
/** The harness's own timers measure real time; the bus's run on the virtual clock. */
const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;

export type InputMode = 'random' | 'valid' | 'mutated';

export class FuzzFailure extends Error {
  constructor(
    readonly seed: number,
    readonly iteration: number,
    problem: string,
    details: string,
  ) {
    super(`fuzz seed ${seed}, iteration ${iteration}: ${problem}\n${details}`);
    this.name = 'FuzzFailure';
  }
}

/** What a world reports to the run it belongs to. */
export interface RunContext {
  readonly seed: number;
  readonly clock: VirtualClock;
  syncCalls: number;
  count(role: string, cmd: string): void;
  outcome(cmd: string, errno: number): void;
  asyncError(e: unknown): void;
  takeAsyncError(): unknown;
}

/** One open file of the fake client process: a handle and what the client learned through it. */
export class Actor {
  conn: Connection | undefined;
  /** Pool offsets the client received and has not freed. */
  readonly offsets = new Set<bigint>();
  readonly toAnswer: Array<{ dst: bigint; cookie: bigint }> = [];
  readonly cookies: bigint[] = [];
  released = false;
  /** The main bus owner: released only at teardown. */
  core = false;

  constructor(
    readonly label: string,
    readonly handle: Handle,
    readonly node: KdbusNode,
    readonly creds: Credentials,
  ) {}

  get role(): HandleRole {
    const r = this.handle.roleName;
    if (r === 'none') return this.node.kind === 'control' ? 'control' : 'endpoint';
    return r;
  }

  /** Role with the connection kind, for coverage: "connected:activator". */
  get roleLabel(): string {
    const c = this.handle.connection;
    if (!c) return this.role;
    const kind = c.isMonitor ? 'monitor' : c.isActivator ? 'activator' : c.isPolicyHolder ? 'policy-holder' : 'ordinary';
    return `connected:${kind}`;
  }
}

/** Where the struct goes; racy: another thread of the client changes its size field right after the bus first read it. */
export type Placement = 'normal' | 'misaligned' | 'readonly' | 'unmapped' | 'null' | 'payload' | 'racy';

export interface CallRecord {
  actor: Actor;
  cmd: number;
  struct: Buffer;
  placement: Placement;
  msg?: Buffer;
  /** Where the SEND's kdbus_msg is; the bus may write into it too (negotiation). */
  msgAddress?: bigint;
  mode: InputMode | 'traffic' | 'setup';
  mutations: string[];
  abort?: Interruption;
  /** Errnos acceptable on top of the oracle's (a setup racing another one may find the handle set up). */
  extraErrnos?: readonly number[];
  /** Runs while the call's promise is pending: a concurrent ioctl or close on the same handle. */
  during?: () => Promise<void> | void;
  /** The calling task's credentials when they differ from the opener's (setuid after open). */
  creds?: Credentials;
  /** The calling process and thread when not the usual one (one that exited, or never was). */
  task?: number;
}

interface PendingCall {
  record: CallRecord;
  /** Ends the struct's write window once the call settled. */
  revoke: () => void;
  iteration: number;
  address: bigint;
  conn: Connection | undefined;
  /** From the message's timeout_ns when it is a plausible deadline; undefined: may block until teardown. */
  deadlineNs: bigint | undefined;
  refs: FileRef[];
  promise: Promise<void>;
}

/** errno 0 for success, -1 for a SEND still blocked. */
export type Outcome = { errno: number };

const hex = (b: Buffer | undefined): string => (b ? b.toString('hex') : '-');

/** One bus and its peers, from setup to the leak checks. */
export class World {
  readonly domain = new Domain();
  readonly mem = new FuzzMemory();
  readonly files = new FuzzFiles();
  readonly actors: Actor[] = [];
  readonly conns = new Map<Connection, { actor: Actor; faults: number }>();
  readonly buses = new Set<Bus>();
  readonly endpoints = new Set<Endpoint>();
  readonly pending = new Set<PendingCall>();
  readonly fds = {
    memfd: [] as number[], unsealedMemfd: [] as number[], plain: [] as number[], kdbus: [] as number[],
    socket: [] as number[], cancel: [] as number[], unpollable: [] as number[],
  };
  readonly cancelFiles: FuzzFile[] = [];
  /** Interrupted sync calls the client restarts (as libc does after a signal handler). */
  readonly restarts: CallRecord[] = [];
  /** What data vectors point into: read-only, and every 8 bytes of it tell where they came from. */
  readonly payload: { address: bigint; length: number };
  private readonly payloadData: Buffer;
  /** File references not yet seen closed. */
  private openRefs: FileRef[] = [];
  private checkedRefs = 0;
  bus!: Bus;
  bloomSize = 8;
  iteration = 0;
  private nextLabel = 0;

  constructor(
    readonly rng: Rng,
    readonly run: RunContext,
  ) {
    this.payloadData = payloadPattern(64 * 1024);
    this.payload = { address: this.mem.map(this.payloadData, { readOnly: true }), length: this.payloadData.length };
    for (let i = 0; i < 4; i++) this.fds.memfd.push(this.files.add(new FuzzFile('memfd', rng.bytes(rng.range(8, 64)), 0xf, true)));
    this.fds.unsealedMemfd.push(this.files.add(new FuzzFile('memfd', rng.bytes(16), 0x3, true)));
    for (let i = 0; i < 4; i++) this.fds.plain.push(this.files.add(new FuzzFile('other', Buffer.alloc(0), 0, true)));
    this.fds.kdbus.push(this.files.add(new FuzzFile('kdbus', Buffer.alloc(0), 0, true)));
    this.fds.socket.push(this.files.add(new FuzzFile('unix-socket', Buffer.alloc(0), 0, true)));
    for (let i = 0; i < 3; i++) {
      const f = new FuzzFile('other', Buffer.alloc(0), 0, true);
      this.cancelFiles.push(f);
      this.fds.cancel.push(this.files.add(f));
    }
    this.fds.unpollable.push(this.files.add(new FuzzFile('other', Buffer.alloc(0), 0, false)));
  }

  // --- actors -------------------------------------------------------------------------------

  open(node: KdbusNode, creds: Credentials, what: string): Actor | undefined {
    let handle: Handle;
    try {
      handle = openHandle(node, { creds, privileged: creds.euid === 0, pid: process.pid });
    } catch (e) {
      if (e instanceof KdbusError && e.errno === Errno.ESHUTDOWN) return undefined;
      throw e;
    }
    const a = new Actor(`${what}#${this.nextLabel++}`, handle, node, creds);
    this.actors.push(a);
    return a;
  }

  release(a: Actor): void {
    if (a.released) return;
    a.released = true;
    a.handle.release();
    this.actors.splice(this.actors.indexOf(a), 1);
    this.afterCall();
  }

  context(r: CallRecord): CallContext {
    const ctx: CallContext = {
      mem: this.mem, files: this.files, installer: this.files,
      pid: r.task ?? process.pid, tid: r.task ?? process.pid, creds: r.creds ?? r.actor.creds,
    };
    if (r.abort) ctx.signal = r.abort;
    return ctx;
  }

  genContext(a: Actor): GenContext {
    // Live ordinary peers four times over: calls should mostly reach someone.
    const ids: bigint[] = [];
    for (const c of this.conns.keys()) {
      ids.push(c.id);
      if (c.active && c.isOrdinary) ids.push(c.id, c.id, c.id);
    }
    const toAnswer = a.toAnswer.length ? a.toAnswer[this.rng.int(a.toAnswer.length)] : undefined;
    return {
      rng: this.rng,
      euid: a.creds.euid,
      bloomSize: this.bloomSize,
      ownId: a.conn?.id ?? 0n,
      ids,
      names: a.conn ? [...NAMES, ...ownedNames(a.conn), ...ownedNames(a.conn)] : NAMES,
      fds: this.fds,
      payload: this.payload,
      poolSize: BigInt(a.conn?.pool.size ?? 0),
      offsets: [...a.offsets],
      toAnswer,
      recentCookies: a.cookies,
    };
  }

  // --- calls --------------------------------------------------------------------------------

  fail(problem: string, r: CallRecord | undefined, extra = ''): never {
    const lines = r
      ? [
          `actor ${r.actor.label} (role ${r.actor.roleLabel}), command ${commandName(r.cmd) ?? 'unknown'} 0x${(r.cmd >>> 0).toString(16)}, input ${r.mode}` +
            `${r.mutations.length ? ` [${r.mutations.join(', ')}]` : ''}, placement ${r.placement}`,
          `struct: ${hex(r.struct)}`,
          `msg:    ${hex(r.msg)}`,
        ]
      : [];
    if (extra) lines.push(extra);
    throw new FuzzFailure(this.run.seed, this.iteration, problem, lines.join('\n'));
  }

  /** Puts the struct where the placement says; returns its address and whether a region was mapped. */
  private place(struct: Buffer, p: Placement): { address: bigint; mapped: boolean } {
    switch (p) {
      // A copy goes into caller memory: the record keeps the bytes as they were sent.
      case 'normal':
        return { address: this.mem.map(Buffer.from(struct)), mapped: true };
      case 'misaligned':
        return { address: this.mem.map(Buffer.from(struct), { misalign: this.rng.range(1, 7) }), mapped: true };
      case 'readonly':
        return { address: this.mem.map(Buffer.from(struct), { readOnly: true }), mapped: true };
      case 'unmapped':
        return { address: this.rng.chance(0.5) ? this.mem.unmappedAddress(this.rng.int(64)) : this.rng.interesting() | 1n << 60n, mapped: false };
      case 'null':
        return { address: 0n, mapped: false };
      case 'payload':
        return { address: this.payload.address + BigInt(8 * this.rng.int(this.payload.length / 8)), mapped: false };
      case 'racy': {
        const address = this.mem.map(Buffer.from(struct));
        const size = this.rng.chance(0.5) ? BigInt(this.rng.int(struct.length + 16)) : this.rng.interesting();
        let reads = 0;
        this.mem.onRead = (at) => {
          if (at === address && ++reads === 2) this.mem.write(address, Buffer.from(new BigUint64Array([size]).buffer));
        };
        return { address, mapped: true };
      }
    }
  }

  /** Checks an exception against the oracle and returns its errno. */
  private judge(r: CallRecord, role: HandleRole, e: unknown): number {
    if (!(e instanceof KdbusError)) {
      const err = e as Error;
      this.fail(`the bus threw ${err?.name ?? typeof e} instead of a KdbusError: ${err?.message}`, r, err?.stack ?? '');
    }
    if (!allowedErrnos(role, r.cmd).has(e.errno) && !r.extraErrnos?.includes(e.errno)) {
      this.fail(`errno ${errnoName(e.errno)} is not one kdbus returns for this command on a ${role} handle (${e.message})`, r, e.stack ?? '');
    }
    return e.errno;
  }

  /** One ioctl with every per-call check; SENDs that block are returned as pending. */
  async call(r: CallRecord): Promise<Outcome> {
    const { actor } = r;
    const role = actor.role;
    const roleLabel = actor.roleLabel;
    const { address, mapped } = this.place(r.struct, r.placement);
    const declared = r.placement === 'payload' ? this.mem.peek(address, 8) : r.struct.length >= 8 ? r.struct : undefined;
    const revoke = this.mem.allowWrites(address, declared ? declared.readBigUInt64LE(0) : 0n);
    const msgSize = r.msgAddress === undefined ? undefined : this.mem.peek(r.msgAddress, 8)?.readBigUInt64LE(0);
    const revokeMsg = msgSize === undefined ? undefined : this.mem.allowWrites(r.msgAddress!, msgSize);
    const name = commandName(r.cmd);
    this.run.count(roleLabel, name ?? 'UNKNOWN');
    this.files.origin = `iteration ${this.iteration} ${actor.label} ${name ?? 'unknown'}`;
    const refsBefore = this.files.refs.length;
    const connBefore = actor.handle.connection;
    let errno = 0;
    let result: void | Promise<void>;
    try {
      result = actor.handle.ioctl(r.cmd, address, this.context(r));
    } catch (e) {
      errno = this.judge(r, role, e);
      result = undefined;
    } finally {
      this.mem.onRead = undefined;
      revokeMsg?.();
    }
    this.checkPoll(r);
    if (result && r.cmd === Cmd.SEND) {
      this.track(r, result, address, revoke, connBefore, this.files.refs.slice(refsBefore));
      this.afterCall(r);
      return { errno: -1 };
    }
    if (result) {
      const during = r.during?.();
      errno = await this.bounded(r, role, result);
      await during;
    }
    this.run.outcome(name ?? 'UNKNOWN', errno);
    if (errno === Errno.EFAULT && connBefore) this.fault(connBefore);
    if (errno === 0) this.learn(r, actor, role, address);
    revoke();
    if (mapped) this.mem.unmap(address);
    this.afterCall(r);
    return { errno };
  }

  /** poll() never fails and reports what the connection's state says. */
  private checkPoll(r: CallRecord): void {
    const a = r.actor;
    const mask = a.handle.poll();
    const conn = a.handle.connection;
    const want = !conn || !conn.active ? Poll.ERR | Poll.HUP : Poll.OUT | Poll.WRNORM | (conn.readable ? Poll.IN | Poll.RDNORM : 0);
    if (mask !== want) this.fail(`poll() gave 0x${mask.toString(16)}, expected 0x${want.toString(16)}`, r);
  }

  private async bounded(r: CallRecord, role: HandleRole, p: Promise<void>): Promise<number> {
    let timer: NodeJS.Timeout | undefined;
    const hang = new Promise<'hang'>((resolve) => {
      timer = realSetTimeout(() => resolve('hang'), PROMISE_BOUND_MS);
    });
    try {
      const v = await Promise.race([p.then(() => 0), hang]);
      if (v === 'hang') this.fail(`the call did not settle within ${PROMISE_BOUND_MS} ms`, r);
      return v;
    } catch (e) {
      if (e instanceof FuzzFailure) throw e;
      return this.judge(r, role, e);
    } finally {
      realClearTimeout(timer);
    }
  }

  private fault(conn: Connection): void {
    const c = this.conns.get(conn);
    if (c) c.faults++;
  }

  /** A sync SEND that blocks: checked when it settles; its struct stays mapped until then. */
  private track(r: CallRecord, p: Promise<void>, address: bigint, revoke: () => void, conn: Connection | undefined, refs: FileRef[]): void {
    this.run.syncCalls++;
    const msg = r.msg;
    let deadlineNs: bigint | undefined;
    if (msg && msg.length >= 64) {
      const t = msg.readBigUInt64LE(Off.msg.timeout_ns);
      if (t < this.run.clock.now + 60_000_000_000n) deadlineNs = t;
    }
    const pc: PendingCall = { record: r, revoke, iteration: this.iteration, address, conn, deadlineNs, refs, promise: Promise.resolve() };
    pc.promise = p.then(
      () => this.settle(pc, 0),
      (e: unknown) => this.settle(pc, this.judge(r, 'connected', e)),
    ).catch((e: unknown) => this.run.asyncError(e));
    this.pending.add(pc);
  }

  private settle(pc: PendingCall, errno: number): void {
    this.pending.delete(pc);
    pc.revoke();
    this.run.outcome('SEND', errno);
    this.run.outcome('SEND(blocked)', errno);
    if (errno === Errno.EINTR && pc.record.msg && pc.record.struct.length >= 32) this.restarts.push(pc.record);
    if (errno === Errno.EFAULT && pc.conn) this.fault(pc.conn);
    if (errno === 0) {
      const out = this.mem.peek(pc.address + BigInt(Off.send.reply_offset), 16);
      if (out && out.readBigUInt64LE(8) > 0n) {
        pc.record.actor.offsets.add(out.readBigUInt64LE(0));
        if (pc.conn?.active) this.checkMessage(pc.record, pc.conn, out.readBigUInt64LE(0), out.readBigUInt64LE(8));
      }
    }
    if (pc.record.placement !== 'unmapped' && pc.record.placement !== 'null' && pc.record.placement !== 'payload') {
      this.mem.unmap(pc.address);
    }
  }

  /** After a successful call: what a client learns (offsets, calls to answer) and role changes. */
  private learn(r: CallRecord, actor: Actor, roleBefore: HandleRole, address: bigint): void {
    const name = commandName(r.cmd);
    const role = actor.role;
    const negotiated = r.placement !== 'payload' && r.struct.length >= 16 && (r.struct.readBigUInt64LE(8) & KDBUS_FLAG_NEGOTIATE) !== 0n;
    // (Unless a concurrent ioctl on the handle did the change.)
    if (negotiated && role !== roleBefore && !r.during) this.fail(`a negotiation changed the handle from ${roleBefore} to ${role}`, r);
    if (role !== roleBefore) this.roleChanged(actor);
    // A negotiation returns before the command runs: nothing to learn.
    if (negotiated || r.placement === 'payload') return;
    const peek = (off: number): [bigint, bigint] | undefined => {
      const b = this.mem.peek(address + BigInt(off), 16);
      return b ? [b.readBigUInt64LE(0), b.readBigUInt64LE(8)] : undefined;
    };
    const keep = (ext: [bigint, bigint] | undefined): void => {
      if (ext && ext[1] > 0n) actor.offsets.add(ext[0]);
    };
    switch (name) {
      case 'HELLO':
        if (role === 'connected' && roleBefore !== 'connected') keep([peek(Off.hello.offset)?.[0] ?? 0n, 1n]);
        break;
      case 'RECV': {
        const ext = peek(Off.recv.msg_offset);
        keep(ext);
        const conn = actor.handle.connection;
        if (ext && ext[1] > 0n && conn) this.checkMessage(r, conn, ext[0], ext[1]);
        if (ext && ext[1] >= 64n && conn && !(r.struct.length >= 16 && r.struct.readBigUInt64LE(8) & 1n)) {
          const head = conn.pool.storage.read(Number(ext[0]), 64);
          const src = head.readBigUInt64LE(Off.msg.src_id);
          if (head.readBigUInt64LE(Off.msg.flags) & MsgFlags.EXPECT_REPLY && src !== 0n) {
            actor.toAnswer.push({ dst: src, cookie: head.readBigUInt64LE(Off.msg.cookie) });
            if (actor.toAnswer.length > 16) actor.toAnswer.shift();
          }
        }
        break;
      }
      case 'LIST': {
        const ext = peek(Off.list.offset);
        keep(ext);
        if (ext && ext[1] > 0n && actor.conn) this.checkRecords(r, actor.conn, ext[0], ext[1], true);
        break;
      }
      case 'CONN_INFO':
      case 'BUS_CREATOR_INFO': {
        const ext = peek(Off.info_cmd.offset);
        keep(ext);
        if (ext && actor.conn) this.checkRecords(r, actor.conn, ext[0], ext[1], false);
        break;
      }
      case 'FREE':
        if (r.struct.length >= 32) actor.offsets.delete(r.struct.readBigUInt64LE(Off.free.offset));
        break;
      case 'SEND':
        if (r.msg && r.msg.length >= 64) {
          actor.cookies.push(r.msg.readBigUInt64LE(Off.msg.cookie));
          if (actor.cookies.length > 8) actor.cookies.shift();
          const reply = r.msg.readBigUInt64LE(Off.msg.cookie_reply);
          const i = actor.toAnswer.findIndex((t) => t.cookie === reply);
          if (i >= 0 && !(r.msg.readBigUInt64LE(Off.msg.flags) & MsgFlags.EXPECT_REPLY)) actor.toAnswer.splice(i, 1);
        }
        break;
    }
  }

  /** A slice the client was told about must lie in its pool, 8-aligned. */
  private checkExtent(r: CallRecord, conn: Connection, offset: bigint, size: bigint): Buffer {
    if (offset % 8n !== 0n || size % 8n !== 0n || size === 0n || offset + size > BigInt(conn.pool.size)) {
      this.fail(`the bus reported pool slice [${offset}, +${size}) in a ${conn.pool.size}-byte pool`, r);
    }
    return conn.pool.storage.read(Number(offset), Number(size));
  }

  /** A received message is well-formed (kdbus-abi.md §3.6), whatever the sender put in. */
  private checkMessage(r: CallRecord, conn: Connection, offset: bigint, sliceSize: bigint): void {
    const raw = this.checkExtent(r, conn, offset, sliceSize);
    const bad = (what: string): never => this.fail(`received message at pool offset ${offset} is malformed: ${what}`, r, `message: ${raw.toString('hex')}`);
    const size = raw.readBigUInt64LE(0);
    if (size < 64n || size > sliceSize) bad(`kdbus_msg.size ${size} in a ${sliceSize}-byte slice`);
    const end = Number(size);
    for (let pos = 64; pos < end; ) {
      if (end - pos < 16) bad(`${end - pos} trailing bytes at ${pos}`);
      const itemSize = raw.readBigUInt64LE(pos);
      if (itemSize < 16n || BigInt(pos) + itemSize > size) bad(`item at ${pos} has size ${itemSize}`);
      if (raw.readBigUInt64LE(pos + 8) === BigInt(ItemType.PAYLOAD_OFF)) {
        const vecSize = raw.readBigUInt64LE(pos + 16);
        const at = raw.readBigUInt64LE(pos + 24);
        if (itemSize !== 32n || (at !== U64_MAX && (at < BigInt((end + 7) & ~7) || at + vecSize > sliceSize))) {
          bad(`PAYLOAD_OFF at ${pos} points to [${at}, +${vecSize})`);
        }
        // Data vectors can only have come from the payload region (all else faults or is unmapped).
        if (at !== U64_MAX && vecSize >= 8n && locatePayload(this.payloadData, raw.subarray(Number(at), Number(at + vecSize))) === undefined) {
          bad(`the ${vecSize} data bytes of PAYLOAD_OFF at ${pos} are not what the sender's vector held`);
        }
      }
      pos += (Number(itemSize) + 7) & ~7;
    }
  }

  /** LIST records (or one CONN_INFO / BUS_CREATOR_INFO record) tile the slice. */
  private checkRecords(r: CallRecord, conn: Connection, offset: bigint, size: bigint, many: boolean): void {
    const raw = this.checkExtent(r, conn, offset, size);
    for (let pos = 0; pos < raw.length; ) {
      const recSize = raw.readBigUInt64LE(pos);
      if (recSize < 24n || recSize % 8n !== 0n || BigInt(pos) + recSize > size || (!many && pos + Number(recSize) !== raw.length)) {
        this.fail(`kdbus_info record at ${pos} of a ${size}-byte result has size ${recSize}`, r, `result: ${raw.toString('hex')}`);
      }
      pos += Number(recSize);
    }
  }

  /** A setup ioctl succeeded: record what it made and open a fresh handle in its place. */
  private roleChanged(a: Actor): void {
    const conn = a.handle.connection;
    if (conn && !this.conns.has(conn)) {
      a.conn = conn;
      this.conns.set(conn, { actor: a, faults: 0 });
    }
    for (const bus of this.domain.buses.values()) {
      this.buses.add(bus);
      for (const ep of bus.endpoints.values()) this.endpoints.add(ep);
    }
    if (a.node.kind === 'control') this.open(a.node, a.creds, 'control');
    else this.open(a.node, a.creds, a.node.ep.isDefault ? 'endpoint' : 'custom-endpoint');
  }

  /** Checks that run after every call: no invariant break seen inside the bus, no stray error. */
  afterCall(r?: CallRecord): void {
    if (this.files.violations.length) this.fail(`file handling: ${this.files.violations.join('; ')}`, r);
    if (this.mem.strayWrites.length) this.fail(`the bus wrote outside the command struct: ${this.mem.strayWrites.join('; ')}`, r);
    const e = this.run.takeAsyncError();
    if (e) this.fail(`an asynchronous error escaped the bus: ${(e as Error)?.message ?? String(e)}`, r, (e as Error)?.stack ?? '');
  }

  async free(a: Actor, offset: bigint): Promise<void> {
    const b = Buffer.alloc(32);
    b.writeBigUInt64LE(32n, 0);
    b.writeBigUInt64LE(offset, Off.free.offset);
    const { errno } = await this.call({ actor: a, cmd: Cmd.FREE, struct: b, placement: 'normal', mode: 'traffic', mutations: [] });
    if (errno === 0 || errno === Errno.ENXIO) a.offsets.delete(offset);
  }

  // --- periodic and final checks --------------------------------------------------------------

  /** Files held by queued messages or by calls still in flight. */
  private heldRefs(): Set<FileRef> {
    const held = new Set<FileRef>();
    const addGaps = (g: { fds: readonly unknown[]; memfds: readonly unknown[] } | undefined): void => {
      if (!g) return;
      for (const f of g.fds) held.add(f as FileRef);
      for (const f of g.memfds) held.add(f as FileRef);
    };
    for (const conn of this.conns.keys()) {
      for (const e of conn.queue.entries()) addGaps(e.gaps);
      for (const t of conn.replies) addGaps(t.entry?.gaps);
    }
    for (const p of this.pending) for (const f of p.refs) held.add(f);
    return held;
  }

  /** Invariants between calls: files, pool accounting, reply trackers, hung calls. */
  check(): void {
    const held = this.heldRefs();
    for (const f of held) if (f.closes > 0) this.fail(`${f.origin}: a file was closed while a queued message still holds it`, undefined);
    for (let i = this.checkedRefs; i < this.files.refs.length; i++) this.openRefs.push(this.files.refs[i]!);
    this.checkedRefs = this.files.refs.length;
    this.openRefs = this.openRefs.filter((f) => {
      if (f.closes > 0) return false;
      if (!held.has(f)) this.fail(`${f.origin}: a file no message holds any more was never closed`, undefined);
      return true;
    });

    for (const conn of this.conns.keys()) {
      const bus = conn.bus;
      if (conn.active !== (bus.connections.get(conn.id) === conn)) {
        this.fail(`conn ${conn.id}: active ${conn.active} but ${conn.active ? 'missing from' : 'still in'} its bus`, undefined);
      }
      if (!conn.active && ([...bus.names.records(conn)].length || bus.matches.db(conn) || conn.queue.size)) {
        this.fail(`conn ${conn.id} is gone but still holds names, matches or queued messages`, undefined);
      }
      let queued = 0;
      for (const e of conn.queue.entries()) queued += e.slice.size;
      if (conn.pool.accountedSize !== queued) {
        this.fail(`conn ${conn.id}: pool accounts ${conn.pool.accountedSize} bytes but its queue holds ${queued}`, undefined);
      }
      if (conn.pool.busySlices < conn.queue.size) {
        this.fail(`conn ${conn.id}: ${conn.queue.size} queued messages but only ${conn.pool.busySlices} busy slices`, undefined);
      }
      if (conn.requestCount < conn.replies.size || conn.requestCount > 128) {
        this.fail(`conn ${conn.id}: requestCount ${conn.requestCount} with ${conn.replies.size} linked reply trackers`, undefined);
      }
      for (const t of conn.replies) {
        if (t.replyDst !== conn || !t.linked || !t.replySrc.pendingCalls.has(t)) {
          this.fail(`conn ${conn.id}: reply tracker for cookie ${t.cookie} is inconsistently linked`, undefined);
        }
      }
      for (const t of conn.pendingCalls) {
        if (t.replySrc !== conn || !t.replyDst.replies.has(t)) {
          this.fail(`conn ${conn.id}: pending call tracker for cookie ${t.cookie} is inconsistently linked`, undefined);
        }
      }
    }

    const now = this.run.clock.now;
    for (const p of this.pending) {
      if (p.deadlineNs !== undefined && now > p.deadlineNs + HANG_GRACE_NS) {
        this.fail('a synchronous SEND is still blocked long after its deadline', p.record, `started at iteration ${p.iteration}`);
      }
    }
  }

  /** Closes everything (in a random order, the bus owner first or last) and checks for leaks. */
  async teardown(): Promise<void> {
    const rng = this.rng;
    const graceful = rng.chance(0.6);
    if (graceful) {
      for (const a of [...this.actors]) {
        if (!a.conn?.active) continue;
        for (const off of [...a.offsets]) await this.free(a, off);
      }
      await settleSoon();
      this.check();
      for (const [conn, info] of this.conns) {
        if (!conn.active) continue;
        const extra = conn.pool.busySlices - conn.queue.size;
        if (extra > info.faults + info.actor.offsets.size) {
          this.fail(`conn ${conn.id}: ${extra} pool slices are busy beyond its queue after the client freed everything it was told about (${info.faults} faulted write-backs)`, undefined);
        }
      }
    }
    const order = rng.chance(0.5) ? [...this.actors] : [...this.actors].reverse();
    const owner = this.actors.filter((a) => a.core);
    const rest = order.filter((a) => !a.core);
    for (const a of rng.chance(0.3) ? [...owner, ...rest] : [...rest, ...owner]) this.release(a);

    await this.settlePending();
    this.check();
    this.leakChecks();
  }

  private async settlePending(): Promise<void> {
    if (this.pending.size === 0) return;
    const all = Promise.all([...this.pending].map((p) => p.promise));
    let timer: NodeJS.Timeout | undefined;
    const hung = await Promise.race([all.then(() => false), new Promise<boolean>((r) => { timer = realSetTimeout(() => r(true), PROMISE_BOUND_MS); })]);
    realClearTimeout(timer);
    if (hung) {
      const p = [...this.pending][0]!;
      this.fail(`${this.pending.size} synchronous SENDs still blocked after every handle was closed`, p.record, `started at iteration ${p.iteration}`);
    }
    this.afterCall();
  }

  private leakChecks(): void {
    const problems: string[] = [];
    if (this.domain.buses.size) problems.push(`${this.domain.buses.size} buses still in the domain`);
    for (const uid of [ROOT, OTHER_UID]) {
      const u = this.domain.user(uid);
      if (u.buses || u.connections) problems.push(`user ${uid} still charged ${u.buses} buses, ${u.connections} connections`);
    }
    for (const ep of this.endpoints) {
      if (ep.active || ep.connections.size) problems.push(`endpoint ${ep.path} still active or with connections`);
      if (ep.user && ep.user.connections) problems.push(`endpoint ${ep.path} user still charged ${ep.user.connections} connections`);
    }
    for (const bus of this.buses) {
      if (bus.active || bus.connections.size || bus.monitors.size) problems.push(`bus ${bus.name} still active or with connections`);
      if (bus.pendingNotifications.length) problems.push(`bus ${bus.name} has ${bus.pendingNotifications.length} undelivered notifications`);
    }
    for (const [conn, info] of this.conns) {
      const p = `conn ${conn.id} (${info.actor.label})`;
      if (conn.active) problems.push(`${p} still active`);
      if (conn.queue.size) problems.push(`${p} still has ${conn.queue.size} queued messages`);
      if (conn.replies.size || conn.pendingCalls.size || conn.requestCount) {
        problems.push(`${p} still has reply trackers: ${conn.replies.size} waiting, ${conn.pendingCalls.size} to answer, requestCount ${conn.requestCount}`);
      }
      if (conn.pool.accountedSize) problems.push(`${p} pool still accounts ${conn.pool.accountedSize} bytes`);
      const unfreed = info.faults + info.actor.offsets.size;
      if (conn.pool.busySlices > unfreed) {
        problems.push(`${p} pool has ${conn.pool.busySlices} busy slices, more than the ${unfreed} the client could not or did not free`);
      }
      if ([...conn.bus.names.records(conn)].length) problems.push(`${p} still holds names`);
      if (conn.bus.matches.db(conn)) problems.push(`${p} still has a match database`);
    }
    const open = this.files.refs.filter((f) => f.closes !== 1);
    if (open.length) problems.push(`${open.length} file references not closed exactly once (first: ${open[0]!.origin}, ${open[0]!.closes} closes)`);
    for (const f of this.cancelFiles) if (f.waiters) problems.push(`a cancel fd still has ${f.waiters} waiters`);
    if (problems.length) this.fail(`leaks after teardown: ${problems.join('; ')}`, undefined);
  }
}

function ownedNames(conn: Connection): string[] {
  const out: string[] = [];
  for (const r of conn.bus.names.records(conn)) out.push(r.name);
  return out;
}

/** Lets timers and pending callbacks run once. */
export function settleSoon(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

