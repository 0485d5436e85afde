import assert from 'node:assert/strict';
import { Errno, KdbusError } from '../../src/abi/errno';
import { Pool } from '../../src/bus/pool';
import { SparseStorage } from '../../src/bus/pool-storage';
import { QuotaTable, type QuotaCharge } from '../../src/bus/quota';

const MiB = 1024 * 1024;

function errnoOf(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof KdbusError, `expected a KdbusError, got ${String(e)}`);
    return e.errno;
  }
  assert.fail('expected an error');
}

/** A receiver with a 16 MiB pool, queueing the way message.c does: charge, then accounted slice. */
function receiver() {
  const pool = new Pool(new SparseStorage(16 * MiB));
  const quota = new QuotaTable(pool);
  const queue = (user: object, size: number, nfds = 0) => {
    const charge = quota.charge(user, size, nfds);
    const slice = pool.alloc(size, true);
    return {
      charge,
      dequeue() {
        charge.release();
        slice.releaseKernel();
      },
    };
  };
  return { pool, quota, queue };
}

describe('QuotaTable memory', () => {
  // 16 MiB pool: half = 8388608 bytes for the queue.
  it('lets the first user queue a third of the queue half: 2796202 bytes', () => {
    // (8388608 - 0 + 0) / 3 = 2796202.67 -> 2796202
    const { quota } = receiver();
    const a = {};
    assert.equal(errnoOf(() => quota.charge(a, 2796203, 0)), Errno.ENOBUFS);
    quota.charge(a, 2796202, 0);
  });

  it("keeps a user's own queued bytes inside its allowance", () => {
    const { queue, quota } = receiver();
    const a = {};
    queue(a, 2796200); // largest 8-aligned message
    // (8388608 - 2796200 + 2796200) / 3 = 2796202; 2 bytes left for a
    assert.equal(errnoOf(() => quota.charge(a, 8, 0)), Errno.ENOBUFS);
    quota.charge(a, 2, 0);
  });

  it('gives later users a third of what is left', () => {
    const { queue, quota } = receiver();
    const a = {};
    const b = {};
    const c = {};
    const qa = queue(a, 2796200);
    // b: (8388608 - 2796200 + 0) / 3 = 1864136
    assert.equal(errnoOf(() => quota.charge(b, 1864137, 0)), Errno.ENOBUFS);
    queue(b, 1864136);
    // c: (8388608 - 4660336) / 3 = 1242757.33 -> 1242757
    assert.equal(errnoOf(() => quota.charge(c, 1242758, 0)), Errno.ENOBUFS);
    quota.charge(c, 1242757, 0).release();
    // a's messages leave the queue: b may now grow to (8388608 - 1864136 + 1864136) / 3 = 2796202
    qa.dequeue();
    assert.equal(errnoOf(() => quota.charge(b, 932067, 0)), Errno.ENOBUFS);
    quota.charge(b, 932066, 0);
  });

  it("measures the queue by the pool's accounted slices, not by charges", () => {
    // The kernel reads the pool's accounted size at charge time, before the message's own
    // slice exists: a charge whose slice is not allocated yet does not shrink others' share.
    const { pool, quota } = receiver();
    const a = {};
    const b = {};
    quota.charge(a, 2796200, 0);
    quota.charge(b, 2796202, 0).release(); // (8388608 - 0) / 3
    const slice = pool.alloc(2796200, true);
    assert.equal(errnoOf(() => quota.charge(b, 1864137, 0)), Errno.ENOBUFS); // (8388608 - 2796200) / 3
    slice.releaseKernel(); // dequeued, charge still held: the share comes back
    quota.charge(b, 2796202, 0);
  });

  it('ignores unaccounted slices (command results)', () => {
    const { pool, quota } = receiver();
    pool.alloc(8 * MiB, false); // half the pool held by the owner's own results
    quota.charge({}, 2796202, 0);
  });

  it('refuses everything once the queue holds more than half the pool', () => {
    const { pool, quota } = receiver();
    pool.alloc(8388616, true);
    assert.equal(errnoOf(() => quota.charge({}, 0, 0)), Errno.ENOBUFS);
  });

  it('at exactly half, leaves a new user 0 bytes', () => {
    const { pool, quota } = receiver();
    pool.alloc(8388608, true);
    // (8388608 - 8388608 + 0) / 3 = 0
    assert.equal(errnoOf(() => quota.charge({}, 8, 0)), Errno.ENOBUFS);
    quota.charge({}, 0, 0);
  });

  it("caps a user's queued bytes at u32", () => {
    // A 64 GiB pool: the allowance (2^35 / 3) exceeds 2^32 - 1, the u32 counter does not.
    const quota = new QuotaTable({ size: 2 ** 36, accountedSize: 0 });
    const a = {};
    assert.equal(errnoOf(() => quota.charge(a, 2 ** 32, 0)), Errno.ENOBUFS);
    quota.charge(a, 2 ** 32 - 1, 0);
    assert.equal(errnoOf(() => quota.charge(a, 1, 0)), Errno.ENOBUFS);
  });
});

