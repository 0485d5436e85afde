import assert from 'node:assert/strict';
import { ItemType, KDBUS_DST_ID_BROADCAST, KDBUS_MATCH_ID_ANY } from '../../src/abi/constants';
import { Errno, KdbusError } from '../../src/abi/errno';
import { MatchDb, parseMatchRules, type MatchRule, type NotificationView, type UserMessageView } from '../../src/bus/match';
import { MatchIndex } from '../../src/bus/match-index';
import { seededRandom } from '../helpers/random';

const ANY = KDBUS_MATCH_ID_ANY;
const BLOOM = 64;

interface RawItem {
  type: number;
  payload: Buffer;
}

const u64s = (...values: bigint[]): Buffer => {
  const b = Buffer.alloc(values.length * 8);
  values.forEach((v, i) => b.writeBigUInt64LE(v, i * 8));
  return b;
};
const str = (s: string): Buffer => Buffer.from(`${s}\0`, 'latin1');
const idItem = (id: bigint): RawItem => ({ type: ItemType.ID, payload: u64s(id) });
const dstItem = (id: bigint): RawItem => ({ type: ItemType.DST_ID, payload: u64s(id) });
const nameItem = (name: string): RawItem => ({ type: ItemType.NAME, payload: str(name) });
const idChange = (type: number, id: bigint, flags = 0n): RawItem => ({ type, payload: u64s(id, flags) });
const nameChange = (type: number, oldId: bigint, newId: bigint, name?: string, flags = 0n): RawItem => ({
  type,
  payload: Buffer.concat([u64s(oldId, flags, newId, flags), name === undefined ? Buffer.alloc(0) : str(name)]),
});
/** Bloom mask item from generation blocks given as {byte index: value}. */
const maskItem = (...blocks: Array<Record<number, number>>): RawItem => {
  const payload = Buffer.alloc(BLOOM * blocks.length);
  blocks.forEach((b, g) => {
    for (const [i, v] of Object.entries(b)) payload[g * BLOOM + Number(i)] = v;
  });
  return { type: ItemType.BLOOM_MASK, payload };
};
const filterOf = (bytes: Record<number, number>, size = BLOOM): Buffer => {
  const b = Buffer.alloc(size);
  for (const [i, v] of Object.entries(bytes)) b[Number(i)] = v;
  return b;
};

function message(
  opts: { src?: bigint; dst?: bigint; filter?: Buffer; generation?: bigint; names?: string[] } = {},
): UserMessageView & { asked: string[] } {
  const asked: string[] = [];
  return {
    srcId: opts.src ?? 10n,
    dstId: opts.dst ?? KDBUS_DST_ID_BROADCAST,
    bloom: opts.filter === undefined ? undefined : { generation: opts.generation ?? 0n, data: opts.filter },
    senderHoldsName(name: string) {
      asked.push(name);
      return (opts.names ?? []).includes(name);
    },
    asked,
  };
}

const rules = (...items: RawItem[]): MatchRule[] => parseMatchRules(items, BLOOM);

function dbWith(...entries: RawItem[][]): MatchDb {
  const db = new MatchDb();
  entries.forEach((items, i) => db.add(BigInt(i + 1), rules(...items), false));
  return db;
}

function throwsErrno(fn: () => unknown, code: keyof typeof Errno): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof KdbusError, `expected a KdbusError, got ${String(e)}`);
    assert.equal(e.errno, Errno[code], `expected ${code}, got ${e.message}`);
    return true;
  });
}

