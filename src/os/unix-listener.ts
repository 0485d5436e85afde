/**
 * A listening unix stream socket whose accepted connections are plain descriptors. Node's
 * net.Server hands out streams, which cannot carry descriptors (SCM_RIGHTS) nor be read
 * with recvmsg by the owner; D-Bus clients pass files, so the legacy endpoint reads its
 * clients itself. Accepting runs on the main loop through FdWatch.
 */
import fs from 'node:fs';
import * as koffi from 'koffi';
import { logger } from '../log/logger';
import { FdWatch, UV_READABLE } from './fd-watch';
import { F_GETFL, F_SETFL, fcntl, O_NONBLOCK } from './libc';
import { AF_UNIX, closeFd, intSocketOption, peerCred, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, SyscallError, type PeerCred } from './unix-socket';

const libc = koffi.load(null);
const socketFn = libc.func('int socket(int domain, int type, int protocol)') as (d: number, t: number, p: number) => number;
const bindFn = libc.func('int bind(int fd, const void *addr, uint32_t len)') as (fd: number, addr: Buffer, len: number) => number;
const listenFn = libc.func('int listen(int fd, int backlog)') as (fd: number, backlog: number) => number;
const connectFn = libc.func('int connect(int fd, const void *addr, uint32_t len)') as (fd: number, addr: Buffer, len: number) => number;
const accept4Fn = libc.func('int accept4(int fd, void *addr, void *len, int flags)') as (fd: number, a: null, l: null, flags: number) => number;
const getsocknameFn = libc.func('int getsockname(int fd, void *addr, _Inout_ uint32_t *len)') as (fd: number, addr: Buffer, len: number[]) => number;
const SO_TYPE = 3;
const SO_ACCEPTCONN = 30;
const SO_DOMAIN = 39;

const EAGAIN = 11;
const EINTR = 4;
const ECONNABORTED = 103;
const EMFILE = 24;
const ENFILE = 23;
/** sun_path's size in struct sockaddr_un. */
const SUN_PATH = 108;
const BACKLOG = 128;
/**
 * How long accepting pauses when the daemon is out of descriptors. Meanwhile the socket
 * stays readable, and a level-triggered watch would call back at once, over and over.
 */
const OUT_OF_FDS_PAUSE_MS = 250;
/**
 * Connections accepted per readiness: a burst of connections is taken in turns with the
 * reads of those already accepted, instead of all before any of them is served.
 */
const ACCEPT_BATCH = 16;

export type ListenAddress =
  | { kind: 'path'; path: string; mode?: number }
  | { kind: 'abstract'; name: string }
  /** A listening socket the daemon was given (socket activation); `path` where it has one. */
  | { kind: 'inherited'; fd: number; path: string | undefined };

/** struct sockaddr_un for a socket path or an abstract name, and the length connect/bind take. */
export function sockaddr(a: { kind: 'path'; path: string } | { kind: 'abstract'; name: string }): { addr: Buffer; len: number } {
  const name = a.kind === 'path' ? Buffer.from(a.path, 'utf8') : Buffer.concat([Buffer.from([0]), Buffer.from(a.name, 'utf8')]);
  if (name.length >= SUN_PATH) throw new Error(`socket address too long (${name.length} bytes; at most ${SUN_PATH - 1})`);
  const addr = Buffer.alloc(2 + SUN_PATH);
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, 2);
  // Abstract names are exactly as long as given; paths end at their NUL.
  return { addr, len: 2 + name.length + (a.kind === 'path' ? 1 : 0) };
}

export class UnixListener {
  readonly fd: number;
  private readonly watch: FdWatch;
  private closed = false;
  /** Set while accepting pauses for want of descriptors. */
  private retry: NodeJS.Timeout | undefined;
  private outOfFds = false;

