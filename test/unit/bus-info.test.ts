/**
 * Behaviour of the information side of the bus: CONN_INFO, BUS_CREATOR_INFO, LIST and the
 * layouts of kernel notifications, after kdbus-abi.md §3.10, §3.11, §3.16 and the kdbus
 * selftests (test-connection.c test_conn_info, test-bus.c test_bus_creator_info). Byte
 * layouts are derived from ipc/kdbus/connection.c, bus.c, names.c and notify.c.
 */
import assert from 'node:assert/strict';
import { requireOrSkip } from '../helpers/require';
import { readFileSync } from 'node:fs';
import {
  ALIGN8, Attach, HelloFlags, ItemType, KDBUS_DST_ID_BROADCAST, ListFlags, MsgFlags, NameFlags, Off, U64_MAX,
} from '../../src/abi/constants';
import { Errno } from '../../src/abi/errno';
import type { ItemWriter } from '../../src/abi/items';
import { credsOf, parseItems, TestBus, type TestClient, expectOk, type ReceivedItem } from '../helpers/kdbus-client';
import { drain, expectErrno, namespacesUsable, registrar, standIn } from './bus-fixtures';

const POOL_SIZE = 16n * 1024n * 1024n;

/** The kernel's emission order of metadata items (metadata.c kdbus_meta_write). */
const META_ORDER = [
  ItemType.CREDS, ItemType.PIDS, ItemType.AUXGROUPS, ItemType.TID_COMM, ItemType.PID_COMM, ItemType.EXE,
  ItemType.CMDLINE, ItemType.CGROUP, ItemType.CAPS, ItemType.SECLABEL, ItemType.AUDIT, ItemType.OWNED_NAME,
  ItemType.CONN_DESCRIPTION, ItemType.TIMESTAMP,
];

/** Uid:/Gid: lines of /proc/self/status: real, effective, saved, filesystem. */
function statusIds(field: 'Uid' | 'Gid'): bigint[] {
  const line = readFileSync('/proc/self/status', 'latin1').split('\n').find((l) => l.startsWith(`${field}:`))!;
  return line.split(/\s+/).slice(1, 5).map((v) => BigInt(v));
}

const u64s = (p: Buffer): bigint[] => Array.from({ length: p.length / 8 }, (_, i) => p.readBigUInt64LE(i * 8));
const str = (it: ReceivedItem): string => it.payload.toString('latin1', 0, it.size - 16 - 1);
const ownedName = (it: ReceivedItem) => ({ flags: it.payload.readBigUInt64LE(0), name: it.payload.toString('latin1', 8, it.size - 16 - 1) });

function assertMetaOrder(items: ReceivedItem[]): void {
  const ranks = items.map((i) => META_ORDER.indexOf(i.type));
  assert.ok(ranks.every((r) => r >= 0), `only metadata items: ${items.map((i) => i.type.toString(16))}`);
  assert.deepEqual(ranks, [...ranks].sort((a, b) => a - b), 'kernel emission order');
}

