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
  unique: bigint;
  nodeid: bigint;
  uid: number;
  gid: number;
  /** The calling thread, in the pid namespace of whoever opened /dev/cuse. */
  pid: number;
}

export function parseInHeader(b: Buffer): InHeader {
  return {
    len: b.readUInt32LE(0),
    opcode: b.readUInt32LE(4),
    unique: b.readBigUInt64LE(8),
    nodeid: b.readBigUInt64LE(16),
    uid: b.readUInt32LE(24),
    gid: b.readUInt32LE(28),
    pid: b.readUInt32LE(32),
  };
}

/** A reply: fuse_out_header {len, error (negative errno or 0), unique} + payload. */
export function reply(unique: bigint, error: number, payload?: Buffer): Buffer {
  const len = OUT_HEADER + (error === 0 && payload ? payload.length : 0);
  const b = Buffer.alloc(len);
  b.writeUInt32LE(len, 0);
  b.writeInt32LE(error === 0 ? 0 : -Math.abs(error), 4);
  b.writeBigUInt64LE(unique, 8);
  if (error === 0 && payload) payload.copy(b, OUT_HEADER);
  return b;
}

/** cuse_init_out followed by the NUL-terminated device info. */
export function cuseInitReply(unique: bigint, kernelMinor: number, devname: string): Buffer {
  const out = Buffer.alloc(CUSE_INIT_OUT);
  out.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
  out.writeUInt32LE(Math.max(CUSE_MIN_MINOR, Math.min(kernelMinor, 38)), 4);
  out.writeUInt32LE(CUSE_UNRESTRICTED_IOCTL, 12);
  out.writeUInt32LE(MAX_WRITE, 16);
  out.writeUInt32LE(MAX_WRITE, 20);
  return reply(unique, 0, Buffer.concat([out, Buffer.from(`DEVNAME=${devname}\0`, 'latin1')]));
}

export function openReply(unique: bigint, fh: bigint): Buffer {
  const p = Buffer.alloc(OPEN_OUT);
  p.writeBigUInt64LE(fh, 0);
  p.writeUInt32LE(FOPEN_DIRECT_IO | FOPEN_NONSEEKABLE, 8);
  return reply(unique, 0, p);
}

export interface IoctlIn {
  fh: bigint;
  flags: number;
  cmd: number;
  arg: bigint;
  inSize: number;
  outSize: number;
  data: Buffer;
}

export function parseIoctlIn(payload: Buffer): IoctlIn {
  const inSize = payload.readUInt32LE(24);
  return {
    fh: payload.readBigUInt64LE(0),
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
export function ioctlRetryReply(unique: bigint, ins: readonly Iovec[], outs: readonly Iovec[]): Buffer {
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
export function ioctlResultReply(unique: bigint, result: number, out: Buffer = Buffer.alloc(0)): Buffer {
  const p = Buffer.alloc(IOCTL_OUT + out.length);
  p.writeInt32LE(result, 0);
  out.copy(p, IOCTL_OUT);
  return reply(unique, 0, p);
}

export function pollReply(unique: bigint, revents: number): Buffer {
  const p = Buffer.alloc(POLL_OUT);
  p.writeUInt32LE(revents, 0);
  return reply(unique, 0, p);
}

/** An unsolicited FUSE_NOTIFY_POLL: wakes the pollers registered with `kh`. */
export function pollNotify(kh: bigint): Buffer {
  const b = Buffer.alloc(OUT_HEADER + 8);
  b.writeUInt32LE(b.length, 0);
  b.writeInt32LE(NOTIFY_POLL, 4);
  b.writeBigUInt64LE(0n, 8);
  b.writeBigUInt64LE(kh, OUT_HEADER);
  return b;
}
