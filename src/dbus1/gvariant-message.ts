/**
 * The message form kdbus payloads carry: systemd's "version 2" (sd-bus v224+,
 * GVARIANT-SERIALIZATION), a GVariant of type (yyyyuta{tv}v):
 *
 *   0  y  endianness 'l' / 'B'       8  t  cookie (64-bit serial)
 *   1  y  type                      16  a{tv} header fields, 64-bit codes
 *   2  y  flags                         zero padding to 8
 *   3  y  version 2                     v  body: the argument tuple, 0x00, "(signature)"
 *   4  u  reserved                      one framing offset: where a{tv} ends
 *
 * The message size is the transport's; the framing offset's width follows from it. Field
 * codes are dbus1's, REPLY_SERIAL is 't', and there is no SIGNATURE field (the footer holds
 * the signature; sd-bus refuses a message with the field, and so does this reader).
 * Written little-endian, fields in ascending code order; read in either byte order.
 */
import {
  addressProblem,
  applyHeaderField,
  bodyTypes,
  decodeMessage,
  encodeMessage,
  HeaderField,
  headerProblem,
  Message,
  MessageType,
  setTextField,
} from './message';
import { GVariantError, GVariantReader, gvariantOffsetSize, gvariantWordSize, writeGVariantBody } from './gvariant';
import { OutputBuffer } from './output-buffer';
import { alignUp, CompleteType, parseCompleteType, parseSignature, SignatureError } from './signature';
import { decodeAsciiString, decodeWireString } from './utf8';
import { ValueError, Variant } from './value';

export const GVARIANT_MESSAGE_VERSION = 2;
/** endianness, type, flags, version, reserved u32, cookie u64. */
export const GVARIANT_FIXED_HEADER_SIZE = 16;

const FIELDS_TYPE = parseCompleteType('a{tv}');
const NUL = 0;

/**
 * One a{tv} entry, 8-aligned: the code as a u64, then the variant (value, NUL, type). The
 * values are what headerProblem accepted: names and paths are ASCII without NUL.
 */
function writeTextField(out: OutputBuffer, code: number, type: string, value: string): void {
  out.align(8);
  out.u32(code);
  out.u32(0);
  out.ascii(value);
  out.u8(NUL);
  out.u8(NUL);
  out.ascii(type);
}

/**
 * End offsets (from the fields' start) of the entries written so far, for the table after
 * them: at most one per known field, kept across messages (encoding is never re-entered).
 */
const fieldEnds = new Float64Array(HeaderField.UnixFds + 1);
let fieldCount = 0;

/** A present string-like field, with its end offset noted for the table. */
function textField(out: OutputBuffer, start: number, code: number, type: string, value: string | undefined): void {
  if (value === undefined) return;
  writeTextField(out, code, type, value);
  fieldEnds[fieldCount++] = out.pos - start;
}

/** A fixed-size field (the reply cookie as t, the fd count as u), with its end offset noted. */
function numberField(out: OutputBuffer, start: number, code: number, type: 't' | 'u', value: bigint | number): void {
  out.align(8);
  out.u32(code);
  out.u32(0);
  if (type === 't') out.u64(BigInt(value));
  else out.u32(Number(value));
  out.u8(NUL);
  out.ascii(type);
  fieldEnds[fieldCount++] = out.pos - start;
}

/**
 * The header fields, ascending by code, as writeGVariantValue would write them as a{tv}
 * (the entries, then the table of their end offsets), without the generic writer.
 */
function writeHeaderFields(out: OutputBuffer, m: Message, withSender: boolean): void {
  const start = out.pos;
  fieldCount = 0;
  textField(out, start, HeaderField.Path, 'o', m.path);
  textField(out, start, HeaderField.Interface, 's', m.interface);
  textField(out, start, HeaderField.Member, 's', m.member);
  textField(out, start, HeaderField.ErrorName, 's', m.errorName);
  if (m.replySerial !== undefined) numberField(out, start, HeaderField.ReplySerial, 't', m.replySerial);
  textField(out, start, HeaderField.Destination, 's', m.destination);
  if (withSender) textField(out, start, HeaderField.Sender, 's', m.sender);
  if (m.unixFds !== undefined) numberField(out, start, HeaderField.UnixFds, 'u', m.unixFds);
  const n = fieldCount;
  if (n === 0) return;
  const w = gvariantWordSize(out.pos - start, n);
  for (let i = 0; i < n; i++) out.word(fieldEnds[i]!, w);
}

/** A message in the version-2 GVariant form, little-endian. Throws ValueError if m is invalid. */
export function encodeGVariantMessage(m: Message): Buffer {
  return encode(m, m.flags, true);
}

/** Where an encoded message's body lies: [begin, end), after the header fields' padding, before the footer. */
export interface BodyRange {
  begin: number;
  end: number;
}