describe('bus info: CONN_INFO (kdbus-abi §3.11, test_conn_info)', () => {
  let tb: TestBus;
  let env: TestClient;
  beforeEach(async () => {
    tb = await TestBus.create();
    env = await tb.conn();
  });
  afterEach(() => tb.destroy());

  it('follows test_conn_info: attach 0, a NAME without NUL, an unknown name', async () => {
    const r = await env.connInfo(env.id, undefined, 0n);
    assert.equal(r.errno, 0);
    // Nothing asked for: a bare kdbus_info, and info_size says so.
    assert.deepEqual([r.info!.size, r.size, r.info!.id, r.info!.flags, r.info!.items.length], [24n, 24n, env.id, HelloFlags.ACCEPT_FD, 0]);
    await expectOk(env.free(r.offset));
    const noNul = await env.cmd('CONN_INFO', 0n, (w) => {
      w.u64(17).u64(ItemType.NAME).bytes(Buffer.from('f'));
    }, (w) => w.u64(0).u64(0).u64(0).u64(0));
    assert.equal(noNul.errno, Errno.EINVAL);
    await expectErrno(env.connInfo(0n, 'non.existent.name', 0n), 'ESRCH');
  });

  it('reports the HELLO-time creds and pids of the target (kdbus_fuzz_conn_info)', async () => {
    const valid = Attach.NAMES | Attach.CREDS | Attach.PIDS | Attach.CONN_DESCRIPTION;
    const conn = await tb.conn();
    const r = await conn.connInfo(conn.id, undefined, valid);
    const items = r.info!.items;
    assert.deepEqual(items.map((i) => i.type), [ItemType.CREDS, ItemType.PIDS]);
    assert.equal(items[0]!.size, 16 + 64);
    const uids = statusIds('Uid');
    const gids = statusIds('Gid');
    assert.deepEqual(u64s(items[0]!.payload), [...uids, ...gids]);
    assert.equal(uids[0], BigInt(process.getuid!()));
    assert.equal(uids[1], BigInt(process.geteuid!()));
    assert.equal(gids[1], BigInt(process.getegid!()));
    assert.deepEqual(u64s(items[1]!.payload), [BigInt(process.pid), BigInt(process.pid), BigInt(process.ppid)]);
    await expectOk(conn.free(r.offset));

    await expectOk(conn.acquire('com.example.a'));
    const named = await conn.connInfo(conn.id, undefined, valid);
    const names = named.info!.items.filter((i) => i.type === ItemType.OWNED_NAME);
    assert.deepEqual(names.map(ownedName), [{ flags: NameFlags.PRIMARY, name: 'com.example.a' }]);
    assert.equal(names[0]!.size, 16 + 8 + 'com.example.a'.length + 1);
    await expectOk(conn.free(named.offset));
    const byName = await conn.connInfo(0n, 'com.example.a', valid);
    assert.equal(byName.info!.id, conn.id);
    await expectOk(conn.free(byName.offset));

    // Asking for more than was granted changes nothing about what is granted.
    const greedy = await env.connInfo(conn.id, undefined, valid | Attach.CAPS | Attach.CGROUP);
    assert.equal(greedy.info!.items.filter((i) => i.type === ItemType.CREDS).length, 1);
    assert.equal(greedy.info!.items.filter((i) => i.type === ItemType.PIDS).length, 1);

    await expectOk(conn.acquire('com.example.b'));
    const two = await conn.connInfo(conn.id, undefined, valid);
    assert.deepEqual(two.info!.items.filter((i) => i.type === ItemType.OWNED_NAME).map((i) => ownedName(i).name), ['com.example.a', 'com.example.b']);
  });

  it('returns every item the target allows, in kernel order, with no TIMESTAMP and an exact size', async () => {
    const t = await tb.conn({ items: (w) => w.string(ItemType.CONN_DESCRIPTION, 'the-target') });
    await expectOk(t.acquire('com.example.t'));
    const r = await env.connInfo(t.id, undefined, Attach.ALL);
    const items = r.info!.items;
    assertMetaOrder(items);
    for (const type of [ItemType.CREDS, ItemType.PIDS, ItemType.AUXGROUPS, ItemType.OWNED_NAME, ItemType.CONN_DESCRIPTION]) {
      assert.ok(items.some((i) => i.type === type), `item 0x${type.toString(16)}`);
    }
    assert.ok(!items.some((i) => i.type === ItemType.TIMESTAMP));
    assert.equal(str(items.find((i) => i.type === ItemType.CONN_DESCRIPTION)!), 'the-target');
    const groups = u64s(items.find((i) => i.type === ItemType.AUXGROUPS)!.payload).map(Number);
    // process.getgroups() adds the egid; the kernel reports the supplementary list as is.
    const line = readFileSync('/proc/self/status', 'latin1').split('\n').find((l) => l.startsWith('Groups:'))!;
    assert.deepEqual(groups, line.split(/\s+/).slice(1).filter((g) => g !== '').map(Number));
    const expectedSize = 24 + items.reduce((n, i) => n + ALIGN8(i.size), 0);
    assert.deepEqual([r.info!.size, r.size], [BigInt(expectedSize), BigInt(expectedSize)]);
  });

  it('ANDs the requested mask with the target\'s attach_flags_send', async () => {
    const shy = await tb.conn({ attachSend: Attach.CREDS, items: (w) => w.string(ItemType.CONN_DESCRIPTION, 'shy') });
    await expectOk(shy.acquire('com.example.shy'));
    const r = await env.connInfo(shy.id, undefined, Attach.ALL);
    assert.deepEqual(r.info!.items.map((i) => i.type), [ItemType.CREDS]);
    const none = await tb.conn({ attachSend: 0n });
    const n = await env.connInfo(none.id, undefined, Attach.ANY);
    assert.deepEqual([n.info!.size, n.info!.items.length], [24n, 0]);
    // A later UPDATE of the target's send mask applies at once.
    await expectOk(shy.update((w) => w.itemU64(ItemType.ATTACH_FLAGS_SEND, Attach.NAMES)));
    const u = await env.connInfo(shy.id, undefined, Attach.ALL);
    assert.deepEqual(u.info!.items.map((i) => [i.type, ownedName(i).name]), [[ItemType.OWNED_NAME, 'com.example.shy']]);
  });

  it('looks up by name with the id as a filter; ESRCH for unknown, mismatched or invalid names', async () => {
    const a = await tb.conn();
    await expectOk(a.acquire('com.example.a'));
    assert.equal((await env.connInfo(a.id, 'com.example.a', 0n)).info!.id, a.id);
    await expectErrno(env.connInfo(env.id, 'com.example.a', 0n), 'ESRCH');
    await expectErrno(env.connInfo(0n, 'com.example.nobody', 0n), 'ESRCH');
    await expectErrno(env.connInfo(0n, 'not-a-name', 0n), 'ESRCH');
    // A queued owner is not the owner.
    const q = await tb.conn();
    await expectOk(q.acquire('com.example.a', NameFlags.QUEUE));
    await expectErrno(env.connInfo(q.id, 'com.example.a', 0n), 'ESRCH');
    assert.deepEqual((await env.connInfo(q.id, undefined, Attach.NAMES)).info!.items, []);
  });

  it('is ENXIO for unknown ids, EINVAL without id or name, and checks the mask first', async () => {
    await expectErrno(env.connInfo(0x0fff_ffff_ffff_ffffn, undefined, 0n), 'ENXIO');
    await expectErrno(env.connInfo(U64_MAX, undefined, 0n), 'ENXIO');
    await expectErrno(env.connInfo(tb.bus.id, undefined, 0n), 'ENXIO');
    await expectErrno(env.connInfo(0n, undefined, 0n), 'EINVAL');
    await expectErrno(env.connInfo(0x0fff_ffff_ffff_ffffn, undefined, Attach.ALL + 1n), 'EINVAL');
    await expectErrno(env.connInfo(0n, 'com.example.none', Attach.ALL + 1n), 'EINVAL');
    const gone = await tb.conn();
    gone.close();
    await expectErrno(env.connInfo(gone.id, undefined, 0n), 'ENXIO');
    await expectErrno(env.cmd('CONN_INFO', 1n, undefined, (w) => w.u64(env.id).u64(0).u64(0).u64(0)), 'EINVAL');
  });

  it('describes monitors, holders and activators by id, and activators by name while they hold it', async () => {
    const monitor = await tb.conn({ flags: HelloFlags.MONITOR });
    const holder = (await registrar(tb, 'com.example.holder', [])).client;
    const act = (await registrar(tb, 'com.example.act', [], HelloFlags.ACTIVATOR)).client;
    assert.equal((await env.connInfo(monitor.id, undefined, 0n)).info!.flags, HelloFlags.MONITOR);
    assert.equal((await env.connInfo(holder.id, undefined, 0n)).info!.flags, HelloFlags.POLICY_HOLDER);
    const a = await env.connInfo(0n, 'com.example.act', Attach.NAMES);
    assert.deepEqual([a.info!.id, a.info!.flags], [act.id, HelloFlags.ACTIVATOR]);
    assert.deepEqual(a.info!.items.map(ownedName), [{ flags: NameFlags.ACTIVATOR | NameFlags.PRIMARY, name: 'com.example.act' }]);
    // Once an implementer takes the name, the activator no longer holds it.
    const impl = await tb.conn();
    await expectOk(impl.acquire('com.example.act'));
    assert.equal((await env.connInfo(0n, 'com.example.act', 0n)).info!.id, impl.id);
    assert.deepEqual((await env.connInfo(act.id, undefined, Attach.NAMES)).info!.items, []);
  });

  it('reports only the faked metadata of a connection that faked it', async () => {
    const faked = await tb.conn({
      items: (w: ItemWriter) => {
        w.itemU64(ItemType.CREDS, 1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n);
        w.itemU64(ItemType.PIDS, BigInt(process.pid), BigInt(process.pid), 0n);
        w.string(ItemType.SECLABEL, 'faked_t');
      },
    });
    const r = await env.connInfo(faked.id, undefined, Attach.ALL);
    assert.deepEqual(r.info!.items.map((i) => i.type), [ItemType.CREDS, ItemType.PIDS, ItemType.SECLABEL]);
    assert.deepEqual(u64s(r.info!.items[0]!.payload), [1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n]);
    assert.deepEqual(u64s(r.info!.items[1]!.payload), [BigInt(process.pid), BigInt(process.pid), 0n]);
    assert.equal(str(r.info!.items[2]!), 'faked_t');
    const credsOnly = await tb.conn({ items: (w) => w.itemU64(ItemType.CREDS, 9n, 9n, 9n, 9n, 9n, 9n, 9n, 9n) });
    assert.deepEqual((await env.connInfo(credsOnly.id, undefined, Attach.ALL)).info!.items.map((i) => i.type), [ItemType.CREDS]);
  });

  it('places each result in the caller\'s pool for the caller to free', async () => {
    const first = await env.connInfo(env.id);
    assert.equal(first.offset, 0n);
    const raw = env.pool(0, Number(first.size));
    assert.equal(raw.readBigUInt64LE(0), first.size);
    await expectOk(env.free(first.offset));
    assert.equal((await env.connInfo(env.id)).offset, 0n);
  });

  it('translates creds and pids into the namespaces of the asking connection, both ways', async function () {
    requireOrSkip(this, namespacesUsable(), 'user and pid namespaces (unshare, with full id maps)');
    const ns = await standIn(true);
    try {
      const nobody = { creds: credsOf(65534), privileged: false };
      // Root in a user namespace mapping only 65534, pid 1 of a pid namespace of its own.
      const inside = await tb.conn({}, { ...nobody, pid: ns.pid });
      const ids = Attach.CREDS | Attach.PIDS;
      const r = await inside.connInfo(env.id, undefined, ids);
      assert.deepEqual(r.info!.items.map((i) => u64s(i.payload)), [Array(8).fill(65534n), [0n, 0n, 0n]], 'uid 0 has no name inside; the target is outside the pid namespace');
      const back = await env.connInfo(inside.id, undefined, ids);
      assert.deepEqual(back.info!.items.map((i) => u64s(i.payload)), [Array(8).fill(65534n), [ns.pid, ns.pid, ns.parent].map(BigInt)]);
      const self = await inside.connInfo(inside.id, undefined, ids);
      assert.deepEqual(self.info!.items.map((i) => u64s(i.payload)), [Array(8).fill(0n), [1n, 1n, 0n]]);
    } finally {
      ns.stop();
    }
  });
});

