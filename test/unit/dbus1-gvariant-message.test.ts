import assert from 'node:assert/strict';
import { GVariantError } from '../../src/dbus1/gvariant';
import {
  dbus1ToGVariant,
  decodeGVariantMessage,
  encodeGVariantMessage,
  encodeGVariantPayload,
  gvariantToDbus1,
} from '../../src/dbus1/gvariant-message';
import { encodeMessage, Message } from '../../src/dbus1/message';
import { ValueError, Variant } from '../../src/dbus1/value';
import { requireOrSkip } from '../helpers/require';
import { MESSAGES } from './dbus1-cases';
import { hex, oracle, oracleAvailable, taggedBody } from './dbus1-oracle';

const MESSAGE_TYPE = '(yyyyuta{tv}v)';

/** The message as the tagged value of (yyyyuta{tv}v), header fields in ascending code order. */
function taggedMessage(m: Message): unknown {
  const fields: [string, [string, unknown]][] = [];
  const add = (code: number, sig: string, v: unknown): void => {
    if (v !== undefined) fields.push([String(code), [sig, v]]);
  };
  add(1, 'o', m.path);
  add(2, 's', m.interface);
  add(3, 's', m.member);
  add(4, 's', m.errorName);
  add(5, 't', m.replySerial === undefined ? undefined : String(m.replySerial));
  add(6, 's', m.destination);
  add(7, 's', m.sender);
  add(9, 'u', m.unixFds);
  return [0x6c, m.type, m.flags, 2, 0, String(m.serial), fields, [`(${m.signature})`, taggedBody(m.signature, m.body)]];
}

/** Messages beyond the dbus1 set: 64-bit cookies, fds, a body big enough for 4-byte framing. */
const GV_ONLY: Message[] = [
  { type: 1, flags: 0, serial: 1n << 40n, path: '/', member: 'M', signature: '', body: [] },
  { type: 2, flags: 1, serial: 2n, replySerial: (1n << 64n) - 1n, signature: 'hh', body: [0, 1], unixFds: 2 },
  { type: 4, flags: 1, serial: 3n, path: '/big', interface: 'a.b', member: 'C', signature: 'ays', body: [Buffer.alloc(70000, 1), 'end'] },
];

/** A version-2 message assembled from parts with GLib's help would be overkill: patch ours. */
function patched(m: Message, patch: (b: Buffer) => void): Buffer {
  const b = Buffer.from(encodeGVariantMessage(m));
  patch(b);
  return b;
}

function gvError(fn: () => unknown): GVariantError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof GVariantError, `expected a GVariantError, got ${String(e)}`);
    return e;
  }
  assert.fail('expected a GVariantError');
}

const SIGNAL: Message = { type: 4, flags: 1, serial: 2n, path: '/a', interface: 'b.c', member: 'D', signature: 's', body: ['x'] };

