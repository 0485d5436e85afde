/**
 * Item codecs (layout per kdbus-abi.md §2.5, validation per kernel item.c) and name rules
 * (names.c kdbus_name_is_valid, item.c kdbus_item_validate_name, util.c uid prefix).
 */
import assert from 'node:assert/strict';
import { ItemType } from '../../src/abi/constants';
import { KdbusError } from '../../src/abi/errno';
import {
  alignedItemSize, type Item, ItemWriter, itemI32, itemSize, itemString, itemTypeName, itemU32, itemU64, validateItem,
} from '../../src/abi/items';
import { isValidSysname, isValidWellKnownName, verifyUidPrefix } from '../../src/abi/names';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

function errnoOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof KdbusError) return e.code;
    throw e;
  }
  return 'ok';
}

const mkItem = (type: number, payload: Buffer): Item => ({ type, offset: 0, size: 16 + payload.length, payload });

describe('abi/items: sizes and accessors', () => {
  it('computes KDBUS_ITEM_HEADER_SIZE + payload and its 8-aligned form', () => {
    assert.equal(itemSize(0), 16);
    assert.equal(itemSize(5), 21);
    assert.equal(alignedItemSize(0), 16);
    assert.equal(alignedItemSize(1), 24);
    assert.equal(alignedItemSize(8), 24);
    assert.equal(alignedItemSize(9), 32);
  });

  it('reads u64, u32, signed i32 and NUL-terminated strings from the payload', () => {
    const payload = hex('0100000000000080 ffffffff 05000000 00');
    const it = mkItem(ItemType.FDS, payload);
    assert.equal(itemU64(it), 0x8000000000000001n);
    assert.equal(itemU32(it, 2), 0xffffffff);
    assert.equal(itemI32(it, 2), -1);
    assert.equal(itemI32(it, 3), 5);
    assert.equal(itemString(mkItem(ItemType.NAME, Buffer.from('org.a\0'))), 'org.a');
    // latin1 keeps bytes 1:1; utf8 on request.
    assert.equal(itemString(mkItem(ItemType.NAME, Buffer.from([0xc3, 0xa9, 0]))), '\u00c3\u00a9');
    assert.equal(itemString(mkItem(ItemType.EXE, Buffer.from([0xc3, 0xa9, 0])), 'utf8'), 'é');
  });

  it('names item types for messages', () => {
    assert.equal(itemTypeName(15), 'KDBUS_ITEM_NAME (0xf)');
    assert.equal(itemTypeName(0x8006), 'KDBUS_ITEM_REPLY_DEAD (0x8006)');
    assert.equal(itemTypeName(0x4242), 'item type 0x4242');
  });
});

