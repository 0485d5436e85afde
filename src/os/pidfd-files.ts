/**
 * Files a client refers to by descriptor number (FDS, PAYLOAD_MEMFD, CANCEL_FD), taken into
 * the daemon. kdbus did fget() on the caller's table; the daemon duplicates the descriptor
 * out of the client with pidfd_getfd(2) (Linux 5.6+), or receives it by SCM_RIGHTS, and
 * then asks the file the questions kdbus asked: is it a memfd and how is it sealed, is it a
 * kdbus handle or a unix socket (both refused as FDS), can it be polled (CANCEL_FD).
 */
import * as fs from 'node:fs';
import { fail, type KdbusError } from '../abi/errno';
import type { CallerFiles, ImportedFile } from '../bus/caller';
import { errno, F_GET_SEALS, F_GETFL, fcntl, getsockopt, pidfd_getfd, pidfd_open, poll, pread } from './libc';

/** Decides whether a descriptor is a kdbus handle of this daemon (the transport knows its device or socket). */
export type KdbusFilePredicate = (fd: number, stat: fs.Stats) => boolean;

// Linux values, the same on x86-64 and arm64.
const O_PATH = 0o10000000;
const SOL_SOCKET = 1;
const SO_DOMAIN = 39;
const AF_UNIX = 1;
const POLLIN = 0x1;
const S_IFMT = 0o170000;
const S_IFSOCK = 0o140000;
const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_IFREG = 0o100000;
const EPERM = 1;
const ESRCH = 3;
const EBADF = 9;
const EINVAL = 22;
const ENFILE = 23;
const EMFILE = 24;
const ENOSYS = 38;

const sockoptValue = Buffer.alloc(4);
const sockoptLen = Buffer.alloc(4);

function socketDomain(fd: number): number {
  sockoptLen.writeUInt32LE(4, 0);
  return getsockopt(fd, SOL_SOCKET, SO_DOMAIN, sockoptValue, sockoptLen) === 0 ? sockoptValue.readInt32LE(0) : -1;
}

/**
 * kdbus refused a CANCEL_FD whose file has no poll operation. Pipes, sockets, character
 * devices and anonymous-inode files (eventfd, timerfd, signalfd, pidfd, ...) have one;
 * regular files, directories, block devices and O_PATH descriptors do not. Anonymous
 * inodes report no file type, or S_IFREG on kernels where pidfs backs pidfds, so a regular
 * file is checked by its /proc link ("anon_inode:[eventfd]").
 */
function hasPoll(fd: number, mode: number): boolean {
  switch (mode & S_IFMT) {
    case S_IFIFO:
    case S_IFSOCK:
    case S_IFCHR:
    case 0:
      return true;
    case S_IFREG:
      try {
        return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith('anon_inode:');
      } catch {
        return false;
      }
    default:
      return false;
  }
}

/**
 * The shim holds numbers for files RECV will install (docs/socket-protocol.md, "reserved
 * numbers") as empty memfds of this name. To the program such a number is not open, so a
 * message naming it is answered as kdbus answered a closed descriptor.
 */
const SHIM_PLACEHOLDER = '/memfd:kdbus-cuse-reserved';

function isShimPlaceholder(fd: number): boolean {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(SHIM_PLACEHOLDER);
  } catch {
    return false;
  }
}

/** One daemon-side descriptor, owned by this object until close(). */
export class ImportedFd implements ImportedFile {
  readonly kind: ImportedFile['kind'];
  readonly seals: number;
  readonly size: number;
  readonly pollable: boolean;
  private open = true;
  private readonly stops = new Set<() => void>();

  /** Takes ownership of `fd` (from pidfd_getfd or SCM_RIGHTS) and classifies it. */
  constructor(readonly fd: number, isKdbus?: KdbusFilePredicate) {
    const st = fs.fstatSync(fd);
    this.size = st.size;
    // kdbus took a memfd to be whatever shmem_get_seals() accepts; F_GET_SEALS asks the same
    // question (and fails for O_PATH descriptors, which kdbus's fget() refused too).
    const seals = fcntl(fd, F_GET_SEALS, 0);
    if (seals >= 0) {
      this.kind = 'memfd';
      this.seals = seals;
      this.pollable = false;
      return;
    }
    this.seals = 0;
    // O_PATH files were always allowed as FDS and cannot be polled.
    if (fcntl(fd, F_GETFL, 0) & O_PATH) {
      this.kind = 'other';
      this.pollable = false;
      return;
    }
    if (isKdbus?.(fd, st)) this.kind = 'kdbus';
    else if ((st.mode & S_IFMT) === S_IFSOCK && socketDomain(fd) === AF_UNIX) this.kind = 'unix-socket';
    else this.kind = 'other';
    this.pollable = this.kind === 'kdbus' || hasPoll(fd, st.mode);
  }

  /** Up to `length` bytes from `offset`; shorter only where the file ends. */
  read(offset: number, length: number): Buffer {
    const out = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const n = pread(this.fd, out.subarray(got), length - got, offset + got);
      if (n < 0) throw fail('EIO', `reading ${length} bytes at ${offset} of imported fd ${this.fd} failed (errno ${errno()})`);
      if (n === 0) break;
      got += n;
    }
    return got === length ? out : out.subarray(0, got);
  }

  onReadable(callback: () => void): () => void {
    const stopWatch = watcher.add(this.fd, () => {
      this.stops.delete(stop);
      callback();
    });
    const stop = (): void => {
      this.stops.delete(stop);
      stopWatch();
    };
    this.stops.add(stop);
    return stop;
  }

  close(): void {
    if (!this.open) return;
    this.open = false;
    for (const stop of this.stops) stop();
    fs.closeSync(this.fd);
  }
}

