/**
 * Messages between the dbus1 world and the kdbus bus, as systemd-bus-proxyd and sd-bus
 * moved them (../shared/docs/reference/sdbus-kdbus-client.md §2.1, §2.4, §2.5): the kdbus
 * header carries the addressing and flags, the payload is the whole message in GVariant
 * form, and sender and destination come from the kdbus header on the way back.
 */
import { KDBUS_DST_ID_BROADCAST, KDBUS_PAYLOAD_DBUS, MsgFlags } from '../abi/constants';
import type { Bus } from '../bus/bus';
import type { ImportedFile } from '../bus/caller';
import type { Bloom } from './bloom';
import { type BodyRange, decodeGVariantMessage, encodeGVariantPayload } from './gvariant-message';
import { kdbusIdOfUniqueName, type MatchMessage, type MessageType as RuleType, type NameOwners } from './match-rule';
import { MessageFlag, MessageType, type Message } from './message';
import type { OutputBuffer } from './output-buffer';
import type { KdbusMessage, NameChangeNotification } from './pool-records';
import { payloadBytes } from './pool-records';
import type { OutgoingMessage } from './local-connection';
import { parseSignature } from './signature';

export const DRIVER_NAME = 'org.freedesktop.DBus';
export const DRIVER_PATH = '/org/freedesktop/DBus';
/** The name systemd takes on a bus it starts services for. */
export const SYSTEMD_NAME = 'org.freedesktop.systemd1';
const NAME_IN_QUEUE = 1n << 3n;
const NAME_ACTIVATOR = 1n << 4n;
const U32_MAX = 0xffff_ffffn;

/**
 * dbus-daemon lets a call wait for its reply for as long as the caller waits; a kdbus call
 * needs a deadline, so it gets one longer than any client library's own timeout.
 */
export const LEGACY_REPLY_TIMEOUT_NS = 3600n * 1_000_000_000n;

const RULE_TYPES: Record<number, RuleType> = {
  [MessageType.MethodCall]: 'method_call',
  [MessageType.MethodReturn]: 'method_return',
  [MessageType.Error]: 'error',
  [MessageType.Signal]: 'signal',
};

export function uniqueName(id: bigint): string {
  return `:1.${id}`;
}

/**
 * Who owns names on `bus` now, for match rules naming a well-known sender: the primary
 * owner (an activator or a queued connection owns nothing). A unique name owns itself.
 */
export function nameOwnersOf(bus: Bus): NameOwners {
  return {
    primaryOwner: (name) => {
      if (name.startsWith(':') || name === DRIVER_NAME) return name;
      const owner = bus.names.primaryOwner(name);
      return owner === undefined ? undefined : uniqueName(owner.id);
    },
  };
}

/** A message as match rules and bloom filters look at it. */
export function matchView(m: Message): MatchMessage {
  const types = m.signature === '' ? [] : parseSignature(m.signature).map((t) => t.signature);
  const view: MatchMessage = { type: RULE_TYPES[m.type]!, args: m.body, argTypes: types };
  if (m.sender !== undefined) view.sender = m.sender;
  if (m.destination !== undefined) view.destination = m.destination;
  if (m.path !== undefined) view.path = m.path;
  if (m.interface !== undefined) view.interface = m.interface;
  if (m.member !== undefined) view.member = m.member;
  return view;
}

/**
 * The kdbus form of a message a legacy client sends to someone other than the driver.
 * `files` are the message's descriptors (UNIX_FDS of them), taken over by the bus. Returns
 * undefined for what dbus-daemon would only show to eavesdroppers: a non-signal with no
 * destination. `decoded`: m is as decodeMessage gave it, sender and destination aside (see
 * encodeDecodedMessage). `bytes`: where the payload is encoded, if given (see OutputBuffer).
 */
