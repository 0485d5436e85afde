/**
 * sd-bus's bloom filters (systemd bus-bloom.c, bus_message_setup_bloom): what a signal's
 * KDBUS_ITEM_BLOOM_FILTER holds and what a match's KDBUS_ITEM_BLOOM_MASK asks of it, so
 * signals the bridge brings in from dbus1 reach kdbus clients' matches, and legacy clients'
 * rules become kdbus masks.
 *
 * A filter is the bus's bloom size in bytes: a little-endian array of u64 words with bit p
 * in word p / 64 (kdbus items are native-endian; this project targets little-endian hosts).
 * Each "key:value" string sets n_hash bits. Their indices come from a stream of SipHash-2-4
 * outputs of the string under eight fixed keys, used in turn: each index is the next
 * w = ceil(log2(m) / 8) bytes of the stream read big-endian, masked with m - 1 (m = bits).
 */
import type { MatchMessage } from './match-rule';
import { SipHashKey, siphash24Into } from './siphash';

/** The hash keys of bus-bloom.c, in the order the stream uses them. */
const HASH_KEYS: readonly SipHashKey[] = [
  'b9660bf0467047c18875c49c54b9bd15',
  'aaa154a2e0714b39bfe1dd2e9fc54a3b',
  '63fdaebecd824812a16e4126cbfaa0c8',
  '23be453932d2462d82035228fe3717f5',
  '563bbfee5a4f4339afaa9408dff0fc10',
  '3180c873c7ea46d3aa25750f9e4c0929',
  '7df7184b7ba444d5853c06e06553966d',
  'f277e96f93b54e719a0c34883925bf35',
].map((hex) => new SipHashKey(Buffer.from(hex, 'hex')));

/** What buses made by systemd announce in BLOOM_PARAMETER. */
export const SD_BUS_BLOOM_SIZE = 64;
export const SD_BUS_BLOOM_N_HASH = 8;

/** sd-bus hashes at most 64 arguments. */
const MAX_ARGS = 64;

const DOT = 0x2e;
const SLASH = 0x2f;
const COLON = 0x3a;

/** Bytes of hash output per bit index for a filter of `size` bytes. */
function bytesPerIndex(size: number): number {
  const bits = size * 8;
  return ((31 - Math.clz32(bits)) + 7) >>> 3;
}

/**
 * Whether sd-bus accepts a bus's BLOOM_PARAMETER (bloom_validate_parameters): the n_hash
 * indices must fit in the 64 bytes the eight keys give. Beyond that, sizes of 2^29 bytes
 * or more are refused here (no kdbus bus allows more than 4 KiB).
 */
export function isValidBloomParameters(size: number, nHash: number): boolean {
  if (!Number.isInteger(size) || !Number.isInteger(nHash) || size <= 0 || nHash <= 0 || size >= 2 ** 29) return false;
  return nHash * bytesPerIndex(size) <= HASH_KEYS.length * 8;
}

/**
 * Which argument keys a filter gets:
 * - 'sd-bus': exactly sd-bus's: it walks the arguments from 0, adds string arrays
 *   ("as", "ao", "ag") as argN-has and continues, adds the first string, object path or
 *   signature as argN, argN-dot-prefix and argN-slash-prefix and stops there, and stops at
 *   any other type;
 * - 'union': the same keys for every string-like argument and string array up to arg63,
 *   skipping other types. A superset of what sd-bus and Tizen GLib senders add, so a mask of
 *   either library that its own sender would satisfy is satisfied.
 */
export type BloomFilterFlavour = 'sd-bus' | 'union';

interface ArgKeys {
  plain: string;
  dot: string;
  slash: string;
  has: string;
}

const ARG_KEYS: readonly ArgKeys[] = Array.from({ length: MAX_ARGS }, (_, i) => ({
  plain: `arg${i}`,
  dot: `arg${i}-dot-prefix`,
  slash: `arg${i}-slash-prefix`,
  has: `arg${i}-has`,
}));

/** Filters and masks for one bus's bloom parameters. */
export class Bloom {
  private readonly bits: number;
  private readonly indexBytes: number;
  private readonly hash = Buffer.alloc(8);
  /** Holds "key:value" while its prefixes are hashed. */
  private scratch = Buffer.alloc(256);

  constructor(
    /** Filter size in bytes (BLOOM_PARAMETER size). */
    readonly size: number,
    /** Bits set per string (BLOOM_PARAMETER n_hash). */
    readonly nHash: number,
  ) {
    if (!isValidBloomParameters(size, nHash)) {
      throw new RangeError(`bloom parameters size ${size}, n_hash ${nHash} are unusable: each string needs n_hash * ceil(log2(8 * size) / 8) <= 64 hash bytes`);
    }
    this.bits = size * 8;
    this.indexBytes = bytesPerIndex(size);
  }

