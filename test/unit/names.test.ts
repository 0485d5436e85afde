import assert from 'node:assert/strict';
import { NameFlags } from '../../src/abi/constants';
import { Errno, KdbusError } from '../../src/abi/errno';
import { NameChange, NameExistsError, NameOwner, NameRegistry } from '../../src/bus/names';

// Bit values from kdbus.h (enum kdbus_name_flags), spelled out so the tests pin them.
const REPLACE_EXISTING = 1n << 0n;
const ALLOW_REPLACEMENT = 1n << 1n;
const QUEUE = 1n << 2n;
const IN_QUEUE = 1n << 3n;
const ACTIVATOR = 1n << 4n;
const PRIMARY = 1n << 5n;
const ACQUIRED = 1n << 6n;

interface Conn extends NameOwner {
  readonly label: string;
}

let nextId = 1n;
function conn(label: string): Conn {
  return { id: nextId++, helloFlags: 0n, label };
}

function errnoOf(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof KdbusError, `expected a KdbusError, got ${String(e)}`);
    return e.errno;
  }
  assert.fail('expected an error');
}

/** A change in a comparable shape: labels instead of objects. */
function show(c: NameChange<Conn>): unknown {
  return {
    kind: c.kind,
    name: c.name,
    old: c.old && [c.old.owner.label, c.old.flags],
    new: c.new && [c.new.owner.label, c.new.flags],
    move: c.moveMessages,
  };
}

function records(reg: NameRegistry<Conn>, c: Conn): Array<[string, bigint]> {
  return [...reg.records(c)].map((r) => [r.name, r.flags]);
}

function queueOf(reg: NameRegistry<Conn>, name: string): Array<[string, bigint]> {
  const e = reg.entry(name);
  return e ? [...e.records()].map((r) => [r.owner.label, r.flags]) : [];
}

const N = 'foo.bla.blaz';

