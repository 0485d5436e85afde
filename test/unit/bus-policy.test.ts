/**
 * Bus policy, after test-policy.c, test-policy-priv.c and kdbus-abi.md §3.15: secure
 * defaults, policy holders and activators granting OWN and TALK through USER, GROUP and
 * WORLD entries, the owner and privileged shortcuts, and the credentials each check uses
 * (ipc/kdbus/connection.c kdbus_conn_policy_own_name / _talk, policy.c).
 */
import assert from 'node:assert/strict';
import { HelloFlags, ItemType, ListFlags, NameFlags, PolicyAccess } from '../../src/abi/constants';
import { Errno } from '../../src/abi/errno';
import type { Opener } from '../../src/bus/caller';
import { credsOf, expectOk, selfCreds, TestBus, type TestClient } from '../helpers/kdbus-client';
import {
  type Access, broadcastFrom, drain, expectErrno, group, OTHER_UID, registrar, sendTo, unprivileged, UNPRIV_UID,
  updatePolicy, user, world,
} from './bus-fixtures';

const { SEE, TALK, OWN } = { SEE: PolicyAccess.SEE, TALK: PolicyAccess.TALK, OWN: PolicyAccess.OWN };

describe('bus policy (test-policy.c, test-policy-priv.c, kdbus-abi §3.15)', () => {
  let tb: TestBus;
  beforeEach(async () => {
    tb = await TestBus.create();
  });
  afterEach(() => tb.destroy());

  const as = (opener: Partial<Opener>) => tb.conn({}, opener);
  const unpriv = (uid = UNPRIV_UID) => tb.conn({}, unprivileged(uid));
  const holder = async (name: string, access: Access[]) => {
    const r = await registrar(tb, name, access);
    assert.equal(r.errno, 0);
    return r.client;
  };
  /** NAME_ACQUIRE by a fresh unprivileged connection, which then goes away again. */
  const unprivCanOwn = async (name: string, uid = UNPRIV_UID) => {
    const c = await unpriv(uid);
    const r = await c.acquire(name);
    c.close();
    if (r.errno !== 0 && r.errno !== Errno.EPERM) throw new Error(`unexpected errno ${r.errno}`);
    return r.errno === 0;
  };
  /** A unicast to a well-known name by a fresh unprivileged connection; true if it was delivered. */
  const unprivCanTalk = async (name: string, dst: TestClient, uid = UNPRIV_UID) => {
    const c = await unpriv(uid);
    const r = await c.send({ name, cookie: 0xdeadbeefn, payload: [Buffer.from('x')] });
    c.close();
    const got = await drain(dst);
    assert.equal(got.length, r.errno === 0 ? 1 : 0, 'delivered exactly when SEND succeeded');
    if (r.errno !== 0 && r.errno !== Errno.EPERM) throw new Error(`unexpected errno ${r.errno}`);
    return r.errno === 0;
  };

  it('does not let an unprivileged uid own any name on a fresh bus; owners can', async () => {
    const w = await tb.conn();
    const u = await unpriv();
    await w.matchAllNotifications();
    const r = await u.acquire('com.example.a');
    assert.equal(r.errno, Errno.EPERM);
    assert.equal(r.out.readBigUInt64LE(16), 0n, 'return_flags');
    assert.deepEqual(await drain(w), [], 'no NAME_ADD');
    assert.deepEqual((await w.list(ListFlags.NAMES)).records, []);
    // The name is checked before the policy.
    await expectErrno(u.acquire('invalid'), 'EINVAL');
    // Owner by euid (no capability), and by capability (another euid).
    await expectErrno((await as({ creds: selfCreds(), privileged: false })).acquire('com.example.a'), 0);
    await expectErrno((await as({ creds: credsOf(OTHER_UID), privileged: true })).acquire('com.example.b'), 0);
  });

  it('lets the same uid talk, refuses other uids, and lets owners talk to everyone', async () => {
    const a1 = await unpriv();
    const a2 = await unpriv();
    const b = await unpriv(OTHER_UID);
    const root = await tb.conn();
    await expectErrno(sendTo(a1, a2.id), 0);
    await expectErrno(sendTo(a1, b.id), 'EPERM');
    await expectErrno(sendTo(b, a1.id), 'EPERM');
    await expectErrno(sendTo(a1, root.id), 'EPERM');
    await expectErrno(sendTo(root, b.id), 0);
    await expectErrno(sendTo(await as({ creds: credsOf(4000), privileged: true }), a1.id), 0);
    await expectErrno(sendTo(await as({ creds: selfCreds(), privileged: false }), b.id), 0);
    assert.equal((await drain(a2)).length, 1);
    assert.equal((await drain(b)).length, 2);
    assert.equal((await drain(a1)).length, 1);
    assert.deepEqual(await drain(root), []);
  });

  it('delivers a broadcast only to receivers that may talk to the sender', async () => {
    const root = await tb.conn();
    const u1 = await unpriv();
    const u2 = await unpriv();
    const other = await unpriv(OTHER_UID);
    for (const c of [root, u1, u2, other]) await expectOk(c.matchAllBroadcasts());
    const got = async () => Promise.all([root, u1, u2, other].map(async (c) => (await drain(c)).map((m) => m.cookie)));

    await expectOk(broadcastFrom(root, 1n));
    assert.deepEqual(await got(), [[1n], [], [], []]);
    await expectOk(broadcastFrom(u1, 2n));
    assert.deepEqual(await got(), [[2n], [2n], [2n], []]);
    await expectOk(broadcastFrom(other, 3n));
    assert.deepEqual(await got(), [[3n], [], [], [3n]]);
  });

  it('grants OWN through holder policies: WORLD, GROUP, USER; SEE and TALK are not OWN', async () => {
    const conn = await tb.conn();
    const a = await holder('com.example.a', []);
    await expectErrno(conn.acquire('com.example.a'), 0);
    conn.close();
    assert.equal(await unprivCanOwn('com.example.a'), false);
    await expectErrno(updatePolicy(await unpriv(), 'com.example.a', [world(OWN)]), 'EOPNOTSUPP');

    const cases: Array<[Access[], boolean]> = [
      [[world(OWN)], true],
      [[group(UNPRIV_UID, OWN)], true],
      [[group(1, OWN)], false],
      [[user(UNPRIV_UID, OWN)], true],
      [[user(1, OWN)], false],
      [[group(UNPRIV_UID, SEE), user(UNPRIV_UID, TALK), world(TALK), world(SEE)], false],
      [[user(1, OWN), user(2, OWN), user(UNPRIV_UID, OWN), user(3, OWN), user(4, OWN)], true],
      [[], false],
    ];
    for (const [access, allowed] of cases) {
      await expectOk(updatePolicy(a, 'com.example.a', access));
      assert.equal(await unprivCanOwn('com.example.a'), allowed, JSON.stringify(access));
    }
  });

  it('grants TALK through USER, GROUP and WORLD entries; OWN implies TALK, SEE does not', async () => {
    const b = await tb.conn();
    await expectOk(b.acquire('com.example.b'));
    const root = await tb.conn();
    await expectOk(root.send({ name: 'com.example.b', cookie: 1n }));
    assert.equal((await drain(b)).length, 1);
    assert.equal(await unprivCanTalk('com.example.b', b), false);

    const a = await holder('com.example.b', []);
    const cases: Array<[Access[], boolean]> = [
      [[user(UNPRIV_UID, TALK)], true],
      [[group(UNPRIV_UID, TALK)], true],
      [[world(TALK)], true],
      [[user(0, OWN), user(1, TALK), user(UNPRIV_UID, SEE), user(3, TALK), user(4, TALK)], false],
      [[world(OWN)], true],
      [[world(SEE)], false],
      [[world(TALK)], true],
      [[], false],
    ];
    for (const [access, allowed] of cases) {
      await expectOk(updatePolicy(a, 'com.example.b', access));
      assert.equal(await unprivCanTalk('com.example.b', b), allowed, JSON.stringify(access));
    }
  });

  it('lets an unprivileged owner of a granted name be reached by its own uid and by others through the policy', async () => {
    const a = await holder('com.example.c', [user(UNPRIV_UID, OWN)]);
    const owner = await unpriv();
    await expectErrno(owner.acquire('com.example.c'), 0);
    assert.equal(await unprivCanTalk('com.example.c', owner), true);
    assert.equal(await unprivCanTalk('com.example.c', owner, OTHER_UID), false);
    await expectOk(updatePolicy(a, 'com.example.c', [user(UNPRIV_UID, OWN), world(TALK)]));
    assert.equal(await unprivCanTalk('com.example.c', owner, OTHER_UID), true);
  });

  it('removes the policy with its holder: talking and owning are refused again', async () => {
    const conn = await holder('com.example.c', [world(OWN)]);
    const owner = await tb.conn();
    await expectOk(owner.acquire('com.example.c'));
    assert.equal(await unprivCanTalk('com.example.c', owner), true);
    conn.close();
    assert.equal(await unprivCanTalk('com.example.c', owner), false);
    // The ownership itself stays.
    assert.equal((await owner.connInfo(0n, 'com.example.c')).info!.id, owner.id);
    await expectOk(owner.release('com.example.c'));
    assert.equal(await unprivCanOwn('com.example.c'), false);
    // The name is free for another holder now.
    await holder('com.example.c', [world(TALK)]);
  });

  it('follows test-policy.c: holder names must be valid, duplicates only between exact and ".*" forms', async () => {
    assert.equal((await registrar(tb, '.example.a', [])).errno, Errno.EINVAL);
    assert.equal((await registrar(tb, 'example', [])).errno, Errno.EINVAL);
    const a = await holder('com.example.a', []);
    const b = await holder('com.example.b', []);
    const see = [user(process.geteuid!(), SEE)];
    await expectErrno(updatePolicy(a, 'com.example.a', see), 0);
    await expectErrno(updatePolicy(b, 'com.example.a', see), 'EEXIST');
    await expectErrno(updatePolicy(b, 'com.example.a.*', see), 0);
    await expectErrno(updatePolicy(a, 'com.example.a.*', see), 'EEXIST');
    await expectErrno(updatePolicy(a, 'com.example.*', see), 0);
    await expectErrno(updatePolicy(b, 'com.example.a', see), 0);
    await expectErrno(updatePolicy(b, 'com.example.*', see), 'EEXIST');
    await expectErrno(updatePolicy(b, '.example.*', see), 'EINVAL');
    await expectErrno(updatePolicy(b, 'example', see), 'EINVAL');
    // At most one name per holder; a refused update keeps the old policy.
    await expectErrno(b.update((w) => {
      w.string(ItemType.NAME, 'com.example.x');
      w.string(ItemType.NAME, 'com.example.y');
    }), 'E2BIG');
    await expectErrno(updatePolicy(a, 'com.example.a', see), 'EEXIST');
  });

  it('checks the POLICY_ACCESS items of an UPDATE', async () => {
    const a = await holder('com.example.a', [world(OWN)]);
    await expectErrno(a.update((w) => w.itemU64(ItemType.POLICY_ACCESS, 3n, 1n, 0n)), 'EINVAL');
    await expectErrno(updatePolicy(a, 'com.example.a', [{ type: 4, access: TALK }]), 'EINVAL');
    await expectErrno(updatePolicy(a, 'com.example.a', [{ type: 3, access: 3 }]), 'EINVAL');
    await expectErrno(updatePolicy(a, 'com.example.a', [user(0xffff_ffff, OWN)]), 'EINVAL');
    // None of that replaced the policy.
    assert.equal(await unprivCanOwn('com.example.a'), true);
  });

  it('uses the sender\'s current credentials for TALK and OWN, the receiver\'s open-time ones for broadcasts', async () => {
    const a = await unpriv();
    const b = await unpriv(OTHER_UID);
    await expectErrno(sendTo(a, b.id), 'EPERM');
    // As after setuid(): the file was opened as UNPRIV_UID, the task now runs as OTHER_UID.
    a.creds = credsOf(OTHER_UID);
    await expectErrno(sendTo(a, b.id), 0);
    await holder('com.example.x', [user(OTHER_UID, OWN)]);
    await expectErrno(a.acquire('com.example.x'), 0);
    await expectErrno((await unpriv()).acquire('com.example.x', NameFlags.QUEUE), 'EPERM');

    // b receives broadcasts as the uid it opened with, whatever its task's uid is now.
    const sender = await unpriv();
    await expectOk(b.matchAllBroadcasts());
    b.creds = credsOf(UNPRIV_UID);
    await drain(b);
    await expectOk(broadcastFrom(sender, 7n));
    assert.deepEqual(await drain(b), []);
  });

  it('matches USER on the euid, GROUP on the egid or a supplementary group', async () => {
    const owner = await tb.conn();
    await expectOk(owner.acquire('com.example.g'));
    const h = await holder('com.example.g', [group(4242, TALK)]);
    const U = UNPRIV_UID;
    const talk = async (creds: ReturnType<typeof credsOf>) => {
      const r = await sendTo(await as({ creds, privileged: false }), owner.id);
      await drain(owner);
      return r.errno === 0;
    };
    assert.equal(await talk({ ...credsOf(U), groups: [17, 4242] }), true);
    assert.equal(await talk({ ...credsOf(U), egid: 4242 }), true);
    assert.equal(await talk({ ...credsOf(U), gid: 4242, sgid: 4242, fsgid: 4242 }), false);
    await expectOk(updatePolicy(h, 'com.example.g', [user(OTHER_UID, TALK)]));
    assert.equal(await talk({ ...credsOf(U), euid: OTHER_UID }), true);
    assert.equal(await talk({ ...credsOf(OTHER_UID), euid: U }), false);
  });

  it('compares the sender\'s euid with the receiver\'s real uid for same-user talk', async () => {
    const dst = await as({ creds: { ...credsOf(UNPRIV_UID), euid: OTHER_UID }, privileged: false });
    await expectErrno(sendTo(await unpriv(UNPRIV_UID), dst.id), 0);
    await expectErrno(sendTo(await unpriv(OTHER_UID), dst.id), 'EPERM');
    await expectErrno(sendTo(await as({ creds: { ...credsOf(OTHER_UID), euid: UNPRIV_UID }, privileged: false }), dst.id), 0);
    await expectErrno(sendTo(await as({ creds: { ...credsOf(UNPRIV_UID), euid: OTHER_UID }, privileged: false }), dst.id), 'EPERM');
  });

  it('grants TALK for any name the destination holds, never for a name it only waits for', async () => {
    const dst = await tb.conn();
    const first = await tb.conn();
    await expectOk(dst.acquire('com.example.plain'));
    await holder('com.example.talk', [world(TALK)]);
    const u = await unpriv();
    await expectErrno(sendTo(u, dst.id), 'EPERM');
    await expectOk(first.acquire('com.example.talk'));
    await expectOk(dst.acquire('com.example.talk', NameFlags.QUEUE));
    await expectErrno(sendTo(u, dst.id), 'EPERM');
    await expectOk(first.release('com.example.talk'));
    await expectErrno(sendTo(u, dst.id), 0);
  });

  it('lets activators upload policy for their name, and takes it away with them', async () => {
    const act = await registrar(tb, 'com.example.act', [world(OWN)], HelloFlags.ACTIVATOR);
    assert.equal(act.errno, 0);
    const u = await unpriv();
    await expectErrno(u.send({ name: 'com.example.act', cookie: 3n }), 0);
    assert.equal((await act.client.mustRecv()).cookie, 3n);
    await expectErrno(u.acquire('com.example.act'), 0);
    act.client.close();
    await expectErrno((await unpriv()).acquire('com.example.act', NameFlags.QUEUE), 'EPERM');
    // Two names in an activator's HELLO cannot even be expressed: NAME appears once.
    const two = await registrar(tb, 'com.example.two', [world(OWN)], HelloFlags.ACTIVATOR);
    assert.equal(two.errno, 0);
    await expectErrno(updatePolicy(two.client, 'com.example.two', [world(TALK)]), 'EOPNOTSUPP');
  });

  it('checks policy from the broadcast receiver\'s side through the sender\'s names', async () => {
    const ownerA = await tb.conn();
    await expectOk(ownerA.acquire('com.example.broadcastA'));
    const listener = await unpriv();
    await expectOk(listener.matchAllBroadcasts());
    await expectOk(broadcastFrom(ownerA, 1n));
    assert.deepEqual(await drain(listener), []);
    await holder('com.example.broadcastA', [world(TALK)]);
    await expectOk(broadcastFrom(ownerA, 2n));
    assert.deepEqual((await drain(listener)).map((m) => m.cookie), [2n]);
    // An unprivileged owner of a name others may OWN is heard by every uid.
    await holder('com.example.broadcastB', [world(OWN)]);
    const uOwner = await unpriv();
    await expectOk(uOwner.acquire('com.example.broadcastB'));
    const stranger = await unpriv(OTHER_UID);
    await expectOk(stranger.matchAllBroadcasts());
    await expectOk(broadcastFrom(uOwner, 3n));
    assert.deepEqual((await drain(stranger)).map((m) => m.cookie), [3n]);
    assert.deepEqual((await drain(listener)).map((m) => m.cookie), [3n]);
  });
});
