/**
 * An in-process kdbus client for tests, benchmarks and the fuzzer: it builds real command
 * structs and messages byte by byte in a fake caller address space (Arena) and drives a
 * bus Handle exactly as a transport does, then decodes what the bus wrote back and what it
 * put into the pool. Nothing in here shortcuts the bus: every call is an ioctl().
 */
import { Cmd, type CmdName, HelloFlags, ItemType, KDBUS_DST_ID_BROADCAST, KDBUS_PAYLOAD_DBUS, MsgFlags, Off, StructSize, ALIGN8, Attach, U64_MAX } from '../../src/abi/constants';
import { KdbusError } from '../../src/abi/errno';
import { ItemWriter } from '../../src/abi/items';
import type { CallContext, CallerFiles, Credentials, FileInstaller, ImportedFile, Opener } from '../../src/bus/caller';
import { Domain } from '../../src/bus/domain';
import { Handle, openHandle, type KdbusNode } from '../../src/bus/handle';
import type { Interruption } from '../../src/bus/interruption';
import { Arena } from './arena';

export const selfCreds = (): Credentials => {
  const uid = process.getuid!();
  const gid = process.getgid!();
  return { uid, euid: uid, suid: uid, fsuid: uid, gid, egid: gid, sgid: gid, fsgid: gid, groups: process.getgroups!() };
};

export function credsOf(uid: number, gid = uid): Credentials {
  return { uid, euid: uid, suid: uid, fsuid: uid, gid, egid: gid, sgid: gid, fsgid: gid, groups: [] };
}

/** A file a test hands to the bus as if it were in the caller's descriptor table. */
export class FakeFile implements ImportedFile {
  closed = false;
  private readonly readable = new Set<() => void>();
  constructor(
    readonly kind: ImportedFile['kind'],
    readonly content: Buffer = Buffer.alloc(0),
    readonly seals = 0,
    readonly pollable = true,
    readonly fd = -1,
  ) {}
  get size(): number {
    return this.content.length;
  }
  read(offset: number, length: number): Buffer {
    return this.content.subarray(offset, offset + length);
  }
  onReadable(cb: () => void): () => void {
    this.readable.add(cb);
    return () => this.readable.delete(cb);
  }
  /** Plays "the fd became readable" (an eventfd written, a pipe with data). */
  signal(): void {
    for (const cb of [...this.readable]) cb();
  }
  close(): void {
    this.closed = true;
  }
}

export const ALL_SEALS = 0xf;

export function memfd(content: Buffer | string, seals = ALL_SEALS): FakeFile {
  return new FakeFile('memfd', Buffer.isBuffer(content) ? content : Buffer.from(content), seals);
}

/** The descriptor table of a test process. */
export class FdTable implements CallerFiles, FileInstaller {
  private readonly files = new Map<number, ImportedFile>();
  private nextFd = 100;
  /** Files installed by RECV, by the number they got. */
  readonly installed = new Map<number, ImportedFile>();
  failInstall = false;

  add(f: ImportedFile): number {
    const n = this.nextFd++;
    this.files.set(n, f);
    return n;
  }
  get(fd: number): ImportedFile {
    const f = this.files.get(fd);
    if (!f) throw new KdbusError('EBADF', `fd ${fd} is not open`);
    return f;
  }
  install(files: readonly ImportedFile[]): number[] {
    return files.map((f) => {
      if (this.failInstall) return -1;
      const n = this.nextFd++;
      this.installed.set(n, f);
      return n;
    });
  }
}

export interface IoctlResult {
  errno: number;
  /** The struct as the caller's memory holds it after the ioctl. */
  out: Buffer;
}

export interface ReceivedItem {
  type: number;
  size: number;
  payload: Buffer;
}

export interface ReceivedMessage {
  offset: number;
  sliceSize: number;
  size: bigint;
  flags: bigint;
  priority: bigint;
  dstId: bigint;
  srcId: bigint;
  payloadType: bigint;
  cookie: bigint;
  cookieReply: bigint;
  items: ReceivedItem[];
  /** The bytes of data vectors, in order (zero-vectors excluded). */
  data: Buffer[];
  raw: Buffer;
  returnFlags: bigint;
  dropped: bigint;
}

