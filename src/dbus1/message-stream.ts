/**
 * The bytes and descriptors of one legacy D-Bus client's stream socket: the SASL lines
 * first, then whole dbus1 messages cut out of the stream by their length, with the
 * descriptors the client passed (SCM_RIGHTS) kept in arrival order for the consumer to
 * pair with the messages that declare them. Outgoing messages go out in order, their
 * descriptors on their first byte; what the socket does not take waits for writability.
 *
 * Reading and writing use recvmsg/sendmsg on headers, iovecs and control buffers made once
 * per stream, into one reusable read buffer: a message costs one system call in and one
 * out, and no copy in the common case (the layouts are src/os/msghdr.ts's).
 *
 * Whatever dbus-daemon answers by disconnecting (a header it cannot size, a message over
 * the limit, descriptors on a connection that did not negotiate them, more descriptors
 * than it keeps) closes the stream here, with the reason.
 */
import * as koffi from 'koffi';
import { FdWatch, pollFailure, UV_READABLE, UV_WRITABLE } from '../os/fd-watch';
import type { HeldAccount } from '../os/held-budget';
import {
  addressOf, CMSG_HEADER, IOVEC_SIZE, MSG_CMSG_CLOEXEC, MSG_CONTROL, MSG_CONTROLLEN, MSG_CTRUNC, MSG_DONTWAIT, MSG_FLAGS,
  MSG_IOV, MSG_IOVLEN, MSG_NOSIGNAL, MSGHDR_SIZE, recvmsg, SCM_RIGHTS, sendmsg, setRights, SOL_SOCKET, writeAddress,
} from '../os/msghdr';
import { closeFd } from '../os/unix-socket';
import { payloadBuffers, POOLED_PAYLOAD_MIN } from '../bus/payload-buffers';
import { DBUS1_PREFIX_SIZE, messageLength } from './message';


const EINTR = 4;
const EAGAIN = 11;
const EPIPE = 32;
const ECONNRESET = 104;
/**
 * SCM_MAX_FD: the most descriptors one sendmsg may carry. A stream read ends after the
 * bytes of one such send, so a control buffer for this many never truncates.
 */
export const MAX_FDS_PER_SEND = 253;
const CONTROL_SIZE = CMSG_HEADER + ((MAX_FDS_PER_SEND * 4 + 7) & ~7);

/**
 * The read buffer: dozens of typical messages per read. Every stream reads into the same
 * one (reads happen one at a time on the main thread, and each is framed and handed on
 * before the next), and keeps a buffer of its own only while it holds part of a message,
 * so an idle client costs no buffer at all. A large one comes from the daemon's reusable
 * buffers and goes back once its message is handed on (the handler's view of it is valid
 * only until it returns).
 */
const READ_BUFFER_BYTES = 16 * 1024;
const shared = Buffer.allocUnsafe(READ_BUFFER_BYTES);
const sharedAddress = Number(koffi.address(shared) as bigint);
/** Below this much free space behind the data, the data moves to the front before a read. */
const MIN_READ_BYTES = 1024;
const EMPTY = Buffer.alloc(0);
const NO_FDS: readonly number[] = [];

export interface MessageStreamHandlers {
  /**
   * Bytes read before startMessages, for the SASL parser. A view of the read buffer, valid
   * until this call returns or calls startMessages: keep a copy of anything needed later.
   */
  auth(bytes: Buffer): void;
  /**
   * One whole message (its length checked by messageLength and against maxMessageBytes,
   * nothing else). A view of the read buffer, valid until this call returns: decode it or
   * copy it before returning, and do not pass it to send().
   */
  message(raw: Buffer): void;
  /** Called exactly once, when the stream closes for whatever reason, after its fds are closed. */
  closed(reason: string): void;
}