describe('match rules: parseMatchRules', () => {
  it('parses every rule kind with the fields the kernel keeps', () => {
    const parsed = rules(
      maskItem({ 0: 1 }, { 1: 2 }),
      nameItem('org.example.Foo'),
      idItem(7n),
      dstItem(ANY),
      idChange(ItemType.ID_ADD, 5n, 0xffn),
      idChange(ItemType.ID_REMOVE, ANY),
      nameChange(ItemType.NAME_ADD, 1n, 2n, 'a.b', 3n),
      nameChange(ItemType.NAME_CHANGE, ANY, ANY),
    );
    assert.equal(parsed.length, 8);
    const [bloom, name, id, dst, idAdd, idRemove, nameAdd, nameChg] = parsed;
    assert.ok(bloom.type === ItemType.BLOOM_MASK);
    assert.equal(bloom.generations, 2);
    assert.equal(bloom.blockWords, BLOOM / 4);
    assert.deepEqual(name, { type: ItemType.NAME, name: 'org.example.Foo' });
    assert.deepEqual(id, { type: ItemType.ID, id: 7n });
    assert.deepEqual(dst, { type: ItemType.DST_ID, id: ANY });
    assert.deepEqual(idAdd, { type: ItemType.ID_ADD, id: 5n });
    assert.deepEqual(idRemove, { type: ItemType.ID_REMOVE, id: ANY });
    assert.deepEqual(nameAdd, { type: ItemType.NAME_ADD, oldId: 1n, newId: 2n, name: 'a.b' });
    assert.deepEqual(nameChg, { type: ItemType.NAME_CHANGE, oldId: ANY, newId: ANY, name: undefined });
  });

  it('accepts a name of exactly 255 characters and rejects 256', () => {
    const n255 = `a.${'b'.repeat(253)}`;
    assert.equal(rules(nameItem(n255)).length, 1);
    throwsErrno(() => rules(nameItem(`${n255}c`)), 'EINVAL');
  });

  const cases: Array<[string, RawItem[], keyof typeof Errno]> = [
    ['an item type MATCH_ADD does not take', [{ type: ItemType.DST_NAME, payload: str('a.b') }], 'EINVAL'],
    ['an unknown item type', [{ type: 0x1234, payload: Buffer.alloc(8) }], 'EINVAL'],
    ['an ID item of 4 bytes', [{ type: ItemType.ID, payload: Buffer.alloc(4) }], 'EINVAL'],
    ['a DST_ID item of 16 bytes', [{ type: ItemType.DST_ID, payload: Buffer.alloc(16) }], 'EINVAL'],
    ['a NAME without NUL', [{ type: ItemType.NAME, payload: Buffer.from('a.b') }], 'EINVAL'],
    ['a NAME with an inner NUL', [{ type: ItemType.NAME, payload: Buffer.from('a\0.b\0') }], 'EINVAL'],
    ['a NAME with one element', [nameItem('foo')], 'EINVAL'],
    ['a NAME with an element starting with a digit', [nameItem('foo.1bar')], 'EINVAL'],
    ['an empty bloom mask', [{ type: ItemType.BLOOM_MASK, payload: Buffer.alloc(0) }], 'EDOM'],
    ['a bloom mask shorter than the bloom size', [{ type: ItemType.BLOOM_MASK, payload: Buffer.alloc(32) }], 'EDOM'],
    ['a bloom mask that is no multiple of the bloom size', [{ type: ItemType.BLOOM_MASK, payload: Buffer.alloc(72) }], 'EDOM'],
    ['a NAME_ADD shorter than kdbus_notify_name_change', [{ type: ItemType.NAME_ADD, payload: Buffer.alloc(24) }], 'EINVAL'],
    ['a NAME_REMOVE whose name lacks its NUL', [{ type: ItemType.NAME_REMOVE, payload: Buffer.concat([Buffer.alloc(32), Buffer.from('a.b')]) }], 'EINVAL'],
    ['an ID_ADD of 8 bytes', [{ type: ItemType.ID_ADD, payload: Buffer.alloc(8) }], 'EINVAL'],
    ['an ID_REMOVE of 24 bytes', [{ type: ItemType.ID_REMOVE, payload: Buffer.alloc(24) }], 'EINVAL'],
    ['a NEGOTIATE item of 4 bytes', [{ type: ItemType.NEGOTIATE, payload: Buffer.alloc(4) }], 'EINVAL'],
    ['two NEGOTIATE items', [{ type: ItemType.NEGOTIATE, payload: Buffer.alloc(0) }, { type: ItemType.NEGOTIATE, payload: Buffer.alloc(0) }], 'EINVAL'],
    // kdbus_args_verify checks all items before any becomes a rule, so the later item's shape error wins over EDOM.
    ['a bad bloom mask followed by a malformed ID', [{ type: ItemType.BLOOM_MASK, payload: Buffer.alloc(8) }, { type: ItemType.ID, payload: Buffer.alloc(2) }], 'EINVAL'],
    // ...while rule conversion then stops at the first failing item.
    ['a bad bloom mask followed by an invalid name', [{ type: ItemType.BLOOM_MASK, payload: Buffer.alloc(8) }, nameItem('nodot')], 'EDOM'],
    ['an invalid name followed by a bad bloom mask', [nameItem('nodot'), { type: ItemType.BLOOM_MASK, payload: Buffer.alloc(8) }], 'EINVAL'],
  ];
  for (const [what, items, code] of cases) {
    it(`rejects ${what} with ${code}`, () => throwsErrno(() => rules(...items), code));
  }

  it('takes the bloom size from the bus', () => {
    assert.equal(parseMatchRules([{ type: ItemType.BLOOM_MASK, payload: Buffer.alloc(24) }], 8).length, 1);
    throwsErrno(() => parseMatchRules([{ type: ItemType.BLOOM_MASK, payload: Buffer.alloc(24) }], 16), 'EDOM');
  });
});

