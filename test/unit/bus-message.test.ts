/**
 * SEND and RECV of user messages through the whole bus: kdbus_msg_examine's checks in its
 * order, file import, destination resolution and routing errors, the layout of a received
 * message byte for byte (kdbus-abi.md §3.5-§3.7), and the RECV flags. Modelled on the
 * kdbus selftests test-message.c and test-fd.c; expected numbers come from those and from
 * the kernel sources, not from this implementation.
 */
import assert from 'node:assert/strict';
import { requireOrSkip } from '../helpers/require';
import fs from 'node:fs';
import { Errno } from '../../src/abi/errno';
import {
  ALIGN8, Attach, HelloFlags, ItemType, KDBUS_DST_ID_BROADCAST, KDBUS_PAYLOAD_DBUS, MsgFlags, NameFlags, Off,
  RecvFlags, RecvReturn, SendFlags, StructSize, U64_MAX,
} from '../../src/abi/constants';
import { ItemWriter } from '../../src/abi/items';
import {
  FakeFile, TestBus, type TestClient, credsOf, expectOk, memfd, type ReceivedMessage,
} from '../helpers/kdbus-client';
import { namespacesUsable, standIn } from './bus-fixtures';

const MiB = 1024 * 1024;
const BLOOM = 64;

const buses: TestBus[] = [];
async function newBus(opts: Parameters<typeof TestBus.create>[0] = {}): Promise<TestBus> {
  const tb = await TestBus.create(opts);
  buses.push(tb);
  return tb;
}
afterEach(() => {
  for (const tb of buses.splice(0)) tb.destroy();
});

interface Head {
  flags?: bigint;
  priority?: bigint;
  dst?: bigint;
  src?: bigint;
  payloadType?: bigint;
  cookie?: bigint;
  /** timeout_ns / cookie_reply (one field). */
  timeout?: bigint;
}

/** A kdbus_msg built item by item, for messages the client's builder will not make. */
function rawMsg(h: Head, items?: (w: ItemWriter) => void): Buffer {
  const w = new ItemWriter();
  w.u64(0).u64(h.flags ?? 0n).u64(h.priority ?? 0n).u64(h.dst ?? 0n).u64(h.src ?? 0n);
  w.u64(h.payloadType ?? KDBUS_PAYLOAD_DBUS).u64(h.cookie ?? 1n).u64(h.timeout ?? 0n);
  items?.(w);
  const b = Buffer.from(w.finish());
  b.writeBigUInt64LE(BigInt(b.length), 0);
  return b;
}

const vec = (c: TestClient, data: Buffer) => (w: ItemWriter) => w.itemU64(ItemType.PAYLOAD_VEC, data.length, c.mem.put(data));
const zeroVec = (size: number) => (w: ItemWriter) => w.itemU64(ItemType.PAYLOAD_VEC, size, 0);
const bloomItem = (dataSize: number, generation = 0n) => (w: ItemWriter) => {
  const at = w.beginItem(ItemType.BLOOM_FILTER);
  w.u64(generation).zeros(dataSize);
  w.endItem(at);
};
const memfdItem = (fd: number, size: number, start = 0) => (w: ItemWriter) => {
  const at = w.beginItem(ItemType.PAYLOAD_MEMFD);
  w.u64(start).u64(size).i32(fd).u32(0);
  w.endItem(at);
};
const fdsItem = (fds: number[]) => (w: ItemWriter) => {
  const at = w.beginItem(ItemType.FDS);
  for (const fd of fds) w.i32(fd);
  w.endItem(at);
};
const all = (...parts: Array<(w: ItemWriter) => unknown>) => (w: ItemWriter) => {
  for (const p of parts) p(w);
};

/** kdbus_msg.priority is an s64; the client's builder writes u64s. */
const prio = (p: bigint): bigint => BigInt.asUintN(64, p);

const inFuture = (ms: number): bigint => process.hrtime.bigint() + BigInt(ms) * 1_000_000n;

async function sendRaw(c: TestClient, msg: Buffer, o: { sendFlags?: bigint; cancelFd?: number } = {}): Promise<number> {
  return (await c.send(o, msg)).errno;
}

function name(errno: number): string {
  for (const [k, v] of Object.entries(Errno)) if (v === errno) return k;
  return String(errno);
}

/** Asserts an errno by name, so failures read "EBADMSG != EINVAL" instead of numbers. */
function expectErrno(actual: number, expected: keyof typeof Errno, what: string): void {
  assert.equal(name(actual), expected, what);
}

async function recvAll(c: TestClient): Promise<ReceivedMessage[]> {
  const out: ReceivedMessage[] = [];
  for (;;) {
    const r = await c.recv();
    if (r.errno) return out;
    out.push(r.msg!);
    await expectOk(c.free(BigInt(r.msg!.offset)));
  }
}

const activatorHello = (nm: string) => ({ flags: HelloFlags.ACTIVATOR, items: (w: ItemWriter) => w.string(ItemType.NAME, nm) });

/** A new bus with two clients: a sender, and a receiver that takes no metadata. */
async function senderAndReceiver(): Promise<{ tb: TestBus; a: TestClient; b: TestClient }> {
  const tb = await newBus({ bloomSize: BLOOM });
  return { tb, a: await tb.conn(), b: await tb.conn({ attachRecv: 0n }) };
}

describe('bus SEND: checks before the message is examined', () => {
  let tb: TestBus;
  let a: TestClient;
  let b: TestClient;
  beforeEach(async () => {
    tb = await newBus({ bloomSize: BLOOM });
    a = await tb.conn();
    b = await tb.conn();
  });

  it('CANCEL_FD: not open is EBADF, unpollable EINVAL, both before src_id and the message', async () => {
    const bad = rawMsg({ dst: b.id, src: b.id, payloadType: 0n });
    expectErrno(await sendRaw(a, bad, { cancelFd: 999 }), 'EBADF', 'cancel fd not open');
    const noPoll = a.fds.add(new FakeFile('other', Buffer.alloc(0), 0, false));
    expectErrno(await sendRaw(a, bad, { cancelFd: noPoll }), 'EINVAL', 'cancel fd without poll');
    // Checked for asynchronous sends too; a pollable one is then ignored.
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }), { cancelFd: noPoll }), 'EINVAL', 'async send, unpollable cancel fd');
    const ev = new FakeFile('other');
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id, cookie: 5n }), { cancelFd: a.fds.add(ev) }), 0, 'async send ignores a pollable cancel fd');
    assert.equal((await b.mustRecv()).cookie, 5n);
    assert.ok(ev.closed, 'the cancel fd reference is dropped when SEND returns');
  });

  it('src_id other than 0 or the own id is EINVAL, before kdbus_msg_examine; 0 and the own id become the own id', async () => {
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id, src: b.id })), 'EINVAL', 'foreign src_id');
    // A broadcast without SIGNAL would be EBADMSG in examination: src_id wins.
    expectErrno(await sendRaw(a, rawMsg({ dst: KDBUS_DST_ID_BROADCAST, src: a.id + 100n })), 'EINVAL', 'src_id before EBADMSG');
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id, src: a.id, cookie: 1n })), 0);
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id, src: 0n, cookie: 2n })), 0);
    const got = await recvAll(b);
    assert.deepEqual(got.map((m) => [m.cookie, m.srcId]), [[1n, a.id], [2n, a.id]]);
  });

  it('activators and monitors cannot SEND (EOPNOTSUPP)', async () => {
    const act = await tb.conn(activatorHello('org.example.Act'));
    const mon = await tb.conn({ flags: HelloFlags.MONITOR });
    expectErrno(await sendRaw(act, rawMsg({ dst: b.id })), 'EOPNOTSUPP', 'activator');
    expectErrno(await sendRaw(mon, rawMsg({ dst: b.id })), 'EOPNOTSUPP', 'monitor');
  });

  it('an asynchronous SEND writes back an empty reply: offset = pool size, size 0', async () => {
    const r = await a.send({ dst: b.id });
    assert.deepEqual([r.errno, r.replyOffset, r.replySize, r.out.readBigUInt64LE(Off.send.reply_return_flags)], [0, 16n * 1024n * 1024n, 0n, 0n]);
    assert.equal(r.out.readBigUInt64LE(Off.cmd.return_flags), 0n);
  });

  it('negotiation: SEND with NEGOTIATE only parses (the message too) and sends nothing', async () => {
    const NEG = 1n << 63n;
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id }), { sendFlags: NEG }), 0);
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id, flags: NEG }), { sendFlags: NEG }), 0);
    // A negotiating message inside a command that does not negotiate is EINVAL.
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id, flags: NEG })), 'EINVAL', 'message negotiates alone');
    // Unknown message flags are EINVAL (generic parse), even when negotiating.
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id, flags: 1n << 3n })), 'EINVAL', 'unknown msg flag');
    expectErrno((await b.recv()).errno, 'EAGAIN', 'nothing was sent');
  });
});

