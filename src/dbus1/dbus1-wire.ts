/**
 * Values in the D-Bus 1 wire format (specification, "Marshaling (Wire Format)"). Reads
 * either byte order, writes little-endian. Every value is aligned to its type's alignment,
 * counted from the start of the message (a body starts 8-aligned, so counting from the
 * body's start is the same).
 *
 * Reading validates everything the specification requires of a receiver: zero padding,
 * booleans 0 or 1, strings of valid UTF-8 without NUL and NUL-terminated, object path and
 * signature syntax, array lengths within 64 MiB that end exactly on an element boundary,
 * variants holding one complete type, and container nesting within 64 across variants.
 */
import { OutputBuffer } from './output-buffer';
import {
  alignUp,
  CompleteType,
  MAX_TOTAL_DEPTH,
  parseCompleteType,
  parseSignature,
  SignatureError,
} from './signature';
import { isValidObjectPath } from './names';
import { decodeWireString } from './utf8';
import {
  byteArrayValue,
  expectArray,
  expectBigInt,
  expectBoolean,
  expectBytes,
  expectDouble,
  expectFields,
  expectInteger,
  expectString,
  expectVariant,
  Value,
  ValueError,
  Variant,
} from './value';

export const MAX_ARRAY_LENGTH = 64 * 1024 * 1024;

/** Malformed dbus1 data; offset is where in the buffer the problem was found. */
export class DBus1Error extends Error {
  constructor(
    readonly reason: string,
    readonly offset: number,
  ) {
    super(`${reason} (at byte ${offset})`);
    this.name = 'DBus1Error';
  }
}

const FIXED_SIZE: Readonly<Record<string, number>> = { y: 1, n: 2, q: 2, i: 4, u: 4, h: 4, x: 8, t: 8, d: 8 };

// ---------------------------------------------------------------------------------------
// Writing

function writeString(out: OutputBuffer, s: string): void {
  const n = Buffer.byteLength(s, 'utf8');
  out.align(4);
  out.u32(n);
  out.utf8(s, n);
  out.u8(0);
}

function writeSignature(out: OutputBuffer, s: string): void {
  out.u8(s.length);
  out.utf8(s, s.length);
  out.u8(0);
}

/**
 * Writes one value of type t at out.pos; depth is the number of containers around it (the
 * variant nesting limit is enforced on the way out too, so nothing unreadable is sent).
 */
export function writeValue(out: OutputBuffer, t: CompleteType, v: Value, depth: number): void {
  switch (t.code) {
    case 'y':
      out.u8(expectInteger('y', v));
      return;
    case 'b':
      out.align(4);
      out.u32(expectBoolean(v) ? 1 : 0);
      return;
    case 'n':
      out.align(2);
      out.i16(expectInteger('n', v));
      return;
    case 'q':
      out.align(2);
      out.u16(expectInteger('q', v));
      return;
    case 'i':
      out.align(4);
      out.i32(expectInteger('i', v));
      return;
    case 'u':
    case 'h':
      out.align(4);
      out.u32(expectInteger(t.code, v));
      return;
    case 'x':
      out.align(8);
      out.i64(expectBigInt('x', v));
      return;
    case 't':
      out.align(8);
      out.u64(expectBigInt('t', v));
      return;
    case 'd':
      out.align(8);
      out.f64(expectDouble(v));
      return;
    case 's':
    case 'o':
      writeString(out, expectString(t.code, v));
      return;
    case 'g':
      writeSignature(out, expectString('g', v));
      return;
    case 'v':
      writeVariant(out, expectVariant(v), depth);
      return;
    case 'a':
      writeArray(out, t, v, depth);
      return;
    case '(':
    case '{': {
      const fields = expectFields(t.signature, t.fields.length, v);
      out.align(8);
      for (let i = 0; i < fields.length; i++) {
        try {
          writeValue(out, t.fields[i]!, fields[i]!, depth + 1);
        } catch (e) {
          throw ValueError.within(e, `[${i}]`);
        }
      }
      return;
    }
  }
}

