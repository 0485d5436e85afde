/**
 * Well-known names through the bus: NAME_ACQUIRE / NAME_RELEASE results and return_flags,
 * the NAME_ADD / NAME_REMOVE / NAME_CHANGE notifications they cause (exact layout), the
 * owner queue, and activators: messages parked on the activator, handed to the implementer
 * with their reply trackers, and handed back. Modelled on test-names.c, test-chat.c and
 * test-activator.c; semantics from kdbus-abi.md §3.9, §3.16 and ipc/kdbus/names.c.
 */
import assert from 'node:assert/strict';
import { Errno } from '../../src/abi/errno';
import {
  ALIGN8, HelloFlags, ItemType, KDBUS_DST_ID_BROADCAST, KDBUS_PAYLOAD_KERNEL, ListFlags, MsgFlags, NameFlags, Off,
  PolicyAccess, PolicyAccessType, RecvFlags,
} from '../../src/abi/constants';
import type { ItemWriter } from '../../src/abi/items';
import { FakeFile, TestBus, type TestClient, type ReceivedMessage, credsOf, expectOk } from '../helpers/kdbus-client';

const { REPLACE_EXISTING, ALLOW_REPLACEMENT, QUEUE, IN_QUEUE, ACTIVATOR, PRIMARY, ACQUIRED } = NameFlags;

const buses: TestBus[] = [];
async function newBus(): Promise<TestBus> {
  const tb = await TestBus.create();
  buses.push(tb);
  return tb;
}
afterEach(() => {
  for (const tb of buses.splice(0)) tb.destroy();
});

const inFuture = (ms: number): bigint => process.hrtime.bigint() + BigInt(ms) * 1_000_000n;

function name(errno: number): string {
  if (errno === 0) return 'OK';
  for (const [k, v] of Object.entries(Errno)) if (v === errno) return k;
  return String(errno);
}

async function acquire(c: TestClient, nm: string, flags = 0n): Promise<{ errno: string; flags: bigint }> {
  const r = await c.acquire(nm, flags);
  return { errno: name(r.errno), flags: r.out.readBigUInt64LE(Off.cmd.return_flags) };
}

async function release(c: TestClient, nm: string): Promise<string> {
  return name((await c.release(nm)).errno);
}

async function drain(c: TestClient): Promise<ReceivedMessage[]> {
  const out: ReceivedMessage[] = [];
  for (;;) {
    const r = await c.recv();
    if (r.errno) return out;
    out.push(r.msg!);
    await expectOk(c.free(BigInt(r.msg!.offset)));
  }
}

/** A connection that hears every ID and name notification and wants no metadata. */
async function watcher(tb: TestBus): Promise<TestClient> {
  const w = await tb.conn({ attachRecv: 0n });
  await w.matchAllNotifications();
  return w;
}

interface NameNote {
  type: number;
  oldId: bigint;
  oldFlags: bigint;
  newId: bigint;
  newFlags: bigint;
  name: string;
}

function nameNote(m: ReceivedMessage): NameNote {
  const it = m.items[0]!;
  const p = it.payload;
  return {
    type: it.type,
    oldId: p.readBigUInt64LE(0), oldFlags: p.readBigUInt64LE(8),
    newId: p.readBigUInt64LE(16), newFlags: p.readBigUInt64LE(24),
    name: p.toString('latin1', 32, it.size - 16 - 1),
  };
}

const note = (type: number, oldId: bigint, oldFlags: bigint, newId: bigint, newFlags: bigint, nm: string): NameNote =>
  ({ type, oldId, oldFlags, newId, newFlags, name: nm });

async function names(c: TestClient, flags = ListFlags.NAMES | ListFlags.ACTIVATORS | ListFlags.QUEUED) {
  const l = await c.list(flags);
  assert.equal(l.errno, 0);
  await expectOk(c.free(l.offset));
  // kdbus lists in hash order: sort by id, then name.
  return l.records
    .filter((r) => r.name !== undefined)
    .map((r) => [r.id, r.name, r.nameFlags] as [bigint, string, bigint])
    .sort((x, y) => (x[0] === y[0] ? (x[1] < y[1] ? -1 : 1) : x[0] < y[0] ? -1 : 1));
}

