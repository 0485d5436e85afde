import assert from 'node:assert/strict';
import { Errno, KdbusError } from '../../src/abi/errno';
import type { Credentials } from '../../src/bus/caller';
import { PolicyDb, PolicyEntry, PolicyItem, parsePolicyUpload } from '../../src/bus/policy';

// kdbus.h: enum kdbus_policy_access_type / enum kdbus_policy_type.
const USER = 1;
const GROUP = 2;
const WORLD = 3;
const SEE = 0;
const TALK = 1;
const OWN = 2;

function errnoOf(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof KdbusError, `expected a KdbusError, got ${String(e)}`);
    return e.errno;
  }
  assert.fail('expected an error');
}

function creds(over: Partial<Credentials> = {}): Credentials {
  return { uid: 1000, euid: 1000, suid: 1000, fsuid: 1000, gid: 100, egid: 100, sgid: 100, fsgid: 100, groups: [], ...over };
}

const name = (n: string): PolicyItem => ({ kind: 'name', name: n });
const access = (type: number, level: number, id = 0n): PolicyItem => ({ kind: 'access', type, access: level, id });

/** What a holder's UPDATE / HELLO would install: one NAME group. */
function holderPolicy(n: string, ...rules: PolicyItem[]): PolicyEntry[] {
  return parsePolicyUpload([name(n), ...rules], { maxNames: 1 });
}

describe('parsePolicyUpload', () => {
  it('groups POLICY_ACCESS items under the preceding NAME', () => {
    const entries = parsePolicyUpload([name('a.b'), access(USER, OWN, 1000n), access(WORLD, SEE), name('c.d'), name('e.f'), access(GROUP, TALK, 5n)]);
    assert.deepEqual(entries, [
      { name: 'a.b', rules: [{ type: USER, access: OWN, id: 1000 }, { type: WORLD, access: SEE, id: 0 }] },
      { name: 'c.d', rules: [] },
      { name: 'e.f', rules: [{ type: GROUP, access: TALK, id: 5 }] },
    ]);
  });

  it('rejects POLICY_ACCESS before any NAME with EINVAL', () => {
    assert.equal(errnoOf(() => parsePolicyUpload([access(WORLD, SEE), name('a.b')])), Errno.EINVAL);
  });

  it('rejects access levels outside SEE..OWN and types outside USER..WORLD with EINVAL', () => {
    for (const [type, level] of [
      [WORLD, 3],
      [WORLD, -1],
      [0, SEE],
      [4, SEE],
      [USER, 2 ** 53],
    ] as const) {
      assert.equal(errnoOf(() => parsePolicyUpload([name('a.b'), access(type, level)])), Errno.EINVAL, `type ${type} access ${level}`);
    }
  });

  it('rejects invalid names with EINVAL (test-policy)', () => {
    for (const bad of ['.example.a', 'example', '.example.*', 'a.b*', 'a.*.b', '*.a']) {
      assert.equal(errnoOf(() => parsePolicyUpload([name(bad)])), Errno.EINVAL, bad);
    }
  });

  it('takes uid/gid as uid_t: low 32 bits, (uid_t)-1 refused', () => {
    assert.equal(errnoOf(() => parsePolicyUpload([name('a.b'), access(USER, OWN, 0xffff_ffffn)])), Errno.EINVAL);
    assert.equal(errnoOf(() => parsePolicyUpload([name('a.b'), access(GROUP, OWN, 0x1_ffff_ffffn)])), Errno.EINVAL);
    const [e] = parsePolicyUpload([name('a.b'), access(USER, OWN, 0x1_0000_03e8n), access(WORLD, TALK, 0xffff_ffffn)]);
    assert.deepEqual(e!.rules, [{ type: USER, access: OWN, id: 1000 }, { type: WORLD, access: TALK, id: 0 }]);
  });

  it('limits the number of NAME groups with E2BIG, checked before the extra name is validated', () => {
    assert.equal(errnoOf(() => parsePolicyUpload([name('a.b'), name('c.d')], { maxNames: 1 })), Errno.E2BIG);
    assert.equal(errnoOf(() => parsePolicyUpload([name('a.b'), name('invalid')], { maxNames: 1 })), Errno.E2BIG);
    // The first problem in item order wins.
    assert.equal(errnoOf(() => parsePolicyUpload([name('a.b'), access(9, SEE), name('c.d')], { maxNames: 1 })), Errno.EINVAL);
    assert.equal(parsePolicyUpload([name('a.b'), name('c.d'), name('e.f')]).length, 3);
  });

  it('accepts a final ".*" element as syntax but keeps it as a literal name (final kernel behaviour)', () => {
    assert.deepEqual(parsePolicyUpload([name('com.example.*'), access(WORLD, OWN)], { maxNames: 1 }), [
      { name: 'com.example.*', rules: [{ type: WORLD, access: OWN, id: 0 }] },
    ]);
  });
});

