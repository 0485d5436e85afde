import assert from 'node:assert/strict';
import {
  decodeGVariant,
  decodeGVariantBody,
  encodeGVariant,
  encodeGVariantBody,
  GVariantError,
  gvariantOffsetSize,
  gvariantWordSize,
} from '../../src/dbus1/gvariant';
import { Value, ValueError, Variant } from '../../src/dbus1/value';
import { requireOrSkip } from '../helpers/require';
import { VALUE_CASES } from './dbus1-cases';
import { hex, oracle, oracleAvailable, tagged, taggedBody } from './dbus1-oracle';

interface Check {
  normal: boolean;
  value?: unknown;
  dbusTypes?: boolean;
}

const BODIES: { signature: string; values: Value[] }[] = [
  { signature: '', values: [] },
  { signature: 'y', values: [1] },
  { signature: 's', values: ['x'] },
  { signature: 'ii', values: [1, 2] },
  { signature: 'sa{sv}as', values: ['org.x', [['p', new Variant('u', 5)]], ['inv']] },
  { signature: 'yv', values: [1, new Variant('x', 2n)] },
  { signature: 'asy', values: [[], 0] },
];

function gvError(fn: () => unknown): GVariantError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof GVariantError, `expected a GVariantError, got ${String(e)}`);
    return e;
  }
  assert.fail('expected a GVariantError');
}

/** Mutations of valid serializations: every byte flipped a few ways, truncations, an extra byte. */
function mutations(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i++) {
    for (const f of [(b: number) => b ^ 0x01, (b: number) => b ^ 0x80, () => 0xff, () => 0x00]) {
      const m = Buffer.from(data);
      m[i] = f(m[i]!);
      if (!m.equals(data)) out.push(m);
    }
  }
  for (let n = 1; n <= Math.min(3, data.length); n++) out.push(data.subarray(0, data.length - n));
  out.push(Buffer.concat([data, Buffer.from([0])]));
  return out;
}

describe('dbus1/gvariant: GVariant serialization against GLib', function () {
  let glib: string[] = [];
  let glibBodies: string[] = [];

  before(function () {
    requireOrSkip(this, oracleAvailable(), 'python3-gi and python3-dbus for /usr/bin/python3');
    glib = oracle<string>(VALUE_CASES.map((c) => ({ op: 'gv_encode', type: c.signature, value: tagged(c.signature, c.value) })));
    glibBodies = oracle<string>(
      BODIES.map((b) => ({ op: 'gv_encode', type: `(${b.signature})`, value: taggedBody(b.signature, b.values) })),
    );
  });

  it('encodes every case byte for byte as GLib does', function () {
    VALUE_CASES.forEach((c, i) => {
      assert.equal(hex(encodeGVariant(c.signature, c.value)), glib[i], `'${c.signature}' case ${i}`);
    });
  });

  it("decodes GLib's bytes back to the same values", function () {
    VALUE_CASES.forEach((c, i) => {
      assert.deepStrictEqual(decodeGVariant(c.signature, Buffer.from(glib[i]!, 'hex')), c.value, `'${c.signature}' case ${i}`);
    });
  });

  it('encodes and decodes message bodies as the tuple of their types, "()" as one zero byte', function () {
    assert.equal(glibBodies[0], '00');
    BODIES.forEach((b, i) => {
      assert.equal(hex(encodeGVariantBody(b.signature, b.values)), glibBodies[i], `body '${b.signature}'`);
      assert.deepStrictEqual(decodeGVariantBody(b.signature, Buffer.from(glibBodies[i]!, 'hex')), b.values);
    });
  });

  it('accepts exactly what GLib deems normal form, and reads it as GLib does', function () {
    this.timeout(20000);
    const picked = VALUE_CASES.filter((c) => encodeGVariant(c.signature, c.value).length <= 64);
    // 2-byte framing offsets: 90 four-byte strings make a 540-byte array.
    picked.push({ signature: 'as', value: Array.from({ length: 90 }, (_, i) => `s${String(i).padStart(2, '0')}`) });
    const inputs: { signature: string; data: Buffer }[] = [];
    for (const c of picked) {
      for (const m of mutations(encodeGVariant(c.signature, c.value))) inputs.push({ signature: c.signature, data: m });
    }
    const verdicts = oracle<Check>(inputs.map((x) => ({ op: 'gv_check', type: x.signature, hex: hex(x.data) })));
    let accepted = 0;
    inputs.forEach((x, i) => {
      const v = verdicts[i]!;
      const what = `'${x.signature}' ${hex(x.data)}`;
      let ours: Value | GVariantError;
      try {
        ours = decodeGVariant(x.signature, x.data);
      } catch (e) {
        if (!(e instanceof GVariantError)) throw e;
        ours = e;
      }
      if (!v.normal) {
        assert.ok(ours instanceof GVariantError, `GLib rejects, we accept: ${what}`);
      } else if (!v.dbusTypes) {
        // GLib allows maybe types, unit and bare dict entries in variants; D-Bus does not.
        assert.ok(ours instanceof GVariantError && /variant type/.test(ours.message), `${what}: ${String(ours)}`);
      } else {
        assert.ok(!(ours instanceof GVariantError), `GLib accepts, we reject: ${what}: ${String(ours)}`);
        assert.deepStrictEqual(tagged(x.signature, ours), v.value, what);
        accepted++;
      }
    });
    // The sweep must exercise both outcomes to mean anything.
    assert.ok(accepted > 50 && accepted < inputs.length / 2, `${accepted} of ${inputs.length} accepted`);
  });
});

