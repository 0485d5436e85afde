/**
 * Frames of the socket transport (docs/socket-protocol.md): a 16-byte header
 * {u32 length, u32 type, u64 seq} and a payload padded to 8 bytes.
 */
export const enum FrameType {
  OPEN = 1,
  IOCTL = 2,
  FETCH = 3,
  MEM = 4,
  RESULT = 5,
  WAKE = 6,
  HUP = 7,
  POOL = 8,
  CLOSE = 9,
  ATTACH = 10,
  RESERVE = 11,
  INSTALL = 12,
  EMPTY = 13,
  HEAD = 14,
  /** Shim → daemon on a side channel, with one eventfd: keep it to the CUSE handle's readiness (READY). */
  READY = 15,
}

/** OPEN's features word, bit 0: the shim takes HEAD frames instead of bare WAKEs (Poll). */
export const OPEN_FEATURE_HEADS = 1;

export const FRAME_HEADER = 16;
/** Large enough for a 32 KiB command, its message and 2 MiB of vectors, with room to spare. */
export const MAX_FRAME = 8 * 1024 * 1024;

export interface Frame {
  type: number;
  seq: bigint;
  payload: Buffer;
  /** The process that wrote the frame's first bytes, as the kernel told (0 when it did not). */
  pid: number;
  uid: number;
  gid: number;
  /**
   * The buffer the frame has to itself (a frame larger than the read buffer), to be given
   * back with FrameReader.recycle() once nothing uses the payload; undefined when the
   * payload is a view into the read buffer, which the next read reuses.
   */
  own: Buffer | undefined;
}

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

const pad8 = (n: number): number => (n + 7) & ~7;

export function encodeFrame(type: FrameType, seq: bigint, payload: Buffer = Buffer.alloc(0)): Buffer {
  const len = FRAME_HEADER + pad8(payload.length);
  const b = Buffer.alloc(len);
  b.writeUInt32LE(len, 0);
  b.writeUInt32LE(type, 4);
  b.writeBigUInt64LE(seq, 8);
  payload.copy(b, FRAME_HEADER);
  return b;
}

/** Reads go into a buffer of this size; a larger frame gets one of its own. */
const READ_BUFFER = 64 * 1024;
/** Below this much room at the end, the unread rest moves to the front before a read. */
const MIN_READ = 4096;

/**
 * One buffer for large frames, shared by all readers and given back after use: a megabyte
 * allocated per frame is external memory that drives V8 into full collections.
 */
let spare: Buffer | undefined;

/**
 * Cuts a byte stream into frames where it was read: a frame that lies in the read buffer
 * is handed out as a view into it (valid until the next read), a frame larger than the
 * buffer is read into a buffer of its own. Each frame carries the sender of the read that
 * brought its first byte. Throws ProtocolError on a malformed header.
 */
export class FrameReader {
  private buf = Buffer.allocUnsafe(READ_BUFFER);
  private start = 0;
  private end = 0;
  /** Where the last read's bytes begin in buf. */
  private chunkStart = 0;
  private chunkPid = 0;
  private chunkUid = 0;
  private chunkGid = 0;
  /** Sender of the incomplete frame at start, when its first byte came with an earlier read. */
  private pendingPid = 0;
  private pendingUid = 0;
  private pendingGid = 0;
  /** A frame larger than buf (in a buffer that may be larger still), its length and how much of it is in. */
  private big: Buffer | undefined;
  private bigLength = 0;
  private bigFilled = 0;

  /** The buffer the next read goes into, from targetOffset on for targetLength bytes. */
  target: Buffer = this.buf;
  targetOffset = 0;
  targetLength = READ_BUFFER;

