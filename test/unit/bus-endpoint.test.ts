/**
 * Custom endpoints, after test-endpoint.c and kdbus-abi.md §3.2, §3.15: who may make them,
 * name rules, and the endpoint policy that filters what their connections may see (NAME_*
 * notifications, LIST, CONN_INFO), talk to and own (ipc/kdbus/endpoint.c, connection.c).
 */
import assert from 'node:assert/strict';
import { Attach, HelloFlags, ItemType, ListFlags, MakeFlags, PolicyAccess, U64_MAX } from '../../src/abi/constants';
import { Errno } from '../../src/abi/errno';
import type { ItemWriter } from '../../src/abi/items';
import type { Endpoint } from '../../src/bus/endpoint';
import { credsOf, expectOk, TestBus, type TestClient } from '../helpers/kdbus-client';
import {
  type Access, broadcastFrom, drain, drainTypes, endpointClient, expectErrno, makeEndpoint, policyGroup, registrar,
  sendTo, unprivileged, UNPRIV_UID, world,
} from './bus-fixtures';

const UID = process.getuid!();
const { SEE, TALK, OWN } = { SEE: PolicyAccess.SEE, TALK: PolicyAccess.TALK, OWN: PolicyAccess.OWN };

/** install_name_add_match() of test-endpoint.c: NAME_ADD of `name`, any old and new id. */
function nameAddMatch(c: TestClient, name: string) {
  return c.addMatch(0x3n, (w) => {
    const at = w.beginItem(ItemType.NAME_ADD);
    w.u64(U64_MAX).u64(0).u64(U64_MAX).u64(0).bytes(Buffer.from(`${name}\0`, 'latin1'));
    w.endItem(at);
  });
}

function epUpdate(owner: TestClient, groups: Array<[string, Access[]]>) {
  return owner.cmd('ENDPOINT_UPDATE', 0n, (w: ItemWriter) => {
    for (const [name, access] of groups) policyGroup(w, name, access);
  });
}

