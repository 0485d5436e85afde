/**
 * One CUSE channel: an open of /dev/cuse, which the kernel turns into one character device
 * once CUSE_INIT is answered. It reads requests without blocking when the poller says so,
 * hands them to its device, and writes replies (each one write(2)).
 */
import fs from 'node:fs';
import { logger } from '../log/logger';
import {
  cuseInitReply, IN_HEADER, Opcode, parseInHeader, READ_BUFFER, reply, type InHeader,
} from './fuse-abi';
import type { Poller } from './poller';

const ENOSYS = 38;

/** What a device does with the requests of its channel. */
export interface ChannelHandler {
  request(ch: CuseChannel, hdr: InHeader, payload: Buffer): void;
}

export class CuseChannel {
  readonly fd: number;
  private readonly buf = Buffer.alloc(READ_BUFFER);
  private initialized = false;
  private closed = false;
  private readyResolve!: () => void;
  private readyReject!: (e: Error) => void;
  /** Settles when the kernel accepted CUSE_INIT (the node then appears in devtmpfs). */
  readonly ready: Promise<void>;

  constructor(
    readonly devname: string,
    private readonly poller: Poller,
    private readonly handler: ChannelHandler,
    cusePath = '/dev/cuse',
  ) {
    this.ready = new Promise((resolve, reject) => {
      this.readyResolve = resolve;
      this.readyReject = reject;
    });
    this.fd = fs.openSync(cusePath, fs.constants.O_RDWR | fs.constants.O_NONBLOCK | 0o2000000);
    poller.add(this.fd, () => this.drain());
  }

  private drain(): void {
    for (;;) {
      if (this.closed) return;
      let n: number;
      try {
        n = fs.readSync(this.fd, this.buf, 0, this.buf.length, null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN') break;
        if (code === 'EINTR') continue;
        if (code === 'ENOENT') continue;
        this.fail(`reading ${this.devname}: ${(e as Error).message}`);
        return;
      }
      if (n < IN_HEADER) {
        if (n === 0) {
          this.fail(`${this.devname}: the kernel closed the channel`);
          return;
        }
        logger.warn(`${this.devname}: short request of ${n} bytes ignored`);
        continue;
      }
      const hdr = parseInHeader(this.buf);
      const payload = Buffer.from(this.buf.subarray(IN_HEADER, Math.min(n, hdr.len)));
      try {
        this.dispatch(hdr, payload);
      } catch (e) {
        logger.error(`${this.devname}: request ${hdr.opcode} failed: ${(e as Error).stack}`);
      }
    }
    this.poller.rearm(this.fd);
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
      this.send(reply(hdr.unique, ENOSYS));
      return;
    }
    this.handler.request(this, hdr, payload);
  }

  /** Writes one reply or notification; a reply to a request the kernel dropped is not an error. */
  send(b: Buffer): void {
    if (this.closed) return;
    try {
      fs.writeSync(this.fd, b);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      logger.warn(`${this.devname}: writing a reply failed: ${(e as Error).message}`);
    }
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
    this.poller.remove(this.fd);
    fs.closeSync(this.fd);
  }
}
