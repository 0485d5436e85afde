/**
 * A kdbus node served as a CUSE device (control, or an endpoint): FUSE requests become
 * Handle calls. Ioctls reach caller memory with process_vm_readv/writev when the daemon
 * may; otherwise through the FUSE ioctl retry protocol, running the command again each
 * round until everything it reads has been copied in (commands change nothing before they
 * have read all they need).
 */
import { Off, Cmd } from '../abi/constants';
import { Errno, KdbusError } from '../abi/errno';
import type { CallContext } from '../bus/caller';
import { openHandle, type KdbusNode } from '../bus/handle';
import { PidfdFiles, type KdbusFilePredicate } from '../os/pidfd-files';
import { ProcessMemory, ProcessMemoryDenied } from '../os/process-memory';
import { logger } from '../log/logger';
import { NeedMemory, SegmentMemory } from '../transport/segment-memory';
import { ATTACH_STRUCT_SIZE, KDBUS_CUSE_CMD_ATTACH, type AttachmentRegistry } from '../transport/attachments';
import type { ChannelHandler, CuseChannel } from './cuse-channel';
import { callerIdentity } from '../os/caller-identity';
import { CuseFile } from './cuse-file';
import {
  IOCTL_MAX_BYTES, IOCTL_MAX_IOV, ioctlResultReply, ioctlRetryReply, Opcode, openReply, parseIoctlIn,
  pollNotify, pollReply, POLL_SCHEDULE_NOTIFY, reply, type InHeader, type Iovec,
} from './fuse-abi';

/** How the transport reaches caller memory; switches to 'retry' once process_vm is refused. */
export interface MemoryMode {
  mode: 'process_vm' | 'retry';
}

interface RetryState {
  ins: Iovec[];
}

export class CuseNode implements ChannelHandler {
  private readonly files = new Map<bigint, CuseFile>();
  private nextFh = 1n;
  private readonly retries = new Map<string, RetryState>();

  constructor(
    readonly node: KdbusNode,
    private readonly memory: MemoryMode,
    private readonly attachments: AttachmentRegistry,
    /** Recognizes this daemon's own device nodes, which may not travel inside messages. */
    private readonly isKdbus: KdbusFilePredicate,
  ) {}

  request(ch: CuseChannel, hdr: InHeader, p: Buffer): void {
    switch (hdr.opcode) {
      case Opcode.OPEN:
        return this.open(ch, hdr);
      case Opcode.RELEASE:
        return this.release(ch, hdr, p.readBigUInt64LE(0));
      case Opcode.IOCTL:
        return this.ioctl(ch, hdr, p);
      case Opcode.POLL:
        return this.poll(ch, hdr, p);
      case Opcode.READ:
        return this.read(ch, hdr, p);
      case Opcode.WRITE:
        return ch.send(reply(hdr.unique, Errno.EINVAL));
      case Opcode.FLUSH:
        return ch.send(reply(hdr.unique, 0));
      case Opcode.INTERRUPT:
        // A signal reached a caller blocked in a synchronous SEND. kdbus restarted such a
        // wait (-ERESTARTSYS), and clients install their handlers with SA_RESTART; FUSE would
        // return EINTR instead, so the wait simply goes on to its reply, error or deadline.
        return;
      default:
        return ch.send(reply(hdr.unique, Errno.ENOSYS));
    }
  }

  private open(ch: CuseChannel, hdr: InHeader): void {
    try {
      const id = callerIdentity(hdr.pid);
      const handle = openHandle(this.node, { creds: id.creds, privileged: id.privileged, pid: id.tgid });
      const fh = this.nextFh++;
      this.files.set(fh, new CuseFile(handle));
      ch.send(openReply(hdr.unique, fh));
    } catch (e) {
      if (!(e instanceof KdbusError)) throw e;
      ch.send(reply(hdr.unique, e.errno));
    }
  }

  /** Synchronous, as kdbus's release was: notifications are queued before close() returns. */
  private release(ch: CuseChannel, hdr: InHeader, fh: bigint): void {
    const f = this.files.get(fh);
    if (f) {
      this.files.delete(fh);
      for (const a of f.inFlight.values()) a.abort();
      f.stopWake?.();
      this.attachments.revoke(f);
      f.handle.release();
    }
    ch.send(reply(hdr.unique, 0));
  }

  /** Drops every open file; the device is going away. */
  closeAll(): void {
    for (const f of this.files.values()) {
      for (const a of f.inFlight.values()) a.abort();
      f.stopWake?.();
      f.handle.release();
    }
    this.files.clear();
  }