export interface SendOptions {
  dst?: bigint;
  name?: string;
  flags?: bigint;
  cookie?: bigint;
  cookieReply?: bigint;
  timeoutNs?: bigint;
  priority?: bigint;
  payload?: Array<Buffer | number>;
  bloom?: { generation?: bigint; data: Buffer };
  fds?: number[];
  memfds?: Array<{ fd: number; size?: number; start?: number }>;
  sync?: boolean;
  cancelFd?: number;
  srcId?: bigint;
  sendFlags?: bigint;
  payloadType?: bigint;
}

let cookieCounter = 1n;

export class TestClient {
  readonly mem = new Arena();
  readonly fds = new FdTable();
  readonly handle: Handle;
  creds: Credentials;
  pid = process.pid;
  tid = process.pid;
  id = 0n;
  abort: Interruption | undefined;

  /** `opener.pid` stands for another process: it opens the file and makes the calls. */
  constructor(node: KdbusNode, opener?: Partial<Opener>) {
    this.creds = opener?.creds ?? selfCreds();
    this.pid = this.tid = opener?.pid ?? process.pid;
    this.handle = openHandle(node, { creds: this.creds, privileged: opener?.privileged ?? this.creds.euid === 0, pid: this.pid });
  }

  context(): CallContext {
    const ctx: CallContext = { mem: this.mem, files: this.fds, installer: this.fds, pid: this.pid, tid: this.tid, creds: this.creds };
    if (this.abort) ctx.signal = this.abort;
    return ctx;
  }

  /** Runs one ioctl on a struct placed in caller memory; never throws KdbusError. */
  async ioctl(cmd: CmdName | number, struct: Buffer, extra?: (addr: bigint) => void): Promise<IoctlResult> {
    const addr = this.mem.put(struct);
    extra?.(addr);
    return this.ioctlAt(cmd, addr, struct.length);
  }

  async ioctlAt(cmd: CmdName | number, addr: bigint, length: number): Promise<IoctlResult> {
    const number = typeof cmd === 'number' ? cmd : Cmd[cmd];
    let errno = 0;
    try {
      const r = this.handle.ioctl(number, addr, this.context());
      if (r) await r;
    } catch (e) {
      if (!(e instanceof KdbusError)) throw e;
      errno = e.errno;
    }
    return { errno, out: this.mem.peek(addr, length) };
  }

  /** Synchronous form for the hot path (bench): throws KdbusError. */
  ioctlSync(cmd: number, addr: bigint): void {
    const r = this.handle.ioctl(cmd, addr, this.context());
    if (r) throw new Error('ioctlSync on a command that went asynchronous');
  }

  get conn() {
    const c = this.handle.connection;
    if (!c) throw new Error('not connected');
    return c;
  }

  pool(offset: number, size: number): Buffer {
    return this.conn.pool.storage.read(offset, size);
  }

  async hello(opts: { flags?: bigint; attachSend?: bigint; attachRecv?: bigint; poolSize?: bigint; items?: (w: ItemWriter) => void } = {}): Promise<IoctlResult> {
    const w = new ItemWriter();
    w.u64(0).u64(opts.flags ?? HelloFlags.ACCEPT_FD).u64(0).u64(opts.attachSend ?? Attach.ALL).u64(opts.attachRecv ?? Attach.ALL);
    w.u64(0).u64(0).u64(opts.poolSize ?? 16n * 1024n * 1024n).u64(0).u64(0).zeros(16);
    opts.items?.(w);
    const b = Buffer.from(w.finish());
    b.writeBigUInt64LE(BigInt(b.length), 0);
    const r = await this.ioctl('HELLO', b);
    if (r.errno === 0) this.id = r.out.readBigUInt64LE(Off.hello.id);
    return r;
  }

  /** HELLO and FREE of its bloom slice, as every real client does; throws on failure. */
  async connect(opts: Parameters<TestClient['hello']>[0] = {}): Promise<this> {
    const r = await this.hello(opts);
    if (r.errno) throw new Error(`HELLO failed: errno ${r.errno}`);
    await expectOk(this.free(r.out.readBigUInt64LE(Off.hello.offset)));
    return this;
  }

  cmd(cmdName: CmdName, flags: bigint, items?: (w: ItemWriter) => void, fixed?: (w: ItemWriter) => void): Promise<IoctlResult> {
    const w = new ItemWriter();
    w.u64(0).u64(flags).u64(0);
    fixed?.(w);
    items?.(w);
    const b = Buffer.from(w.finish());
    b.writeBigUInt64LE(BigInt(b.length), 0);
    return this.ioctl(cmdName, b);
  }