describe('bus SEND: kdbus_msg_examine, step by step and in order', () => {
  let tb: TestBus;
  let a: TestClient;
  let b: TestClient;
  beforeEach(async () => {
    tb = await newBus({ bloomSize: BLOOM });
    a = await tb.conn();
    b = await tb.conn();
  });

  it('1: payload_type 0 is reserved for the kernel (EINVAL), before anything else', async () => {
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id, payloadType: 0n })), 'EINVAL', 'kernel payload type');
    expectErrno(await sendRaw(a, rawMsg({ dst: KDBUS_DST_ID_BROADCAST, payloadType: 0n })), 'EINVAL', 'before the broadcast checks');
    // Any other type is the clients' business.
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id, payloadType: 0x1234n })), 0);
    assert.equal((await b.mustRecv()).payloadType, 0x1234n);
  });

  it('2: a broadcast without SIGNAL is EBADMSG, with a timeout ENOTUNIQ (SIGNAL checked first)', async () => {
    expectErrno(await sendRaw(a, rawMsg({ dst: KDBUS_DST_ID_BROADCAST })), 'EBADMSG', 'no SIGNAL');
    expectErrno(await sendRaw(a, rawMsg({ dst: KDBUS_DST_ID_BROADCAST, timeout: 5n })), 'EBADMSG', 'no SIGNAL, with timeout');
    const sig = MsgFlags.SIGNAL;
    expectErrno(await sendRaw(a, rawMsg({ dst: KDBUS_DST_ID_BROADCAST, flags: sig, timeout: 5n }, bloomItem(BLOOM))), 'ENOTUNIQ', 'timeout');
    // The broadcast timeout check precedes the EXPECT_REPLY checks...
    expectErrno(
      await sendRaw(a, rawMsg({ dst: KDBUS_DST_ID_BROADCAST, flags: sig | MsgFlags.EXPECT_REPLY, timeout: inFuture(1000) }, bloomItem(BLOOM))),
      'ENOTUNIQ', 'broadcast call');
    // ...so a broadcast call without timeout reaches them: EXPECT_REPLY needs a timeout.
    expectErrno(
      await sendRaw(a, rawMsg({ dst: KDBUS_DST_ID_BROADCAST, flags: sig | MsgFlags.EXPECT_REPLY }, bloomItem(BLOOM))),
      'EINVAL', 'broadcast call without timeout');
  });

  it('3: EXPECT_REPLY needs a timeout (EINVAL) and no SIGNAL (ENOTUNIQ); SYNC_REPLY needs EXPECT_REPLY; a reply is no signal', async () => {
    const { EXPECT_REPLY, SIGNAL } = MsgFlags;
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id, flags: EXPECT_REPLY })), 'EINVAL', 'call without timeout');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id, flags: EXPECT_REPLY | SIGNAL })), 'EINVAL', 'timeout is checked before SIGNAL');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id, flags: EXPECT_REPLY | SIGNAL, timeout: inFuture(1000) }, bloomItem(BLOOM))), 'ENOTUNIQ', 'signal call');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }), { sendFlags: SendFlags.SYNC_REPLY }), 'EINVAL', 'sync without EXPECT_REPLY');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id, flags: SIGNAL, timeout: 7n }, bloomItem(BLOOM))), 'EINVAL', 'signal with cookie_reply');
    expectErrno((await b.recv()).errno, 'EAGAIN', 'nothing was queued');
  });

  it('4: payload vectors add up to at most 2 MiB (EMSGSIZE at 2 MiB + 1), zero-vectors included', async () => {
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id }, zeroVec(2 * MiB))), 0, 'exactly 2 MiB of zero-vector');
    const m = await b.mustRecv();
    assert.equal(m.sliceSize, ALIGN8(Number(m.size)), 'an 8-multiple zero-vector adds no payload bytes');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, all(zeroVec(MiB), zeroVec(MiB + 1)))), 'EMSGSIZE', 'two zero-vectors');
    const big = Buffer.alloc(2 * MiB + 1, 0x61);
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, vec(a, big))), 'EMSGSIZE', 'one data vector of 2 MiB + 1');
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id }, vec(a, big.subarray(0, 2 * MiB)))), 0, 'one data vector of 2 MiB');
    const got = await b.mustRecv();
    assert.equal(got.data[0]!.length, 2 * MiB);
    assert.ok(got.data[0]!.equals(big.subarray(0, 2 * MiB)));
  });

  it('4: a vector outside user address space is EFAULT at examination, in item order', async () => {
    const kernelVec = (w: ItemWriter) => w.itemU64(ItemType.PAYLOAD_VEC, 8, 0xffff_8000_0000_0000n);
    const acrossLimit = (w: ItemWriter) => w.itemU64(ItemType.PAYLOAD_VEC, 0x2000, 0x7fff_ffff_e000n);
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, kernelVec)), 'EFAULT', 'kernel address');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, acrossLimit)), 'EFAULT', 'range crossing TASK_SIZE');
    // Examination walks items in order: the vector before a bad bloom filter wins, and after it loses.
    const sig = { dst: KDBUS_DST_ID_BROADCAST, flags: MsgFlags.SIGNAL };
    expectErrno(await sendRaw(a, rawMsg(sig, all(kernelVec, bloomItem(56)))), 'EFAULT', 'vector first');
    expectErrno(await sendRaw(a, rawMsg(sig, all(bloomItem(56), kernelVec))), 'EDOM', 'bloom first');
    // Examination precedes destination lookup.
    expectErrno(await sendRaw(a, rawMsg({ dst: 9999n }, kernelVec)), 'EFAULT', 'before ENXIO');
  });

  it('4: memfd start+size overflow is EMSGSIZE; a 17th memfd is E2BIG; 17 fds are EMFILE (before any fd is looked up)', async () => {
    const overflow = (w: ItemWriter) => {
      const at = w.beginItem(ItemType.PAYLOAD_MEMFD);
      w.u64(1n << 63n).u64(1n << 63n).i32(999).u32(0);
      w.endItem(at);
    };
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, overflow)), 'EMSGSIZE', 'memfd range overflow');
    // fd 999 is not open: the errors below come before any fd is looked up.
    const memfds = (n: number) => all(...Array.from({ length: n }, () => memfdItem(999, 8)));
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, memfds(17))), 'E2BIG', '17 memfds');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, memfds(129))), 'E2BIG', '129 memfds');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, memfds(16))), 'EBADF', '16 memfds pass examination, then fd 999 is EBADF');
    const seventeen = Array.from({ length: 17 }, (_, i) => 500 + i);
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, fdsItem(seventeen))), 'EMFILE', '17 fds');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, fdsItem(seventeen.slice(0, 16)))), 'EBADF', '16 unknown fds');
    // Item order decides between EMSGSIZE and E2BIG.
    const tooBig = zeroVec(2 * MiB + 8);
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, all(tooBig, memfds(17)))), 'EMSGSIZE', 'vector first');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, all(memfds(17), tooBig))), 'E2BIG', 'memfds first');
  });

  it('generic item checks come first: a zero-sized vector or memfd is EINVAL, a negative memfd fd EBADF', async () => {
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, zeroVec(0))), 'EINVAL', 'vector of size 0');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, memfdItem(a.fds.add(memfd('abcdefgh')), 0))), 'EINVAL', 'memfd of size 0');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, memfdItem(-1, 8))), 'EBADF', 'memfd fd -1');
    // Even before kdbus_msg_examine's first step.
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id, payloadType: 0n }, memfdItem(-1, 8))), 'EBADF', 'before payload_type');
  });

  it('4: bloom filter data not a multiple of 8 is EFAULT, not the bus bloom size EDOM', async () => {
    const sig = { dst: KDBUS_DST_ID_BROADCAST, flags: MsgFlags.SIGNAL };
    expectErrno(await sendRaw(a, rawMsg(sig, bloomItem(60))), 'EFAULT', '60 bytes');
    expectErrno(await sendRaw(a, rawMsg(sig, bloomItem(56))), 'EDOM', '56 bytes');
    expectErrno(await sendRaw(a, rawMsg(sig, bloomItem(72))), 'EDOM', '72 bytes');
    assert.equal(await sendRaw(a, rawMsg(sig, bloomItem(64))), 0, 'the bus size');
  });

  it('4: DST_NAME must be valid (EINVAL) and not on a broadcast (EBADMSG); other item types are EINVAL', async () => {
    const sig = { dst: KDBUS_DST_ID_BROADCAST, flags: MsgFlags.SIGNAL };
    expectErrno(await sendRaw(a, rawMsg({ dst: 0n }, (w) => w.string(ItemType.DST_NAME, 'foo'))), 'EINVAL', 'invalid name');
    expectErrno(await sendRaw(a, rawMsg({ dst: 0n }, (w) => w.string(ItemType.DST_NAME, 'foo.bar.*'))), 'EINVAL', 'wildcard');
    expectErrno(await sendRaw(a, rawMsg(sig, all(bloomItem(BLOOM), (w) => w.string(ItemType.DST_NAME, 'foo.bar')))), 'EBADMSG', 'broadcast with name');
    expectErrno(await sendRaw(a, rawMsg(sig, all(bloomItem(BLOOM), (w) => w.string(ItemType.DST_NAME, 'foo')))), 'EINVAL', 'validity first');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, (w) => w.string(ItemType.NAME, 'foo.bar'))), 'EINVAL', 'NAME item');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, (w) => w.itemU64(ItemType.NEGOTIATE, 0))), 'EINVAL', 'NEGOTIATE item');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, (w) => w.itemU64(ItemType.CANCEL_FD, 0))), 'EINVAL', 'CANCEL_FD item');
  });

  it('duplicate FDS, BLOOM_FILTER or DST_NAME items are EINVAL (generic item walk; the EEXIST of examination is unreachable)', async () => {
    const sig = { dst: KDBUS_DST_ID_BROADCAST, flags: MsgFlags.SIGNAL };
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, all(fdsItem([]), fdsItem([])))), 'EINVAL', 'FDS twice');
    expectErrno(await sendRaw(a, rawMsg(sig, all(bloomItem(BLOOM), bloomItem(BLOOM)))), 'EINVAL', 'bloom twice');
    const nm = (w: ItemWriter) => w.string(ItemType.DST_NAME, 'foo.bar');
    expectErrno(await sendRaw(a, rawMsg({ dst: 0n }, all(nm, nm))), 'EINVAL', 'DST_NAME twice');
  });

  it('5: bloom iff SIGNAL (EBADMSG), then dst_id 0 needs DST_NAME (EDESTADDRREQ), then no FDS on a broadcast (ENOTUNIQ)', async () => {
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id, flags: MsgFlags.SIGNAL })), 'EBADMSG', 'signal without bloom');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, bloomItem(BLOOM))), 'EBADMSG', 'bloom without signal');
    expectErrno(await sendRaw(a, rawMsg({ dst: 0n })), 'EDESTADDRREQ', 'no destination');
    expectErrno(await sendRaw(a, rawMsg({ dst: 0n, flags: MsgFlags.SIGNAL })), 'EBADMSG', 'bloom rule first');
    const sig = { dst: KDBUS_DST_ID_BROADCAST, flags: MsgFlags.SIGNAL };
    // fd 777 is not open: ENOTUNIQ comes from examination, before fds are imported.
    expectErrno(await sendRaw(a, rawMsg(sig, all(bloomItem(BLOOM), fdsItem([777])))), 'ENOTUNIQ', 'fds on a broadcast');
    // memfds are payload and may be broadcast.
    const f = memfd('12345678');
    await expectOk(b.matchAllBroadcasts());
    assert.equal(await sendRaw(a, rawMsg(sig, all(bloomItem(BLOOM), memfdItem(a.fds.add(f), 8)))), 0, 'memfd on a broadcast');
    const got = await b.mustRecv();
    const item = got.items.find((it) => it.type === ItemType.PAYLOAD_MEMFD)!;
    assert.equal(b.fds.installed.get(item.payload.readInt32LE(16)), f);
  });
});

