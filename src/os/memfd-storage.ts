/**
 * Pool bytes in a memfd, so a transport can hand the very same memory to the client
 * (`fd`, to be mapped read-only) instead of copying each slice out. tmpfs backs only the
 * pages that were written, so a mostly empty 16 MiB pool costs a page or two.
 *
 * Every write is one pwrite; the size is sealed (no grow, no shrink) right after creation,
 * so no holder of the fd can make a client's mapping fault past the end.
 */
import { Errno, fail, KdbusError, type ErrnoName } from '../abi/errno';
import { checkStorageRange, checkStorageSize, type PoolStorage } from '../bus/pool-storage';
import { errno, fcntl, memfd_create, pread, pwrite } from './libc';
import * as fs from 'node:fs';

const MFD_CLOEXEC = 0x1;
const MFD_ALLOW_SEALING = 0x2;
const F_ADD_SEALS = 1033;
const F_SEAL_SHRINK = 0x2;
const F_SEAL_GROW = 0x4;
/** memfd names are limited to 249 bytes; 62 characters stay below that in any encoding. */
const NAME_MAX_CHARS = 62;
const FILL_CHUNK = 64 * 1024;

let zeros: Buffer | undefined;

export class MemfdStorage implements PoolStorage {
  readonly fd: number;
  private open = true;

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
    } catch (e) {
      fs.closeSync(fd);
      throw e instanceof KdbusError ? e : fail('ENOMEM', `cannot size the pool memfd to ${size} bytes: ${String(e)}`);
    }
    this.fd = fd;
  }

  write(offset: number, data: Uint8Array): void {
    this.checkAccess(offset, data.length);
    if (data.length === 0) return;
    const n = pwrite(this.fd, data, data.length, offset);
    if (n !== data.length) this.finishWrite(offset, data, n);
  }

  fill(offset: number, length: number, byte: number): void {
    this.checkAccess(offset, length);
    const chunk = Math.min(length, FILL_CHUNK);
    let source: Buffer;
    if (byte === 0) {
      zeros ??= Buffer.alloc(FILL_CHUNK);
      source = zeros.subarray(0, chunk);
    } else {
      source = Buffer.alloc(chunk, byte);
    }
    for (let done = 0; done < length; done += chunk) {
      this.write(offset + done, length - done < chunk ? source.subarray(0, length - done) : source);
    }
  }

  read(offset: number, length: number): Buffer {
    this.checkAccess(offset, length);
    const out = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const n = pread(this.fd, out.subarray(done), length - done, offset + done);
      if (n > 0) done += n;
      else if (n === 0) throw fail('EIO', `pool memfd ended early reading [${offset}, +${length})`);
      else if (errno() !== Errno.EINTR) throw osError(errno(), `cannot read pool bytes [${offset}, +${length})`);
    }
    return out;
  }

  /** tmpfs blocks in use (st_blocks is in 512-byte units whatever the block size). */
  resident(): number {
    this.checkOpen();
    return fs.fstatSync(this.fd).blocks * 512;
  }

  close(): void {
    if (!this.open) return;
    this.open = false;
    fs.closeSync(this.fd);
  }

  /** The rare path: tmpfs ran out of memory part-way, or a signal interrupted the copy. */
  private finishWrite(offset: number, data: Uint8Array, first: number): void {
    let done = 0;
    let n = first;
    for (;;) {
      if (n > 0) done += n;
      else if (n === 0) throw fail('ENOMEM', `pool memfd accepted no bytes at ${offset + done}`);
      else if (errno() !== Errno.EINTR) throw osError(errno(), `cannot write ${data.length} bytes into the pool at ${offset}`);
      if (done === data.length) return;
      n = pwrite(this.fd, data.subarray(done), data.length - done, offset + done);
    }
  }

  private checkAccess(offset: number, length: number): void {
    this.checkOpen();
    checkStorageRange(this, offset, length);
  }

  private checkOpen(): void {
    // After close the number may already name another file: never touch it again.
    if (!this.open) throw new Error(`pool memfd ${this.fd} used after close`);
  }
}

/** The OS error as the client would have seen it from the kernel, ENOMEM if kdbus has no name for it. */
function osError(code: number, message: string): KdbusError {
  const name = (Object.keys(Errno) as ErrnoName[]).find((k) => Errno[k] === code) ?? 'ENOMEM';
  return fail(name, `${message} (errno ${code})`);
}
