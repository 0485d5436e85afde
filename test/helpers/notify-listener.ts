/**
 * The service manager's end of sd_notify for tests: a unix datagram socket bound at a path
 * or an abstract name, handing out each datagram as text. Node's dgram module has no unix
 * datagram sockets, hence koffi; the daemon's own sender is not reused, so a shared bug
 * cannot hide.
 */
import * as koffi from 'koffi';

const libc = koffi.load(null);
const socketFn = libc.func('int socket(int domain, int type, int protocol)') as (d: number, t: number, p: number) => number;
const bindFn = libc.func('int bind(int fd, const void *addr, uint32_t len)') as (fd: number, addr: Buffer, len: number) => number;
const recvFn = libc.func('intptr_t recv(int fd, void *buf, size_t len, int flags)') as (fd: number, buf: Buffer, len: number, flags: number) => number;
const closeFn = libc.func('int close(int fd)') as (fd: number) => number;

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const MSG_DONTWAIT = 0x40;
const EAGAIN = 11;

export class NotifyListener {
  private readonly fd: number;

  /** `where`: a path, or '@name' for the abstract namespace (as NOTIFY_SOCKET spells it). */
  constructor(readonly where: string) {
    const name = where.startsWith('@') ? Buffer.concat([Buffer.from([0]), Buffer.from(where.slice(1))]) : Buffer.from(where);
    const addr = Buffer.alloc(110);
    addr.writeUInt16LE(AF_UNIX, 0);
    name.copy(addr, 2);
    this.fd = socketFn(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (this.fd < 0) throw new Error(`socket: errno ${koffi.errno()}`);
    if (bindFn(this.fd, addr, 2 + name.length + (where.startsWith('@') ? 0 : 1)) < 0) {
      const e = koffi.errno();
      closeFn(this.fd);
      throw new Error(`bind ${where}: errno ${e}`);
    }
  }

  /** One datagram if one is queued. */
  poll(): string | undefined {
    const buf = Buffer.alloc(4096);
    const n = recvFn(this.fd, buf, buf.length, MSG_DONTWAIT);
    if (n < 0) {
      const e = koffi.errno();
      if (e === EAGAIN) return undefined;
      throw new Error(`recv: errno ${e}`);
    }
    return buf.subarray(0, n).toString('utf8');
  }

  /** The next datagram, waiting up to `ms`; `why` explains a timeout. */
  async next(ms: number, why: () => string = () => ''): Promise<string> {
    const until = Date.now() + ms;
    for (;;) {
      const m = this.poll();
      if (m !== undefined) return m;
      if (Date.now() > until) throw new Error(`no notification within ${ms} ms${why() ? `\n${why()}` : ''}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  close(): void {
    closeFn(this.fd);
  }
}