describe('match database: user messages', () => {
  const notification: NotificationView = { type: ItemType.ID_ADD, id: 3n };

  it('an entry without rules matches user messages and notifications', () => {
    const db = dbWith([]);
    assert.equal(db.matchMessage(message()), true);
    assert.equal(db.matchMessage(message({ filter: filterOf({}) })), true);
    assert.equal(db.matchNotification(notification), true);
  });

  it('a database without entries matches nothing', () => {
    const db = new MatchDb();
    assert.equal(db.matchMessage(message()), false);
    assert.equal(db.matchNotification(notification), false);
  });

  it('a single ID = ANY rule matches every user message and no notification (the selftests\' "empty" match)', () => {
    const db = dbWith([idItem(ANY)]);
    assert.equal(db.matchMessage(message({ src: 1n })), true);
    assert.equal(db.matchMessage(message({ src: 99n, dst: 4n, filter: filterOf({ 3: 0xff }) })), true);
    for (const type of [ItemType.ID_ADD, ItemType.ID_REMOVE, ItemType.NAME_ADD, ItemType.NAME_REMOVE, ItemType.NAME_CHANGE]) {
      assert.equal(db.matchNotification({ type, id: 1n, oldId: 1n, newId: 2n, name: 'a.b' }), false);
    }
  });

  it('ID matches the sender id only', () => {
    const db = dbWith([idItem(7n)]);
    assert.equal(db.matchMessage(message({ src: 7n })), true);
    assert.equal(db.matchMessage(message({ src: 8n })), false);
  });

  it('DST_ID matches the destination; broadcasts carry ~0, which equals ANY', () => {
    const to5 = dbWith([dstItem(5n)]);
    assert.equal(to5.matchMessage(message({ dst: 5n })), true);
    assert.equal(to5.matchMessage(message({ dst: 6n })), false);
    assert.equal(to5.matchMessage(message({ dst: KDBUS_DST_ID_BROADCAST })), false);
    const any = dbWith([dstItem(ANY)]);
    assert.equal(any.matchMessage(message({ dst: 6n })), true);
    assert.equal(any.matchMessage(message({ dst: KDBUS_DST_ID_BROADCAST })), true);
  });

  it('NAME asks whether the sender holds the name', () => {
    const db = dbWith([nameItem('org.example.A')]);
    const holder = message({ names: ['org.example.A'] });
    assert.equal(db.matchMessage(holder), true);
    assert.deepEqual(holder.asked, ['org.example.A']);
    assert.equal(db.matchMessage(message({ names: ['org.example.B'] })), false);
  });

  it('all rules of an entry must match, any entry may', () => {
    const db = dbWith([idItem(7n), dstItem(5n)], [idItem(8n), nameItem('a.b')]);
    assert.equal(db.matchMessage(message({ src: 7n, dst: 5n })), true);
    assert.equal(db.matchMessage(message({ src: 7n, dst: 6n })), false);
    assert.equal(db.matchMessage(message({ src: 8n, names: ['a.b'] })), true);
    assert.equal(db.matchMessage(message({ src: 8n })), false);
    assert.equal(db.matchMessage(message({ src: 9n, dst: 5n, names: ['a.b'] })), false);
  });

  it('checks ids before it asks the name registry', () => {
    const db = dbWith([nameItem('a.b'), idItem(7n)]);
    const m = message({ src: 8n, names: ['a.b'] });
    assert.equal(db.matchMessage(m), false);
    assert.deepEqual(m.asked, []);
  });

  it('bloom generations as in test-match.c match-bloom', () => {
    // Generation 0 mask: byte 0 = 0x55, byte 63 = 0x80; generation 1 mask: byte 1 = 0xaa, byte 9 = 0x02.
    const db = dbWith([maskItem({ 0: 0x55, 63: 0x80 }, { 1: 0xaa, 9: 0x02 })]);
    const filter = filterOf({});
    assert.equal(db.matchMessage(message({ filter, generation: 0n })), false, 'zeroed filter');
    filter[0] = 0x55;
    filter[63] = 0x80;
    assert.equal(db.matchMessage(message({ filter, generation: 0n })), true, 'filter equal to the mask');
    filter[0] = 0xff;
    filter[8] = 0xff;
    filter[63] = 0xff;
    assert.equal(db.matchMessage(message({ filter, generation: 0n })), true, 'superset of the mask');
    assert.equal(db.matchMessage(message({ filter, generation: 1n })), false, 'generation 1 uses the second mask');
    filter[1] = 0xaa;
    filter[9] = 0x02;
    assert.equal(db.matchMessage(message({ filter, generation: 1n })), true, 'second mask satisfied');
    // Later generations keep using the last mask.
    assert.equal(db.matchMessage(message({ filter, generation: 7n })), true);
    assert.equal(db.matchMessage(message({ filter, generation: 0xffff_ffff_ffff_ffffn })), true);
    assert.equal(db.matchMessage(message({ filter: filterOf({ 1: 0xaa }), generation: 5n })), false);
  });

  it('a single-generation mask serves every filter generation', () => {
    const db = dbWith([maskItem({ 5: 0x10 })]);
    assert.equal(db.matchMessage(message({ filter: filterOf({ 5: 0x10 }), generation: 3n })), true);
    assert.equal(db.matchMessage(message({ filter: filterOf({ 5: 0x01 }), generation: 3n })), false);
  });

  it('an all-zero mask matches every filter, an all-ones mask only an all-ones filter', () => {
    const zero = dbWith([maskItem({})]);
    assert.equal(zero.matchMessage(message({ filter: filterOf({}) })), true);
    const full: Record<number, number> = {};
    for (let i = 0; i < BLOOM; i++) full[i] = 0xff;
    const ones = dbWith([maskItem(full)]);
    assert.equal(ones.matchMessage(message({ filter: filterOf(full) })), true);
    assert.equal(ones.matchMessage(message({ filter: filterOf({ ...full, 37: 0xfe }) })), false);
  });

  it('compares the sign bit of a word like any other bit', () => {
    const db = dbWith([maskItem({ 3: 0x80, 60: 0x80 })]);
    assert.equal(db.matchMessage(message({ filter: filterOf({ 3: 0x80, 60: 0x80 }) })), true);
    assert.equal(db.matchMessage(message({ filter: filterOf({ 3: 0x80, 60: 0x7f }) })), false);
  });

  it('reads a filter that is not 4-byte aligned in its buffer', () => {
    const db = dbWith([maskItem({ 0: 0x01, 63: 0x40 })]);
    const backing = Buffer.alloc(BLOOM + 3);
    const filter = backing.subarray(3);
    filter[0] = 0x01;
    filter[63] = 0x40;
    assert.equal(db.matchMessage(message({ filter })), true);
    filter[63] = 0;
    assert.equal(db.matchMessage(message({ filter })), false);
  });

  it('a bloom rule does not match a message without a filter', () => {
    assert.equal(dbWith([maskItem({})]).matchMessage(message()), false);
  });

  it('notification rules never match a user message', () => {
    const db = dbWith(
      [idChange(ItemType.ID_ADD, ANY)],
      [idChange(ItemType.ID_REMOVE, ANY)],
      [nameChange(ItemType.NAME_ADD, ANY, ANY)],
      [nameChange(ItemType.NAME_REMOVE, ANY, ANY)],
      [nameChange(ItemType.NAME_CHANGE, ANY, ANY)],
    );
    assert.equal(db.matchMessage(message({ filter: filterOf({}) })), false);
  });

  it('an entry mixing user and notification rules, or carrying NEGOTIATE, matches nothing', () => {
    const mixed = dbWith([idItem(ANY), idChange(ItemType.ID_ADD, ANY)]);
    assert.equal(mixed.matchMessage(message()), false);
    assert.equal(mixed.matchNotification({ type: ItemType.ID_ADD, id: 1n }), false);
    const negotiate = dbWith([{ type: ItemType.NEGOTIATE, payload: u64s(BigInt(ItemType.ID)) }]);
    assert.equal(negotiate.matchMessage(message()), false);
    assert.equal(negotiate.matchNotification({ type: ItemType.ID_ADD, id: 1n }), false);
  });
});

