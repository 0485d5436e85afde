/**
 * The fuzzer's fake client process: an address space and a descriptor table built for
 * hundreds of thousands of calls. Unlike the test Arena, regions are found in O(1) and can
 * be unmapped, so memory does not grow with the run; writes are only allowed into the
 * command structs of calls in flight, so a bus that scribbles elsewhere is caught; every
 * file the bus imports is a fresh reference whose closes are counted, so the leak oracle can
 * tell a file that was closed twice, too early or never; and the data that message vectors
 * point at is a pattern from which any 8 copied bytes tell where they came from.
 */
import { fail, KdbusError } from '../../src/abi/errno';
import type { CallerMemory } from '../../src/abi/memory';
import type { CallerFiles, FileInstaller, ImportedFile } from '../../src/bus/caller';

interface Region {
  start: bigint;
  data: Buffer;
  readOnly: boolean;
}

/** Each region gets a slot of this many bytes; the rest of the slot is unmapped. */
const SLOT_BITS = 20n;
const SLOT = 1n << SLOT_BITS;
/** Regions may take up to half their slot, so the other half is always a gap. */
export const MAX_REGION = Number(SLOT / 2n);

/** A range of caller memory the bus may write to: the command struct of a call in flight. */
interface Window {
  start: bigint;
  end: bigint;
}

export class FuzzMemory implements CallerMemory {
  private readonly regions = new Map<number, Region>();
  private nextSlot = 0x10;
  private readonly windows = new Set<Window>();
  /** Writes the bus made outside every command struct in flight. */
  readonly strayWrites: string[] = [];

  /**
   * Maps `data` (not copied: the caller must not reuse it) at a fresh slot, `misalign` bytes
   * past its 8-aligned start. Returns the address of data[0].
   */
  map(data: Buffer, options: { readOnly?: boolean; misalign?: number } = {}): bigint {
    if (data.length + (options.misalign ?? 0) > MAX_REGION) throw new Error(`region of ${data.length} bytes is too large`);
    const slot = this.nextSlot++;
    const start = (BigInt(slot) << SLOT_BITS) + BigInt(options.misalign ?? 0);
    this.regions.set(slot, { start, data, readOnly: options.readOnly ?? false });
    return start;
  }

  unmap(address: bigint): void {
    this.regions.delete(Number(address >> SLOT_BITS));
  }

  /** An address no region covers: inside a gap, or far beyond every slot. */
  unmappedAddress(pick: number): bigint {
    const slot = BigInt(this.nextSlot + 1000 + pick);
    return (slot << SLOT_BITS) + BigInt(pick & 0xfff8);
  }

  get regionCount(): number {
    return this.regions.size;
  }

  /** Called before each read; lets the fuzzer play a thread that changes memory meanwhile. */
  onRead: ((address: bigint, length: number) => void) | undefined;

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
    const end = address + BigInt(data.length);
    let inside = false;
    for (const w of this.windows) if (address >= w.start && end <= w.end) inside = true;
    if (!inside) this.strayWrites.push(`${data.length} bytes at 0x${address.toString(16)}`);
    r.data.set(data, Number(address - r.start));
  }

  /**
   * Lets the bus write to [address, address + size): kdbus only ever writes into the command
   * struct it was given, within the size the caller declared. Returns the revocation.
   */
  allowWrites(address: bigint, size: bigint): () => void {
    const w = { start: address, end: address + size };
    this.windows.add(w);
    return () => this.windows.delete(w);
  }

  /** Test-side read, ignoring protection; undefined when unmapped. */
  peek(address: bigint, length: number): Buffer | undefined {
    const r = this.regions.get(Number(address >> SLOT_BITS));
    if (!r || address < r.start || address + BigInt(length) > r.start + BigInt(r.data.length)) return undefined;
    const at = Number(address - r.start);
    return r.data.subarray(at, at + length);
  }

  private find(address: bigint, length: number): Region {
    const r = this.regions.get(Number(address >> SLOT_BITS));
    if (r && length >= 0 && address >= r.start && address + BigInt(length) <= r.start + BigInt(r.data.length)) return r;
    throw fail('EFAULT', `${length} bytes at 0x${address.toString(16)} are not mapped`);
  }
}

