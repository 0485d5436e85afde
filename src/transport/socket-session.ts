/**
 * One client of the socket transport: one open kdbus file (docs/socket-protocol.md). It
 * turns OPEN into a Handle, runs IOCTLs on it with caller memory made of the client's
 * segments, passes files both ways, and keeps the socket readable exactly when the
 * connection would poll readable.
 */
import fs from 'node:fs';
import type net from 'node:net';
import { Attach, Cmd } from '../abi/constants';
import { Errno, errnoName, KdbusError, fail } from '../abi/errno';
import type { CallContext, Credentials, ImportedFile, Opener } from '../bus/caller';
import type { Domain } from '../bus/domain';
import { openHandle, Poll, type Handle, type KdbusNode } from '../bus/handle';
import { Interruption } from '../bus/interruption';
import { readTask } from '../os/proc';
import { idMapped, inDaemonUserNamespace, readIdMap } from '../os/namespaces';
import type { HeldAccount, HeldBudget } from '../os/held-budget';
import { F_DUPFD_CLOEXEC, fcntl } from '../os/libc';
import { MemfdStorage } from '../os/memfd-storage';
import { closeFd, peerCred, setPassCred, SyscallError, type PeerCred } from '../os/unix-socket';
import { afterContinuations, FdWatch, pollFailure, UV_READABLE } from '../os/fd-watch';
import { logger } from '../log/logger';
import type { Connection } from '../bus/connection';
import type { QueueEntry } from '../bus/queue';
import { takeEntry } from '../bus/recv';
import { putU32, putU64 } from '../abi/words';
import type { AttachmentRegistry, AttachTarget, SideChannel } from './attachments';
import {
  decodeSegments, encodeFrame, FRAME_HEADER, FrameReader, FrameType, OPEN_FEATURE_HEADS, ProtocolError, type Frame, type Segment,
} from './frames';
import { ClientSocket, MAX_FDS_PER_READ } from './client-socket';
import { ReadinessEventfd } from './readiness-eventfd';
import { IoctlContext, ReceivedFiles, ReservedInstaller } from './ioctl-context';
import { NeedMemory, SegmentMemory } from './segment-memory';
import { accessFor, MAY_EXEC, permitted } from './node-access';
import { busDirMode } from './placeholder-tree';

const CAP_DAC_OVERRIDE = 1n;
const CAP_IPC_OWNER = 15n;
/** RESULT flags: the first descriptor is the pool; WAKE and HUP follow the connection exactly (Poll). */
const RESULT_POOL = 1;
const RESULT_EXACT_WAKES = 2;
const O_CLOEXEC = 0o2000000;

/** The opener as OPEN checks it (fresh, not cached: privilege is decided once per file). */
interface OpenerIdentity {
  creds: Credentials;
  privileged: boolean;
  /** CAP_DAC_OVERRIDE for a node with this owner and group (capable_wrt_inode_uidgid). */
  overrides(uid: number, gid: number): boolean;
}

/** A list of i32 numbers: u32 count, u32 0, then the numbers. */
function numbersOf(b: Buffer, offset: number): number[] {
  if (b.length < offset + 8) return [];
  const n = Math.min(b.readUInt32LE(offset), 64);
  const out: number[] = [];
  for (let i = 0; i < n && offset + 8 + 4 * i + 4 <= b.length; i++) out.push(b.readInt32LE(offset + 8 + 4 * i));
  return out;
}

/** errno, n_writes, n_fds, flags. */
const RESULT_HEAD = 16;
/** RESERVE's list flag: the numbers are for the next command of the handle alone. */
const RESERVE_TRANSIENT = 1;
const NO_FDS: readonly number[] = [];
/** READY eventfds one side channel keeps: one per process sharing it that waits in epoll. */
const MAX_READINESS_FDS = 8;
const WAKE_FRAME = encodeFrame(FrameType.WAKE, 0n);
const HUP_FRAME = encodeFrame(FrameType.HUP, 0n);
const EMPTY_FRAME = encodeFrame(FrameType.EMPTY, 0n);
/** A HEAD frame: the header (seq: RECVs taken so far), the entry's offset, size and flags. */
const HEAD_FRAME_SIZE = FRAME_HEADER + 24;
/** HEAD flag: the entry is the only one queued. */
const HEAD_LAST = 1;

/**
 * Answers are encoded here and sent right away; only what the socket does not take at once
 * is copied out (into the session's queue).
 */
let scratch = Buffer.allocUnsafe(16 * 1024);

/** Bytes the socket did not take yet, with the descriptors that go with their first byte. */
interface Pending {
  data: Buffer;
  fds: readonly number[];
  after: (() => void) | undefined;
}

/**
 * The daemon's descriptors one session takes: Node's socket and the duplicate the session
 * reads, and the pool's memfd once the client is a connection. kdbus charged an open file to
 * the client's own descriptor limit; here they come out of the daemon's, which all users
 * share, so each user gets a share of them (held-budget.ts).
 */
export const SESSION_DESCRIPTORS = 3;

/** A client refused at accept: its user's sessions already take their share of descriptors. */
export class SessionRefused extends Error {
  constructor(readonly uid: number, reason: string) {
    super(reason);
  }
}

/** How long to wait before trying a full socket again, at first and at most. */
const RETRY_MS = 1;
const RETRY_MAX_MS = 50;

const pad8 = (n: number): number => (n + 7) & ~7;

