import assert from 'node:assert/strict';
import { DBus1Error, marshalBody, MAX_ARRAY_LENGTH, unmarshalBody } from '../../src/dbus1/dbus1-wire';
import { Value, ValueError, Variant } from '../../src/dbus1/value';
import { requireOrSkip } from '../helpers/require';
import { VALUE_CASES } from './dbus1-cases';
import { hex, oracle, oracleAvailable, taggedBody } from './dbus1-oracle';

/** The body of a whole dbus1 message: after the 16-byte prefix and the 8-aligned fields. */
function bodyOf(blobHex: string): Buffer {
  const blob = Buffer.from(blobHex, 'hex');
  const fieldsLength = blob[0] === 0x6c ? blob.readUInt32LE(12) : blob.readUInt32BE(12);
  return blob.subarray(16 + ((fieldsLength + 7) & ~7));
}

function callRequest(signature: string, values: readonly Value[], extra: object): object {
  return {
    type: 1,
    flags: 0,
    serial: 1,
    path: '/',
    member: 'M',
    fields: [
      [1, 'o', '/'],
      [3, 's', 'M'],
    ],
    signature,
    body: taggedBody(signature, values),
    ...extra,
  };
}

function wireError(fn: () => unknown): DBus1Error {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof DBus1Error, `expected a DBus1Error, got ${String(e)}`);
    return e;
  }
  assert.fail('expected a DBus1Error');
}

const MULTI: { signature: string; values: Value[] } = {
  signature: 'ybsa{sv}ax(yv)dh',
  values: [1, true, 'str', [['k', new Variant('as', ['a'])]], [2n], [3, new Variant('g', 'ii')], 0.5, 0],
};

describe('dbus1/dbus1-wire: bodies against GDBus and libdbus', function () {
  let gdbusLE: Buffer[] = [];
  let gdbusBE: Buffer[] = [];
  let libdbus: (Buffer | undefined)[] = [];
  const cases = [...VALUE_CASES.map((c) => ({ signature: c.signature, values: [c.value], noLibdbus: c.noLibdbus })), { ...MULTI, noLibdbus: true }];

  before(function () {
    requireOrSkip(this, oracleAvailable(), 'python3-gi and python3-dbus for /usr/bin/python3');
    const requests: object[] = [];
    for (const c of cases) {
      requests.push({ op: 'gdbus_encode', ...callRequest(c.signature, c.values, {}) });
      requests.push({ op: 'gdbus_encode', ...callRequest(c.signature, c.values, { bigEndian: true }) });
      if (!c.noLibdbus) requests.push({ op: 'libdbus_encode', ...callRequest(c.signature, c.values, {}) });
    }
    const answers = oracle<string>(requests);
    let k = 0;
    for (const c of cases) {
      gdbusLE.push(bodyOf(answers[k++]!));
      gdbusBE.push(bodyOf(answers[k++]!));
      libdbus.push(c.noLibdbus ? undefined : bodyOf(answers[k++]!));
    }
  });

  after(function () {
    gdbusLE = [];
    gdbusBE = [];
    libdbus = [];
  });

  it('marshals every case byte for byte as GDBus and libdbus do', function () {
    cases.forEach((c, i) => {
      const ours = hex(marshalBody(c.signature, c.values));
      assert.equal(ours, hex(gdbusLE[i]!), `GDBus, '${c.signature}' case ${i}`);
      if (libdbus[i] !== undefined) assert.equal(ours, hex(libdbus[i]!), `libdbus, '${c.signature}' case ${i}`);
    });
  });

  it('unmarshals both byte orders back to the same values', function () {
    cases.forEach((c, i) => {
      assert.deepStrictEqual(unmarshalBody(c.signature, gdbusLE[i]!, true), c.values, `LE '${c.signature}' case ${i}`);
      assert.deepStrictEqual(unmarshalBody(c.signature, gdbusBE[i]!, false), c.values, `BE '${c.signature}' case ${i}`);
    });
  });
});