/** A file of the fake process; the bus only ever sees references to it (FileRef). */
export class FuzzFile {
  private readonly readable = new Set<() => void>();
  constructor(
    readonly kind: ImportedFile['kind'],
    readonly content: Buffer,
    readonly seals: number,
    readonly pollable: boolean,
  ) {}

  onReadable(cb: () => void): () => void {
    this.readable.add(cb);
    return () => this.readable.delete(cb);
  }

  get waiters(): number {
    return this.readable.size;
  }

  /** Plays "the fd became readable" (an eventfd written). */
  signal(): void {
    for (const cb of [...this.readable]) cb();
  }
}

/**
 * One import of a file by the bus (what pidfd_getfd hands the daemon): the daemon owns it
 * and must close it exactly once, after its last use.
 */
export class FileRef implements ImportedFile {
  closes = 0;
  readonly fd = -1;
  constructor(
    readonly file: FuzzFile,
    private readonly table: FuzzFiles,
    /** Which call imported it, for failure reports. */
    readonly origin: string,
  ) {}

  get kind(): ImportedFile['kind'] {
    return this.file.kind;
  }
  get seals(): number {
    return this.file.seals;
  }
  get pollable(): boolean {
    return this.file.pollable;
  }
  get size(): number {
    return this.file.content.length;
  }

  read(offset: number, length: number): Buffer {
    this.table.use(this, 'read');
    return this.file.content.subarray(offset, offset + length);
  }

  onReadable(cb: () => void): () => void {
    this.table.use(this, 'poll');
    return this.file.onReadable(cb);
  }

  close(): void {
    if (++this.closes > 1) this.table.violation(`${this.origin}: file reference closed ${this.closes} times`);
  }
}

/** The descriptor table (CallerFiles) and the receiving side of RECV (FileInstaller). */
export class FuzzFiles implements CallerFiles, FileInstaller {
  private readonly files = new Map<number, FuzzFile>();
  private nextFd = 3;
  /** Every reference handed to the bus, in order. */
  readonly refs: FileRef[] = [];
  /** Invariant breaks seen inside bus calls (thrown there they could be swallowed). */
  readonly violations: string[] = [];
  /** Set by the harness before each call, so references can be traced back to it. */
  origin = '';
  failInstall = false;
  installed = 0;

  add(file: FuzzFile): number {
    const fd = this.nextFd++;
    this.files.set(fd, file);
    return fd;
  }

  fileOf(fd: number): FuzzFile | undefined {
    return this.files.get(fd);
  }

  get(fd: number): ImportedFile {
    const f = this.files.get(fd);
    if (!f) throw new KdbusError('EBADF', `fd ${fd} is not open`);
    const ref = new FileRef(f, this, this.origin);
    this.refs.push(ref);
    return ref;
  }

  install(files: readonly ImportedFile[]): number[] {
    return files.map((f) => {
      if (f instanceof FileRef) this.use(f, 'install');
      if (this.failInstall) return -1;
      this.installed++;
      return 1000 + this.installed;
    });
  }

  /** @internal */
  use(ref: FileRef, what: string): void {
    if (ref.closes > 0) this.violation(`${ref.origin}: file reference used (${what}) after it was closed`);
  }

  /** @internal */
  violation(message: string): void {
    this.violations.push(message);
  }
}

/** Payload words are k * WORD_MUL (mod 2^32): odd, so k can be recovered with the inverse. */
const WORD_MUL = 0x9e3779b1;
const WORD_INV = ((): number => {
  let x = WORD_MUL;
  for (let i = 0; i < 5; i++) x = Math.imul(x, 2 - Math.imul(WORD_MUL, x)) >>> 0;
  return x;
})();

export function payloadPattern(length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let k = 0; k * 4 < length; k++) b.writeUInt32LE(Math.imul(k, WORD_MUL) >>> 0, k * 4);
  return b;
}

/** Where in the payload pattern `data` (8 bytes or more) was copied from, if it was. */
export function locatePayload(pattern: Buffer, data: Buffer): number | undefined {
  for (let phase = 0; phase < 4; phase++) {
    const k = Math.imul(data.readUInt32LE(phase), WORD_INV) >>> 0;
    const from = 4 * k - phase;
    if (from >= 0 && from + data.length <= pattern.length && pattern.subarray(from, from + data.length).equals(data)) return from;
  }
  return undefined;
}

