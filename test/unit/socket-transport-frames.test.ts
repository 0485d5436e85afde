/**
 * FrameReader: frames cut from a stream where it was read, each with the sender of the read
 * that brought its first byte (docs/socket-protocol.md, Framing and Credentials).
 */
import assert from 'node:assert/strict';
import { encodeFrame, FrameReader, FrameType, MAX_FRAME, ProtocolError, type Frame } from '../../src/transport/frames';

/** Feeds `bytes` as one read by process `pid` (uid and gid pid + 1, pid + 2); returns the frames it completed. */
function feed(r: FrameReader, bytes: Buffer, pid: number): Frame[] {
  let at = 0;
  const out: Frame[] = [];
  while (at < bytes.length) {
    r.prepare();
    const n = Math.min(r.targetLength, bytes.length - at);
    bytes.copy(r.target, r.targetOffset, at, at + n);
    r.received(n, pid, pid + 1, pid + 2);
    at += n;
    for (let f = r.next(); f; f = r.next()) out.push({ ...f, payload: Buffer.from(f.payload) });
  }
  return out;
}

function payload(len: number, fill: number): Buffer {
  return Buffer.alloc(len, fill);
}

describe('socket transport: frames read in place', () => {
  it('cuts two frames out of one read, with that read\'s sender', () => {
    const r = new FrameReader();
    const a = encodeFrame(FrameType.IOCTL, 7n, payload(40, 1));
    const b = encodeFrame(FrameType.CLOSE, 8n);
    const got = feed(r, Buffer.concat([a, b]), 100);
    assert.deepEqual(got.map((f) => [f.type, f.seq, f.payload.length, f.pid, f.uid, f.gid]), [
      [FrameType.IOCTL, 7n, 40, 100, 101, 102],
      [FrameType.CLOSE, 8n, 0, 100, 101, 102],
    ]);
    assert.equal(r.partial, false);
  });

  it('gives a frame split across reads the sender of its first bytes', () => {
    const r = new FrameReader();
    const a = encodeFrame(FrameType.IOCTL, 1n, payload(24, 2));
    const b = encodeFrame(FrameType.IOCTL, 2n, payload(8, 3));
    assert.deepEqual(feed(r, a.subarray(0, 5), 10), [], 'half a header is no frame');
    assert.equal(r.partial, true);
    assert.deepEqual(feed(r, a.subarray(5, 20), 20), []);
    const got = feed(r, Buffer.concat([a.subarray(20), b]), 30);
    assert.deepEqual(got.map((f) => [f.seq, f.pid]), [[1n, 10], [2n, 30]]);
    assert.ok(got[0]!.payload.equals(payload(24, 2)));
  });

  it('reads a frame larger than its buffer into a buffer of its own', () => {
    const r = new FrameReader();
    const big = encodeFrame(FrameType.IOCTL, 3n, payload(200 * 1024, 4));
    const small = encodeFrame(FrameType.POOL, 4n);
    const got = feed(r, Buffer.concat([small, big, small]), 40);
    assert.deepEqual(got.map((f) => [f.seq, f.payload.length]), [[4n, 0], [3n, 200 * 1024], [4n, 0]]);
    assert.ok(got[1]!.payload.equals(payload(200 * 1024, 4)));
    assert.equal(got[1]!.pid, 40);
    assert.deepEqual(got.map((f) => f.own !== undefined), [false, true, false], 'only the large one has a buffer of its own');
  });

  it('tells the length of a large frame while it arrives, and nothing for a small one', () => {
    const r = new FrameReader();
    const big = encodeFrame(FrameType.IOCTL, 3n, payload(200 * 1024, 4));
    assert.deepEqual(feed(r, encodeFrame(FrameType.POOL, 4n).subarray(0, 8), 40), []);
    assert.equal(r.unfinishedLength, 0, 'a small frame waits in the read buffer');
    assert.deepEqual(feed(r, encodeFrame(FrameType.POOL, 4n).subarray(8), 40).length, 1);
    assert.deepEqual(feed(r, big.subarray(0, 100 * 1024), 40), []);
    assert.equal(r.unfinishedLength, big.length);
    assert.equal(feed(r, big.subarray(100 * 1024), 40).length, 1);
    assert.equal(r.unfinishedLength, 0);
  });

  it('gives a large frame the buffer the last one gave back', () => {
    // As large as frames get, so no buffer given back before can be preferred to it.
    const largest = encodeFrame(FrameType.IOCTL, 5n, payload(MAX_FRAME - 16, 5));
    const first = feed(new FrameReader(), largest, 1)[0]!;
    FrameReader.recycle(first.own!);
    const next = feed(new FrameReader(), encodeFrame(FrameType.IOCTL, 6n, payload(100 * 1024, 6)), 2)[0]!;
    assert.equal(next.own, first.own);
    assert.ok(next.payload.equals(payload(100 * 1024, 6)));
    FrameReader.recycle(next.own!);
  });

  it('moves an unfinished frame to the front when the buffer runs out', () => {
    const r = new FrameReader();
    const frames = Array.from({ length: 300 }, (_, i) => encodeFrame(FrameType.IOCTL, BigInt(i), payload(1000, i & 0xff)));
    const stream = Buffer.concat(frames);
    const got: Frame[] = [];
    // Reads of an odd size, so frames straddle every buffer boundary.
    for (let at = 0; at < stream.length; at += 777) got.push(...feed(r, stream.subarray(at, Math.min(at + 777, stream.length)), 50));
    assert.equal(got.length, 300);
    got.forEach((f, i) => {
      assert.equal(f.seq, BigInt(i));
      assert.ok(f.payload.equals(payload(1000, i & 0xff)));
    });
  });

  it('refuses a length that is no multiple of 8, too short or beyond the limit', () => {
    for (const len of [12, 8, 20, MAX_FRAME + 8]) {
      const r = new FrameReader();
      const h = Buffer.alloc(16);
      h.writeUInt32LE(len, 0);
      assert.throws(() => feed(r, h, 1), ProtocolError, `length ${len}`);
    }
  });
});
