/**
 * SipHash-2-4 (Aumasson and Bernstein, 2012) with 64-bit output: the hash sd-bus's bloom
 * filters are built from. It runs on pairs of 32-bit halves instead of BigInt because a
 * bridged signal needs a few dozen hashes and BigInt arithmetic allocates on every step.
 */

/** A 128-bit key split once into the four 32-bit halves the rounds work on. */
export class SipHashKey {
  readonly k0lo: number;
  readonly k0hi: number;
  readonly k1lo: number;
  readonly k1hi: number;

  /** `key`: 16 bytes, read as two little-endian 64-bit words as the reference does. */
  constructor(key: Uint8Array) {
    if (key.length !== 16) throw new RangeError(`a SipHash key is 16 bytes, got ${key.length}`);
    this.k0lo = readU32LE(key, 0);
    this.k0hi = readU32LE(key, 4);
    this.k1lo = readU32LE(key, 8);
    this.k1hi = readU32LE(key, 12);
  }
}

// v0..v3 as [hi, lo] pairs; module scope so the hot loop allocates nothing.
const v = new Uint32Array(8);
const V0H = 0, V0L = 1, V1H = 2, V1L = 3, V2H = 4, V2L = 5, V3H = 6, V3L = 7;

/**
 * Writes SipHash-2-4 of data[start, end) under `key` to out[outOffset, outOffset + 8) as
 * the little-endian bytes of the 64-bit result (the byte order sd-bus reads it in).
 */
export function siphash24Into(data: Uint8Array, start: number, end: number, key: SipHashKey, out: Uint8Array, outOffset: number): void {
  v[V0H] = key.k0hi ^ 0x736f6d65; v[V0L] = key.k0lo ^ 0x70736575;
  v[V1H] = key.k1hi ^ 0x646f7261; v[V1L] = key.k1lo ^ 0x6e646f6d;
  v[V2H] = key.k0hi ^ 0x6c796765; v[V2L] = key.k0lo ^ 0x6e657261;
  v[V3H] = key.k1hi ^ 0x74656462; v[V3L] = key.k1lo ^ 0x79746573;

  const len = end - start;
  const blockEnd = start + (len - (len & 7));
  for (let i = start; i < blockEnd; i += 8) absorb(readU32LE(data, i + 4), readU32LE(data, i));

  // Last block: the remaining bytes, zero-filled, with the length's low byte on top.
  let lo = 0;
  let hi = (len & 0xff) << 24;
  for (let i = blockEnd, shift = 0; i < end; i++, shift += 8) {
    if (shift < 32) lo |= data[i]! << shift;
    else hi |= data[i]! << (shift - 32);
  }
  absorb(hi >>> 0, lo >>> 0);

  v[V2L] ^= 0xff;
  rounds(4);
  writeU32LE(out, outOffset, v[V0L]! ^ v[V1L]! ^ v[V2L]! ^ v[V3L]!);
  writeU32LE(out, outOffset + 4, v[V0H]! ^ v[V1H]! ^ v[V2H]! ^ v[V3H]!);
}

/** SipHash-2-4 of `data` under a 16-byte key, as the 64-bit number the reference returns. */
export function siphash24(data: Uint8Array, key: Uint8Array | SipHashKey): bigint {
  const out = Buffer.alloc(8);
  siphash24Into(data, 0, data.length, key instanceof SipHashKey ? key : new SipHashKey(key), out, 0);
  return out.readBigUInt64LE(0);
}

function absorb(mhi: number, mlo: number): void {
  v[V3H] ^= mhi; v[V3L] ^= mlo;
  rounds(2);
  v[V0H] ^= mhi; v[V0L] ^= mlo;
}

/** n SipRounds on the module state. */
function rounds(n: number): void {
  let v0h = v[V0H]!, v0l = v[V0L]!, v1h = v[V1H]!, v1l = v[V1L]!;
  let v2h = v[V2H]!, v2l = v[V2L]!, v3h = v[V3H]!, v3l = v[V3L]!;
  let t: number;
  for (let r = 0; r < n; r++) {
    // v0 += v1; v1 = rotl(v1, 13) ^ v0; v0 = rotl(v0, 32)
    t = (v0l + v1l) >>> 0; v0h = (v0h + v1h + (t < v0l ? 1 : 0)) >>> 0; v0l = t;
    t = ((v1h << 13) | (v1l >>> 19)) >>> 0; v1l = ((v1l << 13) | (v1h >>> 19)) >>> 0; v1h = t;
    v1h = (v1h ^ v0h) >>> 0; v1l = (v1l ^ v0l) >>> 0;
    t = v0h; v0h = v0l; v0l = t;
    // v2 += v3; v3 = rotl(v3, 16) ^ v2
    t = (v2l + v3l) >>> 0; v2h = (v2h + v3h + (t < v2l ? 1 : 0)) >>> 0; v2l = t;
    t = ((v3h << 16) | (v3l >>> 16)) >>> 0; v3l = ((v3l << 16) | (v3h >>> 16)) >>> 0; v3h = t;
    v3h = (v3h ^ v2h) >>> 0; v3l = (v3l ^ v2l) >>> 0;
    // v0 += v3; v3 = rotl(v3, 21) ^ v0
    t = (v0l + v3l) >>> 0; v0h = (v0h + v3h + (t < v0l ? 1 : 0)) >>> 0; v0l = t;
    t = ((v3h << 21) | (v3l >>> 11)) >>> 0; v3l = ((v3l << 21) | (v3h >>> 11)) >>> 0; v3h = t;
    v3h = (v3h ^ v0h) >>> 0; v3l = (v3l ^ v0l) >>> 0;
    // v2 += v1; v1 = rotl(v1, 17) ^ v2; v2 = rotl(v2, 32)
    t = (v2l + v1l) >>> 0; v2h = (v2h + v1h + (t < v2l ? 1 : 0)) >>> 0; v2l = t;
    t = ((v1h << 17) | (v1l >>> 15)) >>> 0; v1l = ((v1l << 17) | (v1h >>> 15)) >>> 0; v1h = t;
    v1h = (v1h ^ v2h) >>> 0; v1l = (v1l ^ v2l) >>> 0;
    t = v2h; v2h = v2l; v2l = t;
  }
  v[V0H] = v0h; v[V0L] = v0l; v[V1H] = v1h; v[V1L] = v1l;
  v[V2H] = v2h; v[V2L] = v2l; v[V3H] = v3h; v[V3L] = v3l;
}

function readU32LE(b: Uint8Array, i: number): number {
  return (b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24)) >>> 0;
}

function writeU32LE(b: Uint8Array, i: number, x: number): void {
  b[i] = x & 0xff;
  b[i + 1] = (x >>> 8) & 0xff;
  b[i + 2] = (x >>> 16) & 0xff;
  b[i + 3] = x >>> 24;
}
