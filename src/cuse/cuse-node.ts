/**
 * A kdbus node served as a CUSE device (control, or an endpoint): FUSE requests become
 * Handle calls. Ioctls reach caller memory with process_vm_readv/writev when the daemon
 * may; otherwise through the FUSE ioctl retry protocol, running the command again each
 * round until everything it reads has been copied in (commands change nothing before they
 * have read all they need).
 */
import { Off, Cmd } from '../abi/constants';
import { Errno, KdbusError } from '../abi/errno';
import type { CallContext, Interruptible } from '../bus/caller';
import { Interruption } from '../bus/interruption';
import { openHandle, type KdbusNode } from '../bus/handle';
import { PidfdFiles, type KdbusFilePredicate } from '../os/pidfd-files';
import { ProcessMemory, ProcessMemoryDenied } from '../os/process-memory';
import { logger } from '../log/logger';
import { afterContinuations } from '../os/fd-watch';
import { NeedMemory, SegmentMemory } from '../transport/segment-memory';
import { ATTACH_STRUCT_SIZE, KDBUS_CUSE_CMD_ATTACH, type AttachmentRegistry } from '../transport/attachments';
import type { ChannelHandler, CuseChannel } from './cuse-channel';
import { callerIdentity } from '../os/caller-identity';
import { CuseFile } from './cuse-file';
import {
  IOCTL_MAX_BYTES, IOCTL_MAX_IOV, ioctlResultReply, ioctlRetryReply, Opcode, openReply, parseIoctlIn,
  pollNotify, pollReply, POLL_SCHEDULE_NOTIFY, readCounter, reply, type InHeader, type IoctlIn, type Iovec,
} from './fuse-abi';

/** How the transport reaches caller memory; switches to 'retry' once process_vm is refused. */
export interface MemoryMode {
  mode: 'process_vm' | 'retry';
}

interface RetryState {
  ins: Iovec[];
}

/** Synchronous SENDs of all CUSE nodes that are waiting for their reply. */
let waitingSends = 0;

