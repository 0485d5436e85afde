import assert from 'node:assert/strict';
import os from 'node:os';
import { byteShares, descriptorShares, HeldBudget } from '../../src/os/held-budget';

describe('HeldBudget: what connections hold, per user and in all', () => {
  it('derives descriptor shares from the file limit, never below one message of the most descriptors', () => {
    assert.deepEqual(descriptorShares(20000, 16), { perUser: 1250, total: 5000 });
    assert.deepEqual(descriptorShares(1024, 16), { perUser: 64, total: 256 });
    assert.deepEqual(descriptorShares(100, 16), { perUser: 16, total: 25 });
    assert.deepEqual(descriptorShares(10, 16), { perUser: 16, total: 16 });
  });

  it('derives byte shares from the memory, never below one message of the largest size', () => {
    const GiB = 1024 ** 3;
    assert.deepEqual(byteShares(128 << 20, 24 * GiB), { perUser: 1.5 * GiB, total: 6 * GiB });
    assert.deepEqual(byteShares(128 << 20, GiB), { perUser: 128 << 20, total: 256 << 20 });
    const here = byteShares(1);
    assert.ok(here.perUser > 1 && here.total <= os.totalmem() / 4, `shares of this machine's memory: ${JSON.stringify(here)}`);
  });

  it("refuses an increase beyond the user's share, recording nothing, and lets decreases through", () => {
    const budget = new HeldBudget('descriptors of unfinished messages', { perUser: 4, total: 10 });
    const a = budget.account(7);
    const b = budget.account(7);
    assert.equal(a.hold(3), true);
    assert.equal(b.hold(2), false);
    assert.match(b.refusal, /uid 7\) would hold 5 descriptors .* than the 4 one user may/);
    assert.deepEqual([budget.held(7), budget.held()], [3, 3]);
    assert.equal(b.hold(1), true);
    assert.equal(a.hold(1), true, 'a decrease');
    assert.equal(b.hold(3), true, 'room left by the decrease');
    assert.deepEqual([budget.held(7), budget.held()], [4, 4]);
    assert.equal(a.hold(0), true);
    assert.equal(b.hold(0), true);
    assert.deepEqual([budget.held(7), budget.held()], [0, 0]);
  });

  it('refuses an increase beyond the share of all users, whoever asks', () => {
    const budget = new HeldBudget('descriptors of unfinished messages', { perUser: 4, total: 6 });
    const users = [1, 2, 3].map((uid) => budget.account(uid));
    assert.equal(users[0]!.hold(3), true);
    assert.equal(users[1]!.hold(3), true);
    assert.equal(users[2]!.hold(1), false);
    assert.match(users[2]!.refusal, /all clients would hold 7 descriptors .* than the 6 all may/);
    assert.equal(users[0]!.hold(2), true);
    assert.equal(users[2]!.hold(1), true);
    assert.deepEqual([budget.held(1), budget.held(2), budget.held(3), budget.held()], [2, 3, 1, 6]);
  });
});
