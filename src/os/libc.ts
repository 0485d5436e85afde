/**
 * The libc functions the daemon calls that Node does not offer (or offers only at a higher
 * cost), declared once through koffi. `koffi.load(null)` binds the symbols of the running
 * process instead of naming a libc file, so the same code runs on glibc and musl.
 *
 * Declarations assume a 64-bit target (x86-64, arm64): off_t is int64_t there with both libcs.
 * Failures return -1 and leave the reason in errno(), read it right after the call.
 */
import * as koffi from 'koffi';

const libc = koffi.load(null);

/** Pools are anonymous shared-memory files a client can map; Node cannot create one. */
export const memfd_create = libc.func('int memfd_create(const char *name, unsigned int flags)') as (
  name: string,
  flags: number,
) => number;
export const MFD_CLOEXEC = 0x1;
export const MFD_ALLOW_SEALING = 0x2;

/**
 * Pools the daemon writes through a shared mapping of their memfd: a copy into memory
 * instead of a pwrite per message. The pointer is an opaque koffi value.
 */
export const mmap = libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)') as (
  addr: null,
  length: number,
  prot: number,
  flags: number,
  fd: number,
  offset: number,
) => unknown;
export const munmap = libc.func('int munmap(void *addr, size_t length)') as (addr: unknown, length: number) => number;
export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const MAP_SHARED = 0x01;

/** The memory at `address` as an ArrayBuffer that does not own it: the caller unmaps it, after its last use. */
export function viewOf(address: unknown, length: number): ArrayBuffer {
  return koffi.view(address, length);
}

/** A pointer's numeric value (mmap's MAP_FAILED is all ones). */
export function addressOf(pointer: unknown): bigint {
  return koffi.address(pointer);
}

/** Reads pool bytes back (queue moves between pools, transports that copy slices out). */
export const pread = libc.func('intptr_t pread(int fd, void *buf, size_t count, int64_t offset)') as (
  fd: number,
  buf: Uint8Array,
  count: number,
  offset: number,
) => number;

/**
 * Plain read and write for descriptors read on every request (CUSE channels): fs.readSync
 * throws an exception for EAGAIN, which ends every drain of a non-blocking descriptor.
 */
export const read = libc.func('intptr_t read(int fd, void *buf, size_t count)') as (fd: number, buf: Uint8Array, count: number) => number;
export const write = libc.func('intptr_t write(int fd, const void *buf, size_t count)') as (fd: number, buf: Uint8Array, count: number) => number;

const fcntlVariadic = libc.func('int fcntl(int fd, int cmd, ...)');

/** fcntl's command to duplicate a descriptor onto the lowest free number ≥ arg, close-on-exec. */
export const F_DUPFD_CLOEXEC = 1030;
/** fcntl's commands for a descriptor's flags, and its one flag. */
export const F_GETFD = 1;
export const F_SETFD = 2;
export const FD_CLOEXEC = 1;
/** fcntl's commands for a file's status flags (O_NONBLOCK, O_PATH...). */
export const F_GETFL = 3;
export const F_SETFL = 4;
export const O_NONBLOCK = 0o4000;
/** fcntl's commands for a memfd's seals, and the seals. */
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 0x1;
export const F_SEAL_SHRINK = 0x2;
export const F_SEAL_GROW = 0x4;
export const F_SEAL_WRITE = 0x8;

/** fcntl with an int argument: F_ADD_SEALS / F_GET_SEALS on memfds; Node has no fcntl. */
export function fcntl(fd: number, cmd: number, arg: number): number {
  return fcntlVariadic(fd, cmd, 'int', arg) as number;
}

/** errno as the last call through these bindings left it. */
export function errno(): number {
  return koffi.errno();
}

// Appended for src/os/pidfd-files.ts (taking files out of client processes, classifying them).

/**
 * pidfd_open / pidfd_getfd by number: glibc before 2.36 and musl have no wrappers. Since
 * Linux 5.1 new syscalls share one number on every architecture (alpha aside), so x86-64
 * and arm64 both use these.
 */
