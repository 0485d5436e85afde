/**
 * A growable little-endian byte buffer the message encoders write into: one buffer per
 * message, grown by doubling, so a large body is copied once into place rather than
 * assembled from pieces. Every byte is written explicitly (padding included): the backing
 * store comes from allocUnsafe.
 *
 * Given reusable buffers, it takes a large backing store from them, and release() gives it
 * back: for a message whose bytes are done with once they are sent (src/bus/payload-buffers.ts
 * says why a fresh large buffer per message is costly).
 */
import { payloadBuffers, POOLED_PAYLOAD_MIN, type PayloadBuffers } from '../bus/payload-buffers';

const U32_MAX = 0xffff_ffffn;
const RELEASED = Buffer.alloc(0);

export class OutputBuffer {
  private buf: Buffer;
  /** buf came from buffers. */
  private leased = false;
  pos = 0;

  constructor(initialCapacity = 256, private readonly buffers?: PayloadBuffers) {
    this.buf = Buffer.allocUnsafe(initialCapacity);
  }

  /** The bytes written so far (a view of the backing store, not a copy; void after release()). */
  finish(): Buffer {
    return this.buf.subarray(0, this.pos);
  }

  /** Gives a backing store taken from the reusable buffers back to them. */
  release(): void {
    if (this.leased) this.buffers!.give(this.buf);
    this.leased = false;
    this.buf = RELEASED;
    this.pos = 0;
  }

  private reserve(n: number): void {
    const need = this.pos + n;
    if (need <= this.buf.length) return;
    // Some room beyond a large write: what follows a body (a footer, padding) then fits
    // without a second copy of all of it.
    const size = Math.max(need + (need >>> 4) + 64, this.buf.length * 2);
    const lease = this.buffers !== undefined && size >= POOLED_PAYLOAD_MIN;
    const grown = lease ? this.buffers.take(size) : Buffer.allocUnsafe(size);
    this.buf.copy(grown, 0, 0, this.pos);
    if (this.leased) this.buffers!.give(this.buf);
    this.buf = grown;
    this.leased = lease;
  }

  /** Zero padding up to the next multiple of alignment (a power of two). */
  align(alignment: number): void {
    const pad = -this.pos & (alignment - 1);
    if (pad === 0) return;
    this.reserve(pad);
    // At most 7 bytes: a loop beats the native fill's argument checks.
    const buf = this.buf;
    for (let i = 0; i < pad; i++) buf[this.pos++] = 0;
  }

  u8(v: number): void {
    this.reserve(1);
    this.buf[this.pos++] = v;
  }

  u16(v: number): void {
    this.reserve(2);
    this.buf.writeUInt16LE(v, this.pos);
    this.pos += 2;
  }

  i16(v: number): void {
    this.reserve(2);
    this.buf.writeInt16LE(v, this.pos);
    this.pos += 2;
  }

  u32(v: number): void {
    this.reserve(4);
    this.buf.writeUInt32LE(v, this.pos);
    this.pos += 4;
  }

  i32(v: number): void {
    this.reserve(4);
    this.buf.writeInt32LE(v, this.pos);
    this.pos += 4;
  }

  u64(v: bigint): void {
    this.reserve(8);
    // Most 64-bit values written are serials below 2^32: two words cost a fraction of
    // Buffer's BigInt writer.
    if (v >= 0n && v <= U32_MAX) {
      this.buf.writeUInt32LE(Number(v), this.pos);
      this.buf.writeUInt32LE(0, this.pos + 4);
    } else {
      this.buf.writeBigUInt64LE(v, this.pos);
    }
    this.pos += 8;
  }

  i64(v: bigint): void {
    this.reserve(8);
    this.buf.writeBigInt64LE(v, this.pos);
    this.pos += 8;
  }

  f64(v: number): void {
    this.reserve(8);
    this.buf.writeDoubleLE(v, this.pos);
    this.pos += 8;
  }

  /** An unsigned integer of width 1, 2, 4 or 8 bytes (GVariant framing offsets). */
  word(v: number, width: number): void {
    if (width === 8) this.u64(BigInt(v));
    else if (width === 4) this.u32(v);
    else if (width === 2) this.u16(v);
    else this.u8(v);
  }

  bytes(src: Uint8Array): void {
    this.reserve(src.length);
    this.buf.set(src, this.pos);
    this.pos += src.length;
  }

  /** Writes a string whose UTF-8 length the caller has measured; no terminator. */
  utf8(s: string, byteLength: number): void {
    this.reserve(byteLength);
    this.buf.write(s, this.pos, byteLength, 'utf8');
    this.pos += byteLength;
  }

  /** Writes a string known to be ASCII (a name the header checks accepted); no terminator. */
  ascii(s: string): void {
    const n = s.length;
    this.reserve(n);
    const buf = this.buf;
    let pos = this.pos;
    // Names are short: a loop beats a call into the native string writer.
    if (n <= 64) for (let i = 0; i < n; i++) buf[pos++] = s.charCodeAt(i);
    else pos += buf.write(s, pos, n, 'latin1');
    this.pos = pos;
  }

  /** Overwrites a u32 written earlier (a length known only after what it measures). */
  patchU32(at: number, v: number): void {
    this.buf.writeUInt32LE(v, at);
  }
}

/**
 * Runs `use` with an output buffer whose large backing store is one of the daemon's reusable
 * buffers, given back when `use` returns: for bytes that are done with by then.
 */
export function withReusedOutput<T>(use: (out: OutputBuffer) => T): T {
  const out = new OutputBuffer(256, payloadBuffers);
  try {
    return use(out);
  } finally {
    out.release();
  }
}