/**
 * m as a kdbus payload of its sender: without a SENDER field (the bus's source id says who
 * sent it) and with `flags` for m.flags, without a copy of m. `decoded` as for
 * encodeDecodedMessage: only sender and destination are checked again. `body`, if given,
 * is set to where the body lies in the result.
 */
export function encodeGVariantPayload(m: Message, flags: number, decoded = false, out?: OutputBuffer, body?: BodyRange): Buffer {
  if (!Number.isInteger(flags) || flags < 0 || flags > 0xff) throw new ValueError(`flags ${flags} are not a byte`);
  return encode(m, flags, false, decoded, out, body);
}

function encode(m: Message, flags: number, withSender: boolean, decoded = false, out = new OutputBuffer(256), body?: BodyRange): Buffer {
  const problem = decoded ? addressProblem(m) : headerProblem(m);
  if (problem !== undefined) throw new ValueError(problem);
  if (m.serial > 0xffff_ffff_ffff_ffffn) throw new ValueError(`cookie ${m.serial} does not fit 64 bits`);
  if (m.replySerial !== undefined && m.replySerial > 0xffff_ffff_ffff_ffffn) {
    throw new ValueError(`reply cookie ${m.replySerial} does not fit 64 bits`);
  }
  const types = bodyTypes(m.signature);
  out.u8(0x6c); // 'l'
  out.u8(m.type);
  out.u8(flags);
  out.u8(GVARIANT_MESSAGE_VERSION);
  out.u32(0);
  out.u64(m.serial);
  writeHeaderFields(out, m, withSender);
  const fieldsEnd = out.pos;
  out.align(8);
  const bodyBegin = out.pos;
  writeGVariantBody(out, types, m.body);
  if (body) {
    body.begin = bodyBegin;
    body.end = out.pos;
  }
  out.u8(0);
  out.u8(0x28); // '('
  out.ascii(m.signature);
  out.u8(0x29); // ')'
  out.word(fieldsEnd, gvariantWordSize(out.pos, 1));
  return out.finish();
}

/** A little-endian cookie: one BigInt for one below 2^32 (Buffer's reader makes four). */
function cookieLE(b: Buffer, at: number): bigint {
  return b.readUInt32LE(at + 4) === 0 ? BigInt(b.readUInt32LE(at)) : b.readBigUInt64LE(at);
}

/** The type character each known header field has in a version-2 message, by code (no SIGNATURE). */
const FIELD_TYPE_CHARS = [0, 0x6f, 0x73, 0x73, 0x73, 0x74, 0x73, 0x73, 0, 0x75];

/**
 * The a{tv} header fields of the common message, read without the generic reader: only
 * known fields, each once, with the type it must have, every value valid, in normal form.
 * Anything else gives false with m possibly half filled, and the generic path reads the
 * fields again, so that what it accepts and the errors it gives stay exactly its own.
 */
function readCommonHeaderFields(r: GVariantReader, m: Message, end: number): boolean {
  const b = r.buf;
  const le = r.littleEndian;
  const start = GVARIANT_FIXED_HEADER_SIZE;
  const size = end - start;
  if (size === 0) return true;
  const w = gvariantOffsetSize(size);
  if (size < w) return false;
  const tableStart = start + r.word(end - w, w);
  if (tableStart > end - w || (end - tableStart) % w !== 0) return false;
  let seen = 0;
  let previous = start;
  for (let at = tableStart; at < end; at += w) {
    const entry = alignUp(previous, 8);
    const entryEnd = start + r.word(at, w);
    for (let i = previous; i < entry; i++) if (b[i] !== 0) return false;
    // The key, a NUL, the type character, at least.
    if (entryEnd > tableStart || entryEnd < entry + 10) return false;
    const codeHigh = le ? b.readUInt32LE(entry + 4) : b.readUInt32BE(entry);
    const code = le ? b.readUInt32LE(entry) : b.readUInt32BE(entry + 4);
    const typeChar = codeHigh === 0 && code < FIELD_TYPE_CHARS.length ? FIELD_TYPE_CHARS[code]! : 0;
    if (typeChar === 0 || b[entryEnd - 1] !== typeChar || b[entryEnd - 2] !== 0) return false;
    const bit = 1 << code;
    if (seen & bit) return false;
    seen |= bit;
    const value = entry + 8;
    const valueEnd = entryEnd - 2;
    if (typeChar === 0x74) {
      if (valueEnd - value !== 8) return false;
      m.replySerial = le ? cookieLE(b, value) : b.readBigUInt64BE(value);
    } else if (typeChar === 0x75) {
      if (valueEnd - value !== 4) return false;
      m.unixFds = le ? b.readUInt32LE(value) : b.readUInt32BE(value);
    } else {
      if (valueEnd === value || b[valueEnd - 1] !== 0) return false;
      const text = decodeWireString(b, value, valueEnd - 1);
      if (text === undefined || !setTextField(m, code, text)) return false;
    }
    previous = entryEnd;
  }
  return previous === tableStart;
}

