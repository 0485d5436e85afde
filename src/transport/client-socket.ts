/**
 * The daemon's end of one client's stream socket, read and written with recvmsg/sendmsg
 * directly instead of through Node streams: each read brings the kernel's account of who
 * wrote those bytes (SCM_CREDENTIALS, with SO_PASSCRED set) and the descriptors sent with
 * them (SCM_RIGHTS), and each answer goes out in the same tick as the request that caused
 * it. The message headers, iovec and control buffer are made once per socket: a request
 * costs one system call to read it and one to answer it, and no allocation here.
 *
 * The layouts of struct msghdr, iovec and cmsghdr are src/os/msghdr.ts's.
 */
import * as koffi from 'koffi';
import {
  addressOf, CMSG_HEADER, MSG_CMSG_CLOEXEC, MSG_CONTROL, MSG_CONTROLLEN, MSG_CTRUNC, MSG_DONTWAIT, MSG_FLAGS, MSG_IOV,
  MSG_IOVLEN, MSG_NOSIGNAL, recvmsg, rightsControl, SCM_CREDENTIALS, SCM_RIGHTS, sendmsg, setRights, SOL_SOCKET, writeAddress,
} from '../os/msghdr';
import { SyscallError } from '../os/unix-socket';


const EAGAIN = 11;
const EINTR = 4;
/** Descriptors one read can bring: the kernel ends a read after the bytes that carried some. */
export const MAX_FDS_PER_READ = 64;
const CONTROL_SIZE = CMSG_HEADER + 16 + CMSG_HEADER + MAX_FDS_PER_READ * 4;

/** Offsets in struct msghdr. */


export class ClientSocket {
  /** Sender of the bytes of the last read (pid 0 when the kernel attached none). */
  pid = 0;
  uid = 0;
  gid = 0;
  /** Descriptors that came with the last read, in order (the array is reused). */
  readonly fds: number[] = [];
  /** The last read came with more descriptors than fit; the kernel closed the rest. */
  truncated = false;

  private readonly rmsg = Buffer.alloc(56);
  private readonly riov = Buffer.alloc(16);
  private readonly control = Buffer.alloc(CONTROL_SIZE);
  private readonly smsg = Buffer.alloc(56);
  private readonly siov = Buffer.alloc(16);
  private scontrol = rightsControl(MAX_FDS_PER_READ);

  constructor(readonly fd: number) {
    writeAddress(this.rmsg, MSG_IOV, addressOf(this.riov));
    this.rmsg.writeUInt32LE(1, MSG_IOVLEN);
    writeAddress(this.rmsg, MSG_CONTROL, addressOf(this.control));
    writeAddress(this.smsg, MSG_IOV, addressOf(this.siov));
    this.smsg.writeUInt32LE(1, MSG_IOVLEN);
  }

  /**
   * One non-blocking read into `into[offset, offset + length)`: the byte count, 0 at end of
   * stream, -1 when nothing is queued. Sets pid/uid/gid and fds for the bytes read.
   */
  recv(into: Buffer, offset: number, length: number): number {
    writeAddress(this.riov, 0, addressOf(into) + offset);
    this.riov.writeUInt32LE(length, 8);
    this.rmsg.writeUInt32LE(CONTROL_SIZE, MSG_CONTROLLEN);
    let n: number;
    for (;;) {
      n = recvmsg(this.fd, this.rmsg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n >= 0) break;
      const e = koffi.errno();
      if (e === EAGAIN) return -1;
      if (e !== EINTR) throw new SyscallError('recvmsg', e);
    }
    this.fds.length = 0;
    this.pid = 0;
    this.uid = 0;
    this.gid = 0;
    const control = this.control;
    const controlLen = this.rmsg.readUInt32LE(MSG_CONTROLLEN);
    this.truncated = (this.rmsg.readInt32LE(MSG_FLAGS) & MSG_CTRUNC) !== 0;
    let p = 0;
    while (p + CMSG_HEADER <= controlLen) {
      const len = control.readUInt32LE(p);
      if (len < CMSG_HEADER) break;
      if (control.readInt32LE(p + 8) === SOL_SOCKET) {
        const type = control.readInt32LE(p + 12);
        if (type === SCM_RIGHTS) {
          for (let q = p + CMSG_HEADER; q + 4 <= p + len; q += 4) this.fds.push(control.readInt32LE(q));
        } else if (type === SCM_CREDENTIALS && len >= CMSG_HEADER + 12) {
          this.pid = control.readInt32LE(p + CMSG_HEADER);
          this.uid = control.readUInt32LE(p + CMSG_HEADER + 4);
          this.gid = control.readUInt32LE(p + CMSG_HEADER + 8);
        }
      }
      p += (len + 7) & ~7;
    }
    return n;
  }

  /**
   * One non-blocking write of `data[offset, offset + length)`, with `fds` as SCM_RIGHTS on
   * its first byte: the bytes written, or -1 when the socket is full (then nothing, and no
   * descriptor, went out). A peer that went away (EPIPE, ECONNRESET) throws.
   */
  send(data: Buffer, offset: number, length: number, fds: readonly number[]): number {
    writeAddress(this.siov, 0, addressOf(data) + offset);
    this.siov.writeUInt32LE(length, 8);
    if (CMSG_HEADER + 4 * fds.length > this.scontrol.length) this.scontrol = rightsControl(fds.length);
    setRights(this.smsg, this.scontrol, fds);
    for (;;) {
      const n = sendmsg(this.fd, this.smsg, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n >= 0) return n;
      const e = koffi.errno();
      if (e === EAGAIN) return -1;
      if (e !== EINTR) throw new SyscallError('sendmsg', e);
    }
  }
}
