/**
 * The parts of the FUSE kernel protocol a CUSE server speaks (Linux
 * include/uapi/linux/fuse.h, fs/fuse/cuse.c, fs/fuse/ioctl.c). All native-endian;
 * pinned by test/unit/cuse-abi.test.ts.
 */
export const FUSE_KERNEL_VERSION = 7;
/** 16 or later makes ioctl retries use fuse_ioctl_iovec (u64 base, u64 len). */
export const CUSE_MIN_MINOR = 16;

export const enum Opcode {
  OPEN = 14,
  READ = 15,
  WRITE = 16,
  RELEASE = 18,
  FLUSH = 25,
  INTERRUPT = 36,
  IOCTL = 39,
  POLL = 40,
  CUSE_INIT = 4096,
}

export const IN_HEADER = 40;
export const OUT_HEADER = 16;
export const CUSE_INIT_OUT = 72;
export const OPEN_OUT = 16;
export const IOCTL_OUT = 16;
export const POLL_OUT = 8;
export const NOTIFY_POLL = 1;

export const CUSE_UNRESTRICTED_IOCTL = 1;
export const FOPEN_DIRECT_IO = 1;
export const FOPEN_NONSEEKABLE = 4;

export const IOCTL_COMPAT = 1;
export const IOCTL_UNRESTRICTED = 2;
export const IOCTL_RETRY = 4;
export const IOCTL_32BIT = 8;
export const IOCTL_MAX_IOV = 256;
/** CUSE connections keep the default of 32 pages per request: 128 KiB each way per ioctl. */
export const IOCTL_MAX_BYTES = 32 * 4096;

export const POLL_SCHEDULE_NOTIFY = 1;

/** Every read of /dev/cuse must offer at least this much (fuse_dev_do_read). */
export const MAX_WRITE = 128 * 1024;
export const READ_BUFFER = Math.max(8192, IN_HEADER + 40 + MAX_WRITE);

export interface InHeader {
  len: number;
  opcode: number;
  /**
   * The kernel's request id. It and the other u64 counters (our fh, the kernel's poll kh)
   * count up from small numbers, so they travel as numbers: exact up to 2^53, and free of
   * BigInt arithmetic, which under emulation costs more than a system call.
   */
  unique: number;
  uid: number;
  gid: number;
  /** The calling thread, in the pid namespace of whoever opened /dev/cuse. */
  pid: number;
}

const TWO_32 = 0x1_0000_0000;

/** A u64 counter (unique, fh, kh) at `at`, as a number. */
export function readCounter(b: Buffer, at: number): number {
  return b.readUInt32LE(at) + b.readUInt32LE(at + 4) * TWO_32;
}

function writeCounter(b: Buffer, at: number, v: number): void {
  b.writeUInt32LE(v >>> 0, at);
  b.writeUInt32LE(Math.floor(v / TWO_32), at + 4);
}

export function parseInHeader(b: Buffer): InHeader {
  return {
    len: b.readUInt32LE(0),
    opcode: b.readUInt32LE(4),
    unique: readCounter(b, 8),
    uid: b.readUInt32LE(24),
    gid: b.readUInt32LE(28),
    pid: b.readUInt32LE(32),
  };
}

/**
 * The frequent small replies (ioctl results without data, poll answers, errors) are built
 * in this one buffer: each is written to its channel, which copies it, before the next is
 * built. Every byte of such a reply is written, none left from the last one.
 */
const scratch = Buffer.alloc(64);

/** A buffer for a reply of `len` bytes: the scratch when it fits, else a zeroed new one. */
function replyBuffer(len: number): Buffer {
  return len <= scratch.length ? scratch.subarray(0, len) : Buffer.alloc(len);
}

function writeHeader(b: Buffer, len: number, error: number, unique: number): void {
  b.writeUInt32LE(len, 0);
  b.writeInt32LE(error, 4);
  writeCounter(b, 8, unique);
}

/**
 * A reply: fuse_out_header {len, error (negative errno or 0), unique} + payload. Valid until
 * the next reply is built: send it at once.
 */
export function reply(unique: number, error: number, payload?: Buffer): Buffer {
  const len = OUT_HEADER + (error === 0 && payload ? payload.length : 0);
  const b = replyBuffer(len);
  writeHeader(b, len, error === 0 ? 0 : -Math.abs(error), unique);
  if (error === 0 && payload) payload.copy(b, OUT_HEADER);
  return b;
}

