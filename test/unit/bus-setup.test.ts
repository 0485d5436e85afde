/**
 * Behaviour of the setup side of the bus, modelled on the kdbus selftests (test-bus.c,
 * test-connection.c, test-free.c) and kdbus-abi.md §1.5, §2.4, §3.1, §3.3, §3.4, §3.12, §3.14:
 * the handle state machine, BUS_MAKE, HELLO, UPDATE, BYEBYE, FREE and teardown. Expected
 * numbers come from the kernel sources (ipc/kdbus/handle.c, bus.c, connection.c, pool.c).
 */
import assert from 'node:assert/strict';
import {
  ALIGN8, Attach, type CmdName, HelloFlags, ItemType, KDBUS_DST_ID_BROADCAST, KDBUS_FLAG_NEGOTIATE, Limits,
  MakeFlags, MsgFlags, Off, PolicyAccess, StructSize, U64_MAX,
} from '../../src/abi/constants';
import { Errno } from '../../src/abi/errno';
import { ItemWriter } from '../../src/abi/items';
import { Domain } from '../../src/bus/domain';
import { Poll } from '../../src/bus/handle';
import type { NodeHost } from '../../src/bus/node-host';
import type { Endpoint } from '../../src/bus/endpoint';
import { credsOf, expectOk, selfCreds, TestBus, TestClient } from '../helpers/kdbus-client';
import {
  drain, drainTypes, endpointClient, expectErrno, expectThrows, makeEndpoint, OTHER_UID, registrar, sendTo,
  unprivileged, UNPRIV_UID, user, world,
} from './bus-fixtures';

const UID = process.getuid!();
const POOL_SIZE = 16n * 1024n * 1024n;

/** Every ioctl that needs a connected (or endpoint-owner) handle. */
const NON_SETUP: CmdName[] = [
  'ENDPOINT_UPDATE', 'BYEBYE', 'NAME_ACQUIRE', 'NAME_RELEASE', 'LIST', 'CONN_INFO', 'BUS_CREATOR_INFO', 'UPDATE',
  'MATCH_ADD', 'MATCH_REMOVE', 'SEND', 'RECV', 'FREE',
];

function busMake(c: TestClient, name: string, o: { flags?: bigint; bloomSize?: bigint; nHash?: bigint; attach?: bigint } = {}) {
  return c.cmd('BUS_MAKE', o.flags ?? 0n, (w) => {
    w.itemU64(ItemType.BLOOM_PARAMETER, o.bloomSize ?? 64n, o.nHash ?? 1n);
    w.string(ItemType.MAKE_NAME, name);
    if (o.attach !== undefined) w.itemU64(ItemType.ATTACH_FLAGS_SEND, o.attach);
  });
}

function control(domain: Domain, opener?: Parameters<TestBus['client']>[0]): TestClient {
  return new TestClient({ kind: 'control', domain }, opener);
}

/** A kdbus_cmd_hello laid out field by field, for the cases TestClient.hello() cannot express. */
function helloStruct(o: { size?: bigint; flags?: bigint; pool?: bigint; send?: bigint; recv?: bigint } = {}): Buffer {
  const b = Buffer.alloc(StructSize.cmd_hello);
  b.writeBigUInt64LE(o.size ?? BigInt(StructSize.cmd_hello), 0);
  b.writeBigUInt64LE(o.flags ?? HelloFlags.ACCEPT_FD, 8);
  b.writeBigUInt64LE(o.send ?? Attach.ALL, Off.hello.attach_flags_send);
  b.writeBigUInt64LE(o.recv ?? Attach.ALL, Off.hello.attach_flags_recv);
  b.writeBigUInt64LE(o.pool ?? POOL_SIZE, Off.hello.pool_size);
  return b;
}

/** Records the nodes a transport would create and remove. */
class RecordingHost implements NodeHost {
  readonly live = new Map<string, { mode: number; uid: number; gid: number }>();
  readonly removed: string[] = [];
  addEndpoint(ep: Endpoint): void {
    this.live.set(ep.path, { mode: ep.mode, uid: ep.uid, gid: ep.gid });
  }
  removeEndpoint(ep: Endpoint): void {
    this.live.delete(ep.path);
    this.removed.push(ep.path);
  }
}