describe('QuotaTable messages and fds', () => {
  it('allows 256 queued messages per user, the 257th is ENOBUFS', () => {
    const { queue, quota } = receiver();
    const a = {};
    const queued = [];
    for (let i = 0; i < 256; i++) queued.push(queue(a, 64));
    assert.equal(errnoOf(() => quota.charge(a, 64, 0)), Errno.ENOBUFS);
    queue({}, 64); // another user is not affected
    queued[0]!.dequeue();
    queue(a, 64);
    assert.equal(errnoOf(() => quota.charge(a, 64, 0)), Errno.ENOBUFS);
  });

  it('allows 16 queued fds per user: 17 in one message or in total is EMFILE', () => {
    const { quota } = receiver();
    const a = {};
    assert.equal(errnoOf(() => quota.charge(a, 64, 17)), Errno.EMFILE);
    const first = quota.charge(a, 64, 10);
    quota.charge(a, 64, 6);
    assert.equal(errnoOf(() => quota.charge(a, 64, 1)), Errno.EMFILE);
    quota.charge(a, 64, 0); // messages without fds still go through
    quota.charge({}, 64, 16); // another user has its own 16
    first.release();
    quota.charge(a, 64, 10);
  });

  it('checks memory, then message count, then fds', () => {
    const { queue, quota } = receiver();
    const a = {};
    assert.equal(errnoOf(() => quota.charge(a, 2796203, 17)), Errno.ENOBUFS, 'memory before fds');
    for (let i = 0; i < 256; i++) queue(a, 8);
    assert.equal(errnoOf(() => quota.charge(a, 8, 17)), Errno.ENOBUFS, 'message count before fds');
  });

  it('charges nothing when it refuses', () => {
    const { quota } = receiver();
    const a = {};
    for (let i = 0; i < 100; i++) errnoOf(() => quota.charge(a, 64, 17));
    quota.charge(a, 64, 16);
  });
});

describe('QuotaCharge', () => {
  it('releases once however often release() is called', () => {
    const { quota } = receiver();
    const a = {};
    const charges: QuotaCharge[] = [];
    for (let i = 0; i < 256; i++) charges.push(quota.charge(a, 8, 0));
    charges[0]!.release();
    charges[0]!.release();
    quota.charge(a, 8, 0);
    assert.equal(errnoOf(() => quota.charge(a, 8, 0)), Errno.ENOBUFS);
  });

  it('remembers what it charged, to re-charge a moved message', () => {
    const { quota } = receiver();
    const kernel = {};
    const c = quota.charge(kernel, 48, 3);
    assert.deepEqual([c.user, c.size, c.nfds], [kernel, 48, 3]);
  });

  it('drops idle users in sweeps, never users with queued messages', () => {
    const { quota } = receiver();
    const users = (quota as unknown as { users: Map<object, unknown> }).users;
    const busy = {};
    for (let i = 0; i < 256; i++) quota.charge(busy, 8, 0);
    for (let i = 0; i < 63; i++) quota.charge({}, 8, 1).release();
    assert.equal(users.size, 64);
    quota.charge({}, 8, 0); // the 65th user sweeps the 63 idle ones first
    assert.equal(users.size, 2);
    assert.equal(errnoOf(() => quota.charge(busy, 8, 0)), Errno.ENOBUFS, 'busy user kept its count');
  });
});