const activatorHello = (nm: string, flags = HelloFlags.ACTIVATOR, policy?: (w: ItemWriter) => void) => ({
  flags,
  items: (w: ItemWriter) => {
    w.string(ItemType.NAME, nm);
    policy?.(w);
  },
});
const access = (type: PolicyAccessType, acc: PolicyAccess, id = 0) => (w: ItemWriter) => w.itemU64(ItemType.POLICY_ACCESS, type, acc, id);

describe('bus names: acquire and release (test-names.c, test-chat.c)', () => {
  let tb: TestBus;
  let a: TestClient;
  let b: TestClient;
  beforeEach(async () => {
    tb = await newBus();
    a = await tb.conn();
    b = await tb.conn();
  });

  it('a free name: PRIMARY|ACQUIRED; release; ESRCH for unknown or invalid names, EADDRINUSE for someone else\'s', async () => {
    assert.deepEqual(await acquire(b, 'foo.bar.xxx'), { errno: 'OK', flags: PRIMARY | ACQUIRED });
    for (const bad of ['.bla.blaz', 'foo', 'foo.bla.bl.*', 'foo..bar', 'foo.1bar', 'a'.repeat(254) + '.b']) {
      assert.equal((await acquire(a, bad)).errno, 'EINVAL', bad);
    }
    assert.deepEqual(await acquire(a, 'foo.bla.blaz'), { errno: 'OK', flags: PRIMARY | ACQUIRED });
    assert.deepEqual(await names(a), [[a.id, 'foo.bla.blaz', PRIMARY], [b.id, 'foo.bar.xxx', PRIMARY]]);
    assert.equal(await release(a, 'foo.bla.blaz'), 'OK');
    assert.deepEqual(await names(a), [[b.id, 'foo.bar.xxx', PRIMARY]]);
    assert.equal(await release(a, 'foo.bla.blaz'), 'ESRCH', 'released already');
    assert.equal(await release(a, 'foo.bar.xxx'), 'EADDRINUSE', 'b\'s name');
    for (const bad of ['.bla.blaz', 'foo', 'foo.bla.bl.*']) assert.equal(await release(a, bad), 'ESRCH', bad);
  });

  it('acquiring a name one already owns: 0 with PRIMARY but no ACQUIRED, saved flags replaced', async () => {
    await acquire(a, 'foo.bar.double');
    assert.deepEqual(await acquire(a, 'foo.bar.double'), { errno: 'OK', flags: PRIMARY });
    assert.deepEqual(await acquire(a, 'foo.bar.double', ALLOW_REPLACEMENT | QUEUE), { errno: 'OK', flags: PRIMARY | ALLOW_REPLACEMENT | QUEUE });
    assert.deepEqual(await names(b), [[a.id, 'foo.bar.double', PRIMARY | ALLOW_REPLACEMENT | QUEUE]]);
    assert.equal(await release(a, 'foo.bar.double'), 'OK');
    assert.equal(await release(a, 'foo.bar.double'), 'ESRCH');
  });

  it('a taken name: EEXIST with the saved flags in return_flags', async () => {
    await acquire(a, 'foo.bla.blaz');
    assert.deepEqual(await acquire(b, 'foo.bla.blaz'), { errno: 'EEXIST', flags: 0n });
    assert.deepEqual(await acquire(b, 'foo.bla.blaz', ALLOW_REPLACEMENT), { errno: 'EEXIST', flags: ALLOW_REPLACEMENT });
    assert.deepEqual(await acquire(b, 'foo.bla.blaz', REPLACE_EXISTING), { errno: 'EEXIST', flags: 0n }, 'a does not allow replacement');
    assert.deepEqual(await names(b), [[a.id, 'foo.bla.blaz', PRIMARY]]);
  });

  it('QUEUE waits in line; the first in line takes over on release (test-names name_queue)', async () => {
    const w = await watcher(tb);
    await acquire(a, 'foo.bla.blaz');
    assert.deepEqual(await acquire(b, 'foo.bla.blaz', QUEUE), { errno: 'OK', flags: QUEUE | IN_QUEUE | ACQUIRED });
    assert.deepEqual(await acquire(b, 'foo.bla.blaz', QUEUE), { errno: 'OK', flags: QUEUE | IN_QUEUE }, 'already queued');
    assert.deepEqual(await names(b), [[a.id, 'foo.bla.blaz', PRIMARY], [b.id, 'foo.bla.blaz', QUEUE | IN_QUEUE]]);
    assert.deepEqual((await drain(w)).map(nameNote), [note(ItemType.NAME_ADD, 0n, 0n, a.id, PRIMARY, 'foo.bla.blaz')], 'queueing is silent');
    assert.equal(await release(a, 'foo.bla.blaz'), 'OK');
    assert.deepEqual(await names(b), [[b.id, 'foo.bla.blaz', PRIMARY | QUEUE]]);
    assert.deepEqual((await drain(w)).map(nameNote), [note(ItemType.NAME_CHANGE, a.id, PRIMARY, b.id, PRIMARY | QUEUE, 'foo.bla.blaz')]);
  });

  it('asking again without QUEUE leaves the queue silently (DO_NOT_QUEUE), returning the saved flags', async () => {
    const w = await watcher(tb);
    await acquire(a, 'foo.bla.blaz');
    await acquire(b, 'foo.bla.blaz', QUEUE | ALLOW_REPLACEMENT);
    await drain(w);
    assert.deepEqual(await acquire(b, 'foo.bla.blaz', ALLOW_REPLACEMENT), { errno: 'OK', flags: ALLOW_REPLACEMENT });
    assert.deepEqual(await names(b), [[a.id, 'foo.bla.blaz', PRIMARY]]);
    assert.equal(await release(b, 'foo.bla.blaz'), 'EADDRINUSE');
    assert.deepEqual(await drain(w), []);
    // Releasing a queued record is silent too.
    await acquire(b, 'foo.bla.blaz', QUEUE);
    assert.equal(await release(b, 'foo.bla.blaz'), 'OK');
    assert.deepEqual(await drain(w), []);
  });

  it('REPLACE_EXISTING takes a name whose owner allows it, ahead of the queue; the old owner queues only with QUEUE', async () => {
    const w = await watcher(tb);
    const c = await tb.conn();
    await acquire(a, 'foo.bla.blaz', ALLOW_REPLACEMENT);
    await acquire(c, 'foo.bla.blaz', QUEUE);
    await drain(w);
    assert.deepEqual(await acquire(b, 'foo.bla.blaz', REPLACE_EXISTING), { errno: 'OK', flags: PRIMARY | ACQUIRED });
    assert.deepEqual((await drain(w)).map(nameNote), [note(ItemType.NAME_CHANGE, a.id, PRIMARY | ALLOW_REPLACEMENT, b.id, PRIMARY, 'foo.bla.blaz')]);
    assert.deepEqual(await names(b), [[b.id, 'foo.bla.blaz', PRIMARY], [c.id, 'foo.bla.blaz', QUEUE | IN_QUEUE]], 'a lost the name entirely');
    assert.equal(await release(a, 'foo.bla.blaz'), 'EADDRINUSE');

    await acquire(a, 'org.example.Q', ALLOW_REPLACEMENT | QUEUE);
    await drain(w);
    assert.deepEqual(await acquire(b, 'org.example.Q', REPLACE_EXISTING | QUEUE), { errno: 'OK', flags: PRIMARY | QUEUE | ACQUIRED });
    assert.deepEqual((await names(b, ListFlags.QUEUED)).filter((r) => r[1] === 'org.example.Q'), [[a.id, 'org.example.Q', ALLOW_REPLACEMENT | QUEUE | IN_QUEUE]], 'a waits in line now');
    assert.deepEqual(await acquire(c, 'org.example.Q', REPLACE_EXISTING), { errno: 'EEXIST', flags: 0n }, 'b did not allow replacement');
    assert.equal(await release(b, 'org.example.Q'), 'OK');
    assert.deepEqual((await drain(w)).map(nameNote), [
      note(ItemType.NAME_CHANGE, a.id, PRIMARY | ALLOW_REPLACEMENT | QUEUE, b.id, PRIMARY | QUEUE, 'org.example.Q'),
      note(ItemType.NAME_CHANGE, b.id, PRIMARY | QUEUE, a.id, PRIMARY | ALLOW_REPLACEMENT | QUEUE, 'org.example.Q'),
    ]);
  });

  it('a name may only be owned with OWN permission: EPERM for an unprivileged user, after the name check', async () => {
    const u = await tb.conn({}, { creds: credsOf(1000), privileged: false });
    assert.deepEqual(await acquire(u, 'foo.bar.baz'), { errno: 'EPERM', flags: 0n });
    assert.equal((await acquire(u, 'foo')).errno, 'EINVAL', 'invalid first');
    // A policy holder grants uid 1000 OWN on the name.
    const holder = tb.client();
    await expectOk(holder.hello(activatorHello('foo.bar.baz', HelloFlags.POLICY_HOLDER, access(PolicyAccessType.USER, PolicyAccess.OWN, 1000))));
    assert.deepEqual(await acquire(u, 'foo.bar.baz'), { errno: 'OK', flags: PRIMARY | ACQUIRED });
    assert.equal((await acquire(u, 'foo.bar.other')).errno, 'EPERM');
  });

  it('a connection holds at most 256 names (queued ones included): E2BIG', async () => {
    await acquire(b, 'org.example.Queued');
    assert.equal((await acquire(a, 'org.example.Queued', QUEUE)).errno, 'OK');
    for (let i = 1; i < 256; i++) assert.equal((await acquire(a, `org.example.N${i}`)).errno, 'OK');
    assert.deepEqual(await acquire(a, 'org.example.N256'), { errno: 'E2BIG', flags: 0n });
    assert.equal((await acquire(a, 'org.example.N1')).errno, 'OK', 'an existing record needs no new one');
    await release(a, 'org.example.N1');
    assert.equal((await acquire(a, 'org.example.N256')).errno, 'OK');
  });

  it('activators and monitors cannot acquire or release names (EOPNOTSUPP)', async () => {
    const act = await tb.conn(activatorHello('org.example.Act'));
    assert.equal((await acquire(act, 'org.example.Other')).errno, 'EOPNOTSUPP');
    assert.equal((await acquire(act, 'org.example.Act')).errno, 'EOPNOTSUPP');
    assert.equal(await release(act, 'org.example.Act'), 'EOPNOTSUPP');
    const mon = await tb.conn({ flags: HelloFlags.MONITOR });
    assert.equal((await acquire(mon, 'org.example.Other')).errno, 'EOPNOTSUPP');
  });
});