describe('bus setup: handle state machine (kdbus-abi §1.5)', () => {
  let tb: TestBus;
  beforeEach(async () => {
    tb = await TestBus.create();
  });
  afterEach(() => tb.destroy());

  it('answers an unknown ioctl number with ENOTTY in every state', async () => {
    const fresh = tb.client();
    const conn = await tb.conn();
    for (const c of [fresh, conn, tb.control, control(tb.domain)]) {
      await expectErrno(c.ioctl(0x40189599, Buffer.alloc(24)), 'ENOTTY');
      await expectErrno(c.ioctl(0, Buffer.alloc(24)), 'ENOTTY');
    }
  });

  it('refuses every non-setup ioctl with EBADFD before HELLO', async () => {
    const fresh = tb.client();
    for (const name of NON_SETUP) await expectErrno(fresh.ioctl(name, Buffer.alloc(64)), 'EBADFD');
    // The handle is still unused: HELLO works afterwards.
    await fresh.connect();
  });

  it('accepts only BUS_MAKE on the control node, and BUS_MAKE nowhere else', async () => {
    const ctl = control(tb.domain);
    await expectErrno(ctl.hello(), 'EBADFD');
    await expectErrno(ctl.cmd('ENDPOINT_MAKE', 0n, (w) => w.string(ItemType.MAKE_NAME, `${UID}-ep`)), 'EBADFD');
    for (const name of NON_SETUP) await expectErrno(ctl.ioctl(name, Buffer.alloc(64)), 'EBADFD');
    await expectErrno(busMake(tb.client(), `${UID}-on-endpoint`), 'EBADFD');
    // The control handle was not consumed by any of that.
    await expectErrno(busMake(ctl, `${UID}-after-refusals`), 0);
    ctl.close();
  });

  it('allows exactly one setup ioctl per handle', async () => {
    const c = await tb.conn();
    await expectErrno(c.hello(), 'EBADFD');
    await expectErrno(c.cmd('ENDPOINT_MAKE', 0n, (w) => w.string(ItemType.MAKE_NAME, `${UID}-ep`)), 'EBADFD');
    await expectErrno(busMake(c, `${UID}-x`), 'EBADFD');
    await expectErrno(c.ioctl('ENDPOINT_UPDATE', Buffer.alloc(24)), 'EBADFD');
  });

  it('leaves a bus owner handle with no valid ioctl at all', async () => {
    const name = `${UID}-second-on-same-fd`;
    await expectErrno(busMake(tb.control, name), 'EBADFD');
    assert.equal(tb.domain.buses.has(name), false);
    for (const n of NON_SETUP) await expectErrno(tb.control.ioctl(n, Buffer.alloc(64)), 'EBADFD');
    await expectErrno(tb.control.hello(), 'EBADFD');
  });

  it('lets an endpoint owner handle do ENDPOINT_UPDATE only', async () => {
    const { owner } = await makeEndpoint(tb, `${UID}-ep`);
    await expectErrno(owner.hello(), 'EBADFD');
    await expectErrno(owner.cmd('ENDPOINT_MAKE', 0n, (w) => w.string(ItemType.MAKE_NAME, `${UID}-ep2`)), 'EBADFD');
    for (const n of NON_SETUP.filter((x) => x !== 'ENDPOINT_UPDATE')) await expectErrno(owner.ioctl(n, Buffer.alloc(64)), 'EBADFD');
    await expectErrno(owner.cmd('ENDPOINT_UPDATE', 0n), 0);
  });

  it('undoes an endpoint whose return_flags cannot be written back (EFAULT)', async () => {
    const c = tb.client();
    const w = new ItemWriter();
    w.u64(0).u64(0).u64(0).string(ItemType.MAKE_NAME, `${UID}-ro`);
    const b = Buffer.from(w.finish());
    b.writeBigUInt64LE(BigInt(b.length), 0);
    await expectErrno(c.ioctlAt('ENDPOINT_MAKE', c.mem.put(b, { readOnly: true }), b.length), 'EFAULT');
    assert.equal(tb.bus.endpoints.has(`${UID}-ro`), false);
    await expectErrno(c.cmd('ENDPOINT_MAKE', 0n, (x) => x.string(ItemType.MAKE_NAME, `${UID}-ro`)), 0);
  });

  it('does not change the handle state on negotiation', async () => {
    const c = tb.client();
    const r = await c.hello({ flags: KDBUS_FLAG_NEGOTIATE });
    assert.equal(r.errno, 0);
    // The kernel writes the supported flags back and does nothing else.
    assert.equal(r.out.readBigUInt64LE(8), HelloFlags.ACCEPT_FD | HelloFlags.ACTIVATOR | HelloFlags.POLICY_HOLDER | HelloFlags.MONITOR);
    assert.equal(r.out.readBigUInt64LE(Off.hello.id), 0n);
    await expectErrno(c.ioctl('RECV', Buffer.alloc(StructSize.cmd_recv)), 'EBADFD');
    await c.connect();

    const ctl = control(tb.domain);
    const name = `${UID}-negotiated`;
    const n = await busMake(ctl, name, { flags: KDBUS_FLAG_NEGOTIATE });
    assert.equal(n.errno, 0);
    assert.equal(n.out.readBigUInt64LE(8), MakeFlags.ACCESS_GROUP | MakeFlags.ACCESS_WORLD);
    assert.equal(tb.domain.buses.has(name), false);
    await expectErrno(busMake(ctl, name), 0);
    ctl.close();

    const e = tb.client();
    const m = await e.cmd('ENDPOINT_MAKE', KDBUS_FLAG_NEGOTIATE, (w) => w.string(ItemType.MAKE_NAME, `${UID}-negotiated`));
    assert.deepEqual([m.errno, m.out.readBigUInt64LE(8)], [0, MakeFlags.ACCESS_GROUP | MakeFlags.ACCESS_WORLD]);
    assert.equal(tb.bus.endpoints.has(`${UID}-negotiated`), false);
    await e.connect();
  });

  it('reports ESHUTDOWN for every connected ioctl after BYEBYE, ENDPOINT_UPDATE included', async () => {
    const c = await tb.conn();
    await expectOk(c.byebye());
    for (const n of NON_SETUP) await expectErrno(c.ioctl(n, Buffer.alloc(64)), 'ESHUTDOWN');
    // Setup ioctls still see a used handle.
    await expectErrno(c.hello(), 'EBADFD');
    assert.equal(c.handle.poll(), Poll.ERR | Poll.HUP);
  });

  it('polls ERR|HUP until connected, then OUT, and IN while something is queued', async () => {
    const a = tb.client();
    assert.equal(a.handle.poll(), Poll.ERR | Poll.HUP);
    await a.connect();
    assert.equal(a.handle.poll(), Poll.OUT | Poll.WRNORM);
    const b = await tb.conn();
    await expectOk(sendTo(b, a.id));
    assert.equal(a.handle.poll(), Poll.OUT | Poll.WRNORM | Poll.IN | Poll.RDNORM);
    await drain(a);
    assert.equal(a.handle.poll(), Poll.OUT | Poll.WRNORM);
    assert.equal(tb.control.handle.poll(), Poll.ERR | Poll.HUP);
  });
});

