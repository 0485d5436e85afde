/**
 * Little-endian u64 (and u32) fields written into buffers without Node's BigInt writer, and
 * u64 fields read as numbers where they are known to be small.
 * Every message passes through several u64 writes (sizes, offsets, ids, return flags), and
 * Buffer.writeBigUInt64LE splits its value with BigInt arithmetic: several times the cost
 * of storing two 32-bit words. Values above 2^53 take the BigInt writer, so every value
 * comes out byte for byte as before.
 */

const TWO_32 = 0x1_0000_0000;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** Byte stores: the typed-array path, cheaper than Buffer.writeUInt32LE's checked call. */
function put32(buf: Buffer, at: number, v: number): void {
  buf[at] = v;
  buf[at + 1] = v >>> 8;
  buf[at + 2] = v >>> 16;
  buf[at + 3] = v >>> 24;
}

/** `value`: a non-negative safe integer (sizes, offsets, counts). */
export function putU64(buf: Buffer, at: number, value: number): void {
  if (at < 0 || at + 8 > buf.length) throw new RangeError(`u64 at ${at} is outside a ${buf.length}-byte buffer`);
  const lo = value >>> 0;
  put32(buf, at, lo);
  put32(buf, at + 4, (value - lo) / TWO_32);
}

/** Any u64 (RangeError outside 0..2^64-1, as writeBigUInt64LE). */
export function putBigU64(buf: Buffer, at: number, value: bigint): void {
  if (value >= 0n && value <= MAX_SAFE) putU64(buf, at, Number(value));
  else buf.writeBigUInt64LE(value, at);
}

/** A u64 field known to be below 2^53 (sizes, offsets, counts) as a number; larger ones lose precision. */
export function getU64(buf: Buffer, at: number): number {
  return buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * TWO_32;
}

/** A u32 word (numbers outside 0..2^32-1 are taken modulo 2^32, as `>>> 0` does). */
export function putU32(buf: Buffer, at: number, value: number): void {
  if (at < 0 || at + 4 > buf.length) throw new RangeError(`u32 at ${at} is outside a ${buf.length}-byte buffer`);
  put32(buf, at, value >>> 0);
}