describe('bus endpoints: ENDPOINT_MAKE (kdbus-abi §3.2, test-endpoint.c)', () => {
  let tb: TestBus;
  beforeEach(async () => {
    tb = await TestBus.create();
  });
  afterEach(() => tb.destroy());

  it('refuses long names, foreign uid prefixes, duplicates and anything but MAKE_NAME', async () => {
    assert.equal((await makeEndpoint(tb, `${UID}-${'X'.repeat(63)}`)).errno, Errno.ENAMETOOLONG);
    assert.equal((await makeEndpoint(tb, `${UID + 1}-foobar`)).errno, Errno.EINVAL);
    assert.equal((await makeEndpoint(tb, 'foobar')).errno, Errno.EINVAL);
    assert.equal((await makeEndpoint(tb, `${UID}-bad name`)).errno, Errno.EINVAL);
    assert.equal((await makeEndpoint(tb, `${UID}-foo`, 4n)).errno, Errno.EINVAL);
    const withName = tb.client();
    await expectErrno(withName.cmd('ENDPOINT_MAKE', 0n, (w) => {
      w.string(ItemType.MAKE_NAME, `${UID}-named`);
      policyGroup(w, 'foo.bar', [world(SEE)]);
    }), 'EINVAL');
    await expectErrno(tb.client().cmd('ENDPOINT_MAKE', 0n), 'EINVAL');
    assert.deepEqual([...tb.bus.endpoints.keys()], ['bus']);
    assert.equal((await makeEndpoint(tb, `${UID}-foo`)).errno, 0);
    assert.equal((await makeEndpoint(tb, `${UID}-foo`)).errno, Errno.EEXIST);
  });

  it('is for the bus owner on the default endpoint; EPERM comes before the struct is even read', async () => {
    const r = await makeEndpoint(tb, `${UNPRIV_UID}-unpriv_costum_ep`, 0n, unprivileged());
    assert.equal(r.errno, Errno.EPERM);
    await expectErrno(tb.client(unprivileged()).ioctl('ENDPOINT_MAKE', Buffer.alloc(8)), 'EPERM');
    const { ep } = await makeEndpoint(tb, `${UID}-foo`);
    const onCustom = endpointClient(ep!);
    await expectErrno(onCustom.cmd('ENDPOINT_MAKE', 0n, (w) => w.string(ItemType.MAKE_NAME, `${UID}-bar`)), 'EPERM');
    // A privileged opener with another euid is an owner, and names the endpoint by its euid.
    const priv = { creds: credsOf(4000), privileged: true };
    assert.equal((await makeEndpoint(tb, `${UID}-priv`, 0n, priv)).errno, Errno.EINVAL);
    const made = await makeEndpoint(tb, '4000-priv', MakeFlags.ACCESS_WORLD, priv);
    assert.equal(made.errno, 0);
    assert.deepEqual([made.ep!.uid, made.ep!.gid, made.ep!.mode], [4000, 4000, 0o666]);
  });

  it('makes nodes with the requested access mode', async () => {
    const modes: number[] = [];
    for (const [i, flags] of [0n, MakeFlags.ACCESS_GROUP, MakeFlags.ACCESS_WORLD].entries()) {
      modes.push((await makeEndpoint(tb, `${UID}-m${i}`, flags)).ep!.mode);
    }
    assert.deepEqual(modes, [0o600, 0o660, 0o666]);
  });

  it('answers ENDPOINT_UPDATE negotiation and checks the policy syntax', async () => {
    const { owner } = await makeEndpoint(tb, `${UID}-foo`);
    await expectErrno(owner.cmd('ENDPOINT_UPDATE', 1n), 'EINVAL');
    const n = await owner.cmd('ENDPOINT_UPDATE', 1n << 63n);
    assert.deepEqual([n.errno, n.out.readBigUInt64LE(8)], [0, 0n]);
    await expectErrno(owner.cmd('ENDPOINT_UPDATE', 0n, (w) => w.itemU64(ItemType.POLICY_ACCESS, 3n, 0n, 0n)), 'EINVAL');
    await expectErrno(epUpdate(owner, [['foo.bar', [{ type: 3, access: 7 }]]]), 'EINVAL');
    await expectErrno(epUpdate(owner, [['foo', [world(SEE)]]]), 'EINVAL');
    await expectErrno(epUpdate(owner, [['foo.bar', [world(SEE)]], ['foo.bar', [world(TALK)]]]), 'EEXIST');
    // No limit on names, and a final ".*" is accepted (stored as written).
    await expectErrno(epUpdate(owner, [['foo.bar', [world(SEE)]], ['foo.baz', []], ['foo.*', [world(SEE)]]]), 0);
  });
});