describe('bus setup: BUS_MAKE (kdbus-abi §3.1, test-bus.c)', () => {
  let domain: Domain;
  let host: RecordingHost;
  const controls: TestClient[] = [];
  const ctl = (opener?: Parameters<TestBus['client']>[0]) => {
    const c = control(domain, opener);
    controls.push(c);
    return c;
  };
  beforeEach(() => {
    domain = new Domain();
    host = new RecordingHost();
    domain.hosts.push(host);
  });
  afterEach(() => {
    for (const c of controls.splice(0)) c.close();
    domain.shutdown();
  });

  it('checks the name: uid prefix, characters, length', async () => {
    await expectErrno(busMake(ctl(), 'foo'), 'EINVAL');
    await expectErrno(busMake(ctl(), `${UID}-blah@123`), 'EINVAL');
    await expectErrno(busMake(ctl(), `${UID}-blah-`), 'EINVAL');
    await expectErrno(busMake(ctl(), `${UID + 1}-blah`), 'EINVAL');
    await expectErrno(busMake(ctl(), `${UID}-${'x'.repeat(Limits.SYSNAME_MAX_LEN)}`), 'ENAMETOOLONG');
    // 63 characters is the longest name.
    const longest = `${UID}-`.padEnd(Limits.SYSNAME_MAX_LEN, 'y');
    await expectErrno(busMake(ctl(), longest), 0);
    assert.equal(domain.buses.size, 1);
  });

  it('takes the prefix from the euid and charges the bus to the real uid', async () => {
    const creds = { ...credsOf(2000), euid: 3000 };
    await expectErrno(busMake(ctl({ creds, privileged: false }), '2000-real'), 'EINVAL');
    await expectErrno(busMake(ctl({ creds, privileged: false }), '3000-effective'), 0);
    assert.equal(domain.buses.get('3000-effective')!.uid, 3000);
    // The bus directory belongs to the euid/egid.
    assert.deepEqual(host.live.get('3000-effective/bus'), { mode: 0o600, uid: 3000, gid: 2000 });
  });

  it('requires MAKE_NAME and BLOOM_PARAMETER and accepts only ACCESS_* flags', async () => {
    await expectErrno(ctl().cmd('BUS_MAKE', 0n, (w) => w.string(ItemType.MAKE_NAME, `${UID}-nobloom`)), 'EINVAL');
    await expectErrno(ctl().cmd('BUS_MAKE', 0n, (w) => w.itemU64(ItemType.BLOOM_PARAMETER, 64n, 1n)), 'EINVAL');
    await expectErrno(busMake(ctl(), `${UID}-flags`, { flags: 4n }), 'EINVAL');
    await expectErrno(busMake(ctl(), `${UID}-attach`, { attach: Attach.ALL + 1n }), 'EINVAL');
    await expectErrno(ctl().cmd('BUS_MAKE', 0n, (w) => {
      w.itemU64(ItemType.BLOOM_PARAMETER, 64n, 1n).string(ItemType.MAKE_NAME, `${UID}-a`).string(ItemType.MAKE_NAME, `${UID}-b`);
    }), 'EINVAL');
    assert.equal(domain.buses.size, 0);
    await expectErrno(busMake(ctl(), `${UID}-any`, { attach: Attach.ANY }), 0);
    assert.equal(domain.buses.get(`${UID}-any`)!.creatorAttachMask, Attach.ALL);
  });

  it('checks the bloom parameters: size 8..4096 in steps of 8, n_hash >= 1', async () => {
    for (const [size, nHash] of [[0n, 1n], [4n, 1n], [12n, 1n], [4104n, 1n], [64n, 0n], [U64_MAX, 1n]] as const) {
      await expectErrno(busMake(ctl(), `${UID}-bloom-${size}-${nHash}`, { bloomSize: size, nHash }), 'EINVAL');
    }
    for (const [size, nHash] of [[8n, 1n], [4096n, 64n], [256n, U64_MAX]] as const) {
      await expectErrno(busMake(ctl(), `${UID}-bloom-${size}`, { bloomSize: size, nHash }), 0);
    }
    // Bloom parameters reach HELLO verbatim.
    const c = new TestClient({ kind: 'endpoint', ep: domain.buses.get(`${UID}-bloom-256`)!.defaultEndpoint });
    const r = await expectOk(c.hello());
    const item = c.pool(Number(r.out.readBigUInt64LE(Off.hello.offset)), 32);
    assert.deepEqual([item.readBigUInt64LE(16), item.readBigUInt64LE(24)], [256n, U64_MAX]);
    c.close();
  });

  it('reports bloom errors before an existing name, and EEXIST before the bus limit', async () => {
    await expectErrno(busMake(ctl(), `${UID}-dup`), 0);
    await expectErrno(busMake(ctl(), `${UID}-dup`, { bloomSize: 7n }), 'EINVAL');
    await expectErrno(busMake(ctl(), `${UID}-dup`), 'EEXIST');
    for (let i = 1; i < Limits.USER_MAX_BUSES; i++) await expectErrno(busMake(ctl(), `${UID}-fill-${i}`), 0);
    await expectErrno(busMake(ctl(), `${UID}-dup`), 'EEXIST');
    await expectErrno(busMake(ctl(), `${UID}-one-too-many`), 'EMFILE');
  });

  it('follows test-bus.c: EEXIST on a second fd, EBADFD on a used fd, success on a fresh fd', async () => {
    const fd1 = ctl();
    const fd2 = ctl();
    await expectErrno(busMake(fd1, `${UID}-t-1`), 0);
    await expectErrno(busMake(fd2, `${UID}-t-1`), 'EEXIST');
    assert.ok(host.live.has(`${UID}-t-1/bus`), 'the default endpoint node exists when BUS_MAKE returns');
    await expectErrno(busMake(fd1, `${UID}-t-2`), 'EBADFD');
    await expectErrno(busMake(fd2, `${UID}-t-2`), 0);
  });

  it('allows 16 buses per real uid; the 17th is EMFILE until one is closed', async () => {
    const fds: TestClient[] = [];
    for (let i = 0; i < Limits.USER_MAX_BUSES; i++) {
      const c = ctl();
      await expectErrno(busMake(c, `${UID}-limit-${i}`), 0);
      fds.push(c);
    }
    await expectErrno(busMake(ctl(), `${UID}-limit-x`), 'EMFILE');
    // Another real uid has its own allowance, even with the same euid.
    await expectErrno(busMake(ctl({ creds: { ...credsOf(2000), euid: UID }, privileged: false }), `${UID}-limit-other`), 0);
    fds[3]!.close();
    await expectErrno(busMake(ctl(), `${UID}-limit-x`), 0);
    await expectErrno(busMake(ctl(), `${UID}-limit-y`), 'EMFILE');
  });

  it('undoes a bus whose return_flags cannot be written back (EFAULT), leaving the handle unused', async () => {
    const fd = ctl();
    const name = `${UID}-readonly`;
    const w = new ItemWriter();
    w.u64(0).u64(0).u64(0).itemU64(ItemType.BLOOM_PARAMETER, 64n, 1n).string(ItemType.MAKE_NAME, name);
    const b = Buffer.from(w.finish());
    b.writeBigUInt64LE(BigInt(b.length), 0);
    const addr = fd.mem.put(b, { readOnly: true });
    await expectErrno(fd.ioctlAt('BUS_MAKE', addr, b.length), 'EFAULT');
    assert.equal(domain.buses.has(name), false);
    assert.equal(host.live.has(`${name}/bus`), false);
    await expectErrno(busMake(fd, name), 0);
  });

  it('makes any user the owner of the buses it creates', async () => {
    const mine = `${UNPRIV_UID}-mine`;
    await expectErrno(busMake(ctl(unprivileged()), mine), 0);
    const ep = domain.buses.get(mine)!.defaultEndpoint;
    const as = (opener: Parameters<TestBus['client']>[0]) => new TestClient({ kind: 'endpoint', ep }, opener);
    await expectErrno(as(unprivileged()).hello({ flags: HelloFlags.MONITOR }), 0);
    await expectErrno((await as(unprivileged()).connect()).acquire('com.example.mine'), 0);
    await expectErrno(as({ creds: selfCreds(), privileged: true }).hello({ flags: HelloFlags.MONITOR }), 0);
    await expectErrno(as(unprivileged(OTHER_UID)).hello({ flags: HelloFlags.MONITOR }), 'EPERM');
    await expectErrno((await as(unprivileged(OTHER_UID)).connect()).acquire('com.example.theirs'), 'EPERM');
    // Root without CAP_IPC_OWNER is just another user here.
    await expectErrno(as({ creds: selfCreds(), privileged: false }).hello({ flags: HelloFlags.MONITOR }), 'EPERM');
  });

  it('makes the node modes from the ACCESS flags', async () => {
    await expectErrno(busMake(ctl(), `${UID}-m0`), 0);
    await expectErrno(busMake(ctl(), `${UID}-mg`, { flags: MakeFlags.ACCESS_GROUP }), 0);
    await expectErrno(busMake(ctl(), `${UID}-mw`, { flags: MakeFlags.ACCESS_WORLD }), 0);
    assert.deepEqual(
      [`${UID}-m0`, `${UID}-mg`, `${UID}-mw`].map((b) => host.live.get(`${b}/bus`)!.mode),
      [0o600, 0o660, 0o666],
    );
  });

  it('numbers buses and connections from one domain-wide counter', async () => {
    const fd = ctl();
    await expectErrno(busMake(fd, `${UID}-ids-a`), 0);
    const a = domain.buses.get(`${UID}-ids-a`)!;
    assert.equal(a.id, 1n);
    const c1 = await new TestClient({ kind: 'endpoint', ep: a.defaultEndpoint }).connect();
    assert.equal(c1.id, 2n);
    await expectErrno(busMake(ctl(), `${UID}-ids-b`), 0);
    assert.equal(domain.buses.get(`${UID}-ids-b`)!.id, 3n);
    const c2 = await new TestClient({ kind: 'endpoint', ep: a.defaultEndpoint }).connect();
    assert.equal(c2.id, 4n);
  });

  it('tears the bus down when the owner handle closes, and frees the name', async () => {
    const fd = ctl();
    const name = `${UID}-gone`;
    await expectErrno(busMake(fd, name), 0);
    const ep = domain.buses.get(name)!.defaultEndpoint;
    const pending = new TestClient({ kind: 'endpoint', ep });
    const c = await new TestClient({ kind: 'endpoint', ep }).connect();
    fd.close();
    assert.equal(domain.buses.has(name), false);
    assert.deepEqual(host.removed, [`${name}/bus`]);
    for (const n of NON_SETUP) await expectErrno(c.ioctl(n, Buffer.alloc(64)), 'ESHUTDOWN');
    assert.equal(c.handle.poll(), Poll.ERR | Poll.HUP);
    await expectErrno(pending.hello(), 'ESHUTDOWN');
    await expectThrows(() => new TestClient({ kind: 'endpoint', ep }), 'ESHUTDOWN');
    await expectErrno(busMake(ctl(), name), 0);
  });
});

