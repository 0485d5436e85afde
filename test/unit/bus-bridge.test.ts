/**
 * The bus's side of the upstream bridge (src/bus/bridge.ts): what NAME_ACQUIRE, NAME_RELEASE,
 * disconnecting, SEND to an unowned name and the TALK policy do while a bridge is set. A
 * recording bridge stands for the real one here; the real one is tested against dbus-daemon
 * and dbus-broker in test/integration/upstream-bridge.test.ts.
 */
import assert from 'node:assert/strict';
import { ItemType, MsgFlags, NameFlags, Off } from '../../src/abi/constants';
import { fail } from '../../src/abi/errno';
import type { BusBridge } from '../../src/bus/bridge';
import { acquireName } from '../../src/bus/cmd-names';
import type { Connection } from '../../src/bus/connection';
import { NameExistsError } from '../../src/bus/names';
import { TestBus, type TestClient } from '../helpers/kdbus-client';
import { drain, expectErrno, unprivileged } from './bus-fixtures';

const { REPLACE_EXISTING, ALLOW_REPLACEMENT, QUEUE, IN_QUEUE, PRIMARY, ACQUIRED } = NameFlags;

/** A bridge that records what the bus asks of it and answers as told. */
class RecordingBridge implements BusBridge {
  readonly own = new Set<bigint>();
  readonly calls: string[] = [];
  /** How upstream answers NAME_ACQUIRE: take the name here with these flags, or refuse. */
  answer: { take: bigint } | { refuse: 'EEXIST' | 'EPERM' } = { take: 0n };
  unowned: Connection | undefined;

  isOwn(conn: Connection): boolean {
    return this.own.has(conn.id);
  }

  async acquireName(conn: Connection, name: string, flags: bigint): Promise<bigint> {
    this.calls.push(`acquire ${conn.id} ${name} ${flags}`);
    await new Promise((r) => setImmediate(r));
    const a = this.answer;
    if ('take' in a) return acquireName(conn, name, flags | a.take);
    if (a.refuse === 'EEXIST') throw new NameExistsError(flags & (ALLOW_REPLACEMENT | QUEUE), name);
    throw fail('EPERM', 'upstream says no');
  }

  nameReleased(conn: Connection, name: string): void {
    this.calls.push(`release ${conn.id} ${name}`);
  }

  connectionGone(conn: Connection): void {
    this.calls.push(`gone ${conn.id}`);
  }

  matchesChanged(conn: Connection): Promise<void> | undefined {
    this.calls.push(`matches ${conn.id} ${conn.bus.matches.db(conn)?.messageEntries ?? 0}`);
    return undefined;
  }

  unownedName(name: string): Connection | undefined {
    this.calls.push(`unowned ${name}`);
    return this.unowned;
  }
}

