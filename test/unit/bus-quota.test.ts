/**
 * Receive-queue quotas through the bus (kdbus-abi.md §3.8, kdbus_conn_quota_inc): per
 * sending user at most 256 queued messages and 16 queued fds, a third of the unused half
 * of the pool, EXFULL when the pool itself is full, kernel notifications on a quota of
 * their own, and lost-message accounting for what could not be queued. Modelled on the
 * message-quota parts of test-message.c and the fd limits of test-fd.c.
 */
import assert from 'node:assert/strict';
import { Errno } from '../../src/abi/errno';
import { HelloFlags, ItemType, KDBUS_MATCH_ID_ANY, MsgFlags, NameFlags, PolicyAccess, PolicyAccessType, RecvReturn } from '../../src/abi/constants';
import type { ItemWriter } from '../../src/abi/items';
import { FakeFile, TestBus, type TestClient, credsOf, expectOk, memfd } from '../helpers/kdbus-client';
import { Domain } from '../../src/bus/domain';
import { HeldBudget } from '../../src/os/held-budget';

const MiB = 1024 * 1024;
const MAX_MSGS = 256;
const BLOOM = 64;

const buses: TestBus[] = [];
async function newBus(): Promise<TestBus> {
  const tb = await TestBus.create({ bloomSize: BLOOM });
  buses.push(tb);
  return tb;
}
afterEach(() => {
  for (const tb of buses.splice(0)) tb.destroy();
});

function name(errno: number): string {
  if (errno === 0) return 'OK';
  for (const [k, v] of Object.entries(Errno)) if (v === errno) return k;
  return String(errno);
}

/** kdbus_fill_conn_queue(): bare messages until one fails; returns how many went. */
async function fill(from: TestClient, dst: bigint, max: number, o: Partial<Parameters<TestClient['send']>[0]> = {}): Promise<{ sent: number; errno: string }> {
  for (let i = 0; i < max; i++) {
    const r = await from.send({ dst, ...o });
    if (r.errno) return { sent: i, errno: name(r.errno) };
  }
  return { sent: max, errno: 'OK' };
}

/** RECVs (and FREEs) everything; returns the count and what the first RECV reported lost. */
async function drainCount(c: TestClient): Promise<{ n: number; dropped: bigint; srcIds: bigint[] }> {
  let n = 0;
  let dropped = 0n;
  const srcIds: bigint[] = [];
  for (;;) {
    const r = await c.recv();
    if (n === 0) dropped = r.dropped;
    if (r.errno) return { n, dropped, srcIds };
    n++;
    srcIds.push(r.msg!.srcId);
    await expectOk(c.free(BigInt(r.msg!.offset)));
  }
}

/** Bytes of message payload that make a slice of exactly `slice` bytes for a receiver without metadata. */
const payloadFor = (slice: number) => [Buffer.alloc(slice - 64 - 32, 0x42)];

/**
 * A policy holder that lets uid `owner` own `name` and everyone TALK to whoever holds it:
 * the way to let several users reach one receiver.
 */
async function openName(tb: TestBus, nm: string, owner: number): Promise<void> {
  const holder = tb.client();
  await expectOk(holder.hello({
    flags: HelloFlags.POLICY_HOLDER,
    items: (w: ItemWriter) => {
      w.string(ItemType.NAME, nm);
      w.itemU64(ItemType.POLICY_ACCESS, PolicyAccessType.USER, PolicyAccess.OWN, owner);
      w.itemU64(ItemType.POLICY_ACCESS, PolicyAccessType.WORLD, PolicyAccess.TALK, 0);
    },
  }));
}

const user = (uid: number) => ({ creds: credsOf(uid), privileged: false });