/** Commands of all sessions that are waiting (a synchronous SEND) or fetching memory. */
let waitingCommands = 0;
/** Sessions with answers held back, flushed together once this turn's continuations have run. */
const deferredSessions: SocketSession[] = [];
let flushQueued = false;

function flushDeferred(): void {
  flushQueued = false;
  for (const s of deferredSessions.splice(0)) s.flushDeferred();
}

export class SocketSession {
  readonly peer: PeerCred;
  /** The daemon's own descriptor of the socket, read and written directly. */
  private readonly fd: number;
  private readonly io: ClientSocket;
  private readonly watch: FdWatch;
  private readonly reader = new FrameReader();
  /** Descriptors that came with frames not dispatched yet, in order of arrival. */
  private readonly inFds: number[] = [];
  /** inFds, and a large frame still arriving, as counted with the other sessions' (held-budget.ts). */
  private readonly heldFds: HeldAccount;
  private readonly heldBytes: HeldAccount;
  /** The daemon's own descriptors this session costs, counted with the user's other sessions. */
  private readonly files: HeldAccount;
  private handle: Handle | undefined;
  private readonly fetches = new Map<bigint, (r: { errno: number; data: Buffer }) => void>();
  /** The caller memory of commands that wait or fetch: it stays in the daemon until they end. */
  private readonly inProgress = new Set<SegmentMemory>();
  private readonly aborts = new Set<Interruption>();
  private readonly identities = new Map<string, Credentials>();
  private lastIdentity: { pid: number; uid: number; gid: number; creds: Credentials } | undefined;
  private readonly out: Pending[] = [];
  private retry: NodeJS.Timeout | undefined;
  private retryMs = RETRY_MS;
  /** Frames are not read while answers wait for room in the socket (pauseReading). */
  private readPaused = false;
  private wakeOutstanding = false;
  /** A HUP the client has not read yet: like WAKE, re-sent after each RESULT while it holds. */
  private hupOutstanding = false;
  private stopWake: (() => void) | undefined;
  private closed = false;
  /** A FREE sent with seq 0 failed here before: the next ones are not worth a warning each. */
  private unansweredFailed = false;
  /** OPEN said the shim takes HEAD frames: the readiness it is sent names the queue's head. */
  private heads = false;
  /** RECV IOCTLs read from this socket; a HEAD counts them so the shim can tell a stale one. */
  private recvCount = 0;
  /** The entry the last HEAD named while no RECV has come since, and that HEAD's count. */
  private announced: QueueEntry | undefined;
  private announcedCount = 0;
  /** A bare WAKE went out after that HEAD: the shim no longer uses it. */
  private headWithdrawn = false;
  /** That HEAD said its entry was the only one queued. */
  private announcedLast = false;
  private readonly headFrame = Buffer.alloc(HEAD_FRAME_SIZE);
  private lastPid = 0;
  private lastTid = 0;

  /** The CUSE handle this socket is the side channel of (ATTACH), if it is one. */
  private sideOf: AttachTarget | undefined;
  /** On a side channel that follows the queue: the eventfds the shim polls for the handle (READY). */
  private readonly readiness: ReadinessEventfd[] = [];
  private readonly side: SideChannel = {
    install: (files) => this.installForCuse(files),
    catchUp: () => this.readPending(),
    // The lowest free numbers were offered for that one command (catchUp read the offer);
    // the shim frees what is left.
    commandDone: (recv) => {
      this.transient = [];
      if (recv && this.heads) {
        this.unpin();
        this.recvCount++;
        this.afterRecv();
      } else {
        this.maybeEmpty();
      }
    },
  };
  /** Answers held back until this loop turn's promise continuations have run (defer()). */
  private deferred: Array<() => void> | undefined;
  /** Numbers the shim reserved for files of its CUSE handle (ATTACH, RESERVE). */
  private readonly reserve: number[] = [];
  /** The lowest free numbers of the client, offered for the next command alone: used first. */
  private transient: number[] = [];

  /**
   * Takes over the client's socket from Node, which accepted it paused: the session reads
   * and writes a duplicate of it directly (Node streams give neither credentials nor
   * descriptors), and destroys `socket` when it ends.
   */
  constructor(
    private readonly domain: Domain,
    private readonly socket: net.Socket,
    private readonly onClose: (s: SocketSession) => void,
    private readonly attachments: AttachmentRegistry,
    held: { fds: HeldBudget; bytes: HeldBudget; files: HeldBudget },
  ) {
    const fd = fcntl((socket as unknown as { _handle: { fd: number } })._handle.fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) throw new Error('cannot duplicate the client socket: the daemon is out of file descriptors');
    let files: HeldAccount | undefined;
    try {
      this.peer = peerCred(fd);
      files = held.files.account(this.peer.uid);
      if (!files.hold(SESSION_DESCRIPTORS)) throw new SessionRefused(this.peer.uid, files.refusal);
      this.files = files;
      this.heldFds = held.fds.account(this.peer.uid);
      this.heldBytes = held.bytes.account(this.peer.uid);
      // Every read then says which process wrote its bytes; the kernel never mixes writers in one read.
      setPassCred(fd);
      this.io = new ClientSocket(fd);
      this.watch = new FdWatch(fd, (status) => this.onReadable(status));
    } catch (e) {
      files?.hold(0);
      closeFd(fd);
      throw e;
    }
    this.fd = fd;
    socket.on('error', (e) => logger.verbose(`${this.label}: socket error: ${e.message}`));
  }

