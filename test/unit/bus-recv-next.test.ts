import assert from 'node:assert/strict';
import { Errno, KdbusError } from '../../src/abi/errno';
import { Attach, HelloFlags, MsgFlags, Off, RecvReturn } from '../../src/abi/constants';
import { recvNext, type RecvResult } from '../../src/bus/recv';
import { TestBus, expectOk, memfd, type TestClient } from '../helpers/kdbus-client';

const fresh = (): RecvResult => ({ dropped: -1, offset: -1, size: -1, msgFlags: -1n });

/**
 * Two connections on a bus of their own; b accepts files and takes all metadata but the
 * timestamp, so the same history gives the same pool bytes on another bus.
 */
async function pair(): Promise<{ tb: TestBus; a: TestClient; b: TestClient }> {
  const tb = await TestBus.create();
  const a = await tb.conn();
  const b = await tb.conn({ flags: HelloFlags.ACCEPT_FD, attachRecv: Attach.ALL & ~Attach.TIMESTAMP });
  return { tb, a, b };
}

/** What the RECV ioctl reports, in recvNext's terms, plus the slice it published. */
async function ioctlRecv(c: TestClient): Promise<{ errno: number; r: RecvResult; slice?: Buffer }> {
  const res = await c.recv();
  const r: RecvResult = {
    dropped: Number(res.out.readBigUInt64LE(Off.recv.dropped_msgs)),
    offset: Number(res.out.readBigUInt64LE(Off.recv.msg_offset)),
    size: Number(res.out.readBigUInt64LE(Off.recv.msg_msg_size)),
    msgFlags: res.out.readBigUInt64LE(Off.recv.msg_return_flags),
  };
  return { errno: res.errno, r, slice: r.size > 0 ? c.pool(r.offset, r.size) : undefined };
}

function directRecv(c: TestClient): { got: boolean; r: RecvResult; slice?: Buffer } {
  const r = fresh();
  const got = recvNext(c.conn, c.context(), r);
  return { got, r, slice: r.size > 0 ? c.pool(r.offset, r.size) : undefined };
}

describe('recvNext (RECV for the daemon\'s own connections)', () => {
  it('takes the same message into the same pool bytes as the RECV ioctl, files included', async () => {
    // The same history on two fresh buses: one receiver uses the ioctl, the other recvNext.
    const runs = [];
    for (const direct of [false, true]) {
      const { tb, a, b } = await pair();
      const fd = a.fds.add(memfd('file'));
      await expectOk(a.send({ dst: b.id, cookie: 5n, payload: [Buffer.from('first')], fds: [fd] }));
      await expectOk(a.send({ dst: b.id, cookie: 6n, payload: [Buffer.from('second')] }));
      const got = direct ? directRecv(b) : await ioctlRecv(b);
      // The slice is the receiver's to FREE, exactly once.
      await expectOk(b.free(BigInt(got.r.offset)));
      assert.equal((await b.free(BigInt(got.r.offset))).errno, Errno.ENXIO);
      runs.push({ got, installed: [...b.fds.installed.keys()], next: (await b.mustRecv()).cookie });
      tb.destroy();
    }
    const [viaIoctl, viaDirect] = runs;
    assert.equal((viaIoctl!.got as { errno: number }).errno, 0);
    assert.equal((viaDirect!.got as { got: boolean }).got, true);
    assert.deepEqual(viaDirect!.got.r, viaIoctl!.got.r);
    assert.ok(viaDirect!.got.slice!.equals(viaIoctl!.got.slice!), 'pool bytes differ');
    assert.equal(viaDirect!.got.r.msgFlags, 0n);
    assert.equal(viaDirect!.got.slice!.readBigUInt64LE(Off.msg.cookie), 5n);
    // One file installed by each path; the second message is left queued by both.
    assert.equal(viaDirect!.installed.length, 1);
    assert.deepEqual(viaDirect!.installed, viaIoctl!.installed);
    assert.equal(viaDirect!.next, 6n);
    assert.equal(viaIoctl!.next, 6n);
  });

  it('says INCOMPLETE_FDS when the files cannot be installed', async () => {
    const { tb, a, b } = await pair();
    await expectOk(a.send({ dst: b.id, payload: [Buffer.from('x')], fds: [a.fds.add(memfd('f'))] }));
    b.fds.failInstall = true;
    const { got, r } = directRecv(b);
    assert.equal(got, true);
    assert.equal(r.msgFlags, RecvReturn.INCOMPLETE_FDS);
    tb.destroy();
  });

  it('returns false on an empty queue with the fields RECV writes before EAGAIN', async () => {
    const { tb, b } = await pair();
    const { got, r } = directRecv(b);
    assert.equal(got, false);
    assert.deepEqual(r, { dropped: 0, offset: b.conn.pool.size, size: 0, msgFlags: 0n });
    tb.destroy();
  });

  it('reports lost messages once, with or without a message to take', async () => {
    const { tb, a, b } = await pair();
    b.conn.lostMessage();
    b.conn.lostMessage();
    const empty = directRecv(b);
    assert.equal(empty.got, false);
    assert.equal(empty.r.dropped, 2);
    b.conn.lostMessage();
    await expectOk(a.send({ dst: b.id, payload: [Buffer.from('x')] }));
    const taken = directRecv(b);
    assert.equal(taken.got, true);
    assert.equal(taken.r.dropped, 1);
    assert.equal(directRecv(b).r.dropped, 0);
    tb.destroy();
  });

  it('keeps the reply tracker of a call it takes: the callee can answer, the caller gets it', async () => {
    const { tb, a, b } = await pair();
    const call = a.send({ dst: b.id, flags: MsgFlags.EXPECT_REPLY, sync: true, cookie: 41n, payload: [Buffer.from('ping')] });
    const { got, r } = directRecv(b);
    assert.equal(got, true);
    assert.equal(b.pool(r.offset, r.size).readBigUInt64LE(Off.msg.cookie), 41n);
    await expectOk(b.send({ dst: a.id, cookieReply: 41n, payload: [Buffer.from('pong')] }));
    const reply = await call;
    assert.equal(reply.errno, 0);
    assert.deepEqual(a.decode(Number(reply.replyOffset), Number(reply.replySize)).data.map((d) => d.toString()), ['pong']);
    // A second answer has no tracker left.
    assert.equal((await b.send({ dst: a.id, cookieReply: 41n, payload: [Buffer.from('again')] })).errno, Errno.EBADSLT);
    tb.destroy();
  });

  it('fails with ESHUTDOWN once the connection is gone, as the ioctl does', async () => {
    const { tb, b } = await pair();
    const conn = b.conn;
    await expectOk(b.byebye());
    assert.throws(() => recvNext(conn, b.context(), fresh()), (e) => e instanceof KdbusError && e.errno === Errno.ESHUTDOWN);
    tb.destroy();
  });
});
