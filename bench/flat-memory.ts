/**
 * Caller memory for benchmarks: one contiguous buffer with a bump allocator, so that a
 * ioctl's reads and writes cost a bounds check and a copy, nothing more. The test Arena
 * looks regions up linearly and logs every write, which is right for tests and would be
 * measured here as if the core paid for it.
 */
import { fail } from '../src/abi/errno';
import type { CallerMemory } from '../src/abi/memory';

/** Made-up address of the first byte; anything below or past the used part is EFAULT. */
const BASE = 0x1000_0000n;

export class FlatMemory implements CallerMemory {
  private readonly buf: Buffer;
  private used = 0;

  constructor(capacity: number) {
    this.buf = Buffer.alloc(capacity);
  }

  /** Reserves `size` zeroed bytes at an 8-aligned address. */
  alloc(size: number): bigint {
    const at = this.used;
    const end = at + ((size + 7) & ~7);
    if (end > this.buf.length) throw new RangeError(`FlatMemory of ${this.buf.length} bytes cannot take ${size} more`);
    this.used = end;
    return BASE + BigInt(at);
  }

  put(data: Uint8Array): bigint {
    const address = this.alloc(data.length);
    this.buf.set(data, this.offsetOf(address, data.length));
    return address;
  }

  read(address: bigint, length: number): Buffer {
    const at = this.offsetOf(address, length);
    return Buffer.from(this.buf.subarray(at, at + length));
  }

  readInto(address: bigint, length: number, target: Buffer, offset: number): void {
    const at = this.offsetOf(address, length);
    this.buf.copy(target, offset, at, at + length);
  }

  write(address: bigint, data: Buffer): void {
    this.buf.set(data, this.offsetOf(address, data.length));
  }

  u64(address: bigint): bigint {
    return this.buf.readBigUInt64LE(this.offsetOf(address, 8));
  }

  setU64(address: bigint, value: bigint): void {
    this.buf.writeBigUInt64LE(value, this.offsetOf(address, 8));
  }

  private offsetOf(address: bigint, length: number): number {
    const at = Number(address - BASE);
    if (!(at >= 0 && length >= 0 && at + length <= this.used)) {
      throw fail('EFAULT', `${length} bytes at 0x${address.toString(16)} are not mapped`);
    }
    return at;
  }
}