export function toKdbus(
  m: Message, files: readonly ImportedFile[], bloom: Bloom, nowNs: bigint, decoded = false, bytes?: OutputBuffer,
): OutgoingMessage | undefined {
  const signal = m.type === MessageType.Signal;
  let dst: bigint | string;
  if (m.destination === undefined) {
    if (!signal) return undefined;
    dst = KDBUS_DST_ID_BROADCAST;
  } else {
    dst = kdbusIdOfUniqueName(m.destination) ?? m.destination;
  }
  const expectReply = m.type === MessageType.MethodCall && !(m.flags & MessageFlag.NoReplyExpected);
  // sd-bus drops a message whose NO_REPLY_EXPECTED disagrees with kdbus's EXPECT_REPLY (§2.4);
  // dbus1 does not require the flag on replies, errors and signals, so it is set here.
  const headerFlags = expectReply ? m.flags : m.flags | MessageFlag.NoReplyExpected;
  const reply = m.type === MessageType.MethodReturn || m.type === MessageType.Error;
  // A REPLY_SERIAL on a call or signal that expects no reply would have to be kdbus's
  // cookie_reply, which makes kdbus take the message for a reply nobody waits for: the
  // field, which means nothing there, is dropped instead of the message.
  if (!reply && !expectReply && m.replySerial !== undefined) m = { ...m, replySerial: undefined };
  // kdbus's source id is the sender; a SENDER field a client wrote would only be a claim.
  const body: BodyRange = { begin: 0, end: 0 };
  const payload = encodeGVariantPayload(m, headerFlags, decoded, bytes, body);
  let flags = 0n;
  if (expectReply) flags |= MsgFlags.EXPECT_REPLY;
  if (m.flags & MessageFlag.NoAutoStart) flags |= MsgFlags.NO_AUTO_START;
  const out: OutgoingMessage = { dst, flags, cookie: m.serial, payloadType: KDBUS_PAYLOAD_DBUS, payload: payloadParts(payload, body) };
  if (expectReply) out.timeoutNs = nowNs + LEGACY_REPLY_TIMEOUT_NS;
  else if (reply) out.cookieReply = m.replySerial;
  if (files.length > 0) out.fds = files;
  // sd-bus attaches a bloom filter to every signal, unicast ones included.
  if (signal) out.bloom = bloom.filter(matchView(m), 'union');
  return out;
}

/** Bodies from this size on travel in a sealed memfd, as sd-bus sent them (MEMFD_MIN_SIZE). */
export const MEMFD_MIN_SIZE = 512 * 1024;

/**
 * One vector, or for a large body sd-bus's layout: a vector with the header and its fields,
 * the body in a sealed memfd, and a vector with the footer. kdbus takes at most 2 MiB of
 * vectors in a message, where dbus1 messages may have up to 128 MiB; sd-bus expects the
 * header in the first vector and the footer in the last.
 */
function payloadParts(payload: Buffer, body: BodyRange): OutgoingMessage['payload'] {
  if (body.end - body.begin < MEMFD_MIN_SIZE) return [payload];
  return [payload.subarray(0, body.begin), { sealed: payload.subarray(body.begin, body.end) }, payload.subarray(body.end)];
}

export class Untranslatable extends Error {}

/**
 * The dbus1 form of a kdbus message for a legacy client whose unique name is `self`.
 * Throws Untranslatable for what dbus1 cannot carry (64-bit cookies, foreign payloads).
 */
export function fromKdbus(k: KdbusMessage, self: string, borrow = true): Message {
  if (k.payloadType !== KDBUS_PAYLOAD_DBUS) throw new Untranslatable(`payload type 0x${k.payloadType.toString(16)} is not D-Bus`);
  // The payload is part of the record's own copy of its pool slice (pool-records.ts): large
  // byte arrays may stay views of it, unless the message outlives a transient record.
  const m = decodeGVariantMessage(payloadBytes(k), borrow);
  checkHeaderAgainstKdbus(m, k);
  if (m.serial > U32_MAX) throw new Untranslatable(`cookie ${m.serial} does not fit a dbus1 serial`);
  if (m.replySerial !== undefined && m.replySerial > U32_MAX) throw new Untranslatable(`reply cookie ${m.replySerial} does not fit a dbus1 serial`);
  m.sender = k.srcId === 0n ? DRIVER_NAME : uniqueName(k.srcId);
  if (k.dstName !== undefined) m.destination = k.dstName;
  else if (k.dstId === KDBUS_DST_ID_BROADCAST) m.destination = undefined;
  else m.destination = self;
  return m;
}

/**
 * What sd-bus checked of every message it received from kdbus, dropping the message
 * otherwise (sdbus-kdbus-client.md §2.4): the GVariant header agrees with the kdbus one. A
 * legacy client would else take a plain message for the reply to one of its calls (the
 * bus tracks replies by the kdbus cookies), or get a descriptor count that does not match
 * the descriptors, on which libdbus disconnects.
 */
