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
  applyHeaderField,
  bodyTypes,
  decodeMessage,
  encodeMessage,
  HeaderField,
  headerFields,
  headerProblem,
  Message,
  MessageType,
} from './message';
import { GVariantError, GVariantReader, gvariantOffsetSize, gvariantWordSize, writeGVariantBody, writeGVariantValue } from './gvariant';
import { OutputBuffer } from './output-buffer';
import { alignUp, CompleteType, parseCompleteType, parseSignature, SignatureError } from './signature';
import { ValueError, Variant } from './value';

export const GVARIANT_MESSAGE_VERSION = 2;
/** endianness, type, flags, version, reserved u32, cookie u64. */
export const GVARIANT_FIXED_HEADER_SIZE = 16;

const FIELDS_TYPE = parseCompleteType('a{tv}');

/** A message in the version-2 GVariant form, little-endian. Throws ValueError if m is invalid. */
export function encodeGVariantMessage(m: Message): Buffer {
  const problem = headerProblem(m);
  if (problem !== undefined) throw new ValueError(problem);
  if (m.serial > 0xffff_ffff_ffff_ffffn) throw new ValueError(`cookie ${m.serial} does not fit 64 bits`);
  if (m.replySerial !== undefined && m.replySerial > 0xffff_ffff_ffff_ffffn) {
    throw new ValueError(`reply cookie ${m.replySerial} does not fit 64 bits`);
  }
  const types = bodyTypes(m.signature);
  const out = new OutputBuffer(256);
  out.u8(0x6c); // 'l'
  out.u8(m.type);
  out.u8(m.flags);
  out.u8(GVARIANT_MESSAGE_VERSION);
  out.u32(0);
  out.u64(m.serial);
  const fields = headerFields(m, 't', false).map(([code, sig, value]) => [BigInt(code), new Variant(sig, value)]);
  writeGVariantValue(out, FIELDS_TYPE, fields, 0);
  const fieldsEnd = out.pos;
  out.align(8);
  writeGVariantBody(out, types, m.body);
  out.u8(0);
  const footer = `(${m.signature})`;
  out.utf8(footer, footer.length);
  out.word(fieldsEnd, gvariantWordSize(out.pos, 1));
  return out.finish();
}

/**
 * Decodes one version-2 message that fills data (the whole kdbus payload). Throws
 * GVariantError saying what and where.
 */
export function decodeGVariantMessage(data: Uint8Array): Message {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const size = buf.length;
  if (size < GVARIANT_FIXED_HEADER_SIZE) throw new GVariantError(`message of ${size} bytes is shorter than its fixed header`, size);
  if (buf[0] !== 0x6c && buf[0] !== 0x42) throw new GVariantError(`endianness byte ${buf[0]} is neither 'l' nor 'B'`, 0);
  const le = buf[0] === 0x6c;
  if (buf[3] !== GVARIANT_MESSAGE_VERSION) throw new GVariantError(`protocol version ${buf[3]}, not ${GVARIANT_MESSAGE_VERSION}`, 3);
  const type = buf[1]!;
  if (type < 1 || type > 4) throw new GVariantError(`unknown message type ${type}`, 1);
  const serial = le ? buf.readBigUInt64LE(8) : buf.readBigUInt64BE(8);
  if (serial === 0n) throw new GVariantError('cookie is 0', 8);

  const r = new GVariantReader(buf, le, 0);
  const w = gvariantOffsetSize(size);
  const fieldsEnd = r.word(size - w, w);
  if (fieldsEnd < GVARIANT_FIXED_HEADER_SIZE || fieldsEnd > size - w) {
    throw new GVariantError(`header fields end offset ${fieldsEnd} is outside the message`, size - w);
  }
  const m: Message = { type: type as MessageType, flags: buf[2]!, serial, signature: '', body: [] };
  const seen = new Set<number>();
  const fields = r.read(FIELDS_TYPE, GVARIANT_FIXED_HEADER_SIZE, fieldsEnd, 0) as [bigint, Variant][];
  for (const [code, v] of fields) {
    if (code > BigInt(HeaderField.UnixFds)) continue;
    const c = Number(code);
    if (c === HeaderField.Signature) throw new GVariantError('SIGNATURE header field in a version-2 message', GVARIANT_FIXED_HEADER_SIZE);
    const problem = applyHeaderField(m, seen, c, v, 't');
    if (problem !== undefined) throw new GVariantError(problem, GVARIANT_FIXED_HEADER_SIZE);
  }

  const bodyStart = alignUp(fieldsEnd, 8);
  const bodyEnd = size - w;
  if (bodyStart > bodyEnd) throw new GVariantError('message ends inside the padding before the body', fieldsEnd);
  for (let i = fieldsEnd; i < bodyStart; i++) if (buf[i] !== 0) throw new GVariantError('non-zero padding before the body', i);
  let sep = bodyEnd - 1;
  while (sep >= bodyStart && buf[sep] !== 0) sep--;
  if (sep < bodyStart) throw new GVariantError('body variant without a type string separator', bodyStart);
  const footer = buf.toString('latin1', sep + 1, bodyEnd);
  if (footer.length < 2 || footer[0] !== '(' || footer[footer.length - 1] !== ')') {
    throw new GVariantError(`body type ${JSON.stringify(footer)} is not a tuple`, sep + 1);
  }
  m.signature = footer.slice(1, -1);
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
