/**
 * Linux errno values (asm-generic, as on x86-64 and arm64) that kdbus commands return, and
 * the error type every layer throws. A KdbusError carries what the client's ioctl() will
 * see in errno, plus a sentence for the daemon's log and for people reading test failures.
 */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  EMFILE: 24,
  ENOTTY: 25,
  ETXTBSY: 26,
  EPIPE: 32,
  EDOM: 33,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  EMLINK: 31,
  EBADSLT: 57,
  ECOMM: 70,
  EBADMSG: 74,
  ENOTUNIQ: 76,
  EBADFD: 77,
  EREMCHG: 78,
  EDESTADDRREQ: 89,
  EMSGSIZE: 90,
  EOPNOTSUPP: 95,
  EADDRINUSE: 98,
  EADDRNOTAVAIL: 99,
  ENOBUFS: 105,
  ESHUTDOWN: 108,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  EALREADY: 114,
  EREMOTEIO: 121,
  EMEDIUMTYPE: 124,
  ECANCELED: 125,
  EXFULL: 54,
} as const;

export type ErrnoName = keyof typeof Errno;

const names = new Map<number, ErrnoName>(
  (Object.entries(Errno) as [ErrnoName, number][]).map(([k, v]) => [v, k]),
);

export function errnoName(errno: number): string {
  return names.get(errno) ?? `errno ${errno}`;
}

export class KdbusError extends Error {
  readonly errno: number;

  constructor(code: ErrnoName | number, message: string) {
    const errno = typeof code === 'number' ? code : Errno[code];
    // These are answers to clients (EAGAIN on every empty RECV), not faults of the daemon:
    // a stack trace would cost more than the command itself and tell nobody anything.
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(`${errnoName(errno)}: ${message}`);
    Error.stackTraceLimit = limit;
    this.name = 'KdbusError';
    this.errno = errno;
  }

  get code(): string {
    return errnoName(this.errno);
  }
}

/** Shorthand used at every check site: `throw fail('EINVAL', 'pool size must be ...')`. */
export function fail(code: ErrnoName, message: string): KdbusError {
  return new KdbusError(code, message);
}

export function isKdbusError(e: unknown): e is KdbusError {
  return e instanceof KdbusError;
}