describe('bus SEND: importing fds and memfds', () => {
  let tb: TestBus;
  let a: TestClient;
  let b: TestClient;
  beforeEach(async () => {
    tb = await newBus({ bloomSize: BLOOM });
    a = await tb.conn();
    b = await tb.conn();
  });

  it('memfds: not open EBADF, not a memfd EMEDIUMTYPE, any seal missing ETXTBSY, range beyond the file EFAULT', async () => {
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, memfdItem(999, 8))), 'EBADF', 'unknown fd');
    const plain = a.fds.add(new FakeFile('other', Buffer.from('abcdefgh')));
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, memfdItem(plain, 8))), 'EMEDIUMTYPE', 'regular file');
    for (const seal of [1, 2, 4, 8]) {
      const f = a.fds.add(memfd('abcdefgh', 0xf & ~seal));
      expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, memfdItem(f, 8))), 'ETXTBSY', `seal 0x${seal} missing`);
    }
    const f19 = a.fds.add(memfd('kdbus memfd 1234567'));
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, memfdItem(f19, 10, 10))), 'EFAULT', '10+10 > 19');
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id }, memfdItem(f19, 16, 3))), 0, '3+16 = 19 fits');
    const got = await b.mustRecv();
    const it = got.items.find((x) => x.type === ItemType.PAYLOAD_MEMFD)!;
    assert.equal(it.payload.readBigUInt64LE(0), 3n, 'start as sent');
    assert.equal(it.payload.readBigUInt64LE(8), 16n, 'size as sent');
  });

  it('FDS: not open EBADF, a kdbus handle or a unix socket EOPNOTSUPP; anything else passes', async () => {
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, fdsItem([999]))), 'EBADF', 'unknown fd');
    for (const kind of ['kdbus', 'unix-socket'] as const) {
      const f = a.fds.add(new FakeFile(kind));
      expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, fdsItem([f]))), 'EOPNOTSUPP', kind);
    }
    const other = new FakeFile('other');
    const mf = memfd('x');
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id }, fdsItem([a.fds.add(other), a.fds.add(mf)]))), 0);
    const got = await b.mustRecv();
    const fds = got.items.find((x) => x.type === ItemType.FDS)!;
    assert.equal(fds.size, 16 + 8);
    assert.equal(b.fds.installed.get(fds.payload.readInt32LE(0)), other);
    assert.equal(b.fds.installed.get(fds.payload.readInt32LE(4)), mf);
  });

  it('import walks items in order, happens before routing, and drops what it took on failure', async () => {
    const badSeal = memfdItem(a.fds.add(memfd('abcdefgh', 0x7)), 8);
    const kdbusFd = fdsItem([a.fds.add(new FakeFile('kdbus'))]);
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, all(badSeal, kdbusFd))), 'ETXTBSY', 'memfd item first');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, all(kdbusFd, badSeal))), 'EOPNOTSUPP', 'FDS item first');
    expectErrno(await sendRaw(a, rawMsg({ dst: 9999n }, badSeal)), 'ETXTBSY', 'before ENXIO');
    expectErrno(await sendRaw(a, rawMsg({ dst: 0n }, all((w) => w.string(ItemType.DST_NAME, 'no.such.name'), badSeal))), 'ETXTBSY', 'before ESRCH');
    const taken = new FakeFile('other');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, fdsItem([a.fds.add(taken), a.fds.add(new FakeFile('kdbus'))]))), 'EOPNOTSUPP', 'second fd refused');
    assert.ok(taken.closed, 'the reference taken to the first fd is dropped');
  });

  it('files are held while the message is queued and let go when it leaves the queue', async () => {
    const f = new FakeFile('other');
    const m = memfd('abcdefgh');
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id }, all(fdsItem([a.fds.add(f)]), memfdItem(a.fds.add(m), 8)))), 0);
    assert.equal(f.closed || m.closed, false, 'queued');
    await expectOk(b.recv(RecvFlags.DROP));
    assert.ok(f.closed && m.closed, 'dropped');
  });

  it('fds to a receiver without ACCEPT_FD are ECOMM; memfds are payload and always pass', async () => {
    const noFd = await tb.conn({ flags: 0n });
    const mf = memfd('abcdefgh');
    expectErrno(await sendRaw(a, rawMsg({ dst: noFd.id }, fdsItem([a.fds.add(new FakeFile('other'))]))), 'ECOMM', 'fd');
    expectErrno(await sendRaw(a, rawMsg({ dst: noFd.id, flags: MsgFlags.EXPECT_REPLY, timeout: inFuture(1000) }, fdsItem([a.fds.add(new FakeFile('other'))]))), 'ECOMM', 'call with fd');
    assert.equal(a.conn.requestCount, 0, 'the refused call holds no request slot');
    assert.equal(await sendRaw(a, rawMsg({ dst: noFd.id }, memfdItem(a.fds.add(mf), 8))), 0, 'memfd');
    const got = await noFd.mustRecv();
    const it = got.items.find((x) => x.type === ItemType.PAYLOAD_MEMFD)!;
    assert.equal(noFd.fds.installed.get(it.payload.readInt32LE(16)), mf);
    // An empty FDS item carries no fds and is no reason to refuse.
    assert.equal(await sendRaw(a, rawMsg({ dst: noFd.id }, fdsItem([]))), 0, 'empty FDS item');
  });
});

