/**
 * D-Bus messages: the model both wire forms share, and its dbus1 encoding (specification,
 * "Message Format"): a 12-byte fixed header (endianness, type, flags, version 1, body
 * length, serial), the header fields a(yv), zero padding to 8, the body.
 *
 * Header fields are written in ascending code order and SIGNATURE only for a non-empty
 * body. Reading accepts both byte orders and any field order, ignores unknown fields (the
 * specification asks receivers to) and keeps unknown flag bits, and refuses what libdbus
 * refuses: duplicate or mistyped fields, fields a message type requires but lacks, names
 * with bad syntax, the reserved "Local" path and interface, serial 0, sizes beyond the
 * limits. Two differences: a unique name needs two elements, as the specification says
 * (libdbus takes ":1"), and a well-formed message of a type other than 1..4 comes out as an
 * UnknownMessageType error holding its header: the model has no place for such messages,
 * which the specification has receivers ignore and dbus-daemon refuses.
 */
import { DBus1Error, DBus1Reader, MAX_ARRAY_LENGTH, writeValues } from './dbus1-wire';
import {
  isValidBusName,
  isValidErrorName,
  isValidInterfaceName,
  isValidMemberName,
  isValidObjectPath,
} from './names';
import { OutputBuffer } from './output-buffer';
import { alignUp, CompleteType, isValidSignature, parseCompleteType, parseSignature, SignatureError } from './signature';
import { decodeWireString } from './utf8';
import { Value, ValueError, Variant } from './value';

export const MessageType = { MethodCall: 1, MethodReturn: 2, Error: 3, Signal: 4 } as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

export const MessageFlag = { NoReplyExpected: 1, NoAutoStart: 2, AllowInteractiveAuthorization: 4 } as const;

export const HeaderField = {
  Path: 1,
  Interface: 2,
  Member: 3,
  ErrorName: 4,
  ReplySerial: 5,
  Destination: 6,
  Sender: 7,
  Signature: 8,
  UnixFds: 9,
} as const;

export const MAX_MESSAGE_SIZE = 128 * 1024 * 1024;
/** The fixed header plus the length of the header fields array. */
export const DBUS1_PREFIX_SIZE = 16;

export const LOCAL_PATH = '/org/freedesktop/DBus/Local';
export const LOCAL_INTERFACE = 'org.freedesktop.DBus.Local';

/**
 * One message, independent of its wire form. Serials are bigint because the GVariant form
 * carries 64-bit cookies; dbus1 holds them to 32 bits. Absent header fields are undefined.
 */
export interface Message {
  type: MessageType;
  /** MessageFlag bits; unknown bits are kept. */
  flags: number;
  serial: bigint;
  replySerial?: bigint;
  path?: string;
  interface?: string;
  member?: string;
  errorName?: string;
  destination?: string;
  sender?: string;
  /** The body's signature, "" for no body. */
  signature: string;
  /** How many fds travel with the message (the UNIX_FDS field), undefined if the field is absent. */
  unixFds?: number;
  body: Value[];
}

/**
 * What is wrong with a message's header as the specification defines it, or undefined. The
 * value types of the fields are the encoders' business; this checks presence and syntax.
 */
export function headerProblem(m: Message): string | undefined {
  if (m.type < 1 || m.type > 4 || !Number.isInteger(m.type)) return `unknown message type ${m.type}`;
  return fieldsProblem(m) ?? requiredFieldsProblem(m);
}

