/**
 * fromKdbus refuses what sd-bus dropped (sdbus-kdbus-client.md §2.4): a message whose
 * GVariant header disagrees with its kdbus header never reaches a legacy client. The
 * payloads are encoded here as the legacy endpoint's own encoder writes them. toKdbus lays
 * a large body out as sd-bus did (§2.1): header vector, body in a memfd, footer vector.
 */
import assert from 'node:assert/strict';
import { KDBUS_DST_ID_BROADCAST, KDBUS_PAYLOAD_DBUS, MsgFlags } from '../../src/abi/constants';
import type { ImportedFile } from '../../src/bus/caller';
import { encodeGVariantPayload } from '../../src/dbus1/gvariant-message';
import { MessageFlag, MessageType, type Message } from '../../src/dbus1/message';
import { Metadata, type KdbusMessage } from '../../src/dbus1/pool-records';
import { Bloom } from '../../src/dbus1/bloom';
import type { OutgoingSealed } from '../../src/dbus1/local-connection';
import { fromKdbus, MEMFD_MIN_SIZE, toKdbus, Untranslatable } from '../../src/dbus1/translate';

const SIGNAL: Message = {
  type: MessageType.Signal, flags: MessageFlag.NoReplyExpected, serial: 7n,
  path: '/org/example', interface: 'org.example.I', member: 'Tick', signature: 's', body: ['x'],
};
const RETURN: Message = {
  type: MessageType.MethodReturn, flags: MessageFlag.NoReplyExpected, serial: 8n, replySerial: 2n, signature: '', body: [],
};
const CALL: Message = {
  type: MessageType.MethodCall, flags: 0, serial: 9n, path: '/org/example', member: 'Get', destination: 'org.example', signature: '', body: [],
};

/** The kdbus record of `m` as sent with `header` flags, and kdbus fields as `k` says. */
function record(m: Message, header: number, k: Partial<KdbusMessage> = {}): KdbusMessage {
  return {
    kind: 'message', srcId: 5n, dstId: KDBUS_DST_ID_BROADCAST, flags: 0n, priority: 0n, payloadType: KDBUS_PAYLOAD_DBUS,
    cookie: m.serial, timeoutNs: 0n, cookieReply: m.replySerial ?? 0n, dstName: undefined,
    payload: [encodeGVariantPayload({ ...m, destination: undefined }, header)], fds: [], bloom: undefined,
    meta: new Metadata(), incompleteFds: false, ...k,
  };
}

function refusal(k: KdbusMessage): string {
  try {
    fromKdbus(k, ':1.1');
  } catch (e) {
    assert.ok(e instanceof Untranslatable, String(e));
    return e.message;
  }
  assert.fail('translated');
}

const aFile = { close: () => undefined } as unknown as ImportedFile;

describe('dbus1 fromKdbus: the GVariant header must agree with the kdbus header', () => {
  it('translates messages whose headers agree', () => {
    assert.equal(fromKdbus(record(SIGNAL, SIGNAL.flags), ':1.1').member, 'Tick');
    assert.equal(fromKdbus(record(RETURN, RETURN.flags, { dstId: 1n }), ':1.1').replySerial, 2n);
    const call = fromKdbus(record(CALL, 0, { dstId: 1n, flags: MsgFlags.EXPECT_REPLY, cookieReply: 0n, timeoutNs: 1n }), ':1.1');
    assert.equal(call.member, 'Get');
  });

  it('refuses a cookie other than the kdbus cookie', () => {
    assert.match(refusal(record(SIGNAL, SIGNAL.flags, { cookie: 8n })), /cookie 7, kdbus cookie 8/);
  });

  it('refuses a reply cookie other than the kdbus cookie_reply: a plain message posing as a reply', () => {
    assert.match(refusal(record(RETURN, RETURN.flags, { dstId: 1n, cookieReply: 0n })), /reply cookie 2, kdbus cookie_reply 0/);
  });

  it('refuses NO_REPLY_EXPECTED that disagrees with EXPECT_REPLY, either way', () => {
    assert.match(refusal(record(CALL, 0, { dstId: 1n })), /NO_REPLY_EXPECTED unset, EXPECT_REPLY unset/);
    assert.match(refusal(record(CALL, MessageFlag.NoReplyExpected, { dstId: 1n, flags: MsgFlags.EXPECT_REPLY })), /NO_REPLY_EXPECTED set, EXPECT_REPLY set/);
  });

  it('refuses NO_AUTO_START that disagrees with the kdbus flag', () => {
    assert.match(refusal(record(SIGNAL, SIGNAL.flags, { flags: MsgFlags.NO_AUTO_START })), /NO_AUTO_START/);
  });

  it('refuses a UNIX_FDS count other than the descriptors that came', () => {
    assert.match(refusal(record({ ...SIGNAL, unixFds: 1 }, SIGNAL.flags)), /UNIX_FDS 1, 0 descriptors/);
    assert.match(refusal(record(SIGNAL, SIGNAL.flags, { fds: [aFile] })), /UNIX_FDS 0, 1 descriptors/);
    assert.equal(fromKdbus(record({ ...SIGNAL, unixFds: 1 }, SIGNAL.flags, { fds: [aFile] }), ':1.1').unixFds, 1);
  });
});