describe('abi/items: validateItem for types no command accepts from clients', () => {
  const cases: [string, number, Buffer, string][] = [
    ['TIMESTAMP 24', ItemType.TIMESTAMP, Buffer.alloc(24), 'ok'],
    ['TIMESTAMP 16', ItemType.TIMESTAMP, Buffer.alloc(16), 'EINVAL'],
    ['AUDIT 8', ItemType.AUDIT, Buffer.alloc(8), 'ok'],
    ['AUDIT 4', ItemType.AUDIT, Buffer.alloc(4), 'EINVAL'],
    ['AUXGROUPS 12 (only %4 is checked)', ItemType.AUXGROUPS, Buffer.alloc(12), 'ok'],
    ['AUXGROUPS 6', ItemType.AUXGROUPS, Buffer.alloc(6), 'EINVAL'],
    ['CAPS 3', ItemType.CAPS, Buffer.alloc(3), 'EINVAL'],
    ['CAPS last_cap 31 in 4 bytes', ItemType.CAPS, hex('1f000000'), 'ok'],
    ['CAPS last_cap 40 in 19 bytes', ItemType.CAPS, Buffer.concat([hex('28000000'), Buffer.alloc(15)]), 'EINVAL'],
    ['CAPS last_cap 40 in 20 bytes', ItemType.CAPS, Buffer.concat([hex('28000000'), Buffer.alloc(16)]), 'ok'],
    ['CAPS last_cap 0xffffffff in 36 bytes', ItemType.CAPS, Buffer.concat([hex('ffffffff'), Buffer.alloc(32)]), 'EINVAL'],
    ['REPLY_TIMEOUT empty', ItemType.REPLY_TIMEOUT, Buffer.alloc(0), 'ok'],
    ['REPLY_DEAD 8', ItemType.REPLY_DEAD, Buffer.alloc(8), 'EINVAL'],
    ['CMDLINE without NUL', ItemType.CMDLINE, Buffer.from('sh'), 'EINVAL'],
    ['CGROUP', ItemType.CGROUP, Buffer.from('/a\0'), 'ok'],
    ['TID_COMM empty payload', ItemType.TID_COMM, Buffer.alloc(0), 'EINVAL'],
    ['PAYLOAD_OFF size 0', ItemType.PAYLOAD_OFF, Buffer.alloc(16), 'EINVAL'],
    ['OWNED_NAME (unchecked)', ItemType.OWNED_NAME, Buffer.alloc(3), 'ok'],
    ['unknown type (unchecked)', 0x7777, Buffer.alloc(5), 'ok'],
  ];
  for (const [label, type, payload, expected] of cases) {
    it(`${label} → ${expected}`, () => assert.equal(errnoOf(() => validateItem(mkItem(type, payload))), expected));
  }
});

describe('abi/items: ItemWriter layouts', () => {
  it('writes a string item with NUL and zeroed padding', () => {
    const w = new ItemWriter();
    w.string(ItemType.NAME, 'a.b');
    assert.deepEqual(w.finish(), hex('1400000000000000 0f00000000000000 612e6200 00000000'));
    assert.equal(w.length, 24);
  });

  it('writes u64 items, raw payload items and consecutive items back to back', () => {
    const w = new ItemWriter();
    w.itemU64(ItemType.BLOOM_PARAMETER, 64n, 1);
    w.item(ItemType.FDS, Buffer.from([7, 0, 0, 0]));
    w.string(ItemType.DST_NAME, '');
    assert.deepEqual(w.finish(), hex(
      '2000000000000000 0700000000000000 4000000000000000 0100000000000000' +
      '1400000000000000 0500000000000000 07000000 00000000' +
      '1100000000000000 0a00000000000000 00 00000000000000',
    ));
  });

  it('builds an item with a composite payload via beginItem/endItem', () => {
    const w = new ItemWriter();
    const at = w.beginItem(ItemType.NAME_ADD);
    w.u64(0).u64(0).u64(2).u64(1).bytes(Buffer.from('x.y\0'));
    w.endItem(at);
    assert.deepEqual(w.finish(), hex(
      '3400000000000000 0080000000000000' +
      '0000000000000000 0000000000000000 0200000000000000 0100000000000000' +
      '782e7900 00000000',
    ));
  });

  it('writes raw fields, aligns with zeros and patches earlier values', () => {
    const w = new ItemWriter();
    w.u64(0).u64(2 ** 40 + 5).u32(0xaabbccdd).i32(-2).bytes(Buffer.from([1, 2, 3])).alignTo8();
    w.patchU64(0, w.length);
    w.u64(0xffff_ffff_ffff_ffffn).zeros(3);
    assert.deepEqual(w.finish(), hex(
      '2000000000000000 0500000000010000 ddccbbaa feffffff 0102030000000000 ffffffffffffffff 000000',
    ));
    // alignTo8 on an aligned length adds nothing.
    const v = new ItemWriter().u64(1).alignTo8();
    assert.equal(v.length, 8);
  });

  it('zeroes padding even over stale bytes of a reused buffer', () => {
    const w = new ItemWriter(64);
    w.bytes(Buffer.alloc(64, 0xff));
    w.reset().string(ItemType.NAME, 'abcde');
    assert.deepEqual(w.finish(), hex('1600000000000000 0f00000000000000 6162636465 00 0000'));
  });

  it('grows past its initial capacity without losing content', () => {
    const w = new ItemWriter(64);
    for (let i = 0; i < 100; i++) w.itemU64(ItemType.ID, i);
    const out = w.finish();
    assert.equal(out.length, 2400);
    for (let i = 0; i < 100; i++) {
      assert.equal(out.readBigUInt64LE(i * 24), 24n);
      assert.equal(out.readBigUInt64LE(i * 24 + 8), 14n);
      assert.equal(out.readBigUInt64LE(i * 24 + 16), BigInt(i));
    }
  });

  it('encodes strings as latin1 by default and utf8 on request', () => {
    const a = new ItemWriter().string(ItemType.EXE, '\u00e9').finish();
    assert.deepEqual(a.subarray(0, 18), hex('1200000000000000 0710000000000000 e900'));
    const b = new ItemWriter().string(ItemType.EXE, 'é', 'utf8').finish();
    assert.deepEqual(b.subarray(0, 19), hex('1300000000000000 0710000000000000 c3a900'));
  });
});

