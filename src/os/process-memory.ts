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

function iov(base: bigint, len: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(base, 0);
  b.writeBigUInt64LE(BigInt(len), 8);
  return b;
}

export class ProcessMemory implements CallerMemory {
  /** `tid`: the calling thread, as CUSE reports it; its process's memory is what is read. */
  constructor(readonly tid: number) {}

  read(address: bigint, length: number): Buffer {
    const out = Buffer.allocUnsafe(length);
    if (length === 0) return out;
    const n = readvFn(this.tid, iov(koffi.address(out) as bigint, length), 1, iov(address, length), 1, 0) as number;
    if (n === length) return out;
    if (n < 0) this.check(koffi.errno());
    throw fail('EFAULT', `${length} bytes at 0x${address.toString(16)} are not readable in the caller`);
  }

  write(address: bigint, data: Buffer): void {
    if (data.length === 0) return;
    const n = writevFn(this.tid, iov(koffi.address(data) as bigint, data.length), 1, iov(address, data.length), 1, 0) as number;
    if (n === data.length) return;
    if (n < 0) this.check(koffi.errno());
    throw fail('EFAULT', `${data.length} bytes at 0x${address.toString(16)} are not writable in the caller`);
  }

  /** EPERM means this daemon may not use the fast path at all; the transport falls back. */
  private check(errno: number): void {
    if (errno === EPERM) throw new ProcessMemoryDenied(this.tid, errno);
    if (errno === ESRCH) throw fail('EFAULT', `the calling thread ${this.tid} is gone`);
  }
}
