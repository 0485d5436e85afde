/**
 * Pool bytes in a memfd, so a transport can hand the very same memory to the client
 * (`fd`, to be mapped read-only) instead of copying each slice out. tmpfs backs only the
 * pages that were written, so a mostly empty 16 MiB pool costs a page or two.
 *
 * The daemon maps the whole file shared and writable once and copies into that mapping: a
 * message costs a memory copy instead of a pwrite. The size is sealed (no grow, no shrink)
 * right after creation, so no holder of the fd can make either mapping fault past the end,
 * and only a writable descriptor can add seals (the daemon hands out read-only ones), so
 * none can forbid the writes. The mapping never leaves this class: reads are copies, and
 * close() unmaps it after the last use.
 */
import { fail, KdbusError, Errno, type ErrnoName } from '../abi/errno';
import { checkStorageRange, checkStorageSize, type PoolStorage } from '../bus/pool-storage';
import {
  addressOf, errno, F_ADD_SEALS, F_SEAL_GROW, F_SEAL_SHRINK, fcntl, MAP_SHARED, memfd_create, MFD_ALLOW_SEALING, MFD_CLOEXEC, mmap,
  munmap, PROT_READ, PROT_WRITE, viewOf,
} from './libc';
import * as fs from 'node:fs';

const MAP_FAILED = 0xffff_ffff_ffff_ffffn;
/** memfd names are limited to 249 bytes; 62 characters stay below that in any encoding. */
const NAME_MAX_CHARS = 62;

export class MemfdStorage implements PoolStorage {
  readonly fd: number;
  private readonly mapping: unknown;
  /** The mapping as bytes; undefined once closed. */
  private bytes: Buffer | undefined;

  /** `name` shows in /proc/<pid>/fd of the daemon and of every process the fd reaches. */
  constructor(readonly size: number, name = 'kdbus-pool') {
    checkStorageSize(size);
    const fd = memfd_create(name.slice(0, NAME_MAX_CHARS), MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) throw osError(errno(), `cannot create a memfd for a ${size}-byte pool`);
    try {
      fs.ftruncateSync(fd, size);
      if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
        throw osError(errno(), 'cannot seal the size of the pool memfd');
      }
      const mapping = mmap(null, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (addressOf(mapping) === MAP_FAILED) throw osError(errno(), `cannot map a ${size}-byte pool`);
      this.mapping = mapping;
    } catch (e) {
      fs.closeSync(fd);
      throw e instanceof KdbusError ? e : fail('ENOMEM', `cannot size the pool memfd to ${size} bytes: ${String(e)}`);
    }
    this.fd = fd;
    this.bytes = Buffer.from(viewOf(this.mapping, size));
  }

  write(offset: number, data: Uint8Array): void {
    this.access(offset, data.length).set(data, offset);
  }

  fill(offset: number, length: number, byte: number): void {
    this.access(offset, length).fill(byte, offset, offset + length);
  }

  read(offset: number, length: number): Buffer {
    const out = Buffer.allocUnsafe(length);
    this.readInto(offset, length, out);
    return out;
  }

  readInto(offset: number, length: number, target: Buffer): void {
    this.access(offset, length).copy(target, 0, offset, offset + length);
  }

  /** tmpfs blocks in use (st_blocks is in 512-byte units whatever the block size). */
  resident(): number {
    this.access(0, 0);
    return fs.fstatSync(this.fd).blocks * 512;
  }

  close(): void {
    if (!this.bytes) return;
    this.bytes = undefined;
    munmap(this.mapping, this.size);
    fs.closeSync(this.fd);
  }

  private access(offset: number, length: number): Buffer {
    // After close the memory is unmapped and the number may already name another file.
    if (!this.bytes) throw new Error(`pool memfd ${this.fd} used after close`);
    checkStorageRange(this, offset, length);
    return this.bytes;
  }
}

/** The OS error as the client would have seen it from the kernel, ENOMEM if kdbus has no name for it. */
function osError(code: number, message: string): KdbusError {
  const name = (Object.keys(Errno) as ErrnoName[]).find((k) => Errno[k] === code) ?? 'ENOMEM';
  return fail(name, `${message} (errno ${code})`);
}