describe('bus setup: HELLO (kdbus-abi §3.3, test-connection.c)', () => {
  let tb: TestBus;
  beforeEach(async () => {
    tb = await TestBus.create();
  });
  afterEach(() => tb.destroy());

  it('follows test_hello: EFAULT, EINVAL for size, flags and pool size, then success', async () => {
    const c = tb.client();
    const h = helloStruct();
    const unaligned = c.mem.put(h, { misalign: 1 });
    await expectErrno(c.ioctlAt('HELLO', unaligned, h.length), 'EFAULT');
    await expectErrno(c.ioctl('HELLO', helloStruct({ size: 1n })), 'EINVAL');
    await expectErrno(c.ioctl('HELLO', helloStruct({ flags: 1n << 32n })), 'EINVAL');
    await expectErrno(c.ioctl('HELLO', helloStruct({ pool: 0n })), 'EINVAL');
    await expectErrno(c.ioctl('HELLO', helloStruct({ pool: 4097n })), 'EINVAL');
    const ok = helloStruct();
    ok.writeBigUInt64LE(U64_MAX, Off.hello.offset);
    const r = await c.ioctl('HELLO', ok);
    assert.equal(r.errno, 0);
    const offset = r.out.readBigUInt64LE(Off.hello.offset);
    assert.notEqual(offset, U64_MAX);
    await expectErrno(c.free(offset), 0);

    await expectErrno(tb.client().hello({ flags: HelloFlags.ACTIVATOR }), 'EINVAL');
  });

  it('refuses what kdbus_conn_new refuses, first problem first', async () => {
    const owner = () => tb.client();
    const unpriv = () => tb.client(unprivileged());
    const name = (n: string) => (w: ItemWriter) => w.string(ItemType.NAME, n);
    // pool size first, then the kind, then the NAME rules, all EINVAL.
    await expectErrno(unpriv().hello({ poolSize: 0n, flags: HelloFlags.MONITOR }), 'EINVAL');
    await expectErrno(unpriv().hello({ flags: HelloFlags.MONITOR | HelloFlags.ACTIVATOR, items: name('a.b') }), 'EINVAL');
    await expectErrno(unpriv().hello({ flags: HelloFlags.POLICY_HOLDER | HelloFlags.ACTIVATOR, items: name('a.b') }), 'EINVAL');
    await expectErrno(owner().hello({ items: name('a.b') }), 'EINVAL');
    await expectErrno(owner().hello({ flags: HelloFlags.POLICY_HOLDER }), 'EINVAL');
    await expectErrno(unpriv().hello({ flags: HelloFlags.ACTIVATOR, items: name('invalid') }), 'EINVAL');
    await expectErrno(owner().hello({ flags: HelloFlags.ACTIVATOR, items: name('.a.b') }), 'EINVAL');
    // A custom endpoint refuses monitors (EOPNOTSUPP) before anyone's permission is checked.
    const { ep } = await makeEndpoint(tb, `${UID}-ep`);
    await expectErrno(endpointClient(ep!, unprivileged()).hello({ flags: HelloFlags.MONITOR }), 'EOPNOTSUPP');
    await expectErrno(endpointClient(ep!).hello({ flags: HelloFlags.MONITOR, attachSend: Attach.ALL + 1n }), 'EOPNOTSUPP');
    // Non-owners: no special connections, no faked metadata; EPERM before attach masks.
    for (const flags of [HelloFlags.MONITOR, HelloFlags.ACTIVATOR, HelloFlags.POLICY_HOLDER]) {
      await expectErrno(unpriv().hello({ flags, items: flags === HelloFlags.MONITOR ? undefined : name('a.b') }), 'EPERM');
    }
    await expectErrno(endpointClient(ep!).hello({ flags: HelloFlags.ACTIVATOR, items: name('a.b') }), 'EPERM');
    const fakeCreds = (w: ItemWriter) => w.itemU64(ItemType.CREDS, 1n, 1n, 1n, 1n, 1n, 1n, 1n, 1n);
    await expectErrno(unpriv().hello({ items: fakeCreds, attachSend: Attach.ALL + 1n }), 'EPERM');
    await expectErrno(unpriv().hello({ items: (w) => w.itemU64(ItemType.PIDS, BigInt(process.pid), 0n, 0n) }), 'EPERM');
    await expectErrno(unpriv().hello({ items: (w) => w.string(ItemType.SECLABEL, 'unconfined') }), 'EPERM');
    await expectErrno(owner().hello({ attachSend: Attach.ALL + 1n }), 'EINVAL');
    await expectErrno(owner().hello({ attachRecv: Attach.ALL + 1n }), 'EINVAL');
    await expectErrno(owner().hello({ attachRecv: 1n << 63n }), 'EINVAL');
  });

  it('lets the owner be any kind, and ordinary connections be made by anyone', async () => {
    await expectErrno(tb.client().hello({ flags: HelloFlags.MONITOR }), 0);
    assert.equal((await registrar(tb, 'com.example.act', [], HelloFlags.ACTIVATOR)).errno, 0);
    assert.equal((await registrar(tb, 'com.example.holder', [])).errno, 0);
    // Owner by euid alone (no capability), and by capability alone (another euid).
    await expectErrno(tb.client({ creds: selfCreds(), privileged: false }).hello({ flags: HelloFlags.MONITOR }), 0);
    await expectErrno(tb.client({ creds: credsOf(OTHER_UID), privileged: true }).hello({ flags: HelloFlags.MONITOR }), 0);
    await expectErrno(tb.client(unprivileged()).hello({ attachSend: Attach.ANY, attachRecv: Attach.ANY }), 0);
  });

  it('writes back the whole 96-byte struct: bus flags, id, bloom slice, id128', async () => {
    const c = tb.client();
    const h = helloStruct({ send: Attach.ANY, recv: Attach.CREDS });
    h.writeBigUInt64LE(0xdeadn, Off.cmd.return_flags);
    h.writeBigUInt64LE(0xaaaan, Off.hello.id);
    const addr = c.mem.put(h);
    const before = c.mem.writes.length;
    await expectErrno(c.ioctlAt('HELLO', addr, h.length), 0);
    const out = c.mem.peek(addr, h.length);
    const whole = c.mem.writes.slice(before).find((w) => w.address === addr && w.data.length === StructSize.cmd_hello);
    assert.ok(whole, 'one write covers the whole kdbus_cmd_hello');
    // Input fields come back as the kernel read them (not sanitized), return_flags zeroed.
    assert.equal(out.readBigUInt64LE(0), 96n);
    assert.equal(out.readBigUInt64LE(8), HelloFlags.ACCEPT_FD);
    assert.equal(out.readBigUInt64LE(Off.cmd.return_flags), 0n);
    assert.equal(out.readBigUInt64LE(Off.hello.attach_flags_send), Attach.ANY);
    assert.equal(out.readBigUInt64LE(Off.hello.attach_flags_recv), Attach.CREDS);
    assert.equal(out.readBigUInt64LE(Off.hello.pool_size), POOL_SIZE);
    assert.equal(out.readBigUInt64LE(Off.hello.bus_flags), MakeFlags.ACCESS_WORLD);
    const id = out.readBigUInt64LE(Off.hello.id);
    assert.equal(id, tb.bus.id + 1n);
    assert.equal(out.readBigUInt64LE(Off.hello.items_size), 32n);
    const id128 = out.subarray(Off.hello.id128, Off.hello.id128 + 16);
    assert.equal(id128[6]! >> 4, 4, 'RFC 4122 version 4');
    assert.equal(id128[8]! >> 6, 2, 'RFC 4122 variant');
    assert.deepEqual(whole.data, out);

    // The slice holds exactly one BLOOM_PARAMETER item with the bus's parameters.
    const offset = out.readBigUInt64LE(Off.hello.offset);
    const item = c.pool(Number(offset), 32);
    assert.deepEqual(
      [0, 8, 16, 24].map((o) => item.readBigUInt64LE(o)),
      [32n, BigInt(ItemType.BLOOM_PARAMETER), 64n, 1n],
    );
    await expectErrno(c.free(offset), 0);

    // id128 is the bus's: the same for every connection of the bus, different on another bus.
    const d = tb.client();
    const r2 = await expectOk(d.hello());
    assert.deepEqual(r2.out.subarray(Off.hello.id128, Off.hello.id128 + 16), id128);
    const tb2 = await TestBus.create();
    const r3 = await expectOk(tb2.client().hello());
    assert.notDeepEqual(r3.out.subarray(Off.hello.id128, Off.hello.id128 + 16), id128);
    tb2.destroy();
  });

  it('announces ordinary connections with a 136-byte ID_ADD carrying the HELLO flags', async () => {
    const w = await tb.conn();
    await w.matchAllNotifications();
    const c = await tb.conn();
    const [m, ...rest] = await drain(w);
    assert.equal(rest.length, 0);
    assert.equal(m!.size, 136n);
    assert.equal(m!.sliceSize, 136);
    assert.deepEqual(
      [m!.flags, m!.priority, m!.dstId, m!.srcId, m!.payloadType, m!.cookie, m!.cookieReply],
      [MsgFlags.SIGNAL, 0n, KDBUS_DST_ID_BROADCAST, 0n, 0n, 0n, 0n],
    );
    const [idItem, ts] = m!.items;
    assert.deepEqual([idItem!.type, idItem!.size], [ItemType.ID_ADD, 32]);
    assert.deepEqual([idItem!.payload.readBigUInt64LE(0), idItem!.payload.readBigUInt64LE(8)], [c.id, HelloFlags.ACCEPT_FD]);
    assert.deepEqual([ts!.type, ts!.size], [ItemType.TIMESTAMP, 40]);
    assert.ok(ts!.payload.readBigUInt64LE(0) > 0n, 'seqnum');
    const mono = ts!.payload.readBigUInt64LE(8);
    assert.ok(mono <= process.hrtime.bigint() && mono > process.hrtime.bigint() - 5_000_000_000n);
    const real = ts!.payload.readBigUInt64LE(16);
    assert.ok(real > BigInt(Date.now() - 5000) * 1_000_000n && real <= BigInt(Date.now() + 1) * 1_000_000n);
  });

  it('registers an activator after its ID_ADD, and accepts a name ending in ".*" (kdbus never sees it as a wildcard)', async () => {
    const w = await tb.conn();
    await w.matchAllNotifications();
    const act = await registrar(tb, 'com.example.act', [world(PolicyAccess.TALK)], HelloFlags.ACTIVATOR);
    assert.equal(act.errno, 0);
    const msgs = await drain(w);
    assert.deepEqual(msgs.map((m) => m.items[0]!.type), [ItemType.ID_ADD, ItemType.NAME_ADD]);
    assert.equal(msgs[0]!.items[0]!.payload.readBigUInt64LE(8), HelloFlags.ACTIVATOR);
    const add = msgs[1]!.items[0]!.payload;
    assert.deepEqual([add.readBigUInt64LE(16), add.readBigUInt64LE(24)], [act.client.id, 0x10n | 0x20n]);

    const wild = await registrar(tb, 'com.example.wild.*', [], HelloFlags.ACTIVATOR);
    assert.equal(wild.errno, 0);
    const l = await w.list(4n);
    assert.deepEqual(l.records.map((r) => r.name), ['com.example.act', 'com.example.wild.*']);
  });

  it('connects first and undoes it when the activator name or the holder policy is refused', async () => {
    const w = await tb.conn();
    await w.matchAllNotifications();
    assert.equal((await registrar(tb, 'com.example.act', [], HelloFlags.ACTIVATOR)).errno, 0);
    assert.equal((await registrar(tb, 'com.example.holder', [])).errno, 0);
    await drain(w);
    const lastId = (await tb.conn()).id;
    await drain(w);

    assert.equal((await registrar(tb, 'com.example.act', [], HelloFlags.ACTIVATOR)).errno, Errno.EEXIST);
    assert.deepEqual(await drainTypes(w), [ItemType.ID_ADD, ItemType.ID_REMOVE]);
    assert.equal((await registrar(tb, 'com.example.holder', [])).errno, Errno.EEXIST);
    assert.deepEqual(await drainTypes(w), [ItemType.ID_ADD, ItemType.ID_REMOVE]);
    // The activator policy goes in after the name, so its failure releases the name again.
    assert.equal((await registrar(tb, 'com.example.act2', [{ type: 7, access: PolicyAccess.TALK }], HelloFlags.ACTIVATOR)).errno, Errno.EINVAL);
    assert.deepEqual(await drainTypes(w), [ItemType.ID_ADD, ItemType.NAME_ADD, ItemType.NAME_REMOVE, ItemType.ID_REMOVE]);
    // Each attempt used up an id.
    assert.equal((await tb.conn()).id, lastId + 4n);
  });

  it('undoes the connection when the struct cannot be written back (EFAULT), leaving the handle unused', async () => {
    const w = await tb.conn();
    await w.matchAllNotifications();
    const c = tb.client();
    const h = helloStruct();
    await expectErrno(c.ioctlAt('HELLO', c.mem.put(h, { readOnly: true }), h.length), 'EFAULT');
    const gone = await drain(w);
    assert.deepEqual(gone.map((m) => m.items[0]!.type), [ItemType.ID_ADD, ItemType.ID_REMOVE]);
    await c.connect();
    assert.equal(c.id, gone[0]!.items[0]!.payload.readBigUInt64LE(0) + 1n);
  });

  it('ignores POLICY_ACCESS items of an ordinary connection', async () => {
    await expectErrno(tb.client().hello({ items: (w) => w.itemU64(ItemType.POLICY_ACCESS, 3n, 2n, 0n) }), 0);
    assert.equal(await tb.client(unprivileged()).connect().then((u) => u.acquire('com.example.any')).then((r) => r.errno), Errno.EPERM);
  });

  it('keeps activators and holders out of messaging; only activators receive', async () => {
    const env = await tb.conn();
    const act = (await registrar(tb, 'com.example.act', [], HelloFlags.ACTIVATOR)).client;
    const holder = (await registrar(tb, 'com.example.holder', [])).client;
    for (const c of [act, holder]) {
      await expectErrno(c.acquire('com.example.x'), 'EOPNOTSUPP');
      await expectErrno(c.release('com.example.act'), 'EOPNOTSUPP');
      await expectErrno(c.matchAllBroadcasts(), 'EOPNOTSUPP');
      await expectErrno(c.removeMatch(1n), 'EOPNOTSUPP');
      await expectErrno(sendTo(c, env.id), 'EOPNOTSUPP');
      // Neither can be addressed by id.
      await expectErrno(sendTo(env, c.id), 'ENXIO');
    }
    await expectErrno(act.recv(), 'EAGAIN');
    await expectErrno(holder.recv(), 'EOPNOTSUPP');
  });

  it('takes one NAME item only, and checks the policy syntax of holders', async () => {
    const two = tb.client();
    await expectErrno(two.hello({ flags: HelloFlags.POLICY_HOLDER, items: (w) => w.string(ItemType.NAME, 'a.b').string(ItemType.NAME, 'c.d') }), 'EINVAL');
    assert.equal((await registrar(tb, 'com.example.h', [{ type: 1, access: 3, id: 0 }])).errno, Errno.EINVAL);
    assert.equal((await registrar(tb, 'com.example.h', [{ type: 0, access: 1, id: 0 }])).errno, Errno.EINVAL);
    assert.equal((await registrar(tb, 'com.example.h', [user(-1 >>> 0, PolicyAccess.OWN)])).errno, Errno.EINVAL);
    assert.equal((await registrar(tb, 'com.example.h.*', [world(PolicyAccess.OWN)])).errno, 0);
  });

  it('uses up an id when the pool is too big or faked metadata is refused', async () => {
    const first = (await tb.conn()).id;
    await expectErrno(tb.client().hello({ poolSize: 1n << 32n }), 'ENOMEM');
    await expectErrno(tb.client().hello({ items: (w) => w.itemU64(ItemType.PIDS, 0x7fff_fff0n, 0n, 0n) }), 'EINVAL');
    await expectErrno(tb.client().hello({ items: (w) => w.itemU64(ItemType.CREDS, 0x1_ffff_ffffn, 0n, 0n, 0n, 0n, 0n, 0n, 0n) }), 'EINVAL');
    assert.equal((await tb.conn()).id, first + 4n);
  });

  it('checks the CONN_DESCRIPTION like a sysname', async () => {
    const desc = (s: string) => (w: ItemWriter) => w.string(ItemType.CONN_DESCRIPTION, s);
    await expectErrno(tb.client().hello({ items: desc('bad name') }), 'EINVAL');
    await expectErrno(tb.client().hello({ items: desc('x'.repeat(64)) }), 'ENAMETOOLONG');
    await expectErrno(tb.client().hello({ items: desc('-lead') }), 'EINVAL');
    await expectErrno(tb.client().hello({ items: desc('good-name.1') }), 0);
  });

  it('allows 1024 connections per real uid (EMFILE after, id used up); custom endpoints and faked uids count elsewhere', async function () {
    this.timeout(10_000);
    const domain = new Domain();
    const big = await TestBus.create({ domain });
    const conns: TestClient[] = [];
    for (let i = 0; i < Limits.USER_MAX_CONN; i++) conns.push(await big.conn({ poolSize: 4096n }));
    const lastId = conns[conns.length - 1]!.id;
    await expectErrno(big.client().hello({ poolSize: 4096n }), 'EMFILE');
    // Real uid counts, not euid; and an owner that is not privileged cannot move the charge.
    await expectErrno(big.client({ creds: { ...selfCreds(), euid: 4321 }, privileged: false }).hello({ poolSize: 4096n }), 'EMFILE');
    const fake = (uid: bigint) => (w: ItemWriter) => w.itemU64(ItemType.CREDS, uid, uid, uid, uid, uid, uid, uid, uid);
    await expectErrno(big.client({ creds: selfCreds(), privileged: false }).hello({ poolSize: 4096n, items: fake(2000n) }), 'EMFILE');
    // A privileged client's faked uid is charged instead; (uid_t)-1 is not a uid to charge.
    await expectErrno(big.client().hello({ poolSize: 4096n, items: fake(2000n) }), 0);
    await expectErrno(big.client().hello({ poolSize: 4096n, items: fake(0xffff_ffffn) }), 'EMFILE');
    await expectErrno(big.client(unprivileged()).hello({ poolSize: 4096n }), 0);
    const { ep } = await makeEndpoint(big, `${UID}-ep`);
    await expectErrno(endpointClient(ep!).hello({ poolSize: 4096n }), 0);
    conns[0]!.close();
    const again = await big.conn({ poolSize: 4096n });
    // Seven HELLOs since the 1024th: four failed, and each still used up an id.
    assert.equal(again.id, lastId + 8n);
    await expectErrno(big.client().hello({ poolSize: 4096n }), 'EMFILE');
    domain.shutdown();
  });
});

