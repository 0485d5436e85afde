/**
 * Monitors, after test-monitor.c and kdbus-abi.md §3.18: they see a copy of all traffic
 * without matches, cause no ID notifications, cannot take part in it, and get the
 * metadata their attach_flags_recv asks for.
 */
import assert from 'node:assert/strict';
import { Attach, HelloFlags, ItemType, ListFlags, MsgFlags } from '../../src/abi/constants';
import { TestBus, type TestClient, expectOk } from '../helpers/kdbus-client';
import { broadcastFrom, drain, drainTypes, endpointClient, expectErrno, itemTypes, makeEndpoint, registrar, sendTo, unprivileged } from './bus-fixtures';

const UID = process.getuid!();

describe('bus monitor (test-monitor.c, kdbus-abi §3.18)', () => {
  let tb: TestBus;
  let env: TestClient;
  let conn: TestClient;
  beforeEach(async () => {
    tb = await TestBus.create();
    env = await tb.conn();
    conn = await tb.conn();
  });
  afterEach(() => tb.destroy());

  it('connects and disconnects without ID_ADD / ID_REMOVE', async () => {
    await conn.matchAllNotifications();
    const monitor = await tb.conn({ flags: HelloFlags.MONITOR });
    assert.deepEqual(await drainTypes(conn), []);
    monitor.close();
    assert.deepEqual(await drainTypes(conn), []);
    // Monitors are never listed.
    assert.deepEqual((await conn.list(ListFlags.UNIQUE)).records.map((r) => r.id), [env.id, conn.id]);
  });

  it('cannot acquire or release names, add or remove matches, send, or say BYEBYE', async () => {
    const monitor = await tb.conn({ flags: HelloFlags.MONITOR });
    await expectErrno(monitor.acquire('foo.bar.baz'), 'EOPNOTSUPP');
    await expectErrno(monitor.release('foo.bar.baz'), 'EOPNOTSUPP');
    await expectErrno(monitor.matchAllBroadcasts(), 'EOPNOTSUPP');
    await expectErrno(monitor.removeMatch(1n), 'EOPNOTSUPP');
    await expectErrno(sendTo(monitor, env.id), 'EOPNOTSUPP');
    await expectErrno(monitor.byebye(), 'EOPNOTSUPP');
    // Nor can anyone address it.
    await expectErrno(sendTo(env, monitor.id), 'ENXIO');
  });

  it('gets a copy of unicasts and broadcasts, matched or not', async () => {
    const monitor = await tb.conn({ flags: HelloFlags.MONITOR });
    const cookie = 0xdeadbeefn;
    await expectOk(sendTo(env, conn.id, cookie));
    assert.equal((await conn.mustRecv()).cookie, cookie);
    assert.equal((await monitor.mustRecv()).cookie, cookie);
    // Nobody has a match for this broadcast; the monitor still sees it.
    await expectOk(broadcastFrom(env, cookie + 1n));
    assert.deepEqual(await drain(conn), []);
    const copies = await drain(monitor);
    assert.deepEqual(copies.map((m) => [m.cookie, m.srcId, (m.flags & MsgFlags.SIGNAL) !== 0n]), [[cookie + 1n, env.id, true]]);
  });

  it('sees notifications, calls and replies; a unicast signal the destination drops too', async () => {
    const monitor = await tb.conn({ flags: HelloFlags.MONITOR });
    const late = await tb.conn();
    await expectOk(late.acquire('com.example.late'));
    await expectOk(env.send({ dst: conn.id, cookie: 5n, flags: MsgFlags.EXPECT_REPLY }));
    await conn.mustRecv();
    await expectOk(conn.send({ dst: env.id, cookieReply: 5n }));
    await expectOk(env.send({ dst: conn.id, cookie: 6n, bloom: { data: Buffer.alloc(64) } }));
    const seen = await drain(monitor);
    const what = (m: (typeof seen)[number]) => {
      if (m.srcId === 0n) return ['kernel', m.items[0]!.type];
      if (m.flags & MsgFlags.EXPECT_REPLY) return ['call', m.cookie, m.srcId, m.dstId];
      if (m.flags & MsgFlags.SIGNAL) return ['signal', m.cookie, m.srcId, m.dstId];
      return ['reply', m.cookieReply, m.srcId, m.dstId];
    };
    assert.deepEqual(seen.map(what), [
      ['kernel', ItemType.ID_ADD], ['kernel', ItemType.NAME_ADD],
      ['call', 5n, env.id, conn.id], ['reply', 5n, conn.id, env.id], ['signal', 6n, env.id, conn.id],
    ]);
    assert.deepEqual(await drain(conn), [], 'the signal had no match at its destination');
  });

  it('gets the metadata its attach_flags_recv asks for', async () => {
    const monitor = await tb.conn({ flags: HelloFlags.MONITOR });
    await expectOk(monitor.update((w) => w.itemU64(ItemType.ATTACH_FLAGS_SEND, Attach.ALL).itemU64(ItemType.ATTACH_FLAGS_RECV, 0n)));
    await expectOk(broadcastFrom(env, 1n));
    const bare = await monitor.mustRecv();
    assert.equal(bare.cookie, 1n);
    assert.ok(!bare.items.some((i) => i.type === ItemType.TIMESTAMP));
    assert.deepEqual(itemTypes(bare), [ItemType.PAYLOAD_OFF, ItemType.BLOOM_FILTER]);

    await expectOk(monitor.update((w) => w.itemU64(ItemType.ATTACH_FLAGS_SEND, Attach.ALL).itemU64(ItemType.ATTACH_FLAGS_RECV, Attach.TIMESTAMP | Attach.CREDS)));
    await expectOk(broadcastFrom(env, 2n));
    const some = await monitor.mustRecv();
    assert.equal(some.cookie, 2n);
    assert.deepEqual(itemTypes(some), [ItemType.PAYLOAD_OFF, ItemType.BLOOM_FILTER, ItemType.CREDS, ItemType.TIMESTAMP]);
    assert.ok(!some.items.some((i) => i.type === ItemType.PID_COMM));
  });

  it('is for the bus owner on the default endpoint only', async () => {
    await expectErrno(tb.client(unprivileged()).hello({ flags: HelloFlags.MONITOR }), 'EPERM');
    const { ep } = await makeEndpoint(tb, `${UID}-ep`);
    await expectErrno(endpointClient(ep!).hello({ flags: HelloFlags.MONITOR }), 'EOPNOTSUPP');
  });

  it('keeps receiving when the monitored connections are holders or activators', async () => {
    const monitor = await tb.conn({ flags: HelloFlags.MONITOR });
    const act = await registrar(tb, 'com.example.act', [], HelloFlags.ACTIVATOR);
    await expectOk(env.send({ name: 'com.example.act', cookie: 9n }));
    assert.equal((await act.client.mustRecv()).cookie, 9n);
    assert.deepEqual((await drain(monitor)).map((m) => (m.srcId === 0n ? m.items[0]!.type : Number(m.cookie))), [ItemType.ID_ADD, ItemType.NAME_ADD, 9]);
  });
});