  /** Sets the bits of the string `s` (a whole "key:value", hashed as UTF-8). */
  add(filter: Uint8Array, s: string): void {
    this.addBytes(filter, this.loadWhole(s));
  }

  /** A mask (or filter) holding the bits of every string in `keys`. */
  mask(keys: Iterable<string>): Buffer {
    const f = Buffer.alloc(this.size);
    for (const k of keys) this.add(f, k);
    return f;
  }

  /** The filter sd-bus would attach to `m` (it attaches one to every signal). */
  filter(m: Pick<MatchMessage, 'type' | 'interface' | 'member' | 'path' | 'args' | 'argTypes'>, flavour: BloomFilterFlavour): Buffer {
    const f = Buffer.alloc(this.size);
    this.addPair(f, 'message-type', m.type);
    if (m.interface !== undefined) this.addPair(f, 'interface', m.interface);
    if (m.member !== undefined) this.addPair(f, 'member', m.member);
    if (m.path !== undefined) {
      this.addPair(f, 'path', m.path);
      // sd-bus also adds "path-slash-prefix:<path>" on its own; the prefix walk starts with it.
      this.addPrefixes(f, 'path-slash-prefix', m.path, SLASH);
    }
    const n = Math.min(m.args.length, MAX_ARGS);
    for (let i = 0; i < n; i++) {
      const t = m.argTypes[i];
      if (t === 's' || t === 'o' || t === 'g') {
        const keys = ARG_KEYS[i]!;
        const v = m.args[i] as string;
        this.addPair(f, keys.plain, v);
        this.addPrefixes(f, keys.dot, v, DOT);
        this.addPrefixes(f, keys.slash, v, SLASH);
        if (flavour === 'sd-bus') break;
      } else if (t === 'as' || t === 'ao' || t === 'ag') {
        const has = ARG_KEYS[i]!.has;
        for (const e of m.args[i] as readonly string[]) this.addPair(f, has, e);
      } else if (flavour === 'sd-bus') {
        break;
      }
    }
    return f;
  }

  /** "key:value". */
  private addPair(filter: Uint8Array, key: string, value: string): void {
    this.addBytes(filter, this.loadPair(key, value));
  }

  /**
   * "key:value", then for each separator from the right the value cut after it and cut
   * before it: path-slash-prefix of /a/b gives /a/b, /a/, /a, /.
   */
  private addPrefixes(filter: Uint8Array, key: string, value: string, sep: number): void {
    let end = this.loadPair(key, value);
    this.addBytes(filter, end);
    const valueStart = key.length + 1;
    const s = this.scratch;
    for (;;) {
      let e = end - 1;
      while (e >= valueStart && s[e] !== sep) e--;
      if (e < valueStart) return;
      this.addBytes(filter, e + 1);
      if (e === valueStart) return;
      end = e;
      this.addBytes(filter, end);
    }
  }

  /** Puts `s` into scratch; returns its length in bytes. */
  private loadWhole(s: string): number {
    this.reserve(s.length * 3);
    return this.scratch.write(s, 0, 'utf8');
  }

  /** Puts key (ASCII) + ":" + value into scratch; returns its length in bytes. */
  private loadPair(key: string, value: string): number {
    this.reserve(key.length + 1 + value.length * 3);
    let n = this.scratch.write(key, 0, 'latin1');
    this.scratch[n++] = COLON;
    return n + this.scratch.write(value, n, 'utf8');
  }

  /** At most 3 UTF-8 bytes per UTF-16 unit. */
  private reserve(bytes: number): void {
    if (bytes > this.scratch.length) this.scratch = Buffer.alloc(Math.max(bytes, this.scratch.length * 2));
  }

  /** bloom_add_data over scratch[0, len). */
  private addBytes(filter: Uint8Array, len: number): void {
    const h = this.hash;
    let key = 0;
    let left = 0;
    for (let i = 0; i < this.nHash; i++) {
      let p = 0;
      for (let d = 0; d < this.indexBytes; d++) {
        if (left === 0) {
          siphash24Into(this.scratch, 0, len, HASH_KEYS[key++]!, h, 0);
          left = 8;
        }
        p = ((p << 8) | h[8 - left]!) >>> 0;
        left--;
      }
      p = (p & (this.bits - 1)) >>> 0;
      filter[p >>> 3]! |= 1 << (p & 7);
    }
  }
}
