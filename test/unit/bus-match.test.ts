/**
 * Matches as the bus applies them: which broadcasts, unicast signals and kernel
 * notifications reach a connection. Modelled on test-match.c (ID_ADD, ID_REMOVE,
 * MATCH_REPLACE, NAME_ADD/REMOVE/CHANGE, bloom generations) and the routing rules of
 * kdbus-abi.md §3.5 and §3.13 (kdbus_bus_broadcast, kdbus_conn_unicast).
 */
import assert from 'node:assert/strict';
import { Errno } from '../../src/abi/errno';
import {
  HelloFlags, ItemType, KDBUS_DST_ID_BROADCAST, KDBUS_MATCH_ID_ANY, MatchFlags, MsgFlags, NameFlags, PolicyAccess, PolicyAccessType,
} from '../../src/abi/constants';
import type { ItemWriter } from '../../src/abi/items';
import { TestBus, type TestClient, type ReceivedMessage, credsOf, expectOk } from '../helpers/kdbus-client';
import { Domain } from '../../src/bus/domain';
import { matchEntryCost } from '../../src/bus/match';
import { HeldBudget } from '../../src/os/held-budget';
import { OTHER_UID, UNPRIV_UID } from './bus-fixtures';

const ANY = KDBUS_MATCH_ID_ANY;
const BLOOM = 64;

const buses: TestBus[] = [];
async function newBus(): Promise<TestBus> {
  const tb = await TestBus.create({ bloomSize: BLOOM });
  buses.push(tb);
  return tb;
}
afterEach(() => {
  for (const tb of buses.splice(0)) tb.destroy();
});