  free(offset: bigint): Promise<IoctlResult> {
    return this.cmd('FREE', 0n, undefined, (w) => w.u64(offset));
  }

  acquire(name: string, flags = 0n): Promise<IoctlResult> {
    return this.cmd('NAME_ACQUIRE', flags, (w) => w.string(ItemType.NAME, name));
  }

  release(name: string): Promise<IoctlResult> {
    return this.cmd('NAME_RELEASE', 0n, (w) => w.string(ItemType.NAME, name));
  }

  byebye(): Promise<IoctlResult> {
    return this.cmd('BYEBYE', 0n);
  }

  update(items: (w: ItemWriter) => void): Promise<IoctlResult> {
    return this.cmd('UPDATE', 0n, items);
  }

  addMatch(cookie: bigint, items?: (w: ItemWriter) => void, flags = 0n): Promise<IoctlResult> {
    return this.cmd('MATCH_ADD', flags, items, (w) => w.u64(cookie));
  }

  removeMatch(cookie: bigint): Promise<IoctlResult> {
    return this.cmd('MATCH_REMOVE', 0n, undefined, (w) => w.u64(cookie));
  }

  /** A match that takes every broadcast from anyone (the selftests' idiom). */
  matchAllBroadcasts(cookie = 0xcafen): Promise<IoctlResult> {
    return this.addMatch(cookie, (w) => w.itemU64(ItemType.ID, U64_MAX));
  }

  /** Matches ID_ADD/ID_REMOVE/NAME_* notifications about anyone. */
  async matchAllNotifications(cookie = 0xbeefn): Promise<void> {
    for (const t of [ItemType.ID_ADD, ItemType.ID_REMOVE]) await expectOk(this.addMatch(cookie, (w) => w.itemU64(t, U64_MAX, 0n)));
    for (const t of [ItemType.NAME_ADD, ItemType.NAME_REMOVE, ItemType.NAME_CHANGE]) {
      await expectOk(this.addMatch(cookie, (w) => w.itemU64(t, U64_MAX, 0n, U64_MAX, 0n)));
    }
  }

  async list(flags: bigint): Promise<{ errno: number; records: Array<{ id: bigint; flags: bigint; name?: string; nameFlags?: bigint }>; offset: bigint; size: bigint }> {
    const r = await this.cmd('LIST', flags, undefined, (w) => w.u64(0).u64(0));
    const offset = r.out.readBigUInt64LE(Off.list.offset);
    const size = r.out.readBigUInt64LE(Off.list.list_size);
    const records: Array<{ id: bigint; flags: bigint; name?: string; nameFlags?: bigint }> = [];
    if (r.errno === 0 && size > 0n) {
      const b = this.pool(Number(offset), Number(size));
      let p = 0;
      while (p < b.length) {
        const recSize = Number(b.readBigUInt64LE(p));
        const rec: { id: bigint; flags: bigint; name?: string; nameFlags?: bigint } = { id: b.readBigUInt64LE(p + 8), flags: b.readBigUInt64LE(p + 16) };
        if (recSize > 24) {
          const itemSize = Number(b.readBigUInt64LE(p + 24));
          rec.nameFlags = b.readBigUInt64LE(p + 40);
          rec.name = b.toString('latin1', p + 48, p + 24 + itemSize - 1);
        }
        records.push(rec);
        p += recSize;
      }
    }
    return { errno: r.errno, records, offset, size };
  }

  async connInfo(id: bigint, name?: string, attach = Attach.ALL): Promise<{ errno: number; info?: { size: bigint; id: bigint; flags: bigint; items: ReceivedItem[] }; offset: bigint; size: bigint }> {
    const r = await this.cmd('CONN_INFO', 0n, name === undefined ? undefined : (w) => w.string(ItemType.NAME, name), (w) => w.u64(id).u64(attach).u64(0).u64(0));
    const offset = r.out.readBigUInt64LE(Off.info_cmd.offset);
    const size = r.out.readBigUInt64LE(Off.info_cmd.info_size);
    if (r.errno) return { errno: r.errno, offset, size };
    const b = this.pool(Number(offset), Number(size));
    return { errno: 0, info: { size: b.readBigUInt64LE(0), id: b.readBigUInt64LE(8), flags: b.readBigUInt64LE(16), items: parseItems(b, 24, Number(b.readBigUInt64LE(0))) }, offset, size };
  }

