/**
 * A protocol-level client of the socket transport (docs/socket-protocol.md), written from
 * the contract rather than from the shim, so the daemon side is tested on its own. It uses
 * a raw socket (for SCM_RIGHTS) and polls asynchronously, because the daemon under test
 * runs in the same process.
 */
import * as koffi from 'koffi';
import { encodeFrame, encodeSegments, FrameType, type Segment } from '../../src/transport/frames';
import { closeFd, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, AF_UNIX } from '../../src/os/unix-socket';
import { recvWithFds, sendWithFds } from './fd-socket';

const libc = koffi.load(null);
const socketFn = libc.func('int socket(int domain, int type, int protocol)');
const connectFn = libc.func('int connect(int fd, const void *addr, uint32_t len)');

export interface Result {
  errno: number;
  writes: Segment[];
  fds: number[];
  pool: number | undefined;
}

/** What a HEAD frame said: RECVs the daemon had taken, the slice a plain RECV takes next, whether it is alone. */
export interface Head {
  seq: bigint;
  offset: bigint;
  size: bigint;
  last: boolean;
}

/** OPEN's payload: flags, the opening thread, the node's path below the root, features. */
export function openPayload(rel: string, flags = 2, features = 0): Buffer {
  const path = Buffer.from(rel, 'latin1');
  const p = Buffer.alloc(16);
  p.writeUInt32LE(flags, 0);
  p.writeUInt32LE(process.pid, 4);
  p.writeUInt32LE(path.length, 8);
  p.writeUInt32LE(features, 12);
  return Buffer.concat([p, path]);
}

/** IOCTL's payload: the command, the descriptor numbers it names, reserved numbers, prefetched memory. */
export function ioctlPayload(cmd: number, arg: bigint, segments: Segment[], fdNumbers: readonly number[] = [], reserved: readonly number[] = []): Buffer {
  const head = Buffer.alloc(32);
  head.writeUInt32LE(cmd, 0);
  head.writeUInt32LE(process.pid, 4);
  head.writeBigUInt64LE(arg, 8);
  head.writeUInt32LE(segments.length, 16);
  head.writeUInt32LE(fdNumbers.length, 20);
  head.writeUInt32LE(reserved.length, 24);
  const lists = Buffer.alloc(((fdNumbers.length + reserved.length) * 4 + 7) & ~7);
  fdNumbers.forEach((n, i) => lists.writeInt32LE(n, i * 4));
  reserved.forEach((r, i) => lists.writeInt32LE(r, (fdNumbers.length + i) * 4));
  return Buffer.concat([head, lists, encodeSegments(segments)]);
}

export class ProtocolClient {
  private buf = Buffer.alloc(0);
  private seq = 1n;
  /** The flags word of the last RESULT. */
  lastFlags = 0;
  /** Unsolicited frames seen while waiting (WAKE, HEAD, HUP). */
  readonly events: number[] = [];
  /** The HEAD frames among them, in order. */
  readonly heads: Head[] = [];
  /** Answers the daemon's FETCH requests; by default everything is unreadable. */
  memory: (address: bigint, length: number) => Buffer | undefined = () => undefined;

  private constructor(readonly fd: number) {}

  static connect(path: string): ProtocolClient {
    const fd = socketFn(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) as number;
    const addr = Buffer.alloc(110);
    addr.writeUInt16LE(AF_UNIX, 0);
    addr.write(path, 2);
    if ((connectFn(fd, addr, 110) as number) < 0) throw new Error(`connect ${path}: errno ${koffi.errno()}`);
    return new ProtocolClient(fd);
  }

  private async readFrame(): Promise<{ type: number; seq: bigint; payload: Buffer; fds: number[] }> {
    const fds: number[] = [];
    for (let spins = 0; ; spins++) {
      if (this.buf.length >= 16) {
        const len = this.buf.readUInt32LE(0);
        if (this.buf.length >= len) {
          const f = this.buf.subarray(0, len);
          this.buf = this.buf.subarray(len);
          return { type: f.readUInt32LE(4), seq: f.readBigUInt64LE(8), payload: Buffer.from(f.subarray(16)), fds };
        }
      }
      const r = recvWithFds(this.fd, 1 << 20);
      if (r) {
        if (r.data.length === 0 && r.fds.length === 0) throw new Error('daemon closed the connection');
        this.buf = Buffer.concat([this.buf, r.data]);
        fds.push(...r.fds);
        continue;
      }
      if (spins > 200000) throw new Error('no answer from the daemon');
      await new Promise((res) => setImmediate(res));
    }
  }

  /** Sends a frame, with fds on its first bytes. */
  private send(type: FrameType, seq: bigint, payload: Buffer, fds: number[] = []): void {
    const frame = encodeFrame(type, seq, payload);
    let off = 0;
    while (off < frame.length) {
      const n = sendWithFds(this.fd, frame.subarray(off), off === 0 ? fds : []);
      if (n < 0) throw new Error('socket full');
      off += n;
    }
  }

  /** Reads frames until the RESULT of `seq`, answering FETCHes and noting events. */
  async result(seq: bigint): Promise<Result> {
    for (;;) {
      const f = await this.readFrame();
      if (this.isEvent(f)) continue;
      if (f.type === FrameType.FETCH) {
        const address = f.payload.readBigUInt64LE(0);
        const length = f.payload.readUInt32LE(8);
        const data = this.memory(address, length);
        const p = Buffer.alloc(8);
        p.writeInt32LE(data ? 0 : 14, 0);
        p.writeUInt32LE(data ? data.length : 0, 4);
        this.send(FrameType.MEM, f.seq, Buffer.concat([p, data ?? Buffer.alloc(0)]));
        continue;
      }
      if (f.type !== FrameType.RESULT || f.seq !== seq) throw new Error(`unexpected frame ${f.type} seq ${f.seq}`);
      const p = f.payload;
      const nWrites = p.readUInt32LE(4);
      const flags = p.readUInt32LE(12);
      this.lastFlags = flags;
      const writes: Segment[] = [];
      let q = 16;
      for (let i = 0; i < nWrites; i++) {
        const address = p.readBigUInt64LE(q);
        const len = p.readUInt32LE(q + 8);
        writes.push({ address, data: p.subarray(q + 16, q + 16 + len) });
        q += 16 + ((len + 7) & ~7);
      }
      const fds = [...f.fds];
      const pool = flags & 1 ? fds.shift() : undefined;
      return { errno: p.readInt32LE(0), writes, fds, pool };
    }
  }