  get label(): string {
    const conn = this.handle?.connection;
    return conn ? conn.label : `client pid ${this.peer.pid} uid ${this.peer.uid}`;
  }

  /** Reads what the client sent and runs each frame as soon as it is complete. */
  private onReadable(status: number, untilEmpty = false): void {
    if (this.readPaused) return;
    if (status < 0) {
      logger.verbose(`${this.label}: connection closed: ${pollFailure(status)}`);
      this.close();
      return;
    }
    const reader = this.reader;
    const io = this.io;
    let frame: Frame | undefined;
    try {
      while (!this.closed) {
        reader.prepare();
        const n = io.recv(reader.target, reader.targetOffset, reader.targetLength);
        if (n < 0) break;
        if (n === 0) {
          this.close();
          break;
        }
        for (const fd of io.fds) this.inFds.push(fd);
        if (io.truncated) throw new ProtocolError(`more than ${MAX_FDS_PER_READ} descriptors came with one frame`);
        // Those of a frame still arriving and of the next at most: a read ends after the
        // bytes that brought descriptors.
        if (this.inFds.length > 2 * MAX_FDS_PER_READ) throw new ProtocolError(`${this.inFds.length} descriptors wait for frames that have not arrived`);
        if (!this.heldFds.hold(this.inFds.length)) throw new ProtocolError(this.heldFds.refusal);
        reader.received(n, io.pid, io.uid, io.gid);
        for (frame = reader.next(); frame && !this.closed; frame = reader.next()) {
          this.dispatch(frame);
          // An IOCTL gives its buffer back when its command is done.
          if (frame.own && frame.type !== FrameType.IOCTL) FrameReader.recycle(frame.own);
        }
        frame = undefined;
        if (!this.heldBytes.hold(this.bytesHeld())) throw new ProtocolError(this.heldBytes.refusal);
        if (this.inFds.length > 0 && !reader.partial) throw new ProtocolError(`${this.inFds.length} descriptors came with no frame that announced them`);
        if (this.out.length > 0) {
          this.pauseReading();
          break;
        }
        // A read that did not fill the buffer most likely took all there was; if not, the
        // watch calls again, which costs less than a read that finds nothing each time.
        if (n < reader.targetLength && !untilEmpty) break;
      }
    } catch (e) {
      if (e instanceof ProtocolError) this.protocolError(e.message);
      else if (e instanceof SyscallError && !frame) {
        logger.verbose(`${this.label}: ${e.message}`);
        this.close();
      } else {
        logger.error(`${this.label}: internal error${frame ? ` on frame type ${frame.type}` : ''}: ${(e as Error).stack}`);
        this.close();
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
      case FrameType.READY:
        return this.takeReadiness(f);
      case FrameType.RESERVE:
        if (!this.sideOf) throw new ProtocolError('RESERVE on a socket that is not a side channel');
        if (f.payload.length >= 8 && f.payload.readUInt32LE(4) & RESERVE_TRANSIENT) {
          // Sent right before an ioctl that may install files: the lowest free numbers
          // (kdbus installed there), for that ioctl alone.
          this.transient = numbersOf(f.payload, 0).sort((a, b) => a - b);
          return;
        }
        this.reserve.push(...numbersOf(f.payload, 0));
        if (f.seq !== 0n) this.sendResult(f.seq, 0, [], NO_FDS, 0);
        return;
      default:
        throw new ProtocolError(`unknown frame type ${f.type}`);
    }
  }

  private protocolError(message: string): void {
    logger.warn(`${this.label}: protocol error, disconnecting: ${message}`);
    this.close();
  }

  // --- identity --------------------------------------------------------------------------

  /**
   * Credentials of a process as /proc shows them, cached per (pid, real uid, real gid): the
   * kernel tells us those three with every request, so a changed identity is noticed.
   */
  private identity(pid: number, uid: number, gid: number): Credentials {
    const last = this.lastIdentity;
    if (last && last.pid === pid && last.uid === uid && last.gid === gid) return last.creds;
    const key = `${pid}:${uid}:${gid}`;
    let creds = this.identities.get(key);
    if (!creds) {
      const st = readTask(pid, pid, Attach.CREDS).status;
      if (!st) throw fail('ESRCH', `process ${pid} is gone`);
      creds = st.creds;
      if (this.identities.size > 64) this.identities.clear();
      this.identities.set(key, creds);
    }
    this.lastIdentity = { pid, uid, gid, creds };
    return creds;
  }
  /**
   * Who sent an IOCTL. A FREE the shim answered itself may be read after its sender exited
   * (a side channel is read when the handle next acts); it needs no credentials, so the ids
   * the kernel vouched for stand in for those /proc no longer has.
   */
  private senderIdentity(seq: bigint, sender: Frame): Credentials {
    try {
      return this.identity(sender.pid, sender.uid, sender.gid);
    } catch (e) {
      if (seq !== 0n || !(e instanceof KdbusError) || e.errno !== Errno.ESRCH) throw e;
      const { uid, gid } = sender;
      return { uid, euid: uid, suid: uid, fsuid: uid, gid, egid: gid, sgid: gid, fsgid: gid, groups: [] };
    }
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
      this.sendResult(f.seq, Errno.EPERM, [], NO_FDS, 0);
      return;
    }
    this.sideOf = target;
    this.reserve.push(...numbersOf(f.payload, 16));
    // The list's second word is the features word of OPEN.
    const features = f.payload.length >= 24 ? f.payload.readUInt32LE(20) : 0;
    target.attach(this.side);
    // The shim may answer RECV on an empty queue, RECV of a message a HEAD named, and FREE
    // itself when the side channel tells it the queue's state exactly (CUSE clients); a
    // policy holder has no queue.
    const conn = target.handle.connection;
    const exact = conn !== undefined && !conn.isPolicyHolder;
    this.heads = exact && (features & OPEN_FEATURE_HEADS) !== 0;
    if (exact) {
      this.stopWake = target.handle.onWake(() => {
        this.maybeWake();
        // After the frame, so a shim that empties the eventfd and then reads the channel finds it.
        this.updateReadiness(true);
      });
    }
    this.sendResult(f.seq, 0, [], NO_FDS, exact ? RESULT_EXACT_WAKES : 0);
    // The shim takes the queue for empty from that RESULT on, until a WAKE says otherwise.
    if (exact) this.maybeWake();
  }