describe('bus SEND: destinations and routing errors', () => {
  let tb: TestBus;
  let a: TestClient;
  let b: TestClient;
  beforeEach(async () => {
    tb = await newBus({ bloomSize: BLOOM });
    a = await tb.conn();
    b = await tb.conn();
  });

  it('by id: unknown, gone, activator, monitor and policy holder ids are all ENXIO', async () => {
    const act = await tb.conn(activatorHello('org.example.Act'));
    const mon = await tb.conn({ flags: HelloFlags.MONITOR });
    const holder = tb.client();
    await expectOk(holder.hello({ flags: HelloFlags.POLICY_HOLDER, items: (w) => w.string(ItemType.NAME, 'org.example.Held') }));
    const gone = await tb.conn();
    gone.close();
    for (const [what, id] of [['unknown', 9999n], ['gone', gone.id], ['activator', act.id], ['monitor', mon.id], ['holder', holder.id]] as const) {
      expectErrno(await sendRaw(a, rawMsg({ dst: id })), 'ENXIO', what);
      expectErrno(await sendRaw(a, rawMsg({ dst: id, flags: MsgFlags.EXPECT_REPLY, timeout: inFuture(1000) })), 'ENXIO', `${what}, call`);
    }
    assert.equal(a.conn.requestCount, 0);
  });

  it('by name: no owner ESRCH, a dst_id that is not the owner EREMCHG, NO_AUTO_START to an activator EADDRNOTAVAIL', async () => {
    const toName = (nm: string, h: Head = {}) => rawMsg({ dst: 0n, ...h }, (w) => w.string(ItemType.DST_NAME, nm));
    expectErrno(await sendRaw(a, toName('org.example.B')), 'ESRCH', 'nobody owns it');
    await expectOk(b.acquire('org.example.B'));
    expectErrno(await sendRaw(a, toName('org.example.B', { dst: a.id })), 'EREMCHG', 'owner is b, not a');
    assert.equal(await sendRaw(a, toName('org.example.B', { dst: b.id, cookie: 11n })), 0, 'owner id and name agree');
    assert.equal(await sendRaw(a, toName('org.example.B', { cookie: 12n, flags: MsgFlags.NO_AUTO_START })), 0, 'NO_AUTO_START to a real owner');
    const got = await recvAll(b);
    assert.deepEqual(got.map((m) => [m.cookie, m.dstId]), [[11n, b.id], [12n, 0n]], 'dst_id is delivered as sent');
    const dn = got[1]!.items.find((x) => x.type === ItemType.DST_NAME)!;
    assert.equal(dn.payload.toString('latin1'), 'org.example.B\0', 'DST_NAME is kept');
    await expectOk(b.release('org.example.B'));
    expectErrno(await sendRaw(a, toName('org.example.B')), 'ESRCH', 'released');

    await tb.conn(activatorHello('org.example.Act'));
    expectErrno(await sendRaw(a, toName('org.example.Act', { flags: MsgFlags.NO_AUTO_START })), 'EADDRNOTAVAIL', 'activator only');
    assert.equal(await sendRaw(a, toName('org.example.Act')), 0, 'without NO_AUTO_START it is queued for activation');
    await expectOk(b.acquire('org.example.Act'));
    assert.equal(await sendRaw(a, toName('org.example.Act', { flags: MsgFlags.NO_AUTO_START })), 0, 'implemented now');
  });

  it('TALK policy: EPERM for messages and calls; the sender\'s current credentials count, not the ones it opened with', async () => {
    const u = await tb.conn({}, { creds: credsOf(1000) });
    expectErrno(await sendRaw(u, rawMsg({ dst: a.id })), 'EPERM', 'uid 1000 to uid 0');
    expectErrno(await sendRaw(u, rawMsg({ dst: a.id, flags: MsgFlags.EXPECT_REPLY, timeout: inFuture(1000) })), 'EPERM', 'call');
    assert.equal(u.conn.requestCount, 0, 'no tracker for a refused call');
    await expectOk(a.acquire('org.example.A'));
    expectErrno(await sendRaw(u, rawMsg({ dst: 0n }, (w) => w.string(ItemType.DST_NAME, 'org.example.A'))), 'EPERM', 'by name');
    expectErrno(await sendRaw(u, rawMsg({ dst: 0n }, (w) => w.string(ItemType.DST_NAME, 'org.example.None'))), 'ESRCH', 'resolution before policy');
    const u2 = await tb.conn({}, { creds: credsOf(1000) });
    assert.equal(await sendRaw(u, rawMsg({ dst: u2.id })), 0, 'same uid');
    assert.equal(await sendRaw(a, rawMsg({ dst: u.id })), 0, 'the bus owner talks to anyone');
    u.creds = credsOf(0);
    assert.equal(await sendRaw(u, rawMsg({ dst: a.id, cookie: 77n })), 0, 'euid 0 now equals the receiver\'s uid');
    assert.equal((await a.mustRecv()).cookie, 77n);
  });

  it('replies need an outstanding request from exactly that peer (EBADSLT) and no TALK permission', async () => {
    const c = await tb.conn();
    const reply = (from: TestClient, to: bigint, cookie: bigint) => sendRaw(from, rawMsg({ dst: to, timeout: cookie, cookie: 900n }));
    expectErrno(await reply(b, a.id, 0x1234abcdn), 'EBADSLT', 'nothing was asked');
    expectErrno(await reply(b, 9999n, 1n), 'ENXIO', 'destination before the tracker');
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id, cookie: 100n, flags: MsgFlags.EXPECT_REPLY, timeout: inFuture(5000) })), 0);
    expectErrno(await reply(c, a.id, 100n), 'EBADSLT', 'a third party cannot answer');
    expectErrno(await reply(b, a.id, 101n), 'EBADSLT', 'wrong cookie');
    assert.equal(await reply(b, a.id, 100n), 0, 'the callee answers');
    expectErrno(await reply(b, a.id, 100n), 'EBADSLT', 'only once');
    const r = await a.mustRecv();
    assert.deepEqual([r.srcId, r.cookie, r.cookieReply], [b.id, 900n, 100n]);

    // A callee that may not TALK to the caller can still answer it.
    const u = await tb.conn({}, { creds: credsOf(1000) });
    assert.equal(await sendRaw(a, rawMsg({ dst: u.id, cookie: 200n, flags: MsgFlags.EXPECT_REPLY, timeout: inFuture(5000) })), 0);
    expectErrno(await sendRaw(u, rawMsg({ dst: a.id })), 'EPERM', 'u may not talk to a');
    assert.equal(await reply(u, a.id, 200n), 0, 'but may reply');
  });

  it('at most 128 requests may wait for replies (EMLINK for the 129th); an answered one frees its slot', async () => {
    const callees: TestClient[] = [];
    for (let i = 0; i < 9; i++) callees.push(await tb.conn());
    let count = 0;
    let cookie = 1n;
    const call = (dst: bigint) => sendRaw(a, rawMsg({ dst, cookie: cookie++, flags: MsgFlags.EXPECT_REPLY, timeout: inFuture(10_000) }));
    let err = 0;
    outer: for (let i = 0; i < 8; i++) {
      for (let n = 0; n < 16; n++) {
        err = await call(callees[i]!.id);
        if (err) break outer;
        count++;
      }
    }
    assert.equal(err, 0);
    assert.equal(count, 128);
    expectErrno(await call(callees[8]!.id), 'EMLINK', '129th');
    expectErrno(await sendRaw(a, rawMsg({ dst: callees[8]!.id, cookie: 5000n, flags: MsgFlags.EXPECT_REPLY, timeout: inFuture(1000) }), { sendFlags: SendFlags.SYNC_REPLY }), 'EMLINK', 'sync calls count too');
    assert.equal(await sendRaw(a, rawMsg({ dst: callees[8]!.id })), 0, 'plain messages are not requests');
    const req = await callees[0]!.mustRecv();
    assert.equal(await sendRaw(callees[0]!, rawMsg({ dst: a.id, timeout: req.cookie })), 0);
    assert.equal(await call(callees[8]!.id), 0, 'one slot free again');
    expectErrno(await call(callees[8]!.id), 'EMLINK', 'and taken');
  });
});

describe('bus SEND: payload copied from unmapped memory (kdbus-abi.md §3.5 step 7)', () => {
  let tb: TestBus;
  let a: TestClient;
  let b: TestClient;
  // In user range, but nothing is mapped there: only copying the data finds out.
  const unmapped = (w: ItemWriter) => w.itemU64(ItemType.PAYLOAD_VEC, 16, 0x5000_0000_0000n);
  beforeEach(async () => {
    tb = await newBus({ bloomSize: BLOOM });
    a = await tb.conn();
    b = await tb.conn();
  });

  it('is EFAULT for a unicast or a call, after the destination was resolved', async () => {
    expectErrno(await sendRaw(a, rawMsg({ dst: 9999n }, unmapped)), 'ENXIO', 'destination first');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, unmapped)), 'EFAULT', 'unicast');
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id, flags: MsgFlags.EXPECT_REPLY, timeout: inFuture(1000) }, unmapped)), 'EFAULT', 'call');
    assert.equal(a.conn.requestCount, 0);
    const r = await b.recv();
    assert.deepEqual([name(r.errno), r.dropped], ['EAGAIN', 0n], 'nothing queued, nothing lost');
  });

  it('costs broadcast receivers the message (lost), while the sender sees success; a unicast signal is just dropped', async () => {
    await expectOk(b.matchAllBroadcasts());
    await expectOk(a.matchAllBroadcasts());
    const mon = await tb.conn({ flags: HelloFlags.MONITOR });
    assert.equal(await sendRaw(a, rawMsg({ dst: KDBUS_DST_ID_BROADCAST, flags: MsgFlags.SIGNAL }, all(unmapped, bloomItem(BLOOM)))), 0);
    for (const [who, c] of [['receiver', b], ['sender', a], ['monitor', mon]] as const) {
      const r = await c.recv();
      assert.deepEqual([name(r.errno), r.dropped], ['EAGAIN', 1n], who);
    }
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id, flags: MsgFlags.SIGNAL }, all(unmapped, bloomItem(BLOOM)))), 0);
    const r = await b.recv();
    assert.deepEqual([name(r.errno), r.dropped], ['EAGAIN', 0n], 'unicast signal delivery errors are ignored, not counted');
  });
});

