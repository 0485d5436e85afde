/**
 * The u64/u32 writers of src/abi/words.ts against Node's own writers, at the edges where a
 * number stops being exact and where the BigInt writer takes over.
 */
import assert from 'node:assert/strict';
import { getU64, putBigU64, putU32, putU64 } from '../../src/abi/words';

const EDGES = [0n, 1n, 0xffn, 0xffff_ffffn, 0x1_0000_0000n, 0x1234_5678_9abcn, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n];

function nodeU64(v: bigint): Buffer {
  const b = Buffer.alloc(12, 0xaa);
  b.writeBigUInt64LE(v, 2);
  return b;
}

describe('abi words', () => {
  it('putBigU64 writes every u64 as writeBigUInt64LE does, and nothing around it', () => {
    for (const v of EDGES) {
      const b = Buffer.alloc(12, 0xaa);
      putBigU64(b, 2, v);
      assert.deepEqual(b, nodeU64(v), `value ${v}`);
    }
  });

  it('putU64 writes safe integers as writeBigUInt64LE does', () => {
    for (const v of EDGES.filter((e) => e <= 2n ** 53n - 1n)) {
      const b = Buffer.alloc(12, 0xaa);
      putU64(b, 2, Number(v));
      assert.deepEqual(b, nodeU64(v), `value ${v}`);
    }
  });

  it('getU64 reads safe integers as readBigUInt64LE does', () => {
    for (const v of EDGES.filter((e) => e <= 2n ** 53n - 1n)) assert.equal(getU64(nodeU64(v), 2), Number(v), `value ${v}`);
  });

  it('putU32 writes as writeUInt32LE does', () => {
    for (const v of [0, 1, 0x80, 0xdead_beef, 0xffff_ffff]) {
      const a = Buffer.alloc(8, 0x55);
      const b = Buffer.alloc(8, 0x55);
      putU32(a, 3, v);
      b.writeUInt32LE(v, 3);
      assert.deepEqual(a, b, `value ${v}`);
    }
  });

  it('refuses writes outside the buffer and values outside u64, as Node does', () => {
    assert.throws(() => putU64(Buffer.alloc(8), 1, 5), RangeError);
    assert.throws(() => putU32(Buffer.alloc(4), 1, 5), RangeError);
    assert.throws(() => putBigU64(Buffer.alloc(8), 0, 2n ** 64n), RangeError);
    assert.throws(() => putBigU64(Buffer.alloc(8), 0, -1n), RangeError);
  });
});
