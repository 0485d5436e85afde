/**
 * A kdbus node served as a CUSE device (control, or an endpoint): FUSE requests become
 * Handle calls. Ioctls reach caller memory with process_vm_readv/writev when the daemon
 * may; otherwise through the FUSE ioctl retry protocol (ioctl-retry.ts), running the
 * command again each round until everything it reads has been copied in (commands change
 * nothing before they have read all they need).
 */
import { Cmd } from '../abi/constants';
import { Errno, KdbusError } from '../abi/errno';
import type { CallContext, Interruptible } from '../bus/caller';
import { Interruption } from '../bus/interruption';
import { openHandle, type KdbusNode } from '../bus/handle';
import { PidfdFiles, type KdbusFilePredicate } from '../os/pidfd-files';
import { ProcessMemory, ProcessMemoryDenied } from '../os/process-memory';
import { logger } from '../log/logger';
import { afterContinuations } from '../os/fd-watch';
import type { HeldBudget } from '../os/held-budget';
import { NeedMemory } from '../transport/segment-memory';
import { ATTACH_STRUCT_SIZE, KDBUS_CUSE_CMD_ATTACH, type AttachmentRegistry } from '../transport/attachments';
import type { ChannelHandler, CuseChannel } from './cuse-channel';
import { callerIdentity } from '../os/caller-identity';
import { CuseFile } from './cuse-file';
import { RetriedIoctl, type RetryAsk, type RetryRefusal } from './ioctl-retry';
import {
  IOCTL_MAX_BYTES, ioctlResultReply, ioctlRetryReply, Opcode, openReply, parseIoctlIn,
  pollNotify, pollReply, POLL_SCHEDULE_NOTIFY, readCounter, reply, type InHeader, type IoctlIn,
} from './fuse-abi';

/** How the transport reaches caller memory; switches to 'retry' once process_vm is refused. */
export interface MemoryMode {
  mode: 'process_vm' | 'retry';
  /** Caller memory the retry protocol has copied in for ioctls still going on, per user. */
  readonly copiedIn: HeldBudget;
}

/** Synchronous SENDs of all CUSE nodes that are waiting for their reply. */
let waitingSends = 0;

export class CuseNode implements ChannelHandler {
  private readonly files = new Map<number, CuseFile>();
  private nextFh = 1;
  private readonly retries = new Map<string, RetriedIoctl>();

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
      this.endRetries(fh);
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
    this.endRetries();
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
          logger.warn(`process_vm access to callers is refused (errno ${e.errno}); using the FUSE ioctl retry protocol (a round trip for each piece of caller memory an ioctl reads, up to ${IOCTL_MAX_BYTES} bytes each)`);
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
    let state = this.retries.get(key);
    // A first round copies nothing in; a later one brings what the last answer asked for.
    if (state && (io.inSize === 0 || !state.absorb(io.data))) {
      state.end();
      state = undefined;
    }
    if (!state) {
      state = new RetriedIoctl(io.fh, io.cmd, io.arg, this.memory.copiedIn.account(hdr.uid));
      this.retries.set(key, state);
    }
    const retried = state;
    const installs = io.cmd === Cmd.RECV || io.cmd === Cmd.SEND;
    const end = (): void => {
      this.retries.delete(key);
      retried.end();
      f.inFlight.delete(hdr.unique);
      if (installs) f.side?.commandDone(io.cmd === Cmd.RECV);
      files.close();
    };
    const answer = (next: RetryAsk | RetryRefusal): void => {
      if ('errno' in next) {
        end();
        logger.warn(`ioctl 0x${io.cmd.toString(16)} of pid ${hdr.pid} cannot go on through the FUSE retry protocol: ${next.why}` +
          (next.errno === 'EMSGSIZE' ? '; give the daemon ptrace-level access (CAP_SYS_PTRACE) to lift the limit' : ''));
        return ch.send(ioctlResultReply(hdr.unique, -Errno[next.errno]));
      }
      f.inFlight.delete(hdr.unique);
      files.close();
      ch.send(ioctlRetryReply(hdr.unique, next.ins, next.outs));
    };
    const mem = retried.memory();
    if (!mem) return answer(retried.nextPiece());
    const finish = (result: number): void => {
      end();
      ch.send(ioctlResultReply(hdr.unique, result, retried.result(mem)));
    };
    const ctx: CallContext = { mem, files, installer: f.installer, pid, tid: hdr.pid, creds, signal };
    try {
      settle(f.handle.ioctl(io.cmd, io.arg, ctx), () => finish(0), (errno) => finish(-errno));
    } catch (e) {
      if (!(e instanceof NeedMemory)) return finish(-errnoOf(e));
      logger.debug(`ioctl 0x${io.cmd.toString(16)} of pid ${hdr.pid}: needs ${e.length} bytes at 0x${e.address.toString(16)}, holds ${retried.bytes}`);
      answer(retried.askFor(e));
    }
  }

  /**
   * Drops the retry rounds of a file's ioctls, or of all: a caller killed between two rounds
   * never sends the next one, and what its ioctl copied in would stay held.
   */
  private endRetries(fh?: number): void {
    for (const [key, r] of this.retries) {
      if (fh !== undefined && r.fh !== fh) continue;
      r.end();
      this.retries.delete(key);
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
