/**
 * One client of the socket transport: one open kdbus file (docs/socket-protocol.md). It
 * turns OPEN into a Handle, runs IOCTLs on it with caller memory made of the client's
 * segments, passes files both ways, and keeps the socket readable exactly when the
 * connection would poll readable.
 */
import fs from 'node:fs';
import type net from 'node:net';
import { Attach, Cmd } from '../abi/constants';
import { Errno, KdbusError, fail } from '../abi/errno';
import type { CallContext, CallerFiles, Credentials, FileInstaller, ImportedFile, Opener } from '../bus/caller';
import type { Domain } from '../bus/domain';
import { openHandle, Poll, type Handle, type KdbusNode } from '../bus/handle';
import { readTask } from '../os/proc';
import { idMapped, inDaemonUserNamespace, readIdMap } from '../os/namespaces';
import { ImportedFd } from '../os/pidfd-files';
import { fcntl } from '../os/libc';
import { MemfdStorage } from '../os/memfd-storage';
import {
  closeFd, peerCred, recvWithFds, sendWithFds, setPassCred, socketpair,
  SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_SEQPACKET, type PeerCred,
} from '../os/unix-socket';
import { logger } from '../log/logger';
import type { Connection } from '../bus/connection';
import type { AttachmentRegistry, AttachTarget, SideChannel } from './attachments';
import { decodeSegments, encodeFrame, encodeSegments, FrameReader, FrameType, ProtocolError, type Frame } from './frames';
import { NeedMemory, SegmentMemory } from './segment-memory';
import { accessFor, MAY_EXEC, permitted } from './node-access';
import { busDirMode } from './placeholder-tree';

const CAP_DAC_OVERRIDE = 1n;
const CAP_IPC_OWNER = 15n;
const F_DUPFD_CLOEXEC = 1030;
const RESULT_POOL = 1;
const O_CLOEXEC = 0o2000000;

/** The opener as OPEN checks it (fresh, not cached: privilege is decided once per file). */
interface OpenerIdentity {
  creds: Credentials;
  privileged: boolean;
  /** CAP_DAC_OVERRIDE for a node with this owner and group (capable_wrt_inode_uidgid). */
  overrides(uid: number, gid: number): boolean;
}

/** The client's descriptors named in one IOCTL, received over the fd channel. */
class ReceivedFiles implements CallerFiles {
  constructor(private readonly numbers: readonly number[], private readonly fds: readonly number[]) {}

  get(fd: number): ImportedFile {
    const i = this.numbers.indexOf(fd);
    const local = i < 0 ? -1 : this.fds[i]!;
    if (local < 0) throw fail('EBADF', `fd ${fd} is not open in the caller`);
    const dup = fcntl(local, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) throw fail('ENOMEM', 'the daemon is out of file descriptors');
    return new ImportedFd(dup);
  }

  close(): void {
    for (const fd of this.fds) if (fd >= 0) closeFd(fd);
  }
}

/**
 * Gives installed files the numbers the client reserved. The files travel with RESULT,
 * after RECV may already have dropped the message that held them, so the installer keeps
 * duplicates until they are sent.
 */
class ReservedInstaller implements FileInstaller {
  sent: number[] = [];
  private next = 0;

  constructor(private readonly reserved: readonly number[]) {}

  /** A new attempt of the command: what the last one installed is void. */
  reset(): void {
    this.closeSent();
    this.next = 0;
  }

  closeSent(): void {
    for (const fd of this.sent) closeFd(fd);
    this.sent = [];
  }

  install(files: readonly ImportedFile[]): number[] {
    return files.map((f) => {
      if (this.next >= this.reserved.length || f.fd < 0) return -1;
      const dup = fcntl(f.fd, F_DUPFD_CLOEXEC, 0);
      if (dup < 0) return -1;
      this.sent.push(dup);
      return this.reserved[this.next++]!;
    });
  }
}

