/**
 * The reusable payload buffers (src/bus/payload-buffers.ts): sizes are rounded up to a power
 * of two from 4 KiB, a buffer given back is the next one of its class taken, and what the
 * free lists hold in all stays bounded.
 */
import assert from 'node:assert/strict';
import { PayloadBuffers, POOLED_PAYLOAD_MIN } from '../../src/bus/payload-buffers';

describe('bus payload buffers', () => {
  let pool: PayloadBuffers;
  beforeEach(() => {
    pool = new PayloadBuffers();
  });

  it('a taken buffer is at least the size asked for, rounded up to a power of two from 4 KiB', () => {
    assert.equal(POOLED_PAYLOAD_MIN, 4096);
    for (const [ask, got] of [[4096, 4096], [4097, 8192], [65536 + 96, 131072], [2 * 1024 * 1024, 2 * 1024 * 1024]]) {
      const b = pool.take(ask!);
      assert.equal(b.length, got, `${ask}`);
      pool.give(b);
    }
  });

  it('a buffer given back is taken again for its class, and only for its class', () => {
    const b = pool.take(20000);
    pool.give(b);
    assert.notEqual(pool.take(5000), b, 'another class');
    const again = pool.take(30000);
    assert.equal(again, b);
    assert.notEqual(pool.take(30000), b, 'taken once only');
    pool.give(again);
  });

  it('the free lists keep at most 8 MiB: beyond that a buffer given back is dropped', () => {
    const MiB = 1024 * 1024;
    const held = Array.from({ length: 6 }, () => pool.take(2 * MiB));
    for (const b of held) pool.give(b);
    const back = new Set(Array.from({ length: 6 }, () => pool.take(2 * MiB)));
    assert.equal(held.filter((b) => back.has(b)).length, 4, 'four 2 MiB buffers kept, two dropped');
    for (const b of back) pool.give(b);
  });
});