describe('bus SEND: a payload gathered from several vectors', () => {
  let a: TestClient;
  let b: TestClient;
  beforeEach(async () => {
    ({ a, b } = await senderAndReceiver());
  });

  const pattern = (n: number, seed: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff));

  it('every message arrives as its own bytes, whatever the ones before it left in a reused buffer', async () => {
    // Large first, then smaller ones of the same size class: stale bytes would show past their end.
    const sizes = [[96, 65536], [40, 60000, 3], [8, 33000], [50000], [96, 65536]];
    for (const [i, parts] of sizes.entries()) {
      const data = parts.map((n, j) => pattern(n, 16 * i + j));
      assert.equal(await sendRaw(a, rawMsg({ dst: b.id, cookie: BigInt(i + 1) }, all(...data.map((d) => vec(a, d))))), 0);
      const m = await b.mustRecv();
      assert.equal(m.cookie, BigInt(i + 1));
      assert.deepEqual(m.data, data, `message ${i}`);
      const end = Number(m.items.filter((x) => x.type === ItemType.PAYLOAD_OFF).at(-1)!.payload.readBigUInt64LE(8)) + parts.at(-1)!;
      assert.ok(m.raw.subarray(end, m.sliceSize).every((x) => x === 0), `message ${i}: zeros after the payload, up to the slice end`);
    }
  });

  it('zero vectors and a memfd inside a large payload still add their zero bytes in place', async () => {
    const f = a.fds.add(memfd('0123456789abc'));
    const big = pattern(20000, 3);
    const msg = rawMsg({ dst: b.id }, all(vec(a, big), zeroVec(5), memfdItem(f, 13), vec(a, Buffer.from('Z'))));
    assert.equal(await sendRaw(a, msg), 0);
    const m = await b.mustRecv();
    const offs = m.items.filter((x) => x.type === ItemType.PAYLOAD_OFF).map((x) => Number(x.payload.readBigUInt64LE(8)));
    assert.deepEqual(m.raw.subarray(offs[0]!, offs[0]! + 20000), big);
    assert.equal(offs[2], offs[0]! + 20000 + 5 + 5, 'the zero vector adds 5 % 8, the 13-byte memfd 13 % 8');
    assert.ok(m.raw.subarray(offs[0]! + 20000, offs[2]).every((x) => x === 0));
    assert.equal(m.raw.toString('latin1', offs[2]!, offs[2]! + 1), 'Z');
  });

  it('an unreadable vector among large ones fails the unicast (EFAULT), and the next message is whole', async () => {
    const unmapped = (w: ItemWriter) => w.itemU64(ItemType.PAYLOAD_VEC, 8192, 0x5000_0000_0000n);
    expectErrno(await sendRaw(a, rawMsg({ dst: b.id }, all(vec(a, pattern(30000, 1)), unmapped))), 'EFAULT', 'second vector unmapped');
    const data = [pattern(30000, 9), pattern(100, 2)];
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id }, all(...data.map((d) => vec(a, d))))), 0);
    assert.deepEqual((await b.mustRecv()).data, data);
  });
});