describe('dbus1 toKdbus: the payload parts of a message for kdbus', () => {
  const bloom = new Bloom(64, 8);
  const call = (n: number): Message => ({
    type: MessageType.MethodCall, flags: 0, serial: 9n, path: '/org/example', interface: 'org.example.I', member: 'Put',
    destination: 'org.example', signature: 'ay', body: [Buffer.alloc(n, 0x5a)],
  });

  it('keeps a body below 512 KiB in the one vector', () => {
    const out = toKdbus(call(MEMFD_MIN_SIZE - 1), [], bloom, 0n)!;
    assert.equal(out.payload!.length, 1);
    assert.ok(Buffer.isBuffer(out.payload![0]));
  });

  it('puts a body of 512 KiB and more into a sealed memfd between the header and footer vectors', () => {
    const m = call(3 << 20);
    const whole = encodeGVariantPayload(m, m.flags);
    const [head, body, tail] = toKdbus(m, [], bloom, 0n)!.payload!;
    assert.ok(Buffer.isBuffer(head) && Buffer.isBuffer(tail));
    const sealed = (body as OutgoingSealed).sealed;
    assert.equal(sealed.length, 3 << 20, 'the body alone: the array of 3 MiB');
    assert.equal(head.length % 8, 0, 'the body begins 8-aligned, as BUS_MESSAGE_BODY_BEGIN');
    assert.equal(head.readUInt8(0), 0x6c, 'the header vector starts the message');
    assert.deepEqual(tail.subarray(0, 5), Buffer.from('\0(ay)'), 'the footer vector holds the signature and the framing offset');
    assert.ok(Buffer.concat([head, sealed, tail]).equals(whole), 'the three parts are the message as one vector would carry it');
  });
});

describe('dbus1 toKdbus: reply serials', () => {
  const bloom = new Bloom(64, 8);
  const headerOf = (out: ReturnType<typeof toKdbus>): Message => {
    const k = { ...record(CALL, 0), payload: out!.payload as Buffer[], cookie: out!.cookie, cookieReply: out!.cookieReply ?? 0n, flags: out!.flags ?? 0n };
    return fromKdbus(k, ':1.1');
  };

  it("makes a reply's REPLY_SERIAL kdbus's cookie_reply", () => {
    const out = toKdbus({ ...RETURN, destination: ':1.5' }, [], bloom, 0n)!;
    assert.equal(out.cookieReply, 2n);
  });

  it('drops REPLY_SERIAL from a call that expects no reply and from a signal, which kdbus would take for replies', () => {
    for (const m of [{ ...CALL, flags: MessageFlag.NoReplyExpected, replySerial: 77n }, { ...SIGNAL, destination: ':1.5', replySerial: 77n }]) {
      const out = toKdbus(m, [], bloom, 0n)!;
      assert.equal(out.cookieReply, undefined);
      assert.equal(headerOf(out).replySerial, undefined);
    }
  });

  it('keeps REPLY_SERIAL on a call that expects a reply: kdbus has no cookie_reply to compare it with', () => {
    const out = toKdbus({ ...CALL, replySerial: 77n }, [], bloom, 0n)!;
    assert.equal((out.flags ?? 0n) & MsgFlags.EXPECT_REPLY, MsgFlags.EXPECT_REPLY);
    assert.equal(headerOf(out).replySerial, 77n);
  });
});