  private poll(ch: CuseChannel, hdr: InHeader, p: Buffer): void {
    const f = this.files.get(p.readBigUInt64LE(0));
    if (!f) return ch.send(reply(hdr.unique, Errno.EBADF));
    const kh = p.readBigUInt64LE(8);
    if (p.readUInt32LE(16) & POLL_SCHEDULE_NOTIFY) {
      f.pollKh = kh;
      if (!f.stopWake) this.watch(ch, f);
    }
    ch.send(pollReply(hdr.unique, f.handle.poll()));
  }

  private watch(ch: CuseChannel, f: CuseFile): void {
    if (!f.handle.connection) return;
    f.stopWake = f.handle.onWake(() => {
      if (f.pollKh !== undefined) ch.send(pollNotify(f.pollKh));
    });
  }

  /** READ: pool bytes at the offset, for clients that cannot map the pool. */
  private read(ch: CuseChannel, hdr: InHeader, p: Buffer): void {
    const f = this.files.get(p.readBigUInt64LE(0));
    const pool = f?.handle.connection?.pool;
    if (!pool) return ch.send(reply(hdr.unique, Errno.EINVAL));
    const offset = Number(p.readBigUInt64LE(8));
    const size = Math.max(0, Math.min(p.readUInt32LE(16), pool.size - offset));
    ch.send(reply(hdr.unique, 0, size > 0 ? pool.storage.read(offset, size) : Buffer.alloc(0)));
  }

  private ioctl(ch: CuseChannel, hdr: InHeader, p: Buffer): void {
    const io = parseIoctlIn(p);
    const f = this.files.get(io.fh);
    if (!f) return ch.send(ioctlResultReply(hdr.unique, -Errno.EBADF));
    if (io.cmd === KDBUS_CUSE_CMD_ATTACH) return this.attachToken(ch, hdr, f, io);
    // Only a SEND can wait (for its reply); a release must end that wait.
    const abort = io.cmd === Cmd.SEND ? new AbortController() : undefined;
    if (abort) f.inFlight.set(hdr.unique, abort);
    const done = (result: number, out?: Buffer): void => {
      if (abort) f.inFlight.delete(hdr.unique);
      f.side?.commandDone();
      ch.send(ioctlResultReply(hdr.unique, result, out));
      if (io.cmd === Cmd.HELLO && result === 0 && f.pollKh !== undefined && !f.stopWake) this.watch(ch, f);
    };
    let identity;
    try {
      identity = f.caller(hdr.pid, hdr.uid, hdr.gid);
    } catch (e) {
      return done(-(e as KdbusError).errno);
    }
    const base = {
      files: new PidfdFiles(identity.tgid, this.isKdbus),
      installer: f.installer,
      pid: identity.tgid,
      tid: hdr.pid,
      creds: identity.creds,
      signal: abort?.signal,
    };
    if (this.memory.mode === 'process_vm') {
      const ctx: CallContext = { ...base, mem: new ProcessMemory(hdr.pid) };
      try {
        settle(f.handle.ioctl(io.cmd, io.arg, ctx), () => done(0), (errno) => done(-errno), () => base.files.close());
        return;
      } catch (e) {
        if (!(e instanceof ProcessMemoryDenied)) {
          base.files.close();
          return done(-errnoOf(e));
        }
        this.memory.mode = 'retry';
        logger.warn(`process_vm access to callers is refused (errno ${e.errno}); using the FUSE ioctl retry protocol, limited to ${IOCTL_MAX_BYTES} bytes per ioctl`);
      }
    }
    this.retryIoctl(ch, hdr, f, io, base);
  }

  private retryIoctl(
    ch: CuseChannel, hdr: InHeader, f: CuseFile, io: ReturnType<typeof parseIoctlIn>,
    base: Omit<CallContext, 'mem'> & { files: PidfdFiles },
  ): void {
    const key = `${io.fh}:${hdr.pid}:${io.cmd}:${io.arg}`;
    const state = io.inSize > 0 ? this.retries.get(key) : undefined;
    const segments = [];
    let at = 0;
    for (const v of state?.ins ?? []) {
      segments.push({ address: v.base, data: io.data.subarray(at, at + v.len) });
      at += v.len;
    }
    const mem = new SegmentMemory(segments);
    const outs = structRanges(io.cmd, io.arg, mem);
    const finish = (result: number): void => {
      this.retries.delete(key);
      f.inFlight.delete(hdr.unique);
      f.side?.commandDone();
      base.files.close();
      ch.send(ioctlResultReply(hdr.unique, result, outData(outs, mem)));
    };
    try {
      settle(f.handle.ioctl(io.cmd, io.arg, { ...base, mem }), () => finish(0), (errno) => finish(-errno), () => undefined);
    } catch (e) {
      if (!(e instanceof NeedMemory)) return finish(-errnoOf(e));
      base.files.close();
      f.inFlight.delete(hdr.unique);
      const ins = [...(state?.ins ?? []), { base: e.address, len: e.length }];
      const inBytes = ins.reduce((n, v) => n + v.len, 0);
      const wantOuts = structRanges(io.cmd, io.arg, new SegmentMemory([...segments, { address: e.address, data: Buffer.alloc(e.length) }]));
      const outBytes = wantOuts.reduce((n, v) => n + v.len, 0);
      if (ins.length + wantOuts.length > IOCTL_MAX_IOV || inBytes > IOCTL_MAX_BYTES || outBytes > IOCTL_MAX_BYTES) {
        this.retries.delete(key);
        f.side?.commandDone();
        logger.warn(`ioctl 0x${io.cmd.toString(16)} of pid ${hdr.pid} needs ${inBytes} bytes of caller memory: more than the FUSE retry protocol carries; give the daemon ptrace-level access (CAP_SYS_PTRACE) to lift the limit`);
        return ch.send(ioctlResultReply(hdr.unique, -Errno.EMSGSIZE));
      }
      this.retries.set(key, { ins });
      logger.debug(`ioctl 0x${io.cmd.toString(16)} of pid ${hdr.pid}: retry round ${ins.length} asks ${inBytes} bytes in, ${outBytes} out`);
      ch.send(ioctlRetryReply(hdr.unique, ins, wantOuts));
    }
  }

