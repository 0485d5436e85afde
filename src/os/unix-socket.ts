/**
 * Unix-socket operations Node does not offer: socket pairs outside the event loop, and
 * sendmsg/recvmsg with ancillary data (SCM_RIGHTS to pass descriptors, SCM_CREDENTIALS for
 * kernel-verified sender identity), plus SO_PEERCRED. The socket transport needs them to
 * hand pools and files to clients and to know, per request, which process is asking.
 *
 * struct msghdr and struct cmsghdr are laid out by hand for 64-bit Linux. glibc and musl
 * agree there: musl declares msg_iovlen and msg_controllen as 32-bit fields followed by
 * padding, which reads the same as glibc's 64-bit fields for the small values used here.
 */
import * as koffi from 'koffi';

const libc = koffi.load(null);

const socketpairFn = libc.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)');
const sendmsgFn = libc.func('intptr_t sendmsg(int fd, void *msg, int flags)');
const recvmsgFn = libc.func('intptr_t recvmsg(int fd, void *msg, int flags)');
const setsockoptFn = libc.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)');
const getsockoptFn = libc.func('int getsockopt(int fd, int level, int name, void *value, _Inout_ uint32_t *len)');
const closeFn = libc.func('int close(int fd)');

export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_SEQPACKET = 5;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const SCM_CREDENTIALS = 2;
const SO_PASSCRED = 16;
const SO_PEERCRED = 17;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const CMSG_HEADER = 16;

/** Fds a single message may carry: 16 fds + 16 memfds of a kdbus message, plus a pool. */
export const MAX_FDS_PER_MESSAGE = 64;

export class SyscallError extends Error {
  constructor(readonly call: string, readonly errno: number) {
    super(`${call} failed: errno ${errno}`);
    this.name = 'SyscallError';
  }
}

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

export function socketpair(type: number): [number, number] {
  const sv = [0, 0];
  if ((socketpairFn(AF_UNIX, type, 0, sv) as number) < 0) throw new SyscallError('socketpair', koffi.errno());
  return [sv[0]!, sv[1]!];
}

export function closeFd(fd: number): void {
  closeFn(fd);
}

export function setPassCred(fd: number): void {
  const one = Buffer.alloc(4);
  one.writeInt32LE(1, 0);
  if ((setsockoptFn(fd, SOL_SOCKET, SO_PASSCRED, one, 4) as number) < 0) throw new SyscallError('setsockopt(SO_PASSCRED)', koffi.errno());
}

/** The credentials the kernel recorded when the peer connected (or created the pair). */
export function peerCred(fd: number): PeerCred {
  const b = Buffer.alloc(12);
  const len = [12];
  if ((getsockoptFn(fd, SOL_SOCKET, SO_PEERCRED, b, len) as number) < 0) throw new SyscallError('getsockopt(SO_PEERCRED)', koffi.errno());
  return { pid: b.readInt32LE(0), uid: b.readUInt32LE(4), gid: b.readUInt32LE(8) };
}

function msghdr(iov: Buffer, control: Buffer | undefined): Buffer {
  const m = Buffer.alloc(56);
  m.writeBigUInt64LE(koffi.address(iov) as bigint, 16);
  m.writeBigUInt64LE(1n, 24);
  if (control) {
    m.writeBigUInt64LE(koffi.address(control) as bigint, 32);
    m.writeBigUInt64LE(BigInt(control.length), 40);
  }
  return m;
}

function iovec(data: Buffer): Buffer {
  const v = Buffer.alloc(16);
  v.writeBigUInt64LE(koffi.address(data) as bigint, 0);
  v.writeBigUInt64LE(BigInt(data.length), 8);
  return v;
}

/**
 * One sendmsg, non-blocking, with the descriptors as SCM_RIGHTS. Returns the bytes sent,
 * or -1 when the socket buffer is full (EAGAIN); other failures throw.
 */
export function sendWithFds(fd: number, data: Buffer, fds: readonly number[]): number {
  let control: Buffer | undefined;
  if (fds.length > 0) {
    control = Buffer.alloc(CMSG_HEADER + ((fds.length * 4 + 7) & ~7));
    control.writeBigUInt64LE(BigInt(CMSG_HEADER + fds.length * 4), 0);
    control.writeInt32LE(SOL_SOCKET, 8);
    control.writeInt32LE(SCM_RIGHTS, 12);
    fds.forEach((f, i) => control!.writeInt32LE(f, CMSG_HEADER + i * 4));
  }
  const iov = iovec(data);
  const m = msghdr(iov, control);
  const n = sendmsgFn(fd, m, MSG_DONTWAIT | MSG_NOSIGNAL) as number;
  if (n < 0) {
    const e = koffi.errno();
    if (e === 11) return -1;
    throw new SyscallError('sendmsg', e);
  }
  return n;
}

export interface Received {
  data: Buffer;
  fds: number[];
  /** Kernel-verified sender, when SO_PASSCRED is set on the receiving socket. */
  cred: PeerCred | undefined;
  /** The sender offered more descriptors than fit; the kernel closed the rest. */
  truncated: boolean;
}

/** One non-blocking recvmsg; undefined when nothing is queued (EAGAIN). */
export function recvWithFds(fd: number, maxData: number): Received | undefined {
  const data = Buffer.alloc(maxData);
  const control = Buffer.alloc(CMSG_HEADER + MAX_FDS_PER_MESSAGE * 4 + CMSG_HEADER + 16);
  const iov = iovec(data);
  const m = msghdr(iov, control);
  const n = recvmsgFn(fd, m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) as number;
  if (n < 0) {
    const e = koffi.errno();
    if (e === 11) return undefined;
    throw new SyscallError('recvmsg', e);
  }
  const controlLen = Number(m.readBigUInt64LE(40));
  const flags = m.readInt32LE(48);
  const fds: number[] = [];
  let cred: PeerCred | undefined;
  let p = 0;
  while (p + CMSG_HEADER <= controlLen) {
    const len = Number(control.readBigUInt64LE(p));
    if (len < CMSG_HEADER) break;
    const level = control.readInt32LE(p + 8);
    const type = control.readInt32LE(p + 12);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      for (let q = p + CMSG_HEADER; q + 4 <= p + len; q += 4) fds.push(control.readInt32LE(q));
    } else if (level === SOL_SOCKET && type === SCM_CREDENTIALS && len >= CMSG_HEADER + 12) {
      cred = { pid: control.readInt32LE(p + CMSG_HEADER), uid: control.readUInt32LE(p + CMSG_HEADER + 4), gid: control.readUInt32LE(p + CMSG_HEADER + 8) };
    }
    p += (len + 7) & ~7;
  }
  return { data: data.subarray(0, n), fds, cred, truncated: (flags & 0x8) !== 0 };
}