describe('bus quota: messages per user (test-message message_quota)', () => {
  let tb: TestBus;
  beforeEach(async () => {
    tb = await newBus();
  });

  it('256 queued messages per sending user, then ENOBUFS; receiving frees them', async () => {
    const a = await tb.conn({ attachRecv: 0n });
    const b = await tb.conn();
    assert.deepEqual(await fill(b, a.id, MAX_MSGS), { sent: 256, errno: 'OK' });
    assert.equal(name((await b.send({ dst: a.id })).errno), 'ENOBUFS');
    const got = await drainCount(a);
    assert.deepEqual([got.n, got.dropped], [256, 0n], 'refused unicasts are the sender\'s problem, not lost');
    assert.deepEqual(await fill(b, a.id, MAX_MSGS + 1), { sent: 256, errno: 'ENOBUFS' });
    assert.equal(name((await b.send({ dst: a.id })).errno), 'ENOBUFS');
  });

  it('all connections of a user share the count; other users and the kernel have their own', async () => {
    await openName(tb, 'org.example.R', 1000);
    const r = await tb.conn({ attachRecv: 0n }, user(1000));
    await expectOk(r.acquire('org.example.R'));
    await r.addMatch(1n, (w) => w.itemU64(ItemType.ID_ADD, KDBUS_MATCH_ID_ANY, 0n));
    const a1 = await tb.conn();
    const a2 = await tb.conn();
    const u = await tb.conn({}, user(1001));
    await drainCount(r);
    assert.deepEqual(await fill(a1, r.id, 200), { sent: 200, errno: 'OK' });
    assert.deepEqual(await fill(a2, r.id, 100), { sent: 56, errno: 'ENOBUFS' });
    assert.deepEqual(await fill(u, r.id, 10), { sent: 10, errno: 'OK' }, 'uid 1001 is another user');
    const late = await tb.conn();
    assert.equal(name((await late.send({ dst: r.id })).errno), 'ENOBUFS', 'a new connection of the same user');
    const got = await drainCount(r);
    assert.deepEqual([got.n, got.dropped], [256 + 10 + 1, 0n], 'the ID_ADD notification found room');
  });

  it('the kernel\'s notifications have a quota of their own: 256 queued, then they are lost (notify_kernel_quota)', async () => {
    const reader = await tb.conn({ attachRecv: 0n });
    let conn = await tb.conn();
    await expectOk(reader.addMatch(1n, (w) => w.itemU64(ItemType.ID_ADD, KDBUS_MATCH_ID_ANY, 0n)));
    await expectOk(reader.addMatch(2n, (w) => w.itemU64(ItemType.ID_REMOVE, KDBUS_MATCH_ID_ANY, 0n)));
    for (let i = 0; i < MAX_MSGS / 2; i++) (await tb.conn({ attachSend: 0n })).close();
    // The reader's queue is full of notifications, but users still have room.
    await expectOk(conn.send({ dst: reader.id, cookie: 0xdeadbeefn }));
    conn.close();
    conn = await tb.conn();
    conn.close();
    let r = await reader.recv();
    assert.equal(r.errno, 0);
    assert.equal(r.returnFlags & RecvReturn.DROPPED_MSGS, RecvReturn.DROPPED_MSGS);
    assert.equal(r.dropped, 3n, 'ID_REMOVE, ID_ADD, ID_REMOVE');
    await expectOk(reader.free(BigInt(r.msg!.offset)));
    for (let i = 0; i < MAX_MSGS - 1; i++) {
      r = await reader.recv();
      assert.equal(r.errno, 0);
      assert.equal(r.returnFlags, 0n);
      assert.equal(r.msg!.srcId, 0n);
      await expectOk(reader.free(BigInt(r.msg!.offset)));
    }
    r = await reader.recv();
    assert.deepEqual([r.errno, r.msg!.cookie, r.msg!.srcId !== 0n], [0, 0xdeadbeefn, true]);
    await expectOk(reader.free(BigInt(r.msg!.offset)));
    assert.equal(name((await reader.recv()).errno), 'EAGAIN');
  });

  it('REPLY_TIMEOUT/REPLY_DEAD that find no room are dropped without a trace', async () => {
    const caller = await tb.conn({ attachRecv: 0n });
    const d = await tb.conn();
    await expectOk(caller.addMatch(1n, (w) => w.itemU64(ItemType.ID_ADD, KDBUS_MATCH_ID_ANY, 0n)));
    await expectOk(caller.addMatch(2n, (w) => w.itemU64(ItemType.ID_REMOVE, KDBUS_MATCH_ID_ANY, 0n)));
    for (let i = 0; i < MAX_MSGS / 2; i++) (await tb.conn({ attachSend: 0n })).close();
    await expectOk(caller.send({ dst: d.id, cookie: 9n, flags: MsgFlags.EXPECT_REPLY, timeoutNs: process.hrtime.bigint() + 5_000_000_000n }));
    d.close();
    const got = await drainCount(caller);
    assert.deepEqual([got.n, got.dropped], [256, 1n], 'the ID_REMOVE was lost, the two REPLY_DEADs just vanished');
  });
});

