/**
 * sd-bus-shaped bloom filters and masks. sd-bus hashes each "key:value" of a signal (message
 * type, interface, member, path and its prefixes) to n_hash bits of the filter, and a match
 * to the bits of the keys it names. Which hash picks the bits does not matter to the bus,
 * only how many bits a key sets and that different keys spread, so FNV-1a with a per-hash
 * seed stands in for sd-bus's SipHash here.
 */
export class BloomShape {
  constructor(
    /** Bytes, the bus's bloom size (sd-bus: 64). */
    readonly size: number,
    /** Bits per key (sd-bus: 8). */
    readonly nHash: number,
  ) {}

  /** The filter (or mask) holding every key's bits. */
  of(keys: readonly string[]): Buffer {
    const b = Buffer.alloc(this.size);
    const bits = this.size * 8;
    for (const key of keys) {
      for (let i = 0; i < this.nHash; i++) {
        const bit = fnv1a(key, i) % bits;
        b[bit >>> 3] |= 1 << (bit & 7);
      }
    }
    return b;
  }

  /** What a broadcast signal's filter holds. */
  signal(iface: string, member: string, path: string): Buffer {
    const keys = ['message-type:signal', `interface:${iface}`, `member:${member}`, `path:${path}`];
    for (let p = path.lastIndexOf('/'); p > 0; p = path.lastIndexOf('/', p - 1)) keys.push(`path-slash-prefix:${path.slice(0, p)}`);
    keys.push('path-slash-prefix:/');
    return this.of(keys);
  }

  /** What a match "type='signal',interface=...,member=..." asks of it. */
  match(iface: string, member: string): Buffer {
    return this.of(['message-type:signal', `interface:${iface}`, `member:${member}`]);
  }
}

function fnv1a(s: string, seed: number): number {
  let h = (0x811c9dc5 ^ Math.imul(seed + 1, 0x9e3779b1)) >>> 0;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d) >>> 0;
  return (h ^ (h >>> 12)) >>> 0;
}
