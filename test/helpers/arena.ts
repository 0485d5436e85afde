/**
 * A fake caller address space for tests: separate 8-aligned regions at made-up addresses,
 * with unmapped gaps between them, so that any access outside a region fails with EFAULT
 * the way process_vm_readv would for the real caller.
 */
import { fail } from '../../src/abi/errno';
import type { CallerMemory } from '../../src/abi/memory';

interface Region {
  start: bigint;
  data: Buffer;
  readOnly: boolean;
}

export interface WriteRecord {
  address: bigint;
  data: Buffer;
}

/** Regions are placed this far apart, so overruns land in unmapped memory. */
const SPACING = 0x1_0000n;

export class Arena implements CallerMemory {
  private readonly regions: Region[] = [];
  private next = 0x10_0000n;
  /** Every successful write, in order. */
  readonly writes: WriteRecord[] = [];
  /** Called before each read; lets a test play a thread that changes memory meanwhile. */
  onRead: ((address: bigint, length: number) => void) | undefined;

  /** Maps `size` zeroed bytes at a fresh 8-aligned (in fact 64 KiB-aligned) address. */
  alloc(size: number, options: { readOnly?: boolean } = {}): bigint {
    const start = this.next;
    const span = ((BigInt(size) + SPACING - 1n) / SPACING + 1n) * SPACING;
    this.next += span;
    this.regions.push({ start, data: Buffer.alloc(size), readOnly: options.readOnly ?? false });
    return start;
  }

  /** Maps a copy of `data`; with `misalign` the returned address is that many bytes past 8-alignment. */
  put(data: Uint8Array, options: { readOnly?: boolean; misalign?: number } = {}): bigint {
    const skew = options.misalign ?? 0;
    const base = this.alloc(data.length + skew, options);
    this.regions[this.regions.length - 1].data.set(data, skew);
    return base + BigInt(skew);
  }

  read(address: bigint, length: number): Buffer {
    this.onRead?.(address, length);
    const r = this.find(address, length);
    const at = Number(address - r.start);
    return Buffer.from(r.data.subarray(at, at + length));
  }

  readInto(address: bigint, length: number, target: Buffer, offset: number): void {
    this.read(address, length).copy(target, offset);
  }

  write(address: bigint, data: Buffer): void {
    const r = this.find(address, data.length);
    if (r.readOnly) throw fail('EFAULT', `write to read-only memory at 0x${address.toString(16)}`);
    r.data.set(data, Number(address - r.start));
    this.writes.push({ address, data: Buffer.from(data) });
  }

  /** Test-side view of memory, bypassing onRead and the write log. */
  peek(address: bigint, length: number): Buffer {
    const r = this.find(address, length);
    const at = Number(address - r.start);
    return Buffer.from(r.data.subarray(at, at + length));
  }

  /** Test-side change of memory, bypassing read-only protection and the write log. */
  poke(address: bigint, data: Uint8Array): void {
    const r = this.find(address, data.length);
    r.data.set(data, Number(address - r.start));
  }

  private find(address: bigint, length: number): Region {
    for (const r of this.regions) {
      if (address >= r.start && address + BigInt(length) <= r.start + BigInt(r.data.length)) return r;
    }
    throw fail('EFAULT', `${length} bytes at 0x${address.toString(16)} are not mapped`);
  }
}