describe('bus quota: memory (test-message pool_quota, kdbus-abi.md §3.8)', () => {
  let tb: TestBus;
  beforeEach(async () => {
    tb = await newBus();
  });

  /** The doc's rule: a user may queue up to (pool/2 - accounted + own) / 3 bytes. */
  function admits(pool: number, accounted: number, own: number, size: number): boolean {
    const half = Math.floor(pool / 2);
    if (half < accounted) return false;
    const allowed = Math.floor((half - accounted + own) / 3);
    return allowed >= own && allowed - own >= size;
  }

  it('one 2 MiB message fits in a third of half a 16 MiB pool, a second does not; small ones still do', async () => {
    const a = await tb.conn();
    const b = await tb.conn();
    const c = await tb.conn({ attachRecv: 0n });
    const payload = Buffer.alloc(2 * MiB);
    const size = 64 + 32 + 2 * MiB;
    assert.ok(admits(16 * MiB, 0, 0, size) && !admits(16 * MiB, size, size, size), 'the rule, worked out');
    await expectOk(a.send({ dst: c.id, cookie: 1n, payload: [payload] }));
    assert.equal(name((await a.send({ dst: c.id, cookie: 2n, payload: [payload] })).errno), 'ENOBUFS');
    await expectOk(b.send({ dst: c.id, cookie: 3n }));
    const got = await drainCount(c);
    assert.deepEqual(got.srcIds, [a.id, b.id]);
    await expectOk(a.send({ dst: c.id, cookie: 4n, payload: [payload] }));
  });

  it('each new user gets a third of what is left, so every user finds room and half the pool stays free', async () => {
    const POOL = 64 * 1024;
    const SLICE = 4096;
    await openName(tb, 'org.example.R', 1000);
    const r = await tb.conn({ attachRecv: 0n, poolSize: BigInt(POOL) }, user(1000));
    await expectOk(r.acquire('org.example.R'));
    // Expected counts per user, in order, from the rule.
    const expected: number[] = [];
    let accounted = 0;
    for (let u = 0; u < 8; u++) {
      let own = 0;
      while (admits(POOL, accounted, own, SLICE)) {
        own += SLICE;
        accounted += SLICE;
      }
      expected.push(own / SLICE);
    }
    assert.deepEqual(expected.slice(0, 3), [2, 2, 1], 'first users get the most');
    const got: number[] = [];
    for (let u = 0; u < 8; u++) {
      const s = await tb.conn({}, user(2000 + u));
      const res = await fill(s, r.id, 100, { payload: payloadFor(SLICE) });
      assert.equal(res.errno, 'ENOBUFS');
      got.push(res.sent);
    }
    assert.deepEqual(got, expected);
    assert.deepEqual(expected.slice(4), [0, 0, 0, 0], 'later users find less than 4 KiB');
    assert.equal(r.conn.pool.accountedSize, 6 * SLICE);
    assert.ok(admits(POOL, 6 * SLICE, 0, 104), 'but a small message still fits');
    const late = await tb.conn({}, user(3000));
    await expectOk(late.send({ dst: r.id, payload: [Buffer.alloc(8)] }));
    // RECV gives the bytes back to the sender's user.
    await drainCount(r);
    const first = await tb.conn({}, user(2000));
    assert.equal((await fill(first, r.id, 100, { payload: payloadFor(SLICE) })).sent, 2);
  });

  it('EXFULL when the pool has no room (received but unfreed slices are not accounted, but take space)', async () => {
    const a = await tb.conn();
    const r = await tb.conn({ attachRecv: 0n, poolSize: 64n * 1024n });
    await expectOk(r.matchAllBroadcasts());
    const kept: number[] = [];
    for (let i = 0; i < 16; i++) {
      await expectOk(a.send({ dst: r.id, payload: payloadFor(4096) }));
      const m = await r.recv();
      kept.push(m.msg!.offset);
    }
    assert.equal(r.conn.pool.accountedSize, 0);
    assert.equal(name((await a.send({ dst: r.id, payload: payloadFor(4096) })).errno), 'EXFULL');
    assert.equal(name((await a.send({ dst: r.id, flags: MsgFlags.EXPECT_REPLY, timeoutNs: process.hrtime.bigint() + 1_000_000_000n, payload: payloadFor(4096) })).errno), 'EXFULL');
    assert.equal(a.conn.requestCount, 0);
    await expectOk(a.send({ payload: payloadFor(4096), bloom: { data: Buffer.alloc(BLOOM) } }));
    const lost = await r.recv();
    assert.deepEqual([name(lost.errno), lost.dropped], ['EAGAIN', 1n], 'a broadcast is lost on the receiver');
    await expectOk(r.free(BigInt(kept[0]!)));
    await expectOk(a.send({ dst: r.id, payload: payloadFor(4096) }));
  });
});

