/**
 * Method calls and their replies: synchronous calls (SEND_SYNC_REPLY) and every way their
 * wait ends, asynchronous calls with REPLY_TIMEOUT and REPLY_DEAD notifications. Modelled
 * on the kdbus selftests test-sync.c, test-timeout.c and the sync parts of test-fd.c;
 * semantics from kdbus-abi.md §3.5 and ipc/kdbus/connection.c (kdbus_conn_call,
 * kdbus_conn_wait_reply, kdbus_conn_reply, kdbus_conn_release) and reply.c.
 */
import assert from 'node:assert/strict';
import { Errno } from '../../src/abi/errno';
import { Attach, HelloFlags, ItemType, KDBUS_PAYLOAD_KERNEL, MsgFlags, Off, RecvFlags, RecvReturn } from '../../src/abi/constants';
import { Interruption } from '../../src/bus/interruption';
import { FakeFile, TestBus, type TestClient, type ReceivedMessage, expectOk, memfd } from '../helpers/kdbus-client';

const buses: TestBus[] = [];
async function newBus(): Promise<TestBus> {
  const tb = await TestBus.create();
  buses.push(tb);
  return tb;
}
afterEach(() => {
  for (const tb of buses.splice(0)) tb.destroy();
});

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const inFuture = (ms: number): bigint => process.hrtime.bigint() + BigInt(ms) * 1_000_000n;
const { EXPECT_REPLY } = MsgFlags;