/** cuse_init_out followed by the NUL-terminated device info. */
export function cuseInitReply(unique: number, kernelMinor: number, devname: string): Buffer {
  const info = Buffer.from(`DEVNAME=${devname}\0`, 'latin1');
  const b = Buffer.alloc(OUT_HEADER + CUSE_INIT_OUT + info.length);
  writeHeader(b, b.length, 0, unique);
  const out = OUT_HEADER;
  b.writeUInt32LE(FUSE_KERNEL_VERSION, out);
  b.writeUInt32LE(Math.max(CUSE_MIN_MINOR, Math.min(kernelMinor, 38)), out + 4);
  b.writeUInt32LE(CUSE_UNRESTRICTED_IOCTL, out + 12);
  b.writeUInt32LE(MAX_WRITE, out + 16);
  b.writeUInt32LE(MAX_WRITE, out + 20);
  info.copy(b, out + CUSE_INIT_OUT);
  return b;
}

export function openReply(unique: number, fh: number): Buffer {
  const b = Buffer.alloc(OUT_HEADER + OPEN_OUT);
  writeHeader(b, b.length, 0, unique);
  writeCounter(b, OUT_HEADER, fh);
  b.writeUInt32LE(FOPEN_DIRECT_IO | FOPEN_NONSEEKABLE, OUT_HEADER + 8);
  return b;
}

export interface IoctlIn {
  fh: number;
  flags: number;
  cmd: number;
  arg: bigint;
  inSize: number;
  outSize: number;
  /** The bytes the kernel copied in (retry protocol); a view of the request, valid while it is handled. */
  data: Buffer;
}

export function parseIoctlIn(payload: Buffer): IoctlIn {
  const inSize = payload.readUInt32LE(24);
  return {
    fh: readCounter(payload, 0),
    flags: payload.readUInt32LE(8),
    cmd: payload.readUInt32LE(12),
    arg: payload.readBigUInt64LE(16),
    inSize,
    outSize: payload.readUInt32LE(28),
    data: payload.subarray(32, 32 + inSize),
  };
}

export interface Iovec {
  base: bigint;
  len: number;
}

/** FUSE_IOCTL_RETRY: the kernel copies `ins` from the caller and re-sends; `outs` receive the final data. */
export function ioctlRetryReply(unique: number, ins: readonly Iovec[], outs: readonly Iovec[]): Buffer {
  const p = Buffer.alloc(IOCTL_OUT + 16 * (ins.length + outs.length));
  p.writeInt32LE(0, 0);
  p.writeUInt32LE(IOCTL_RETRY, 4);
  p.writeUInt32LE(ins.length, 8);
  p.writeUInt32LE(outs.length, 12);
  [...ins, ...outs].forEach((v, i) => {
    p.writeBigUInt64LE(v.base, IOCTL_OUT + 16 * i);
    p.writeBigUInt64LE(BigInt(v.len), IOCTL_OUT + 16 * i + 8);
  });
  return reply(unique, 0, p);
}

/** The final answer of an ioctl: its return value (0 or -errno) and data for the out iovecs. */
export function ioctlResultReply(unique: number, result: number, out?: Buffer): Buffer {
  const len = OUT_HEADER + IOCTL_OUT + (out ? out.length : 0);
  const b = replyBuffer(len);
  writeHeader(b, len, 0, unique);
  b.writeInt32LE(result, OUT_HEADER);
  // flags, in_iovs, out_iovs: none.
  b.writeUInt32LE(0, OUT_HEADER + 4);
  b.writeUInt32LE(0, OUT_HEADER + 8);
  b.writeUInt32LE(0, OUT_HEADER + 12);
  if (out) out.copy(b, OUT_HEADER + IOCTL_OUT);
  return b;
}

export function pollReply(unique: number, revents: number): Buffer {
  const b = replyBuffer(OUT_HEADER + POLL_OUT);
  writeHeader(b, b.length, 0, unique);
  b.writeUInt32LE(revents, OUT_HEADER);
  b.writeUInt32LE(0, OUT_HEADER + 4);
  return b;
}

/** An unsolicited FUSE_NOTIFY_POLL: wakes the pollers registered with `kh`. */
export function pollNotify(kh: number): Buffer {
  const b = replyBuffer(OUT_HEADER + 8);
  writeHeader(b, b.length, NOTIFY_POLL, 0);
  writeCounter(b, OUT_HEADER, kh);
  return b;
}