/** The checks of headerProblem that hold for messages of every type, known or not. */
function fieldsProblem(m: Message): string | undefined {
  if (!Number.isInteger(m.flags) || m.flags < 0 || m.flags > 0xff) return `flags ${m.flags} are not a byte`;
  if (m.serial === 0n) return 'serial is 0';
  if (m.serial < 0n) return `serial ${m.serial} is negative`;
  if (m.replySerial === 0n) return 'reply serial is 0';
  if (m.replySerial !== undefined && m.replySerial < 0n) return `reply serial ${m.replySerial} is negative`;
  if (m.path !== undefined && !isValidObjectPath(m.path)) return `path ${JSON.stringify(m.path)} is not a valid object path`;
  if (m.path === LOCAL_PATH) return `path ${LOCAL_PATH} is reserved`;
  if (m.interface !== undefined && !isValidInterfaceName(m.interface)) return `interface ${JSON.stringify(m.interface)} is not a valid interface name`;
  if (m.interface === LOCAL_INTERFACE) return `interface ${LOCAL_INTERFACE} is reserved`;
  if (m.member !== undefined && !isValidMemberName(m.member)) return `member ${JSON.stringify(m.member)} is not a valid member name`;
  if (m.errorName !== undefined && !isValidErrorName(m.errorName)) return `error name ${JSON.stringify(m.errorName)} is not a valid error name`;
  if (m.destination !== undefined && !isValidBusName(m.destination)) return `destination ${JSON.stringify(m.destination)} is not a valid bus name`;
  if (m.sender !== undefined && !isValidBusName(m.sender)) return `sender ${JSON.stringify(m.sender)} is not a valid bus name`;
  if (m.unixFds !== undefined && (!Number.isInteger(m.unixFds) || m.unixFds < 0 || m.unixFds > 0xffff_ffff)) return `unix fd count ${m.unixFds} is not a uint32`;
  return undefined;
}

function requiredFieldsProblem(m: Message): string | undefined {
  switch (m.type) {
    case MessageType.MethodCall:
      if (m.path === undefined) return 'method call without a path';
      if (m.member === undefined) return 'method call without a member';
      break;
    case MessageType.MethodReturn:
      if (m.replySerial === undefined) return 'method return without a reply serial';
      break;
    case MessageType.Error:
      if (m.replySerial === undefined) return 'error without a reply serial';
      if (m.errorName === undefined) return 'error without an error name';
      break;
    case MessageType.Signal:
      if (m.path === undefined) return 'signal without a path';
      if (m.interface === undefined) return 'signal without an interface';
      if (m.member === undefined) return 'signal without a member';
      break;
  }
  return undefined;
}

/**
 * headerProblem for a message whose header a decoder accepted and whose sender and
 * destination alone may have been set since (what the endpoint does to the messages it
 * forwards): only those two are checked again.
 */
export function addressProblem(m: Message): string | undefined {
  if (m.destination !== undefined && !isValidBusName(m.destination)) return `destination ${JSON.stringify(m.destination)} is not a valid bus name`;
  if (m.sender !== undefined && !isValidBusName(m.sender)) return `sender ${JSON.stringify(m.sender)} is not a valid bus name`;
  return undefined;
}

const CONTAINER_INSTANCE = 10;

/** The D-Bus type each known header field must have in dbus1 (REPLY_SERIAL is 't' in GVariant). */
const HEADER_FIELD_TYPES: Readonly<Record<number, string>> = {
  [HeaderField.Path]: 'o',
  [HeaderField.Interface]: 's',
  [HeaderField.Member]: 's',
  [HeaderField.ErrorName]: 's',
  [HeaderField.ReplySerial]: 'u',
  [HeaderField.Destination]: 's',
  [HeaderField.Sender]: 's',
  [HeaderField.Signature]: 'g',
  [HeaderField.UnixFds]: 'u',
  // libdbus (1.14) knows CONTAINER_INSTANCE, of dbus-daemon's experimental containers, and
  // refuses it with another type; like any field the model has no place for, it is dropped.
  [CONTAINER_INSTANCE]: 'o',
};

/**
 * Stores a decoded header field into m. Returns a problem (duplicate, wrong type) or
 * undefined; unknown codes are ignored. reply serials arrive as number (dbus1) or bigint.
 */
export function applyHeaderField(m: Message, seen: Set<number>, code: number, v: Variant, replySerialType: 'u' | 't'): string | undefined {
  const expected = code === HeaderField.ReplySerial ? replySerialType : HEADER_FIELD_TYPES[code];
  if (expected === undefined) return code === 0 ? 'header field code 0 is invalid' : undefined;
  if (seen.has(code)) return `header field ${code} appears twice`;
  seen.add(code);
  if (v.signature !== expected) return `header field ${code} has type '${v.signature}', not '${expected}'`;
  const value = v.value;
  switch (code) {
    case HeaderField.Path:
      m.path = value as string;
      break;
    case HeaderField.Interface:
      m.interface = value as string;
      break;
    case HeaderField.Member:
      m.member = value as string;
      break;
    case HeaderField.ErrorName:
      m.errorName = value as string;
      break;
    case HeaderField.ReplySerial:
      m.replySerial = BigInt(value as number | bigint);
      break;
    case HeaderField.Destination:
      m.destination = value as string;
      break;
    case HeaderField.Sender:
      m.sender = value as string;
      break;
    case HeaderField.Signature:
      m.signature = value as string;
      break;
    case HeaderField.UnixFds:
      m.unixFds = value as number;
      break;
  }
  return undefined;
}