describe('dbus1/gvariant: framing and layout rules', function () {
  it('sizes framing offsets by the container size, as the GVariant specification says', function () {
    assert.equal(gvariantOffsetSize(0), 0);
    assert.equal(gvariantOffsetSize(1), 1);
    assert.equal(gvariantOffsetSize(255), 1);
    assert.equal(gvariantOffsetSize(256), 2);
    assert.equal(gvariantOffsetSize(65535), 2);
    assert.equal(gvariantOffsetSize(65536), 4);
    assert.equal(gvariantOffsetSize(2 ** 32), 8);
    // 254 content bytes and one offset: 255 fits 1-byte offsets; 255 + 1 does not.
    assert.equal(gvariantWordSize(254, 1), 1);
    assert.equal(gvariantWordSize(255, 1), 2);
    assert.equal(gvariantWordSize(65533, 1), 2);
    assert.equal(gvariantWordSize(65534, 1), 4);
  });

  it('lays out arrays and structs as the specification example does', function () {
    // ["a", "bc"]: elements back to back, then the end offsets 2 and 5.
    assert.equal(hex(encodeGVariant('as', ['a', 'bc'])), '6100626300' + '0205');
    // (si): "x\0", padding to 4, int 7, then the end offset of the string (2).
    assert.equal(hex(encodeGVariant('(si)', ['x', 7])), '78000000' + '07000000' + '02');
    // (iy) is fixed-size: 5 bytes of members padded to 8.
    assert.equal(hex(encodeGVariant('(iy)', [1, 2])), '0100000002000000');
    // a variant: the value, a zero byte, the type string.
    assert.equal(hex(encodeGVariant('v', new Variant('q', 3))), '0300' + '00' + '71');
  });

  it('reports malformed data with the offset of the problem', function () {
    assert.equal(gvError(() => decodeGVariant('i', Buffer.from('010203', 'hex'))).offset, 0);
    assert.equal(gvError(() => decodeGVariant('b', Buffer.from('02', 'hex'))).offset, 0);
    assert.equal(gvError(() => decodeGVariant('s', Buffer.from('6162', 'hex'))).offset, 1);
    assert.match(gvError(() => decodeGVariant('s', Buffer.from('61006200', 'hex'))).message, /NUL or invalid UTF-8/);
    assert.match(gvError(() => decodeGVariant('s', Buffer.from('c3 28 00'.replace(/ /g, ''), 'hex'))).message, /UTF-8/);
    assert.equal(gvError(() => decodeGVariant('(yi)', Buffer.from('01ff000002000000', 'hex'))).offset, 1);
    // ["ab", "c", "d"] with the first two end offsets swapped: the second element would end
    // (at 2) before it starts (at 3); the offending offset is the table's second word.
    assert.deepStrictEqual(decodeGVariant('aay', Buffer.from('61626364' + '020304', 'hex')), [Buffer.from('ab'), Buffer.from('c'), Buffer.from('d')]);
    assert.equal(gvError(() => decodeGVariant('aay', Buffer.from('61626364' + '030204', 'hex'))).offset, 5);
    // offset table start 9 is beyond the 7-byte array.
    assert.equal(gvError(() => decodeGVariant('as', Buffer.from('61006263000209', 'hex'))).offset, 6);
    assert.match(gvError(() => decodeGVariant('v', Buffer.from('0102', 'hex'))).message, /separator/);
    assert.match(gvError(() => decodeGVariant('v', Buffer.from('01006d79', 'hex'))).message, /variant type/);
    assert.match(gvError(() => decodeGVariant('v', Buffer.from('00002829', 'hex'))).message, /empty struct/);
    assert.match(gvError(() => decodeGVariant('o', Buffer.from('2f2f00', 'hex'))).message, /object path/);
    assert.match(gvError(() => decodeGVariant('g', Buffer.from('286900', 'hex'))).message, /signature/);
    assert.equal(gvError(() => decodeGVariant('ai', Buffer.from('0100000002', 'hex'))).offset, 0);
    // (iy) must be exactly 8 bytes, with zero padding after the byte.
    assert.equal(gvError(() => decodeGVariant('(iy)', Buffer.from('01000000020000', 'hex'))).offset, 0);
    assert.equal(gvError(() => decodeGVariant('(iy)', Buffer.from('0100000002000100', 'hex'))).offset, 6);
    // unit body must be one zero byte
    assert.equal(gvError(() => decodeGVariantBody('', Buffer.from('01', 'hex'))).offset, 0);
    assert.equal(gvError(() => decodeGVariantBody('', Buffer.alloc(0))).offset, 0);
  });

  it('holds variant nesting to 64 containers in both directions', function () {
    let ok: Value = 1;
    for (let i = 0; i < 64; i++) ok = new Variant(i === 0 ? 'y' : 'v', ok);
    const bytes = encodeGVariant('v', ok);
    assert.deepStrictEqual(decodeGVariant('v', bytes), ok);
    const tooDeep = new Variant('v', ok);
    assert.throws(() => encodeGVariant('v', tooDeep), ValueError);
    // one more variant level around the valid bytes: value, 0x00, 'v'
    const deeper = Buffer.concat([bytes, Buffer.from([0, 0x76])]);
    assert.match(gvError(() => decodeGVariant('v', deeper)).message, /deeper than 64/);
  });

  it('refuses values that do not fit their type, saying where', function () {
    assert.throws(() => encodeGVariant('y', 256), /'y' needs an integer 0\.\.255/);
    assert.throws(() => encodeGVariant('t', 1), /'t' needs a bigint/);
    assert.throws(() => encodeGVariant('(is)', [1]), /needs an array of 2 fields/);
    assert.throws(() => encodeGVariant('a{sv}', [['k', 5]]), (e: unknown) => e instanceof ValueError && e.path === '[0][1]');
    assert.throws(() => encodeGVariant('s', 'a\0b'), /NUL/);
    assert.throws(() => encodeGVariant('s', 'a\ud800'), /surrogate/);
    assert.throws(() => encodeGVariant('v', new Variant('ii', 1)), /single complete type/);
    assert.throws(() => encodeGVariantBody('is', [1]), /2 values expected/);
  });

  it('copies a 1 MiB byte array in one piece each way', function () {
    const big = Buffer.alloc(1 << 20, 0x5a);
    // Best of three, so that a garbage collection pause does not decide the outcome.
    let best = Infinity;
    let enc: Buffer = Buffer.alloc(0);
    let dec: Value[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = process.hrtime.bigint();
      enc = encodeGVariantBody('ays', [big, 'end']);
      dec = decodeGVariantBody('ays', enc);
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e6);
    }
    assert.ok(Buffer.isBuffer(dec[0]) && (dec[0] as Buffer).equals(big));
    assert.notEqual((dec[0] as Buffer).buffer, enc.buffer, 'decoded bytes must not alias the input');
    assert.ok(best < 25, `took ${best} ms`);
  });
});