export interface MessageStreamLimits {
  /** A message declaring more bytes than this disconnects its sender. */
  maxMessageBytes: number;
  /** Unsent bytes beyond which send() refuses messages. */
  maxOutgoingBytes: number;
  /** Received descriptors not yet taken beyond which the client is disconnected. */
  maxQueuedFds: number;
  /**
   * Where the descriptors not yet taken, and the length of a message not yet whole, are
   * counted with other streams' (held-budget.ts); a read either refuses disconnects the
   * client.
   */
  heldFds?: HeldAccount;
  heldBytes?: HeldAccount;
  /** Where unsent bytes are counted with other streams'; send() refuses what would exceed it. */
  unsentBytes?: HeldAccount;
}

/** Bytes still to write, and the descriptors to send with the first of them. */
interface Outgoing {
  data: Buffer;
  offset: number;
  fds: readonly number[];
}


function closeAll(fds: readonly number[], from = 0, to = fds.length): void {
  for (let i = from; i < to; i++) closeFd(fds[i]!);
}

export class MessageStream {
  private readonly watch: FdWatch;
  private closedFlag = false;
  /**
   * The client can no longer be written to (EPIPE, ECONNRESET, a poll error) but may have
   * left messages in the socket: a client that sends a signal and exits at once expects it
   * delivered. The stream reads what is left, then closes.
   */
  private peerGone = false;
  private messages = false;
  private unixFds = false;

  /** One arena for the fixed structures, so none of them is a small on-heap typed array. */
  private readonly rmsg: Buffer;
  private readonly riov: Buffer;
  private readonly smsg: Buffer;
  private readonly siov: Buffer;
  private readonly rcontrol: Buffer;
  private readonly scontrol: Buffer;

  /** Received, not yet delivered bytes are buf[start, end). */
  private buf: Buffer;
  private bufAddress: number;
  /** buf came from the reusable buffers. */
  private pooled = false;
  private start = 0;
  private end = 0;
  /** Length of the message at `start` once its prefix was read; 0 before. */
  private need = 0;

  /** Received descriptors not yet taken are fdQueue[fdHead...]. */
  private fdQueue: number[] = [];
  private fdHead = 0;

  /** Unsent output is outQueue[outHead...]. */
  private outQueue: (Outgoing | undefined)[] = [];
  private outHead = 0;
  private outBytes = 0;

  /**
   * Takes ownership of `fd`, a connected non-blocking stream socket: it is closed by
   * close(), and here if watching it fails.
   */
  constructor(
    readonly fd: number,
    private readonly handlers: MessageStreamHandlers,
    private readonly limits: MessageStreamLimits,
    /** Who is at the other end, as close reasons name it ("the bus" for a connection the daemon made). */
    private readonly peer = 'the client',
  ) {
    const arena = Buffer.alloc(2 * MSGHDR_SIZE + 2 * IOVEC_SIZE + 2 * CONTROL_SIZE);
    let at = 0;
    const take = (n: number): Buffer => arena.subarray(at, (at += n));
    this.rmsg = take(MSGHDR_SIZE);
    this.smsg = take(MSGHDR_SIZE);
    this.riov = take(IOVEC_SIZE);
    this.siov = take(IOVEC_SIZE);
    this.rcontrol = take(CONTROL_SIZE);
    this.scontrol = take(CONTROL_SIZE);
    writeAddress(this.rmsg, MSG_IOV, addressOf(this.riov));
    this.rmsg.writeUInt32LE(1, MSG_IOVLEN);
    writeAddress(this.rmsg, MSG_CONTROL, addressOf(this.rcontrol));
    writeAddress(this.smsg, MSG_IOV, addressOf(this.siov));
    this.smsg.writeUInt32LE(1, MSG_IOVLEN);
    this.scontrol.writeUInt32LE(SOL_SOCKET, 8);
    this.scontrol.writeUInt32LE(SCM_RIGHTS, 12);
    this.buf = shared;
    this.bufAddress = sharedAddress;
    try {
      this.watch = new FdWatch(fd, (status, events) => this.ready(status, events));
    } catch (e) {
      closeFd(fd);
      throw e;
    }
  }