describe('match database: kernel notifications', () => {
  it('ID_ADD / ID_REMOVE match their own type, with ANY or the connection id', () => {
    const db = dbWith([idChange(ItemType.ID_ADD, ANY)], [idChange(ItemType.ID_REMOVE, 4n, 0x1234n)]);
    assert.equal(db.matchNotification({ type: ItemType.ID_ADD, id: 9n }), true);
    assert.equal(db.matchNotification({ type: ItemType.ID_REMOVE, id: 4n }), true);
    assert.equal(db.matchNotification({ type: ItemType.ID_REMOVE, id: 5n }), false);
    assert.equal(db.matchNotification({ type: ItemType.NAME_ADD, oldId: 0n, newId: 9n, name: 'a.b' }), false);
  });

  it('NAME_* match old id, new id and name, each ANY/absent or equal, flags ignored', () => {
    const db = dbWith([nameChange(ItemType.NAME_CHANGE, 3n, ANY, 'foo.bla.baz', 0xdeadn)]);
    assert.equal(db.matchNotification({ type: ItemType.NAME_CHANGE, oldId: 3n, newId: 4n, name: 'foo.bla.baz' }), true);
    assert.equal(db.matchNotification({ type: ItemType.NAME_CHANGE, oldId: 2n, newId: 4n, name: 'foo.bla.baz' }), false);
    assert.equal(db.matchNotification({ type: ItemType.NAME_CHANGE, oldId: 3n, newId: 4n, name: 'foo.bla.bar' }), false);
    assert.equal(db.matchNotification({ type: ItemType.NAME_ADD, oldId: 3n, newId: 4n, name: 'foo.bla.baz' }), false);

    const byNew = dbWith([nameChange(ItemType.NAME_ADD, ANY, 8n)]);
    assert.equal(byNew.matchNotification({ type: ItemType.NAME_ADD, oldId: 0n, newId: 8n, name: 'x.y' }), true);
    assert.equal(byNew.matchNotification({ type: ItemType.NAME_ADD, oldId: 0n, newId: 9n, name: 'x.y' }), false);
  });

  it('an empty name after the struct only matches an empty name', () => {
    const db = dbWith([nameChange(ItemType.NAME_REMOVE, ANY, ANY, '')]);
    assert.equal(db.matchNotification({ type: ItemType.NAME_REMOVE, oldId: 1n, newId: 0n, name: 'a.b' }), false);
  });

  it('user rules never match a notification', () => {
    const db = dbWith([maskItem({})], [dstItem(ANY)], [nameItem('a.b')]);
    assert.equal(db.matchNotification({ type: ItemType.ID_ADD, id: 1n }), false);
  });
});