describe('NameRegistry', () => {
  let reg: NameRegistry<Conn>;
  let a: Conn;
  let b: Conn;
  let c: Conn;

  beforeEach(() => {
    reg = new NameRegistry<Conn>();
    a = conn('a');
    b = conn('b');
    c = conn('c');
  });

  it('uses the kdbus.h flag values', () => {
    assert.deepEqual(
      [NameFlags.REPLACE_EXISTING, NameFlags.ALLOW_REPLACEMENT, NameFlags.QUEUE, NameFlags.IN_QUEUE, NameFlags.ACTIVATOR, NameFlags.PRIMARY, NameFlags.ACQUIRED],
      [REPLACE_EXISTING, ALLOW_REPLACEMENT, QUEUE, IN_QUEUE, ACTIVATOR, PRIMARY, ACQUIRED],
    );
  });

  describe('acquire', () => {
    it('takes a free name: PRIMARY|ACQUIRED and NAME_ADD with the record flags', () => {
      const r = reg.acquire(a, N, 0n);
      assert.equal(r.returnFlags, PRIMARY | ACQUIRED);
      assert.deepEqual(r.changes.map(show), [{ kind: 'add', name: N, old: undefined, new: ['a', PRIMARY], move: false }]);
      assert.equal(reg.primaryOwner(N), a);
      assert.equal(reg.ownerOf(N), a);
      assert.deepEqual(records(reg, a), [[N, PRIMARY]]);
    });

    it('saves only ALLOW_REPLACEMENT and QUEUE', () => {
      const r = reg.acquire(a, N, REPLACE_EXISTING | ALLOW_REPLACEMENT | QUEUE);
      assert.equal(r.returnFlags, ALLOW_REPLACEMENT | QUEUE | PRIMARY | ACQUIRED);
      assert.deepEqual(records(reg, a), [[N, ALLOW_REPLACEMENT | QUEUE | PRIMARY]]);
      assert.deepEqual(r.changes.map(show)[0], { kind: 'add', name: N, old: undefined, new: ['a', ALLOW_REPLACEMENT | QUEUE | PRIMARY], move: false });
    });

    it('re-acquiring an owned name returns PRIMARY without ACQUIRED and replaces the saved flags (test-chat foo.bar.double)', () => {
      reg.acquire(a, N, ALLOW_REPLACEMENT | QUEUE);
      const r = reg.acquire(a, N, 0n);
      assert.equal(r.returnFlags, PRIMARY);
      assert.deepEqual(r.changes, []);
      assert.deepEqual(records(reg, a), [[N, PRIMARY]]);
      // Replacement is no longer allowed, so b cannot take over.
      assert.equal(errnoOf(() => reg.acquire(b, N, REPLACE_EXISTING)), Errno.EEXIST);
    });

    it('refuses a taken name with EEXIST, still reporting return flags, and leaves no record', () => {
      reg.acquire(a, N, 0n);
      let err: unknown;
      try {
        reg.acquire(b, N, ALLOW_REPLACEMENT | REPLACE_EXISTING);
      } catch (e) {
        err = e;
      }
      assert.ok(err instanceof NameExistsError);
      assert.equal(err.errno, Errno.EEXIST);
      assert.equal(err.returnFlags, ALLOW_REPLACEMENT);
      assert.equal(reg.recordCount(b), 0);
      assert.deepEqual(queueOf(reg, N), [['a', PRIMARY]]);
    });

    it('queues with QUEUE: IN_QUEUE|ACQUIRED, LIST flags PRIMARY and QUEUE|IN_QUEUE; release hands over (test-names name-queue)', () => {
      assert.equal(reg.acquire(a, N, 0n).returnFlags, PRIMARY | ACQUIRED);
      const q = reg.acquire(b, N, QUEUE);
      assert.equal(q.returnFlags, QUEUE | IN_QUEUE | ACQUIRED);
      assert.deepEqual(q.changes, []);
      assert.deepEqual(records(reg, a), [[N, PRIMARY]]);
      assert.deepEqual(records(reg, b), [[N, QUEUE | IN_QUEUE]]);
      assert.equal(reg.holds(b, N), false);
      assert.deepEqual([...reg.primaryNames(b)], []);

      const changes = reg.release(a, N);
      assert.deepEqual(changes.map(show), [{ kind: 'change', name: N, old: ['a', PRIMARY], new: ['b', QUEUE | PRIMARY], move: false }]);
      assert.deepEqual(records(reg, b), [[N, PRIMARY | QUEUE]]);
      assert.deepEqual(records(reg, a), []);
      assert.equal(reg.primaryOwner(N), b);
    });

    it('keeps the queue position of an owner that asks again with QUEUE (no ACQUIRED, flags replaced)', () => {
      reg.acquire(a, N, 0n);
      reg.acquire(b, N, QUEUE);
      reg.acquire(c, N, QUEUE);
      const again = reg.acquire(b, N, QUEUE | ALLOW_REPLACEMENT);
      assert.equal(again.returnFlags, ALLOW_REPLACEMENT | QUEUE | IN_QUEUE);
      assert.deepEqual(again.changes, []);
      assert.deepEqual(queueOf(reg, N), [
        ['a', PRIMARY],
        ['b', ALLOW_REPLACEMENT | QUEUE | IN_QUEUE],
        ['c', QUEUE | IN_QUEUE],
      ]);
      assert.deepEqual(reg.release(a, N).map(show), [{ kind: 'change', name: N, old: ['a', PRIMARY], new: ['b', ALLOW_REPLACEMENT | QUEUE | PRIMARY], move: false }]);
    });

    it('removes a queued owner that asks again without QUEUE and returns its saved flags', () => {
      reg.acquire(a, N, 0n);
      reg.acquire(b, N, QUEUE);
      reg.acquire(c, N, QUEUE);
      const r = reg.acquire(b, N, ALLOW_REPLACEMENT);
      assert.equal(r.returnFlags, ALLOW_REPLACEMENT);
      assert.deepEqual(r.changes, []);
      assert.deepEqual(records(reg, b), []);
      assert.deepEqual(queueOf(reg, N), [
        ['a', PRIMARY],
        ['c', QUEUE | IN_QUEUE],
      ]);
    });

    it('replaces a primary that allows it and drops it when it did not ask to queue (test-names name-takeover)', () => {
      assert.equal(reg.acquire(a, N, ALLOW_REPLACEMENT).returnFlags, ALLOW_REPLACEMENT | PRIMARY | ACQUIRED);
      const r = reg.acquire(b, N, REPLACE_EXISTING);
      assert.equal(r.returnFlags, PRIMARY | ACQUIRED);
      assert.deepEqual(r.changes.map(show), [{ kind: 'change', name: N, old: ['a', ALLOW_REPLACEMENT | PRIMARY], new: ['b', PRIMARY], move: false }]);
      assert.deepEqual(records(reg, b), [[N, PRIMARY]]);
      assert.deepEqual(records(reg, a), []);
      assert.deepEqual(reg.release(b, N).map(show), [{ kind: 'remove', name: N, old: ['b', PRIMARY], new: undefined, move: false }]);
      assert.equal(reg.entry(N), undefined);
    });

    it('keeps a replaced primary that has QUEUE at the second position', () => {
      reg.acquire(a, N, ALLOW_REPLACEMENT | QUEUE);
      reg.acquire(c, N, QUEUE);
      const r = reg.acquire(b, N, REPLACE_EXISTING);
      assert.equal(r.returnFlags, PRIMARY | ACQUIRED);
      assert.deepEqual(r.changes.map(show), [{ kind: 'change', name: N, old: ['a', ALLOW_REPLACEMENT | QUEUE | PRIMARY], new: ['b', PRIMARY], move: false }]);
      assert.deepEqual(queueOf(reg, N), [
        ['b', PRIMARY],
        ['a', ALLOW_REPLACEMENT | QUEUE | IN_QUEUE],
        ['c', QUEUE | IN_QUEUE],
      ]);
      assert.deepEqual(reg.release(b, N).map(show), [{ kind: 'change', name: N, old: ['b', PRIMARY], new: ['a', ALLOW_REPLACEMENT | QUEUE | PRIMARY], move: false }]);
    });

    it('lets a queued owner jump the queue with REPLACE_EXISTING', () => {
      reg.acquire(a, N, ALLOW_REPLACEMENT);
      reg.acquire(b, N, QUEUE);
      reg.acquire(c, N, QUEUE);
      const r = reg.acquire(c, N, REPLACE_EXISTING | QUEUE);
      assert.equal(r.returnFlags, QUEUE | PRIMARY | ACQUIRED);
      assert.deepEqual(r.changes.map(show), [{ kind: 'change', name: N, old: ['a', ALLOW_REPLACEMENT | PRIMARY], new: ['c', QUEUE | PRIMARY], move: false }]);
      assert.deepEqual(queueOf(reg, N), [
        ['c', QUEUE | PRIMARY],
        ['b', QUEUE | IN_QUEUE],
      ]);
    });

    it('ignores REPLACE_EXISTING when the primary does not allow replacement: queues with QUEUE, EEXIST without', () => {
      reg.acquire(a, N, QUEUE);
      assert.equal(errnoOf(() => reg.acquire(b, N, REPLACE_EXISTING)), Errno.EEXIST);
      const r = reg.acquire(b, N, REPLACE_EXISTING | QUEUE);
      assert.equal(r.returnFlags, QUEUE | IN_QUEUE | ACQUIRED);
      assert.equal(reg.primaryOwner(N), a);
    });

    it('rejects invalid names with EINVAL (test-names name-basics)', () => {
      for (const bad of ['.bla.blaz', 'foo', 'foo.bla.bl.*', 'foo..bar', 'foo.1bar', 'foo.bar.', '']) {
        assert.equal(errnoOf(() => reg.acquire(a, bad, 0n)), Errno.EINVAL, bad);
      }
      assert.equal(reg.recordCount(a), 0);
    });

    it('allows 256 records per owner, owned and queued together; the 257th is E2BIG, even where EEXIST would follow', () => {
      for (let i = 0; i < 255; i++) reg.acquire(a, `x.n${i}`, 0n);
      reg.acquire(b, N, 0n);
      assert.equal(reg.acquire(a, N, QUEUE).returnFlags, QUEUE | IN_QUEUE | ACQUIRED);
      assert.equal(reg.recordCount(a), 256);
      assert.equal(errnoOf(() => reg.acquire(a, 'x.new', 0n)), Errno.E2BIG);
      assert.equal(reg.entry('x.new'), undefined);
      reg.acquire(c, 'x.other', 0n);
      assert.equal(errnoOf(() => reg.acquire(a, 'x.other', 0n)), Errno.E2BIG);
      // Existing records need no new one.
      assert.equal(reg.acquire(a, 'x.n0', 0n).returnFlags, PRIMARY);
      assert.equal(reg.acquire(a, N, QUEUE).returnFlags, QUEUE | IN_QUEUE);
      reg.release(a, 'x.n1');
      assert.equal(reg.acquire(a, 'x.new', 0n).returnFlags, PRIMARY | ACQUIRED);
    });
  });

  describe('release', () => {
    it('ESRCH for unknown or invalid names, EADDRINUSE for names of others (test-names name-basics)', () => {
      reg.acquire(b, 'foo.bar.xxx', 0n);
      reg.acquire(a, N, 0n);
      reg.release(a, N);
      assert.equal(errnoOf(() => reg.release(a, N)), Errno.ESRCH);
      assert.equal(errnoOf(() => reg.release(a, 'foo.bar.xxx')), Errno.EADDRINUSE);
      for (const bad of ['.bla.blaz', 'foo', 'foo.bla.bl.*']) assert.equal(errnoOf(() => reg.release(a, bad)), Errno.ESRCH, bad);
    });

    it('releases a queued record silently', () => {
      reg.acquire(a, N, 0n);
      reg.acquire(b, N, QUEUE);
      assert.deepEqual(reg.release(b, N), []);
      assert.deepEqual(queueOf(reg, N), [['a', PRIMARY]]);
      assert.deepEqual(reg.release(a, N).map(show), [{ kind: 'remove', name: N, old: ['a', PRIMARY], new: undefined, move: false }]);
    });

    it('releaseAll goes through the records in creation order, a re-created record counting as new', () => {
      reg.acquire(a, 'x.one', 0n);
      reg.acquire(b, 'x.one', QUEUE);
      reg.acquire(c, 'x.two', 0n);
      reg.acquire(a, 'x.two', QUEUE);
      reg.acquire(a, 'x.three', 0n);
      reg.acquire(a, 'x.four', 0n);
      reg.release(a, 'x.three');
      reg.acquire(a, 'x.three', ALLOW_REPLACEMENT);
      assert.deepEqual(
        records(reg, a).map(([n]) => n),
        ['x.one', 'x.two', 'x.four', 'x.three'],
      );
      const changes = reg.releaseAll(a);
      assert.deepEqual(changes.map(show), [
        { kind: 'change', name: 'x.one', old: ['a', PRIMARY], new: ['b', QUEUE | PRIMARY], move: false },
        { kind: 'remove', name: 'x.four', old: ['a', PRIMARY], new: undefined, move: false },
        { kind: 'remove', name: 'x.three', old: ['a', ALLOW_REPLACEMENT | PRIMARY], new: undefined, move: false },
      ]);
      assert.equal(reg.recordCount(a), 0);
      assert.deepEqual(queueOf(reg, 'x.two'), [['c', PRIMARY]]);
      assert.deepEqual(reg.releaseAll(a), []);
    });
  });

  describe('activators', () => {
    let act: Conn;
    beforeEach(() => {
      act = conn('act');
    });

    it('holds a free name (NAME_ADD with ACTIVATOR|PRIMARY) and hands it over both ways, moving messages', () => {
      assert.deepEqual(reg.addActivator(act, N).map(show), [{ kind: 'add', name: N, old: undefined, new: ['act', ACTIVATOR | PRIMARY], move: false }]);
      assert.equal(reg.ownerOf(N), act);
      assert.equal(reg.activatorOf(N), act);
      assert.equal(reg.primaryOwner(N), undefined);
      assert.deepEqual(records(reg, act), [[N, ACTIVATOR | PRIMARY]]);
      assert.deepEqual([...reg.primaryNames(act)], [N]);
      const id = reg.nameId(N);

      const r = reg.acquire(a, N, 0n);
      assert.equal(r.returnFlags, PRIMARY | ACQUIRED);
      assert.deepEqual(r.changes.map(show), [{ kind: 'change', name: N, old: ['act', ACTIVATOR | PRIMARY], new: ['a', PRIMARY], move: true }]);
      assert.equal(r.changes[0]!.nameId, id);
      assert.deepEqual(records(reg, act), [[N, ACTIVATOR | IN_QUEUE]]);
      assert.deepEqual([...reg.primaryNames(act)], []);
      assert.equal(reg.ownerOf(N), a);

      const back = reg.release(a, N);
      assert.deepEqual(back.map(show), [{ kind: 'change', name: N, old: ['a', PRIMARY], new: ['act', ACTIVATOR | PRIMARY], move: true }]);
      assert.equal(back[0]!.nameId, id);
      assert.equal(reg.ownerOf(N), act);
      assert.equal(reg.nameId(N), id);
    });

    it('waits as IN_QUEUE when the name is owned, silently', () => {
      reg.acquire(a, N, 0n);
      assert.deepEqual(reg.addActivator(act, N), []);
      assert.deepEqual(records(reg, act), [[N, ACTIVATOR | IN_QUEUE]]);
      assert.equal(reg.ownerOf(N), a);
      assert.deepEqual(queueOf(reg, N), [
        ['a', PRIMARY],
        ['act', ACTIVATOR | IN_QUEUE],
      ]);
      assert.deepEqual(reg.release(a, N).map(show), [{ kind: 'change', name: N, old: ['a', PRIMARY], new: ['act', ACTIVATOR | PRIMARY], move: true }]);
    });

    it('comes after queued owners: the next queued owner takes over without moving messages', () => {
      reg.addActivator(act, N);
      reg.acquire(a, N, 0n);
      reg.acquire(b, N, QUEUE);
      assert.deepEqual(reg.release(a, N).map(show), [{ kind: 'change', name: N, old: ['a', PRIMARY], new: ['b', QUEUE | PRIMARY], move: false }]);
      assert.deepEqual(reg.release(b, N).map(show), [{ kind: 'change', name: N, old: ['b', QUEUE | PRIMARY], new: ['act', ACTIVATOR | PRIMARY], move: true }]);
    });

    it('allows one activator per name (EEXIST) and refuses acquire by the activator', () => {
      reg.addActivator(act, N);
      assert.equal(errnoOf(() => reg.addActivator(conn('act2'), N)), Errno.EEXIST);
      assert.equal(errnoOf(() => reg.addActivator(act, N)), Errno.EALREADY);
      assert.equal(errnoOf(() => reg.acquire(act, N, 0n)), Errno.EOPNOTSUPP);
      assert.equal(errnoOf(() => reg.addActivator(conn('act3'), 'foo')), Errno.EINVAL);
    });

    it('on disconnect: NAME_REMOVE while holding the name, silent while an implementer holds it', () => {
      reg.addActivator(act, N);
      assert.deepEqual(reg.releaseAll(act).map(show), [{ kind: 'remove', name: N, old: ['act', ACTIVATOR | PRIMARY], new: undefined, move: false }]);
      assert.equal(reg.entry(N), undefined);

      reg.addActivator(act, N);
      reg.acquire(a, N, 0n);
      assert.deepEqual(reg.releaseAll(act), []);
      assert.equal(reg.activatorOf(N), undefined);
      assert.deepEqual(reg.release(a, N).map(show), [{ kind: 'remove', name: N, old: ['a', PRIMARY], new: undefined, move: false }]);
    });

    it('LIST view: entry records list the queue, then the activator', () => {
      reg.addActivator(act, N);
      reg.acquire(a, N, 0n);
      reg.acquire(b, N, QUEUE);
      const e = reg.entry(N)!;
      assert.equal(e.primary, a);
      assert.equal(e.activator, act);
      assert.equal(e.owner, a);
      assert.deepEqual(queueOf(reg, N), [
        ['a', PRIMARY],
        ['b', QUEUE | IN_QUEUE],
        ['act', ACTIVATOR | IN_QUEUE],
      ]);
      assert.deepEqual([...reg.entries()].map((x) => x.name), [N]);
    });
  });

  describe('name ids', () => {
    it('gives each registration its own id, kept while any record exists', () => {
      reg.acquire(a, 'x.one', 0n);
      reg.acquire(a, 'x.two', 0n);
      const one = reg.nameId('x.one')!;
      const two = reg.nameId('x.two')!;
      assert.notEqual(one, two);
      reg.acquire(b, 'x.one', QUEUE);
      reg.release(a, 'x.one');
      assert.equal(reg.nameId('x.one'), one);
      reg.release(b, 'x.one');
      assert.equal(reg.nameId('x.one'), undefined);
      reg.acquire(a, 'x.one', 0n);
      const again = reg.nameId('x.one')!;
      assert.ok(again !== one && again !== two);
    });
  });

  describe('holds / primaryNames', () => {
    it('report names held as primary, in creation order', () => {
      reg.acquire(a, 'x.one', 0n);
      reg.acquire(b, 'x.two', 0n);
      reg.acquire(a, 'x.two', QUEUE);
      reg.acquire(a, 'x.three', 0n);
      assert.deepEqual([...reg.primaryNames(a)], ['x.one', 'x.three']);
      assert.equal(reg.holds(a, 'x.one'), true);
      assert.equal(reg.holds(a, 'x.two'), false);
      assert.equal(reg.holds(a, 'x.none'), false);
    });
  });

  it('stays fast with 10,000 names and a long queue', () => {
    const owners = Array.from({ length: 40 }, (_, i) => conn(`o${i}`));
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 10_000; i++) reg.acquire(owners[i % 40]!, `big.name${i}`, 0n);
    const waiters = Array.from({ length: 5_000 }, (_, i) => conn(`w${i}`));
    for (const w of waiters) reg.acquire(w, 'big.name0', QUEUE);
    for (let i = 0; i < 10_000; i++) {
      reg.acquire(a, N, 0n);
      reg.release(a, N);
    }
    // Leaving from the middle of a long queue is constant time.
    for (const w of waiters) reg.release(w, 'big.name0');
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    assert.equal(reg.entry('big.name0')!.owner, owners[0]);
    assert.equal([...reg.entries()].length, 10_000);
    assert.ok(ms < 2000, `took ${ms} ms`);
  });
});