/** The complete types of a body signature; ValueError if it is not a valid signature. */
export function bodyTypes(signature: string): readonly CompleteType[] {
  try {
    return parseSignature(signature);
  } catch (e) {
    if (e instanceof SignatureError) throw new ValueError(`body signature: ${e.message}`);
    throw e;
  }
}

const CHAR_O = 0x6f;
const CHAR_S = 0x73;
const CHAR_G = 0x67;
const CHAR_U = 0x75;

/**
 * One header field entry (yv) of a string-like type. The values are what headerProblem and
 * bodyTypes accepted: names and paths are ASCII without NUL, so they are written as such.
 */
function writeTextField(out: OutputBuffer, code: number, typeChar: number, value: string): void {
  out.align(8);
  out.u8(code);
  out.u8(1);
  out.u8(typeChar);
  out.u8(0);
  if (typeChar === CHAR_G) out.u8(value.length);
  else out.u32(value.length);
  out.ascii(value);
  out.u8(0);
}

function writeU32Field(out: OutputBuffer, code: number, value: number): void {
  out.align(8);
  out.u8(code);
  out.u8(1);
  out.u8(CHAR_U);
  out.u8(0);
  out.u32(value);
}

/**
 * A message in the dbus1 format, little-endian, written into `out` if given (its bytes are
 * the caller's until it releases out). Throws ValueError if m cannot be expressed.
 */
export function encodeMessage(m: Message, out?: OutputBuffer): Buffer {
  return encodeDbus1(m, headerProblem(m), out);
}

/**
 * encodeMessage for a message whose header a decoder accepted, changed since in sender and
 * destination at most (see addressProblem): the rest is not checked again.
 */
export function encodeDecodedMessage(m: Message, out?: OutputBuffer): Buffer {
  return encodeDbus1(m, addressProblem(m), out);
}

function encodeDbus1(m: Message, problem: string | undefined, out = new OutputBuffer(256)): Buffer {
  if (problem !== undefined) throw new ValueError(problem);
  if (m.serial > 0xffff_ffffn) throw new ValueError(`serial ${m.serial} does not fit dbus1's 32 bits`);
  if (m.replySerial !== undefined && m.replySerial > 0xffff_ffffn) {
    throw new ValueError(`reply serial ${m.replySerial} does not fit dbus1's 32 bits`);
  }
  const types = bodyTypes(m.signature);
  out.u8(0x6c); // 'l'
  out.u8(m.type);
  out.u8(m.flags);
  out.u8(1);
  out.u32(0); // body length, patched below
  out.u32(Number(m.serial));
  out.u32(0); // header fields length, patched below
  const fieldsStart = out.pos;
  // Ascending by code, written without the generic value writer.
  if (m.path !== undefined) writeTextField(out, HeaderField.Path, CHAR_O, m.path);
  if (m.interface !== undefined) writeTextField(out, HeaderField.Interface, CHAR_S, m.interface);
  if (m.member !== undefined) writeTextField(out, HeaderField.Member, CHAR_S, m.member);
  if (m.errorName !== undefined) writeTextField(out, HeaderField.ErrorName, CHAR_S, m.errorName);
  if (m.replySerial !== undefined) writeU32Field(out, HeaderField.ReplySerial, Number(m.replySerial));
  if (m.destination !== undefined) writeTextField(out, HeaderField.Destination, CHAR_S, m.destination);
  if (m.sender !== undefined) writeTextField(out, HeaderField.Sender, CHAR_S, m.sender);
  if (m.signature !== '') writeTextField(out, HeaderField.Signature, CHAR_G, m.signature);
  if (m.unixFds !== undefined) writeU32Field(out, HeaderField.UnixFds, m.unixFds);
  out.patchU32(12, out.pos - fieldsStart);
  out.align(8);
  const bodyStart = out.pos;
  writeValues(out, types, m.body);
  if (out.pos > MAX_MESSAGE_SIZE) throw new ValueError(`message of ${out.pos} bytes exceeds the ${MAX_MESSAGE_SIZE}-byte limit`);
  out.patchU32(4, out.pos - bodyStart);
  return out.finish();
}