describe('bus endpoints: custom endpoint policy (test_custom_endpoint)', () => {
  let tb: TestBus;
  let env: TestClient;
  let owner: TestClient;
  let ep: Endpoint;
  const name = 'foo.bar.baz';
  beforeEach(async () => {
    tb = await TestBus.create();
    env = await tb.conn();
    const made = await makeEndpoint(tb, `${UID}-foo`);
    owner = made.owner;
    ep = made.ep!;
  });
  afterEach(() => tb.destroy());

  it('hides names it does not grant SEE on, until ENDPOINT_UPDATE grants it', async () => {
    const reader = await endpointClient(ep).connect();
    await expectOk(reader.addMatch(0x1n, (w) => w.itemU64(ItemType.ID_ADD, U64_MAX, 0n)));
    await expectOk(reader.addMatch(0x2n, (w) => w.itemU64(ItemType.ID_REMOVE, U64_MAX, 0n)));
    await expectOk(nameAddMatch(reader, name));
    await expectErrno(endpointClient(ep).hello({ flags: HelloFlags.MONITOR }), 'EOPNOTSUPP');

    const epConn = await endpointClient(ep).connect();
    const idAdd = await drain(reader);
    assert.deepEqual(idAdd.map((m) => [m.items[0]!.type, m.items[0]!.payload.readBigUInt64LE(0)]), [[ItemType.ID_ADD, epConn.id]]);

    await expectOk(nameAddMatch(epConn, name));
    await expectOk(env.acquire(name));
    assert.deepEqual(await drain(epConn), []);
    await expectErrno(epConn.connInfo(0n, name, 0n), 'ESRCH');
    await expectErrno(epConn.connInfo(0n, 'random.crappy.name', 0n), 'ESRCH');
    await expectErrno(epConn.connInfo(env.id, undefined, 0n), 'ENXIO');
    await expectErrno(epConn.connInfo(0x0fff_ffff_ffff_ffffn, undefined, 0n), 'ENXIO');
    // Peers are seen through their names only, so a nameless connection does not even see itself.
    await expectErrno(epConn.connInfo(epConn.id, undefined, 0n), 'ENXIO');
    assert.deepEqual(await drain(reader), []);

    await expectOk(env.release(name));
    assert.deepEqual(await drain(reader), []);
    await expectOk(epUpdate(owner, [[name, [world(SEE)]]]));
    await expectOk(env.acquire(name));
    const [add] = await drain(epConn);
    const p = add!.items[0]!.payload;
    assert.deepEqual(
      [add!.items[0]!.type, p.readBigUInt64LE(0), p.readBigUInt64LE(16), p.toString('latin1', 32, p.length - 1)],
      [ItemType.NAME_ADD, 0n, env.id, name],
    );
    const [seen] = await drain(reader);
    assert.equal(seen!.items[0]!.payload.toString('latin1', 32, seen!.items[0]!.payload.length - 1), name);
    await expectErrno(epConn.connInfo(0n, name, 0n), 0);
    await expectErrno(epConn.connInfo(env.id, undefined, 0n), 0);
  });

  it('filters LIST names but not unique ids; a connection whose names are all hidden vanishes from UNIQUE|NAMES', async () => {
    await expectOk(env.acquire(name));
    const hiddenOnly = await tb.conn();
    await expectOk(hiddenOnly.acquire('foo.hidden'));
    const epConn = await endpointClient(ep).connect();
    await expectOk(epUpdate(owner, [[name, [world(SEE)]]]));
    assert.deepEqual((await epConn.list(ListFlags.NAMES)).records.map((r) => [r.id, r.name]), [[env.id, name]]);
    assert.deepEqual((await epConn.list(ListFlags.UNIQUE)).records.map((r) => r.id), [env.id, hiddenOnly.id, epConn.id]);
    assert.deepEqual(
      (await epConn.list(ListFlags.UNIQUE | ListFlags.NAMES)).records.map((r) => [r.id, r.name]),
      [[env.id, name], [epConn.id, undefined]],
    );
  });

  it('grants SEE per name through USER and GROUP entries of the caller\'s credentials', async () => {
    await expectOk(env.acquire(name));
    const u = await endpointClient(ep, unprivileged()).connect();
    await expectOk(epUpdate(owner, [[name, [{ type: 1, access: SEE, id: UNPRIV_UID + 7 }]]]));
    await expectErrno(u.connInfo(0n, name, 0n), 'ESRCH');
    await expectOk(epUpdate(owner, [[name, [{ type: 2, access: SEE, id: UNPRIV_UID }]]]));
    await expectErrno(u.connInfo(0n, name, 0n), 0);
    // The whole policy is replaced each time.
    await expectOk(epUpdate(owner, [['other.name', [world(OWN)]]]));
    await expectErrno(u.connInfo(0n, name, 0n), 'ESRCH');
  });

  it('requires endpoint TALK on a name of the destination, even between equal uids and for the bus owner\'s uid', async () => {
    await expectOk(env.acquire(name));
    const nameless = await tb.conn();
    const epConn = await endpointClient(ep).connect();
    await expectErrno(sendTo(epConn, env.id), 'EPERM');
    await expectOk(epUpdate(owner, [[name, [world(SEE)]]]));
    await expectErrno(sendTo(epConn, env.id), 'EPERM');
    await expectOk(epUpdate(owner, [[name, [world(TALK)]]]));
    await expectErrno(sendTo(epConn, env.id), 0);
    await expectErrno(epConn.send({ name, cookie: 2n }), 0);
    assert.equal((await drain(env)).length, 2);
    await expectErrno(sendTo(epConn, nameless.id), 'EPERM');
    // The other direction is decided on the default endpoint: env is an owner.
    await expectErrno(sendTo(env, epConn.id), 0);
  });

  it('needs the bus policy on top of the endpoint policy for other uids, and for owning names', async () => {
    await expectOk(env.acquire(name));
    await expectOk(epUpdate(owner, [[name, [world(TALK)]], ['foo.mine', [world(OWN)]]]));
    const u = await endpointClient(ep, unprivileged()).connect();
    await expectErrno(sendTo(u, env.id), 'EPERM');
    const h = await registrar(tb, name, [world(TALK)]);
    assert.equal(h.errno, 0);
    await expectErrno(sendTo(u, env.id), 0);

    // Nobody on a custom endpoint is an owner: root needs both policies to own a name.
    const rootOnEp = await endpointClient(ep).connect();
    await expectErrno(rootOnEp.acquire('foo.mine'), 'EPERM');
    await expectErrno(rootOnEp.acquire('foo.other'), 'EPERM');
    const h2 = await registrar(tb, 'foo.other', [world(OWN)]);
    assert.equal(h2.errno, 0);
    await expectErrno(rootOnEp.acquire('foo.other'), 'EPERM');
    const h3 = await registrar(tb, 'foo.mine', [world(OWN)]);
    assert.equal(h3.errno, 0);
    await expectErrno(rootOnEp.acquire('foo.mine'), 0);
  });

  it('filters broadcasts to its connections by the sender\'s names', async () => {
    const listener = await endpointClient(ep).connect();
    await expectOk(listener.matchAllBroadcasts());
    await expectOk(broadcastFrom(env, 1n));
    assert.deepEqual(await drain(listener), []);
    await expectOk(env.acquire(name));
    await expectOk(epUpdate(owner, [[name, [world(TALK)]]]));
    await expectOk(broadcastFrom(env, 2n));
    assert.deepEqual((await drain(listener)).map((m) => m.cookie), [2n]);
  });

  it('refuses special connections: monitors (EOPNOTSUPP), activators and holders (EPERM), faked creds (EPERM)', async () => {
    await expectErrno(endpointClient(ep).hello({ flags: HelloFlags.MONITOR }), 'EOPNOTSUPP');
    for (const flags of [HelloFlags.ACTIVATOR, HelloFlags.POLICY_HOLDER]) {
      await expectErrno(endpointClient(ep).hello({ flags, items: (w) => w.string(ItemType.NAME, 'a.b') }), 'EPERM');
    }
    await expectErrno(endpointClient(ep).hello({ items: (w) => w.itemU64(ItemType.CREDS, 0n, 0n, 0n, 0n, 0n, 0n, 0n, 0n) }), 'EPERM');
  });

  it('announces its connections to everyone: ID notifications are not filtered', async () => {
    await env.matchAllNotifications();
    const e = await endpointClient(ep).connect();
    e.close();
    assert.deepEqual(await drainTypes(env), [ItemType.ID_ADD, ItemType.ID_REMOVE]);
    // And the creator info is there for endpoint connections too.
    const c = await endpointClient(ep).connect();
    await expectErrno(c.cmd('BUS_CREATOR_INFO', 0n, undefined, (w) => w.u64(0).u64(Attach.ALL).u64(0).u64(0)), 0);
  });
});