  get isClosed(): boolean {
    return this.closedFlag;
  }

  /** Bytes accepted by send() or writeRaw() that the socket has not taken yet. */
  get outgoingBytes(): number {
    return this.outBytes;
  }

  /** Received descriptors not yet taken. */
  get queuedFds(): number {
    return this.fdQueue.length - this.fdHead;
  }

  /** Received bytes not yet delivered: the start of a message still arriving. */
  get incomingBytes(): number {
    return this.end - this.start;
  }

  /** Messages accepted by send() that the socket has not taken whole. */
  get outgoingMessages(): number {
    return this.outQueue.length - this.outHead;
  }

  /** Descriptors of those messages not sent yet. */
  get outgoingFds(): number {
    let n = 0;
    for (let i = this.outHead; i < this.outQueue.length; i++) n += this.outQueue[i]?.fds.length ?? 0;
    return n;
  }

  /**
   * Authentication is over (SASL BEGIN): from now on the stream carries messages, the
   * first bytes of which are `rest`, what the SASL parser received after BEGIN. Messages
   * already complete are delivered before this returns. `unixFds` says whether the client
   * negotiated descriptor passing; without it, descriptors it sent or sends close the
   * stream.
   */
  startMessages(rest: Buffer, unixFds: boolean): void {
    if (this.messages) throw new Error('startMessages: the stream already carries messages');
    if (this.closedFlag) return;
    this.messages = true;
    this.unixFds = unixFds;
    if (!unixFds && this.queuedFds > 0) {
      this.close(`${this.peer} sent descriptors without negotiating descriptor passing (NEGOTIATE_UNIX_FD)`);
      return;
    }
    this.start = 0;
    this.end = 0;
    if (rest.length === 0) return;
    if (rest.length > this.buf.length) this.replaceBuffer(rest.length);
    // rest may be a view of the read buffer itself; set() copies overlapping ranges correctly.
    this.buf.set(rest, 0);
    this.end = rest.length;
    this.frame();
  }

  /**
   * The next n received descriptors, in the order they arrived, now the caller's; undefined
   * (taking none) when fewer than n are queued.
   */
  takeFds(n: number): number[] | undefined {
    if (n > this.queuedFds) return undefined;
    const taken = this.fdQueue.slice(this.fdHead, this.fdHead + n);
    this.fdHead += n;
    if (this.fdHead === this.fdQueue.length) {
      this.fdQueue.length = 0;
      this.fdHead = 0;
    }
    this.limits.heldFds?.hold(this.queuedFds);
    return taken;
  }

  /**
   * Writes authentication replies, after anything queued before; like send(), the stream
   * may hold on to `bytes` until written. A client that lets them pile up beyond
   * maxOutgoingBytes is not reading: the stream closes.
   */
  writeRaw(bytes: Buffer): void {
    if (this.closedFlag || bytes.length === 0) return;
    if (this.outBytes > 0 && this.outBytes + bytes.length > this.limits.maxOutgoingBytes) {
      this.close(`${this.peer} does not read its authentication replies (${this.outBytes} bytes unsent)`);
      return;
    }
    this.enqueueOrSend(bytes, NO_FDS);
  }