  /**
   * READY: an eventfd that stands for the CUSE handle in the program's epoll sets, kept to
   * its readiness from now on (readiness-eventfd.ts). Only a channel that follows the queue
   * can keep one. Each process sharing the channel (fork) brings its own, up to a few.
   */
  private takeReadiness(f: Frame): void {
    if (!this.sideOf) throw new ProtocolError('READY on a socket that is not a side channel');
    const fd = this.inFds.shift();
    this.heldFds.hold(this.inFds.length);
    if (fd === undefined) throw new ProtocolError('READY came without its eventfd');
    // A side channel follows its handle's wake-ups (stopWake) exactly when it follows the queue.
    const follows = this.stopWake !== undefined;
    let errno = 0;
    if (!follows || this.readiness.length >= MAX_READINESS_FDS) {
      closeFd(fd);
      errno = follows ? Errno.EMFILE : Errno.EOPNOTSUPP;
    } else {
      const readiness = ReadinessEventfd.adopt(fd);
      if (readiness) {
        this.readiness.push(readiness);
        readiness.update(this.servedReady(), false);
      } else {
        errno = Errno.EBADF;
      }
    }
    this.sendResult(f.seq, errno, [], NO_FDS, 0);
  }

  /**
   * Everything the client sent that is not read yet (before a command of the CUSE handle: its
   * FREEs and offers of numbers). Reads until the socket is empty: one read stops where the
   * writer changes (forked processes share a side channel).
   */
  private readPending(): void {
    if (!this.closed) this.onReadable(0, true);
  }

