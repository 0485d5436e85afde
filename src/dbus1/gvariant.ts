/**
 * Values in the GVariant serialization format (GVariant specification; GLib's
 * gvariant-serialiser), normal form, for the D-Bus subset of GVariant types (no maybe
 * types; "()" only as the unit body of a message without arguments).
 *
 * Writing produces normal form: zero padding, the smallest framing-offset width that fits
 * the container, fixed-size structs padded to their alignment. Reading accepts exactly what
 * GLib's g_variant_is_normal_form() accepts (where the type is one D-Bus has) and refuses
 * the rest with the byte offset of the problem; GLib would read non-normal data by
 * substituting default values, which would silently change a message in transit.
 *
 * Alignment is counted from the start of the outermost value, which works because GVariant
 * starts every container at a multiple of its own alignment. Container nesting is held to
 * the D-Bus limits so that every value read here can be re-encoded as dbus1.
 */
import { OutputBuffer } from './output-buffer';
import {
  alignUp,
  CompleteType,
  gvariantBodyLayout,
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

/** Data that is not a normal-form GVariant of the expected type. */
export class GVariantError extends Error {
  constructor(
    readonly reason: string,
    readonly offset: number,
  ) {
    super(`${reason} (at byte ${offset})`);
    this.name = 'GVariantError';
  }
}

/** The framing-offset width a reader infers from a container's total size. */
export function gvariantOffsetSize(containerSize: number): number {
  if (containerSize === 0) return 0;
  if (containerSize <= 0xff) return 1;
  if (containerSize <= 0xffff) return 2;
  if (containerSize <= 0xffff_ffff) return 4;
  return 8;
}

/** The smallest offset width for `count` offsets after `contentSize` bytes (normal form). */
export function gvariantWordSize(contentSize: number, count: number): number {
  if (contentSize + count <= 0xff) return 1;
  if (contentSize + 2 * count <= 0xffff) return 2;
  if (contentSize + 4 * count <= 0xffff_ffff) return 4;
  return 8;
}

// ---------------------------------------------------------------------------------------
// Writing

function writeText(out: OutputBuffer, s: string): void {
  out.utf8(s, Buffer.byteLength(s, 'utf8'));
  out.u8(0);
}

/** Writes one value of type t, aligned, at out.pos; depth is the containers around it. */
export function writeGVariantValue(out: OutputBuffer, t: CompleteType, v: Value, depth: number): void {
  out.align(t.gvariantAlignment);
  switch (t.code) {
    case 'y':
      out.u8(expectInteger('y', v));
      return;
    case 'b':
      out.u8(expectBoolean(v) ? 1 : 0);
      return;
    case 'n':
      out.i16(expectInteger('n', v));
      return;
    case 'q':
      out.u16(expectInteger('q', v));
      return;
    case 'i':
      out.i32(expectInteger('i', v));
      return;
    case 'u':
    case 'h':
      out.u32(expectInteger(t.code, v));
      return;
    case 'x':
      out.i64(expectBigInt('x', v));
      return;
    case 't':
      out.u64(expectBigInt('t', v));
      return;
    case 'd':
      out.f64(expectDouble(v));
      return;
    case 's':
    case 'o':
    case 'g':
      writeText(out, expectString(t.code, v));
      return;
    case 'v':
      writeVariant(out, expectVariant(v), depth);
      return;
    case 'a':
      writeArray(out, t, v, depth);
      return;
    case '(':
    case '{':
      writeTuple(out, t.fields, t.gvariantFixedSize, t.gvariantAlignment, expectFields(t.signature, t.fields.length, v), depth + 1);
      return;
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
  try {
    writeGVariantValue(out, inner, v.value, depth + 1);
  } catch (e) {
    throw ValueError.within(e, '.value');
  }
  out.u8(0);
  out.utf8(inner.signature, inner.signature.length);
}

function writeOffsets(out: OutputBuffer, start: number, ends: readonly number[], reverse: boolean): void {
  const n = ends.length;
  const w = gvariantWordSize(out.pos - start, n);
  for (let i = 0; i < n; i++) out.word(ends[reverse ? n - 1 - i : i]!, w);
}

function writeArray(out: OutputBuffer, t: CompleteType, v: Value, depth: number): void {
  const element = t.element!;
  if (element.code === 'y') {
    out.bytes(expectBytes(v));
    return;
  }
  const items = expectArray(t.signature, v);
  const start = out.pos;
  const variable = element.gvariantFixedSize === 0;
  const ends: number[] = variable ? new Array<number>(items.length) : [];
  for (let i = 0; i < items.length; i++) {
    try {
      writeGVariantValue(out, element, items[i]!, depth + 1);
    } catch (e) {
      throw ValueError.within(e, `[${i}]`);
    }
    if (variable) ends[i] = out.pos - start;
  }
  if (variable && items.length > 0) writeOffsets(out, start, ends, false);
}

/**
 * A struct, dict entry or message body: members aligned in order, then the end offsets of
 * the variable-size members but the last, in reverse order; fixed-size tuples padded to
 * their alignment, the unit tuple one zero byte. The caller has aligned out.
 */
function writeTuple(
  out: OutputBuffer,
  fields: readonly CompleteType[],
  fixedSize: number,
  alignment: number,
  values: readonly Value[],
  fieldDepth: number,
): void {
  if (fields.length === 0) {
    out.u8(0);
    return;
  }
  const start = out.pos;
  const ends: number[] = [];
  const last = fields.length - 1;
  for (let i = 0; i <= last; i++) {
    const f = fields[i]!;
    try {
      writeGVariantValue(out, f, values[i]!, fieldDepth);
    } catch (e) {
      throw ValueError.within(e, fieldDepth === 0 ? `arg ${i}` : `[${i}]`);
    }
    if (f.gvariantFixedSize === 0 && i !== last) ends.push(out.pos - start);
  }
  if (fixedSize !== 0) out.align(alignment);
  else if (ends.length > 0) writeOffsets(out, start, ends, true);
}

/**
 * Writes a message body — the tuple of the signature's types, "()" for none — aligned to
 * the tuple's alignment at out.pos. Body values count as not nested (as in dbus1).
 */
export function writeGVariantBody(out: OutputBuffer, types: readonly CompleteType[], values: readonly Value[]): void {
  if (values.length !== types.length) {
    throw new ValueError(`${types.length} values expected for the signature, got ${values.length}`);
  }
  const layout = gvariantBodyLayout(types);
  out.align(layout.alignment);
  writeTuple(out, types, layout.fixedSize, layout.alignment, values, 0);
}

/** One value of a single complete type, serialized on its own. */
export function encodeGVariant(signature: string, value: Value): Buffer {
  const out = new OutputBuffer();
  writeGVariantValue(out, parseCompleteType(signature), value, 0);
  return out.finish();
}

/** A message body: the GVariant tuple "(signature)". */
export function encodeGVariantBody(signature: string, values: readonly Value[]): Buffer {
  const out = new OutputBuffer();
  writeGVariantBody(out, parseSignature(signature), values);
  return out.finish();
}

// ---------------------------------------------------------------------------------------
// Reading

/**
 * Reads normal-form values out of buf. Every value occupies exactly [start, end), which its
 * container's framing told; alignment is counted from base.
 */
export class GVariantReader {
  /** `borrow`: buf is the message's own, so large byte arrays may be views of it (byteArrayValue). */
  constructor(
    readonly buf: Buffer,
    readonly littleEndian: boolean,
    readonly base: number,
    readonly borrow = false,
  ) {}

  fail(reason: string, at: number): never {
    throw new GVariantError(reason, at);
  }

  word(at: number, width: number): number {
    const b = this.buf;
    const le = this.littleEndian;
    switch (width) {
      case 0:
        // An empty container's offsets are zero bytes wide and read as 0 (GLib does so).
        return 0;
      case 1:
        return b[at]!;
      case 2:
        return le ? b.readUInt16LE(at) : b.readUInt16BE(at);
      case 4:
        return le ? b.readUInt32LE(at) : b.readUInt32BE(at);
      default: {
        const v = le ? b.readBigUInt64LE(at) : b.readBigUInt64BE(at);
        // Offsets point inside a buffer; anything larger is past its end anyway.
        return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
      }
    }
  }

  /** Zero padding from `from` up to the alignment, relative to base; returns the aligned position. */
  private padding(from: number, alignment: number, limit: number): number {
    const to = this.base + alignUp(from - this.base, alignment);
    if (to > limit) this.fail('data ends inside alignment padding', from);
    for (let i = from; i < to; i++) if (this.buf[i] !== 0) this.fail('non-zero alignment padding', i);
    return to;
  }

  /** The value of type t that occupies exactly buf[start, end); depth: containers around it. */
  read(t: CompleteType, start: number, end: number, depth: number): Value {
    const size = end - start;
    if (t.gvariantFixedSize !== 0 && size !== t.gvariantFixedSize) {
      this.fail(`'${t.signature}' value of ${size} bytes, not ${t.gvariantFixedSize}`, start);
    }
    const b = this.buf;
    const le = this.littleEndian;
    switch (t.code) {
      case 'y':
        return b[start]!;
      case 'b': {
        const v = b[start]!;
        if (v > 1) this.fail(`boolean value ${v} is neither 0 nor 1`, start);
        return v === 1;
      }
      case 'n':
        return le ? b.readInt16LE(start) : b.readInt16BE(start);
      case 'q':
        return le ? b.readUInt16LE(start) : b.readUInt16BE(start);
      case 'i':
        return le ? b.readInt32LE(start) : b.readInt32BE(start);
      case 'u':
      case 'h':
        return le ? b.readUInt32LE(start) : b.readUInt32BE(start);
      case 'x':
        return le ? b.readBigInt64LE(start) : b.readBigInt64BE(start);
      case 't':
        return le ? b.readBigUInt64LE(start) : b.readBigUInt64BE(start);
      case 'd':
        return le ? b.readDoubleLE(start) : b.readDoubleBE(start);
      case 's':
      case 'o':
      case 'g':
        return this.text(t.code, start, end);
      case 'v':
        return this.variant(start, end, depth);
      case 'a':
        return this.array(t, start, end, depth);
      default: {
        return this.tuple(t.fields, t.gvariantFixedSize, start, end, depth + 1);
      }
    }
  }

  private text(code: string, start: number, end: number): string {
    if (end === start || this.buf[end - 1] !== 0) this.fail('string is not NUL-terminated', Math.max(start, end - 1));
    const s = decodeWireString(this.buf, start, end - 1);
    if (s === undefined) this.fail('string contains a NUL or invalid UTF-8', start);
    if (code === 'o' && !isValidObjectPath(s)) this.fail(`${JSON.stringify(s)} is not a valid object path`, start);
    if (code === 'g') {
      try {
        parseSignature(s);
      } catch (e) {
        if (e instanceof SignatureError) this.fail(e.message, start);
        throw e;
      }
    }
    return s;
  }

  private variant(start: number, end: number, depth: number): Variant {
    let sep = end - 1;
    while (sep >= start && this.buf[sep] !== 0) sep--;
    if (sep < start) this.fail('variant without a type string separator', start);
    const sig = this.buf.toString('latin1', sep + 1, end);
    let inner: CompleteType;
    try {
      inner = parseCompleteType(sig);
    } catch (e) {
      if (e instanceof SignatureError) this.fail(`variant type: ${e.message}`, sep + 1);
      throw e;
    }
    if (depth + 1 + inner.depth > MAX_TOTAL_DEPTH) {
      this.fail(`variant of '${sig}' nests containers deeper than ${MAX_TOTAL_DEPTH}`, sep + 1);
    }
    return new Variant(sig, this.read(inner, start, sep, depth + 1));
  }

  private array(t: CompleteType, start: number, end: number, depth: number): Value {
    const element = t.element!;
    const size = end - start;
    const fixed = element.gvariantFixedSize;
    if (fixed !== 0) {
      if (size % fixed !== 0) this.fail(`array of ${size} bytes is not a multiple of its ${fixed}-byte elements`, start);
      if (element.code === 'y') return byteArrayValue(this.buf, start, size, this.borrow);
      const items = new Array<Value>(size / fixed);
      for (let i = 0; i < items.length; i++) items[i] = this.read(element, start + i * fixed, start + (i + 1) * fixed, depth + 1);
      return items;
    }
    if (size === 0) return [];
    const w = gvariantOffsetSize(size);
    if (size < w) this.fail('array too small for its offset table', start);
    const tableStart = this.word(end - w, w);
    if (tableStart > size - w || (size - tableStart) % w !== 0) {
      this.fail(`array offset table start ${tableStart} does not fit the array`, end - w);
    }
    const n = (size - tableStart) / w;
    const items = new Array<Value>(n);
    let previous = start;
    for (let i = 0; i < n; i++) {
      const at = start + tableStart + i * w;
      const elementEnd = start + this.word(at, w);
      const elementStart = this.padding(previous, element.gvariantAlignment, start + tableStart);
      if (elementEnd < elementStart || elementEnd > start + tableStart) {
        this.fail(`array element end offset ${elementEnd - start} out of order or out of range`, at);
      }
      items[i] = this.read(element, elementStart, elementEnd, depth + 1);
      previous = elementEnd;
    }
    return items;
  }

  /**
   * A struct, dict entry or body tuple of the given members filling [start, end). fixedSize
   * is the tuple's size if all members are fixed-size, else 0.
   */
  tuple(fields: readonly CompleteType[], fixedSize: number, start: number, end: number, fieldDepth: number): Value[] {
    const size = end - start;
    if (fields.length === 0) {
      if (size !== 1 || this.buf[start] !== 0) this.fail('unit value is not a single zero byte', start);
      return [];
    }
    if (fixedSize !== 0 && size !== fixedSize) this.fail(`struct of ${size} bytes, not ${fixedSize}`, start);
    const last = fields.length - 1;
    let framed = 0;
    for (let i = 0; i < last; i++) if (fields[i]!.gvariantFixedSize === 0) framed++;
    const w = gvariantOffsetSize(size);
    const tableStart = end - framed * w;
    if (tableStart < start) this.fail('struct too small for its offset table', start);
    const values = new Array<Value>(fields.length);
    let pos = start;
    let offsetAt = end;
    for (let i = 0; i <= last; i++) {
      const f = fields[i]!;
      const fieldStart = this.padding(pos, f.gvariantAlignment, tableStart);
      let fieldEnd: number;
      if (f.gvariantFixedSize !== 0) {
        fieldEnd = fieldStart + f.gvariantFixedSize;
      } else if (i === last) {
        fieldEnd = tableStart;
      } else {
        offsetAt -= w;
        fieldEnd = start + this.word(offsetAt, w);
      }
      if (fieldEnd < fieldStart || fieldEnd > tableStart) {
        this.fail(`struct member ${i} ends outside the struct`, i === last || f.gvariantFixedSize !== 0 ? fieldStart : offsetAt);
      }
      values[i] = this.read(f, fieldStart, fieldEnd, fieldDepth);
      pos = fieldEnd;
    }
    if (fixedSize !== 0) {
      for (let i = pos; i < end; i++) if (this.buf[i] !== 0) this.fail('non-zero padding at the end of a struct', i);
    } else if (pos !== tableStart) {
      this.fail(`${tableStart - pos} stray bytes after the last struct member`, pos);
    }
    return values;
  }

  /** A message body: the tuple of the signature's types filling [start, end). */
  body(types: readonly CompleteType[], start: number, end: number): Value[] {
    return this.tuple(types, gvariantBodyLayout(types).fixedSize, start, end, 0);
  }
}

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/** One value of a single complete type that fills data exactly. */
export function decodeGVariant(signature: string, data: Uint8Array, littleEndian = true): Value {
  return new GVariantReader(asBuffer(data), littleEndian, 0).read(parseCompleteType(signature), 0, data.length, 0);
}

/** A message body: the tuple "(signature)" filling data exactly. */
export function decodeGVariantBody(signature: string, data: Uint8Array, littleEndian = true): Value[] {
  return new GVariantReader(asBuffer(data), littleEndian, 0).body(parseSignature(signature), 0, data.length);
}
