/**
 * The poller's thread: blocks in epoll_wait on every CUSE channel and rings the main
 * thread's doorbell with the numbers of the descriptors that became readable. Channels are
 * registered one-shot, so each rings once until the main thread has drained and re-armed it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as koffi from 'koffi';

const libc = koffi.load(null);
const epollWait = libc.func('int epoll_wait(int epfd, void *events, int maxevents, int timeout)');
const write = libc.func('intptr_t write(int fd, const void *buf, size_t count)');

const { epfd, doorbell, stopFd, eventSize } = workerData as { epfd: number; doorbell: number; stopFd: number; eventSize: number };
const MAX = 64;
const events = Buffer.alloc(MAX * eventSize);
const EINTR = 4;

for (;;) {
  const n = epollWait(epfd, events, MAX, -1) as number;
  if (n < 0) {
    if (koffi.errno() === EINTR) continue;
    break;
  }
  const ready = Buffer.alloc(4 * n);
  let count = 0;
  let stop = false;
  for (let i = 0; i < n; i++) {
    const fd = events.readInt32LE(i * eventSize + 4);
    if (fd === stopFd) stop = true;
    else ready.writeInt32LE(fd, 4 * count++);
  }
  if (count > 0) write(doorbell, ready, 4 * count);
  if (stop) break;
}
parentPort?.postMessage('stopped');
