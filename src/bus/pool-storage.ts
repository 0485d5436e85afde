/**
 * The bytes behind a connection's pool. The allocator (pool.ts) decides where messages go;
 * a storage only holds bytes. Offsets and lengths are checked by the allocator, so a storage
 * treats an out-of-range access as a bug in the daemon (RangeError), not as a client error.
 *
 * Pools are large (the self-tests ask for 16 MiB per connection) and nearly empty, so every
 * storage must cost memory only for the pages that were written.
 */
import { Limits } from '../abi/constants';

const PAGE = Limits.PAGE_SIZE;

/** Backing store of one pool. */
export interface PoolStorage {
  readonly size: number;
  write(offset: number, data: Uint8Array): void;
  fill(offset: number, length: number, byte: number): void;
  /** A copy of the bytes; never-written ranges read as zeros. */
  read(offset: number, length: number): Buffer;
  /** The same bytes into target[0, length). */
  readInto(offset: number, length: number, target: Buffer): void;
  /** Bytes actually backed by memory. */
  resident(): number;
  close(): void;
}

export function checkStorageRange(storage: PoolStorage, offset: number, length: number): void {
  if (!(offset >= 0 && length >= 0 && offset + length <= storage.size)) {
    throw new RangeError(`pool access [${offset}, +${length}) outside a pool of ${storage.size} bytes`);
  }
}

export function checkStorageSize(size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new RangeError(`pool size must be a positive integer, got ${size}`);
  }
}

/**
 * Pool bytes in the daemon's heap, one 4 KiB page allocated on its first write. For pools
 * nobody maps: tests, and transports that copy slices out instead of sharing the memory.
 */
export class SparseStorage implements PoolStorage {
  private readonly pages = new Map<number, Buffer>();

  constructor(readonly size: number) {
    checkStorageSize(size);
  }

  write(offset: number, data: Uint8Array): void {
    checkStorageRange(this, offset, data.length);
    let done = 0;
    while (done < data.length) {
      const at = offset + done;
      const index = Math.floor(at / PAGE);
      const within = at - index * PAGE;
      const n = Math.min(PAGE - within, data.length - done);
      const chunk = done === 0 && n === data.length ? data : data.subarray(done, done + n);
      this.page(index).set(chunk, within);
      done += n;
    }
  }

  fill(offset: number, length: number, byte: number): void {
    checkStorageRange(this, offset, length);
    let done = 0;
    while (done < length) {
      const at = offset + done;
      const index = Math.floor(at / PAGE);
      const within = at - index * PAGE;
      const n = Math.min(PAGE - within, length - done);
      // An untouched page already reads as zeros: zero-filling it must not back it.
      const page = byte === 0 ? this.pages.get(index) : this.page(index);
      page?.fill(byte, within, within + n);
      done += n;
    }
  }

  read(offset: number, length: number): Buffer {
    // Every byte is written (a page's or zeros): no zero-filled allocation first.
    const out = Buffer.allocUnsafe(length);
    this.readInto(offset, length, out);
    return out;
  }

  readInto(offset: number, length: number, out: Buffer): void {
    checkStorageRange(this, offset, length);
    let done = 0;
    while (done < length) {
      const at = offset + done;
      const index = Math.floor(at / PAGE);
      const within = at - index * PAGE;
      const n = Math.min(PAGE - within, length - done);
      const page = this.pages.get(index);
      if (page) page.copy(out, done, within, within + n);
      else out.fill(0, done, done + n);
      done += n;
    }
  }

  resident(): number {
    return this.pages.size * PAGE;
  }

  close(): void {
    this.pages.clear();
  }

  private page(index: number): Buffer {
    let page = this.pages.get(index);
    if (!page) {
      page = Buffer.alloc(PAGE);
      this.pages.set(index, page);
    }
    return page;
  }
}