  /** Notes an unsolicited frame; false for any other. */
  private isEvent(f: { type: number; seq: bigint; payload: Buffer }): boolean {
    if (f.type !== FrameType.WAKE && f.type !== FrameType.HUP && f.type !== FrameType.HEAD) return false;
    this.events.push(f.type);
    if (f.type === FrameType.HEAD) {
      const p = f.payload;
      this.heads.push({ seq: f.seq, offset: p.readBigUInt64LE(0), size: p.readBigUInt64LE(8), last: (p.readBigUInt64LE(16) & 1n) === 1n });
    }
    return true;
  }

  /** OPEN; `features` is the word the shim sets (bit 0: it takes HEAD frames). */
  async open(rel: string, flags = 2, features = 0): Promise<Result> {
    const seq = this.seq++;
    this.send(FrameType.OPEN, seq, openPayload(rel, flags, features));
    return this.result(seq);
  }

  /** One ioctl with the given prefetched segments and descriptors. */
  async ioctl(cmd: number, arg: bigint, segments: Segment[], fds: Array<{ number: number; fd: number }> = [], reserved: number[] = []): Promise<Result> {
    const seq = this.seq++;
    this.sendIoctl(seq, cmd, arg, segments, fds, reserved);
    return this.result(seq);
  }

  /**
   * Writes IOCTL frames of `cmd` (no memory, no descriptors) back to back without reading
   * any answer, for as long as the daemon takes them, up to `max`; returns the seqs that
   * went out. The daemon gets a few loop turns to read before the socket counts as full. A
   * frame the socket took only in part is finished, reading (and keeping) answers meanwhile.
   */
  async pipeline(cmd: number, max: number): Promise<bigint[]> {
    const seqs: bigint[] = [];
    let idleTurns = 0;
    while (seqs.length < max && idleTurns < 50) {
      const seq = this.seq++;
      const frame = encodeFrame(FrameType.IOCTL, seq, ioctlPayload(cmd, 0n, []));
      let off = sendWithFds(this.fd, frame, []);
      if (off < 0) {
        this.seq--;
        idleTurns++;
        await new Promise((res) => setImmediate(res));
        continue;
      }
      idleTurns = 0;
      seqs.push(seq);
      while (off < frame.length) {
        const n = sendWithFds(this.fd, frame.subarray(off), []);
        if (n > 0) {
          off += n;
          continue;
        }
        const r = recvWithFds(this.fd, 1 << 16);
        if (r) this.buf = Buffer.concat([this.buf, r.data]);
        await new Promise((res) => setImmediate(res));
      }
    }
    return seqs;
  }

  /** An ioctl whose answer nobody waits for here; returns its seq. */
  ioctlNoWait(cmd: number, arg: bigint, segments: Segment[]): bigint {
    const seq = this.seq++;
    this.sendIoctl(seq, cmd, arg, segments, [], []);
    return seq;
  }

  /** The next frame's type and seq, whatever it is (FETCHes are not answered). */
  async nextFrame(): Promise<{ type: number; seq: bigint }> {
    const f = await this.readFrame();
    return { type: f.type, seq: f.seq };
  }

  /** Answers the FETCH of `seq` as memory the client cannot read (EFAULT). */
  refuseFetch(seq: bigint): void {
    const p = Buffer.alloc(8);
    p.writeInt32LE(14, 0);
    this.send(FrameType.MEM, seq, p);
  }

  /** An ioctl with seq 0, which wants no RESULT. */
  ioctlUnanswered(cmd: number, arg: bigint, segments: Segment[]): void {
    this.sendIoctl(0n, cmd, arg, segments, [], []);
  }

  private sendIoctl(seq: bigint, cmd: number, arg: bigint, segments: Segment[], fds: Array<{ number: number; fd: number }>, reserved: number[]): void {
    this.send(FrameType.IOCTL, seq, ioctlPayload(cmd, arg, segments, fds.map((f) => f.number), reserved), fds.map((f) => f.fd));
  }

  /** Waits for the next unsolicited frame (WAKE, HEAD or HUP) and returns its type. */
  async event(): Promise<number> {
    const f = await this.readFrame();
    if (!this.isEvent(f)) throw new Error(`expected WAKE, HEAD or HUP, got frame ${f.type}`);
    return f.type;
  }

  /** The shim's CLOSE: asks for the release before the descriptor goes. */
  async release(): Promise<Result> {
    const seq = this.seq++;
    this.send(FrameType.CLOSE, seq, Buffer.alloc(0));
    return this.result(seq);
  }

  /** READY with a descriptor, which only a side channel may send. */
  async ready(fd: number): Promise<Result> {
    const seq = this.seq++;
    this.send(FrameType.READY, seq, Buffer.alloc(0), [fd]);
    return this.result(seq);
  }

  async pool(): Promise<Result> {
    const seq = this.seq++;
    this.send(FrameType.POOL, seq, Buffer.alloc(0));
    return this.result(seq);
  }

  close(): void {
    closeFd(this.fd);
  }
}
