/**
 * Readiness of /dev/cuse channels for the main thread. Node cannot watch a character
 * device, and a blocked read per device would take a thread each (libuv's pool has four),
 * so one worker thread waits in epoll_wait for all of them and writes the ready descriptor
 * numbers to a socket the main event loop watches. The main thread then reads each channel
 * without blocking until it is empty and re-arms it.
 */
import net from 'node:net';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import * as koffi from 'koffi';
import { closeFd, socketpair, SOCK_CLOEXEC, SOCK_STREAM } from '../os/unix-socket';
import { SyscallError } from '../os/unix-socket';

const libc = koffi.load(null);
const epollCreate1 = libc.func('int epoll_create1(int flags)');
const epollCtl = libc.func('int epoll_ctl(int epfd, int op, int fd, void *event)');
const eventfd = libc.func('int eventfd(unsigned int initval, int flags)');
const write = libc.func('intptr_t write(int fd, const void *buf, size_t count)');

const EPOLL_CLOEXEC = 0o2000000;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
const EPOLLIN = 0x1;
const EPOLLONESHOT = 1 << 30;
const EFD_CLOEXEC = 0o2000000;
/** struct epoll_event is packed on x86-64 (12 bytes), naturally aligned elsewhere (16). */
const EVENT_SIZE = process.arch === 'x64' ? 12 : 16;

export class Poller {
  private readonly epfd: number;
  private readonly stopFd: number;
  private readonly bell: net.Socket;
  private readonly bellFd: number;
  private readonly worker: Worker;
  private readonly handlers = new Map<number, () => void>();
  private pending = Buffer.alloc(0);

  constructor() {
    this.epfd = epollCreate1(EPOLL_CLOEXEC) as number;
    if (this.epfd < 0) throw new SyscallError('epoll_create1', koffi.errno());
    this.stopFd = eventfd(0, EFD_CLOEXEC) as number;
    this.ctl(EPOLL_CTL_ADD, this.stopFd, EPOLLIN);
    const [ours, theirs] = socketpair(SOCK_STREAM | SOCK_CLOEXEC);
    this.bellFd = theirs;
    this.bell = new net.Socket({ fd: ours, readable: true, writable: false });
    this.bell.on('data', (chunk: Buffer) => this.ring(chunk));
    this.worker = new Worker(path.join(__dirname, 'poller-worker.js'), {
      workerData: { epfd: this.epfd, doorbell: theirs, stopFd: this.stopFd, eventSize: EVENT_SIZE },
    });
    // The doorbell keeps the event loop alive while channels are watched (a daemon waiting
    // for CUSE_INIT has nothing else pending); the thread itself need not.
    this.worker.unref();
    this.bell.unref();
  }

  private ctl(op: number, fd: number, events: number): void {
    const ev = Buffer.alloc(EVENT_SIZE);
    ev.writeUInt32LE(events, 0);
    ev.writeInt32LE(fd, 4);
    if ((epollCtl(this.epfd, op, fd, ev) as number) < 0) throw new SyscallError('epoll_ctl', koffi.errno());
  }

  /** Calls `onReadable` when `fd` has data; the handler drains it, then calls rearm(fd). */
  add(fd: number, onReadable: () => void): void {
    this.handlers.set(fd, onReadable);
    this.bell.ref();
    this.ctl(EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLONESHOT);
  }

  rearm(fd: number): void {
    if (this.handlers.has(fd)) this.ctl(EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLONESHOT);
  }

  remove(fd: number): void {
    if (!this.handlers.delete(fd)) return;
    if (this.handlers.size === 0) this.bell.unref();
    try {
      this.ctl(EPOLL_CTL_DEL, fd, 0);
    } catch {
      // The descriptor may already be closed; epoll forgot it then.
    }
  }

  private ring(chunk: Buffer): void {
    const data = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    const whole = data.length - (data.length % 4);
    this.pending = Buffer.from(data.subarray(whole));
    for (let p = 0; p < whole; p += 4) this.handlers.get(data.readInt32LE(p))?.();
  }

  async stop(): Promise<void> {
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n, 0);
    const stopped = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    write(this.stopFd, one, 8);
    await stopped;
    this.bell.destroy();
    closeFd(this.bellFd);
    closeFd(this.stopFd);
    closeFd(this.epfd);
  }
}