describe('match database: add, replace, remove', () => {
  const idAdd = rules(idChange(ItemType.ID_ADD, ANY));
  const idRemove = rules(idChange(ItemType.ID_REMOVE, ANY));

  it('REPLACE swaps the entry of a cookie (test-match.c match-replace)', () => {
    const db = new MatchDb();
    db.add(0xdeafbeefdeaddeadn, idAdd, false);
    db.add(0xdeafbeefdeaddeadn, idRemove, true);
    assert.equal(db.count, 1);
    assert.equal(db.matchNotification({ type: ItemType.ID_ADD, id: 2n }), false);
    assert.equal(db.matchNotification({ type: ItemType.ID_REMOVE, id: 2n }), true);
  });

  it('without REPLACE entries with the same cookie pile up, and REPLACE removes them all', () => {
    const db = new MatchDb();
    db.add(1n, idAdd, false);
    db.add(1n, idAdd, false);
    db.add(2n, idAdd, false);
    assert.equal(db.count, 3);
    db.add(1n, idRemove, true);
    assert.equal(db.count, 2);
    db.remove(2n);
    assert.equal(db.matchNotification({ type: ItemType.ID_ADD, id: 2n }), false);
    assert.equal(db.matchNotification({ type: ItemType.ID_REMOVE, id: 2n }), true);
  });

  it('MATCH_REMOVE removes every entry with the cookie; an unknown cookie is EBADSLT', () => {
    const db = new MatchDb();
    db.add(5n, idAdd, false);
    db.add(5n, idRemove, false);
    db.add(6n, idAdd, false);
    db.remove(5n);
    assert.equal(db.count, 1);
    throwsErrno(() => db.remove(5n), 'EBADSLT');
    throwsErrno(() => new MatchDb().remove(0n), 'EBADSLT');
  });

  it('the 4097th entry is EMFILE; REPLACE at the limit works only if it frees a slot', () => {
    const db = new MatchDb();
    for (let i = 0; i < 4096; i++) db.add(BigInt(i), idAdd, false);
    assert.equal(db.count, 4096);
    throwsErrno(() => db.add(99999n, idAdd, false), 'EMFILE');
    throwsErrno(() => db.add(7n, idAdd, false), 'EMFILE');
    throwsErrno(() => db.add(99999n, idAdd, true), 'EMFILE');
    assert.equal(db.count, 4096);
    db.add(7n, idRemove, true);
    assert.equal(db.count, 4096);
    db.remove(7n);
    assert.equal(db.count, 4095);
    db.add(7n, idAdd, false);
    assert.equal(db.count, 4096);
  });

  it('clear empties the database', () => {
    const db = dbWith([], [idItem(1n)]);
    db.clear();
    assert.equal(db.count, 0);
    assert.equal(db.matchMessage(message()), false);
  });
});

// ---------------------------------------------------------------------------------------
// Index: compared against a byte-wise reference written straight from match.c's semantics.

interface RefMessage {
  src: bigint;
  dst: bigint;
  filter: Buffer | undefined;
  generation: bigint;
  names: Set<string>;
}