export class CuseNode implements ChannelHandler {
  private readonly files = new Map<number, CuseFile>();
  private nextFh = 1;
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
        return this.release(ch, hdr, readCounter(p, 0));
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
  private release(ch: CuseChannel, hdr: InHeader, fh: number): void {
    const f = this.files.get(fh);
    if (f) {
      // FREEs the shim sent on the side channel before the last close belong to the handle.
      f.side?.catchUp();
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
    const f = this.files.get(readCounter(p, 0));
    if (!f) return ch.send(reply(hdr.unique, Errno.EBADF));
    const kh = readCounter(p, 8);
    // A RECV the shim answered from a HEAD is on the side channel: the queue is without it.
    f.side?.catchUp();
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
    const f = this.files.get(readCounter(p, 0));
    const pool = f?.handle.connection?.pool;
    if (!pool) return ch.send(reply(hdr.unique, Errno.EINVAL));
    const offset = readCounter(p, 8);
    const size = Math.max(0, Math.min(p.readUInt32LE(16), pool.size - offset));
    ch.send(reply(hdr.unique, 0, size > 0 ? pool.storage.read(offset, size) : Buffer.alloc(0)));
  }

  private ioctl(ch: CuseChannel, hdr: InHeader, p: Buffer): void {
    const io = parseIoctlIn(p);
    const unique = hdr.unique;
    const f = this.files.get(io.fh);
    if (!f) return ch.send(ioctlResultReply(unique, -Errno.EBADF));
    const cmd = io.cmd;
    if (cmd === KDBUS_CUSE_CMD_ATTACH) return this.attachToken(ch, hdr, f, io);
    // The shim may have sent FREEs on the side channel instead of ioctls: they come first.
    f.side?.catchUp();
    // Only a SEND can wait (for its reply); a release must end that wait.
    const abort = cmd === Cmd.SEND ? new Interruption() : undefined;
    if (abort) f.inFlight.set(unique, abort);
    // The shim offers numbers for files before the commands that install some, RECV and
    // SEND; after any other, there is no offer to drop (nor, for the shim, a queue emptied).
    const installs = cmd === Cmd.RECV || cmd === Cmd.SEND;
    const done = (result: number, out?: Buffer): void => {
      if (abort) f.inFlight.delete(unique);
      if (installs) f.side?.commandDone(cmd === Cmd.RECV);
      ch.send(ioctlResultReply(unique, result, out));
      if (cmd === Cmd.HELLO && result === 0 && f.pollKh !== undefined && !f.stopWake) this.watch(ch, f);
    };
    let identity;
    try {
      identity = f.caller(hdr.pid, hdr.uid, hdr.gid);
    } catch (e) {
      return done(-(e as KdbusError).errno);
    }
    const files = new PidfdFiles(identity.tgid, this.isKdbus);
    if (this.memory.mode === 'process_vm') {
      const ctx: CallContext = {
        mem: new ProcessMemory(hdr.pid), files, installer: f.installer, pid: identity.tgid, tid: hdr.pid, creds: identity.creds, signal: abort,
      };
      let r;
      try {
        r = f.handle.ioctl(cmd, io.arg, ctx);
      } catch (e) {
        files.close();
        if (e instanceof ProcessMemoryDenied) {
          this.memory.mode = 'retry';
          logger.warn(`process_vm access to callers is refused (errno ${e.errno}); using the FUSE ioctl retry protocol, limited to ${IOCTL_MAX_BYTES} bytes per ioctl`);
          return this.retryIoctl(ch, hdr, f, io, new PidfdFiles(identity.tgid, this.isKdbus), identity.tgid, identity.creds, abort);
        }
        return done(-errnoOf(e));
      }
      if (!r) {
        files.close();
        // A SEND that completed another client's synchronous call resumed that call in a
        // promise continuation: its answer, which a caller waits on, goes out first.
        if (waitingSends > 0 && cmd === Cmd.SEND) afterContinuations(() => done(0));
        else done(0);
        return;
      }
      if (abort) waitingSends++;
      r.then(
        () => {
          if (abort) waitingSends--;
          files.close();
          done(0);
        },
        (e: unknown) => {
          if (abort) waitingSends--;
          files.close();
          done(-errnoOf(e));
        },
      );
      return;
    }
    this.retryIoctl(ch, hdr, f, io, files, identity.tgid, identity.creds, abort);
  }

  private retryIoctl(
    ch: CuseChannel, hdr: InHeader, f: CuseFile, io: IoctlIn, files: PidfdFiles, pid: number, creds: CallContext['creds'], signal: Interruptible | undefined,
  ): void {
    const key = `${io.fh}:${hdr.pid}:${io.cmd}:${io.arg}`;
    const state = io.inSize > 0 ? this.retries.get(key) : undefined;
    // The request's bytes are a view of the channel's buffer; a waiting command outlives it.
    const data = state ? Buffer.from(io.data) : io.data;
    const segments = [];
    let at = 0;
    for (const v of state?.ins ?? []) {
      segments.push({ address: v.base, data: data.subarray(at, at + v.len) });
      at += v.len;
    }
    const mem = new SegmentMemory(segments);
    const outs = structRanges(io.cmd, io.arg, mem);
    const installs = io.cmd === Cmd.RECV || io.cmd === Cmd.SEND;
    const finish = (result: number): void => {
      this.retries.delete(key);
      f.inFlight.delete(hdr.unique);
      if (installs) f.side?.commandDone(io.cmd === Cmd.RECV);
      files.close();
      ch.send(ioctlResultReply(hdr.unique, result, outData(outs, mem)));
    };
    const ctx: CallContext = { mem, files, installer: f.installer, pid, tid: hdr.pid, creds, signal };
    try {
      settle(f.handle.ioctl(io.cmd, io.arg, ctx), () => finish(0), (errno) => finish(-errno));
    } catch (e) {
      if (!(e instanceof NeedMemory)) return finish(-errnoOf(e));
      files.close();
      f.inFlight.delete(hdr.unique);
      const ins = [...(state?.ins ?? []), { base: e.address, len: e.length }];
      const inBytes = ins.reduce((n, v) => n + v.len, 0);
      const wantOuts = structRanges(io.cmd, io.arg, new SegmentMemory([...segments, { address: e.address, data: Buffer.alloc(e.length) }]));
      const outBytes = wantOuts.reduce((n, v) => n + v.len, 0);
      if (ins.length + wantOuts.length > IOCTL_MAX_IOV || inBytes > IOCTL_MAX_BYTES || outBytes > IOCTL_MAX_BYTES) {
        this.retries.delete(key);
        if (installs) f.side?.commandDone(io.cmd === Cmd.RECV);
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
  private attachToken(ch: CuseChannel, hdr: InHeader, f: CuseFile, io: IoctlIn): void {
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

/** Runs a command's result (sync or a promise) to an errno. */
function settle(r: void | Promise<void>, ok: () => void, err: (errno: number) => void): void {
  if (!r) {
    ok();
    return;
  }
  r.then(ok, (e: unknown) => err(errnoOf(e)));
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
