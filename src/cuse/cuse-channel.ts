/**
 * One CUSE channel: an open of /dev/cuse, which the kernel turns into one character device
 * once CUSE_INIT is answered. It reads requests without blocking on the main thread as soon
 * as the event loop sees the channel readable, hands them to its device, and writes replies
 * (each one write(2)).
 */
import fs from 'node:fs';
import { Errno } from '../abi/errno';
import { logger } from '../log/logger';
import { FdWatch, pollFailure } from '../os/fd-watch';
import { errno, read, write } from '../os/libc';
import {
  cuseInitReply, IN_HEADER, Opcode, parseInHeader, READ_BUFFER, reply, type InHeader,
} from './fuse-abi';


/** What a device does with the requests of its channel. */
export interface ChannelHandler {
  /** `payload` is a view of the channel's read buffer: copy what must outlive the call. */
  request(ch: CuseChannel, hdr: InHeader, payload: Buffer): void;
}

export class CuseChannel {
  readonly fd: number;
  private readonly buf = Buffer.alloc(READ_BUFFER);
  private initialized = false;
  private closed = false;
  private readonly watch: FdWatch;
  private readyResolve!: () => void;
  private readyReject!: (e: Error) => void;
  /** Settles when the kernel accepted CUSE_INIT (the node then appears in devtmpfs). */
  readonly ready: Promise<void>;

  constructor(
    readonly devname: string,
    private readonly handler: ChannelHandler,
    cusePath = '/dev/cuse',
  ) {
    this.ready = new Promise((resolve, reject) => {
      this.readyResolve = resolve;
      this.readyReject = reject;
    });
    this.fd = fs.openSync(cusePath, fs.constants.O_RDWR | fs.constants.O_NONBLOCK | 0o2000000);
    try {
      this.watch = new FdWatch(this.fd, (status) => (status < 0 ? this.fail(`${this.devname}: ${pollFailure(status)}`) : this.drain()));
    } catch (e) {
      fs.closeSync(this.fd);
      throw e;
    }
  }

  private drain(): void {
    while (!this.closed) {
      const n = read(this.fd, this.buf, this.buf.length);
      if (n < 0) {
        const err = errno();
        if (err === Errno.EAGAIN) return;
        // EINTR: a signal; ENOENT: the kernel dropped a request that was interrupted.
        if (err === Errno.EINTR || err === Errno.ENOENT) continue;
        this.fail(`reading ${this.devname}: errno ${err}`);
        return;
      }
      if (n === 0) {
        this.fail(`${this.devname}: the kernel closed the channel`);
        return;
      }
      if (n < IN_HEADER) {
        logger.warn(`${this.devname}: short request of ${n} bytes ignored`);
        continue;
      }
      const hdr = parseInHeader(this.buf);
      const payload = this.buf.subarray(IN_HEADER, Math.min(n, hdr.len));
      try {
        this.dispatch(hdr, payload);
      } catch (e) {
        logger.error(`${this.devname}: request ${hdr.opcode} failed: ${(e as Error).stack}`);
      }
    }
  }

  private dispatch(hdr: InHeader, payload: Buffer): void {
    if (hdr.opcode === Opcode.CUSE_INIT) {
      const kernelMinor = payload.length >= 8 ? payload.readUInt32LE(4) : 0;
      this.send(cuseInitReply(hdr.unique, kernelMinor, this.devname));
      this.initialized = true;
      this.readyResolve();
      return;
    }
    if (!this.initialized) {
      this.send(reply(hdr.unique, Errno.ENOSYS));
      return;
    }
    this.handler.request(this, hdr, payload);
  }

  /** Writes one reply or notification; a reply to a request the kernel dropped (ENOENT) is not an error. */
  send(b: Buffer): void {
    if (this.closed) return;
    if (write(this.fd, b, b.length) >= 0) return;
    const err = errno();
    if (err !== Errno.ENOENT) logger.warn(`${this.devname}: writing a reply failed (errno ${err})`);
  }

  private fail(message: string): void {
    if (!this.initialized) this.readyReject(new Error(message));
    else logger.warn(message);
    this.close();
  }

  /** Closing the channel removes the device node. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watch.close();
    fs.closeSync(this.fd);
  }
}