function refUserRule(item: RawItem, m: RefMessage, bloomSize: number): boolean {
  const p = item.payload;
  switch (item.type) {
    case ItemType.BLOOM_MASK: {
      if (m.filter === undefined) return false;
      const n = BigInt(p.length / bloomSize);
      const block = Number(m.generation < n - 1n ? m.generation : n - 1n);
      for (let i = 0; i < bloomSize; i++) {
        const mask = p[block * bloomSize + i];
        if ((m.filter[i] & mask) !== mask) return false;
      }
      return true;
    }
    case ItemType.ID: {
      const id = p.readBigUInt64LE(0);
      return id === ANY || id === m.src;
    }
    case ItemType.DST_ID: {
      const id = p.readBigUInt64LE(0);
      return id === ANY || id === m.dst;
    }
    case ItemType.NAME:
      return m.names.has(p.toString('latin1', 0, p.length - 1));
    default:
      return false;
  }
}

function refNotificationRule(item: RawItem, n: NotificationView): boolean {
  if (item.type !== n.type) return false;
  const p = item.payload;
  switch (item.type) {
    case ItemType.ID_ADD:
    case ItemType.ID_REMOVE: {
      const id = p.readBigUInt64LE(0);
      return id === ANY || id === n.id;
    }
    case ItemType.NAME_ADD:
    case ItemType.NAME_REMOVE:
    case ItemType.NAME_CHANGE: {
      const oldId = p.readBigUInt64LE(0);
      const newId = p.readBigUInt64LE(16);
      const name = p.length > 32 ? p.toString('latin1', 32, p.length - 1) : undefined;
      return (oldId === ANY || oldId === n.oldId) && (newId === ANY || newId === n.newId) && (name === undefined || name === n.name);
    }
    default:
      return false;
  }
}

class RefConn {
  entries: Array<{ cookie: bigint; items: RawItem[] }> = [];
  matchesMessage(m: RefMessage, bloomSize: number): boolean {
    return this.entries.some((e) => e.items.every((it) => refUserRule(it, m, bloomSize)));
  }
  matchesNotification(n: NotificationView): boolean {
    return this.entries.some((e) => e.items.every((it) => refNotificationRule(it, n)));
  }
}

const NAMES = ['a.b', 'c.d', 'e.f'];

function randomItems(r: () => number, bloomSize: number): RawItem[] {
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)];
  const id = (max: number): bigint => (r() < 0.3 ? ANY : BigInt(1 + Math.floor(r() * max)));
  const user = (): RawItem => {
    const k = r();
    if (k < 0.45) {
      const generations = 1 + Math.floor(r() * 3);
      const payload = Buffer.alloc(bloomSize * generations);
      for (let g = 0; g < generations; g++) {
        if (r() < 0.15) continue; // an all-zero block
        for (let bit = 0; bit < bloomSize * 8; bit++) if (r() < 0.06) payload[g * bloomSize + (bit >> 3)] |= 1 << (bit & 7);
      }
      return { type: ItemType.BLOOM_MASK, payload };
    }
    if (k < 0.7) return idItem(id(6));
    if (k < 0.85) return dstItem(r() < 0.3 ? ANY : BigInt(1 + Math.floor(r() * 3)));
    return nameItem(pick(NAMES));
  };
  const notification = (type: number): RawItem => {
    if (type === ItemType.ID_ADD || type === ItemType.ID_REMOVE) return idChange(type, id(6), BigInt(Math.floor(r() * 4)));
    return nameChange(type, id(4), id(4), r() < 0.5 ? pick(NAMES) : undefined, BigInt(Math.floor(r() * 4)));
  };
  const notificationTypes = [ItemType.ID_ADD, ItemType.ID_REMOVE, ItemType.NAME_ADD, ItemType.NAME_REMOVE, ItemType.NAME_CHANGE];
  const count = Math.floor(r() * 4);
  const kind = r();
  const items: RawItem[] = [];
  const type = pick(notificationTypes);
  for (let i = 0; i < count; i++) {
    if (kind < 0.6) items.push(user());
    else if (kind < 0.9) items.push(notification(type));
    else if (r() < 0.1 && !items.some((it) => it.type === ItemType.NEGOTIATE)) items.push({ type: ItemType.NEGOTIATE, payload: Buffer.alloc(0) });
    else items.push(r() < 0.5 ? user() : notification(pick(notificationTypes)));
  }
  return items;
}