describe('bus RECV: layout of a received message (kdbus-abi.md §3.6)', () => {
  let tb: TestBus;
  let a: TestClient;
  beforeEach(async () => {
    tb = await newBus({ bloomSize: BLOOM });
    a = await tb.conn();
  });

  /** kdbus_msg_send() of the selftests: 131075-byte VEC, 5-byte zero VEC, 13-byte VEC, memfd. */
  const ref1 = Buffer.alloc(1024 * 128 + 3);
  ref1.write('0123456789_0');
  const ref2 = Buffer.from('0123456789_1\0', 'latin1');
  const MEMFD_TEXT = 'kdbus memfd 1234567';

  async function selftestMessage(to: TestClient, extra: Partial<Parameters<TestClient['send']>[0]> = {}) {
    const mf = memfd(MEMFD_TEXT);
    const r = await a.send({ dst: to.id, cookie: 0x1234abcd5678eeffn, priority: prio(-7n), payload: [ref1, 5, ref2], memfds: [{ fd: a.fds.add(mf), size: 16 }], ...extra });
    assert.equal(r.errno, 0);
    const got = await to.recv();
    assert.equal(got.errno, 0);
    return { mf, got, msg: got.msg!, raw: got.msg!.raw };
  }

  function words(raw: Buffer, at: number, n: number): bigint[] {
    return Array.from({ length: n }, (_, i) => raw.readBigUInt64LE(at + 8 * i));
  }

  it('kdbus_msg_send without metadata: size, items, offsets, zero insertion and slice size, byte for byte', async () => {
    const b = await tb.conn({ attachRecv: 0n });
    const { mf, got, raw } = await selftestMessage(b);
    // Header 64 + 3 vectors (32 each) + memfd item (40) = 200; payload 131075 + 5 + 13 = 131093.
    assert.equal(got.out.readBigUInt64LE(Off.recv.msg_msg_size), 131296n, 'msg_size is the whole 8-aligned slice');
    assert.equal(raw.length, 131296);
    assert.deepEqual(words(raw, 0, 8), [200n, 0n, BigInt.asUintN(64, -7n), b.id, a.id, KDBUS_PAYLOAD_DBUS, 0x1234abcd5678eeffn, 0n]);
    assert.deepEqual(words(raw, 64, 4), [32n, BigInt(ItemType.PAYLOAD_OFF), 131075n, 200n], 'data vector: offset from the slice start');
    assert.deepEqual(words(raw, 96, 4), [32n, BigInt(ItemType.PAYLOAD_OFF), 5n, U64_MAX], 'zero vector: offset ~0');
    assert.deepEqual(words(raw, 128, 4), [32n, BigInt(ItemType.PAYLOAD_OFF), 13n, 200n + 131075n + 5n]);
    assert.deepEqual(words(raw, 160, 4), [40n, BigInt(ItemType.PAYLOAD_MEMFD), 0n, 16n]);
    const fd = raw.readInt32LE(192);
    assert.equal(b.fds.installed.get(fd), mf, 'memfd number installed at RECV');
    assert.equal(raw.readUInt32LE(196), 0, 'memfd padding word');
    assert.ok(raw.subarray(200, 200 + 131075).equals(ref1), 'first vector');
    assert.ok(raw.subarray(131275, 131280).equals(Buffer.alloc(5)), '5 % 8 zero bytes for the zero vector');
    assert.ok(raw.subarray(131280, 131293).equals(ref2), 'third vector, unaligned after the zeros');
    assert.ok(raw.subarray(131293).equals(Buffer.alloc(3)), 'padding to 8; the 16-byte memfd adds none');
  });

  it('metadata goes between the items and the payload; kdbus_msg.size = ALIGN8(message) + metadata', async () => {
    const b = await tb.conn({ attachRecv: Attach.TIMESTAMP });
    const before = process.hrtime.bigint();
    const wallBefore = BigInt(Date.now()) * 1_000_000n;
    const { raw } = await selftestMessage(b);
    assert.equal(raw.length, 131296 + 40);
    assert.equal(raw.readBigUInt64LE(0), 240n);
    assert.deepEqual(words(raw, 64, 4), [32n, BigInt(ItemType.PAYLOAD_OFF), 131075n, 240n]);
    assert.deepEqual(words(raw, 128, 4), [32n, BigInt(ItemType.PAYLOAD_OFF), 13n, 240n + 131080n]);
    const [size, type, seq, mono, real] = words(raw, 200, 5);
    assert.deepEqual([size, type], [40n, BigInt(ItemType.TIMESTAMP)]);
    assert.ok(seq! > 0n);
    assert.ok(mono! >= before && mono! <= process.hrtime.bigint(), 'CLOCK_MONOTONIC at SEND');
    assert.ok(real! >= wallBefore - 1_000_000n && real! <= BigInt(Date.now() + 1) * 1_000_000n, 'CLOCK_REALTIME at SEND');
    assert.ok(raw.subarray(240, 240 + 131075).equals(ref1));
  });

  it('an unaligned last item: kdbus_msg.size stays unaligned without metadata, ALIGN8 + metadata with it', async () => {
    // VEC "hello" then DST_NAME "a.bc": 64 + 32 + 16 + 5 = 117 bytes of message.
    const owner = async (recv: bigint, items?: (w: ItemWriter) => void) => {
      const c = await tb.conn({ attachRecv: recv, ...(items ? { items } : {}) });
      await expectOk(c.acquire('a.bc'));
      return c;
    };
    const send = async (from: TestClient, to: TestClient) => {
      const msg = rawMsg({ dst: 0n, cookie: 3n }, all(vec(from, Buffer.from('hello')), (w) => w.string(ItemType.DST_NAME, 'a.bc')));
      assert.equal(msg.length, 120, 'sent with the padded size, as the selftests do');
      assert.equal(await sendRaw(from, msg), 0);
      const m = await to.mustRecv();
      await expectOk(to.release('a.bc'));
      return m;
    };
    const none = await owner(0n);
    let m = await send(a, none);
    assert.equal(m.size, 117n);
    assert.equal(m.sliceSize, 128);
    assert.deepEqual(words(m.raw, 64, 4), [32n, BigInt(ItemType.PAYLOAD_OFF), 5n, 120n]);
    assert.equal(m.raw.readBigUInt64LE(96), 21n, 'DST_NAME item size');
    assert.ok(m.raw.subarray(117, 120).equals(Buffer.alloc(3)), 'zero padding after the message');
    assert.equal(m.raw.toString('latin1', 120, 125), 'hello');

    const ts = await owner(Attach.TIMESTAMP);
    m = await send(a, ts);
    assert.equal(m.size, 120n + 40n);
    assert.equal(m.raw.readBigUInt64LE(120 + 8), BigInt(ItemType.TIMESTAMP));
    assert.equal(m.raw.toString('latin1', 160, 165), 'hello');

    // The last metadata item's padding is not counted either.
    const desc = await tb.conn({ items: (w) => w.string(ItemType.CONN_DESCRIPTION, 'abc') });
    const dd = await owner(Attach.CONN_DESCRIPTION);
    m = await send(desc, dd);
    assert.equal(m.size, 120n + 20n);
    assert.deepEqual(words(m.raw, 120, 2), [20n, BigInt(ItemType.CONN_DESCRIPTION)]);
    assert.equal(m.raw.toString('latin1', 136, 140), 'abc\0');
    assert.equal(m.raw.readBigUInt64LE(64 + 24), 144n, 'payload at ALIGN8(size)');
    assert.equal(m.raw.toString('latin1', 144, 149), 'hello');
    assert.equal(m.sliceSize, 152);
  });

  it('zero insertion: zero vectors add size % 8 zero bytes, memfds size % 8, data vectors are packed', async () => {
    const b = await tb.conn({ attachRecv: 0n });
    const f = a.fds.add(memfd('0123456789abc'));
    const msg = rawMsg({ dst: b.id }, all(
      vec(a, Buffer.from('AB')), memfdItem(f, 13), vec(a, Buffer.from('CD')), zeroVec(3), vec(a, Buffer.from('EF')),
      zeroVec(16), vec(a, Buffer.from('G')),
    ));
    assert.equal(await sendRaw(a, msg), 0);
    const m = await b.mustRecv();
    const P = 64 + 32 + 40 + 32 * 5;
    assert.equal(m.size, BigInt(P));
    const offs = m.items.filter((x) => x.type === ItemType.PAYLOAD_OFF).map((x) => [x.payload.readBigUInt64LE(0), x.payload.readBigUInt64LE(8)]);
    assert.deepEqual(offs, [[2n, BigInt(P)], [2n, BigInt(P + 7)], [3n, U64_MAX], [2n, BigInt(P + 12)], [16n, U64_MAX], [1n, BigInt(P + 14)]]);
    assert.equal(m.raw.toString('latin1', P, P + 15), 'AB\0\0\0\0\0CD\0\0\0EFG');
    assert.equal(m.sliceSize, P + 16);
  });

  it('a broadcast keeps its BLOOM_FILTER item; every receiver, the sender included, shares one TIMESTAMP', async () => {
    const b = await tb.conn({ attachRecv: Attach.TIMESTAMP });
    const c = await tb.conn({ attachRecv: Attach.TIMESTAMP });
    const s = await tb.conn({ attachRecv: Attach.TIMESTAMP });
    for (const x of [b, c, s]) await expectOk(x.matchAllBroadcasts());
    const filter = Buffer.alloc(BLOOM);
    filter.writeBigUInt64LE(0x8000_0000_0000_0001n, 8);
    const send = (cookie: bigint) => s.send({ cookie, payload: [ref1, 5, ref2], bloom: { generation: 3n, data: filter } });
    await expectOk(send(0x77n));
    const got = [await b.mustRecv(), await c.mustRecv(), await s.mustRecv()];
    const H = 64 + 32 * 3 + 16 + 8 + BLOOM;
    for (const m of got) {
      assert.deepEqual([m.size, m.flags, m.dstId, m.srcId, m.cookie], [BigInt(H + 40), MsgFlags.SIGNAL, KDBUS_DST_ID_BROADCAST, s.id, 0x77n]);
      const bl = m.items.find((x) => x.type === ItemType.BLOOM_FILTER)!;
      assert.equal(bl.size, 16 + 8 + BLOOM);
      assert.equal(bl.payload.readBigUInt64LE(0), 3n, 'generation');
      assert.ok(bl.payload.subarray(8).equals(filter), 'filter bytes');
      assert.equal(m.items[0]!.payload.readBigUInt64LE(8), BigInt(H + 40), 'payload offset relative to this slice');
    }
    const stamps = got.map((m) => m.raw.subarray(H + 16, H + 40).toString('hex'));
    assert.equal(new Set(stamps).size, 1, 'same seqnum and clocks for all receivers');
    await expectOk(send(0x78n));
    const next = await b.mustRecv();
    assert.ok(next.raw.readBigUInt64LE(H + 16) > got[0]!.raw.readBigUInt64LE(H + 16), 'the next message has a later seqnum');
  });

  it('sequence numbers are taken once a message passed examination, so failed imports and routing use one up', async () => {
    const r = await tb.conn({ attachRecv: Attach.TIMESTAMP });
    await expectOk(r.matchAllBroadcasts());
    const seq = async () => {
      await expectOk(a.send({ bloom: { data: Buffer.alloc(BLOOM) } }));
      const m = await r.mustRecv();
      return m.items.find((x) => x.type === ItemType.TIMESTAMP)!.payload.readBigUInt64LE(0);
    };
    const first = await seq();
    expectErrno(await sendRaw(a, rawMsg({ dst: r.id }, memfdItem(a.fds.add(memfd('abcdefgh', 0x7)), 8))), 'ETXTBSY', 'import fails: +1');
    expectErrno(await sendRaw(a, rawMsg({ dst: 9999n })), 'ENXIO', 'routing fails: +1');
    expectErrno(await sendRaw(a, rawMsg({ dst: r.id, flags: MsgFlags.SIGNAL })), 'EBADMSG', 'examination fails: +0');
    expectErrno(await sendRaw(a, rawMsg({ dst: r.id }), { cancelFd: 999 }), 'EBADF', 'before examination: +0');
    assert.equal(await seq(), first + 3n);
  });

  it('metadata items come in kdbus order: process items, OWNED_NAME per held name, CONN_DESCRIPTION, TIMESTAMP', async () => {
    const s = await tb.conn({ items: (w) => w.string(ItemType.CONN_DESCRIPTION, 'sender-desc') });
    await expectOk(s.acquire('org.example.One'));
    await expectOk(s.acquire('org.example.Two'));
    const q = await tb.conn();
    await expectOk(q.acquire('org.example.Q'));
    await expectOk(s.acquire('org.example.Q', NameFlags.QUEUE));
    const r = await tb.conn({ attachRecv: Attach.ALL });
    await expectOk(s.send({ dst: r.id, payload: [Buffer.from('x')] }));
    const m = await r.mustRecv();
    const order = [
      ItemType.CREDS, ItemType.PIDS, ItemType.AUXGROUPS, ItemType.TID_COMM, ItemType.PID_COMM, ItemType.EXE,
      ItemType.CMDLINE, ItemType.CGROUP, ItemType.CAPS, ItemType.SECLABEL, ItemType.AUDIT, ItemType.OWNED_NAME,
      ItemType.CONN_DESCRIPTION, ItemType.TIMESTAMP,
    ];
    const meta = m.items.filter((x) => x.type >= 0x1000);
    const rank = meta.map((x) => order.indexOf(x.type));
    assert.ok(rank.every((v, i) => v >= 0 && (i === 0 || v >= rank[i - 1]!)), `order: ${meta.map((x) => x.type.toString(16))}`);
    assert.ok(meta.some((x) => x.type === ItemType.CREDS) && meta.some((x) => x.type === ItemType.PIDS), 'creds and pids are implicit');
    const names = meta.filter((x) => x.type === ItemType.OWNED_NAME).map((x) => [x.payload.readBigUInt64LE(0), x.payload.toString('latin1', 8, x.size - 16 - 1)]);
    assert.deepEqual(names, [[NameFlags.PRIMARY, 'org.example.One'], [NameFlags.PRIMARY, 'org.example.Two']], 'queued names are not reported');
    assert.deepEqual(meta.slice(-2).map((x) => x.type), [ItemType.CONN_DESCRIPTION, ItemType.TIMESTAMP]);
    // size = ALIGN8(message) + every metadata item, 8-aligned except the last.
    const msgEnd = 64 + 32;
    const total = meta.reduce((n, x, i) => n + (i === meta.length - 1 ? x.size : ALIGN8(x.size)), 0);
    assert.equal(m.size, BigInt(msgEnd + total));
    assert.equal(m.items[0]!.payload.readBigUInt64LE(8), BigInt(ALIGN8(msgEnd + total)));
  });

  it('a sender that holds no names and has no description leaves nothing for NAMES|CONN_DESCRIPTION', async () => {
    const r = await tb.conn({ attachRecv: Attach.NAMES | Attach.CONN_DESCRIPTION });
    await expectOk(a.send({ dst: r.id, payload: [Buffer.from('abc')] }));
    const m = await r.mustRecv();
    assert.equal(m.size, 96n);
    assert.equal(m.items.length, 1);
  });
});