describe('dbus1/gvariant-message: the kdbus payload form', function () {
  it('matches the sd-bus v229 worked example byte for byte', function () {
    // sdbus-kdbus-client.md §3.1: signal /a b.c.D("x"), cookie 2, 71 bytes
    const expected =
      '6c04010200000000' + '0200000000000000' +
      '0100000000000000' + '2f6100006f000000' +
      '0200000000000000' + '622e630000730000' +
      '0300000000000000' + '440000730d1e2c00' +
      '7800002873293f';
    assert.equal(hex(encodeGVariantMessage(SIGNAL)), expected);
    assert.deepStrictEqual(decodeGVariantMessage(Buffer.from(expected, 'hex')), SIGNAL);
  });

  describe('against GLib', function () {
    const all = [...MESSAGES, ...GV_ONLY];
    let glib: string[] = [];
    let libdbus: string[] = [];

    before(function () {
      requireOrSkip(this, oracleAvailable(), 'python3-gi and python3-dbus for /usr/bin/python3');
      glib = oracle<string>(all.map((m) => ({ op: 'gv_encode', type: MESSAGE_TYPE, value: taggedMessage(m) })));
      libdbus = oracle<string>(
        MESSAGES.map((m) => ({
          op: 'libdbus_encode',
          type: m.type,
          flags: m.flags,
          serial: Number(m.serial),
          signature: m.signature,
          body: taggedBody(m.signature, m.body),
          ...Object.fromEntries(
            (['path', 'interface', 'member', 'errorName', 'destination', 'sender'] as const).filter((k) => m[k] !== undefined).map((k) => [k, m[k]]),
          ),
          ...(m.replySerial === undefined ? {} : { replySerial: Number(m.replySerial) }),
        })),
      );
    });

    it('encodes every message as GLib serializes (yyyyuta{tv}v)', function () {
      all.forEach((m, i) => assert.equal(hex(encodeGVariantMessage(m)), glib[i], `message ${i}`));
    });

    it("decodes GLib's bytes to the same messages", function () {
      all.forEach((m, i) => assert.deepStrictEqual(decodeGVariantMessage(Buffer.from(glib[i]!, 'hex')), m, `message ${i}`));
    });

    it('converts libdbus messages to GLib-identical version-2 messages and back, losslessly', function () {
      MESSAGES.forEach((_, i) => {
        const dbus1 = Buffer.from(libdbus[i]!, 'hex');
        const gv = dbus1ToGVariant(dbus1);
        assert.equal(hex(gv), glib[i], `to GVariant, message ${i}`);
        assert.equal(hex(gvariantToDbus1(gv)), libdbus[i], `back to dbus1, message ${i}`);
      });
    });

    it('accepts only normal-form GVariant, and reads what it accepts as GLib does', function () {
      this.timeout(20000);
      const bases = [SIGNAL, MESSAGES[5]!, GV_ONLY[1]!].map(encodeGVariantMessage);
      const inputs: Buffer[] = [];
      for (const b of bases) {
        for (let i = 0; i < b.length; i++) {
          for (const f of [(x: number) => x ^ 0x01, (x: number) => x ^ 0x40, () => 0xff, () => 0x00]) {
            const m = Buffer.from(b);
            m[i] = f(m[i]!);
            if (!m.equals(b)) inputs.push(m);
          }
        }
        for (let n = 16; n < b.length; n += 5) inputs.push(b.subarray(0, n));
      }
      const verdicts = oracle<{ normal: boolean; value?: unknown[] }>(inputs.map((b) => ({ op: 'gv_check', type: MESSAGE_TYPE, hex: hex(b) })));
      let accepted = 0;
      inputs.forEach((b, i) => {
        let ours: Message | undefined;
        try {
          ours = decodeGVariantMessage(b);
        } catch (e) {
          if (!(e instanceof GVariantError)) throw e;
        }
        const v = verdicts[i]!;
        if (ours === undefined) return; // refusing is always allowed: sd-bus checks more than normal form
        assert.ok(v.normal, `we accept what GLib deems not normal: ${hex(b)}`);
        // What we read must be what GLib reads, but for what the model leaves out: the
        // reserved word and header fields with codes it does not know.
        const glibView = [...v.value!];
        glibView[4] = 0;
        glibView[6] = (glibView[6] as [string, unknown][])
          .filter(([code]) => BigInt(code) <= 9n)
          .sort(([a], [b]) => Number(BigInt(a) - BigInt(b)));
        assert.deepStrictEqual(taggedMessage(ours), glibView, hex(b));
        accepted++;
      });
      assert.ok(accepted > 20, `${accepted} of ${inputs.length} accepted`);
    });
  });

  it('refuses what sd-bus refuses in a version-2 header', function () {
    // SIGNATURE field (8, 'g') in place of MEMBER: patch the code word of the third field
    const withSig = patched({ ...SIGNAL, member: 'g' }, (b) => {
      b[0x30] = 8;
      b[0x3b] = 0x67; // the variant's type 's' becomes 'g'
    });
    assert.match(gvError(() => decodeGVariantMessage(withSig)).message, /SIGNATURE header field/);
    assert.equal(gvError(() => decodeGVariantMessage(patched(SIGNAL, (b) => (b[3] = 1)))).offset, 3);
    assert.equal(gvError(() => decodeGVariantMessage(patched(SIGNAL, (b) => (b[8] = 0)))).offset, 8);
    assert.equal(gvError(() => decodeGVariantMessage(patched(SIGNAL, (b) => (b[1] = 5)))).offset, 1);
    assert.equal(gvError(() => decodeGVariantMessage(patched(SIGNAL, (b) => (b[0] = 0x78)))).offset, 0);
    // PATH as a string rather than an object path: the type char at 0x1c
    const pathAsString = patched(SIGNAL, (b) => (b[0x1c] = 0x73));
    assert.match(gvError(() => decodeGVariantMessage(pathAsString)).message, /header field 1 has type 's', not 'o'/);
    // REPLY_SERIAL typed 'u' (dbus1's type) over its 8 bytes: not even normal form
    const ret: Message = { type: 2, flags: 1, serial: 3n, replySerial: 2n, signature: '', body: [] };
    const u = patched(ret, (b) => {
      // field 5 at 0x10: code to 0x17, <uint64 2> at 0x18..0x1f, 0x00, then 't' at 0x21
      assert.equal(b[0x21], 0x74);
      b[0x21] = 0x75;
    });
    assert.match(gvError(() => decodeGVariantMessage(u)).message, /'u' value of 8 bytes, not 4/);
    // a body type that is not a tuple: "(s)" becomes "ss)"
    const notTuple = patched(SIGNAL, (b) => (b[0x43] = 0x73));
    assert.match(gvError(() => decodeGVariantMessage(notTuple)).message, /not a tuple/);
    // the framing offset points past the message
    assert.equal(gvError(() => decodeGVariantMessage(patched(SIGNAL, (b) => (b[70] = 0x50)))).offset, 70);
    assert.throws(() => decodeGVariantMessage(Buffer.alloc(15)), GVariantError);
  });

  it('ignores unknown header fields', function () {
    // the first field's code 1 (PATH) becomes 100: then PATH is missing, which a signal needs
    const unknown = patched(SIGNAL, (b) => (b[0x10] = 100));
    assert.match(gvError(() => decodeGVariantMessage(unknown)).message, /signal without a path/);
    // the same for a method return, which needs no path: it decodes, without the field
    const ret: Message = { type: 2, flags: 1, serial: 3n, replySerial: 2n, destination: ':1.2', signature: '', body: [] };
    const b = Buffer.from(encodeGVariantMessage(ret));
    const at = b.indexOf(Buffer.from('0600000000000000', 'hex'), 16);
    b[at] = 100;
    assert.deepStrictEqual(decodeGVariantMessage(b), { type: 2, flags: 1, serial: 3n, replySerial: 2n, signature: '', body: [] });
  });

  it('encodes a kdbus payload of a message without its SENDER field and with other flags, leaving the message as it was', function () {
    const withSender = MESSAGES.filter((m) => m.sender !== undefined);
    assert.ok(withSender.length > 0);
    for (const m of [...withSender, SIGNAL]) {
      const before = { ...m };
      const { sender: _sender, ...rest } = m;
      const expected: Message = { ...rest, flags: m.flags | 1 };
      assert.equal(hex(encodeGVariantPayload(m, m.flags | 1)), hex(encodeGVariantMessage(expected)));
      assert.deepStrictEqual(decodeGVariantMessage(encodeGVariantPayload(m, m.flags | 1)), expected);
      assert.deepStrictEqual(m, before);
    }
    assert.throws(() => encodeGVariantPayload(SIGNAL, 0x100), /flags 256 are not a byte/);
    assert.throws(() => encodeGVariantPayload({ ...SIGNAL, serial: 0n }, 1), /serial is 0/);
  });

  it('refuses to convert what dbus1 cannot carry', function () {
    assert.throws(() => gvariantToDbus1(encodeGVariantMessage(GV_ONLY[0]!)), ValueError);
    assert.throws(() => gvariantToDbus1(encodeGVariantMessage(GV_ONLY[1]!)), /reply serial .* 32 bits/);
    assert.throws(() => encodeGVariantMessage({ ...SIGNAL, serial: 0n }), /serial is 0/);
    assert.throws(() => encodeGVariantMessage({ ...SIGNAL, body: [new Variant('s', 'x')] }), ValueError);
    // the unit body and a non-empty one both round-trip through dbus1
    const call: Message = { type: 1, flags: 0, serial: 9n, path: '/', member: 'M', signature: '', body: [] };
    assert.deepStrictEqual(decodeGVariantMessage(dbus1ToGVariant(encodeMessage(call))), call);
  });

  it('shares a large byte array with a payload the message owns, and copies small ones and by default', () => {
    const m: Message = {
      type: 4, flags: 1, serial: 3n, path: '/big', interface: 'a.b', member: 'C', signature: 'ayay',
      body: [Buffer.alloc(4096, 7), Buffer.alloc(4095, 9)],
    };
    const payload = encodeGVariantMessage(m);
    const borrowed = decodeGVariantMessage(payload, true);
    const copied = decodeGVariantMessage(payload);
    assert.deepStrictEqual(borrowed, m);
    assert.deepStrictEqual(copied, m);
    const [big, small] = borrowed.body as Buffer[];
    assert.equal(big!.buffer, payload.buffer, 'a 4 KiB array is a view of the payload');
    assert.notEqual(small!.buffer, payload.buffer, 'a smaller one is a copy');
    assert.notEqual((copied.body[0] as Buffer).buffer, payload.buffer, 'without borrow, a copy');
  });
});
