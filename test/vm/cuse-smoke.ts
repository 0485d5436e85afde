/**
 * Run with node inside the test VM (test/integration/vm-smoke.test.ts): shows that the
 * guest kernel serves CUSE end to end, speaking the protocol on /dev/cuse by hand.
 *
 * It answers CUSE_INIT with DEVNAME=kdbus-vm-smoke, checks that the node appears in
 * devtmpfs and sysfs, serves one open and release of the node made by another process, and
 * checks that the node goes away when the channel closes. It prints one JSON line with what
 * it saw, or exits 1 with the step that failed.
 *
 * Layouts and numbers: Linux include/uapi/linux/fuse.h and fs/fuse/cuse.c.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';

const DEVNAME = 'kdbus-vm-smoke';
const NODE = `/dev/${DEVNAME}`;
const SYSFS = `/sys/class/cuse/${DEVNAME}`;

const CUSE_INIT = 4096;
const FUSE_OPEN = 14;
const FUSE_RELEASE = 18;
const CUSE_UNRESTRICTED_IOCTL = 1;
const FUSE_KERNEL_VERSION = 7;
/** Below this the kernel's ioctl retry replies use the ambiguous struct iovec layout. */
const MIN_KERNEL_MINOR = 16;

const IN_HEADER_SIZE = 40; // fuse_in_header
const OUT_HEADER_SIZE = 16; // fuse_out_header
const CUSE_INIT_OUT_SIZE = 72;
const FUSE_OPEN_OUT_SIZE = 16;
const FUSE_WRITE_IN_SIZE = 40;
const FUSE_MIN_READ_BUFFER = 8192;
const MAX_WRITE = 128 * 1024;
/** A smaller read buffer gets EINVAL before any request is dequeued. */
const READ_BUFFER = Math.max(FUSE_MIN_READ_BUFFER, IN_HEADER_SIZE + FUSE_WRITE_IN_SIZE + MAX_WRITE);
const FOPEN_DIRECT_IO = 1;
const FOPEN_NONSEEKABLE = 4;
const STEP_TIMEOUT_MS = 10_000;

interface Request {
  opcode: number;
  unique: bigint;
  nodeid: bigint;
  uid: number;
  pid: number;
  body: Buffer;
}

const pause = new Int32Array(new SharedArrayBuffer(4));

/** The channel is non-blocking so a missing request fails the step instead of hanging. */
function readRequest(fd: number, buf: Buffer, what: string): Request {
  const until = Date.now() + STEP_TIMEOUT_MS;
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      if (Date.now() > until) throw new Error(`no ${what} request within ${STEP_TIMEOUT_MS} ms`);
      Atomics.wait(pause, 0, 0, 5);
      continue;
    }
    const len = buf.readUInt32LE(0);
    if (n < IN_HEADER_SIZE || len !== n) throw new Error(`${what}: read ${n} bytes but the header says ${len}`);
    return {
      opcode: buf.readUInt32LE(4),
      unique: buf.readBigUInt64LE(8),
      nodeid: buf.readBigUInt64LE(16),
      uid: buf.readUInt32LE(24),
      pid: buf.readUInt32LE(32),
      body: Buffer.from(buf.subarray(IN_HEADER_SIZE, n)),
    };
  }
}

function expectOpcode(req: Request, opcode: number, what: string): void {
  if (req.opcode !== opcode) throw new Error(`expected ${what} (opcode ${opcode}), got opcode ${req.opcode}`);
}

function reply(fd: number, unique: bigint, payload: Buffer): void {
  const msg = Buffer.alloc(OUT_HEADER_SIZE + payload.length);
  msg.writeUInt32LE(msg.length, 0);
  msg.writeInt32LE(0, 4);
  msg.writeBigUInt64LE(unique, 8);
  payload.copy(msg, OUT_HEADER_SIZE);
  const n = fs.writeSync(fd, msg);
  if (n !== msg.length) throw new Error(`short reply write: ${n} of ${msg.length}`);
}