  /** Files a CUSE RECV installs: numbers from the reserve, the files sent right away. */
  private installForCuse(files: readonly ImportedFile[]): number[] {
    const numbers: number[] = [];
    const fds: number[] = [];
    for (const file of files) {
      const dup = this.transient.length + this.reserve.length > 0 && file.fd >= 0 ? fcntl(file.fd, F_DUPFD_CLOEXEC, 0) : -1;
      if (dup < 0) {
        numbers.push(-1);
        continue;
      }
      const n = this.transient.length > 0 ? this.transient.shift()! : this.reserve.shift()!;
      numbers.push(n);
      fds.push(dup);
    }
    if (fds.length > 0) {
      const p = Buffer.alloc(8 + 4 * numbers.length);
      p.writeUInt32LE(fds.length, 0);
      let k = 0;
      for (const n of numbers) if (n >= 0) p.writeInt32LE(n, 8 + 4 * k++);
      const frame = encodeFrame(FrameType.INSTALL, 0n, p);
      this.send(frame, frame.length, fds, () => fds.forEach(closeFd));
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
    this.heads = (p.readUInt32LE(12) & OPEN_FEATURE_HEADS) !== 0;
    if (16 + pathLen > p.length) throw new ProtocolError('OPEN path runs past the frame');
    const rel = p.toString('latin1', 16, 16 + pathLen);
    let errno = 0;
    try {
      const id = this.openerIdentity(this.peer.pid);
      const node = this.resolve(rel, id, flags);
      const opener: Opener = { creds: id.creds, privileged: id.privileged, pid: this.peer.pid };
      this.handle = openHandle(node, opener);
      logger.debug(`${this.label}: opened ${rel}`);
    } catch (e) {
      if (!(e instanceof KdbusError)) throw e;
      errno = e.errno;
      logger.verbose(`${this.label}: open ${rel}: ${e.message}`);
    }
    this.sendResult(f.seq, errno, [], NO_FDS, 0);
  }

  // --- IOCTL -----------------------------------------------------------------------------

  private ioctl(f: Frame): void {
    const handle = this.served;
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
    if (this.sideOf && (!(cmd === Cmd.FREE || (cmd === Cmd.RECV && this.heads)) || f.seq !== 0n || nFds + nRes > 0)) {
      throw new ProtocolError('a side channel carries no IOCTL but an unanswered FREE, or RECV after a HEAD');
    }
    if (cmd === Cmd.RECV) {
      // Any RECV ends what the last HEAD promised: the shim forgot it when it sent this one.
      const announced = this.announced;
      const announcedNow = announced !== undefined && this.announcedCount === this.recvCount;
      this.unpin();
      this.recvCount++;
      if (f.seq === 0n) {
        if (!announcedNow) throw new ProtocolError('a RECV the shim answered itself, with no HEAD that allowed it');
        this.takeAnnounced(handle, announced);
        if (f.own) FrameReader.recycle(f.own);
        return;
      }
    } else if (f.seq === 0n && cmd !== Cmd.FREE) {
      throw new ProtocolError(`an IOCTL the shim answered itself (seq 0) is a FREE or a RECV, not 0x${cmd.toString(16)}`);
    }
    const listEnd = 32 + ((4 * (nFds + nRes) + 7) & ~7);
    if (listEnd > p.length) throw new ProtocolError('IOCTL fd lists run past the frame');
    const numbers: number[] = [];
    let expected = 0;
    for (let i = 0; i < nFds; i++) {
      const n = p.readInt32LE(32 + 4 * i);
      numbers.push(n);
      if (n >= 0) expected++;
    }
    const reserved: number[] = [];
    for (let i = 0; i < nRes; i++) reserved.push(p.readInt32LE(32 + 4 * (nFds + i)));
    const { segments } = decodeSegments(p, listEnd, nSeg);
    if (f.pid <= 0) throw new ProtocolError('IOCTL whose bytes came without the sender\'s credentials');
    if (this.inFds.length < expected) {
      throw new ProtocolError(`IOCTL announced ${expected} fds, ${this.inFds.length} came with it`);
    }
    let received: number[];
    if (expected === 0) {
      received = numbers.map(() => -1);
    } else {
      received = numbers.map((n) => (n >= 0 ? this.inFds.shift()! : -1));
      this.heldFds.hold(this.inFds.length);
    }
    this.runIoctl(f.seq, handle, cmd, arg, tid, f, segments, new ReceivedFiles(numbers, received), reserved);
  }

  /**
   * Runs the command at once and answers in the same turn; only a command that waits (a
   * synchronous SEND, a setup command) or needs more of the caller's memory goes on
   * asynchronously.
   */
  private runIoctl(
    seq: bigint, handle: Handle, cmd: number, arg: bigint, tid: number, sender: Frame,
    segments: Segment[], files: ReceivedFiles, reserved: number[],
  ): void {
    const mem = new SegmentMemory(segments);
    const installer = new ReservedInstaller(reserved);
    // Only a synchronous SEND waits, so only it can be interrupted by the socket closing.
    const abort = cmd === Cmd.SEND ? new Interruption() : undefined;
    let errno = 0;
    try {
      const ctx = new IoctlContext(
        mem, files, installer, sender.pid, this.verifiedTid(sender.pid, tid), this.senderIdentity(seq, sender), abort,
      );
      let pending: void | Promise<void>;
      try {
        pending = handle.ioctl(cmd, arg, ctx);
      } catch (e) {
        if (!(e instanceof NeedMemory)) throw e;
        if (!sender.own) mem.detach();
        void this.finishLater(seq, handle, cmd, arg, ctx, mem, installer, files, abort, e, sender.own);
        return;
      }
      if (pending) {
        if (!sender.own) mem.detach();
        void this.finishLater(seq, handle, cmd, arg, ctx, mem, installer, files, abort, pending, sender.own);
        return;
      }
    } catch (e) {
      errno = this.errnoOf(e, cmd);
    }
    files.close();
    if (this.deferred || (waitingCommands > 0 && cmd === Cmd.SEND)) {
      this.defer(() => this.answer(seq, handle, cmd, errno, mem, installer));
    } else {
      this.answer(seq, handle, cmd, errno, mem, installer);
    }
    if (sender.own) FrameReader.recycle(sender.own);
  }

  /**
   * Holds an answer back until the promise continuations of this loop turn have run. A SEND
   * that completes another client's synchronous call resumes that call in a continuation;
   * the caller's RESULT then goes out before the replier's, which nobody is waiting on as
   * urgently. Later answers of this session queue behind, so its RESULTs keep their order.
   */
  private defer(answer: () => void): void {
    if (!this.deferred) {
      this.deferred = [];
      deferredSessions.push(this);
      if (!flushQueued) {
        flushQueued = true;
        afterContinuations(flushDeferred);
      }
    }
    this.deferred.push(answer);
  }

  /** @internal sends the answers defer() held back. */
  flushDeferred(): void {
    const answers = this.deferred;
    this.deferred = undefined;
    if (answers) for (const a of answers) a();
  }

  /** A command that waits or needs memory fetched; its large frame's buffer is given back after. */
  private async finishLater(
    seq: bigint, handle: Handle, cmd: number, arg: bigint, ctx: CallContext, mem: SegmentMemory,
    installer: ReservedInstaller, files: ReceivedFiles, abort: Interruption | undefined, next: NeedMemory | Promise<void>,
    own: Buffer | undefined,
  ): Promise<void> {
    waitingCommands++;
    this.inProgress.add(mem);
    try {
      if (!this.heldBytes.hold(this.bytesHeld())) this.protocolError(this.heldBytes.refusal);
      await this.continueIoctl(seq, handle, cmd, arg, ctx, mem, installer, files, abort, next);
    } finally {
      waitingCommands--;
      this.inProgress.delete(mem);
      if (!this.closed) this.heldBytes.hold(this.bytesHeld());
      if (own) FrameReader.recycle(own);
    }
  }

  /**
   * Bytes held for the client, counted against its user's share (held-budget.ts): a frame
   * still arriving, and the memory of commands in progress (their frames, what FETCH brought).
   * A client that sends requests whose memory it never supplies is closed when they go past it.
   */
  private bytesHeld(): number {
    let n = this.reader.unfinishedLength;
    for (const mem of this.inProgress) n += mem.bytes;
    return n;
  }

  /** Waits for the command, or FETCHes what it needs and runs it again; then answers. */
  private async continueIoctl(
    seq: bigint, handle: Handle, cmd: number, arg: bigint, ctx: CallContext, mem: SegmentMemory,
    installer: ReservedInstaller, files: ReceivedFiles, abort: Interruption | undefined, next: NeedMemory | Promise<void>,
  ): Promise<void> {
    if (abort) this.aborts.add(abort);
    let errno = 0;
    try {
      for (;;) {
        if (next instanceof NeedMemory) {
          if (this.closed) break;
          const r = await this.fetch(seq, next.address, next.length);
          if (this.closed) break;
          if (r.errno !== 0 || r.data.length !== next.length) mem.addFault(next.address, next.length);
          else mem.add(next.address, r.data);
          if (!this.heldBytes.hold(this.bytesHeld())) {
            this.protocolError(this.heldBytes.refusal);
            break;
          }
          mem.resetWrites();
          installer.reset();
          try {
            const pending = handle.ioctl(cmd, arg, ctx);
            if (!pending) break;
            next = pending;
          } catch (e) {
            if (!(e instanceof NeedMemory)) throw e;
            next = e;
          }
          continue;
        }
        await next;
        break;
      }
    } catch (e) {
      if (this.closed && !(e instanceof KdbusError)) {
        files.close();
        installer.closeSent();
        return;
      }
      errno = this.errnoOf(e, cmd);
    } finally {
      if (abort) this.aborts.delete(abort);
    }
    files.close();
    if (this.closed) {
      installer.closeSent();
      return;
    }
    if (this.deferred) this.defer(() => this.answer(seq, handle, cmd, errno, mem, installer));
    else this.answer(seq, handle, cmd, errno, mem, installer);
  }

  private errnoOf(e: unknown, cmd: number): number {
    if (e instanceof KdbusError) return e.errno;
    if (e instanceof NeedMemory) return Errno.EFAULT;
    logger.error(`${this.label}: ioctl 0x${cmd.toString(16)} failed unexpectedly: ${(e as Error).stack}`);
    return Errno.EIO;
  }

  /** The RESULT of an ioctl, with the pool after HELLO and the files the command installed. */
  private answer(seq: bigint, handle: Handle, cmd: number, errno: number, mem: SegmentMemory, installer: ReservedInstaller): void {
    if (this.closed) {
      installer.closeSent();
      return;
    }
    if (seq === 0n) {
      // The client answered this one itself (a FREE it knew could not fail) and waits for nothing.
      installer.closeSent();
      if (errno !== 0) {
        // The shim sends only a FREE it knows cannot fail this way: a client that sends others
        // gets one line, not one per FREE.
        const say = this.unansweredFailed ? logger.debug.bind(logger) : logger.warn.bind(logger);
        say(`${this.label}: a FREE the client did not wait for failed: ${errnoName(errno)}${this.unansweredFailed ? '' : ' (later ones are logged at debug level)'}`);
        this.unansweredFailed = true;
      }
      return;
    }
    let flags = 0;
    let fds: readonly number[] = installer.sent;
    let poolFd = -1;
    if (cmd === Cmd.HELLO && errno === 0 && handle.connection) {
      flags |= RESULT_EXACT_WAKES;
      poolFd = this.openPoolReadOnly(handle.connection);
      if (poolFd >= 0) {
        flags |= RESULT_POOL;
        fds = [poolFd, ...installer.sent];
      }
      this.stopWake = handle.onWake(() => this.maybeWake());
    }
    const after = fds.length === 0 ? undefined : (): void => {
      if (poolFd >= 0) closeFd(poolFd);
      installer.closeSent();
    };
    this.sendResult(seq, errno, mem.writes, fds, flags, after);
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
      const frame = encodeFrame(FrameType.FETCH, seq, p);
      this.send(frame, frame.length, NO_FDS, undefined);
    });
  }

  private openPoolReadOnly(conn: Connection): number {
    const storage = conn.pool.storage;
    if (!(storage instanceof MemfdStorage)) return -1;
    return fs.openSync(`/proc/self/fd/${storage.fd}`, fs.constants.O_RDONLY | O_CLOEXEC);
  }

  private sendPool(seq: bigint): void {
    const conn = this.served?.connection;
    const poolFd = conn ? this.openPoolReadOnly(conn) : -1;
    if (poolFd < 0) {
      this.sendResult(seq, Errno.EBADFD, [], NO_FDS, 0);
      return;
    }
    this.sendResult(seq, 0, [], [poolFd], RESULT_POOL, () => closeFd(poolFd));
  }

  /**
   * A RESULT, and in the same write the WAKE or HUP that is due after it: the shim takes an
   * empty socket right after a RESULT for a connection with nothing to receive (Poll), so the
   * two must arrive together.
   */
  private sendResult(seq: bigint, errno: number, writes: readonly Segment[], fds: readonly number[], flags: number, after?: () => void): void {
    let len = FRAME_HEADER + RESULT_HEAD;
    for (const w of writes) len += 16 + pad8(w.data.length);
    // A side channel's RESULTs answer no command of the connection: its WAKE, EMPTY and HUP
    // follow the queue alone.
    let event: Buffer | undefined;
    if (!this.sideOf) {
      this.wakeOutstanding = false;
      this.hupOutstanding = false;
      event = this.dueEvent();
    }
    if (len + HEAD_FRAME_SIZE > scratch.length) scratch = Buffer.allocUnsafe(Math.max(len + HEAD_FRAME_SIZE, 2 * scratch.length));
    const b = scratch;
    b.writeUInt32LE(len, 0);
    b.writeUInt32LE(FrameType.RESULT, 4);
    b.writeBigUInt64LE(seq, 8);
    b.writeInt32LE(errno, 16);
    b.writeUInt32LE(writes.length, 20);
    b.writeUInt32LE(fds.length - (flags & RESULT_POOL ? 1 : 0), 24);
    b.writeUInt32LE(flags, 28);
    let p = FRAME_HEADER + RESULT_HEAD;
    for (const w of writes) {
      const n = w.data.length;
      const padded = pad8(n);
      b.writeBigUInt64LE(w.address, p);
      b.writeUInt32LE(n, p + 8);
      b.writeUInt32LE(0, p + 12);
      w.data.copy(b, p + 16);
      if (padded > n) b.fill(0, p + 16 + n, p + 16 + padded);
      p += 16 + padded;
    }
    if (event) event.copy(b, len);
    this.send(b, event ? len + event.length : len, fds, after);
  }

  /** CLOSE: the client's last reference is going; release before it returns from close(). */
  private releaseNow(seq: bigint): void {
    this.stopWake?.();
    this.stopWake = undefined;
    this.handle?.release();
    this.sendResult(seq, 0, [], NO_FDS, 0);
  }

  // --- poll ------------------------------------------------------------------------------

  /**
   * A RECV the shim answered from a HEAD (docs/socket-protocol.md, HEAD): the entry leaves
   * the queue as with RECV, published for the FREE that follows. The shim waits for no
   * answer but takes the next WAKE or HEAD as news, as after a RESULT.
   */
  private takeAnnounced(handle: Handle, entry: QueueEntry): void {
    const conn = handle.connection;
    // Gone with the connection (a HUP is on its way): nothing left to take.
    if (conn && entry.queued) takeEntry(conn, entry);
    this.afterRecv();
  }

  /**
   * After a RECV the shim may not know what the next finds: what is due now goes out as
   * after a RESULT (a WAKE or HEAD while readable), and on a side channel, which carries no
   * RESULT, EMPTY if the queue it had announced is empty now.
   */
  private afterRecv(): void {
    const announced = this.wakeOutstanding;
    this.wakeOutstanding = false;
    const event = this.dueEvent();
    const handle = this.served;
    if (event) {
      this.send(event, event.length, NO_FDS, undefined);
    } else if (this.sideOf && announced && handle?.connection && !(handle.poll() & Poll.HUP)) {
      this.send(EMPTY_FRAME, EMPTY_FRAME.length, NO_FDS, undefined);
    }
    this.updateReadiness(false);
  }

  private unpin(): void {
    if (this.announced) this.announced.announced = false;
    this.announced = undefined;
    this.announcedLast = false;
  }

  /**
   * The HEAD frame for the connection's next plain RECV, or undefined where that RECV would
   * do more than publish a slice: files to install, lost messages to report, an activator
   * whose queue may move to another connection.
   */
  private headOf(conn: Connection): Buffer | undefined {
    if (conn.isActivator || conn.lostCount > 0) return undefined;
    const entry = conn.queue.peek(false, 0n);
    if (!entry || entry.gaps) return undefined;
    if (this.announced !== entry) {
      this.unpin();
      entry.announced = true;
      this.announced = entry;
    }
    this.announcedCount = this.recvCount;
    this.headWithdrawn = false;
    this.announcedLast = conn.queue.size === 1;
    const b = this.headFrame;
    putU32(b, 0, HEAD_FRAME_SIZE);
    putU32(b, 4, FrameType.HEAD);
    putU64(b, 8, this.recvCount);
    putU64(b, FRAME_HEADER, entry.slice.offset);
    putU64(b, FRAME_HEADER + 8, entry.slice.size);
    putU64(b, FRAME_HEADER + 16, this.announcedLast ? HEAD_LAST : 0);
    return b;
  }

  /** When the connection became readable or went away: the WAKE or HUP due, sent now. */
  private maybeWake(): void {
    const event = this.dueEvent();
    if (event) this.send(event, event.length, NO_FDS, undefined);
  }

  /**
   * The WAKE (readable) or HUP (gone) frame the client has not been sent since the last
   * RESULT, marked as sent; undefined when none is due.
   */
  private dueEvent(): Buffer | undefined {
    const handle = this.served;
    if (this.closed || !handle?.connection) return undefined;
    const mask = handle.poll();
    if (mask & Poll.HUP) {
      if (this.hupOutstanding) return undefined;
      this.hupOutstanding = true;
      return HUP_FRAME;
    }
    if (!(mask & Poll.IN)) return undefined;
    if (this.wakeOutstanding) {
      // Messages lost since the HEAD went out are the next RECV's to report: a bare WAKE
      // withdraws that HEAD before the ioctl that lost them returns. The entry stays pinned:
      // the shim may have taken it already, and its RECV be on the way.
      if (this.announced && !this.headWithdrawn && handle.connection.lostCount > 0) {
        this.headWithdrawn = true;
        return WAKE_FRAME;
      }
      // A HEAD that said its message was alone is outdated by the next: say so before the
      // SEND that queued it returns, or the shim would take the queue for empty after it.
      const conn = handle.connection;
      if (this.announcedLast && !this.headWithdrawn && this.announcedCount === this.recvCount && conn.queue.size > 1) {
        return this.headOf(conn);
      }
      return undefined;
    }
    this.wakeOutstanding = true;
    return (this.heads && this.headOf(handle.connection)) || WAKE_FRAME;
  }

  /**
   * On a side channel, after a RECV of the CUSE handle (before its answer): EMPTY if the
   * queue it had a WAKE for is empty now, so the shim answers the next RECV itself.
   */
  private maybeEmpty(): void {
    this.updateReadiness(false);
    const handle = this.served;
    if (!this.wakeOutstanding || this.closed || !handle || handle.poll() & (Poll.IN | Poll.HUP)) return;
    this.wakeOutstanding = false;
    this.send(EMPTY_FRAME, EMPTY_FRAME.length, NO_FDS, undefined);
  }

  /** Whether the handle this socket reports polls readable or hung up (its READY eventfds' level). */
  private servedReady(): boolean {
    const handle = this.served;
    return handle !== undefined && (handle.poll() & (Poll.IN | Poll.HUP)) !== 0;
  }

  /** The READY eventfds after the handle's state may have changed; wake: a wake-up, an edge. */
  private updateReadiness(wake: boolean): void {
    if (this.readiness.length === 0) return;
    const ready = this.servedReady();
    for (const r of this.readiness) r.update(ready, wake);
  }

  /** The handle whose queue this socket reports: its own, or the CUSE handle it is the side channel of. */
  private get served(): Handle | undefined {
    return this.handle ?? this.sideOf?.handle;
  }

  // --- output ----------------------------------------------------------------------------

  /**
   * Sends data[0, length) with fds on its first byte, at once when nothing is queued before
   * it. What the socket does not take is copied into the queue, in order, and tried again
   * shortly (a client that does not read its answers is the only one who waits).
   */
  private send(data: Buffer, length: number, fds: readonly number[], after: (() => void) | undefined): void {
    if (this.closed) {
      after?.();
      return;
    }
    if (this.out.length === 0) {
      let n: number;
      try {
        n = this.io.send(data, 0, length, fds);
      } catch (e) {
        after?.();
        this.lost(e as Error);
        return;
      }
      if (n === length) {
        after?.();
        return;
      }
      if (n >= 0) this.out.push({ data: Buffer.from(data.subarray(n, length)), fds: NO_FDS, after });
      else this.out.push({ data: Buffer.from(data.subarray(0, length)), fds, after });
    } else {
      this.out.push({ data: Buffer.from(data.subarray(0, length)), fds, after });
    }
    this.retryMs = RETRY_MS;
    this.retry ??= setTimeout(() => this.flush(), this.retryMs);
  }

  private flush(): void {
    this.retry = undefined;
    while (this.out.length > 0 && !this.closed) {
      const item = this.out[0]!;
      let n: number;
      try {
        n = this.io.send(item.data, 0, item.data.length, item.fds);
      } catch (e) {
        this.lost(e as Error);
        return;
      }
      if (n < item.data.length) {
        if (n > 0) {
          item.data = item.data.subarray(n);
          item.fds = NO_FDS;
          this.retryMs = RETRY_MS;
        } else {
          this.retryMs = Math.min(2 * this.retryMs, RETRY_MAX_MS);
        }
        this.retry = setTimeout(() => this.flush(), this.retryMs);
        return;
      }
      this.out.shift();
      item.after?.();
    }
    if (this.out.length === 0 && this.readPaused && !this.closed) {
      this.readPaused = false;
      this.watch.watch(UV_READABLE);
    }
  }

  /**
   * Stops reading frames until the client has read what it was sent: a client that sends
   * requests and never reads the answers would otherwise make the daemon queue answers
   * without bound. The shim reads each answer before its next request, so only such a
   * client ever waits here; what it sends meanwhile stays in its socket.
   */
  private pauseReading(): void {
    if (this.readPaused) return;
    this.readPaused = true;
    this.watch.watch(0);
    logger.verbose(`${this.label}: the client does not read its answers; its requests wait until it does`);
  }

  private lost(e: Error): void {
    logger.verbose(`${this.label}: sending to the client failed: ${e.message}`);
    this.close();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const a of this.aborts) a.abort();
    // Commands waiting for memory end (and stop counting as waiting): no MEM will come.
    for (const resolve of this.fetches.values()) resolve({ errno: Errno.EIO, data: Buffer.alloc(0) });
    this.fetches.clear();
    for (const item of this.out.splice(0)) item.after?.();
    if (this.retry) clearTimeout(this.retry);
    this.retry = undefined;
    this.stopWake?.();
    this.unpin();
    this.sideOf?.detach(this.side);
    this.sideOf = undefined;
    for (const r of this.readiness.splice(0)) r.close();
    this.handle?.release();
    this.handle = undefined;
    for (const fd of this.inFds.splice(0)) closeFd(fd);
    this.heldFds.hold(0);
    this.heldBytes.hold(0);
    this.files.hold(0);
    this.watch.close();
    closeFd(this.fd);
    this.socket.destroy();
    this.onClose(this);
  }
}
