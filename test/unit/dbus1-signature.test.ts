import assert from 'node:assert/strict';
import {
  isValidSignature,
  parseCompleteType,
  parseSignature,
  SignatureError,
  splitSignature,
} from '../../src/dbus1/signature';
import { requireOrSkip } from '../helpers/require';
import { oracle, oracleAvailable } from './dbus1-oracle';

const arrays = (n: number, leaf = 'y'): string => 'a'.repeat(n) + leaf;
const structs = (n: number, leaf = 'y'): string => '('.repeat(n) + leaf + ')'.repeat(n);
/** n levels of "a(" … ")": n arrays and n structs nested alternately. */
const mixed = (n: number): string => 'a('.repeat(n) + 'y' + ')'.repeat(n);

const VALID = [
  '',
  'y',
  'ybnqiuxtdhsogv',
  'a{sv}',
  'a{yv}',
  'a{oa{sa{sv}}}',
  '(i)',
  'aai',
  'a(a{s(ii)})',
  'av',
  '(((y)))',
  'a{s(yv)}as',
  'i'.repeat(255),
  arrays(32),
  structs(32),
  mixed(32),
];

const INVALID: [string, number][] = [
  ['(', 0],
  [')', 0],
  ['()', 0],
  ['a', 1],
  ['aa', 2],
  ['{sv}', 0],
  ['a{vs}', 2],
  ['a{s}', 1],
  ['a{sss}', 4],
  ['a{(i)s}', 2],
  ['a{}', 1],
  ['a{sv', 1],
  ['a()', 1],
  ['m', 0],
  ['z', 0],
  ['(i', 0],
  ['i)', 1],
  ['(i}', 2],
  ['a{si)', 4],
  ['i'.repeat(256), 255],
  [arrays(33), 32],
  [structs(33), 32],
  ['\u00e9', 0],
];

describe('dbus1/signature', function () {
  it('accepts valid signatures and refuses invalid ones, saying where', function () {
    for (const s of VALID) assert.ok(isValidSignature(s), s);
    for (const [s, at] of INVALID) {
      assert.throws(
        () => parseSignature(s),
        (e: unknown) => e instanceof SignatureError && e.position === at,
        `${s} should fail at ${at}`,
      );
    }
  });

  it('agrees with libdbus on every case', function () {
    requireOrSkip(this, oracleAvailable(), 'python3-gi and python3-dbus for /usr/bin/python3');
    const all = [...VALID, ...INVALID.map(([s]) => s).filter((s) => /^[\x20-\x7e]*$/.test(s))];
    const verdicts = oracle<boolean>(all.map((signature) => ({ op: 'libdbus_signature', signature })));
    all.forEach((s, i) => assert.equal(isValidSignature(s), verdicts[i], s));
  });

  it('holds total container nesting to 64', function () {
    // 32 arrays and 32 structs alternating is 64 containers: the maximum.
    assert.ok(isValidSignature(mixed(32)));
    // Dict entries nest too: a{s…} 31 times inside 32 structs and 1 more array is 32 arrays,
    // 31 dict entries and 32 structs: 95 containers, which no value can fill validly.
    const deep = 'a{s'.repeat(31) + 'a' + structs(32) + '}'.repeat(31);
    assert.throws(() => parseSignature(deep), /containers nested deeper than 64/);
  });

  it('splits a signature into its single complete types', function () {
    assert.deepStrictEqual(splitSignature('a{sv}si(ay)vaai'), ['a{sv}', 's', 'i', '(ay)', 'v', 'aai']);
    assert.deepStrictEqual(splitSignature(''), []);
    assert.equal(parseCompleteType('a{sv}').signature, 'a{sv}');
    assert.throws(() => parseCompleteType('ii'), /not a single complete type/);
    assert.throws(() => parseCompleteType(''), /not a single complete type/);
  });

  it('knows the dbus1 alignment of every type (specification, "Summary of types")', function () {
    const expected: Record<string, number> = {
      y: 1, b: 4, n: 2, q: 2, i: 4, u: 4, x: 8, t: 8, d: 8, h: 4,
      s: 4, o: 4, g: 1, v: 1, ai: 4, '(y)': 8, 'a{yy}': 4,
    };
    for (const [sig, a] of Object.entries(expected)) assert.equal(parseCompleteType(sig).dbus1Alignment, a, sig);
    assert.equal(parseCompleteType('a{yy}').element!.dbus1Alignment, 8);
  });

  it('knows GVariant alignment and fixed sizes (GVariant specification, 2.3)', function () {
    const expected: Record<string, [number, number]> = {
      y: [1, 1], b: [1, 1], n: [2, 2], q: [2, 2], i: [4, 4], u: [4, 4], h: [4, 4],
      x: [8, 8], t: [8, 8], d: [8, 8], s: [1, 0], o: [1, 0], g: [1, 0], v: [8, 0],
      ay: [1, 0], ax: [8, 0], as: [1, 0], 'a{sv}': [8, 0],
      '(yy)': [1, 2], '(iy)': [4, 8], '(yi)': [4, 8], '(ty)': [8, 16], '(ii(y))': [4, 12],
      '(sy)': [1, 0], '(ys)': [1, 0], '(yv)': [8, 0], '(ayy)': [1, 0],
    };
    for (const [sig, [a, size]] of Object.entries(expected)) {
      const t = parseCompleteType(sig);
      assert.deepStrictEqual([t.gvariantAlignment, t.gvariantFixedSize], [a, size], sig);
    }
    // {yy} as the element of a{yy}: a fixed-size dict entry of 2 bytes
    const entry = parseCompleteType('a{yy}').element!;
    assert.deepStrictEqual([entry.code, entry.gvariantAlignment, entry.gvariantFixedSize], ['{', 1, 2]);
  });
});
