/**
 * A listening unix stream socket whose accepted connections are plain descriptors. Node's
 * net.Server hands out streams, which cannot carry descriptors (SCM_RIGHTS) nor be read
 * with recvmsg by the owner; D-Bus clients pass files, so the legacy endpoint reads its
 * clients itself. Accepting runs on the main loop through FdWatch.
 */
import fs from 'node:fs';
import * as koffi from 'koffi';
import { FdWatch } from './fd-watch';
import { AF_UNIX, closeFd, peerCred, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, SyscallError, type PeerCred } from './unix-socket';

const libc = koffi.load(null);
const socketFn = libc.func('int socket(int domain, int type, int protocol)') as (d: number, t: number, p: number) => number;
const bindFn = libc.func('int bind(int fd, const void *addr, uint32_t len)') as (fd: number, addr: Buffer, len: number) => number;
const listenFn = libc.func('int listen(int fd, int backlog)') as (fd: number, backlog: number) => number;
const connectFn = libc.func('int connect(int fd, const void *addr, uint32_t len)') as (fd: number, addr: Buffer, len: number) => number;
const accept4Fn = libc.func('int accept4(int fd, void *addr, void *len, int flags)') as (fd: number, a: null, l: null, flags: number) => number;

const EAGAIN = 11;
const EINTR = 4;
const ECONNABORTED = 103;
const EMFILE = 24;
const ENFILE = 23;
/** sun_path's size in struct sockaddr_un. */
const SUN_PATH = 108;
const BACKLOG = 128;

export type ListenAddress = { kind: 'path'; path: string; mode?: number } | { kind: 'abstract'; name: string };

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

  constructor(readonly address: ListenAddress, private readonly onConnection: (fd: number, peer: PeerCred) => void) {
    const fd = socketFn(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new SyscallError('socket', koffi.errno());
    try {
      if (address.kind === 'path') removeStaleSocket(address.path);
      const { addr, len } = sockaddr(address);
      if (bindFn(fd, addr, len) < 0) throw new SyscallError(`bind ${describe(address)}`, koffi.errno());
      if (address.kind === 'path' && address.mode !== undefined) fs.chmodSync(address.path, address.mode);
      if (listenFn(fd, BACKLOG) < 0) throw new SyscallError('listen', koffi.errno());
      this.watch = new FdWatch(fd, () => this.acceptAll());
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    this.fd = fd;
  }

  private acceptAll(): void {
    while (!this.closed) {
      const client = accept4Fn(this.fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (client < 0) {
        const err = koffi.errno();
        if (err === EINTR || err === ECONNABORTED) continue;
        // Out of descriptors: the connection waits in the backlog; the next readiness retries.
        if (err === EAGAIN || err === EMFILE || err === ENFILE) return;
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

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watch.close();
    closeFd(this.fd);
    if (this.address.kind === 'path') fs.rmSync(this.address.path, { force: true });
  }
}

export function describe(a: ListenAddress): string {
  return a.kind === 'path' ? a.path : `@${a.name}`;
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