describe('bus: the upstream bridge contract', () => {
  let tb: TestBus;
  let bridge: RecordingBridge;
  /** Stands for an upstream peer: the bridge's own connection. */
  let standIn: TestClient;

  beforeEach(async () => {
    tb = await TestBus.create();
    bridge = new RecordingBridge();
    standIn = await tb.conn();
    bridge.own.add(standIn.id);
    tb.bus.bridge = bridge;
  });
  afterEach(() => tb.destroy());

  it('NAME_ACQUIRE of a client waits for the bridge, and the name is taken as it decided', async () => {
    const client = await tb.conn();
    const r = await client.acquire('org.example.A', ALLOW_REPLACEMENT);
    assert.equal(r.errno, 0);
    assert.deepEqual(bridge.calls, [`acquire ${client.id} org.example.A ${ALLOW_REPLACEMENT}`]);
    assert.equal(r.out.readBigUInt64LE(Off.cmd.return_flags), ALLOW_REPLACEMENT | PRIMARY | ACQUIRED);
    assert.equal(tb.bus.names.primaryOwner('org.example.A')?.id, client.id);
  });

  it('upstream refusing gives the client EEXIST with its return flags, or the errno it chose', async () => {
    const client = await tb.conn();
    bridge.answer = { refuse: 'EEXIST' };
    const exists = await client.acquire('org.example.B', ALLOW_REPLACEMENT);
    await expectErrno(exists, 'EEXIST');
    assert.equal(exists.out.readBigUInt64LE(Off.cmd.return_flags), ALLOW_REPLACEMENT);
    bridge.answer = { refuse: 'EPERM' };
    await expectErrno(client.acquire('org.example.B'), 'EPERM');
    assert.equal(tb.bus.names.primaryOwner('org.example.B'), undefined);
  });

  it('a name upstream queues the client for is queued here behind its stand-in owner', async () => {
    await expectErrno(standIn.acquire('org.example.C', ALLOW_REPLACEMENT), 0);
    const client = await tb.conn();
    bridge.answer = { take: QUEUE };
    const r = await client.acquire('org.example.C');
    assert.equal(r.errno, 0);
    assert.equal(r.out.readBigUInt64LE(Off.cmd.return_flags) & IN_QUEUE, IN_QUEUE);
    assert.equal(tb.bus.names.primaryOwner('org.example.C')?.id, standIn.id);
  });

  it("the bridge's own connections own names without asking it", async () => {
    await expectErrno(standIn.acquire('org.example.D', REPLACE_EXISTING | ALLOW_REPLACEMENT), 0);
    assert.deepEqual(bridge.calls, []);
    assert.equal(tb.bus.names.primaryOwner('org.example.D')?.id, standIn.id);
  });

  it('NAME_RELEASE and disconnecting tell the bridge about clients, not about its own', async () => {
    const client = await tb.conn();
    await expectErrno(client.acquire('org.example.E'), 0);
    await expectErrno(client.release('org.example.E'), 0);
    await expectErrno(client.release('org.example.E'), 'ESRCH');
    await expectErrno(standIn.acquire('org.example.F'), 0);
    await expectErrno(standIn.release('org.example.F'), 0);
    client.close();
    standIn.close();
    assert.deepEqual(bridge.calls, [`acquire ${client.id} org.example.E 0`, `release ${client.id} org.example.E`, `gone ${client.id}`]);
  });

  it('MATCH_ADD and MATCH_REMOVE of clients tell the bridge how many entries can take messages', async () => {
    const client = await tb.conn();
    await client.matchAllNotifications();
    const notificationsOnly = bridge.calls.filter((c) => c.startsWith(`matches ${client.id} `));
    assert.ok(notificationsOnly.length > 0 && notificationsOnly.every((c) => c === `matches ${client.id} 0`), notificationsOnly.join('\n'));
    bridge.calls.length = 0;
    await expectErrno(client.matchAllBroadcasts(0x77n), 0);
    await expectErrno(client.removeMatch(0x77n), 0);
    await expectErrno(standIn.matchAllBroadcasts(0x77n), 0);
    assert.deepEqual(bridge.calls, [`matches ${client.id} 1`, `matches ${client.id} 0`]);
  });

  it('a message to a name nobody owns goes to the connection the bridge names, unless NO_AUTO_START', async () => {
    const client = await tb.conn();
    bridge.unowned = standIn.conn;
    await expectErrno(client.send({ name: 'org.example.Upstream', flags: MsgFlags.EXPECT_REPLY, payload: [Buffer.from('x')] }), 0);
    const [m] = await drain(standIn);
    assert.equal(m?.srcId, client.id);
    const dstName = m?.items.find((i) => i.type === ItemType.DST_NAME);
    assert.equal(dstName?.payload.toString('latin1').replace(/\0+$/, ''), 'org.example.Upstream');
    await expectErrno(client.send({ name: 'org.example.Upstream', flags: MsgFlags.NO_AUTO_START, payload: [Buffer.from('x')] }), 'ESRCH');
    bridge.unowned = undefined;
    await expectErrno(client.send({ name: 'org.example.Upstream', payload: [Buffer.from('x')] }), 'ESRCH');
    assert.deepEqual(bridge.calls, ['unowned org.example.Upstream', 'unowned org.example.Upstream']);
  });

  it("another user's client may talk to a stand-in without a TALK policy; upstream's policy judges it", async () => {
    const stranger = await tb.conn({}, unprivileged());
    await expectErrno(stranger.send({ dst: standIn.id, payload: [Buffer.from('x')] }), 0);
    const rootClient = await tb.conn();
    await expectErrno(stranger.send({ dst: rootClient.id, payload: [Buffer.from('x')] }), 'EPERM');
  });
});