describe('bus quota: fds (test-fd kdbus_send_multiple_fds)', () => {
  let tb: TestBus;
  let a: TestClient;
  let b: TestClient;
  beforeEach(async () => {
    tb = await newBus();
    a = await tb.conn();
    b = await tb.conn({ attachRecv: 0n });
  });

  const files = (c: TestClient, n: number) => Array.from({ length: n }, () => c.fds.add(new FakeFile('other')));
  const memfds = (c: TestClient, n: number) => Array.from({ length: n }, (_, i) => ({ fd: c.fds.add(memfd(`memfd-${i}`)) }));

  it('16 fds in flight per user and receiver: EMFILE beyond, memfds do not count, RECV gives them back', async () => {
    assert.equal(name((await a.send({ dst: b.id, fds: files(a, 17) })).errno), 'EMFILE', '17 in one message');
    await expectOk(a.send({ dst: b.id, fds: files(a, 16), memfds: memfds(a, 16) }));
    assert.equal(name((await a.send({ dst: b.id, fds: files(a, 1) })).errno), 'EMFILE', 'one more while 16 are queued');
    await expectOk(a.send({ dst: b.id, memfds: memfds(a, 16) }));
    const other = await tb.conn({}, user(1000));
    await expectOk(b.send({ dst: other.id, cookie: 1n }));
    const m1 = await b.mustRecv();
    const fdsItem = m1.items.find((x) => x.type === ItemType.FDS)!;
    assert.equal(fdsItem.payload.length, 16 * 4);
    assert.equal(m1.items.filter((x) => x.type === ItemType.PAYLOAD_MEMFD).length, 16);
    await expectOk(a.send({ dst: b.id, fds: files(a, 16) }));
    const rest = await drainCount(b);
    assert.equal(rest.n, 2);
  });

  it('a refused message leaves nothing behind', async () => {
    await expectOk(a.send({ dst: b.id, fds: files(a, 10) }));
    assert.equal(name((await a.send({ dst: b.id, fds: files(a, 7) })).errno), 'EMFILE');
    await expectOk(a.send({ dst: b.id, fds: files(a, 6) }));
    assert.equal((await drainCount(b)).n, 2);
  });
});

describe('bus quota: activators (test-message activator_quota)', () => {
  it('messages parked on an activator count against the sender; what the implementer cannot take is lost', async () => {
    const tb = await newBus();
    const NAME = 'foo.test.activator';
    const activator = await tb.conn({ flags: HelloFlags.ACTIVATOR, attachRecv: 0n, items: (w) => w.string(ItemType.NAME, NAME) });
    const conn = await tb.conn({ attachRecv: 0n });
    const sender = await tb.conn();

    assert.deepEqual(await fill(sender, 0n, MAX_MSGS + 1, { name: NAME }), { sent: 256, errno: 'ENOBUFS' });
    assert.equal(name((await conn.send({ dst: activator.id })).errno), 'ENXIO');
    assert.equal(name((await conn.send({ name: NAME })).errno), 'ENOBUFS', 'conn is the same user as sender');
    await expectOk(sender.send({ bloom: { data: Buffer.alloc(BLOOM) } }));
    let r = await activator.recv();
    assert.deepEqual([r.errno, r.dropped], [0, 0n], 'activators take no broadcasts, and lose none');
    await expectOk(activator.free(BigInt(r.msg!.offset)));

    // Stage 1: the implementer has room for one more message from that user.
    assert.deepEqual(await fill(sender, conn.id, MAX_MSGS), { sent: 256, errno: 'OK' });
    r = await conn.recv();
    assert.deepEqual([r.errno, r.dropped], [0, 0n]);
    await expectOk(conn.free(BigInt(r.msg!.offset)));
    await expectOk(conn.acquire(NAME, NameFlags.REPLACE_EXISTING));
    r = await conn.recv();
    assert.deepEqual([r.errno, r.dropped], [0, 254n], '255 parked messages, room for 1');
    await expectOk(conn.free(BigInt(r.msg!.offset)));
    assert.equal(name((await activator.recv()).errno), 'EAGAIN', 'nothing stays behind on the activator');
    await expectOk(conn.release(NAME));
    const back = await drainCount(activator);
    assert.deepEqual([back.n, back.srcIds[0]], [1, sender.id], 'the one moved message goes back');

    // Stage 2: the implementer's queue is full for that user: every parked message is lost.
    await drainCount(conn);
    assert.deepEqual(await fill(sender, 0n, 10, { name: NAME }), { sent: 10, errno: 'OK' });
    assert.deepEqual(await fill(sender, conn.id, MAX_MSGS + 1), { sent: 256, errno: 'ENOBUFS' });
    await expectOk(conn.acquire(NAME, NameFlags.REPLACE_EXISTING));
    r = await conn.recv();
    assert.deepEqual([r.errno, r.dropped], [0, 10n]);
  });
});