function randomMessage(r: () => number, bloomSize: number): RefMessage {
  const filter = r() < 0.1 ? undefined : Buffer.alloc(bloomSize);
  if (filter !== undefined) for (let bit = 0; bit < bloomSize * 8; bit++) if (r() < 0.6) filter[bit >> 3] |= 1 << (bit & 7);
  const names = new Set(NAMES.filter(() => r() < 0.4));
  return {
    src: BigInt(1 + Math.floor(r() * 6)),
    dst: r() < 0.7 ? KDBUS_DST_ID_BROADCAST : BigInt(1 + Math.floor(r() * 3)),
    filter,
    generation: BigInt(Math.floor(r() * 4)),
    names,
  };
}

function randomNotification(r: () => number): NotificationView {
  const types = [ItemType.ID_ADD, ItemType.ID_REMOVE, ItemType.NAME_ADD, ItemType.NAME_REMOVE, ItemType.NAME_CHANGE];
  const type = types[Math.floor(r() * types.length)];
  if (type === ItemType.ID_ADD || type === ItemType.ID_REMOVE) return { type, id: BigInt(1 + Math.floor(r() * 6)) };
  return {
    type,
    oldId: BigInt(Math.floor(r() * 5)),
    newId: BigInt(Math.floor(r() * 5)),
    name: NAMES[Math.floor(r() * NAMES.length)],
  };
}

function view(m: RefMessage): UserMessageView {
  return {
    srcId: m.src,
    dstId: m.dst,
    bloom: m.filter === undefined ? undefined : { generation: m.generation, data: m.filter },
    senderHoldsName: (name) => m.names.has(name),
  };
}

function sorted(xs: number[]): number[] {
  return [...xs].sort((a, b) => a - b);
}