function writeVariant(out: OutputBuffer, v: Variant, depth: number): void {
  let inner: CompleteType;
  try {
    inner = parseCompleteType(v.signature);
  } catch (e) {
    if (e instanceof SignatureError) throw new ValueError(`Variant signature: ${e.message}`);
    throw e;
  }
  if (depth + 1 + inner.depth > MAX_TOTAL_DEPTH) {
    throw new ValueError(`Variant of '${inner.signature}' nests containers deeper than ${MAX_TOTAL_DEPTH}`);
  }
  writeSignature(out, inner.signature);
  try {
    writeValue(out, inner, v.value, depth + 1);
  } catch (e) {
    throw ValueError.within(e, '.value');
  }
}

function writeArray(out: OutputBuffer, t: CompleteType, v: Value, depth: number): void {
  const element = t.element!;
  out.align(4);
  const lengthAt = out.pos;
  out.u32(0);
  out.align(element.dbus1Alignment);
  const start = out.pos;
  if (element.code === 'y') {
    out.bytes(expectBytes(v));
  } else {
    const items = expectArray(t.signature, v);
    for (let i = 0; i < items.length; i++) {
      try {
        writeValue(out, element, items[i]!, depth + 1);
      } catch (e) {
        throw ValueError.within(e, `[${i}]`);
      }
    }
  }
  const length = out.pos - start;
  if (length > MAX_ARRAY_LENGTH) throw new ValueError(`array of ${length} bytes exceeds the ${MAX_ARRAY_LENGTH}-byte limit`);
  out.patchU32(lengthAt, length);
}

/** Writes a body's values, one per complete type of types, starting at out.pos. */
export function writeValues(out: OutputBuffer, types: readonly CompleteType[], values: readonly Value[]): void {
  if (values.length !== types.length) {
    throw new ValueError(`${types.length} values expected for the signature, got ${values.length}`);
  }
  for (let i = 0; i < types.length; i++) {
    try {
      writeValue(out, types[i]!, values[i]!, 0);
    } catch (e) {
      throw ValueError.within(e, `arg ${i}`);
    }
  }
}

/** A message body in the dbus1 format, little-endian, as it follows an 8-aligned header. */
export function marshalBody(signature: string, values: readonly Value[]): Buffer {
  const out = new OutputBuffer();
  writeValues(out, parseSignature(signature), values);
  return out.finish();
}

// ---------------------------------------------------------------------------------------
// Reading

/**
 * Reads values from buf. Alignment is counted from base (the start of the message);
 * reads never go past the end handed to them.
 */
export class DBus1Reader {
  constructor(
    readonly buf: Buffer,
    readonly littleEndian: boolean,
    readonly base: number,
    public pos: number,
  ) {}

  fail(reason: string, at = this.pos): never {
    throw new DBus1Error(reason, at);
  }

  /** Skips padding to the alignment, insisting that it is zero and within end. */
  align(alignment: number, end: number): void {
    const to = this.base + alignUp(this.pos - this.base, alignment);
    if (to > end) this.fail('data ends inside alignment padding');
    for (let i = this.pos; i < to; i++) if (this.buf[i] !== 0) this.fail('non-zero alignment padding', i);
    this.pos = to;
  }

  private need(n: number, end: number, what: string): number {
    const at = this.pos;
    if (at + n > end) this.fail(`${what} runs past the end of its container`);
    this.pos = at + n;
    return at;
  }

  u8(end: number): number {
    return this.buf[this.need(1, end, 'byte')]!;
  }

  u32(end: number): number {
    this.align(4, end);
    const at = this.need(4, end, 'uint32');
    return this.littleEndian ? this.buf.readUInt32LE(at) : this.buf.readUInt32BE(at);
  }

  private fixed(code: string, end: number): number | bigint {
    const size = FIXED_SIZE[code]!;
    this.align(size, end);
    const at = this.need(size, end, `'${code}' value`);
    const b = this.buf;
    const le = this.littleEndian;
    switch (code) {
      case 'y':
        return b[at]!;
      case 'n':
        return le ? b.readInt16LE(at) : b.readInt16BE(at);
      case 'q':
        return le ? b.readUInt16LE(at) : b.readUInt16BE(at);
      case 'i':
        return le ? b.readInt32LE(at) : b.readInt32BE(at);
      case 'u':
      case 'h':
        return le ? b.readUInt32LE(at) : b.readUInt32BE(at);
      case 'x':
        return le ? b.readBigInt64LE(at) : b.readBigInt64BE(at);
      case 't':
        return le ? b.readBigUInt64LE(at) : b.readBigUInt64BE(at);
      default:
        return le ? b.readDoubleLE(at) : b.readDoubleBE(at);
    }
  }