  /**
   * Queues one message, with `fds` to go out on its first byte, and writes as much of it as
   * the socket takes now. On true the stream owns `fds` (it closes them once sent, or on
   * close); what the socket did not take it keeps a copy of, so `raw` is the caller's again
   * when send returns. A closed stream drops the message, closing `fds`, and still answers true:
   * its peer is gone, not over a limit.
   *
   * False when bytes are already waiting and they plus raw would exceed maxOutgoingBytes:
   * nothing is sent and `fds` stay the caller's (dbus-daemon answers the sender with
   * LimitsExceeded then). A message into an empty queue is always attempted, so a message
   * larger than the limit still reaches a client that reads.
   */
  send(raw: Buffer, fds: readonly number[] = NO_FDS): boolean {
    if (raw.length === 0) throw new RangeError('send: a message has at least its fixed header');
    if (fds.length > MAX_FDS_PER_SEND) throw new RangeError(`send: ${fds.length} descriptors; one sendmsg carries at most ${MAX_FDS_PER_SEND}`);
    if (this.closedFlag || this.peerGone) {
      closeAll(fds);
      return true;
    }
    if (this.outBytes > 0 && this.outBytes + raw.length > this.limits.maxOutgoingBytes) return false;
    const unsent = this.limits.unsentBytes;
    // Judged as if none of it went out: what stays queued cannot be taken back.
    if (unsent && !unsent.fits(raw.length)) return false;
    this.enqueueOrSend(raw, fds);
    unsent?.hold(this.outBytes);
    return true;
  }

