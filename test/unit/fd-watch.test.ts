import assert from 'node:assert/strict';
import fs from 'node:fs';
import { afterContinuations, drainsAfterEachCallback, FdWatch, FdWatchError, pollFailure, UV_READABLE, UV_WRITABLE } from '../../src/os/fd-watch';
import { closeFd, socketpair, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM } from '../../src/os/unix-socket';

const pair = (): [number, number] => socketpair(SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

function drain(fd: number): number {
  const buf = Buffer.alloc(64);
  let total = 0;
  for (;;) {
    try {
      total += fs.readSync(fd, buf, 0, buf.length, null);
    } catch {
      return total;
    }
  }
}

describe('FdWatch: readiness of any descriptor on the main loop', () => {
  it('calls back when the descriptor becomes readable, and not before', async () => {
    const [a, b] = pair();
    const seen: number[] = [];
    const w = new FdWatch(a, (status) => seen.push(status, drain(a)));
    try {
      await turn();
      await turn();
      assert.deepEqual(seen, []);
      fs.writeSync(b, Buffer.from('hello'));
      await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(seen, [0, 5]);
    } finally {
      w.close();
      closeFd(a);
      closeFd(b);
    }
  });

  it('is level-triggered: data left unread calls back again', async () => {
    const [a, b] = pair();
    let calls = 0;
    const w = new FdWatch(a, () => {
      calls++;
      if (calls === 3) drain(a);
    });
    try {
      fs.writeSync(b, Buffer.from('x'));
      await new Promise((r) => setTimeout(r, 30));
      assert.equal(calls, 3);
    } finally {
      w.close();
      closeFd(a);
      closeFd(b);
    }
  });

  it('stops calling back once closed, even with data pending', async () => {
    const [a, b] = pair();
    let calls = 0;
    const w = new FdWatch(a, () => calls++);
    w.close();
    w.close();
    fs.writeSync(b, Buffer.from('x'));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(calls, 0);
    closeFd(a);
    closeFd(b);
  });

  it('watches thousands of descriptors at once, each calling its own handler', async function () {
    this.timeout(20000);
    const n = 2000;
    const pairs = Array.from({ length: n }, pair);
    const hits = new Array<number>(n).fill(0);
    const watches = pairs.map(([a], i) => new FdWatch(a, () => {
      hits[i]! += drain(a);
    }));
    try {
      pairs.forEach(([, b], i) => fs.writeSync(b, Buffer.alloc(1 + (i % 7))));
      await new Promise((r) => setTimeout(r, 200));
      assert.deepEqual(hits, pairs.map((_, i) => 1 + (i % 7)));
    } finally {
      for (const w of watches) w.close();
      for (const [a, b] of pairs) {
        closeFd(a);
        closeFd(b);
      }
    }
  });

  it('reports writability only once asked, and stops when asked no more', async () => {
    const [a, b] = pair();
    const seen: number[] = [];
    const w = new FdWatch(a, (_status, events) => {
      seen.push(events);
      if (seen.length === 2) w.watch(UV_READABLE);
    });
    try {
      await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(seen, []);
      w.watch(UV_READABLE | UV_WRITABLE);
      await new Promise((r) => setTimeout(r, 30));
      assert.deepEqual(seen, [UV_WRITABLE, UV_WRITABLE]);
    } finally {
      w.close();
      closeFd(a);
      closeFd(b);
    }
  });

  it('runs what a callback queued (nextTick, microtasks, then afterContinuations) before the next callback', async () => {
    // Node's drain is what makes this hold without an immediate per loop turn; the Node the
    // daemon runs on must have it, or every wake-up pays for an immediate again.
    assert.equal(drainsAfterEachCallback, true);
    const pairs = [pair(), pair()];
    const log: string[] = [];
    const watches = pairs.map(([a], i) => new FdWatch(a, () => {
      drain(a);
      log.push(`callback ${i}`);
      afterContinuations(() => log.push(`after ${i}`));
      void Promise.resolve().then(() => log.push(`promise ${i}`));
      process.nextTick(() => log.push(`tick ${i}`));
    }));
    try {
      // Both readable before the loop polls again: libuv calls both back in one poll phase.
      for (const [, b] of pairs) fs.writeSync(b, Buffer.from('x'));
      await new Promise((r) => setTimeout(r, 30));
      const first = log[0] === 'callback 0' ? 0 : 1;
      const second = 1 - first;
      assert.deepEqual(log, [first, second].flatMap((i) => [`callback ${i}`, `tick ${i}`, `promise ${i}`, `after ${i}`]));
    } finally {
      for (const w of watches) w.close();
      for (const [a, b] of pairs) {
        closeFd(a);
        closeFd(b);
      }
    }
  });

  it('still runs what a failing callback queued, and afterContinuations outside a callback on an immediate', async () => {
    const [a, b] = pair();
    const log: string[] = [];
    const w = new FdWatch(a, () => {
      drain(a);
      void Promise.resolve().then(() => log.push('promise'));
      afterContinuations(() => log.push('after'));
      throw new Error('a bug in a handler (expected in this test)');
    });
    try {
      fs.writeSync(b, Buffer.from('x'));
      await new Promise((r) => setTimeout(r, 30));
      assert.deepEqual(log, ['promise', 'after']);
      afterContinuations(() => log.push('outside'));
      assert.deepEqual(log, ['promise', 'after']);
      await turn();
      assert.deepEqual(log, ['promise', 'after', 'outside']);
    } finally {
      w.close();
      closeFd(a);
      closeFd(b);
    }
  });

  it('reports a socket whose peer closed it with data unread as a failure that says so', async () => {
    const [a, b] = pair();
    const seen: string[] = [];
    const w = new FdWatch(a, (status) => {
      if (status < 0) seen.push(pollFailure(status));
      else drain(a);
    });
    try {
      fs.writeSync(a, Buffer.from('never read'));
      closeFd(b);
      await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(seen, ['the descriptor reports an error (POLLERR; a socket whose peer closed it with data unread)']);
    } finally {
      w.close();
      closeFd(a);
    }
  });

  it('refuses a descriptor that is not open, with an error naming it', () => {
    const [a, b] = pair();
    closeFd(a);
    closeFd(b);
    assert.throws(() => new FdWatch(a, () => undefined), (e: unknown) => e instanceof FdWatchError && e.message.includes(`descriptor ${a}`));
  });
});