function cuseInitReply(kernelMinor: number): Buffer {
  const info = Buffer.from(`DEVNAME=${DEVNAME}\0`);
  const out = Buffer.alloc(CUSE_INIT_OUT_SIZE + info.length);
  out.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
  out.writeUInt32LE(kernelMinor, 4);
  // 8: unused
  out.writeUInt32LE(CUSE_UNRESTRICTED_IOCTL, 12);
  out.writeUInt32LE(MAX_WRITE, 16); // max_read
  out.writeUInt32LE(MAX_WRITE, 20); // max_write
  // 24, 28: dev_major = dev_minor = 0, a dynamic major; 32..71: spare
  info.copy(out, CUSE_INIT_OUT_SIZE);
  return out;
}

async function waitUntil(what: string, cond: () => boolean): Promise<void> {
  const until = Date.now() + STEP_TIMEOUT_MS;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`${what}: not within ${STEP_TIMEOUT_MS} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function main(): Promise<void> {
  if (fs.existsSync(NODE)) throw new Error(`${NODE} exists before the test`);
  const fd = fs.openSync('/dev/cuse', fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  const buf = Buffer.alloc(READ_BUFFER);

  const init = readRequest(fd, buf, 'CUSE_INIT');
  expectOpcode(init, CUSE_INIT, 'CUSE_INIT');
  const kernel = {
    major: init.body.readUInt32LE(0),
    minor: init.body.readUInt32LE(4),
    flags: init.body.readUInt32LE(12),
  };
  if (kernel.major !== FUSE_KERNEL_VERSION) throw new Error(`kernel speaks FUSE ${kernel.major}.${kernel.minor}`);
  if (kernel.minor < MIN_KERNEL_MINOR) throw new Error(`kernel FUSE minor ${kernel.minor} < ${MIN_KERNEL_MINOR}`);
  reply(fd, init.unique, cuseInitReply(kernel.minor));

  await waitUntil(`${NODE} appears`, () => fs.existsSync(NODE));
  const st = fs.statSync(NODE);
  if (!st.isCharacterDevice()) throw new Error(`${NODE} is not a character device`);
  // Linux's new_encode_dev layout, which stat's st_rdev uses on x86-64.
  const node = { major: (st.rdev >> 8) & 0xfff, minor: (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00) };
  const sysfsDev = fs.readFileSync(`${SYSFS}/dev`, 'utf8').trim();

  // Another process opens and closes the node; this one serves FUSE_OPEN and FUSE_RELEASE.
  const client = spawn('/bin/sh', ['-c', `: < ${NODE}`], { stdio: 'ignore' });
  const clientExit = new Promise<number | null>((resolve) => client.on('exit', (code) => resolve(code)));
  const open = readRequest(fd, buf, 'FUSE_OPEN');
  expectOpcode(open, FUSE_OPEN, 'FUSE_OPEN');
  const openFlags = open.body.readUInt32LE(0);
  const openOut = Buffer.alloc(FUSE_OPEN_OUT_SIZE);
  openOut.writeBigUInt64LE(1n, 0); // fh, echoed in later requests
  openOut.writeUInt32LE(FOPEN_DIRECT_IO | FOPEN_NONSEEKABLE, 8);
  reply(fd, open.unique, openOut);
  const release = readRequest(fd, buf, 'FUSE_RELEASE');
  expectOpcode(release, FUSE_RELEASE, 'FUSE_RELEASE');
  const releaseFh = release.body.readBigUInt64LE(0);
  reply(fd, release.unique, Buffer.alloc(0));
  const clientCode = await clientExit;
  if (clientCode !== 0) throw new Error(`the client's open/close of ${NODE} exited ${clientCode}`);

  fs.closeSync(fd);
  await waitUntil(`${NODE} goes away after close`, () => !fs.existsSync(NODE));

  console.log(
    JSON.stringify({
      kernel,
      node,
      sysfsDev,
      open: { nodeid: Number(open.nodeid), flags: openFlags, uid: open.uid, byClient: open.pid === client.pid },
      release: { fh: Number(releaseFh) },
      removed: true,
    }),
  );
}

main().catch((e: Error) => {
  console.error(`cuse-smoke: ${e.message}`);
  process.exit(1);
});