describe('dbus1/dbus1-wire: the rules of the format', function () {
  it('aligns as the specification says, padding empty arrays to their element alignment', function () {
    // y, then padding to 4 for the uint32 length 0 of ax, then padding to 8 (none: at 8 already).
    assert.equal(hex(marshalBody('yax', [1, []])), '01000000' + '00000000');
    // y, length 0 at 4, then padding to 8 before where the (empty) structs would start.
    assert.equal(hex(marshalBody('ya(y)', [1, []])), '01000000' + '00000000');
    assert.equal(hex(marshalBody('a(y)', [[]])), '00000000' + '00000000');
    // a variant: signature "q" (length 1, 'q', NUL), value aligned to 2.
    assert.equal(hex(marshalBody('v', [new Variant('q', 3)])), '01710000' + '0300');
    // booleans are 4 bytes
    assert.equal(hex(marshalBody('yb', [1, true])), '01000000' + '01000000');
    // array length counts the elements, not the padding before the first
    assert.equal(hex(marshalBody('at', [[5n]])), '08000000' + '00000000' + '0500000000000000');
  });

  it('reports malformed bodies with the offset of the problem', function () {
    // boolean 2
    assert.equal(wireError(() => unmarshalBody('yb', Buffer.from('0100000002000000', 'hex'), true)).offset, 4);
    // non-zero padding between y and u
    assert.equal(wireError(() => unmarshalBody('yu', Buffer.from('0100010005000000', 'hex'), true)).offset, 2);
    // truncated uint32
    assert.match(wireError(() => unmarshalBody('u', Buffer.from('050000', 'hex'), true)).message, /runs past/);
    // string without its NUL: length 2, "ab", then 'c' where the NUL belongs
    assert.equal(wireError(() => unmarshalBody('s', Buffer.from('02000000616263', 'hex'), true)).offset, 6);
    // embedded NUL
    assert.equal(wireError(() => unmarshalBody('s', Buffer.from('020000006100' + '00', 'hex'), true)).offset, 4);
    // invalid UTF-8 (a lone continuation byte)
    assert.match(wireError(() => unmarshalBody('s', Buffer.from('0100000080' + '00', 'hex'), true)).message, /UTF-8/);
    // overlong encoding of '/' and a UTF-16 surrogate in UTF-8 are invalid too
    assert.throws(() => unmarshalBody('s', Buffer.from('02000000c0af00', 'hex'), true), DBus1Error);
    assert.throws(() => unmarshalBody('s', Buffer.from('03000000eda08000', 'hex'), true), DBus1Error);
    // object path with a trailing slash
    assert.match(wireError(() => unmarshalBody('o', Buffer.from('030000002f612f00', 'hex'), true)).message, /object path/);
    // signature that does not parse
    assert.equal(wireError(() => unmarshalBody('g', Buffer.from('02286900', 'hex'), true)).offset, 0);
    // variant whose signature holds two types
    assert.match(wireError(() => unmarshalBody('v', Buffer.from('0269690000000000', 'hex'), true)).message, /single complete type/);
    // array longer than 64 MiB (the length alone is refused, before any data is needed)
    const huge = Buffer.alloc(4);
    huge.writeUInt32LE(MAX_ARRAY_LENGTH + 1);
    assert.match(wireError(() => unmarshalBody('ay', huge, true)).message, /exceeds/);
    // array whose length runs past the body
    assert.equal(wireError(() => unmarshalBody('ay', Buffer.from('0500000001', 'hex'), true)).offset, 4);
    // array of u whose length is not a multiple of 4
    assert.equal(wireError(() => unmarshalBody('au', Buffer.from('0300000001000000', 'hex'), true)).offset, 0);
    // an array element that straddles the array's end: as of length 6 holding a 2-char string
    assert.match(wireError(() => unmarshalBody('as', Buffer.from('06000000' + '0200000061620000', 'hex'), true)).message, /runs past/);
    // non-zero padding after an empty array of structs
    assert.equal(wireError(() => unmarshalBody('a(y)', Buffer.from('0000000000000100', 'hex'), true)).offset, 6);
    // bytes left over
    assert.equal(wireError(() => unmarshalBody('y', Buffer.from('0100', 'hex'), true)).offset, 1);
  });

  it('holds container nesting to 64 across variants', function () {
    // 32 arrays of structs of ... around a variant: the variant itself sits in 62 containers
    const sig = 'a('.repeat(31) + 'v' + ')'.repeat(31);
    const wrap = (inner: Value): Value => {
      let v: Value = [inner];
      for (let i = 1; i < 31; i++) v = [[v]];
      return [v];
    };
    // 31 arrays + 31 structs = 62 containers; the variant is the 63rd; 'y' inside is at 63.
    assert.doesNotThrow(() => marshalBody(sig, [wrap(new Variant('y', 1))]));
    // ay inside: the bytes are at 64 — still fine; aay puts them at 65.
    const ok = marshalBody(sig, [wrap(new Variant('ay', Buffer.from('x')))]);
    assert.deepStrictEqual(unmarshalBody(sig, ok, true), [wrap(new Variant('ay', Buffer.from('x')))]);
    assert.throws(() => marshalBody(sig, [wrap(new Variant('aay', []))]), /deeper than 64/);
    // the same on the way in: patch the variant signature "ay" into "aa" + "y" is not possible
    // in place, so build the 65-deep bytes by hand from the valid message with an empty aay.
    const bytes = Buffer.from(ok);
    const at = bytes.indexOf(Buffer.from('02617900', 'hex'));
    const tooDeep = Buffer.concat([bytes.subarray(0, at), Buffer.from('0361617900', 'hex'), Buffer.from('0000000000000000', 'hex')]);
    const err = wireError(() => unmarshalBody(sig, tooDeep, true));
    assert.match(err.message, /deeper than 64/);
    assert.equal(err.offset, at);
  });

  it('refuses values that do not fit their type, saying where', function () {
    assert.throws(() => marshalBody('i', [2 ** 31]), /'i' needs an integer/);
    assert.throws(() => marshalBody('x', [1]), /'x' needs a bigint/);
    assert.throws(() => marshalBody('o', ['a/b']), /not a valid object path/);
    assert.throws(() => marshalBody('g', ['a']), /not a valid signature/);
    assert.throws(() => marshalBody('ay', [[1, 2]]), /needs a Buffer/);
    assert.throws(
      () => marshalBody('sa(iv)', ['x', [[1, new Variant('s', 's')], [2, 'no']]]),
      (e: unknown) => e instanceof ValueError && e.path === 'arg 1[1][1]',
    );
    assert.throws(() => marshalBody('s', []), /1 values expected/);
  });

  it('copies a 1 MiB byte array in one piece each way', function () {
    const big = Buffer.alloc(1 << 20, 0xa5);
    // Best of three, so that a garbage collection pause does not decide the outcome.
    let best = Infinity;
    let enc: Buffer = Buffer.alloc(0);
    let dec: Value[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = process.hrtime.bigint();
      enc = marshalBody('sayu', ['x', big, 7]);
      dec = unmarshalBody('sayu', enc, true);
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e6);
    }
    assert.ok(Buffer.isBuffer(dec[1]) && (dec[1] as Buffer).equals(big));
    assert.notEqual((dec[1] as Buffer).buffer, enc.buffer, 'decoded bytes must not alias the input');
    assert.ok(best < 25, `took ${best} ms`);
  });
});
