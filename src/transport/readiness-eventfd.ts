/**
 * An eventfd the shim registers in a program's epoll sets in place of a CUSE kdbus
 * descriptor (docs/socket-protocol.md, READY). The kernel asks the daemon (FUSE_POLL) when a
 * CUSE device is added to an epoll set and again after every wake-up, before epoll_wait
 * returns: two round trips to the daemon per message for every sd-event service. The daemon
 * instead keeps this eventfd's count non-zero exactly while the handle polls readable or
 * hung up, and adds one at every wake-up, so a level-triggered waiter sees the queue's state
 * and an edge-triggered one an edge per message, as kdbus gave.
 *
 * The shim may empty the count itself when the side channel has told it the queue is empty
 * (it then looks at the channel again), so "raised" is the daemon's belief, never trusted to
 * skip a wake-up's write.
 */
import fs from 'node:fs';
import { F_GETFL, F_SETFL, fcntl, read, write } from '../os/libc';
import { closeFd } from '../os/unix-socket';

const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

export class ReadinessEventfd {
  private raised = false;
  private readonly drain = Buffer.alloc(8);

  private constructor(private readonly fd: number) {}

  /** Takes over fd if it is an eventfd; undefined (and fd closed) if it is anything else. */
  static adopt(fd: number): ReadinessEventfd | undefined {
    let target = '';
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      // A number that is not open here reads as no eventfd.
    }
    // Its status flags are the client's too: a blocking one would stop the daemon on an empty count.
    const flags = target === 'anon_inode:[eventfd]' ? fcntl(fd, F_GETFL, 0) : -1;
    if (flags < 0 || fcntl(fd, F_SETFL, flags | fs.constants.O_NONBLOCK) < 0) {
      closeFd(fd);
      return undefined;
    }
    return new ReadinessEventfd(fd);
  }

  /**
   * The handle's state after something happened to it: ready (readable or hung up) or not;
   * wake says a message or a loss arrived, which is an edge even while already raised.
   */
  update(ready: boolean, wake: boolean): void {
    if (ready) {
      if (!wake && this.raised) return;
      // A full count (EAGAIN) is readable already; nothing else can fail on an eventfd.
      write(this.fd, ONE, 8);
      this.raised = true;
    } else if (this.raised) {
      read(this.fd, this.drain, 8);
      this.raised = false;
    }
  }

  close(): void {
    closeFd(this.fd);
  }
}