describe('bus RECV', () => {
  let tb: TestBus;
  let a: TestClient;
  let b: TestClient;
  beforeEach(async () => {
    ({ tb, a, b } = await senderAndReceiver());
  });

  const POOL = 16n * 1024n * 1024n;

  it('empty queue: EAGAIN, with msg = {pool size, 0} and dropped_msgs written back', async () => {
    const r = await b.recv();
    expectErrno(r.errno, 'EAGAIN', 'empty');
    assert.deepEqual(
      [r.out.readBigUInt64LE(Off.recv.msg_offset), r.out.readBigUInt64LE(Off.recv.msg_msg_size), r.dropped, r.returnFlags],
      [POOL, 0n, 0n, 0n]);
  });

  it('delivers in FIFO order regardless of priority', async () => {
    for (const [cookie, priority] of [[1n, 3n], [2n, -5n], [3n, 0n]] as const) await expectOk(a.send({ dst: b.id, cookie, priority: prio(priority) }));
    assert.deepEqual((await recvAll(b)).map((m) => [m.cookie, m.priority]), [[1n, 3n], [2n, -5n], [3n, 0n]]);
  });

  it('PEEK returns the next message and leaves it queued; RECV then returns the same slice', async () => {
    await expectOk(a.send({ dst: b.id, cookie: 10n, payload: [Buffer.from('peek me')] }));
    await expectOk(a.send({ dst: b.id, cookie: 11n }));
    const p1 = await b.recv(RecvFlags.PEEK);
    const p2 = await b.recv(RecvFlags.PEEK);
    assert.equal(p1.msg!.cookie, 10n);
    assert.equal(p2.msg!.offset, p1.msg!.offset, 'peeking again gives the same offset');
    const r = await b.recv();
    assert.equal(r.msg!.offset, p1.msg!.offset, 'RECV after PEEK: same offset');
    assert.equal(r.msg!.sliceSize, p1.msg!.sliceSize);
    assert.deepEqual(r.msg!.data.map((d) => d.toString()), ['peek me']);
    await expectOk(b.free(BigInt(r.msg!.offset)));
    assert.equal((await b.mustRecv()).cookie, 11n);
    expectErrno((await b.recv(RecvFlags.PEEK)).errno, 'EAGAIN', 'peek on empty');
  });

  it('DROP frees the next message without returning it', async () => {
    await expectOk(a.send({ dst: b.id, cookie: 20n }));
    await expectOk(a.send({ dst: b.id, cookie: 21n }));
    const d = await b.recv(RecvFlags.DROP);
    assert.equal(d.errno, 0);
    assert.deepEqual([d.out.readBigUInt64LE(Off.recv.msg_offset), d.out.readBigUInt64LE(Off.recv.msg_msg_size)], [POOL, 0n]);
    assert.equal((await b.mustRecv()).cookie, 21n);
    // PEEK|DROP drops.
    await expectOk(a.send({ dst: b.id, cookie: 22n }));
    assert.equal((await b.recv(RecvFlags.PEEK | RecvFlags.DROP)).errno, 0);
    expectErrno((await b.recv()).errno, 'EAGAIN', 'dropped');
    expectErrno((await b.recv(RecvFlags.DROP)).errno, 'EAGAIN', 'drop on empty');
  });

  it('DROP of a method call tells the caller: REPLY_DEAD', async () => {
    await expectOk(a.send({ dst: b.id, cookie: 30n, flags: MsgFlags.EXPECT_REPLY, timeoutNs: inFuture(5000) }));
    await expectOk(b.recv(RecvFlags.DROP));
    const dead = await a.mustRecv();
    assert.deepEqual([dead.items[0]!.type, dead.dstId, dead.srcId, dead.cookieReply], [ItemType.REPLY_DEAD, a.id, 0n, 30n]);
    expectErrno(await sendRaw(b, rawMsg({ dst: a.id, timeout: 30n })), 'EBADSLT', 'the call is gone');
  });

  it('USE_PRIORITY takes the lowest priority value first (FIFO among equals) if it is <= the limit, else EAGAIN', async () => {
    // test-message.c kdbus_test_message_prio
    const prios = [25n, -600n, 10n, -35n, -100n, 20n, -15n, -800n, -150n, 10n, -800n, -10n];
    let cookie = 0n;
    for (const p of prios) await expectOk(a.send({ dst: b.id, cookie: ++cookie, priority: prio(p) }));
    const take = async (limit: bigint) => {
      const r = await b.recv(RecvFlags.USE_PRIORITY, limit);
      if (r.errno) return name(r.errno);
      await expectOk(b.free(BigInt(r.msg!.offset)));
      return [r.msg!.priority, r.msg!.cookie];
    };
    assert.deepEqual(await take(-200n), [-800n, 8n]);
    assert.deepEqual(await take(-100n), [-800n, 11n]);
    assert.deepEqual(await take(-400n), [-600n, 2n]);
    assert.equal(await take(-400n), 'EAGAIN');
    assert.deepEqual(await take(10n), [-150n, 9n]);
    assert.deepEqual(await take(10n), [-100n, 5n]);
    // Plain RECV ignores priorities: the oldest remaining message.
    assert.deepEqual((await b.mustRecv()).cookie, 1n);
  });

  it('DROP|USE_PRIORITY is EINVAL, even on an empty queue, and reports nothing', async () => {
    expectErrno((await b.recv(RecvFlags.DROP | RecvFlags.USE_PRIORITY)).errno, 'EINVAL', 'empty');
    await expectOk(a.send({ dst: b.id }));
    const r = await b.recv(RecvFlags.DROP | RecvFlags.USE_PRIORITY, 100n);
    expectErrno(r.errno, 'EINVAL', 'queued');
    expectErrno((await b.recv(RecvFlags.PEEK | 8n)).errno, 'EINVAL', 'unknown flag');
    await b.mustRecv();
  });

  it('lost messages: dropped_msgs counts them once, with DROPPED_MSGS in return_flags, on EAGAIN too', async () => {
    // A 2-page pool leaves a sending user (4096 / 2) / 3 = 1365 bytes of queue.
    const small = await tb.conn({ poolSize: 8192n, attachRecv: 0n });
    await expectOk(small.matchAllBroadcasts());
    const big = Buffer.alloc(2000, 1);
    await expectOk(a.send({ payload: [big], bloom: { data: Buffer.alloc(BLOOM) } }));
    await expectOk(a.send({ payload: [big], bloom: { data: Buffer.alloc(BLOOM) } }));
    assert.equal(small.handle.poll() & 1, 1, 'lost messages make the connection readable');
    let r = await small.recv();
    assert.deepEqual([name(r.errno), r.dropped, r.returnFlags], ['EAGAIN', 2n, RecvReturn.DROPPED_MSGS]);
    r = await small.recv();
    assert.deepEqual([name(r.errno), r.dropped, r.returnFlags], ['EAGAIN', 0n, 0n], 'reset by the RECV that reported it');
    // Reported with the next message when there is one.
    await expectOk(a.send({ payload: [big], bloom: { data: Buffer.alloc(BLOOM) } }));
    await expectOk(a.send({ payload: [Buffer.from('fits')], bloom: { data: Buffer.alloc(BLOOM) }, cookie: 0x99n }));
    r = await small.recv();
    assert.deepEqual([r.errno, r.msg!.cookie, r.dropped, r.returnFlags], [0, 0x99n, 1n, RecvReturn.DROPPED_MSGS]);
    assert.equal(r.msg!.returnFlags, 0n);
  });

  it('fds that cannot be installed are -1 with INCOMPLETE_FDS in msg.return_flags', async () => {
    const c = await tb.conn({ attachRecv: 0n });
    c.fds.failInstall = true;
    const msg = rawMsg({ dst: c.id }, all(fdsItem([a.fds.add(new FakeFile('other')), a.fds.add(new FakeFile('other'))]), memfdItem(a.fds.add(memfd('abcdefgh')), 8)));
    assert.equal(await sendRaw(a, msg), 0);
    let r = await c.recv(RecvFlags.PEEK);
    assert.equal(r.msg!.returnFlags, RecvReturn.INCOMPLETE_FDS);
    assert.equal(r.out.readBigUInt64LE(Off.recv.msg_return_flags), RecvReturn.INCOMPLETE_FDS);
    assert.equal(r.returnFlags, 0n, 'cmd return_flags are about lost messages only');
    const fds = r.msg!.items.find((x) => x.type === ItemType.FDS)!;
    assert.deepEqual([fds.payload.readInt32LE(0), fds.payload.readInt32LE(4)], [-1, -1]);
    assert.equal(r.msg!.items.find((x) => x.type === ItemType.PAYLOAD_MEMFD)!.payload.readInt32LE(16), -1);
    // The final kdbus installs on PEEK as well; a later RECV installs again.
    c.fds.failInstall = false;
    r = await c.recv();
    assert.equal(r.msg!.returnFlags, 0n);
    const again = r.msg!.items.find((x) => x.type === ItemType.FDS)!;
    assert.ok(c.fds.installed.has(again.payload.readInt32LE(0)) && c.fds.installed.has(again.payload.readInt32LE(4)));
    assert.equal(c.fds.installed.size, 3);
  });

  it('monitors get a copy of every unicast, with fds even without ACCEPT_FD, and fds are installed into them', async () => {
    const noFd = await tb.conn({ flags: 0n });
    const mon = await tb.conn({ flags: HelloFlags.MONITOR, attachRecv: 0n });
    const f = new FakeFile('other');
    assert.equal(await sendRaw(a, rawMsg({ dst: b.id, cookie: 61n }, fdsItem([a.fds.add(f)]))), 0);
    const copy = await mon.mustRecv();
    assert.deepEqual([copy.cookie, copy.dstId, copy.srcId], [61n, b.id, a.id]);
    assert.equal(mon.fds.installed.get(copy.items.find((x) => x.type === ItemType.FDS)!.payload.readInt32LE(0)), f);
    assert.equal((await b.mustRecv()).cookie, 61n);
    // Refused deliveries are still seen by monitors, which see the traffic before the receiver.
    expectErrno(await sendRaw(a, rawMsg({ dst: noFd.id, cookie: 62n }, fdsItem([a.fds.add(new FakeFile('other'))]))), 'ECOMM', 'refused');
    assert.equal((await mon.mustRecv()).cookie, 62n);
  });

  it('policy holders cannot RECV (EOPNOTSUPP); activators can', async () => {
    const holder = tb.client();
    await expectOk(holder.hello({ flags: HelloFlags.POLICY_HOLDER, items: (w) => w.string(ItemType.NAME, 'org.example.Held') }));
    expectErrno((await holder.recv()).errno, 'EOPNOTSUPP', 'holder');
    const act = await tb.conn(activatorHello('org.example.Act'));
    expectErrno((await act.recv()).errno, 'EAGAIN', 'activator');
  });

  it('a message outlives its sender', async () => {
    await expectOk(a.send({ dst: b.id, cookie: 42n, payload: [Buffer.from('bye')] }));
    a.close();
    const m = await b.mustRecv();
    assert.deepEqual([m.cookie, m.srcId, m.data.map(String)], [42n, a.id, ['bye']]);
  });

  it('the slice struct sizes the client sees match the ABI', () => {
    assert.equal(StructSize.cmd_recv, 64);
  });
});