describe('bus info: BUS_CREATOR_INFO (kdbus-abi §3.11, test_bus_creator_info)', () => {
  const buses: TestBus[] = [];
  afterEach(() => {
    for (const b of buses.splice(0)) b.destroy();
  });
  const bus = async (attach?: bigint) => {
    const b = await TestBus.create(attach === undefined ? {} : { attach });
    buses.push(b);
    return b;
  };

  it('carries the bus name as MAKE_NAME, the bus id and flags, and nothing else without a creator mask', async () => {
    const tb = await bus();
    const c = await tb.conn();
    const r = await c.cmd('BUS_CREATOR_INFO', 0n, undefined, (w) => w.u64(0).u64(Attach.ALL).u64(0).u64(0));
    assert.equal(r.errno, 0);
    const offset = Number(r.out.readBigUInt64LE(Off.info_cmd.offset));
    const size = Number(r.out.readBigUInt64LE(Off.info_cmd.info_size));
    const b = c.pool(offset, size);
    const nameItem = 16 + tb.name.length + 1;
    assert.equal(size, 24 + ALIGN8(nameItem));
    assert.deepEqual([b.readBigUInt64LE(0), b.readBigUInt64LE(8), b.readBigUInt64LE(16)], [BigInt(size), tb.bus.id, 2n]);
    const items = parseItems(b, 24, size);
    assert.deepEqual(items.map((i) => [i.type, i.size, str(i)]), [[ItemType.MAKE_NAME, nameItem, tb.name]]);
    await expectOk(c.free(BigInt(offset)));
  });

  it('ANDs the requested mask with the creator mask of BUS_MAKE; no names, description or timestamp', async () => {
    const tb = await bus(Attach.CREDS | Attach.PIDS | Attach.TIMESTAMP | Attach.NAMES | Attach.CONN_DESCRIPTION);
    const c = await tb.conn();
    const info = async (mask: bigint) => {
      const r = await c.cmd('BUS_CREATOR_INFO', 0n, undefined, (w) => w.u64(0).u64(mask).u64(0).u64(0));
      if (r.errno) return { errno: r.errno, items: [] as ReceivedItem[] };
      const b = c.pool(Number(r.out.readBigUInt64LE(Off.info_cmd.offset)), Number(r.out.readBigUInt64LE(Off.info_cmd.info_size)));
      return { errno: 0, items: parseItems(b, 24, Number(b.readBigUInt64LE(0))) };
    };
    const all = await info(Attach.ANY);
    assert.deepEqual(all.items.map((i) => i.type), [ItemType.MAKE_NAME, ItemType.CREDS, ItemType.PIDS]);
    assert.deepEqual(u64s(all.items[1]!.payload), [...statusIds('Uid'), ...statusIds('Gid')]);
    assert.equal(all.items[2]!.payload.readBigUInt64LE(0), BigInt(process.pid));
    assert.deepEqual((await info(Attach.PIDS | Attach.CAPS)).items.map((i) => i.type), [ItemType.MAKE_NAME, ItemType.PIDS]);
    assert.deepEqual((await info(0n)).items.map((i) => i.type), [ItemType.MAKE_NAME]);
    assert.equal((await info(Attach.ALL + 1n)).errno, Errno.EINVAL);
  });

  it('is available to every kind of connection', async () => {
    const tb = await bus();
    const holder = (await registrar(tb, 'com.example.h', [])).client;
    const monitor = await tb.conn({ flags: HelloFlags.MONITOR });
    for (const c of [holder, monitor]) {
      await expectErrno(c.cmd('BUS_CREATOR_INFO', 0n, undefined, (w) => w.u64(0).u64(0).u64(0).u64(0)), 0);
    }
  });
});