/** The header fields by the generic reader: every field the format allows, every error. */
function readHeaderFields(r: GVariantReader, m: Message, fieldsEnd: number): void {
  const seen = new Set<number>();
  const fields = r.read(FIELDS_TYPE, GVARIANT_FIXED_HEADER_SIZE, fieldsEnd, 0) as [bigint, Variant][];
  for (const [code, v] of fields) {
    if (code > BigInt(HeaderField.UnixFds)) continue;
    const c = Number(code);
    if (c === HeaderField.Signature) throw new GVariantError('SIGNATURE header field in a version-2 message', GVARIANT_FIXED_HEADER_SIZE);
    const problem = applyHeaderField(m, seen, c, v, 't');
    if (problem !== undefined) throw new GVariantError(problem, GVARIANT_FIXED_HEADER_SIZE);
  }
}

/**
 * Decodes one version-2 message that fills data (the whole kdbus payload). Throws
 * GVariantError saying what and where. `borrow`: data is the message's own, not a buffer
 * reused later, so large byte arrays in the body may be views of it.
 */
export function decodeGVariantMessage(data: Uint8Array, borrow = false): Message {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const size = buf.length;
  if (size < GVARIANT_FIXED_HEADER_SIZE) throw new GVariantError(`message of ${size} bytes is shorter than its fixed header`, size);
  if (buf[0] !== 0x6c && buf[0] !== 0x42) throw new GVariantError(`endianness byte ${buf[0]} is neither 'l' nor 'B'`, 0);
  const le = buf[0] === 0x6c;
  if (buf[3] !== GVARIANT_MESSAGE_VERSION) throw new GVariantError(`protocol version ${buf[3]}, not ${GVARIANT_MESSAGE_VERSION}`, 3);
  const type = buf[1]!;
  if (type < 1 || type > 4) throw new GVariantError(`unknown message type ${type}`, 1);
  const serial = le ? cookieLE(buf, 8) : buf.readBigUInt64BE(8);
  if (serial === 0n) throw new GVariantError('cookie is 0', 8);

  const r = new GVariantReader(buf, le, 0, borrow);
  const w = gvariantOffsetSize(size);
  const fieldsEnd = r.word(size - w, w);
  if (fieldsEnd < GVARIANT_FIXED_HEADER_SIZE || fieldsEnd > size - w) {
    throw new GVariantError(`header fields end offset ${fieldsEnd} is outside the message`, size - w);
  }
  let m: Message = { type: type as MessageType, flags: buf[2]!, serial, signature: '', body: [] };
  if (!readCommonHeaderFields(r, m, fieldsEnd)) {
    m = { type: type as MessageType, flags: buf[2]!, serial, signature: '', body: [] };
    readHeaderFields(r, m, fieldsEnd);
  }

  const bodyStart = alignUp(fieldsEnd, 8);
  const bodyEnd = size - w;
  if (bodyStart > bodyEnd) throw new GVariantError('message ends inside the padding before the body', fieldsEnd);
  for (let i = fieldsEnd; i < bodyStart; i++) if (buf[i] !== 0) throw new GVariantError('non-zero padding before the body', i);
  let sep = bodyEnd - 1;
  while (sep >= bodyStart && buf[sep] !== 0) sep--;
  if (sep < bodyStart) throw new GVariantError('body variant without a type string separator', bodyStart);
  // The common footer, "(" ASCII signature ")", gives its signature without two new strings.
  const signature = bodyEnd - sep >= 3 && buf[sep + 1] === 0x28 && buf[bodyEnd - 1] === 0x29 ? decodeAsciiString(buf, sep + 2, bodyEnd - 1) : undefined;
  if (signature !== undefined) {
    m.signature = signature;
  } else {
    const footer = buf.toString('latin1', sep + 1, bodyEnd);
    if (footer.length < 2 || footer[0] !== '(' || footer[footer.length - 1] !== ')') {
      throw new GVariantError(`body type ${JSON.stringify(footer)} is not a tuple`, sep + 1);
    }
    m.signature = footer.slice(1, -1);
  }
  let types: readonly CompleteType[];
  try {
    types = parseSignature(m.signature);
  } catch (e) {
    if (e instanceof SignatureError) throw new GVariantError(`body type: ${e.message}`, sep + 1);
    throw e;
  }
  const problem = headerProblem(m);
  if (problem !== undefined) throw new GVariantError(problem, GVARIANT_FIXED_HEADER_SIZE);
  m.body = r.body(types, bodyStart, sep);
  return m;
}

/** A dbus1 message re-encoded as a version-2 GVariant message. */
export function dbus1ToGVariant(dbus1: Uint8Array): Buffer {
  return encodeGVariantMessage(decodeMessage(dbus1));
}

/**
 * A version-2 GVariant message re-encoded as dbus1. Throws ValueError for what dbus1 cannot
 * carry: cookies or reply cookies beyond 32 bits.
 */
export function gvariantToDbus1(gvariant: Uint8Array): Buffer {
  return encodeMessage(decodeGVariantMessage(gvariant));
}
