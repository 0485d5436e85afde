import assert from 'node:assert/strict';
import { HeldFdBudget, sharesOf } from '../../src/os/held-fds';

describe('HeldFdBudget: descriptors of unfinished messages, per user and in all', () => {
  it('derives its shares from the file limit, never below one message of the most descriptors', () => {
    assert.deepEqual(sharesOf(20000, 16), { perUser: 1250, total: 5000 });
    assert.deepEqual(sharesOf(1024, 16), { perUser: 64, total: 256 });
    assert.deepEqual(sharesOf(100, 16), { perUser: 16, total: 25 });
    assert.deepEqual(sharesOf(10, 16), { perUser: 16, total: 16 });
  });

  it("refuses an increase beyond the user's share, recording nothing, and lets decreases through", () => {
    const budget = new HeldFdBudget({ perUser: 4, total: 10 });
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
    const budget = new HeldFdBudget({ perUser: 4, total: 6 });
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