/** A LIST record as names.c kdbus_list_write() lays it out. */
function listRecord(id: bigint, flags: bigint, name?: { flags: bigint; name: string }): Buffer {
  if (!name) {
    const b = Buffer.alloc(24);
    b.writeBigUInt64LE(24n, 0);
    b.writeBigUInt64LE(id, 8);
    b.writeBigUInt64LE(flags, 16);
    return b;
  }
  const itemSize = 24 + name.name.length + 1;
  const size = 24 + ALIGN8(itemSize);
  const b = Buffer.alloc(size);
  b.writeBigUInt64LE(BigInt(size), 0);
  b.writeBigUInt64LE(id, 8);
  b.writeBigUInt64LE(flags, 16);
  b.writeBigUInt64LE(BigInt(itemSize), 24);
  b.writeBigUInt64LE(BigInt(ItemType.OWNED_NAME), 32);
  b.writeBigUInt64LE(name.flags, 40);
  b.write(name.name, 48, 'latin1');
  return b;
}

describe('bus info: LIST (kdbus-abi §3.10)', () => {
  let tb: TestBus;
  let env: TestClient;
  beforeEach(async () => {
    tb = await TestBus.create();
    env = await tb.conn();
  });
  afterEach(() => tb.destroy());

  /** The raw records of a LIST, split by their size fields; kdbus does not sort them. */
  async function listRaw(c: TestClient, flags: bigint): Promise<Buffer[]> {
    const r = await c.cmd('LIST', flags, undefined, (w) => w.u64(0).u64(0));
    assert.equal(r.errno, 0);
    const offset = r.out.readBigUInt64LE(Off.list.offset);
    const size = Number(r.out.readBigUInt64LE(Off.list.list_size));
    if (size === 0) {
      assert.equal(offset, POOL_SIZE);
      return [];
    }
    const b = Buffer.from(c.pool(Number(offset), size));
    await expectOk(c.free(offset));
    const out: Buffer[] = [];
    for (let p = 0; p < b.length;) {
      const n = Number(b.readBigUInt64LE(p));
      out.push(b.subarray(p, p + n));
      p += n;
    }
    return out;
  }

  const sorted = (bufs: Buffer[]) => bufs.map((b) => b.toString('hex')).sort();

  it('lists every connection but monitors under UNIQUE, 24 bytes each with the HELLO flags', async () => {
    const holder = (await registrar(tb, 'com.example.holder', [])).client;
    const act = (await registrar(tb, 'com.example.act', [], HelloFlags.ACTIVATOR)).client;
    await tb.conn({ flags: HelloFlags.MONITOR });
    const plain = await tb.conn({ flags: 0n });
    assert.deepEqual(sorted(await listRaw(env, ListFlags.UNIQUE)), sorted([
      listRecord(env.id, HelloFlags.ACCEPT_FD),
      listRecord(holder.id, HelloFlags.POLICY_HOLDER),
      listRecord(act.id, HelloFlags.ACTIVATOR),
      listRecord(plain.id, 0n),
    ]));
  });

  it('reports names byte-exactly, each selection under its own flag', async () => {
    const a = await tb.conn();
    const q = await tb.conn();
    const act = (await registrar(tb, 'com.example.act', [], HelloFlags.ACTIVATOR)).client;
    const lazy = (await registrar(tb, 'com.example.lazy', [], HelloFlags.ACTIVATOR)).client;
    await expectOk(a.acquire('com.example.a', NameFlags.ALLOW_REPLACEMENT));
    await expectOk(a.acquire('com.example.act'));
    await expectOk(q.acquire('com.example.a', NameFlags.QUEUE));
    const A = NameFlags.ACTIVATOR;
    const names = [
      listRecord(a.id, HelloFlags.ACCEPT_FD, { flags: NameFlags.ALLOW_REPLACEMENT | NameFlags.PRIMARY, name: 'com.example.a' }),
      listRecord(a.id, HelloFlags.ACCEPT_FD, { flags: NameFlags.PRIMARY, name: 'com.example.act' }),
    ];
    const queued = [listRecord(q.id, HelloFlags.ACCEPT_FD, { flags: NameFlags.QUEUE | NameFlags.IN_QUEUE, name: 'com.example.a' })];
    const activators = [
      listRecord(act.id, HelloFlags.ACTIVATOR, { flags: A | NameFlags.IN_QUEUE, name: 'com.example.act' }),
      listRecord(lazy.id, HelloFlags.ACTIVATOR, { flags: A | NameFlags.PRIMARY, name: 'com.example.lazy' }),
    ];
    assert.deepEqual(sorted(await listRaw(env, ListFlags.NAMES)), sorted(names));
    assert.deepEqual(sorted(await listRaw(env, ListFlags.QUEUED)), sorted(queued));
    assert.deepEqual(sorted(await listRaw(env, ListFlags.ACTIVATORS)), sorted(activators));
    assert.deepEqual(sorted(await listRaw(env, ListFlags.NAMES | ListFlags.QUEUED | ListFlags.ACTIVATORS)), sorted([...names, ...queued, ...activators]));
    // UNIQUE adds a bare record for each connection that got none of the selected ones.
    assert.deepEqual(sorted(await listRaw(env, ListFlags.UNIQUE | ListFlags.NAMES)), sorted([
      ...names,
      listRecord(env.id, HelloFlags.ACCEPT_FD),
      listRecord(q.id, HelloFlags.ACCEPT_FD),
      listRecord(act.id, HelloFlags.ACTIVATOR),
      listRecord(lazy.id, HelloFlags.ACTIVATOR),
    ]));
    assert.deepEqual(sorted(await listRaw(env, ListFlags.UNIQUE | ListFlags.ACTIVATORS | ListFlags.QUEUED)), sorted([
      ...queued, ...activators,
      listRecord(env.id, HelloFlags.ACCEPT_FD),
      listRecord(a.id, HelloFlags.ACCEPT_FD),
    ]));
  });

  it('pads name records to 8 bytes whatever the name length', async () => {
    const c = await tb.conn();
    const lengths = ['a.b', 'a.bc', 'a.bcdefgh', 'a.bcdefghi'];
    for (const n of lengths) await expectOk(c.acquire(n));
    const recs = await listRaw(env, ListFlags.NAMES);
    assert.deepEqual(sorted(recs), sorted(lengths.map((n) => listRecord(c.id, HelloFlags.ACCEPT_FD, { flags: NameFlags.PRIMARY, name: n }))));
    assert.deepEqual(recs.map((r) => r.length).sort(), lengths.map((n) => 24 + ALIGN8(24 + n.length + 1)).sort());
  });

  it('returns the empty result (pool size, 0) when nothing is selected, and EINVAL for unknown flags', async () => {
    assert.deepEqual(await listRaw(env, 0n), []);
    assert.deepEqual(await listRaw(env, ListFlags.NAMES | ListFlags.QUEUED | ListFlags.ACTIVATORS), []);
    await expectErrno(env.cmd('LIST', 16n, undefined, (w) => w.u64(0).u64(0)), 'EINVAL');
    // Monitors may LIST too, and are not listed themselves.
    const monitor = await tb.conn({ flags: HelloFlags.MONITOR });
    assert.deepEqual(await listRaw(monitor, ListFlags.UNIQUE), [listRecord(env.id, HelloFlags.ACCEPT_FD)]);
  });

  it('puts the result in a pool slice that FREE gives back', async () => {
    const l1 = await env.list(ListFlags.UNIQUE);
    assert.equal(l1.offset, 0n);
    await expectOk(env.free(l1.offset));
    const l2 = await env.list(ListFlags.UNIQUE);
    assert.equal(l2.offset, 0n);
    const l3 = await env.list(ListFlags.UNIQUE);
    assert.equal(l3.offset, BigInt(ALIGN8(Number(l2.size))));
  });
});

