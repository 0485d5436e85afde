/**
 * Caller memory read and written directly in the calling process with
 * process_vm_readv/writev: one round trip per ioctl and no size limit, where the daemon may
 * (ptrace-level access, CAP_SYS_PTRACE or same user without Yama restrictions).
 */
import * as koffi from 'koffi';
import { fail } from '../abi/errno';
import type { CallerMemory } from '../abi/memory';

const libc = koffi.load(null);
const readvFn = libc.func('intptr_t process_vm_readv(int pid, void *local, unsigned long liovcnt, void *remote, unsigned long riovcnt, unsigned long flags)');
const writevFn = libc.func('intptr_t process_vm_writev(int pid, void *local, unsigned long liovcnt, void *remote, unsigned long riovcnt, unsigned long flags)');

const EPERM = 1;
const ESRCH = 3;

export class ProcessMemoryDenied extends Error {
  constructor(readonly pid: number, readonly errno: number) {
    super(`process_vm access to ${pid} refused (errno ${errno})`);
    this.name = 'ProcessMemoryDenied';
  }
}

/**
 * Bytes read per process_vm_readv at least: a command's struct, its message and their items
 * mostly lie together, and under emulation each call costs far more than the bytes.
 */
const READ_AHEAD = 1024;

/**
 * One iovec each side, reused: the daemon's main thread is the only caller. Filled through
 * 64-bit views: Buffer.writeBigUInt64LE splits its value with BigInt arithmetic, which
 * under emulation (TCG) cost more than the system call itself.
 */
const localIov = Buffer.alloc(16);
const remoteIov = Buffer.alloc(16);
const localWords = new BigUint64Array(localIov.buffer, localIov.byteOffset, 2);
const remoteWords = new BigUint64Array(remoteIov.buffer, remoteIov.byteOffset, 2);

function setIovs(local: Buffer, remote: bigint, length: number, localOffset = 0): void {
  const len = BigInt(length);
  localWords[0] = (koffi.address(local) as bigint) + BigInt(localOffset);
  localWords[1] = len;
  remoteWords[0] = remote;
  remoteWords[1] = len;
}

const NO_WINDOW = Buffer.alloc(0);

/**
 * One ioctl's view of the caller's memory. Reads come from a window read ahead once (a
 * snapshot, as the kernel's copy_from_user of a whole struct was); writes go straight to
 * the caller and into the window.
 */
export class ProcessMemory implements CallerMemory {
  private window = NO_WINDOW;
  private windowAt = 0n;

  /** `tid`: the calling thread, as CUSE reports it; its process's memory is what is read. */
  constructor(readonly tid: number) {}

  read(address: bigint, length: number): Buffer {
    const out = Buffer.allocUnsafe(length);
    if (length === 0 || this.fromWindow(address, length, out, 0)) return out;
    const want = Math.max(length, READ_AHEAD);
    const buf = want === length ? out : Buffer.allocUnsafe(want);
    setIovs(buf, address, want);
    // A window that runs into an unmapped page comes back short, which is fine if it
    // still covers what was asked.
    const n = readvFn(this.tid, localIov, 1, remoteIov, 1, 0) as number;
    if (n >= length) {
      this.window = buf.subarray(0, n);
      this.windowAt = address;
      if (buf !== out) buf.copy(out, 0, 0, length);
      return out;
    }
    if (n < 0) this.check(koffi.errno());
    throw fail('EFAULT', `${length} bytes at 0x${address.toString(16)} are not readable in the caller`);
  }

  readInto(address: bigint, length: number, target: Buffer, offset: number): void {
    if (length === 0 || this.fromWindow(address, length, target, offset)) return;
    // Data vectors are read once each: straight into place, no window.
    setIovs(target, address, length, offset);
    const n = readvFn(this.tid, localIov, 1, remoteIov, 1, 0) as number;
    if (n === length) return;
    if (n < 0) this.check(koffi.errno());
    throw fail('EFAULT', `${length} bytes at 0x${address.toString(16)} are not readable in the caller`);
  }

  /** Copies the range from the window read ahead, if it lies inside it. */
  private fromWindow(address: bigint, length: number, target: Buffer, offset: number): boolean {
    const start = address - this.windowAt;
    if (start < 0n || start + BigInt(length) > BigInt(this.window.length)) return false;
    this.window.copy(target, offset, Number(start), Number(start) + length);
    return true;
  }

  write(address: bigint, data: Buffer): void {
    if (data.length === 0) return;
    setIovs(data, address, data.length);
    const n = writevFn(this.tid, localIov, 1, remoteIov, 1, 0) as number;
    if (n === data.length) {
      this.patchWindow(address, data);
      return;
    }
    if (n < 0) this.check(koffi.errno());
    throw fail('EFAULT', `${data.length} bytes at 0x${address.toString(16)} are not writable in the caller`);
  }

  private patchWindow(address: bigint, data: Buffer): void {
    const from = address > this.windowAt ? address : this.windowAt;
    const end = address + BigInt(data.length);
    const windowEnd = this.windowAt + BigInt(this.window.length);
    const to = end < windowEnd ? end : windowEnd;
    if (from >= to) return;
    data.copy(this.window, Number(from - this.windowAt), Number(from - address), Number(to - address));
  }

  /** EPERM means this daemon may not use the fast path at all; the transport falls back. */
  private check(errno: number): void {
    if (errno === EPERM) throw new ProcessMemoryDenied(this.tid, errno);
    if (errno === ESRCH) throw fail('EFAULT', `the calling thread ${this.tid} is gone`);
  }
}