describe('bus names: notifications (kdbus-abi.md §3.16)', () => {
  let tb: TestBus;
  let a: TestClient;
  beforeEach(async () => {
    tb = await newBus();
    a = await tb.conn();
  });

  it('NAME_ADD and NAME_REMOVE: exact message layout, queued before the ioctl returns', async () => {
    const w = await watcher(tb);
    const nm = 'org.example.Notify';
    await acquire(a, nm, ALLOW_REPLACEMENT);
    const [add] = await drain(w);
    const itemSize = 16 + 32 + nm.length + 1;
    assert.deepEqual(
      [add!.size, add!.sliceSize, add!.flags, add!.priority, add!.dstId, add!.srcId, add!.payloadType, add!.cookie, add!.cookieReply],
      [BigInt(64 + ALIGN8(itemSize) + 40), 64 + ALIGN8(itemSize) + 40, MsgFlags.SIGNAL, 0n, KDBUS_DST_ID_BROADCAST, 0n, KDBUS_PAYLOAD_KERNEL, 0n, 0n]);
    assert.deepEqual(add!.items.map((x) => [x.type, x.size]), [[ItemType.NAME_ADD, itemSize], [ItemType.TIMESTAMP, 40]]);
    assert.deepEqual(nameNote(add!), note(ItemType.NAME_ADD, 0n, 0n, a.id, PRIMARY | ALLOW_REPLACEMENT, nm));
    assert.equal(add!.raw[64 + itemSize - 1], 0, 'NUL-terminated');
    assert.equal(await release(a, nm), 'OK');
    const [rm] = await drain(w);
    assert.deepEqual(rm!.items.map((x) => [x.type, x.size]), [[ItemType.NAME_REMOVE, itemSize], [ItemType.TIMESTAMP, 40]]);
    assert.deepEqual(nameNote(rm!), note(ItemType.NAME_REMOVE, a.id, PRIMARY | ALLOW_REPLACEMENT, 0n, 0n, nm));
    assert.ok(rm!.raw.readBigUInt64LE(64 + ALIGN8(itemSize) + 16) > add!.raw.readBigUInt64LE(64 + ALIGN8(itemSize) + 16), 'later seqnum');
  });

  it('a disconnect releases names in acquisition order, then removes the id', async () => {
    const w = await watcher(tb);
    const b = await tb.conn();
    await acquire(b, 'org.example.Two');
    await acquire(b, 'org.example.One');
    await acquire(a, 'org.example.Shared');
    await acquire(b, 'org.example.Shared', QUEUE);
    await drain(w);
    b.close();
    const got = await drain(w);
    assert.deepEqual(got.map((m) => m.items[0]!.type), [ItemType.NAME_REMOVE, ItemType.NAME_REMOVE, ItemType.ID_REMOVE]);
    assert.deepEqual(got.slice(0, 2).map((m) => nameNote(m).name), ['org.example.Two', 'org.example.One']);
    assert.deepEqual([got[2]!.items[0]!.payload.readBigUInt64LE(0), got[2]!.items[0]!.payload.readBigUInt64LE(8)], [b.id, HelloFlags.ACCEPT_FD]);
    assert.deepEqual(await names(a), [[a.id, 'org.example.Shared', PRIMARY]]);
  });

  it('messages queued for a name stay with the owner that had it when they were sent', async () => {
    const b = await tb.conn();
    const c = await tb.conn();
    await acquire(b, 'org.example.S');
    await acquire(c, 'org.example.S', QUEUE);
    await expectOk(a.send({ name: 'org.example.S', cookie: 1n }));
    await release(b, 'org.example.S');
    await expectOk(a.send({ name: 'org.example.S', cookie: 2n }));
    assert.deepEqual((await drain(b)).map((m) => m.cookie), [1n]);
    assert.deepEqual((await drain(c)).map((m) => m.cookie), [2n]);
  });
});