function checkHeaderAgainstKdbus(m: Message, k: KdbusMessage): void {
  const disagree = (what: string): never => {
    throw new Untranslatable(`its GVariant header disagrees with its kdbus header: ${what}`);
  };
  if (m.serial !== k.cookie) disagree(`cookie ${m.serial}, kdbus cookie ${k.cookie}`);
  const expectsReply = (k.flags & MsgFlags.EXPECT_REPLY) !== 0n;
  if (expectsReply === ((m.flags & MessageFlag.NoReplyExpected) !== 0)) disagree(`NO_REPLY_EXPECTED ${!expectsReply ? 'unset' : 'set'}, EXPECT_REPLY ${expectsReply ? 'set' : 'unset'}`);
  if (!expectsReply && (m.replySerial ?? 0n) !== k.cookieReply) disagree(`reply cookie ${m.replySerial ?? 0n}, kdbus cookie_reply ${k.cookieReply}`);
  if (((k.flags & MsgFlags.NO_AUTO_START) !== 0n) !== ((m.flags & MessageFlag.NoAutoStart) !== 0)) disagree('NO_AUTO_START');
  if ((m.unixFds ?? 0) !== k.fds.length) disagree(`UNIX_FDS ${m.unixFds ?? 0}, ${k.fds.length} descriptors`);
}

let driverSerial = 0n;

/** The serial of the driver's next message; it wraps within 32 bits, skipping 0. */
function nextDriverSerial(): bigint {
  driverSerial = driverSerial >= U32_MAX ? 1n : driverSerial + 1n;
  return driverSerial;
}

/** A signal of the bus driver (NameOwnerChanged, NameAcquired, NameLost). */
export function driverSignal(member: string, signature: string, body: Message['body'], destination?: string): Message {
  const m: Message = {
    type: MessageType.Signal,
    flags: MessageFlag.NoReplyExpected,
    serial: nextDriverSerial(),
    path: DRIVER_PATH,
    interface: DRIVER_NAME,
    member,
    sender: DRIVER_NAME,
    signature,
    body,
  };
  if (destination !== undefined) m.destination = destination;
  return m;
}

/**
 * A message of the bus driver to systemd, whose unit starts stand in for Exec when the bus
 * does systemd activation: the ActivationRequest signal, the SetEnvironment call.
 */
export function driverToSystemd(type: typeof MessageType.Signal | typeof MessageType.MethodCall, path: string, iface: string, member: string, signature: string, body: Message['body']): Message {
  return {
    type, flags: MessageFlag.NoReplyExpected, serial: nextDriverSerial(), path, interface: iface, member,
    sender: DRIVER_NAME, destination: SYSTEMD_NAME, signature, body,
  };
}

/** A reply or error of the driver to the call `to`. */
export function driverReply(to: Message, signature: string, body: Message['body']): Message {
  const m: Message = { type: MessageType.MethodReturn, flags: MessageFlag.NoReplyExpected, serial: nextDriverSerial(), replySerial: to.serial, sender: DRIVER_NAME, signature, body };
  if (to.sender !== undefined) m.destination = to.sender;
  return m;
}

export function errorReply(to: Message, sender: string, name: string, text: string): Message {
  const m: Message = {
    type: MessageType.Error, flags: MessageFlag.NoReplyExpected, serial: nextDriverSerial(), replySerial: to.serial,
    errorName: name, sender, signature: 's', body: [text],
  };
  if (to.sender !== undefined) m.destination = to.sender;
  return m;
}

/**
 * NameOwnerChanged for a NAME_ notification: a side that only queues for the name, or is
 * an activator, is no owner (as sd-bus synthesized it); undefined when neither side owns.
 */
export function nameOwnerChanged(n: NameChangeNotification): Message | undefined {
  const owner = (id: bigint, flags: bigint): string => (id === 0n || flags & (NAME_IN_QUEUE | NAME_ACTIVATOR) ? '' : uniqueName(id));
  const before = owner(n.oldId, n.oldFlags);
  const after = owner(n.newId, n.newFlags);
  if (before === '' && after === '') return undefined;
  return driverSignal('NameOwnerChanged', 'sss', [n.name, before, after]);
}

/** NameOwnerChanged for ID_ADD / ID_REMOVE: a unique name appears or goes. */
export function uniqueNameChanged(id: bigint, added: boolean): Message {
  const name = uniqueName(id);
  return driverSignal('NameOwnerChanged', 'sss', added ? [name, '', name] : [name, name, '']);
}
