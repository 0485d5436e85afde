/**
 * The encoders' output buffer (src/dbus1/output-buffer.ts): bytes written in place, and,
 * given reusable buffers, a large backing store taken from them and given back by release().
 */
import assert from 'node:assert/strict';
import { PayloadBuffers } from '../../src/bus/payload-buffers';
import { OutputBuffer, withReusedOutput } from '../../src/dbus1/output-buffer';

describe('dbus1 OutputBuffer', () => {
  it('grows to hold what is written, every byte where it was put', () => {
    const out = new OutputBuffer(4);
    out.u8(1);
    out.align(8);
    out.u32(0x01020304);
    out.bytes(Buffer.alloc(5000, 7));
    const b = out.finish();
    assert.equal(b.length, 8 + 4 + 5000);
    assert.deepEqual([...b.subarray(0, 12)], [1, 0, 0, 0, 0, 0, 0, 0, 4, 3, 2, 1]);
    assert.ok(b.subarray(12).every((x) => x === 7));
  });

  it('with reusable buffers, a large message lives in one of them until release() gives it back', () => {
    const pool = new PayloadBuffers();
    const out = new OutputBuffer(256, pool);
    out.u64(5n);
    out.bytes(Buffer.alloc(20000, 9));
    const bytes = out.finish();
    assert.equal(bytes.length, 20008);
    assert.ok(bytes.subarray(8).every((x) => x === 9));
    const backing = bytes.buffer;
    out.release();
    assert.equal(out.finish().length, 0, 'nothing is left to read after release');
    assert.equal(pool.take(20008).buffer, backing, 'the same store is the next one of its size taken');
  });

  it('a small message takes nothing from them, and release() then gives nothing back', () => {
    const pool = new PayloadBuffers();
    const out = new OutputBuffer(256, pool);
    out.bytes(Buffer.alloc(1000, 1));
    const backing = out.finish().buffer;
    out.release();
    assert.notEqual(pool.take(4096).buffer, backing);
  });

  it('withReusedOutput gives the buffer back when its function returns or throws', () => {
    let kept: OutputBuffer | undefined;
    const n = withReusedOutput((out) => {
      kept = out;
      out.bytes(Buffer.alloc(10000, 3));
      return out.finish().length;
    });
    assert.equal(n, 10000);
    assert.equal(kept!.finish().length, 0, 'released');
    assert.throws(() => withReusedOutput((out) => {
      kept = out;
      out.bytes(Buffer.alloc(10000, 3));
      throw new Error('encoding failed');
    }), /encoding failed/);
    assert.equal(kept!.finish().length, 0, 'released after a throw too');
  });
});