  constructor(readonly address: ListenAddress, private readonly onConnection: (fd: number, peer: PeerCred) => void) {
    if (address.kind === 'inherited') {
      const fd = address.fd;
      const flags = fcntl(fd, F_GETFL, 0);
      if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) throw new SyscallError(`fcntl of ${describe(address)}`, koffi.errno());
      this.watch = new FdWatch(fd, () => this.acceptSome());
      this.fd = fd;
      return;
    }
    const fd = socketFn(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new SyscallError('socket', koffi.errno());
    try {
      if (address.kind === 'path') removeStaleSocket(address.path);
      const { addr, len } = sockaddr(address);
      if (bindFn(fd, addr, len) < 0) throw new SyscallError(`bind ${describe(address)}`, koffi.errno());
      if (address.kind === 'path' && address.mode !== undefined) fs.chmodSync(address.path, address.mode);
      if (listenFn(fd, BACKLOG) < 0) throw new SyscallError('listen', koffi.errno());
      this.watch = new FdWatch(fd, () => this.acceptSome());
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    this.fd = fd;
  }

  private acceptSome(): void {
    for (let n = 0; n < ACCEPT_BATCH && !this.closed; n++) {
      const client = accept4Fn(this.fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (client < 0) {
        const err = koffi.errno();
        if (err === EINTR || err === ECONNABORTED) continue;
        if (err === EAGAIN) {
          // The backlog is empty: whoever waited while descriptors ran out is in.
          if (this.outOfFds) logger.info(`${describe(this.address)}: accepting connections again`);
          this.outOfFds = false;
          return;
        }
        if (err === EMFILE || err === ENFILE) {
          this.pause(err);
          return;
        }
        throw new SyscallError('accept4', err);
      }
      let peer: PeerCred;
      try {
        peer = peerCred(client);
      } catch {
        closeFd(client);
        continue;
      }
      this.onConnection(client, peer);
    }
  }

  /** Out of descriptors: the connections wait in the backlog until some close. */
  private pause(err: number): void {
    if (!this.outOfFds) {
      const which = err === EMFILE ? "EMFILE, the daemon's limit" : "ENFILE, the system's";
      logger.warn(`${describe(this.address)}: out of file descriptors (${which}); new connections wait in the backlog, tried again every ${OUT_OF_FDS_PAUSE_MS} ms`);
    }
    this.outOfFds = true;
    this.watch.watch(0);
    this.retry = setTimeout(() => {
      this.retry = undefined;
      this.watch.watch(UV_READABLE);
      this.acceptSome();
    }, OUT_OF_FDS_PAUSE_MS);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.retry);
    this.watch.close();
    closeFd(this.fd);
    // A socket the daemon was given is its giver's to remove.
    if (this.address.kind === 'path') fs.rmSync(this.address.path, { force: true });
  }
}

export function describe(a: ListenAddress): string {
  if (a.kind === 'inherited') return `the socket passed as descriptor ${a.fd}${a.path ? ` (${a.path})` : ''}`;
  return a.kind === 'path' ? a.path : `@${a.name}`;
}

/**
 * A passed descriptor as a listening address: it must be a unix stream socket that listens
 * (systemd's ListenStream= with a path, or an abstract name); its path is read back.
 */
export function inheritedListener(fd: number): { kind: 'inherited'; fd: number; path: string | undefined } {
  if (intSocketOption(fd, SO_DOMAIN) !== AF_UNIX || intSocketOption(fd, SO_TYPE) !== SOCK_STREAM || intSocketOption(fd, SO_ACCEPTCONN) !== 1) {
    throw new Error(`descriptor ${fd} is not a listening unix stream socket`);
  }
  const addr = Buffer.alloc(2 + SUN_PATH);
  const len = [addr.length];
  if (getsocknameFn(fd, addr, len) < 0) throw new SyscallError('getsockname', koffi.errno());
  const name = addr.subarray(2, len[0]);
  // An abstract name starts with a NUL; a path ends at its NUL.
  const path = name.length > 0 && name[0] !== 0 ? name.toString('utf8').replace(/\0.*$/s, '') : undefined;
  return { kind: 'inherited', fd, path };
}

/**
 * A socket file left by a daemon that died goes; a socket someone still listens on, or any
 * other file, is not ours to remove.
 */
function removeStaleSocket(file: string): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(file);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${file} exists and is not a socket; not replacing it`);
  const probe = socketFn(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) throw new SyscallError('socket', koffi.errno());
  const { addr, len } = sockaddr({ kind: 'path', path: file });
  const alive = connectFn(probe, addr, len) === 0;
  closeFd(probe);
  if (alive) throw new Error(`${file}: another process is listening there`);
  fs.rmSync(file);
}