  /**
   * The shim's private ioctl: a token proving it holds this open file, to present on the
   * socket transport. In retry mode the first round only declares where the answer goes.
   */
  private attachToken(ch: CuseChannel, hdr: InHeader, f: CuseFile, io: ReturnType<typeof parseIoctlIn>): void {
    const answer = (): Buffer => {
      const out = Buffer.alloc(ATTACH_STRUCT_SIZE);
      out.writeBigUInt64LE(BigInt(ATTACH_STRUCT_SIZE), 0);
      this.attachments.issue(f).copy(out, 8);
      return out;
    };
    if (this.memory.mode === 'process_vm') {
      try {
        const mem = new ProcessMemory(hdr.pid);
        mem.read(io.arg, ATTACH_STRUCT_SIZE);
        mem.write(io.arg, answer());
        return ch.send(ioctlResultReply(hdr.unique, 0));
      } catch (e) {
        if (!(e instanceof ProcessMemoryDenied)) return ch.send(ioctlResultReply(hdr.unique, -errnoOf(e)));
        this.memory.mode = 'retry';
      }
    }
    if (io.outSize < ATTACH_STRUCT_SIZE) return ch.send(ioctlRetryReply(hdr.unique, [], [{ base: io.arg, len: ATTACH_STRUCT_SIZE }]));
    ch.send(ioctlResultReply(hdr.unique, 0, answer()));
  }
}

function errnoOf(e: unknown): number {
  if (e instanceof KdbusError) return e.errno;
  if (e instanceof NeedMemory) return Errno.EFAULT;
  logger.error(`unexpected failure in an ioctl: ${(e as Error).stack}`);
  return Errno.EIO;
}

/** Runs a command's result (sync or a promise) to an errno, and cleans up once. */
function settle(r: void | Promise<void>, ok: () => void, err: (errno: number) => void, always: () => void): void {
  if (!r) {
    always();
    ok();
    return;
  }
  r.then(
    () => {
      always();
      ok();
    },
    (e: unknown) => {
      always();
      err(errnoOf(e));
    },
  );
}

/**
 * The caller memory a kdbus command writes back into: its own struct, and for SEND the
 * message (negotiation answers). Known once the struct's size has been read.
 */
function structRanges(cmd: number, arg: bigint, mem: SegmentMemory): Iovec[] {
  const out: Iovec[] = [];
  let size: number;
  try {
    size = Number(mem.read(arg, 8).readBigUInt64LE(0));
  } catch {
    return out;
  }
  if (size < 8 || size > 32768) return out;
  out.push({ base: arg, len: size });
  if (cmd === Cmd.SEND) {
    try {
      const msgAddr = mem.read(arg + BigInt(Off.send.msg_address), 8).readBigUInt64LE(0);
      const msgSize = Number(mem.read(msgAddr, 8).readBigUInt64LE(0));
      if (msgSize >= 8 && msgSize <= 32768) out.push({ base: msgAddr, len: msgSize });
    } catch {
      // The message has not been read yet; it becomes an out range in a later round.
    }
  }
  return out;
}

/** The final data for the out iovecs: the caller's bytes as read, with the command's writes applied. */
function outData(outs: readonly Iovec[], mem: SegmentMemory): Buffer {
  const parts: Buffer[] = [];
  for (const o of outs) {
    let b: Buffer;
    try {
      b = mem.read(o.base, o.len);
    } catch {
      b = Buffer.alloc(o.len);
    }
    for (const w of mem.writes) {
      const start = Number(w.address - o.base);
      if (start >= 0 && start + w.data.length <= o.len) w.data.copy(b, start);
    }
    parts.push(b);
  }
  return Buffer.concat(parts);
}