  /**
   * Closes the socket and every descriptor the stream holds (received and not taken,
   * queued to send), drops unsent output, then calls the closed handler. Later calls do
   * nothing.
   */
  close(reason = 'closed by the daemon'): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    this.watch.close();
    closeFd(this.fd);
    closeAll(this.fdQueue, this.fdHead);
    this.fdQueue = [];
    this.fdHead = 0;
    this.limits.heldFds?.hold(0);
    this.limits.heldBytes?.hold(0);
    this.dropOutput();
    this.limits.unsentBytes?.hold(0);
    // Not given back: a handler that closes the stream may still be reading its message.
    this.buf = EMPTY;
    this.pooled = false;
    this.start = this.end = this.need = 0;
    this.handlers.closed(reason);
  }

  private dropOutput(): void {
    for (let i = this.outHead; i < this.outQueue.length; i++) closeAll(this.outQueue[i]!.fds);
    this.outQueue = [];
    this.outHead = 0;
    this.outBytes = 0;
  }

  private ready(status: number, events: number): void {
    if (status < 0) {
      this.finish(pollFailure(status));
      return;
    }
    if ((events & UV_WRITABLE) !== 0) {
      this.flush();
      this.limits.unsentBytes?.hold(this.outBytes);
    }
    // One read per readiness: the watch is level-triggered, and other clients get their turn.
    if ((events & UV_READABLE) !== 0 && !this.closedFlag) this.readOnce();
  }

  /** Reads what the gone client left in the socket, then closes. */
  private finish(reason: string): void {
    this.peerGone = true;
    while (!this.closedFlag && this.readOnce()) {
      // Each read hands its messages on before the next.
    }
    this.close(reason);
  }

  /** One recvmsg and what it brought handed on; false when nothing more can be read. */
  private readOnce(): boolean {
    if (this.messages) this.makeRoom();
    else this.start = this.end = 0;
    const free = this.buf.length - this.end;
    writeAddress(this.riov, 0, this.bufAddress + this.end);
    this.riov.writeUInt32LE(free, 8);
    this.rmsg.writeUInt32LE(CONTROL_SIZE, MSG_CONTROLLEN);
    let n: number;
    for (;;) {
      n = recvmsg(this.fd, this.rmsg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n >= 0) break;
      const e = koffi.errno();
      if (e === EAGAIN) return false;
      if (e === ECONNRESET) {
        if (!this.peerGone) this.close(`${this.peer} reset the connection`);
        return false;
      }
      if (e !== EINTR) {
        this.close(`recvmsg failed: errno ${e}`);
        return false;
      }
    }
    const controlLen = this.rmsg.readUInt32LE(MSG_CONTROLLEN);
    if (controlLen > 0 && !this.acceptFds(controlLen)) return false;
    if (n === 0) {
      if (!this.peerGone) this.close(`${this.peer} closed the connection`);
      return false;
    }
    if (!this.messages) {
      this.handlers.auth(this.buf.subarray(0, n));
      return !this.closedFlag;
    }
    this.end += n;
    this.frame();
    return !this.closedFlag;
  }

  /** Queues the descriptors of the last read; false when that closed the stream. */
  private acceptFds(controlLen: number): boolean {
    const c = this.rcontrol;
    const before = this.fdQueue.length;
    let p = 0;
    while (p + CMSG_HEADER <= controlLen) {
      const len = c.readUInt32LE(p);
      if (len < CMSG_HEADER) break;
      if (c.readInt32LE(p + 8) === SOL_SOCKET && c.readInt32LE(p + 12) === SCM_RIGHTS) {
        for (let q = p + CMSG_HEADER; q + 4 <= p + len; q += 4) this.fdQueue.push(c.readInt32LE(q));
      }
      p += (len + 7) & ~7;
    }
    // Queued first, so that close() closes them with the rest.
    if ((this.rmsg.readInt32LE(MSG_FLAGS) & MSG_CTRUNC) !== 0) {
      this.close(`descriptors ${this.peer} sent were lost (control data truncated); messages and descriptors no longer match`);
      return false;
    }
    if (this.fdQueue.length === before) return true;
    if (this.messages && !this.unixFds) {
      this.close(`${this.peer} sent descriptors without negotiating descriptor passing (NEGOTIATE_UNIX_FD)`);
      return false;
    }
    if (this.queuedFds > this.limits.maxQueuedFds) {
      this.close(`${this.peer} sent more descriptors than the ${this.limits.maxQueuedFds} its messages may hold`);
      return false;
    }
    const held = this.limits.heldFds;
    if (held && !held.hold(this.queuedFds)) {
      this.close(`${this.peer} sent descriptors the daemon may not hold: ${held.refusal}`);
      return false;
    }
    return true;
  }

  /** Delivers every whole message in the buffer, in order. */
  private frame(): void {
    while (!this.closedFlag) {
      const available = this.end - this.start;
      if (this.need === 0) {
        if (available < DBUS1_PREFIX_SIZE) break;
        let length: number;
        try {
          // messageLength reads only the first 16 bytes: at the front no view is needed.
          length = messageLength(this.start === 0 ? this.buf : this.buf.subarray(this.start, this.start + DBUS1_PREFIX_SIZE));
        } catch (e) {
          this.close(`invalid message header: ${(e as Error).message}`);
          return;
        }
        if (length > this.limits.maxMessageBytes) {
          this.close(`message of ${length} bytes exceeds the ${this.limits.maxMessageBytes}-byte limit`);
          return;
        }
        this.need = length;
      }
      if (available < this.need) {
        const held = this.limits.heldBytes;
        if (held && !held.hold(this.need)) this.close(`${this.peer} announced a message the daemon may not hold: ${held.refusal}`);
        break;
      }
      const raw = this.buf.subarray(this.start, this.start + this.need);
      this.start += this.need;
      this.need = 0;
      this.limits.heldBytes?.hold(0);
      this.handlers.message(raw);
    }
    this.settle();
  }

  /** Between reads a stream holds only its unfinished message, in a buffer of its own. */
  private settle(): void {
    if (this.closedFlag) return;
    if (this.start === this.end) {
      this.start = this.end = 0;
      this.useShared();
      return;
    }
    if (this.buf === shared) this.replaceBuffer(Math.max(this.need, this.end - this.start, DBUS1_PREFIX_SIZE));
  }

  /**
   * Free space for the next read: the partial message moves to the front when little room
   * is left behind it or it would not fit where it is; the buffer grows to hold a message
   * bigger than itself, and shrinks back once such a message is gone.
   */
  private makeRoom(): void {
    const pending = this.end - this.start;
    if (pending === 0) {
      this.start = this.end = 0;
      this.useShared();
      return;
    }
    // A private buffer holding a partial message reads at least as much as the shared one.
    const want = Math.max(this.need, DBUS1_PREFIX_SIZE, this.buf === shared ? 0 : READ_BUFFER_BYTES);
    if (want > this.buf.length) {
      this.replaceBuffer(want);
      return;
    }
    if (this.start > 0 && (this.start + want > this.buf.length || this.buf.length - this.end < MIN_READ_BYTES)) {
      this.buf.copyWithin(0, this.start, this.end);
      this.start = 0;
      this.end = pending;
    }
  }

  /** A new read buffer of `size` bytes holding the pending bytes at its front. */
  private replaceBuffer(size: number): void {
    const pooled = size >= POOLED_PAYLOAD_MIN;
    const next = pooled ? payloadBuffers.take(size) : Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, this.start, this.end);
    this.end -= this.start;
    this.start = 0;
    this.giveBack();
    this.buf = next;
    this.bufAddress = addressOf(next);
    this.pooled = pooled;
  }

  /** Back to the shared read buffer, with nothing held. */
  private useShared(): void {
    if (this.buf === shared) return;
    this.giveBack();
    this.buf = shared;
    this.bufAddress = sharedAddress;
  }

  private giveBack(): void {
    if (this.pooled) payloadBuffers.give(this.buf);
    this.pooled = false;
  }

  private enqueueOrSend(data: Buffer, fds: readonly number[]): void {
    if (this.outBytes > 0) {
      this.outQueue.push({ data: Buffer.from(data), offset: 0, fds });
      this.outBytes += data.length;
      return;
    }
    const n = this.sendOnce(data, 0, fds);
    // Unless the socket was full, the descriptors went out with the first byte or the stream closed.
    if (n !== -1) closeAll(fds);
    if (n === data.length || n === -2) return;
    const sent = Math.max(n, 0);
    this.outQueue.push({ data: Buffer.from(data.subarray(sent)), offset: 0, fds: n === -1 ? fds : NO_FDS });
    this.outBytes = data.length - sent;
    this.setWatch(UV_READABLE | UV_WRITABLE);
  }

  /** Writes queued output until the socket is full or the queue empty. */
  private flush(): void {
    const q = this.outQueue;
    while (this.outHead < q.length) {
      const o = q[this.outHead]!;
      const n = this.sendOnce(o.data, o.offset, o.fds);
      if (n < 0) return;
      if (o.fds.length > 0) {
        closeAll(o.fds);
        o.fds = NO_FDS;
      }
      o.offset += n;
      this.outBytes -= n;
      // A short write means the socket is full: the next sendmsg would only say EAGAIN.
      if (o.offset < o.data.length) return;
      q[this.outHead++] = undefined;
    }
    q.length = 0;
    this.outHead = 0;
    this.setWatch(UV_READABLE);
  }

  private setWatch(events: number): void {
    try {
      this.watch.watch(events);
    } catch (e) {
      this.close((e as Error).message);
    }
  }

  /**
   * One sendmsg of data[offset...] with `fds` on its first byte: the bytes written, -1 when
   * the socket is full (nothing went out), -2 when the stream closed over an error.
   */
  private sendOnce(data: Buffer, offset: number, fds: readonly number[]): number {
    // Most messages go out in one sendmsg: their address is not worth remembering (addressOf
    // would keep a weak entry per message for the collector to clear).
    writeAddress(this.siov, 0, Number(koffi.address(data) as bigint) + offset);
    this.siov.writeUInt32LE(data.length - offset, 8);
    setRights(this.smsg, this.scontrol, fds);
    for (;;) {
      const n = sendmsg(this.fd, this.smsg, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n >= 0) return n;
      const e = koffi.errno();
      if (e === EAGAIN) return -1;
      if (e === EINTR) continue;
      if (e === EPIPE || e === ECONNRESET) {
        // This may run inside the handling of one of the client's own messages: read the
        // rest of them on a later turn, then close.
        if (!this.peerGone) {
          this.peerGone = true;
          this.dropOutput();
          setImmediate(() => this.finish(`${this.peer} went away (sendmsg: ${e === EPIPE ? 'EPIPE' : 'ECONNRESET'})`));
        }
        return -2;
      }
      this.close(`sendmsg failed: errno ${e}`);
      return -2;
    }
  }
}