  /** Text of length bytes at pos followed by a NUL; valid UTF-8 without NUL. */
  private text(length: number, end: number, what: string): string {
    const at = this.need(length + 1, end, what);
    if (this.buf[at + length] !== 0) this.fail(`${what} is not NUL-terminated`, at + length);
    const s = decodeWireString(this.buf, at, at + length);
    if (s === undefined) this.fail(`${what} contains a NUL or invalid UTF-8`, at);
    return s;
  }

  signature(end: number): string {
    const at = this.pos;
    const s = this.text(this.u8(end), end, 'signature');
    try {
      parseSignature(s);
    } catch (e) {
      if (e instanceof SignatureError) this.fail(e.message, at);
      throw e;
    }
    return s;
  }

  /** One value of type t ending at or before end; depth is the containers around it. */
  readValue(t: CompleteType, end: number, depth: number): Value {
    switch (t.code) {
      case 'b': {
        const v = this.u32(end);
        if (v > 1) this.fail(`boolean value ${v} is neither 0 nor 1`, this.pos - 4);
        return v === 1;
      }
      case 's':
      case 'o': {
        const length = this.u32(end);
        const at = this.pos;
        const s = this.text(length, end, t.code === 's' ? 'string' : 'object path');
        if (t.code === 'o' && !isValidObjectPath(s)) this.fail(`${JSON.stringify(s)} is not a valid object path`, at);
        return s;
      }
      case 'g':
        return this.signature(end);
      case 'v':
        return this.variant(end, depth);
      case 'a':
        return this.array(t, end, depth);
      case '(':
      case '{': {
        this.align(8, end);
        const fields = new Array<Value>(t.fields.length);
        for (let i = 0; i < fields.length; i++) fields[i] = this.readValue(t.fields[i]!, end, depth + 1);
        return fields;
      }
      default:
        return this.fixed(t.code, end);
    }
  }

  private variant(end: number, depth: number): Variant {
    const at = this.pos;
    const sig = this.signature(end);
    let inner: CompleteType;
    try {
      inner = parseCompleteType(sig);
    } catch (e) {
      if (e instanceof SignatureError) this.fail(`variant signature: ${e.message}`, at);
      throw e;
    }
    if (depth + 1 + inner.depth > MAX_TOTAL_DEPTH) {
      this.fail(`variant of '${sig}' nests containers deeper than ${MAX_TOTAL_DEPTH}`, at);
    }
    return new Variant(sig, this.readValue(inner, end, depth + 1));
  }

  private array(t: CompleteType, end: number, depth: number): Value {
    const lengthAt = this.pos;
    const length = this.u32(end);
    if (length > MAX_ARRAY_LENGTH) this.fail(`array length ${length} exceeds ${MAX_ARRAY_LENGTH}`, lengthAt);
    const element = t.element!;
    this.align(element.dbus1Alignment, end);
    const start = this.pos;
    const arrayEnd = start + length;
    if (arrayEnd > end) this.fail(`array of ${length} bytes runs past the end of its container`, start);
    if (element.code === 'y') {
      this.pos = arrayEnd;
      return byteArrayValue(this.buf, start, length);
    }
    const size = FIXED_SIZE[element.code];
    if (size !== undefined && length % size !== 0) {
      this.fail(`array length ${length} is not a multiple of its ${size}-byte elements`, lengthAt);
    }
    const items: Value[] = [];
    while (this.pos < arrayEnd) items.push(this.readValue(element, arrayEnd, depth + 1));
    return items;
  }
}

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * Reads a whole body: one value per complete type of the signature, filling data exactly.
 * data starts 8-aligned in its message (as every body does).
 */
export function unmarshalBody(signature: string, data: Uint8Array, littleEndian: boolean): Value[] {
  const types = parseSignature(signature);
  const r = new DBus1Reader(asBuffer(data), littleEndian, 0, 0);
  const values = types.map((t) => r.readValue(t, data.length, 0));
  if (r.pos !== data.length) r.fail(`${data.length - r.pos} bytes left over after the body's values`);
  return values;
}