function name(errno: number): string {
  if (errno === 0) return 'OK';
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

/** Kernel notifications as [type, id] (ID_*) or [type, old id, new id, name] (NAME_*). */
function notes(msgs: ReceivedMessage[]): unknown[] {
  return msgs.map((m) => {
    const it = m.items[0]!;
    const p = it.payload;
    if (it.type === ItemType.ID_ADD || it.type === ItemType.ID_REMOVE) return [it.type, p.readBigUInt64LE(0)];
    if (it.type >= ItemType.NAME_ADD && it.type <= ItemType.NAME_CHANGE) {
      return [it.type, p.readBigUInt64LE(0), p.readBigUInt64LE(16), p.toString('latin1', 32, it.size - 16 - 1)];
    }
    return ['user', m.srcId, m.cookie];
  });
}

const cookies = (msgs: ReceivedMessage[]) => msgs.map((m) => m.cookie);

const idRule = (type: ItemType.ID_ADD | ItemType.ID_REMOVE, id: bigint) => (w: ItemWriter) => w.itemU64(type, id, 0n);
function nameRule(type: ItemType.NAME_ADD | ItemType.NAME_REMOVE | ItemType.NAME_CHANGE, oldId: bigint, newId: bigint, nm?: string) {
  return (w: ItemWriter) => {
    const at = w.beginItem(type);
    w.u64(oldId).u64(0).u64(newId).u64(0);
    if (nm !== undefined) w.bytes(Buffer.from(nm + '\0', 'latin1'));
    w.endItem(at);
  };
}
const senderId = (id: bigint) => (w: ItemWriter) => w.itemU64(ItemType.ID, id);
const dstId = (id: bigint) => (w: ItemWriter) => w.itemU64(ItemType.DST_ID, id);
const senderName = (nm: string) => (w: ItemWriter) => w.string(ItemType.NAME, nm);
const bloomMask = (...generations: Buffer[]) => (w: ItemWriter) => w.item(ItemType.BLOOM_MASK, Buffer.concat(generations));
const rules = (...parts: Array<(w: ItemWriter) => unknown>) => (w: ItemWriter) => {
  for (const p of parts) p(w);
};

function signal(from: TestClient, cookie: bigint, o: { dst?: bigint; filter?: Buffer; generation?: bigint } = {}) {
  return from.send({ dst: o.dst ?? KDBUS_DST_ID_BROADCAST, cookie, flags: MsgFlags.SIGNAL, bloom: { generation: o.generation ?? 0n, data: o.filter ?? Buffer.alloc(BLOOM) } });
}

describe('bus matches: kernel notifications (test-match.c)', () => {
  let tb: TestBus;
  let c: TestClient;
  beforeEach(async () => {
    tb = await newBus();
    c = await tb.conn({ attachRecv: 0n });
  });

  it('ID_ADD with ANY: every new connection, as {id, HELLO flags} (msg size 136)', async () => {
    await expectOk(c.addMatch(0xdeafbeefdeaddeadn, idRule(ItemType.ID_ADD, ANY)));
    const d = await tb.conn({ flags: 0n });
    const [m, ...rest] = await drain(c);
    assert.equal(rest.length, 0);
    assert.deepEqual(m!.items.map((x) => [x.type, x.size]), [[ItemType.ID_ADD, 32], [ItemType.TIMESTAMP, 40]]);
    assert.deepEqual([m!.items[0]!.payload.readBigUInt64LE(0), m!.items[0]!.payload.readBigUInt64LE(8)], [d.id, 0n]);
    assert.deepEqual([m!.size, m!.flags, m!.dstId, m!.srcId], [136n, MsgFlags.SIGNAL, KDBUS_DST_ID_BROADCAST, 0n]);
    d.close();
    assert.deepEqual(await drain(c), [], 'no ID_REMOVE match');
  });

  it('ID_REMOVE for one id only', async () => {
    const d = await tb.conn();
    const e = await tb.conn();
    await expectOk(c.addMatch(1n, idRule(ItemType.ID_REMOVE, d.id)));
    e.close();
    d.close();
    assert.deepEqual(notes(await drain(c)), [[ItemType.ID_REMOVE, d.id]]);
  });

  it('MATCH_REPLACE swaps every entry of the cookie atomically; without it entries add up', async () => {
    const cookie = 0xdeafbeefdeaddeadn;
    await expectOk(c.addMatch(cookie, idRule(ItemType.ID_ADD, ANY)));
    await expectOk(c.addMatch(cookie, nameRule(ItemType.NAME_ADD, ANY, ANY)));
    await expectOk(c.addMatch(cookie, idRule(ItemType.ID_REMOVE, ANY), MatchFlags.REPLACE));
    const d = await tb.conn();
    await expectOk(d.acquire('org.example.D'));
    assert.deepEqual(await drain(c), [], 'neither ID_ADD nor NAME_ADD any more');
    d.close();
    assert.deepEqual(notes(await drain(c)), [[ItemType.ID_REMOVE, d.id]], 'only ID_REMOVE (the name release is not matched)');
    // REPLACE for a cookie not in use just adds.
    await expectOk(c.addMatch(7n, idRule(ItemType.ID_ADD, ANY), MatchFlags.REPLACE));
    const e = await tb.conn();
    assert.deepEqual(notes(await drain(c)), [[ItemType.ID_ADD, e.id]]);
  });

  it('MATCH_REMOVE drops every entry of the cookie; an unknown cookie is EBADSLT', async () => {
    assert.equal(name((await c.removeMatch(5n)).errno), 'EBADSLT');
    await expectOk(c.addMatch(5n, idRule(ItemType.ID_ADD, ANY)));
    await expectOk(c.addMatch(5n, idRule(ItemType.ID_REMOVE, ANY)));
    await expectOk(c.addMatch(6n, idRule(ItemType.ID_REMOVE, ANY)));
    await expectOk(c.removeMatch(5n));
    assert.equal(name((await c.removeMatch(5n)).errno), 'EBADSLT', 'gone');
    const d = await tb.conn();
    d.close();
    assert.deepEqual(notes(await drain(c)), [[ItemType.ID_REMOVE, d.id]], 'cookie 6 still matches');
  });

  it('NAME_ADD / NAME_REMOVE / NAME_CHANGE by name (test-match name_add, name_remove, name_change)', async () => {
    const d = await tb.conn();
    await expectOk(c.addMatch(1n, nameRule(ItemType.NAME_ADD, ANY, ANY, 'foo.bla.blaz')));
    await expectOk(c.addMatch(2n, nameRule(ItemType.NAME_REMOVE, ANY, ANY, 'foo.bla.blaz')));
    await expectOk(c.addMatch(3n, nameRule(ItemType.NAME_CHANGE, ANY, ANY, 'foo.bla.blaz')));
    await expectOk(c.acquire('foo.bla.blaz'));
    await expectOk(c.acquire('foo.bla.other'));
    await expectOk(d.acquire('foo.bla.blaz', NameFlags.QUEUE));
    await expectOk(c.release('foo.bla.blaz'));
    await expectOk(d.release('foo.bla.blaz'));
    assert.deepEqual(notes(await drain(c)), [
      [ItemType.NAME_ADD, 0n, c.id, 'foo.bla.blaz'],
      [ItemType.NAME_CHANGE, c.id, d.id, 'foo.bla.blaz'],
      [ItemType.NAME_REMOVE, d.id, 0n, 'foo.bla.blaz'],
    ]);
  });

  it('NAME_* rules filter on the old and the new owner id; without a name they take any name', async () => {
    const d = await tb.conn();
    const e = await tb.conn();
    await expectOk(c.addMatch(1n, nameRule(ItemType.NAME_ADD, ANY, d.id)));
    await expectOk(c.addMatch(2n, nameRule(ItemType.NAME_CHANGE, d.id, ANY)));
    await expectOk(c.addMatch(3n, nameRule(ItemType.NAME_REMOVE, e.id, ANY)));
    await expectOk(e.acquire('org.example.E1'));
    await expectOk(d.acquire('org.example.D1', NameFlags.ALLOW_REPLACEMENT));
    await expectOk(e.acquire('org.example.D1', NameFlags.REPLACE_EXISTING));
    await expectOk(d.acquire('org.example.D2', NameFlags.ALLOW_REPLACEMENT));
    await expectOk(e.release('org.example.E1'));
    await expectOk(e.release('org.example.D1'));
    assert.deepEqual(notes(await drain(c)), [
      [ItemType.NAME_ADD, 0n, d.id, 'org.example.D1'],
      [ItemType.NAME_CHANGE, d.id, e.id, 'org.example.D1'],
      [ItemType.NAME_ADD, 0n, d.id, 'org.example.D2'],
      [ItemType.NAME_REMOVE, e.id, 0n, 'org.example.E1'],
      [ItemType.NAME_REMOVE, e.id, 0n, 'org.example.D1'],
    ]);
  });

  it('an entry without rules matches everything; a lone ID = ANY rule matches user messages but no notification', async () => {
    const d = await tb.conn();
    await expectOk(c.addMatch(1n));
    await expectOk(d.matchAllBroadcasts());
    const e = await tb.conn();
    await expectOk(signal(e, 0x51n));
    assert.deepEqual(notes(await drain(c)), [[ItemType.ID_ADD, e.id], ['user', e.id, 0x51n]]);
    assert.deepEqual(notes(await drain(d)), [['user', e.id, 0x51n]]);
  });

  it('notifications are not subject to TALK: an unprivileged connection sees them', async () => {
    const u = await tb.conn({ attachRecv: 0n }, { creds: credsOf(1000), privileged: false });
    await u.matchAllNotifications();
    const d = await tb.conn();
    await expectOk(d.acquire('org.example.D'));
    assert.deepEqual(notes(await drain(u)), [[ItemType.ID_ADD, d.id], [ItemType.NAME_ADD, 0n, d.id, 'org.example.D']]);
  });
});

describe('bus matches: broadcasts and unicast signals', () => {
  let tb: TestBus;
  let c: TestClient;
  let s: TestClient;
  beforeEach(async () => {
    tb = await newBus();
    c = await tb.conn({ attachRecv: 0n });
    s = await tb.conn({ attachRecv: 0n });
  });

  it('bloom masks by generation (test-match bloom)', async () => {
    const gen0 = Buffer.alloc(BLOOM);
    gen0[0] = 0x55;
    gen0[63] = 0x80;
    const gen1 = Buffer.alloc(BLOOM);
    gen1[1] = 0xaa;
    gen1[9] = 0x02;
    await expectOk(c.addMatch(0n, bloomMask(gen0, gen1)));
    const filter = Buffer.alloc(BLOOM);
    let cookie = 0xf000f00fn;
    const send = async (generation: bigint) => {
      await expectOk(signal(s, ++cookie, { filter, generation }));
      return cookies(await drain(c));
    };
    assert.deepEqual(await send(0n), [], 'zeroed filter');
    filter[0] = 0x55;
    filter[63] = 0x80;
    assert.deepEqual(await send(0n), [cookie], 'the mask\'s bits');
    filter[0] = 0xff;
    filter[8] = 0xff;
    filter[63] = 0xff;
    assert.deepEqual(await send(0n), [cookie], 'more bits');
    assert.deepEqual(await send(1n), [], 'generation 1 uses the second mask');
    filter[1] = 0xaa;
    filter[9] = 0x02;
    assert.deepEqual(await send(1n), [cookie], 'second mask satisfied');
    assert.deepEqual(await send(7n), [cookie], 'later generations use the last mask');
  });

  it('a bloom mask that is not a multiple of the bus bloom size is EDOM', async () => {
    assert.equal(name((await c.addMatch(1n, bloomMask(Buffer.alloc(BLOOM + 8)))).errno), 'EDOM');
    assert.equal(name((await c.addMatch(1n, bloomMask(Buffer.alloc(0)))).errno), 'EDOM');
  });

  it('rules of one entry are ANDed, entries are ORed', async () => {
    const t = await tb.conn();
    const mask = Buffer.alloc(BLOOM);
    mask[3] = 0x10;
    await expectOk(c.addMatch(1n, rules(senderId(s.id), bloomMask(mask))));
    await expectOk(c.addMatch(2n, senderId(t.id)));
    const hit = Buffer.alloc(BLOOM);
    hit[3] = 0x10;
    await expectOk(signal(s, 1n));
    await expectOk(signal(s, 2n, { filter: hit }));
    await expectOk(signal(t, 3n));
    assert.deepEqual(notes(await drain(c)), [['user', s.id, 2n], ['user', t.id, 3n]]);
  });

  it('NAME: the sender must be the primary owner of the name when it sends', async () => {
    await expectOk(c.addMatch(1n, senderName('org.example.Src')));
    const q = await tb.conn();
    await expectOk(signal(s, 1n));
    await expectOk(s.acquire('org.example.Src'));
    await expectOk(q.acquire('org.example.Src', NameFlags.QUEUE));
    await expectOk(signal(s, 2n));
    await expectOk(signal(q, 3n));
    await expectOk(s.release('org.example.Src'));
    await expectOk(signal(s, 4n));
    await expectOk(signal(q, 5n));
    assert.deepEqual(notes(await drain(c)), [['user', s.id, 2n], ['user', q.id, 5n]]);
    assert.equal(name((await c.addMatch(2n, senderName('foo'))).errno), 'EINVAL');
  });

  it('DST_ID: the message\'s dst_id as sent (~0 is ANY; a signal sent by name has dst_id 0)', async () => {
    await expectOk(c.addMatch(1n, dstId(ANY)));
    const d = await tb.conn({ attachRecv: 0n });
    await expectOk(d.acquire('org.example.D'));
    await expectOk(d.addMatch(1n, dstId(d.id)));
    await expectOk(signal(s, 1n));
    await expectOk(signal(s, 2n, { dst: c.id }));
    await expectOk(signal(s, 3n, { dst: d.id }));
    await expectOk(s.send({ name: 'org.example.D', cookie: 4n, flags: MsgFlags.SIGNAL, bloom: { data: Buffer.alloc(BLOOM) } }));
    assert.deepEqual(cookies(await drain(c)), [1n, 2n], 'c: ANY');
    assert.deepEqual(cookies(await drain(d)), [3n], 'd: its id only, not its name');
    await expectOk(d.addMatch(2n, dstId(0n)));
    await expectOk(s.send({ name: 'org.example.D', cookie: 5n, flags: MsgFlags.SIGNAL, bloom: { data: Buffer.alloc(BLOOM) } }));
    assert.deepEqual(cookies(await drain(d)), [5n], 'dst_id 0 for name-addressed messages');
  });

  it('unicast signals without a matching entry are dropped silently; method calls are never filtered', async () => {
    const mon = await tb.conn({ flags: HelloFlags.MONITOR, attachRecv: 0n });
    assert.equal((await signal(s, 1n, { dst: c.id })).errno, 0);
    const r = await c.recv();
    assert.deepEqual([name(r.errno), r.dropped], ['EAGAIN', 0n], 'not queued, not counted as lost');
    assert.deepEqual(cookies(await drain(mon)), [1n], 'monitors see it anyway');
    await expectOk(c.addMatch(1n, senderId(s.id)));
    await expectOk(signal(s, 2n, { dst: c.id }));
    await expectOk(s.send({ dst: c.id, cookie: 3n }));
    assert.deepEqual(cookies(await drain(c)), [2n, 3n]);
    // By name too; resolution errors still reach the sender.
    await expectOk(c.acquire('org.example.C'));
    await expectOk(s.send({ name: 'org.example.C', cookie: 4n, flags: MsgFlags.SIGNAL, bloom: { data: Buffer.alloc(BLOOM) } }));
    assert.equal(name((await s.send({ name: 'org.example.None', flags: MsgFlags.SIGNAL, bloom: { data: Buffer.alloc(BLOOM) } })).errno), 'ESRCH');
    assert.deepEqual(cookies(await drain(c)), [4n]);
  });

  it('broadcasts reach the sender itself when it matches (test-message basic), never a connection without a match', async () => {
    await expectOk(s.matchAllBroadcasts());
    await expectOk(c.matchAllBroadcasts());
    const quiet = await tb.conn();
    await expectOk(signal(s, 0x1234abcd5678eeffn));
    assert.deepEqual(cookies(await drain(s)), [0x1234abcd5678eeffn]);
    assert.deepEqual(cookies(await drain(c)), [0x1234abcd5678eeffn]);
    const r = await quiet.recv();
    assert.deepEqual([name(r.errno), r.dropped], ['EAGAIN', 0n]);
  });

  it('a broadcast receiver needs TALK towards the sender, by its own credentials', async () => {
    const u = await tb.conn({ attachRecv: 0n }, { creds: credsOf(1000), privileged: false });
    await expectOk(u.matchAllBroadcasts());
    await expectOk(c.matchAllBroadcasts());
    await expectOk(signal(s, 1n));
    await expectOk(signal(u, 2n));
    assert.deepEqual(cookies(await drain(u)), [2n], 'uid 1000 may not hear root\'s broadcast, but its own');
    assert.deepEqual(cookies(await drain(c)), [1n, 2n], 'the owner hears both');
    // Unicast signals follow the same rule: the receiver's permission decides, silently.
    await expectOk(u.addMatch(2n, dstId(u.id)));
    assert.equal((await signal(s, 3n, { dst: u.id })).errno, 0);
    assert.deepEqual(await drain(u), []);
    // TALK granted on a name the sender holds opens the way.
    const holder = tb.client();
    await expectOk(holder.hello({
      flags: HelloFlags.POLICY_HOLDER,
      items: (w) => {
        w.string(ItemType.NAME, 'org.example.Loud');
        w.itemU64(ItemType.POLICY_ACCESS, PolicyAccessType.USER, PolicyAccess.TALK, 1000);
      },
    }));
    await expectOk(s.acquire('org.example.Loud'));
    await expectOk(signal(s, 4n));
    assert.deepEqual(cookies(await drain(u)), [4n]);
  });

  it('monitors get every broadcast and notification without matches; MATCH_ADD is for ordinary connections only', async () => {
    const mon = await tb.conn({ flags: HelloFlags.MONITOR, attachRecv: 0n });
    await expectOk(signal(s, 1n));
    const d = await tb.conn();
    assert.deepEqual(notes(await drain(mon)), [['user', s.id, 1n], [ItemType.ID_ADD, d.id]]);
    assert.equal(name((await mon.addMatch(1n)).errno), 'EOPNOTSUPP');
    const act = await tb.conn({ flags: HelloFlags.ACTIVATOR, items: (w) => w.string(ItemType.NAME, 'org.example.Act') });
    assert.equal(name((await act.addMatch(1n)).errno), 'EOPNOTSUPP');
    assert.equal(name((await act.removeMatch(1n)).errno), 'EOPNOTSUPP');
  });

  it('a connection\'s matches go with it', async () => {
    await expectOk(c.matchAllBroadcasts());
    const conn = c.conn;
    assert.notEqual(tb.bus.matches.db(conn), undefined);
    c.close();
    await expectOk(signal(s, 1n));
    assert.equal(tb.bus.matches.db(conn), undefined);
  });
});

describe('bus matches: the memory match entries cost the daemon', () => {
  const buses: TestBus[] = [];
  afterEach(() => {
    for (const b of buses.splice(0)) b.destroy();
  });

  // One entry: a bloom mask of 100 generations (each costs the index a place).
  const generations = 100;
  const big = (w: ItemWriter): void => {
    const at = w.beginItem(ItemType.BLOOM_MASK);
    w.zeros(BLOOM * generations);
    w.endItem(at);
  };

  it("refuses with ENOMEM the entry that would cost more than its user's share, and gives it back on remove and disconnect", async () => {
    const one = matchEntryCost([{ type: ItemType.BLOOM_MASK, generations, blockWords: BLOOM / 4, words: new Int32Array((BLOOM * generations) / 4) }]);
    assert.ok(one > BLOOM * generations, `an entry costs ${one} bytes, more than its mask`);
    const domain = new Domain();
    domain.matchBytes = new HeldBudget('bytes of match entries', { perUser: 3 * one, total: 100 * one });
    const tb = await TestBus.create({ bloomSize: BLOOM, domain });
    buses.push(tb);
    const c = await tb.conn({}, { creds: credsOf(UNPRIV_UID, UNPRIV_UID), privileged: false });
    const other = await tb.conn({}, { creds: credsOf(OTHER_UID, OTHER_UID), privileged: false });
    for (const cookie of [1n, 2n, 3n]) await expectOk(c.addMatch(cookie, big));
    assert.equal(tb.bus.matches.db(c.conn)!.bytes, 3 * one);
    assert.equal(name((await c.addMatch(4n, big)).errno), 'ENOMEM');
    assert.equal(tb.bus.matches.db(c.conn)!.count, 3, 'nothing was added');
    assert.equal(domain.matchBytes.held(UNPRIV_UID), 3 * one);
    await expectOk(other.addMatch(1n, big));
    await expectOk(c.removeMatch(2n));
    await expectOk(c.addMatch(4n, big));
    // A replacement costs only the difference.
    await expectOk(c.addMatch(4n, big, MatchFlags.REPLACE));
    c.close();
    assert.equal(domain.matchBytes.held(UNPRIV_UID), 0);
    assert.equal(domain.matchBytes.held(OTHER_UID), one);
  });
});