describe('bus setup: UPDATE (kdbus-abi §3.12, test_conn_update)', () => {
  let tb: TestBus;
  beforeEach(async () => {
    tb = await TestBus.create();
  });
  afterEach(() => tb.destroy());

  const attach = (send?: bigint, recv?: bigint) => (w: ItemWriter) => {
    if (send !== undefined) w.itemU64(ItemType.ATTACH_FLAGS_SEND, send);
    if (recv !== undefined) w.itemU64(ItemType.ATTACH_FLAGS_RECV, recv);
  };

  it('drops TIMESTAMP from received messages once attach_flags_recv lacks it; ALL+1 is EINVAL', async () => {
    const a = await tb.conn();
    const b = await tb.conn();
    await expectOk(sendTo(a, b.id, 0x12345678n));
    assert.ok((await b.mustRecv()).items.some((i) => i.type === ItemType.TIMESTAMP));
    await expectErrno(b.update(attach(Attach.ALL, Attach.ALL & ~Attach.TIMESTAMP)), 0);
    await expectOk(sendTo(a, b.id, 0x12345678n));
    assert.ok(!(await b.mustRecv()).items.some((i) => i.type === ItemType.TIMESTAMP));
    await expectErrno(b.update(attach(Attach.ALL + 1n, Attach.ALL)), 'EINVAL');
    await expectErrno(b.update(attach(Attach.ALL, Attach.ALL + 1n)), 'EINVAL');
    // ~0 means "everything there is".
    await expectErrno(b.update(attach(Attach.ANY, Attach.ANY)), 0);
    await expectOk(sendTo(a, b.id));
    assert.ok((await b.mustRecv()).items.some((i) => i.type === ItemType.TIMESTAMP));
  });

  it('allows send masks on ordinary and monitor, recv masks also on activators, policy on holders only', async () => {
    const ordinary = await tb.conn();
    const monitor = await tb.conn({ flags: HelloFlags.MONITOR });
    const act = (await registrar(tb, 'com.example.act', [], HelloFlags.ACTIVATOR)).client;
    const holder = (await registrar(tb, 'com.example.holder', [])).client;
    const policy = (w: ItemWriter) => w.string(ItemType.NAME, 'com.example.holder');
    for (const c of [ordinary, monitor]) {
      await expectErrno(c.update(attach(Attach.CREDS, Attach.CREDS)), 0);
      await expectErrno(c.update(policy), 'EOPNOTSUPP');
    }
    await expectErrno(act.update(attach(Attach.CREDS)), 'EOPNOTSUPP');
    await expectErrno(act.update(attach(undefined, Attach.CREDS)), 0);
    await expectErrno(act.update(policy), 'EOPNOTSUPP');
    await expectErrno(holder.update(attach(Attach.CREDS)), 'EOPNOTSUPP');
    await expectErrno(holder.update(attach(undefined, Attach.CREDS)), 'EOPNOTSUPP');
    await expectErrno(holder.update(policy), 0);
    // Kinds are checked item by item: send (type, then mask), recv, then policy.
    await expectErrno(act.update(attach(Attach.ALL + 1n)), 'EOPNOTSUPP');
    await expectErrno(ordinary.update((w) => { attach(Attach.ALL + 1n)(w); policy(w); }), 'EINVAL');
    await expectErrno(holder.update((w) => { attach(undefined, Attach.ALL + 1n)(w); policy(w); }), 'EOPNOTSUPP');
    // An empty UPDATE is fine for everyone.
    for (const c of [ordinary, monitor, act, holder]) await expectErrno(c.update(() => undefined), 0);
  });

  it('changes nothing unless the whole command is valid', async () => {
    const a = await tb.conn();
    const b = await tb.conn();
    await expectErrno(b.update((w) => {
      attach(0n, 0n)(w);
      w.string(ItemType.NAME, 'com.example.x');
    }), 'EOPNOTSUPP');
    const info = await a.connInfo(b.id, undefined, Attach.CREDS);
    assert.ok(info.info!.items.some((i) => i.type === ItemType.CREDS), 'send mask unchanged');
    await expectOk(sendTo(a, b.id));
    assert.ok((await b.mustRecv()).items.some((i) => i.type === ItemType.TIMESTAMP), 'recv mask unchanged');
  });
});