describe('PolicyDb', () => {
  let db: PolicyDb;
  beforeEach(() => {
    db = new PolicyDb();
  });

  it('refuses names installed by another owner, except a different literal (test-policy sequence)', () => {
    const connA = {};
    const connB = {};
    const see = access(USER, SEE, 1000n);
    db.set(connA, holderPolicy('com.example.a'));
    db.set(connB, holderPolicy('com.example.b'));

    db.set(connA, holderPolicy('com.example.a', see));
    assert.equal(errnoOf(() => db.set(connB, holderPolicy('com.example.a', see))), Errno.EEXIST);
    db.set(connB, holderPolicy('com.example.a.*', see));
    assert.equal(errnoOf(() => db.set(connA, holderPolicy('com.example.a.*', see))), Errno.EEXIST);
    db.set(connA, holderPolicy('com.example.*', see));
    db.set(connB, holderPolicy('com.example.a', see));
    assert.equal(errnoOf(() => db.set(connB, holderPolicy('com.example.*', see))), Errno.EEXIST);
  });

  it('replaces an owner’s entries atomically and leaves them untouched on EEXIST', () => {
    const holder = {};
    const other = {};
    db.set(other, holderPolicy('x.taken', access(WORLD, OWN)));
    db.set(holder, parsePolicyUpload([name('x.one'), access(WORLD, TALK), name('x.two'), access(WORLD, SEE)]));
    assert.equal(errnoOf(() => db.set(holder, parsePolicyUpload([name('x.three'), access(WORLD, OWN), name('x.taken')]))), Errno.EEXIST);
    assert.equal(db.access(creds(), 'x.one'), TALK);
    assert.equal(db.access(creds(), 'x.two'), SEE);
    assert.equal(db.access(creds(), 'x.three'), -1);
    assert.equal(db.access(creds(), 'x.taken'), OWN);

    db.set(holder, parsePolicyUpload([name('x.two'), access(WORLD, OWN)]));
    assert.equal(db.access(creds(), 'x.one'), -1);
    assert.equal(db.access(creds(), 'x.two'), OWN);
  });

  it('refuses a name given twice in one upload (EEXIST) without changing anything', () => {
    const ep = {};
    db.set(ep, parsePolicyUpload([name('x.keep'), access(WORLD, SEE)]));
    assert.equal(errnoOf(() => db.set(ep, parsePolicyUpload([name('x.dup'), name('x.dup')]))), Errno.EEXIST);
    assert.equal(db.access(creds(), 'x.keep'), SEE);
  });

  it('removeOwner frees the names for others', () => {
    const a = {};
    const b = {};
    db.set(a, holderPolicy('x.name', access(WORLD, OWN)));
    db.removeOwner(a);
    assert.equal(db.access(creds(), 'x.name'), -1);
    db.set(b, holderPolicy('x.name', access(WORLD, TALK)));
    assert.equal(db.access(creds(), 'x.name'), TALK);
    db.removeOwner(a);
    assert.equal(db.access(creds(), 'x.name'), TALK);
  });

  it('matches USER on euid, GROUP on egid or supplementary groups, WORLD on everyone', () => {
    db.set({}, holderPolicy('x.user', access(USER, OWN, 1000n)));
    db.set({}, holderPolicy('x.group', access(GROUP, TALK, 50n)));
    db.set({}, holderPolicy('x.world', access(WORLD, SEE)));

    assert.equal(db.access(creds({ euid: 1000, uid: 0 }), 'x.user'), OWN);
    assert.equal(db.access(creds({ euid: 0, uid: 1000, suid: 1000, fsuid: 1000 }), 'x.user'), -1);

    assert.equal(db.access(creds({ egid: 50, gid: 0 }), 'x.group'), TALK);
    assert.equal(db.access(creds({ egid: 1, groups: [7, 50] }), 'x.group'), TALK);
    assert.equal(db.access(creds({ egid: 1, gid: 50, sgid: 50, fsgid: 50, groups: [7] }), 'x.group'), -1);

    assert.equal(db.access(creds({ euid: 12345, egid: 12345 }), 'x.world'), SEE);
    assert.equal(db.access(creds(), 'x.unknown'), -1);
  });

  it('returns the highest level granted, whatever the rule order', () => {
    db.set({}, holderPolicy('x.mixed', access(WORLD, SEE), access(USER, OWN, 1000n), access(GROUP, TALK, 100n)));
    assert.equal(db.access(creds(), 'x.mixed'), OWN);
    assert.equal(db.access(creds({ euid: 1 }), 'x.mixed'), TALK);
    assert.equal(db.access(creds({ euid: 1, egid: 1 }), 'x.mixed'), SEE);
  });

  it('an entry without rules grants nothing', () => {
    db.set({}, holderPolicy('x.empty'));
    assert.equal(db.access(creds(), 'x.empty'), -1);
    assert.equal(db.canSee(creds(), 'x.empty'), false);
  });

  it('OWN implies TALK implies SEE', () => {
    db.set({}, holderPolicy('x.own', access(WORLD, OWN)));
    db.set({}, holderPolicy('x.talk', access(WORLD, TALK)));
    db.set({}, holderPolicy('x.see', access(WORLD, SEE)));
    const c = creds();
    assert.deepEqual(
      ['x.own', 'x.talk', 'x.see', 'x.none'].map((n) => [db.canOwn(c, n), db.canTalkToAny(c, [n]), db.canSee(c, n)]),
      [
        [true, true, true],
        [false, true, true],
        [false, false, true],
        [false, false, false],
      ],
    );
  });

  it('canTalkToAny / canSeeAny grant when any of the names does', () => {
    db.set({}, holderPolicy('x.talk', access(USER, TALK, 1000n)));
    db.set({}, holderPolicy('x.see', access(USER, SEE, 1000n)));
    assert.equal(db.canTalkToAny(creds(), ['x.none', 'x.see', 'x.talk']), true);
    assert.equal(db.canTalkToAny(creds(), ['x.none', 'x.see']), false);
    assert.equal(db.canTalkToAny(creds(), []), false);
    assert.equal(db.canSeeAny(creds(), ['x.none', 'x.see']), true);
    assert.equal(db.canSeeAny(creds({ euid: 1 }), ['x.see', 'x.talk']), false);
  });

  it('a "prefix.*" entry is literal: it grants nothing for names below the prefix (final kernel behaviour)', () => {
    db.set({}, holderPolicy('com.example.*', access(WORLD, OWN)));
    assert.equal(db.access(creds(), 'com.example.foo'), -1);
    assert.equal(db.access(creds(), 'com.example'), -1);
    assert.equal(db.access(creds(), 'com.example.*'), OWN);
  });
});