describe('bus names: activators (test-activator.c)', () => {
  let tb: TestBus;
  let a: TestClient;
  let w: TestClient;
  const SVC = 'foo.test.activator';
  beforeEach(async () => {
    tb = await newBus();
    w = await watcher(tb);
    a = await tb.conn();
    await drain(w);
  });

  it('an activator holds its name (NAME_ADD with ACTIVATOR|PRIMARY) and collects the messages sent to it', async () => {
    const act = await tb.conn(activatorHello(SVC));
    const got = await drain(w);
    assert.deepEqual(got.map((m) => m.items[0]!.type), [ItemType.ID_ADD, ItemType.NAME_ADD]);
    assert.equal(got[0]!.items[0]!.payload.readBigUInt64LE(8), HelloFlags.ACTIVATOR, 'ID_ADD carries the HELLO flags');
    assert.deepEqual(nameNote(got[1]!), note(ItemType.NAME_ADD, 0n, 0n, act.id, ACTIVATOR | PRIMARY, SVC));
    assert.deepEqual(await names(a), [[act.id, SVC, ACTIVATOR | PRIMARY]]);
    assert.deepEqual(await names(a, ListFlags.NAMES), [], 'listed under ACTIVATORS only');

    assert.equal(act.handle.poll() & 1, 0);
    await expectOk(a.send({ name: SVC, cookie: 0xdeafbeefn, payload: [Buffer.from('start me')] }));
    assert.equal(act.handle.poll() & 1, 1, 'the starter is woken');
    const peek = await act.recv(RecvFlags.PEEK);
    assert.deepEqual([peek.msg!.cookie, peek.msg!.srcId, peek.msg!.dstId, peek.msg!.data.map(String)], [0xdeafbeefn, a.id, 0n, ['start me']]);
    assert.equal(name((await a.send({ dst: act.id })).errno), 'ENXIO', 'activators cannot be addressed by id');
    assert.equal(name((await a.send({ name: SVC, flags: MsgFlags.NO_AUTO_START })).errno), 'EADDRNOTAVAIL');
  });

  it('the implementer takes the name over (NAME_CHANGE) and the parked messages and calls with it; release hands them back', async () => {
    const act = await tb.conn(activatorHello(SVC));
    const svc = await tb.conn();
    await acquire(svc, 'org.example.Other');
    await drain(w);
    await expectOk(a.send({ name: SVC, cookie: 1n }));
    await expectOk(a.send({ name: SVC, cookie: 2n, flags: MsgFlags.EXPECT_REPLY, timeoutNs: inFuture(5000) }));
    const sync = a.send({ name: SVC, cookie: 3n, flags: MsgFlags.EXPECT_REPLY, sync: true, timeoutNs: inFuture(5000) });
    await act.recv(RecvFlags.PEEK);

    assert.deepEqual(await acquire(svc, SVC, REPLACE_EXISTING), { errno: 'OK', flags: PRIMARY | ACQUIRED });
    assert.deepEqual((await drain(w)).map(nameNote), [note(ItemType.NAME_CHANGE, act.id, ACTIVATOR | PRIMARY, svc.id, PRIMARY, SVC)]);
    assert.deepEqual(await names(a), [[act.id, SVC, ACTIVATOR | IN_QUEUE], [svc.id, SVC, PRIMARY], [svc.id, 'org.example.Other', PRIMARY]]);
    assert.equal(name((await act.recv()).errno), 'EAGAIN', 'nothing left on the activator');
    assert.equal(name((await a.send({ name: SVC, flags: MsgFlags.NO_AUTO_START, cookie: 4n })).errno), 'OK', 'a real owner now');

    const got = await drain(svc);
    assert.deepEqual(got.map((m) => [m.cookie, m.srcId]), [[1n, a.id], [2n, a.id], [3n, a.id], [4n, a.id]]);
    // The reply trackers moved with the calls: the implementer may answer them.
    await expectOk(svc.send({ dst: a.id, cookieReply: 2n, cookie: 20n }));
    await expectOk(svc.send({ dst: a.id, cookieReply: 3n, cookie: 30n }));
    assert.equal((await sync).errno, 0, 'the sync caller got its answer');
    assert.deepEqual((await drain(a)).map((m) => [m.srcId, m.cookieReply]), [[svc.id, 2n]]);

    // Messages still queued at release go back: those sent to the name only.
    await expectOk(a.send({ name: SVC, cookie: 5n }));
    await expectOk(a.send({ dst: svc.id, cookie: 6n }));
    await expectOk(a.send({ name: 'org.example.Other', cookie: 7n }));
    await expectOk(a.send({ name: SVC, cookie: 8n, flags: MsgFlags.EXPECT_REPLY, timeoutNs: inFuture(5000) }));
    assert.equal(await release(svc, SVC), 'OK');
    assert.deepEqual((await drain(w)).map(nameNote), [note(ItemType.NAME_CHANGE, svc.id, PRIMARY, act.id, ACTIVATOR | PRIMARY, SVC)]);
    assert.deepEqual((await drain(svc)).map((m) => m.cookie), [6n, 7n]);
    assert.deepEqual((await drain(act)).map((m) => m.cookie), [5n, 8n]);
    assert.equal(name((await svc.send({ dst: a.id, cookieReply: 8n })).errno), 'EBADSLT', 'the call went back with its tracker');
  });

  it('an implementer that disconnects hands the name and its messages back to the activator', async () => {
    const act = await tb.conn(activatorHello(SVC));
    const svc = await tb.conn();
    await acquire(svc, SVC);
    await drain(w);
    await expectOk(a.send({ name: SVC, cookie: 9n }));
    svc.close();
    const got = await drain(w);
    assert.deepEqual(got.map((m) => m.items[0]!.type), [ItemType.NAME_CHANGE, ItemType.ID_REMOVE]);
    assert.deepEqual(nameNote(got[0]!), note(ItemType.NAME_CHANGE, svc.id, PRIMARY, act.id, ACTIVATOR | PRIMARY, SVC));
    assert.deepEqual((await drain(act)).map((m) => m.cookie), [9n]);
  });

  it('a closing activator removes the name only if nobody else owns it', async () => {
    const act = await tb.conn(activatorHello(SVC));
    const svc = await tb.conn();
    await acquire(svc, SVC);
    await drain(w);
    act.close();
    assert.deepEqual((await drain(w)).map((m) => m.items[0]!.type), [ItemType.ID_REMOVE], 'the queued activator record goes silently');
    const act2 = await tb.conn(activatorHello(SVC));
    assert.deepEqual((await drain(w)).map((m) => m.items[0]!.type), [ItemType.ID_ADD], 'a new activator queues silently behind the owner');
    await release(svc, SVC);
    assert.deepEqual((await drain(w)).map(nameNote), [note(ItemType.NAME_CHANGE, svc.id, PRIMARY, act2.id, ACTIVATOR | PRIMARY, SVC)]);
    act2.close();
    assert.deepEqual((await drain(w)).map((m) => m.items[0]!.type), [ItemType.NAME_REMOVE, ItemType.ID_REMOVE]);
    assert.equal(name((await a.send({ name: SVC })).errno), 'ESRCH');
  });

  it('a second activator for the name is refused (EEXIST)', async () => {
    await tb.conn(activatorHello(SVC));
    const r = await tb.client().hello(activatorHello(SVC));
    assert.equal(name(r.errno), 'EEXIST');
  });

  it('messages the implementer cannot take are lost on it: fds to a connection without ACCEPT_FD', async () => {
    const act = await tb.conn(activatorHello(SVC, HelloFlags.ACTIVATOR | HelloFlags.ACCEPT_FD));
    const svc = await tb.conn({ flags: 0n });
    await expectOk(a.send({ name: SVC, cookie: 1n, fds: [a.fds.add(new FakeFile('other'))] }));
    await expectOk(a.send({ name: SVC, cookie: 2n }));
    await act.recv(RecvFlags.PEEK);
    await acquire(svc, SVC);
    const r = await svc.recv();
    assert.deepEqual([r.msg!.cookie, r.dropped], [2n, 1n]);
    assert.equal(name((await act.recv()).errno), 'EAGAIN');
  });

  it('TALK to an activated name follows the activator\'s policy; the id stays unreachable (kdbus_priv_activator)', async () => {
    const act = await tb.conn(activatorHello('foo.priv.activator', HelloFlags.ACTIVATOR,
      (x) => {
        access(PolicyAccessType.USER, PolicyAccess.OWN, 0)(x);
        access(PolicyAccessType.USER, PolicyAccess.TALK, 0)(x);
      }));
    const svc = await tb.conn();
    const u = await tb.conn({}, { creds: credsOf(1000), privileged: false });
    assert.equal(name((await u.send({ dst: act.id })).errno), 'ENXIO');
    assert.equal(name((await u.send({ name: 'foo.priv.activator' })).errno), 'EPERM');
    assert.equal(name((await act.recv()).errno), 'EAGAIN', 'nothing starts the service');
    await expectOk(svc.send({ name: 'foo.priv.activator', cookie: 1n }));
    assert.equal((await acquire(u, 'foo.priv.activator', REPLACE_EXISTING)).errno, 'EPERM');
    assert.deepEqual(await acquire(svc, 'foo.priv.activator', REPLACE_EXISTING), { errno: 'OK', flags: PRIMARY | ACQUIRED });
    assert.deepEqual((await drain(svc)).map((m) => m.cookie), [1n]);
    assert.equal(name((await u.send({ name: 'foo.priv.activator' })).errno), 'EPERM', 'still denied');
    act.close();
    assert.equal(name((await u.send({ name: 'foo.priv.activator' })).errno), 'EPERM', 'policy defaults to deny');
    const holder = tb.client();
    await expectOk(holder.hello(activatorHello('foo.priv.activator', HelloFlags.POLICY_HOLDER, access(PolicyAccessType.WORLD, PolicyAccess.TALK))));
    await expectOk(u.send({ name: 'foo.priv.activator', cookie: 2n }));
    assert.deepEqual((await drain(svc)).map((m) => m.cookie), [2n]);
    assert.equal((await acquire(u, 'foo.priv.activator', REPLACE_EXISTING)).errno, 'EPERM');
  });
});