describe('bus setup: BYEBYE (kdbus-abi §3.14, test_byebye)', () => {
  let tb: TestBus;
  beforeEach(async () => {
    tb = await TestBus.create();
  });
  afterEach(() => tb.destroy());

  it('is EBUSY while messages are queued, then succeeds once, then ESHUTDOWN', async () => {
    const env = await tb.conn();
    const conn = await tb.conn();
    await expectOk(conn.matchAllBroadcasts());
    await expectOk(env.matchAllBroadcasts());
    await expectOk(env.send({ cookie: 1n, bloom: { data: Buffer.alloc(64) } }));
    await expectErrno(conn.byebye(), 'EBUSY');
    await conn.mustRecv();
    await expectErrno(conn.byebye(), 0);
    await expectErrno(conn.byebye(), 'ESHUTDOWN');
  });

  it('announces the departure: names released, then ID_REMOVE', async () => {
    const w = await tb.conn();
    const c = await tb.conn();
    await expectOk(c.acquire('com.example.bye'));
    await w.matchAllNotifications();
    await expectErrno(c.byebye(), 0);
    const msgs = await drain(w);
    assert.deepEqual(msgs.map((m) => m.items[0]!.type), [ItemType.NAME_REMOVE, ItemType.ID_REMOVE]);
    assert.equal(msgs[1]!.items[0]!.payload.readBigUInt64LE(0), c.id);
    assert.equal((await w.connInfo(c.id)).errno, Errno.ENXIO);
  });

  it('is for ordinary connections only, and negotiation leaves the connection alone', async () => {
    const monitor = await tb.conn({ flags: HelloFlags.MONITOR });
    const act = (await registrar(tb, 'com.example.act', [], HelloFlags.ACTIVATOR)).client;
    const holder = (await registrar(tb, 'com.example.holder', [])).client;
    for (const c of [monitor, act, holder]) await expectErrno(c.byebye(), 'EOPNOTSUPP');
    const c = await tb.conn();
    await expectErrno(c.cmd('BYEBYE', KDBUS_FLAG_NEGOTIATE), 0);
    await expectErrno(c.cmd('BYEBYE', 1n), 'EINVAL');
    await expectErrno(c.list(1n), 0);
  });

  it('tells callers waiting on it: REPLY_DEAD for async calls, EPIPE for sync calls', async () => {
    const caller = await tb.conn();
    const callee = await tb.conn();
    await expectOk(caller.send({ dst: callee.id, cookie: 0xa5n, flags: MsgFlags.EXPECT_REPLY }));
    const sync = caller.send({ dst: callee.id, cookie: 0xa6n, flags: MsgFlags.EXPECT_REPLY, sync: true });
    await callee.mustRecv();
    await callee.mustRecv();
    await expectErrno(callee.byebye(), 0);
    await expectErrno(sync, 'EPIPE');
    const [dead, ...rest] = await drain(caller);
    assert.equal(rest.length, 0);
    assert.deepEqual([dead!.items[0]!.type, dead!.items[0]!.size, dead!.cookieReply, dead!.dstId, dead!.flags], [ItemType.REPLY_DEAD, 16, 0xa5n, caller.id, 0n]);
  });
});