describe('match index', () => {
  it('agrees with a brute-force reference under random adds, replaces, removes and disconnects', () => {
    const bloomSize = 8;
    const r = seededRandom(0xc0ffee);
    const index = new MatchIndex<number>();
    const refs = new Map<number, RefConn>();
    const CONNS = 40;
    let checks = 0;
    let nonEmptyResults = 0;
    for (let op = 0; op < 4000; op++) {
      const conn = Math.floor(r() * CONNS);
      const cookie = BigInt(Math.floor(r() * 5));
      const k = r();
      if (k < 0.5) {
        const items = randomItems(r, bloomSize);
        const replace = r() < 0.3;
        index.add(conn, cookie, parseMatchRules(items, bloomSize), replace);
        const ref = refs.get(conn) ?? new RefConn();
        refs.set(conn, ref);
        if (replace) ref.entries = ref.entries.filter((e) => e.cookie !== cookie);
        ref.entries.push({ cookie, items });
      } else if (k < 0.65) {
        const ref = refs.get(conn);
        const known = ref?.entries.some((e) => e.cookie === cookie) ?? false;
        if (known) {
          index.remove(conn, cookie);
          ref!.entries = ref!.entries.filter((e) => e.cookie !== cookie);
        } else {
          throwsErrno(() => index.remove(conn, cookie), 'EBADSLT');
        }
      } else if (k < 0.67) {
        index.removeConnection(conn);
        refs.delete(conn);
        assert.equal(index.db(conn), undefined);
      } else {
        checks++;
        const m = randomMessage(r, bloomSize);
        const got = index.candidates(view(m));
        assert.equal(new Set(got).size, got.length, 'a connection was reported twice');
        const want = [...refs].filter(([, ref]) => ref.matchesMessage(m, bloomSize)).map(([c]) => c);
        assert.deepEqual(sorted(got), sorted(want), `message check ${checks}`);
        if (want.length > 0) nonEmptyResults++;
        for (const [c, ref] of refs) assert.equal(index.db(c)!.matchMessage(view(m)), ref.matchesMessage(m, bloomSize));

        const n = randomNotification(r);
        const gotN = index.notificationTargets(n);
        assert.equal(new Set(gotN).size, gotN.length, 'a connection was notified twice');
        const wantN = [...refs].filter(([, ref]) => ref.matchesNotification(n)).map(([c]) => c);
        assert.deepEqual(sorted(gotN), sorted(wantN), `notification check ${checks}`);
        for (const [c, ref] of refs) assert.equal(index.db(c)!.matchNotification(n), ref.matchesNotification(n));
      }
    }
    assert.ok(checks > 1000 && nonEmptyResults > checks / 2, 'the random workload should mostly produce matches');
  });

  it('reports a connection once even if several of its entries match', () => {
    const index = new MatchIndex<string>();
    index.add('a', 1n, rules(), false);
    index.add('a', 2n, rules(idItem(ANY)), false);
    index.add('a', 3n, rules(idItem(10n)), false);
    index.add('a', 4n, rules(maskItem({})), false);
    index.add('b', 1n, rules(idItem(11n)), false);
    assert.deepEqual(index.candidates(message({ src: 10n, filter: filterOf({}) })), ['a']);
    index.add('b', 2n, rules(), false);
    assert.deepEqual(index.notificationTargets({ type: ItemType.ID_ADD, id: 1n }).sort(), ['a', 'b']);
  });

  it('follows changes made through a connection\'s database', () => {
    const index = new MatchIndex<string>();
    const db = index.connect('a');
    assert.equal(index.connect('a'), db);
    db.add(1n, rules(idItem(7n)), false);
    assert.deepEqual(index.candidates(message({ src: 7n })), ['a']);
    db.add(1n, rules(idItem(8n)), true);
    assert.deepEqual(index.candidates(message({ src: 7n })), []);
    assert.deepEqual(index.candidates(message({ src: 8n })), ['a']);
    db.remove(1n);
    assert.deepEqual(index.candidates(message({ src: 8n })), []);
    throwsErrno(() => index.remove('nobody', 1n), 'EBADSLT');
    assert.equal(index.db('nobody'), undefined);
  });

  it('forgets a removed connection even if its old database is changed later', () => {
    const index = new MatchIndex<string>();
    const db = index.connect('a');
    db.add(1n, rules(), false);
    index.removeConnection('a');
    assert.deepEqual(index.candidates(message()), []);
    db.add(2n, rules(), false);
    assert.deepEqual(index.candidates(message()), []);
    assert.deepEqual(index.notificationTargets({ type: ItemType.ID_ADD, id: 1n }), []);
  });

  it('scaling: per-message cost with 10,000 entries that cannot match vs 10 (printed, not asserted)', function () {
    // systemd-style 64-byte filters: every mask and filter shares the bits of
    // "message-type:signal"; each match adds 16 bits of its own (interface, member, path),
    // each message 24 bits of its own.
    const r = seededRandom(42);
    const common = new Set<number>();
    while (common.size < 8) common.add(Math.floor(r() * 512));
    const setBits = (bits: Iterable<number>): Buffer => {
      const b = Buffer.alloc(BLOOM);
      for (const bit of bits) b[bit >> 3] |= 1 << (bit & 7);
      return b;
    };
    const randomBits = (n: number, avoid: Set<number>): number[] => {
      const out = new Set<number>();
      while (out.size < n) {
        const bit = Math.floor(r() * 512);
        if (!avoid.has(bit)) out.add(bit);
      }
      return [...out];
    };
    const messageBits = [...common, ...randomBits(24, common)];
    const filter = setBits(messageBits);
    const inFilter = new Set(messageBits);
    const maskAvoiding = (avoid: Set<number>): Buffer => setBits([...common, ...randomBits(16, avoid)]);
    const m = message({ src: 1n, filter });

    const build = (entries: number, avoid: Set<number>): { index: MatchIndex<number>; dbs: MatchDb[] } => {
      const index = new MatchIndex<number>();
      for (let i = 0; i < entries; i++) {
        const items = [{ type: ItemType.BLOOM_MASK, payload: maskAvoiding(avoid) }];
        if (i % 4 === 0) items.push(idItem(BigInt(2 + (i % 50))));
        index.add(i % 1000, BigInt(i), parseMatchRules(items, BLOOM), false);
      }
      return { index, dbs: [...Array(Math.min(entries, 1000)).keys()].map((c) => index.db(c)!) };
    };
    // Best of five rounds: the first one often pays for JIT tier-up or for collecting the build.
    const time = (fn: () => unknown, iterations: number): number => {
      let best = Infinity;
      for (let round = 0; round < 5; round++) {
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < iterations; i++) fn();
        best = Math.min(best, Number(process.hrtime.bigint() - t0) / iterations / 1000);
      }
      return best;
    };

    const lines: string[] = [];
    const small = build(10, inFilter);
    for (const [label, avoid] of [
      ['masks disjoint from the message bits', inFilter],
      ['masks with random bits (some shared with the message)', common],
    ] as const) {
      const big = build(10_000, avoid);
      assert.deepEqual(big.index.candidates(m), [], 'none of the 10,000 entries can match');
      const tBig = time(() => big.index.candidates(m), 2_000);
      const tSmall = time(() => small.index.candidates(m), 10_000);
      const tBrute = time(() => big.dbs.filter((db) => db.matchMessage(m)), 10);
      lines.push(
        `${label}: index ${tSmall.toFixed(2)} µs/msg with 10 entries, ${tBig.toFixed(2)} µs/msg with 10,000; ` +
          `asking all 10,000 entries: ${tBrute.toFixed(1)} µs/msg`,
      );
    }
    for (const l of lines) console.log(`      ${l}`);
    this.test!.title += ' — see output';
  });
});