export const SYS_pidfd_open = 434;
export const SYS_pidfd_getfd = 438;

// syscall() is variadic; fixed int prototypes pass the same registers on x86-64 and arm64
// and skip koffi's per-call parsing of variadic argument types.
const syscall2 = libc.func('syscall', 'long', ['long', 'int', 'uint']);
const syscall3 = libc.func('syscall', 'long', ['long', 'int', 'int', 'uint']);

/** Returns a pidfd for the thread-group leader `pid`, or -1 with errno. */
export function pidfd_open(pid: number, flags: number): number {
  return syscall2(SYS_pidfd_open, pid, flags) as number;
}

/** Duplicates `targetfd` of the pidfd's process into the daemon (close-on-exec), or -1 with errno. */
export function pidfd_getfd(pidfd: number, targetfd: number, flags: number): number {
  return syscall3(SYS_pidfd_getfd, pidfd, targetfd, flags) as number;
}

/** SO_DOMAIN and friends: Node cannot query options of a socket it did not create. */
export const getsockopt = libc.func('int getsockopt(int fd, int level, int name, void *value, void *len)') as (
  fd: number,
  level: number,
  name: number,
  value: Uint8Array,
  len: Uint8Array,
) => number;

/** Readiness of descriptors Node has no handle type for (CANCEL_FD eventfds). */
export const poll = libc.func('int poll(void *fds, unsigned long nfds, int timeout)') as (
  fds: Uint8Array,
  nfds: number,
  timeout: number,
) => number;

const ioctlVariadic = libc.func('int ioctl(int fd, unsigned long request, ...)');

/**
 * ioctl without an argument or with a buffer the call fills in: the nsfs queries
 * (NS_GET_PARENT, NS_GET_OWNER_UID) that tell how namespaces nest. -1 with errno on failure.
 */
export function ioctl(fd: number, request: number, out?: Uint8Array): number {
  return (out ? ioctlVariadic(fd, request, 'void *', out) : ioctlVariadic(fd, request)) as number;
}

const getrlimit = libc.func('int getrlimit(int resource, void *rlim)') as (resource: number, rlim: Uint8Array) => number;
const setrlimit = libc.func('int setrlimit(int resource, const void *rlim)') as (resource: number, rlim: Uint8Array) => number;
const RLIMIT_NOFILE = 7;

/**
 * How many descriptors the daemon may have open (RLIMIT_NOFILE's soft limit, which Node
 * raises to the hard one at start-up); "unlimited" reads as 2^31.
 */
export function openFileLimit(): number {
  const rlim = Buffer.alloc(16);
  if (getrlimit(RLIMIT_NOFILE, rlim) < 0) throw new Error(`getrlimit(RLIMIT_NOFILE) failed: errno ${errno()}`);
  const soft = rlim.readBigUInt64LE(0);
  return soft > 0x8000_0000n ? 0x8000_0000 : Number(soft);
}

/**
 * Raises RLIMIT_NOFILE (soft and hard) to `wanted` where it is lower and the daemon may
 * (CAP_SYS_RESOURCE); returns the soft limit in force afterwards. Never lowers it.
 */
export function raiseFileLimit(wanted: number): number {
  const now = openFileLimit();
  if (now >= wanted) return now;
  const rlim = Buffer.alloc(16);
  rlim.writeBigUInt64LE(BigInt(wanted), 0);
  rlim.writeBigUInt64LE(BigInt(wanted), 8);
  if (setrlimit(RLIMIT_NOFILE, rlim) < 0) {
    // Not privileged: the hard limit stays, and the soft one goes as far as it allows.
    const cur = Buffer.alloc(16);
    if (getrlimit(RLIMIT_NOFILE, cur) < 0) return now;
    cur.writeBigUInt64LE(cur.readBigUInt64LE(8), 0);
    setrlimit(RLIMIT_NOFILE, cur);
  }
  return openFileLimit();
}