describe('bus info: kernel notification layouts (kdbus-abi §3.16)', () => {
  let tb: TestBus;
  let w: TestClient;
  beforeEach(async () => {
    tb = await TestBus.create();
    w = await tb.conn();
    await w.matchAllNotifications();
  });
  afterEach(() => tb.destroy());

  function checkHeader(m: { size: bigint; flags: bigint; dstId: bigint; srcId: bigint; payloadType: bigint; cookie: bigint; cookieReply: bigint; priority: bigint; items: ReceivedItem[] }, itemSize: number): void {
    assert.equal(m.size, BigInt(64 + ALIGN8(itemSize) + 40));
    assert.deepEqual(
      [m.flags, m.priority, m.dstId, m.srcId, m.payloadType, m.cookie, m.cookieReply],
      [MsgFlags.SIGNAL, 0n, KDBUS_DST_ID_BROADCAST, 0n, 0n, 0n, 0n],
    );
    assert.deepEqual(m.items.map((i) => [i.type === ItemType.TIMESTAMP, i.size]).slice(1), [[true, 40]]);
    assert.equal(m.items[0]!.size, itemSize);
  }

  const nameChange = (p: Buffer) => ({
    oldId: p.readBigUInt64LE(0), oldFlags: p.readBigUInt64LE(8), newId: p.readBigUInt64LE(16), newFlags: p.readBigUInt64LE(24),
    name: p.toString('latin1', 32, p.indexOf(0, 32)),
  });

  it('lays out NAME_ADD, NAME_CHANGE and NAME_REMOVE with 16 + 32 + strlen + 1 byte items', async () => {
    const a = await tb.conn();
    const b = await tb.conn();
    await drain(w);
    const name = 'org.example.Name';
    await expectOk(a.acquire(name, NameFlags.ALLOW_REPLACEMENT));
    await expectOk(b.acquire(name, NameFlags.REPLACE_EXISTING));
    await expectOk(b.release(name));
    const msgs = await drain(w);
    assert.deepEqual(msgs.map((m) => m.items[0]!.type), [ItemType.NAME_ADD, ItemType.NAME_CHANGE, ItemType.NAME_REMOVE]);
    const itemSize = 16 + 32 + name.length + 1;
    for (const m of msgs) {
      checkHeader(m, itemSize);
      assert.equal(m.sliceSize, 64 + ALIGN8(itemSize) + 40);
      // The name is NUL-terminated and the item padded with zeros.
      const raw = m.raw.subarray(64, 64 + ALIGN8(itemSize));
      assert.deepEqual(raw.subarray(itemSize), Buffer.alloc(ALIGN8(itemSize) - itemSize + 0));
      assert.equal(raw[itemSize - 1], 0);
    }
    const P = NameFlags.PRIMARY;
    assert.deepEqual(nameChange(msgs[0]!.items[0]!.payload), { oldId: 0n, oldFlags: 0n, newId: a.id, newFlags: NameFlags.ALLOW_REPLACEMENT | P, name });
    assert.deepEqual(nameChange(msgs[1]!.items[0]!.payload), { oldId: a.id, oldFlags: NameFlags.ALLOW_REPLACEMENT | P, newId: b.id, newFlags: P, name });
    assert.deepEqual(nameChange(msgs[2]!.items[0]!.payload), { oldId: b.id, oldFlags: P, newId: 0n, newFlags: 0n, name });
  });

  it('lays out ID_REMOVE like ID_ADD: 136 bytes, id and HELLO flags', async () => {
    const c = await tb.conn({ flags: 0n });
    c.close();
    const msgs = await drain(w);
    assert.deepEqual(msgs.map((m) => m.items[0]!.type), [ItemType.ID_ADD, ItemType.ID_REMOVE]);
    for (const m of msgs) {
      checkHeader(m, 32);
      assert.deepEqual(u64s(m.items[0]!.payload), [c.id, 0n]);
    }
  });

  it('always attaches TIMESTAMP, with one seqnum per notification shared by all receivers', async () => {
    const silent = await tb.conn({ attachRecv: 0n });
    await silent.matchAllNotifications();
    const c = await tb.conn();
    await expectOk(c.acquire('com.example.ts'));
    const seen = await drain(w);
    const quiet = await drain(silent);
    assert.deepEqual(quiet.map((m) => m.items.map((i) => i.type)), [
      [ItemType.ID_ADD, ItemType.TIMESTAMP], [ItemType.NAME_ADD, ItemType.TIMESTAMP],
    ]);
    const seq = (m: { items: ReceivedItem[] }) => m.items[1]!.payload.readBigUInt64LE(0);
    assert.deepEqual(quiet.map(seq), seen.slice(-2).map(seq));
    assert.ok(seq(quiet[1]!) > seq(quiet[0]!));
  });
});