/**
 * Readiness of descriptors Node cannot watch (it has no handle type for eventfds or for
 * arbitrary pipes it must not read from). All waiting descriptors are polled with one
 * poll(2) call every few milliseconds, and only while some are waiting; the latency suits
 * CANCEL_FD, which aborts a blocked synchronous SEND. kdbus reacted to POLLIN only.
 */
class ReadinessWatcher {
  private static readonly INTERVAL_MS = 5;
  private readonly waiting = new Map<number, { fd: number; fire: () => void }>();
  private nextId = 1;
  private timer: NodeJS.Timeout | undefined;
  private fds = Buffer.alloc(8 * 16);

  add(fd: number, fire: () => void): () => void {
    const id = this.nextId++;
    this.waiting.set(id, { fd, fire });
    if (!this.timer) {
      this.timer = setInterval(() => this.check(), ReadinessWatcher.INTERVAL_MS);
      // A waiting SEND keeps the daemon busy by other means; this timer must not keep it alive.
      this.timer.unref();
    }
    return () => this.remove(id);
  }

  private remove(id: number): void {
    this.waiting.delete(id);
    if (this.waiting.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  private check(): void {
    const entries = [...this.waiting];
    if (this.fds.length < entries.length * 8) this.fds = Buffer.alloc(entries.length * 16);
    // struct pollfd { int fd; short events; short revents; }
    entries.forEach(([, w], i) => {
      this.fds.writeInt32LE(w.fd, i * 8);
      this.fds.writeInt16LE(POLLIN, i * 8 + 4);
      this.fds.writeInt16LE(0, i * 8 + 6);
    });
    if (poll(this.fds, entries.length, 0) <= 0) return;
    entries.forEach(([id, w], i) => {
      if (this.fds.readInt16LE(i * 8 + 6) & POLLIN && this.waiting.has(id)) {
        this.remove(id);
        w.fire();
      }
    });
  }
}

const watcher = new ReadinessWatcher();

/**
 * The caller's descriptor table, reached through a pidfd. `pid` must be the caller's
 * thread-group id. The pidfd is opened on first use and pins that process: a pid reused
 * afterwards cannot hand out another process's files.
 *
 * Errors a client sees (kdbus itself could not fail here except with EBADF):
 * - EBADF: the process has no such descriptor (or a negative number);
 * - EPERM: the daemon may not take the process's files (pidfd_getfd needs ptrace-attach
 *   rights: same uid and not restricted by Yama, or CAP_SYS_PTRACE). EPERM is what SEND
 *   returns for "not allowed", and the log names the real cause;
 * - ESRCH: the process is gone; ENOMEM: the daemon ran out of descriptors;
 *   ENOSYS: the kernel is older than 5.6.
 */
export class PidfdFiles implements CallerFiles {
  private pidfd = -1;

  constructor(readonly pid: number, private readonly isKdbus?: KdbusFilePredicate) {}

  get(fd: number): ImportedFile {
    if (!Number.isInteger(fd) || fd < 0) throw fail('EBADF', `fd ${fd} is not a descriptor number`);
    const local = pidfd_getfd(this.handle(), fd, 0);
    if (local < 0) throw this.error(errno(), `taking fd ${fd} from pid ${this.pid} (pidfd_getfd)`);
    if (isShimPlaceholder(local)) {
      fs.closeSync(local);
      throw fail('EBADF', `fd ${fd} of pid ${this.pid} is not open (the shim holds the number for a file to come)`);
    }
    try {
      return new ImportedFd(local, this.isKdbus);
    } catch (e) {
      fs.closeSync(local);
      throw e;
    }
  }

  /** Releases the pidfd; files already imported stay open. */
  close(): void {
    if (this.pidfd >= 0) fs.closeSync(this.pidfd);
    this.pidfd = -1;
  }

  private handle(): number {
    if (this.pidfd < 0) {
      const pidfd = pidfd_open(this.pid, 0);
      if (pidfd < 0) throw this.error(errno(), `opening a pidfd for pid ${this.pid} (pidfd_open)`);
      this.pidfd = pidfd;
    }
    return this.pidfd;
  }

  private error(err: number, doing: string): KdbusError {
    switch (err) {
      case EBADF:
        return fail('EBADF', `${doing}: the process has no such open descriptor`);
      case EPERM:
        return fail('EPERM', `${doing}: the daemon lacks ptrace access to the process (run it as root or with CAP_SYS_PTRACE)`);
      case ESRCH:
        return fail('ESRCH', `${doing}: the process has exited`);
      case EINVAL:
        return fail('EINVAL', `${doing}: not a thread-group leader (the transport must pass the tgid)`);
      case EMFILE:
      case ENFILE:
        return fail('ENOMEM', `${doing}: the daemon is out of file descriptors`);
      case ENOSYS:
        return fail('ENOSYS', `${doing}: the kernel lacks pidfd_open/pidfd_getfd (Linux 5.6 or later needed)`);
      default:
        return fail('EIO', `${doing}: failed with errno ${err}`);
    }
  }
}