/** A list of i32 numbers: u32 count, u32 0, then the numbers. */
function numbersOf(b: Buffer, offset: number): number[] {
  if (b.length < offset + 8) return [];
  const n = Math.min(b.readUInt32LE(offset), 64);
  const out: number[] = [];
  for (let i = 0; i < n && offset + 8 + 4 * i + 4 <= b.length; i++) out.push(b.readInt32LE(offset + 8 + 4 * i));
  return out;
}

export class SocketSession {
  readonly peer: PeerCred;
  private readonly fd: number;
  private readonly reader = new FrameReader();
  private handle: Handle | undefined;
  private fdChannel = -1;
  private readonly fetches = new Map<bigint, (r: { errno: number; data: Buffer }) => void>();
  private readonly aborts = new Set<AbortController>();
  private readonly identities = new Map<string, Credentials>();
  private readonly out: Array<{ frame: Buffer; fds: number[]; after?: () => void }> = [];
  private flushing = false;
  private wakeOutstanding = false;
  /** A HUP the client has not read yet: like WAKE, re-sent after each RESULT while it holds. */
  private hupOutstanding = false;
  private stopWake: (() => void) | undefined;
  private closed = false;
  private lastPid = 0;
  private lastTid = 0;

  /** The CUSE handle this socket is the side channel of (ATTACH), if it is one. */
  private sideOf: AttachTarget | undefined;
  private readonly side: SideChannel = { install: (files) => this.installForCuse(files) };
  /** Numbers the shim reserved for files of its CUSE handle (ATTACH, RESERVE). */
  private readonly reserve: number[] = [];

  constructor(
    private readonly domain: Domain,
    private readonly socket: net.Socket,
    private readonly onClose: (s: SocketSession) => void,
    private readonly attachments: AttachmentRegistry,
  ) {
    this.fd = (socket as unknown as { _handle: { fd: number } })._handle.fd;
    this.peer = peerCred(this.fd);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('close', () => this.close());
    socket.on('error', (e) => logger.verbose(`${this.label}: socket error: ${e.message}`));
  }

  get label(): string {
    const conn = this.handle?.connection;
    return conn ? conn.label : `client pid ${this.peer.pid} uid ${this.peer.uid}`;
  }