  /** Builds the kdbus_msg for send(); exposed so tests can corrupt it. */
  buildMessage(o: SendOptions): Buffer {
    const w = new ItemWriter();
    let flags = o.flags ?? 0n;
    if (o.bloom) flags |= MsgFlags.SIGNAL;
    const dst = o.dst ?? (o.name ? 0n : KDBUS_DST_ID_BROADCAST);
    w.u64(0).u64(flags).u64(o.priority ?? 0n).u64(dst).u64(o.srcId ?? 0n).u64(o.payloadType ?? KDBUS_PAYLOAD_DBUS);
    w.u64(o.cookie ?? cookieCounter++);
    w.u64(flags & MsgFlags.EXPECT_REPLY ? (o.timeoutNs ?? process.hrtime.bigint() + 5_000_000_000n) : (o.cookieReply ?? 0n));
    if (o.name) w.string(ItemType.DST_NAME, o.name);
    for (const part of o.payload ?? []) {
      if (typeof part === 'number') w.itemU64(ItemType.PAYLOAD_VEC, BigInt(part), 0n);
      else {
        const addr = part.length === 0 ? 0n : this.mem.put(part);
        w.itemU64(ItemType.PAYLOAD_VEC, BigInt(part.length), addr);
      }
    }
    for (const m of o.memfds ?? []) {
      const at = w.beginItem(ItemType.PAYLOAD_MEMFD);
      w.u64(m.start ?? 0).u64(m.size ?? this.fds.get(m.fd).size).i32(m.fd).u32(0);
      w.endItem(at);
    }
    if (o.fds) {
      const at = w.beginItem(ItemType.FDS);
      for (const fd of o.fds) w.i32(fd);
      w.endItem(at);
    }
    if (o.bloom) {
      const at = w.beginItem(ItemType.BLOOM_FILTER);
      w.u64(o.bloom.generation ?? 0n).bytes(o.bloom.data);
      w.endItem(at);
    }
    const b = Buffer.from(w.finish());
    b.writeBigUInt64LE(BigInt(b.length), 0);
    return b;
  }

  /** SEND; with o.sync the promise settles when the call returns. `reply` is the write-back. */
  async send(o: SendOptions, msg = this.buildMessage(o)): Promise<IoctlResult & { replyOffset: bigint; replySize: bigint }> {
    const msgAddr = this.mem.put(msg);
    const w = new ItemWriter();
    w.u64(0).u64((o.sync ? 1n : 0n) | (o.sendFlags ?? 0n)).u64(0).u64(msgAddr).u64(0).u64(0).u64(0);
    if (o.cancelFd !== undefined) {
      const at = w.beginItem(ItemType.CANCEL_FD);
      w.i32(o.cancelFd);
      w.endItem(at);
    }
    const b = Buffer.from(w.finish());
    b.writeBigUInt64LE(BigInt(b.length), 0);
    const r = await this.ioctl('SEND', b);
    return { ...r, replyOffset: r.out.readBigUInt64LE(Off.send.reply_offset), replySize: r.out.readBigUInt64LE(Off.send.reply_msg_size) };
  }

  /** RECV; decodes the message when one was returned. */
  async recv(flags = 0n, priority = 0n): Promise<{ errno: number; msg?: ReceivedMessage; dropped: bigint; returnFlags: bigint; out: Buffer }> {
    const b = Buffer.alloc(StructSize.cmd_recv);
    b.writeBigUInt64LE(BigInt(b.length), 0);
    b.writeBigUInt64LE(flags, 8);
    b.writeBigInt64LE(priority, Off.recv.priority);
    const r = await this.ioctl('RECV', b);
    const dropped = r.out.readBigUInt64LE(Off.recv.dropped_msgs);
    const returnFlags = r.out.readBigUInt64LE(Off.cmd.return_flags);
    const offset = r.out.readBigUInt64LE(Off.recv.msg_offset);
    const size = r.out.readBigUInt64LE(Off.recv.msg_msg_size);
    if (r.errno || size === 0n) return { errno: r.errno, dropped, returnFlags, out: r.out };
    const msg = this.decode(Number(offset), Number(size));
    msg.returnFlags = r.out.readBigUInt64LE(Off.recv.msg_return_flags);
    msg.dropped = dropped;
    return { errno: 0, msg, dropped, returnFlags, out: r.out };
  }

