/**
 * Caller memory made of the pieces a client sent (the shim's prefetch and answers to
 * FETCH). A read outside them throws NeedMemory; the transport fetches the range and runs
 * the command again from the start, which is safe because commands read everything before
 * they change anything (src/abi/memory.ts). Writes are collected and returned with the
 * result for the client to apply. The CUSE retry fallback works the same way.
 */
import { fail } from '../abi/errno';
import type { CallerMemory } from '../abi/memory';
import type { Segment } from './frames';

const EMPTY = Buffer.alloc(0);

export class NeedMemory extends Error {
  constructor(readonly address: bigint, readonly length: number) {
    super(`need ${length} bytes of caller memory at 0x${address.toString(16)}`);
    this.name = 'NeedMemory';
  }
}

export class SegmentMemory implements CallerMemory {
  private readonly segments: Segment[];
  /** Ranges the client reported as unreadable. */
  private readonly faults: Array<{ address: bigint; length: number }> = [];
  writes: Segment[] = [];

  constructor(segments: readonly Segment[]) {
    this.segments = [...segments];
  }

  add(address: bigint, data: Buffer): void {
    this.segments.push({ address, data });
  }

  addFault(address: bigint, length: number): void {
    this.faults.push({ address, length });
  }

  /**
   * Makes the segments' bytes the memory's own: they were views into the buffer the
   * transport reads into, which the next read reuses, and the command is going on later.
   */
  detach(): void {
    for (let i = 0; i < this.segments.length; i++) {
      const s = this.segments[i]!;
      this.segments[i] = { address: s.address, data: Buffer.from(s.data) };
    }
  }

  /** Bytes of caller memory the segments hold: what a command in progress keeps. */
  get bytes(): number {
    let n = 0;
    for (const s of this.segments) n += s.data.length;
    return n;
  }

  /** Starts a new attempt: the previous attempt's writes are void. */
  resetWrites(): void {
    this.writes = [];
  }

  /** Whether [address, address + length) is among the segments. */
  has(address: bigint, length: number): boolean {
    return this.segmentWith(address, address + BigInt(length)) !== undefined;
  }

  read(address: bigint, length: number): Buffer {
    const s = this.locate(address, length);
    const at = Number(address - s.address);
    return Buffer.from(s.data.subarray(at, at + length));
  }

  readInto(address: bigint, length: number, target: Buffer, offset: number): void {
    const s = this.locate(address, length);
    const at = Number(address - s.address);
    s.data.copy(target, offset, at, at + length);
  }

  /**
   * The segment that holds [address, address + length); EFAULT or NeedMemory if none does.
   * Nothing is read for no bytes, as copy_from_user reads nothing for them: a client's
   * memory is never asked for zero bytes, which neither transport could carry.
   */
  private locate(address: bigint, length: number): Segment {
    if (length === 0) return { address, data: EMPTY };
    const end = address + BigInt(length);
    const s = this.segmentWith(address, end);
    if (s) return s;
    for (const f of this.faults) {
      if (address < f.address + BigInt(f.length) && end > f.address) {
        throw fail('EFAULT', `${length} bytes at 0x${address.toString(16)} are not readable in the caller`);
      }
    }
    throw new NeedMemory(address, length);
  }

  private segmentWith(address: bigint, end: bigint): Segment | undefined {
    for (const s of this.segments) {
      if (address >= s.address && end <= s.address + BigInt(s.data.length)) return s;
    }
    return undefined;
  }

  write(address: bigint, data: Buffer): void {
    this.writes.push({ address, data: Buffer.from(data) });
  }
}