describe('bus setup: FREE (kdbus-abi §3.4, test-free.c)', () => {
  let tb: TestBus;
  let c: TestClient;
  beforeEach(async () => {
    tb = await TestBus.create();
    c = await tb.conn();
  });
  afterEach(() => tb.destroy());

  it('is ENXIO for an unallocated offset and beyond the pool, a no-op at the pool size', async () => {
    await expectErrno(c.free(0n), 'ENXIO');
    await expectErrno(c.free(POOL_SIZE + 1n), 'ENXIO');
    await expectErrno(c.free(U64_MAX), 'ENXIO');
    await expectErrno(c.free(POOL_SIZE), 0);
    await expectErrno(c.free(POOL_SIZE), 0);
    // Unfreed empty LIST results are harmless (sample_ioctl_call twice).
    for (let i = 0; i < 2; i++) {
      const l = await c.list(8n);
      assert.deepEqual([l.errno, l.offset, l.size], [0, POOL_SIZE, 0n]);
    }
  });

  it('frees a slice once, at its start only', async () => {
    const i = await c.connInfo(c.id);
    assert.equal(i.offset, 0n);
    await expectErrno(c.free(8n), 'ENXIO');
    await expectErrno(c.free(i.offset), 0);
    await expectErrno(c.free(i.offset), 'ENXIO');
  });

  it('hands the same offset out again after FREE', async () => {
    const first = await c.connInfo(c.id);
    await expectErrno(c.free(first.offset), 0);
    const second = await c.connInfo(c.id);
    assert.equal(second.offset, 0n);
    // Without FREE the next result goes after it.
    const third = await c.connInfo(c.id);
    assert.equal(third.offset, BigInt(ALIGN8(Number(second.size))));
  });

  it('refuses a queued message slice that was not handed to the client yet', async () => {
    const other = await tb.conn();
    await expectOk(sendTo(other, c.id));
    await expectErrno(c.free(0n), 'ENXIO');
    const m = await c.recv();
    assert.equal(m.msg!.offset, 0);
    await expectErrno(c.free(0n), 0);
  });

  it('works for monitors and activators, not for policy holders', async () => {
    const monitor = await tb.conn({ flags: HelloFlags.MONITOR });
    await expectErrno(monitor.free(POOL_SIZE), 0);
    const act = await registrar(tb, 'com.example.act', [], HelloFlags.ACTIVATOR);
    await expectErrno(act.client.free(POOL_SIZE), 0);
    const holder = await registrar(tb, 'com.example.holder', []);
    await expectErrno(holder.client.free(0n), 'EOPNOTSUPP');
  });
});

