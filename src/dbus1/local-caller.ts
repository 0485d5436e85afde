/**
 * The caller side of a kdbus connection the daemon holds itself (local-connection.ts): the
 * address space its command structs and payload buffers are mapped into, the descriptor
 * table the files of an outgoing message are taken from, and the table RECV installs
 * received files into. It plays the part a client process plays for a transport.
 *
 * Unlike LocalMemory, which copies what it places, buffers are mapped as they are, each in a
 * 4 GiB slot of its own (address = (slot + 1) << 32), so a lookup is one division. Payload
 * slots are lent: the bus copies a message's only data vector once, into the receivers'
 * pools, straight from the sender's buffer. Reads are copies, because the bus edits the
 * structs it reads.
 */
import * as fs from 'node:fs';
import { fail } from '../abi/errno';
import type { CallerMemory } from '../abi/memory';
import type { CallerFiles, FileInstaller, ImportedFile } from '../bus/caller';
import { F_DUPFD_CLOEXEC, fcntl } from '../os/libc';
import { ImportedFd } from '../os/pidfd-files';

const SLOT_SPAN = 0x1_0000_0000;
/** Slots stay below x86-64's user address limit (0x7fff_ffff_f000), which SEND checks vectors against. */
const MAX_SLOTS = 0x7ffe;

export class LocalCaller implements CallerMemory, CallerFiles {
  private readonly slots: Array<Buffer | undefined> = [];
  private readonly lendable: boolean[] = [];
  private readonly bases: bigint[] = [];
  private readonly freeSlots: number[] = [];
  private readonly outgoing: ImportedFile[] = [];
  private readonly taken: boolean[] = [];

  /** Maps `buf` (not a copy) and returns its address. `lendable`: lend() may hand out views of it. */
  map(buf: Buffer, lendable: boolean): bigint {
    let slot = this.freeSlots.pop();
    if (slot === undefined) {
      slot = this.slots.length;
      if (slot >= MAX_SLOTS) throw new Error(`local caller memory: ${MAX_SLOTS} buffers mapped at once (a leak)`);
      this.slots.push(undefined);
      this.lendable.push(false);
      this.bases.push(BigInt((slot + 1) * SLOT_SPAN));
    }
    this.slots[slot] = buf;
    this.lendable[slot] = lendable;
    return this.bases[slot]!;
  }

  unmap(address: bigint): void {
    const slot = Number(address) / SLOT_SPAN - 1;
    if (this.slots[slot] === undefined) return;
    this.slots[slot] = undefined;
    this.freeSlots.push(slot);
  }

  read(address: bigint, length: number): Buffer {
    // Every command the bus runs reads its struct here: no tuple, and one buffer per copy.
    const a = Number(address);
    const slot = Math.floor(a / SLOT_SPAN) - 1;
    const at = a - (slot + 1) * SLOT_SPAN;
    const copy = Buffer.allocUnsafe(length);
    this.mapped(slot, at, length, address).copy(copy, 0, at, at + length);
    return copy;
  }

  lend(address: bigint, length: number): Buffer | undefined {
    const a = Number(address);
    const slot = Math.floor(a / SLOT_SPAN) - 1;
    const at = a - (slot + 1) * SLOT_SPAN;
    const buf = slot >= 0 && this.lendable[slot] ? this.slots[slot] : undefined;
    return buf !== undefined && at + length <= buf.length ? buf.subarray(at, at + length) : undefined;
  }

  readInto(address: bigint, length: number, target: Buffer, offset: number): void {
    const a = Number(address);
    const slot = Math.floor(a / SLOT_SPAN) - 1;
    const at = a - (slot + 1) * SLOT_SPAN;
    this.mapped(slot, at, length, address).copy(target, offset, at, at + length);
  }

  write(address: bigint, data: Buffer): void {
    const a = Number(address);
    const slot = Math.floor(a / SLOT_SPAN) - 1;
    const at = a - (slot + 1) * SLOT_SPAN;
    data.copy(this.mapped(slot, at, data.length, address), at);
  }

  /** The buffer mapped at `slot` if [at, at + length) lies within it; EFAULT otherwise. */
  private mapped(slot: number, at: number, length: number, address: bigint): Buffer {
    const buf = slot >= 0 ? this.slots[slot] : undefined;
    if (buf === undefined || at + length > buf.length) {
      throw fail('EFAULT', `${length} bytes at 0x${address.toString(16)} are not mapped in the daemon's local caller`);
    }
    return buf;
  }

  /**
   * Puts a file of the message about to be sent into its descriptor table; returns its
   * number. Every offered file is consumed: the bus closes those it takes, settleFiles() the rest.
   */
  offerFile(file: ImportedFile): number {
    return this.outgoing.push(file) - 1;
  }

  get(fd: number): ImportedFile {
    const f = this.outgoing[fd];
    if (f === undefined) throw fail('EBADF', `descriptor ${fd} is not among the files of the message being sent`);
    this.taken[fd] = true;
    return f;
  }

  /** Ends a send: closes the offered files the bus did not take (it failed before importing them). */
  settleFiles(): void {
    const files = this.outgoing;
    if (files.length === 0) return;
    for (let i = 0; i < files.length; i++) if (!this.taken[i]) files[i]!.close();
    files.length = 0;
    this.taken.length = 0;
  }
}

/**
 * Receives the files RECV (or a synchronous call's reply) installs. The bus closes its own
 * references once the last receiver got the message, so each file is kept as a duplicate
 * of its daemon-side descriptor; a file without one cannot be kept and counts as not
 * installed (-1, INCOMPLETE_FDS), as a full descriptor table would for a process.
 */
export class FileKeeper implements FileInstaller {
  private kept: Array<ImportedFile | null> = [];

  install(files: readonly ImportedFile[]): number[] {
    return files.map((f) => {
      const copy = duplicate(f);
      if (!copy) return -1;
      this.kept.push(copy);
      return this.kept.length - 1;
    });
  }

  /** The file installed as number `fd` (null for -1); the caller takes ownership. */
  readonly lookup = (fd: number): ImportedFile | null => {
    const f = this.kept[fd] ?? null;
    if (f) this.kept[fd] = null;
    return f;
  };

  /** Ends one reception: closes whatever the message did not refer to. */
  reset(): void {
    if (this.kept.length === 0) return;
    for (const f of this.kept) f?.close();
    this.kept = [];
  }
}

function duplicate(f: ImportedFile): ImportedFile | undefined {
  if (f.fd < 0) return undefined;
  const fd = fcntl(f.fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return undefined;
  try {
    return new ImportedFd(fd);
  } catch {
    fs.closeSync(fd);
    return undefined;
  }
}