  private onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.reader.push(chunk);
    } catch (e) {
      this.protocolError((e as Error).message);
      return;
    }
    for (const f of frames) {
      try {
        this.dispatch(f);
      } catch (e) {
        if (e instanceof ProtocolError) this.protocolError(e.message);
        else {
          logger.error(`${this.label}: internal error on frame type ${f.type}: ${(e as Error).stack}`);
          this.socket.destroy();
        }
        return;
      }
    }
  }

  private dispatch(f: Frame): void {
    switch (f.type) {
      case FrameType.OPEN:
        return this.open(f);
      case FrameType.IOCTL:
        return this.ioctl(f);
      case FrameType.MEM: {
        const resolve = this.fetches.get(f.seq);
        if (!resolve || f.payload.length < 8) throw new ProtocolError(`MEM for seq ${f.seq} that no FETCH asked for`);
        this.fetches.delete(f.seq);
        const len = f.payload.readUInt32LE(4);
        if (8 + len > f.payload.length) throw new ProtocolError('MEM data runs past the frame');
        resolve({ errno: f.payload.readInt32LE(0), data: Buffer.from(f.payload.subarray(8, 8 + len)) });
        return;
      }
      case FrameType.POOL:
        return this.sendPool(f.seq);
      case FrameType.CLOSE:
        return this.releaseNow(f.seq);
      case FrameType.ATTACH:
        return this.attach(f);
      case FrameType.RESERVE:
        if (!this.sideOf) throw new ProtocolError('RESERVE on a socket that is not a side channel');
        if (f.seq === 0n) {
          this.reserve.push(...numbersOf(f.payload, 0));
          return;
        }
        // Given right before an ioctl that may install files, among them the lowest free
        // number (kdbus installed there): used first. The shim waits for the answer.
        this.reserve.unshift(...numbersOf(f.payload, 0).sort((a, b) => a - b));
        this.sendResult(f.seq, 0, [], [], 0);
        return;
      default:
        throw new ProtocolError(`unknown frame type ${f.type}`);
    }
  }

  private protocolError(message: string): void {
    logger.warn(`${this.label}: protocol error, disconnecting: ${message}`);
    this.socket.destroy();
  }

  // --- identity --------------------------------------------------------------------------

  /**
   * Credentials of a process as /proc shows them, cached per (pid, real uid, real gid): the
   * kernel tells us those three with every request, so a changed identity is noticed.
   */
  private identity(pid: number, uid: number, gid: number): Credentials {
    const key = `${pid}:${uid}:${gid}`;
    let creds = this.identities.get(key);
    if (!creds) {
      const st = readTask(pid, pid, Attach.CREDS).status;
      if (!st) throw fail('ESRCH', `process ${pid} is gone`);
      creds = st.creds;
      if (this.identities.size > 64) this.identities.clear();
      this.identities.set(key, creds);
    }
    return creds;
  }

  /**
   * The opener's credentials and rights, read fresh. A capability bit in the status file
   * counts only in the namespace that holds it: kdbus privilege is CAP_IPC_OWNER in the
   * domain's user namespace (file_ns_capable), the daemon's here, so a process that is root
   * in a user namespace of its own is not privileged; CAP_DAC_OVERRIDE works there only on
   * nodes whose owner and group have ids inside (capable_wrt_inode_uidgid).
   */
  private openerIdentity(pid: number): OpenerIdentity {
    const st = readTask(pid, pid, Attach.CREDS).status;
    if (!st) throw fail('ESRCH', `process ${pid} is gone`);
    const cap = (n: bigint): boolean => ((st.caps.effective >> n) & 1n) === 1n;
    const dac = cap(CAP_DAC_OVERRIDE);
    if (inDaemonUserNamespace(pid)) {
      return { creds: st.creds, privileged: cap(CAP_IPC_OWNER), overrides: () => dac };
    }
    const uids = dac ? readIdMap(pid, 'uid') : undefined;
    const gids = dac ? readIdMap(pid, 'gid') : undefined;
    return {
      creds: st.creds,
      privileged: false,
      overrides: (uid, gid) => !!uids && !!gids && idMapped(uids, uid) && idMapped(gids, gid),
    };
  }

  // --- OPEN ------------------------------------------------------------------------------

  // --- side channel of a CUSE handle ----------------------------------------------------

  private attach(f: Frame): void {
    if (this.handle || this.sideOf) throw new ProtocolError('ATTACH on a socket that is already in use');
    if (f.payload.length < 16) throw new ProtocolError('ATTACH frame too short');
    const target = this.attachments.claim(Buffer.from(f.payload.subarray(0, 16)));
    if (!target) {
      this.sendResult(f.seq, Errno.EPERM, [], [], 0);
      return;
    }
    this.sideOf = target;
    this.reserve.push(...numbersOf(f.payload, 16));
    target.attach(this.side);
    this.sendResult(f.seq, 0, [], [], 0);
  }

  /** Files a CUSE RECV installs: numbers from the reserve, the files sent right away. */
  private installForCuse(files: readonly ImportedFile[]): number[] {
    const numbers: number[] = [];
    const fds: number[] = [];
    for (const file of files) {
      const dup = this.reserve.length > 0 && file.fd >= 0 ? fcntl(file.fd, F_DUPFD_CLOEXEC, 0) : -1;
      if (dup < 0) {
        numbers.push(-1);
        continue;
      }
      const n = this.reserve.shift()!;
      numbers.push(n);
      fds.push(dup);
    }
    if (fds.length > 0) {
      const p = Buffer.alloc(8 + 4 * numbers.length);
      p.writeUInt32LE(fds.length, 0);
      let k = 0;
      for (const n of numbers) if (n >= 0) p.writeInt32LE(n, 8 + 4 * k++);
      this.enqueue(encodeFrame(FrameType.INSTALL, 0n, p), fds, () => fds.forEach(closeFd));
    }
    return numbers;
  }

  private resolve(rel: string, id: OpenerIdentity, openFlags: number): KdbusNode {
    if (rel === 'control') {
      if (!permitted(id.creds, id.overrides(0, 0), { mode: 0o666, uid: 0, gid: 0 }, accessFor(openFlags))) {
        throw fail('EACCES', 'control node: permission denied');
      }
      return { kind: 'control', domain: this.domain };
    }
    const parts = rel.split('/');
    const bus = parts.length === 2 ? this.domain.buses.get(parts[0]!) : undefined;
    if (!bus) throw fail('ENOENT', `no kdbus node "${rel}"`);
    if (!permitted(id.creds, id.overrides(bus.uid, bus.gid), { mode: busDirMode(bus), uid: bus.uid, gid: bus.gid }, MAY_EXEC)) {
      throw fail('EACCES', `${bus.name}: permission denied`);
    }
    const ep = bus.endpoints.get(parts[1]!);
    if (!ep) throw fail('ENOENT', `no kdbus node "${rel}"`);
    if (!permitted(id.creds, id.overrides(ep.uid, ep.gid), { mode: ep.mode, uid: ep.uid, gid: ep.gid }, accessFor(openFlags))) {
      throw fail('EACCES', `${ep.path}: permission denied`);
    }
    return { kind: 'endpoint', ep };
  }

  private open(f: Frame): void {
    if (this.handle) throw new ProtocolError('OPEN on a socket that is already open');
    const p = f.payload;
    if (p.length < 16) throw new ProtocolError('OPEN frame too short');
    const flags = p.readUInt32LE(0);
    const pathLen = p.readUInt32LE(8);
    if (16 + pathLen > p.length) throw new ProtocolError('OPEN path runs past the frame');
    const rel = p.toString('latin1', 16, 16 + pathLen);
    let errno = 0;
    let shimEnd = -1;
    try {
      const id = this.openerIdentity(this.peer.pid);
      const node = this.resolve(rel, id, flags);
      const opener: Opener = { creds: id.creds, privileged: id.privileged, pid: this.peer.pid };
      this.handle = openHandle(node, opener);
      const [daemonEnd, otherEnd] = socketpair(SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC);
      setPassCred(daemonEnd);
      this.fdChannel = daemonEnd;
      shimEnd = otherEnd;
      logger.debug(`${this.label}: opened ${rel}`);
    } catch (e) {
      if (!(e instanceof KdbusError)) throw e;
      errno = e.errno;
      logger.verbose(`${this.label}: open ${rel}: ${e.message}`);
    }
    this.sendResult(f.seq, errno, [], shimEnd >= 0 ? [shimEnd] : [], 0, () => {
      if (shimEnd >= 0) closeFd(shimEnd);
    });
  }

  // --- IOCTL -----------------------------------------------------------------------------

  private ioctl(f: Frame): void {
    const handle = this.handle;
    if (!handle) throw new ProtocolError('IOCTL before OPEN');
    const p = f.payload;
    if (p.length < 32) throw new ProtocolError('IOCTL frame too short');
    const cmd = p.readUInt32LE(0);
    const tid = p.readUInt32LE(4);
    const arg = p.readBigUInt64LE(8);
    const nSeg = p.readUInt32LE(16);
    const nFds = p.readUInt32LE(20);
    const nRes = p.readUInt32LE(24);
    if (nFds > 64 || nRes > 64) throw new ProtocolError(`IOCTL announces ${nFds} fds and ${nRes} reserved numbers (64 at most)`);
    const listEnd = 32 + ((4 * (nFds + nRes) + 7) & ~7);
    if (listEnd > p.length) throw new ProtocolError('IOCTL fd lists run past the frame');
    const numbers: number[] = [];
    for (let i = 0; i < nFds; i++) numbers.push(p.readInt32LE(32 + 4 * i));
    const reserved: number[] = [];
    for (let i = 0; i < nRes; i++) reserved.push(p.readInt32LE(32 + 4 * (nFds + i)));
    const { segments } = decodeSegments(p, listEnd, nSeg);

    const msg = recvWithFds(this.fdChannel, 8);
    if (!msg || !msg.cred) throw new ProtocolError('IOCTL without its message on the fd channel');
    const expected = numbers.filter((n) => n >= 0).length;
    if (msg.fds.length !== expected || msg.truncated) {
      for (const fd of msg.fds) closeFd(fd);
      throw new ProtocolError(`IOCTL announced ${expected} fds, the fd channel carried ${msg.fds.length}`);
    }
    let k = 0;
    const received = numbers.map((n) => (n >= 0 ? msg.fds[k++]! : -1));
    const files = new ReceivedFiles(numbers, received);
    void this.runIoctl(f.seq, handle, cmd, arg, tid, msg.cred, segments, files, reserved).finally(() => files.close());
  }

  private async runIoctl(
    seq: bigint, handle: Handle, cmd: number, arg: bigint, tid: number, cred: PeerCred,
    segments: ReturnType<typeof decodeSegments>['segments'], files: ReceivedFiles, reserved: number[],
  ): Promise<void> {
    const mem = new SegmentMemory(segments);
    const installer = new ReservedInstaller(reserved);
    // Only a synchronous SEND waits, so only it can be interrupted by the socket closing.
    const abort = cmd === Cmd.SEND ? new AbortController() : undefined;
    if (abort) this.aborts.add(abort);
    let errno = 0;
    try {
      const creds = this.identity(cred.pid, cred.uid, cred.gid);
      const ctx: CallContext = { mem, files, installer, pid: cred.pid, tid: this.verifiedTid(cred.pid, tid), creds };
      if (abort) ctx.signal = abort.signal;
      for (;;) {
        mem.resetWrites();
        installer.reset();
        let pending: void | Promise<void>;
        try {
          pending = handle.ioctl(cmd, arg, ctx);
        } catch (e) {
          if (e instanceof NeedMemory) {
            const r = await this.fetch(seq, e.address, e.length);
            if (r.errno !== 0 || r.data.length !== e.length) mem.addFault(e.address, e.length);
            else mem.add(e.address, r.data);
            continue;
          }
          throw e;
        }
        if (pending) await pending;
        break;
      }
    } catch (e) {
      if (e instanceof KdbusError) errno = e.errno;
      else if (e instanceof NeedMemory) errno = Errno.EFAULT;
      else if (this.closed) return;
      else {
        logger.error(`${this.label}: ioctl 0x${cmd.toString(16)} failed unexpectedly: ${(e as Error).stack}`);
        errno = Errno.EIO;
      }
    } finally {
      if (abort) this.aborts.delete(abort);
    }
    if (this.closed) {
      installer.closeSent();
      return;
    }
    let flags = 0;
    const fds = [...installer.sent];
    let poolFd = -1;
    if (cmd === Cmd.HELLO && errno === 0 && handle.connection) {
      poolFd = this.openPoolReadOnly(handle.connection);
      if (poolFd >= 0) {
        flags |= RESULT_POOL;
        fds.unshift(poolFd);
      }
      this.stopWake = handle.onWake(() => this.maybeWake());
    }
    this.sendResult(seq, errno, mem.writes, fds, flags, () => {
      if (poolFd >= 0) closeFd(poolFd);
      installer.closeSent();
    });
  }

  /**
   * The thread the frame names, if it belongs to the process the kernel vouched for; else
   * that process. The last verified pair is remembered: a client issues its ioctls from the
   * same thread, and checking /proc each time was a noticeable share of an ioctl.
   */
  private verifiedTid(pid: number, tid: number): number {
    if (tid <= 0) return pid;
    if (pid === this.lastPid && tid === this.lastTid) return tid;
    if (!fs.existsSync(`/proc/${pid}/task/${tid}`)) return pid;
    this.lastPid = pid;
    this.lastTid = tid;
    return tid;
  }

  private fetch(seq: bigint, address: bigint, length: number): Promise<{ errno: number; data: Buffer }> {
    return new Promise((resolve) => {
      this.fetches.set(seq, resolve);
      const p = Buffer.alloc(16);
      p.writeBigUInt64LE(address, 0);
      p.writeUInt32LE(length, 8);
      this.enqueue(encodeFrame(FrameType.FETCH, seq, p), []);
    });
  }

  private openPoolReadOnly(conn: Connection): number {
    const storage = conn.pool.storage;
    if (!(storage instanceof MemfdStorage)) return -1;
    return fs.openSync(`/proc/self/fd/${storage.fd}`, fs.constants.O_RDONLY | O_CLOEXEC);
  }

  private sendPool(seq: bigint): void {
    const conn = this.handle?.connection ?? this.sideOf?.connection();
    const poolFd = conn ? this.openPoolReadOnly(conn) : -1;
    this.sendResult(seq, poolFd >= 0 ? 0 : Errno.EBADFD, [], poolFd >= 0 ? [poolFd] : [], poolFd >= 0 ? RESULT_POOL : 0, () => {
      if (poolFd >= 0) closeFd(poolFd);
    });
  }

  private sendResult(seq: bigint, errno: number, writes: SegmentMemory['writes'], fds: number[], flags: number, after?: () => void): void {
    const head = Buffer.alloc(16);
    head.writeInt32LE(errno, 0);
    head.writeUInt32LE(writes.length, 4);
    head.writeUInt32LE(fds.length - (flags & RESULT_POOL ? 1 : 0), 8);
    head.writeUInt32LE(flags, 12);
    const frame = encodeFrame(FrameType.RESULT, seq, Buffer.concat([head, encodeSegments(writes)]));
    this.wakeOutstanding = false;
    this.hupOutstanding = false;
    this.enqueue(frame, fds, after);
    this.maybeWake();
  }

  /** CLOSE: the client's last reference is going; release before it returns from close(). */
  private releaseNow(seq: bigint): void {
    this.stopWake?.();
    this.stopWake = undefined;
    this.handle?.release();
    this.sendResult(seq, 0, [], [], 0);
  }

  // --- poll ------------------------------------------------------------------------------

  private maybeWake(): void {
    const handle = this.handle;
    if (this.closed || !handle?.connection) return;
    const mask = handle.poll();
    if (mask & Poll.HUP) {
      if (!this.hupOutstanding) {
        this.hupOutstanding = true;
        this.enqueue(encodeFrame(FrameType.HUP, 0n), []);
      }
    } else if (mask & Poll.IN && !this.wakeOutstanding) {
      this.wakeOutstanding = true;
      this.enqueue(encodeFrame(FrameType.WAKE, 0n), []);
    }
  }

  // --- output ----------------------------------------------------------------------------

  /**
   * Frames go out in order. Libuv writes those without descriptors; frames with descriptors
   * go out by sendmsg once libuv's queue is empty, so the two never interleave.
   */
  private enqueue(frame: Buffer, fds: number[], after?: () => void): void {
    this.out.push({ frame, fds, after });
    this.flush();
  }

  private flush(): void {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.out.length > 0 && !this.closed) {
        const item = this.out[0]!;
        if (item.fds.length === 0) {
          this.socket.write(item.frame);
        } else {
          if (this.socket.writableLength > 0) {
            this.socket.once('drain', () => this.flush());
            return;
          }
          const n = sendWithFds(this.fd, item.frame, item.fds);
          if (n < 0) {
            setTimeout(() => this.flush(), 1);
            return;
          }
          if (n < item.frame.length) this.socket.write(item.frame.subarray(n));
        }
        this.out.shift();
        item.after?.();
      }
    } catch (e) {
      logger.warn(`${this.label}: sending to the client failed: ${(e as Error).message}`);
      this.socket.destroy();
    } finally {
      this.flushing = false;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const a of this.aborts) a.abort();
    for (const item of this.out.splice(0)) item.after?.();
    this.stopWake?.();
    this.sideOf?.detach(this.side);
    this.sideOf = undefined;
    this.handle?.release();
    this.handle = undefined;
    if (this.fdChannel >= 0) closeFd(this.fdChannel);
    this.fdChannel = -1;
    this.socket.destroy();
    this.onClose(this);
  }
}