describe('bus setup: teardown (kdbus-abi §1.5, §3.14)', () => {
  let tb: TestBus;
  beforeEach(async () => {
    tb = await TestBus.create();
  });
  afterEach(() => tb.destroy());

  it('disconnects everyone when the bus owner closes the control handle', async () => {
    const a = await tb.conn();
    const monitor = await tb.conn({ flags: HelloFlags.MONITOR });
    const { owner, ep } = await makeEndpoint(tb, `${UID}-ep`);
    const e = await endpointClient(ep!).connect();
    const name = tb.name;
    tb.control.close();
    for (const c of [a, monitor, e]) {
      await expectErrno(c.list(1n), 'ESHUTDOWN');
      assert.equal(c.handle.poll(), Poll.ERR | Poll.HUP);
    }
    await expectErrno(owner.cmd('ENDPOINT_UPDATE', 0n), 'ESHUTDOWN');
    await expectErrno(owner.ioctl('SEND', Buffer.alloc(64)), 'ESHUTDOWN');
    assert.equal(tb.domain.buses.has(name), false);
    await expectThrows(() => endpointClient(ep!), 'ESHUTDOWN');
  });

  it('releases names on close() with notifications, handing them to queued owners', async () => {
    const w = await tb.conn();
    const a = await tb.conn();
    const b = await tb.conn();
    await expectOk(a.acquire('com.example.solo'));
    await expectOk(a.acquire('com.example.shared'));
    await expectOk(b.acquire('com.example.shared', 4n));
    await w.matchAllNotifications();
    a.close();
    const msgs = await drain(w);
    assert.deepEqual(msgs.map((m) => m.items[0]!.type), [ItemType.NAME_REMOVE, ItemType.NAME_CHANGE, ItemType.ID_REMOVE]);
    const change = msgs[1]!.items[0]!.payload;
    assert.deepEqual([change.readBigUInt64LE(0), change.readBigUInt64LE(16)], [a.id, b.id]);
    assert.equal(change.toString('latin1', 32, change.length - 1), 'com.example.shared');
    const l = await w.list(2n);
    assert.deepEqual(l.records.map((r) => [r.id, r.name]), [[b.id, 'com.example.shared']]);
  });

  it('gives REPLY_DEAD to an async caller whose call the callee had received', async () => {
    const caller = await tb.conn();
    const callee = await tb.conn();
    await expectOk(caller.send({ dst: callee.id, cookie: 0x77n, flags: MsgFlags.EXPECT_REPLY }));
    await callee.mustRecv();
    callee.close();
    const msgs = await drain(caller);
    assert.deepEqual(msgs.map((m) => [m.items[0]!.type, m.cookieReply]), [[ItemType.REPLY_DEAD, 0x77n]]);
  });

  it('gives REPLY_DEAD for a call still queued at the callee, once from the queue and once from the reply list', async () => {
    // kdbus_conn_release() (ipc/kdbus/connection.c) notifies REPLY_DEAD for every queued
    // entry with a reply without unlinking the reply, then again while scanning the callers'
    // reply lists: the caller gets two.
    const caller = await tb.conn();
    const callee = await tb.conn();
    await expectOk(caller.send({ dst: callee.id, cookie: 0x78n, flags: MsgFlags.EXPECT_REPLY }));
    callee.close();
    const msgs = await drain(caller);
    assert.deepEqual(msgs.map((m) => [m.items[0]!.type, m.cookieReply]), [[ItemType.REPLY_DEAD, 0x78n], [ItemType.REPLY_DEAD, 0x78n]]);
  });

  it('gives a sync caller whose call was still queued both EPIPE and a REPLY_DEAD', async () => {
    const caller = await tb.conn();
    const callee = await tb.conn();
    const call = caller.send({ dst: callee.id, cookie: 0x79n, flags: MsgFlags.EXPECT_REPLY, sync: true });
    callee.close();
    await expectErrno(call, 'EPIPE');
    const msgs = await drain(caller);
    assert.deepEqual(msgs.map((m) => [m.items[0]!.type, m.cookieReply]), [[ItemType.REPLY_DEAD, 0x79n]]);
  });

  it('removes a custom endpoint and its connections when the endpoint owner closes', async () => {
    const w = await tb.conn();
    await w.matchAllNotifications();
    const { owner, ep } = await makeEndpoint(tb, `${UID}-ep`);
    const e = await endpointClient(ep!).connect();
    assert.deepEqual(await drainTypes(w), [ItemType.ID_ADD]);
    owner.close();
    assert.equal(tb.bus.endpoints.has(`${UID}-ep`), false);
    await expectErrno(e.list(1n), 'ESHUTDOWN');
    assert.deepEqual(await drainTypes(w), [ItemType.ID_REMOVE]);
    await expectThrows(() => endpointClient(ep!), 'ESHUTDOWN');
    // The name can be made again.
    assert.equal((await makeEndpoint(tb, `${UID}-ep`)).errno, 0);
    await expectErrno(w.list(1n), 0);
  });
});