function name(errno: number): string {
  for (const [k, v] of Object.entries(Errno)) if (v === errno) return k;
  return String(errno);
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

/** [item type, dst_id, cookie_reply] of each kernel notification. */
const notes = (msgs: ReceivedMessage[]) => msgs.map((m) => [m.items[0]!.type, m.dstId, m.cookieReply]);

function reply(from: TestClient, to: TestClient, cookie: bigint, extra: Partial<Parameters<TestClient['send']>[0]> = {}) {
  return from.send({ dst: to.id, cookieReply: cookie, ...extra });
}

/** A settled-or-not probe for a pending promise. */
async function isPending(p: Promise<unknown>): Promise<boolean> {
  const marker = Symbol('pending');
  return (await Promise.race([p, sleep(5).then(() => marker)])) === marker;
}

describe('bus sync calls (SEND_SYNC_REPLY)', () => {
  let tb: TestBus;
  let a: TestClient;
  let b: TestClient;
  beforeEach(async () => {
    tb = await newBus();
    a = await tb.conn();
    b = await tb.conn();
  });

  it('returns 0 once the reply is in the caller\'s pool, with its offset and whole-slice size in cmd.reply', async () => {
    const call = a.send({ dst: b.id, cookie: 0xdeadbeefn, flags: EXPECT_REPLY, sync: true, payload: [Buffer.from('ping')] });
    assert.ok(await isPending(call), 'blocks until answered');
    const req = await b.mustRecv();
    assert.deepEqual([req.cookie, req.flags, req.srcId], [0xdeadbeefn, EXPECT_REPLY, a.id]);
    // An unknown cookie is refused while the caller keeps waiting (run_thread_reply).
    assert.equal(name((await reply(b, a, ~0xdeadbeefn & 0xffff_ffff_ffff_ffffn)).errno), 'EBADSLT');
    assert.ok(await isPending(call));
    await expectOk(reply(b, a, 0xdeadbeefn, { cookie: 0x5150n, payload: [Buffer.from('pong')] }));
    const r = await call;
    assert.equal(r.errno, 0);
    const m = a.decode(Number(r.replyOffset), Number(r.replySize));
    assert.deepEqual([m.srcId, m.dstId, m.cookie, m.cookieReply, m.data.map(String)], [b.id, a.id, 0x5150n, 0xdeadbeefn, ['pong']]);
    assert.equal(r.replySize, BigInt(m.sliceSize));
    assert.equal(r.replySize % 8n, 0n);
    assert.equal(r.out.readBigUInt64LE(Off.send.reply_return_flags), 0n);
    assert.equal(name((await a.recv()).errno), 'EAGAIN', 'the reply bypasses the caller\'s queue');
    await expectOk(a.free(r.replyOffset));
    assert.equal(name((await reply(b, a, 0xdeadbeefn)).errno), 'EBADSLT', 'answered once');
  });

  it('works by name, and monitors see the call and the reply', async () => {
    await expectOk(b.acquire('org.example.Callee'));
    const mon = await tb.conn({ flags: HelloFlags.MONITOR, attachRecv: 0n });
    const call = a.send({ name: 'org.example.Callee', cookie: 7n, flags: EXPECT_REPLY, sync: true });
    const req = await b.mustRecv();
    assert.equal(req.dstId, 0n);
    await expectOk(reply(b, a, req.cookie, { cookie: 8n }));
    assert.equal((await call).errno, 0);
    assert.deepEqual((await drain(mon)).map((m) => [m.srcId, m.cookie]), [[a.id, 7n], [b.id, 8n]]);
  });

  it('installs the reply\'s fds into the caller, and reports INCOMPLETE_FDS in reply.return_flags', async () => {
    let call = a.send({ dst: b.id, cookie: 1n, flags: EXPECT_REPLY, sync: true });
    await b.mustRecv();
    const f = new FakeFile('other');
    await expectOk(reply(b, a, 1n, { fds: [b.fds.add(f)] }));
    let r = await call;
    let m = a.decode(Number(r.replyOffset), Number(r.replySize));
    const fds = m.items.find((x) => x.type === ItemType.FDS)!;
    assert.equal(a.fds.installed.get(fds.payload.readInt32LE(0)), f);

    a.fds.failInstall = true;
    call = a.send({ dst: b.id, cookie: 2n, flags: EXPECT_REPLY, sync: true });
    await b.mustRecv();
    await expectOk(reply(b, a, 2n, { fds: [b.fds.add(new FakeFile('other'))] }));
    r = await call;
    assert.equal(r.errno, 0);
    assert.equal(r.out.readBigUInt64LE(Off.send.reply_return_flags), RecvReturn.INCOMPLETE_FDS);
    m = a.decode(Number(r.replyOffset), Number(r.replySize));
    assert.equal(m.items.find((x) => x.type === ItemType.FDS)!.payload.readInt32LE(0), -1);
  });

  it('ETIMEDOUT at the deadline; the tracker is gone (late reply EBADSLT) and no REPLY_TIMEOUT follows', async () => {
    const start = process.hrtime.bigint();
    const call = a.send({ dst: b.id, cookie: 3n, flags: EXPECT_REPLY, sync: true, timeoutNs: inFuture(60) });
    await b.mustRecv();
    const r = await call;
    assert.equal(name(r.errno), 'ETIMEDOUT');
    assert.ok(process.hrtime.bigint() - start >= 59_000_000n, 'not before the deadline');
    assert.equal(name((await reply(b, a, 3n)).errno), 'EBADSLT');
    await sleep(30);
    assert.equal(name((await a.recv()).errno), 'EAGAIN', 'sync calls never get REPLY_TIMEOUT');
    assert.equal(a.conn.requestCount, 0);
  });

  it('a deadline already past is ETIMEDOUT at once, before the destination is even looked up', async () => {
    const past = process.hrtime.bigint() - 1n;
    assert.equal(name((await a.send({ dst: b.id, flags: EXPECT_REPLY, sync: true, timeoutNs: past })).errno), 'ETIMEDOUT');
    assert.equal(name((await a.send({ dst: 9999n, flags: EXPECT_REPLY, sync: true, timeoutNs: past })).errno), 'ETIMEDOUT', 'not ENXIO');
    assert.equal(name((await b.recv()).errno), 'EAGAIN', 'nothing was sent');
  });

  it('ECANCELED when the cancel fd polls readable; an unsignalled cancel fd changes nothing', async () => {
    const cancel = new FakeFile('other');
    const call = a.send({ dst: b.id, cookie: 4n, flags: EXPECT_REPLY, sync: true, cancelFd: a.fds.add(cancel) });
    await b.mustRecv();
    assert.ok(await isPending(call));
    cancel.signal();
    assert.equal(name((await call).errno), 'ECANCELED');
    assert.ok(cancel.closed, 'the cancel fd reference is dropped');
    assert.equal(name((await reply(b, a, 4n)).errno), 'EBADSLT');

    const quiet = new FakeFile('other');
    const call2 = a.send({ dst: b.id, cookie: 5n, flags: EXPECT_REPLY, sync: true, cancelFd: a.fds.add(quiet) });
    await b.mustRecv();
    await expectOk(reply(b, a, 5n));
    assert.equal((await call2).errno, 0);
    quiet.signal();
    assert.equal(a.conn.requestCount, 0);
  });

  it('EPIPE when the callee goes away: close with the call received, BYEBYE, or DROP of the call', async () => {
    let call = a.send({ dst: b.id, cookie: 6n, flags: EXPECT_REPLY, sync: true });
    await b.mustRecv();
    b.close();
    assert.equal(name((await call).errno), 'EPIPE', 'close');

    const c = await tb.conn();
    call = a.send({ dst: c.id, cookie: 7n, flags: EXPECT_REPLY, sync: true });
    await c.mustRecv();
    await expectOk(c.byebye());
    assert.equal(name((await call).errno), 'EPIPE', 'BYEBYE (test-sync BYEBYE_THEM)');

    const d = await tb.conn();
    call = a.send({ dst: d.id, cookie: 8n, flags: EXPECT_REPLY, sync: true });
    await expectOk(d.recv(RecvFlags.DROP));
    assert.equal(name((await call).errno), 'EPIPE', 'DROP');
    assert.deepEqual(await drain(a), [], 'sync callers get no REPLY_DEAD for these');
  });

  it('a callee that closes with the sync call still queued: EPIPE, and kdbus queues a REPLY_DEAD for it too', async () => {
    const call = a.send({ dst: b.id, cookie: 9n, flags: EXPECT_REPLY, sync: true });
    assert.ok(await isPending(call));
    b.close();
    assert.equal(name((await call).errno), 'EPIPE');
    // kdbus_conn_release() notifies every queued entry's caller, sync ones included.
    assert.deepEqual(notes(await drain(a)), [[ItemType.REPLY_DEAD, a.id, 9n]]);
  });

  it('ESHUTDOWN when the caller\'s own connection says BYEBYE from another thread (test-sync BYEBYE_ME)', async () => {
    const call = a.send({ dst: b.id, cookie: 10n, flags: EXPECT_REPLY, sync: true });
    await b.mustRecv();
    await expectOk(a.byebye());
    assert.equal(name((await call).errno), 'ESHUTDOWN');
    assert.equal(name((await a.recv()).errno), 'ESHUTDOWN', 'the connection is gone');
    assert.equal(name((await reply(b, a, 10n)).errno), 'ENXIO', 'nobody to answer');
  });

  it('ESHUTDOWN too when the caller\'s handle is released while it waits', async () => {
    const call = a.send({ dst: b.id, cookie: 11n, flags: EXPECT_REPLY, sync: true });
    await b.mustRecv();
    a.close();
    assert.equal(name((await call).errno), 'ESHUTDOWN');
  });

  it('a reply with fds to a caller without ACCEPT_FD: ECOMM for the replier, EREMOTEIO for the caller (test-fd)', async () => {
    const nofd = await tb.conn({ flags: 0n });
    // A call carrying an fd to a peer that refuses fds fails at once.
    const dummy = await tb.conn({ flags: 0n });
    const f = new FakeFile('other');
    assert.equal(name((await nofd.send({ dst: dummy.id, flags: EXPECT_REPLY, sync: true, timeoutNs: inFuture(100), fds: [nofd.fds.add(f)] })).errno), 'ECOMM');
    assert.equal(nofd.conn.requestCount, 0);

    const call = nofd.send({ dst: a.id, cookie: 12n, flags: EXPECT_REPLY, sync: true });
    await a.mustRecv();
    // A kdbus handle is refused while importing: the request stays answerable.
    assert.equal(name((await reply(a, nofd, 12n, { fds: [a.fds.add(new FakeFile('kdbus'))] })).errno), 'EOPNOTSUPP');
    assert.ok(await isPending(call));
    assert.equal(name((await reply(a, nofd, 12n, { fds: [a.fds.add(new FakeFile('other'))] })).errno), 'ECOMM');
    assert.equal(name((await call).errno), 'EREMOTEIO');
    assert.equal(name((await reply(a, nofd, 12n)).errno), 'EBADSLT', 'the request was used up');

    // memfds are payload: they reach a caller that does not take fds.
    const call2 = nofd.send({ dst: a.id, cookie: 13n, flags: EXPECT_REPLY, sync: true });
    await a.mustRecv();
    const mf = memfd('abcdefgh');
    await expectOk(reply(a, nofd, 13n, { memfds: [{ fd: a.fds.add(mf) }] }));
    const r = await call2;
    assert.equal(r.errno, 0);
    const m = nofd.decode(Number(r.replyOffset), Number(r.replySize));
    assert.equal(nofd.fds.installed.get(m.items.find((x) => x.type === ItemType.PAYLOAD_MEMFD)!.payload.readInt32LE(16)), mf);
  });

  it('an interrupted wait (EINTR) resumes when SEND is repeated with the same cookie: no second call, the reply arrives', async () => {
    a.abort = new Interruption();
    const call = a.send({ dst: b.id, cookie: 14n, flags: EXPECT_REPLY, sync: true, timeoutNs: inFuture(2000), payload: [Buffer.from('once')] });
    await b.mustRecv();
    a.abort.abort();
    assert.equal(name((await call).errno), 'EINTR');
    a.abort = undefined;
    const resumed = a.send({ dst: b.id, cookie: 14n, flags: EXPECT_REPLY, sync: true, timeoutNs: inFuture(2000), payload: [Buffer.from('once')] });
    assert.ok(await isPending(resumed));
    assert.equal(name((await b.recv()).errno), 'EAGAIN', 'the call is not sent again');
    await expectOk(reply(b, a, 14n, { payload: [Buffer.from('answer')] }));
    const r = await resumed;
    assert.equal(r.errno, 0);
    assert.deepEqual(a.decode(Number(r.replyOffset), Number(r.replySize)).data.map(String), ['answer']);
    assert.equal(a.conn.requestCount, 0);
  });

  it('an interrupted wait that is never resumed ends at its deadline silently (interrupt_sync)', async () => {
    a.abort = new Interruption();
    const call = a.send({ dst: b.id, cookie: 15n, flags: EXPECT_REPLY, sync: true, timeoutNs: inFuture(50) });
    await b.mustRecv();
    a.abort.abort();
    assert.equal(name((await call).errno), 'EINTR');
    a.abort = undefined;
    await sleep(80);
    assert.deepEqual(await drain(a), [], 'no REPLY_TIMEOUT for an interrupted sync call');
    assert.equal(name((await reply(b, a, 15n)).errno), 'EBADSLT');
    // Restarted after the deadline, it is a new call whose deadline has passed.
    assert.equal(name((await a.send({ dst: b.id, cookie: 15n, flags: EXPECT_REPLY, sync: true, timeoutNs: inFuture(-1) })).errno), 'ETIMEDOUT');
    assert.equal(a.conn.requestCount, 0);
  });

  it('a reply to a caller whose wait was interrupted is accepted and then discarded without leaking quota', async () => {
    a.abort = new Interruption();
    const call = a.send({ dst: b.id, cookie: 16n, flags: EXPECT_REPLY, sync: true, timeoutNs: inFuture(2000) });
    await b.mustRecv();
    a.abort.abort();
    assert.equal(name((await call).errno), 'EINTR');
    a.abort = undefined;
    await expectOk(reply(b, a, 16n, { payload: [Buffer.alloc(4096)] }));
    assert.equal(a.conn.pool.accountedSize, 0, 'the undelivered reply does not stay charged to the callee');
    assert.equal(a.conn.requestCount, 0);
    assert.deepEqual(await drain(a), []);
  });
});

describe('bus async calls: REPLY_TIMEOUT and REPLY_DEAD', () => {
  let tb: TestBus;
  let a: TestClient;
  let b: TestClient;
  beforeEach(async () => {
    tb = await newBus();
    a = await tb.conn({ attachRecv: 0n });
    b = await tb.conn();
  });

  function assertNotification(m: ReceivedMessage, type: ItemType, to: TestClient, cookie: bigint): void {
    // Kernel notifications always carry a TIMESTAMP, whatever the receiver asked for.
    assert.deepEqual(
      [m.size, m.sliceSize, m.flags, m.priority, m.dstId, m.srcId, m.payloadType, m.cookie, m.cookieReply],
      [64n + 16n + 40n, 120, 0n, 0n, to.id, 0n, KDBUS_PAYLOAD_KERNEL, 0n, cookie]);
    assert.deepEqual(m.items.map((x) => [x.type, x.size]), [[type, 16], [ItemType.TIMESTAMP, 40]]);
  }

  it('REPLY_TIMEOUT for each unanswered call at its deadline, in deadline order (test-timeout)', async () => {
    const start = process.hrtime.bigint();
    const cookies = [0xdeadbeefn, 0xdeadbef0n, 0xdeadbef1n, 0xdeadbef2n];
    for (let i = 0; i < 4; i++) {
      await expectOk(a.send({ dst: b.id, cookie: cookies[i]!, flags: EXPECT_REPLY, timeoutNs: inFuture(30 * (4 - i)) }));
    }
    assert.equal(a.handle.poll() & 1, 0, 'nothing yet');
    await sleep(75);
    const first = await drain(a);
    assert.deepEqual(first.map((m) => m.cookieReply), [cookies[3], cookies[2]]);
    assert.ok(process.hrtime.bigint() - start >= 60_000_000n);
    await sleep(75);
    const rest = await drain(a);
    assert.deepEqual(rest.map((m) => m.cookieReply), [cookies[1], cookies[0]]);
    for (const m of [...first, ...rest]) assertNotification(m, ItemType.REPLY_TIMEOUT, a, m.cookieReply);
    // The callee's answers come too late, and dropping a timed-out call says nothing.
    await b.mustRecv();
    assert.equal(name((await reply(b, a, cookies[0]!)).errno), 'EBADSLT');
    await expectOk(b.recv(RecvFlags.DROP));
    assert.deepEqual(await drain(a), []);
    assert.equal(a.conn.requestCount, 2, 'two calls are still queued at the callee');
    await drain(b);
    assert.equal(a.conn.requestCount, 0);
  });

  it('answered calls do not time out; a deadline in the past times out right away', async () => {
    await expectOk(a.send({ dst: b.id, cookie: 1n, flags: EXPECT_REPLY, timeoutNs: inFuture(30) }));
    await b.mustRecv();
    await expectOk(reply(b, a, 1n));
    await expectOk(a.send({ dst: b.id, cookie: 2n, flags: EXPECT_REPLY, timeoutNs: process.hrtime.bigint() - 1000n }));
    await sleep(50);
    const got = await drain(a);
    assert.deepEqual(got.map((m) => [m.srcId, m.cookieReply]), [[b.id, 1n], [0n, 2n]]);
    assertNotification(got[1]!, ItemType.REPLY_TIMEOUT, a, 2n);
  });

  it('REPLY_DEAD when the callee closes after receiving the call; not for plain messages', async () => {
    await expectOk(a.send({ dst: b.id, cookie: 0x77n, flags: EXPECT_REPLY, timeoutNs: inFuture(5000) }));
    await expectOk(a.send({ dst: b.id, cookie: 0x78n }));
    await b.mustRecv();
    b.close();
    const got = await drain(a);
    assert.equal(got.length, 1);
    assertNotification(got[0]!, ItemType.REPLY_DEAD, a, 0x77n);
    await sleep(10);
    assert.equal(a.conn.requestCount, 0);
  });

  it('REPLY_DEAD twice when the call was still queued at the callee (kdbus_conn_release notifies queue and reply list)', async () => {
    await expectOk(a.send({ dst: b.id, cookie: 0x79n, flags: EXPECT_REPLY, timeoutNs: inFuture(5000) }));
    b.close();
    assert.deepEqual(notes(await drain(a)), [[ItemType.REPLY_DEAD, a.id, 0x79n], [ItemType.REPLY_DEAD, a.id, 0x79n]]);
  });

  it('after a timeout, a callee closing with the call still queued reports it dead once more', async () => {
    await expectOk(a.send({ dst: b.id, cookie: 0x7an, flags: EXPECT_REPLY, timeoutNs: inFuture(20) }));
    await sleep(40);
    assert.deepEqual(notes(await drain(a)), [[ItemType.REPLY_TIMEOUT, a.id, 0x7an]]);
    b.close();
    assert.deepEqual(notes(await drain(a)), [[ItemType.REPLY_DEAD, a.id, 0x7an]]);
  });

  it('BYEBYE refuses while calls are queued (EBUSY), and after receiving them reports them dead', async () => {
    await expectOk(a.send({ dst: b.id, cookie: 0x7bn, flags: EXPECT_REPLY, timeoutNs: inFuture(5000) }));
    assert.equal(name((await b.byebye()).errno), 'EBUSY');
    assert.deepEqual(await drain(a), [], 'nothing happened');
    await b.mustRecv();
    await expectOk(b.byebye());
    assert.deepEqual(notes(await drain(a)), [[ItemType.REPLY_DEAD, a.id, 0x7bn]]);
  });

  it('REPLY_DEAD for calls addressed by name, and none for a caller that is gone', async () => {
    await expectOk(b.acquire('org.example.B'));
    await expectOk(a.send({ name: 'org.example.B', cookie: 0x7cn, flags: EXPECT_REPLY, timeoutNs: inFuture(5000) }));
    const c = await tb.conn();
    await expectOk(c.send({ dst: b.id, cookie: 0x7dn, flags: EXPECT_REPLY, timeoutNs: inFuture(5000) }));
    await b.mustRecv();
    await b.mustRecv();
    c.close();
    b.close();
    assert.deepEqual(notes(await drain(a)), [[ItemType.REPLY_DEAD, a.id, 0x7cn]]);
  });

  it('a reply the caller cannot take (fds, no ACCEPT_FD) is ECOMM and uses the request up: no timeout follows', async () => {
    const nofd = await tb.conn({ flags: 0n, attachRecv: 0n });
    await expectOk(nofd.send({ dst: b.id, cookie: 0x7en, flags: EXPECT_REPLY, timeoutNs: inFuture(30) }));
    await b.mustRecv();
    assert.equal(name((await reply(b, nofd, 0x7en, { fds: [b.fds.add(new FakeFile('other'))] })).errno), 'ECOMM');
    assert.equal(name((await reply(b, nofd, 0x7en)).errno), 'EBADSLT');
    await sleep(50);
    assert.deepEqual(await drain(nofd), []);
    assert.equal(nofd.conn.requestCount, 0);
  });

  it('notifications reach the caller without any match, and with TIMESTAMP even if it asked for no metadata', async () => {
    const c = await tb.conn({ attachRecv: Attach.ALL });
    await expectOk(c.send({ dst: b.id, cookie: 5n, flags: EXPECT_REPLY, timeoutNs: inFuture(5000) }));
    await expectOk(b.recv(RecvFlags.DROP));
    const [m] = await drain(c);
    assert.deepEqual(m!.items.map((x) => x.type), [ItemType.REPLY_DEAD, ItemType.TIMESTAMP], 'only TIMESTAMP for kernel messages');
  });
});
