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
}

export const FRAME_HEADER = 16;
/** Large enough for a 32 KiB command, its message and 2 MiB of vectors, with room to spare. */
export const MAX_FRAME = 8 * 1024 * 1024;

export interface Frame {
  type: number;
  seq: bigint;
  payload: Buffer;
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

/** Cuts a byte stream into frames; throws ProtocolError on a malformed header. */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const out: Frame[] = [];
    while (this.buffered >= FRAME_HEADER) {
      const head = this.peek(FRAME_HEADER);
      const len = head.readUInt32LE(0);
      if (len < FRAME_HEADER || len % 8 !== 0 || len > MAX_FRAME) {
        throw new ProtocolError(`frame length ${len} is not a multiple of 8 in [${FRAME_HEADER}, ${MAX_FRAME}]`);
      }
      if (this.buffered < len) break;
      const frame = this.take(len);
      out.push({ type: frame.readUInt32LE(4), seq: frame.readBigUInt64LE(8), payload: frame.subarray(FRAME_HEADER) });
    }
    return out;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!;
    this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0]!;
  }

  private take(n: number): Buffer {
    const first = this.peek(n);
    const frame = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.buffered -= n;
    return frame;
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