/** The four capability sets of a task as a CAPS item carries them: u32 words, bits above last_cap cleared. */
function capsWords(pid: number | 'all' | 'none'): number[] {
  const lastCap = Number(fs.readFileSync('/proc/sys/kernel/cap_last_cap', 'latin1'));
  let sets: bigint[];
  if (pid === 'all') sets = [0n, ~0n, ~0n, ~0n];
  else if (pid === 'none') sets = [0n, 0n, 0n, 0n];
  else {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'latin1');
    sets = ['CapInh', 'CapPrm', 'CapEff', 'CapBnd'].map((k) => BigInt(`0x${new RegExp(`\n${k}:\t([0-9a-f]+)`).exec(status)![1]}`));
  }
  const mask = (1n << BigInt(lastCap + 1)) - 1n;
  return [lastCap, ...sets.flatMap((v) => [Number(v & mask & 0xffff_ffffn), Number(((v & mask) >> 32n) & 0xffff_ffffn)])];
}

function metaItem(m: ReceivedMessage, type: number): Buffer | undefined {
  return m.items.find((x) => x.type === type)?.payload;
}

const u64s = (b: Buffer | undefined): number[] => Array.from({ length: (b?.length ?? 0) / 8 }, (_, i) => Number(b!.readBigUInt64LE(8 * i)));
const u32s = (b: Buffer | undefined): number[] => Array.from({ length: (b?.length ?? 0) / 4 }, (_, i) => b!.readUInt32LE(4 * i));

describe('bus metadata in other namespaces (kdbus_meta_export, test-metadata-ns.c)', function () {
  this.timeout(10000);
  const nobody = credsOf(65534, 65534);
  const stops: Array<() => void> = [];
  before(function () {
    requireOrSkip(this, namespacesUsable(), 'user and pid namespaces (unshare, with full id maps)');
  });
  afterEach(() => {
    for (const stop of stops.splice(0)) stop();
  });

  async function process_(namespaced: boolean) {
    const p = await standIn(namespaced);
    stops.push(p.stop);
    return p;
  }

  it('a receiver in namespaces of its own gets ids through its maps, pids of its pid namespace, and no /proc items it cannot see', async () => {
    const tb = await newBus();
    const ns = await process_(true);
    const sender = await tb.conn({ attachSend: Attach.CAPS });
    const inside = await tb.conn({ attachRecv: Attach.ALL }, { pid: ns.pid, creds: nobody, privileged: false });
    const native = await tb.conn({ attachRecv: Attach.ALL });
    await expectOk(sender.send({ dst: inside.id, payload: [Buffer.from('in')] }));
    await expectOk(sender.send({ dst: native.id, payload: [Buffer.from('out')] }));
    const m = await inside.mustRecv();
    // uid and gid 0 have no name in a namespace that maps only 65534: overflowuid/gid.
    assert.deepEqual(u64s(metaItem(m, ItemType.CREDS)), Array(8).fill(65534));
    // The sender is outside the receiver's pid namespace: every pid reads 0.
    assert.deepEqual(u64s(metaItem(m, ItemType.PIDS)), [0, 0, 0]);
    // The sender's namespace is an ancestor of the receiver's: its sets as they are.
    assert.deepEqual(u32s(metaItem(m, ItemType.CAPS)), capsWords(process.pid));
    assert.equal(metaItem(m, ItemType.PID_COMM), undefined, '/proc items need the sender visible or granting them');
    const n = await native.mustRecv();
    assert.deepEqual(u64s(metaItem(n, ItemType.CREDS)), Array(8).fill(0));
    assert.deepEqual(u64s(metaItem(n, ItemType.PIDS)), [process.pid, process.pid, process.ppid]);
    assert.ok(metaItem(n, ItemType.PID_COMM), 'a receiver that can see the sender gets /proc items');
  });

  it('a sender in namespaces of its own: others see its outer ids and pids and no capabilities, its own namespaces see inner ones', async () => {
    const tb = await newBus();
    const ns = await process_(true);
    assert.notDeepEqual(capsWords(ns.pid).slice(1), capsWords('none').slice(1), 'the stand-in holds capabilities in its namespace');
    const sender = await tb.conn({ attachSend: Attach.ALL }, { pid: ns.pid, creds: nobody, privileged: false });
    const native = await tb.conn({ attachRecv: Attach.ALL }, { creds: nobody, privileged: false });
    const inside = await tb.conn({ attachRecv: Attach.ALL }, { pid: ns.pid, creds: nobody, privileged: false });
    await expectOk(sender.send({ dst: native.id, payload: [Buffer.from('out')] }));
    await expectOk(sender.send({ dst: inside.id, payload: [Buffer.from('in')] }));
    const n = await native.mustRecv();
    assert.deepEqual(u64s(metaItem(n, ItemType.CREDS)), Array(8).fill(65534));
    assert.deepEqual(u64s(metaItem(n, ItemType.PIDS)), [ns.pid, ns.pid, ns.parent]);
    assert.deepEqual(u32s(metaItem(n, ItemType.CAPS)), capsWords('none'), 'capabilities of a child namespace mean nothing outside it');
    const m = await inside.mustRecv();
    assert.deepEqual(u64s(metaItem(m, ItemType.CREDS)), Array(8).fill(0));
    // pid 1 of its namespace; its parent (unshare) is outside it.
    assert.deepEqual(u64s(metaItem(m, ItemType.PIDS)), [1, 1, 0]);
    assert.deepEqual(u32s(metaItem(m, ItemType.CAPS)), capsWords(ns.pid));
  });

  it('the creator of a receiver\'s user namespace has every capability in it', async () => {
    const tb = await newBus();
    const ns = await process_(true);
    const creator = await process_(false);
    assert.deepEqual(capsWords(creator.pid).slice(1, 7), [0, 0, 0, 0, 0, 0], 'uid 65534 holds nothing itself');
    const sender = await tb.conn({ attachSend: Attach.ALL }, { pid: creator.pid, creds: nobody, privileged: false });
    const inside = await tb.conn({ attachRecv: Attach.ALL }, { pid: ns.pid, creds: nobody, privileged: false });
    await expectOk(sender.send({ dst: inside.id, payload: [Buffer.from('x')] }));
    assert.deepEqual(u32s(metaItem(await inside.mustRecv(), ItemType.CAPS)), capsWords('all'));
  });
});
