import assert from 'node:assert/strict';
import { Errno } from '../../src/abi/errno';
import { ItemType, MsgFlags, NameFlags } from '../../src/abi/constants';
import { TestBus, expectOk } from '../helpers/kdbus-client';

describe('bus smoke', () => {
  it('hello, unicast with payload, recv, names, broadcast, sync call', async () => {
    const tb = await TestBus.create();
    const a = await tb.conn();
    const b = await tb.conn();
    assert.ok(b.id > a.id);
    // a gets ID_ADD of b? (no match yet) -> nothing queued
    assert.equal((await a.recv()).errno, Errno.EAGAIN);
    const s = await a.send({ dst: b.id, payload: [Buffer.from('hello world'), 5, Buffer.from('x')] });
    assert.equal(s.errno, 0);
    const m = await b.mustRecv();
    assert.equal(m.srcId, a.id);
    assert.deepEqual(m.data.map((d) => d.toString()), ['hello world', 'x']);

    await expectOk(b.acquire('org.example.B'));
    const l = await a.list(2n);
    assert.deepEqual(l.records.map((r) => [r.id, r.name, r.nameFlags]), [[b.id, 'org.example.B', NameFlags.PRIMARY]]);

    await expectOk(b.matchAllBroadcasts());
    await expectOk(a.send({ bloom: { data: Buffer.alloc(64) }, payload: [Buffer.from('sig')] }));
    const sig = await b.mustRecv();
    assert.equal(sig.flags & MsgFlags.SIGNAL, MsgFlags.SIGNAL);

    const call = a.send({ name: 'org.example.B', flags: MsgFlags.EXPECT_REPLY, sync: true, cookie: 77n, payload: [Buffer.from('ping')] });
    const req = await b.mustRecv();
    assert.equal(req.cookie, 77n);
    await expectOk(b.send({ dst: a.id, cookieReply: 77n, payload: [Buffer.from('pong')] }));
    const rep = await call;
    assert.equal(rep.errno, 0);
    const replyMsg = a.decode(Number(rep.replyOffset), Number(rep.replySize));
    assert.deepEqual(replyMsg.data.map((d) => d.toString()), ['pong']);

    await a.matchAllNotifications();
    b.close();
    const gone: number[] = [];
    for (;;) {
      const r = await a.recv();
      if (r.errno) break;
      gone.push(r.msg!.items[0]!.type);
    }
    assert.deepEqual(gone, [ItemType.NAME_REMOVE, ItemType.ID_REMOVE]);
    tb.destroy();
  });
});