describe("bus: the daemon's memory in a user's pools", () => {
  it('refuses delivery into a pool whose user holds its share of slices, and counts FREE and disconnect', async () => {
    const domain = new Domain();
    domain.poolBytes = new HeldBudget('bytes of pool slices in use', { perUser: 64 * 1024, total: 1024 * 1024 });
    const tb = await TestBus.create({ domain });
    try {
      const opener = { creds: credsOf(1000), privileged: false };
      const receiver = await tb.conn({}, opener);
      const sender = await tb.conn({}, opener);
      const afterHello = domain.poolBytes.held(1000);
      // Received and never freed: each keeps its slice.
      const offsets: number[] = [];
      let refused = '';
      for (let i = 0; i < 32 && !refused; i++) {
        const r = await sender.send({ dst: receiver.id, payload: [Buffer.alloc(8192)] });
        if (r.errno) refused = name(r.errno);
        else offsets.push((await receiver.recv()).msg!.offset);
      }
      assert.equal(refused, 'EXFULL', 'the sender sees a full pool');
      assert.ok(offsets.length >= 6 && offsets.length < 8, `${offsets.length} messages of 8 KiB went into a 64 KiB share (${afterHello} bytes of it after HELLO)`);
      await expectOk(receiver.free(BigInt(offsets[0]!)));
      await expectOk(sender.send({ dst: receiver.id, payload: [Buffer.alloc(8192)] }));
      receiver.close();
      sender.close();
      assert.equal(domain.poolBytes.held(1000), 0);
    } finally {
      tb.destroy();
    }
  });
});

describe("bus: the daemon's descriptors that files in messages hold", () => {
  it("refuses with EMFILE the message whose files would take its sender's user past its share, until a receiver takes them", async () => {
    const domain = new Domain();
    domain.messageFds = new HeldBudget('descriptors in queued messages', { perUser: 20, total: 100 });
    const tb = await TestBus.create({ domain });
    try {
      const a = await tb.conn();
      const b = await tb.conn({ attachRecv: 0n });
      const c = await tb.conn({ attachRecv: 0n });
      const files = (n: number) => Array.from({ length: n }, () => a.fds.add(new FakeFile('other')));
      const memfds = (n: number) => Array.from({ length: n }, (_, i) => ({ fd: a.fds.add(memfd(`memfd-${i}`)) }));
      await expectOk(a.send({ dst: b.id, fds: files(8), memfds: memfds(8) }));
      assert.equal(name((await a.send({ dst: c.id, fds: files(5) })).errno), 'EMFILE', 'fds and memfds count, to any receiver');
      await expectOk(a.send({ dst: c.id, fds: files(4) }));
      assert.equal(domain.messageFds.held(process.getuid!()), 20);
      await b.mustRecv();
      assert.equal(domain.messageFds.held(process.getuid!()), 4, 'RECV gives them back');
      await expectOk(a.send({ dst: c.id, fds: files(12) }));
      assert.equal(domain.messageFds.held(process.getuid!()), 16);
      c.close();
      assert.equal(domain.messageFds.held(process.getuid!()), 0, 'a receiver that goes drops them');
    } finally {
      tb.destroy();
    }
  });
});