describe('abi/names: well-known names (names.c)', () => {
  const cases: [string, boolean, boolean][] = [
    ['a.b', false, true],
    ['org.freedesktop.DBus', false, true],
    ['foo.bar-baz_1.qux', false, true],
    ['-a._b', false, true],
    ['a', false, false],
    ['', false, false],
    ['.a.b', false, false],
    ['a..b', false, false],
    ['a.b.', false, false],
    ['a.1b', false, false],
    ['1a.b', false, false],
    ['a.b1', false, true],
    [':1.5', false, false],
    ['a.b c', false, false],
    ['a.b/c', false, false],
    ['a.\u00e9', false, true],
    ['a.\u00f7', false, false],
    ['a.\u0100', false, false],
    ['a.*', false, false],
    ['a.*', true, true],
    ['a.b.*', true, true],
    ['*', true, false],
    ['*.a', true, false],
    ['a.*.b', true, false],
    ['a.b*', true, false],
    ['a.**', true, false],
    ['a.' + 'b'.repeat(253), false, true],
    ['a.' + 'b'.repeat(254), false, false],
  ];
  for (const [name, wildcard, valid] of cases) {
    const shown = name.length > 20 ? `${name.slice(0, 12)}… (${name.length} chars)` : JSON.stringify(name);
    it(`${shown}${wildcard ? ' with wildcards' : ''} is ${valid ? 'valid' : 'invalid'}`, () => {
      assert.equal(isValidWellKnownName(name, wildcard), valid);
    });
  }
});

describe('abi/names: sysnames and uid prefix', () => {
  it('applies the sysname character and length rules', () => {
    assert.equal(isValidSysname('0-system'), true);
    assert.equal(isValidSysname('1000-user.x_y'), true);
    assert.equal(isValidSysname('x'), true);
    assert.equal(isValidSysname(''), false);
    assert.equal(isValidSysname('-x'), false);
    assert.equal(isValidSysname('x.'), false);
    assert.equal(isValidSysname('a b'), false);
    assert.equal(isValidSysname('a'.repeat(63)), true);
    assert.equal(isValidSysname('a'.repeat(64)), false);
  });

  it('requires "<uid>-" at the start of bus and endpoint names', () => {
    assert.equal(errnoOf(() => verifyUidPrefix('1000-user', 1000, 'bus name')), 'ok');
    assert.equal(errnoOf(() => verifyUidPrefix('0-system', 0, 'bus name')), 'ok');
    assert.equal(errnoOf(() => verifyUidPrefix('100-user', 1000, 'bus name')), 'EINVAL');
    assert.equal(errnoOf(() => verifyUidPrefix('10000-user', 1000, 'bus name')), 'EINVAL');
    assert.equal(errnoOf(() => verifyUidPrefix('1000user', 1000, 'bus name')), 'EINVAL');
    assert.equal(errnoOf(() => verifyUidPrefix('1000-user', null, 'endpoint name')), 'EINVAL');
  });
});
