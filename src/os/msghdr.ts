/**
 * recvmsg and sendmsg for the sockets the daemon reads and writes itself (clients of the
 * socket transport, legacy D-Bus clients), with struct msghdr, iovec and cmsghdr laid out by
 * hand for 64-bit Linux. glibc and musl agree there: musl declares msg_iovlen and
 * msg_controllen as 32-bit fields followed by padding, which read the same for the small
 * values used here.
 *
 * The kernel reaches the iovec, the control buffer and the data through addresses written
 * into the header, which the garbage collector does not see: each of those Buffers must stay
 * reachable (a field of the socket's object, or an argument of a call still running) until
 * the system call returns. A Buffer held by a local variable alone may be collected, and its
 * memory reused, before the call: the kernel then reads or writes whatever is there.
 */
import * as koffi from 'koffi';

const libc = koffi.load(null);
export const recvmsg = libc.func('intptr_t recvmsg(int fd, void *msg, int flags)') as (fd: number, msg: Buffer, flags: number) => number;
export const sendmsg = libc.func('intptr_t sendmsg(int fd, void *msg, int flags)') as (fd: number, msg: Buffer, flags: number) => number;

export const SOL_SOCKET = 1;
export const SCM_RIGHTS = 1;
export const SCM_CREDENTIALS = 2;
export const MSG_CTRUNC = 0x8;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_CMSG_CLOEXEC = 0x40000000;

export const MSGHDR_SIZE = 56;
export const IOVEC_SIZE = 16;
export const CMSG_HEADER = 16;
/** Offsets in struct msghdr. */
export const MSG_IOV = 16;
export const MSG_IOVLEN = 24;
export const MSG_CONTROL = 32;
export const MSG_CONTROLLEN = 40;
export const MSG_FLAGS = 48;

const TWO_32 = 2 ** 32;

export function writeAddress(b: Buffer, at: number, address: number): void {
  b.writeUInt32LE(address % TWO_32, at);
  b.writeUInt32LE(Math.floor(address / TWO_32), at + 4);
}

/** Buffers live outside the V8 heap and never move: their addresses are taken once. */
const addresses = new WeakMap<Buffer, number>();
export function addressOf(b: Buffer): number {
  let a = addresses.get(b);
  if (a === undefined) {
    a = Number(koffi.address(b) as bigint);
    addresses.set(b, a);
  }
  return a;
}

/** A control buffer for sending up to `maxFds` descriptors (see setRights). */
export function rightsControl(maxFds: number): Buffer {
  const c = Buffer.alloc(CMSG_HEADER + ((4 * maxFds + 7) & ~7));
  c.writeInt32LE(SOL_SOCKET, 8);
  c.writeInt32LE(SCM_RIGHTS, 12);
  return c;
}

/**
 * Makes `msg` carry `fds` as SCM_RIGHTS in `control` (from rightsControl, with room for
 * them), or no control data at all.
 */
export function setRights(msg: Buffer, control: Buffer, fds: readonly number[]): void {
  if (fds.length === 0) {
    writeAddress(msg, MSG_CONTROL, 0);
    msg.writeUInt32LE(0, MSG_CONTROLLEN);
    return;
  }
  const len = CMSG_HEADER + 4 * fds.length;
  control.writeUInt32LE(len, 0);
  for (let i = 0; i < fds.length; i++) control.writeInt32LE(fds[i]!, CMSG_HEADER + 4 * i);
  writeAddress(msg, MSG_CONTROL, addressOf(control));
  msg.writeUInt32LE((len + 7) & ~7, MSG_CONTROLLEN);
}