  /** RECV that must succeed; frees the slice afterwards unless keep is set. */
  async mustRecv(flags = 0n): Promise<ReceivedMessage> {
    const r = await this.recv(flags);
    if (r.errno || !r.msg) throw new Error(`RECV failed: errno ${r.errno}`);
    await expectOk(this.free(BigInt(r.msg.offset)));
    return r.msg;
  }

  decode(offset: number, sliceSize: number): ReceivedMessage {
    const raw = this.pool(offset, sliceSize);
    const size = raw.readBigUInt64LE(0);
    const items = parseItems(raw, 64, Number(size));
    const data: Buffer[] = [];
    for (const it of items) {
      if (it.type === ItemType.PAYLOAD_OFF) {
        const off = it.payload.readBigUInt64LE(8);
        if (off !== U64_MAX) data.push(raw.subarray(Number(off), Number(off) + Number(it.payload.readBigUInt64LE(0))));
      }
    }
    return {
      offset, sliceSize, size, raw, data, items,
      flags: raw.readBigUInt64LE(Off.msg.flags),
      priority: raw.readBigInt64LE(Off.msg.priority),
      dstId: raw.readBigUInt64LE(Off.msg.dst_id),
      srcId: raw.readBigUInt64LE(Off.msg.src_id),
      payloadType: raw.readBigUInt64LE(Off.msg.payload_type),
      cookie: raw.readBigUInt64LE(Off.msg.cookie),
      cookieReply: raw.readBigUInt64LE(Off.msg.cookie_reply),
      returnFlags: 0n,
      dropped: 0n,
    };
  }

  close(): void {
    this.handle.release();
  }
}

export function parseItems(b: Buffer, start: number, end: number): ReceivedItem[] {
  const items: ReceivedItem[] = [];
  let p = start;
  while (p + 16 <= end) {
    const size = Number(b.readBigUInt64LE(p));
    if (size < 16) break;
    items.push({ type: Number(b.readBigUInt64LE(p + 8)), size, payload: b.subarray(p + 16, p + size) });
    p += ALIGN8(size);
  }
  return items;
}

export async function expectOk(p: Promise<IoctlResult> | IoctlResult): Promise<IoctlResult> {
  const r = await p;
  if (r.errno !== 0) throw new Error(`ioctl failed with errno ${r.errno}`);
  return r;
}

/** A domain with a control node, and a bus made through BUS_MAKE like the selftests do. */
export class TestBus {
  readonly domain: Domain;
  readonly control: TestClient;
  name = '';
  constructor(domain = new Domain()) {
    this.domain = domain;
    this.control = new TestClient({ kind: 'control', domain });
  }

  static async create(opts: { name?: string; flags?: bigint; bloomSize?: number; nHash?: number; attach?: bigint; domain?: Domain } = {}): Promise<TestBus> {
    const tb = new TestBus(opts.domain);
    const uid = process.getuid!();
    tb.name = opts.name ?? `${uid}-test-bus-${Math.random().toString(36).slice(2, 10)}`;
    const r = await tb.control.cmd('BUS_MAKE', opts.flags ?? 2n, (w) => {
      w.itemU64(ItemType.BLOOM_PARAMETER, BigInt(opts.bloomSize ?? 64), BigInt(opts.nHash ?? 1));
      w.string(ItemType.MAKE_NAME, tb.name);
      if (opts.attach !== undefined) w.itemU64(ItemType.ATTACH_FLAGS_SEND, opts.attach);
    });
    if (r.errno) throw new Error(`BUS_MAKE failed: errno ${r.errno}`);
    return tb;
  }

  get bus() {
    return this.domain.buses.get(this.name)!;
  }

  /** A new client on the default endpoint (not yet connected). */
  client(opener?: Partial<Opener>): TestClient {
    return new TestClient({ kind: 'endpoint', ep: this.bus.defaultEndpoint }, opener);
  }

  async conn(opts: Parameters<TestClient['hello']>[0] = {}, opener?: Partial<Opener>): Promise<TestClient> {
    return this.client(opener).connect(opts);
  }

  destroy(): void {
    this.control.close();
  }
}