function u32At(b: Uint8Array, at: number, le: boolean): number {
  return le
    ? (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0
    : ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}

function endianness(byte: number | undefined): boolean {
  if (byte === 0x6c) return true;
  if (byte === 0x42) return false;
  throw new DBus1Error(`endianness byte ${byte} is neither 'l' nor 'B'`, 0);
}

/**
 * The total length of the dbus1 message that starts with these bytes (at least 16 of
 * them), for a stream reader that must know how much to read. Checks what it can this
 * early: byte order, protocol version, the size limits.
 */
export function messageLength(prefix: Uint8Array): number {
  if (prefix.length < DBUS1_PREFIX_SIZE) throw new RangeError(`messageLength needs ${DBUS1_PREFIX_SIZE} bytes, got ${prefix.length}`);
  const le = endianness(prefix[0]);
  if (prefix[3] !== 1) throw new DBus1Error(`protocol version ${prefix[3]}, not 1`, 3);
  // Read byte by byte: a DataView per message costs more than the two words it reads.
  const bodyLength = u32At(prefix, 4, le);
  const fieldsLength = u32At(prefix, 12, le);
  if (fieldsLength > MAX_ARRAY_LENGTH) throw new DBus1Error(`header fields array of ${fieldsLength} bytes exceeds ${MAX_ARRAY_LENGTH}`, 12);
  const total = DBUS1_PREFIX_SIZE + alignUp(fieldsLength, 8) + bodyLength;
  if (total > MAX_MESSAGE_SIZE) throw new DBus1Error(`message of ${total} bytes exceeds the ${MAX_MESSAGE_SIZE}-byte limit`, 4);
  return total;
}

const HEADER_FIELD_ENTRY = parseCompleteType('(yv)');

/** The type character each known header field must have in dbus1, by code (index 0 unused). */
const FIELD_TYPE_CHARS = [0, CHAR_O, CHAR_S, CHAR_S, CHAR_S, CHAR_U, CHAR_S, CHAR_S, CHAR_G, CHAR_U];

/**
 * Sets a string-like header field (PATH, INTERFACE, MEMBER, ERROR_NAME, DESTINATION, SENDER,
 * SIGNATURE) as the fast header readers found it; false for a path or signature that is not
 * valid, which the generic reader then reports.
 */
export function setTextField(m: Message, code: number, text: string): boolean {
  switch (code) {
    case HeaderField.Path:
      if (!isValidObjectPath(text)) return false;
      m.path = text;
      return true;
    case HeaderField.Interface:
      m.interface = text;
      return true;
    case HeaderField.Member:
      m.member = text;
      return true;
    case HeaderField.ErrorName:
      m.errorName = text;
      return true;
    case HeaderField.Destination:
      m.destination = text;
      return true;
    case HeaderField.Sender:
      m.sender = text;
      return true;
    case HeaderField.Signature:
      if (!isValidSignature(text)) return false;
      m.signature = text;
      return true;
    default:
      return false;
  }
}

/**
 * The header fields of the common message, read without the generic reader: only known
 * fields, each once, with the type it must have, every value valid. Anything else gives
 * false with m possibly half filled, and the generic path reads the message again, so
 * that what it accepts and the errors it gives stay exactly its own.
 */
function readCommonHeaderFields(buf: Buffer, le: boolean, m: Message, fieldsEnd: number): boolean {
  let seen = 0;
  let pos = DBUS1_PREFIX_SIZE;
  while (pos < fieldsEnd) {
    const at = alignUp(pos, 8);
    // The entry's code and type, then at least a u32 or a signature's length byte and NUL.
    if (at + 6 > fieldsEnd) return false;
    for (let i = pos; i < at; i++) if (buf[i] !== 0) return false;
    const code = buf[at]!;
    const typeChar = code < FIELD_TYPE_CHARS.length ? FIELD_TYPE_CHARS[code]! : 0;
    if (typeChar === 0 || buf[at + 1] !== 1 || buf[at + 2] !== typeChar || buf[at + 3] !== 0) return false;
    const bit = 1 << code;
    if (seen & bit) return false;
    seen |= bit;
    if (typeChar !== CHAR_G && at + 8 > fieldsEnd) return false;
    if (typeChar === CHAR_U) {
      const v = le ? buf.readUInt32LE(at + 4) : buf.readUInt32BE(at + 4);
      if (code === HeaderField.ReplySerial) m.replySerial = BigInt(v);
      else m.unixFds = v;
      pos = at + 8;
      continue;
    }
    let textStart: number;
    let length: number;
    if (typeChar === CHAR_G) {
      length = buf[at + 4]!;
      textStart = at + 5;
    } else {
      length = le ? buf.readUInt32LE(at + 4) : buf.readUInt32BE(at + 4);
      textStart = at + 8;
    }
    const textEnd = textStart + length;
    if (textEnd + 1 > fieldsEnd || buf[textEnd] !== 0) return false;
    const text = decodeWireString(buf, textStart, textEnd);
    if (text === undefined || !setTextField(m, code, text)) return false;
    pos = textEnd + 1;
  }
  return true;
}

/**
 * A whole, well-formed message of a type the specification does not define. Receivers
 * ignore such messages, and dbus-daemon routes them like any other to have them refused:
 * `decoded` has what routing needs (its `type` is the unknown one).
 */
export class UnknownMessageType extends DBus1Error {
  constructor(readonly decoded: Message) {
    super(`unknown message type ${decoded.type}`, 1);
  }
}

/**
 * Decodes exactly one dbus1 message that fills data. Throws DBus1Error saying what and
 * where; UnknownMessageType for a message that is well-formed but of an unknown type.
 */
export function decodeMessage(data: Uint8Array): Message {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (buf.length < DBUS1_PREFIX_SIZE) throw new DBus1Error(`message of ${buf.length} bytes is shorter than its fixed header`, buf.length);
  const total = messageLength(buf);
  if (total !== buf.length) throw new DBus1Error(`header says ${total} bytes, got ${buf.length}`, 4);
  const le = buf[0] === 0x6c;
  const type = buf[1]!;
  if (type === 0) throw new DBus1Error('message type 0 is invalid', 1);
  const known = type <= 4;
  const serial = le ? buf.readUInt32LE(8) : buf.readUInt32BE(8);
  if (serial === 0) throw new DBus1Error('serial is 0', 8);
  const fieldsLength = le ? buf.readUInt32LE(12) : buf.readUInt32BE(12);
  const fieldsEnd = DBUS1_PREFIX_SIZE + fieldsLength;
  let m: Message = { type: type as MessageType, flags: buf[2]!, serial: BigInt(serial), signature: '', body: [] };
  if (!readCommonHeaderFields(buf, le, m, fieldsEnd)) {
    m = { type: type as MessageType, flags: buf[2]!, serial: BigInt(serial), signature: '', body: [] };
    readHeaderFields(buf, le, m, fieldsEnd);
  }
  const r = new DBus1Reader(buf, le, 0, fieldsEnd);
  const problem = known ? headerProblem(m) : fieldsProblem(m);
  if (problem !== undefined) throw new DBus1Error(problem, DBUS1_PREFIX_SIZE);
  r.align(8, total);
  const types = parseSignature(m.signature);
  for (const t of types) m.body.push(r.readValue(t, total, 0));
  if (r.pos !== total) r.fail(`${total - r.pos} bytes left over after the body's values`);
  if (!known) throw new UnknownMessageType(m);
  return m;
}

/** The header fields by the generic reader: every field the specification allows, every error. */
function readHeaderFields(buf: Buffer, le: boolean, m: Message, fieldsEnd: number): void {
  const r = new DBus1Reader(buf, le, 0, 12);
  r.u32(DBUS1_PREFIX_SIZE);
  const seen = new Set<number>();
  while (r.pos < fieldsEnd) {
    r.align(8, fieldsEnd);
    const at = r.pos;
    const [code, v] = r.readValue(HEADER_FIELD_ENTRY, fieldsEnd, 1) as [number, Variant];
    const problem = applyHeaderField(m, seen, code, v, 'u');
    if (problem !== undefined) throw new DBus1Error(problem, at);
  }
}
