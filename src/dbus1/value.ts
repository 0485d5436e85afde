/**
 * The JS form of D-Bus values, shared by the dbus1 and GVariant codecs and by everything
 * that builds or reads message bodies. It is lossless: every D-Bus value has exactly one JS
 * form and decoding then encoding gives the same value back.
 *
 *   y n q i u h  → number (h: the index into the message's fd array)
 *   x t          → bigint
 *   d            → number
 *   b            → boolean
 *   s o g        → string
 *   v            → Variant { signature, value }
 *   ay           → Buffer
 *   a{kv}        → array of [key, value] (order and duplicate keys kept)
 *   other arrays → array
 *   (…) and {kv} → array of the fields
 *
 * A message body is a signature (any number of complete types) plus one Value per type.
 */
import { isValidObjectPath } from './names';
import { isValidSignature } from './signature';

declare global {
  interface String {
    /** ES2024, present in Node 20; not yet in the ES2022 lib this project compiles against. */
    isWellFormed(): boolean;
  }
}

export class Variant {
  constructor(
    /** A single complete type. */
    readonly signature: string,
    readonly value: Value,
  ) {}
}

export type Value = number | bigint | boolean | string | Buffer | Variant | readonly Value[];

/** A JS value does not fit the D-Bus type it is to be encoded as. */
export class ValueError extends Error {
  constructor(
    readonly reason: string,
    /** Where in the body: "arg 2[5].value", built up as the error leaves nested containers. */
    readonly path = '',
  ) {
    super(path === '' ? reason : `${path}: ${reason}`);
    this.name = 'ValueError';
  }

  /** The same error one container further out: step is "[3]", ".value" or "arg 0". */
  static within(e: unknown, step: string): unknown {
    if (!(e instanceof ValueError)) return e;
    const sep = e.path === '' || e.path.startsWith('[') || e.path.startsWith('.') ? '' : ' ';
    return new ValueError(e.reason, step + sep + e.path);
  }
}

const INT_RANGES: Readonly<Record<string, readonly [number, number]>> = {
  y: [0, 0xff],
  n: [-0x8000, 0x7fff],
  q: [0, 0xffff],
  i: [-0x8000_0000, 0x7fff_ffff],
  u: [0, 0xffff_ffff],
  h: [0, 0xffff_ffff],
};

const BIGINT_RANGES: Readonly<Record<string, readonly [bigint, bigint]>> = {
  x: [-(1n << 63n), (1n << 63n) - 1n],
  t: [0n, (1n << 64n) - 1n],
};

function describe(v: unknown): string {
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (v instanceof Uint8Array) return `a ${v.length}-byte buffer`;
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (v instanceof Variant) return `a Variant of '${v.signature}'`;
  return String(v);
}

/** A y, n, q, i, u or h value: an integer in the type's range. */
export function expectInteger(code: string, v: unknown): number {
  const [min, max] = INT_RANGES[code]!;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new ValueError(`'${code}' needs an integer ${min}..${max}, got ${describe(v)}`);
  }
  return v;
}

/** An x or t value: a bigint in the type's range. */
export function expectBigInt(code: string, v: unknown): bigint {
  const [min, max] = BIGINT_RANGES[code]!;
  if (typeof v !== 'bigint' || v < min || v > max) {
    throw new ValueError(`'${code}' needs a bigint ${min}..${max}, got ${describe(v)}`);
  }
  return v;
}

export function expectDouble(v: unknown): number {
  if (typeof v !== 'number') throw new ValueError(`'d' needs a number, got ${describe(v)}`);
  return v;
}

export function expectBoolean(v: unknown): boolean {
  if (typeof v !== 'boolean') throw new ValueError(`'b' needs a boolean, got ${describe(v)}`);
  return v;
}

/**
 * An s, o or g value. Strings travel as UTF-8 without NUL, so a string with a NUL or an
 * unpaired surrogate (which UTF-8 cannot carry) is refused rather than silently altered.
 */
export function expectString(code: string, v: unknown): string {
  if (typeof v !== 'string') throw new ValueError(`'${code}' needs a string, got ${describe(v)}`);
  if (code === 'o') {
    if (!isValidObjectPath(v)) throw new ValueError(`${describe(v)} is not a valid object path`);
  } else if (code === 'g') {
    if (!isValidSignature(v)) throw new ValueError(`${describe(v)} is not a valid signature`);
  } else {
    if (v.includes('\0')) throw new ValueError(`string ${describe(v)} contains a NUL character`);
    if (!v.isWellFormed()) throw new ValueError(`string ${describe(v)} contains an unpaired surrogate`);
  }
  return v;
}

export function expectBytes(v: unknown): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new ValueError(`'ay' needs a Buffer, got ${describe(v)}`);
  return v;
}

export function expectArray(signature: string, v: unknown): readonly Value[] {
  if (!Array.isArray(v)) throw new ValueError(`'${signature}' needs an array, got ${describe(v)}`);
  return v;
}

/** A struct or dict entry: an array of exactly as many fields as the type has members. */
export function expectFields(signature: string, count: number, v: unknown): readonly Value[] {
  if (!Array.isArray(v) || v.length !== count) {
    throw new ValueError(`'${signature}' needs an array of ${count} fields, got ${describe(v)}`);
  }
  return v;
}

/** Node's allocation pool serves Buffers below half its 8 KiB size. */
const BORROW_MIN_BYTES = 4096;

/**
 * An ay value read out of a message: a copy, so that it outlives the message's bytes, in
 * memory of its own (a kept value in the shared allocation pool would pin the pool); with
 * `borrow`, for a buffer nobody reuses, a large array is a view of it.
 * allocUnsafeSlow and a copy cost a fraction of Buffer.copyBytesFrom, whose generic
 * typed-array path dominates for the small arrays most messages carry.
 */
export function byteArrayValue(buf: Buffer, start: number, length: number, borrow = false): Buffer {
  // A large array of a buffer the message owns is shared instead: a copy of every payload
  // made most of the garbage of large messages. Below 4 KiB, buf may be a slice of Node's
  // shared allocation pool, which a kept view would pin.
  if (borrow && length >= BORROW_MIN_BYTES) return buf.subarray(start, start + length);
  const out = Buffer.allocUnsafeSlow(length);
  if (length > 0) buf.copy(out, 0, start, start + length);
  return out;
}

export function expectVariant(v: unknown): Variant {
  if (!(v instanceof Variant)) throw new ValueError(`'v' needs a Variant, got ${describe(v)}`);
  return v;
}