  /** Makes room for the next read and sets target, targetOffset and targetLength. */
  prepare(): void {
    if (this.big) {
      this.target = this.big;
      this.targetOffset = this.bigFilled;
      this.targetLength = this.bigLength - this.bigFilled;
      return;
    }
    if (this.start === this.end) {
      this.start = this.end = 0;
    } else if (this.buf.length - this.end < MIN_READ && this.start > 0) {
      this.buf.copyWithin(0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
    }
    this.target = this.buf;
    this.targetOffset = this.end;
    this.targetLength = this.buf.length - this.end;
  }

  /** Accounts for n bytes read into the target, written by the given process. */
  received(n: number, pid: number, uid: number, gid: number): void {
    if (this.big) {
      this.bigFilled += n;
      return;
    }
    this.chunkStart = this.end;
    this.end += n;
    this.chunkPid = pid;
    this.chunkUid = uid;
    this.chunkGid = gid;
  }

  /** Length of a frame still arriving into a buffer of its own (larger than the read buffer); 0 if none. */
  get unfinishedLength(): number {
    return this.big ? this.bigLength : 0;
  }

  /** Whether bytes of an incomplete frame are waiting for more. */
  get partial(): boolean {
    return this.big !== undefined || this.start < this.end;
  }

  /** The next complete frame, or undefined until more is read. */
  next(): Frame | undefined {
    const big = this.big;
    if (big) {
      if (this.bigFilled < this.bigLength) return undefined;
      this.big = undefined;
      return this.frameAt(big, 0, this.bigLength, this.pendingPid, this.pendingUid, this.pendingGid, big);
    }
    const at = this.start;
    const avail = this.end - at;
    if (avail >= FRAME_HEADER) {
      const len = this.buf.readUInt32LE(at);
      if (len < FRAME_HEADER || len % 8 !== 0 || len > MAX_FRAME) {
        throw new ProtocolError(`frame length ${len} is not a multiple of 8 in [${FRAME_HEADER}, ${MAX_FRAME}]`);
      }
      if (avail >= len) {
        this.start = at + len;
        return at < this.chunkStart
          ? this.frameAt(this.buf, at, len, this.pendingPid, this.pendingUid, this.pendingGid, undefined)
          : this.frameAt(this.buf, at, len, this.chunkPid, this.chunkUid, this.chunkGid, undefined);
      }
      if (at >= this.chunkStart) this.keepSender();
      if (len > this.buf.length) {
        if (spare && spare.length >= len) {
          this.big = spare;
          spare = undefined;
        } else {
          this.big = Buffer.allocUnsafe(len);
        }
        this.buf.copy(this.big, 0, at, this.end);
        this.bigLength = len;
        this.bigFilled = avail;
        this.start = this.end = 0;
      }
      return undefined;
    }
    if (avail > 0 && at >= this.chunkStart) this.keepSender();
    return undefined;
  }

  private keepSender(): void {
    this.pendingPid = this.chunkPid;
    this.pendingUid = this.chunkUid;
    this.pendingGid = this.chunkGid;
  }

  /** Gives back the buffer of a large frame whose payload nothing uses any more. */
  static recycle(own: Buffer): void {
    if (!spare || own.length >= spare.length) spare = own;
  }

  private frameAt(b: Buffer, at: number, len: number, pid: number, uid: number, gid: number, own: Buffer | undefined): Frame {
    return { type: b.readUInt32LE(at + 4), seq: b.readBigUInt64LE(at + 8), payload: b.subarray(at + FRAME_HEADER, at + len), pid, uid, gid, own };
  }
}

/** One (address, bytes) piece of caller memory, as IOCTL segments and RESULT writes carry it. */
export interface Segment {
  address: bigint;
  data: Buffer;
}

export function encodeSegments(segments: readonly Segment[]): Buffer {
  const parts: Buffer[] = [];
  for (const s of segments) {
    const h = Buffer.alloc(16);
    h.writeBigUInt64LE(s.address, 0);
    h.writeUInt32LE(s.data.length, 8);
    parts.push(h, s.data, Buffer.alloc(pad8(s.data.length) - s.data.length));
  }
  return Buffer.concat(parts);
}

/** Reads `count` segments starting at `offset`; returns them and the offset after them. */
export function decodeSegments(b: Buffer, offset: number, count: number): { segments: Segment[]; end: number } {
  const segments: Segment[] = [];
  let p = offset;
  for (let i = 0; i < count; i++) {
    if (p + 16 > b.length) throw new ProtocolError(`segment ${i} header runs past the frame`);
    const address = b.readBigUInt64LE(p);
    const len = b.readUInt32LE(p + 8);
    p += 16;
    if (p + len > b.length) throw new ProtocolError(`segment ${i} (${len} bytes) runs past the frame`);
    segments.push({ address, data: b.subarray(p, p + len) });
    p += pad8(len);
  }
  return { segments, end: p };
}
