/**
 * Unix-socket operations Node does not offer: socket pairs outside the event loop,
 * SO_PASSCRED and SO_PEERCRED. The socket transport needs them to know, per request, which
 * process is asking. sendmsg and recvmsg with ancillary data are src/os/msghdr.ts's.
 */
import * as koffi from 'koffi';

const libc = koffi.load(null);

const socketpairFn = libc.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)');
const setsockoptFn = libc.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)');
const getsockoptFn = libc.func('int getsockopt(int fd, int level, int name, void *value, _Inout_ uint32_t *len)');
const closeFn = libc.func('int close(int fd)');

export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_SEQPACKET = 5;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_PASSCRED = 16;
const SO_PEERCRED = 17;

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

/** A socket-level option whose value is an int (SO_TYPE, SO_DOMAIN, SO_ACCEPTCONN...). */
export function intSocketOption(fd: number, name: number): number {
  const v = Buffer.alloc(4);
  if ((getsockoptFn(fd, SOL_SOCKET, name, v, [4]) as number) < 0) throw new SyscallError(`getsockopt(${name})`, koffi.errno());
  return v.readInt32LE(0);
}

/** The credentials the kernel recorded when the peer connected (or created the pair). */
export function peerCred(fd: number): PeerCred {
  const b = Buffer.alloc(12);
  const len = [12];
  if ((getsockoptFn(fd, SOL_SOCKET, SO_PEERCRED, b, len) as number) < 0) throw new SyscallError('getsockopt(SO_PEERCRED)', koffi.errno());
  return { pid: b.readInt32LE(0), uid: b.readUInt32LE(4), gid: b.readUInt32LE(8) };
}
