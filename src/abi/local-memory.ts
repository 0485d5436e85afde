/**
 * Caller memory for callers inside the daemon (the daemon creating its own buses, the
 * bridges speaking for their clients): buffers placed at synthetic, 8-aligned addresses so
 * they can go through the same ioctl path as any client's.
 */
import { fail } from './errno';
import type { CallerMemory } from './memory';

export class LocalMemory implements CallerMemory {
  private readonly regions = new Map<bigint, Buffer>();
  private next = 0x1000n;

  /** Places a copy of `data` and returns its address. */
  put(data: Buffer): bigint {
    const addr = this.next;
    this.next += (BigInt(data.length) + 0x1007n) & ~7n;
    this.regions.set(addr, Buffer.from(data));
    return addr;
  }

  /** The current bytes of a region placed with put(). */
  get(addr: bigint): Buffer {
    const b = this.regions.get(addr);
    if (!b) throw new Error(`no local region at 0x${addr.toString(16)}`);
    return b;
  }

  release(addr: bigint): void {
    this.regions.delete(addr);
  }

  private locate(address: bigint, length: number): [Buffer, number] {
    for (const [start, b] of this.regions) {
      if (address >= start && address + BigInt(length) <= start + BigInt(b.length)) return [b, Number(address - start)];
    }
    throw fail('EFAULT', `${length} bytes at 0x${address.toString(16)} are not mapped`);
  }

  read(address: bigint, length: number): Buffer {
    const [b, at] = this.locate(address, length);
    return Buffer.from(b.subarray(at, at + length));
  }

  readInto(address: bigint, length: number, target: Buffer, offset: number): void {
    const [b, at] = this.locate(address, length);
    b.copy(target, offset, at, at + length);
  }

  write(address: bigint, data: Buffer): void {
    const [b, at] = this.locate(address, data.length);
    data.copy(b, at);
  }
}
