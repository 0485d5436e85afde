/**
 * D-Bus type signatures: validation by the rules of the D-Bus specification ("Valid
 * Signatures"), splitting into single complete types, and the per-type layout facts both
 * wire formats need (dbus1 alignment; GVariant alignment and fixed size).
 *
 * A signature is parsed once into a tree of CompleteType nodes and cached, because the same
 * few signatures ("s", "a{sv}", a method's argument list) come back in message after message
 * and the codecs walk the tree instead of the string.
 */

export const MAX_SIGNATURE_LENGTH = 255;
/** Arrays nested in arrays, counted along one path through the signature. */
export const MAX_ARRAY_DEPTH = 32;
/** Structs nested in structs (dict entries are counted on their own, as libdbus does). */
export const MAX_STRUCT_DEPTH = 32;
/**
 * Containers (arrays, structs, dict entries, variants) around any value, counted across
 * variants: the specification's 32 + 32, which libdbus also applies to the nesting that
 * variants add at run time.
 */
export const MAX_TOTAL_DEPTH = 64;

export class SignatureError extends Error {
  constructor(
    readonly signature: string,
    readonly position: number,
    reason: string,
  ) {
    super(`invalid signature ${JSON.stringify(signature)} at character ${position}: ${reason}`);
    this.name = 'SignatureError';
  }
}

export type TypeCode =
  | 'y' | 'b' | 'n' | 'q' | 'i' | 'u' | 'x' | 't' | 'd' | 'h'
  | 's' | 'o' | 'g' | 'v' | 'a' | '(' | '{';

/** One single complete type, e.g. "a{sv}", with what the codecs need to know about it. */
export interface CompleteType {
  /** The type's own signature. */
  readonly signature: string;
  /** Its first character: a basic type code, 'v', 'a', '(' or '{'. */
  readonly code: TypeCode;
  /** The element type of an array. */
  readonly element: CompleteType | undefined;
  /** The members of a struct or dict entry (key, value); empty for other types. */
  readonly fields: readonly CompleteType[];
  readonly dbus1Alignment: number;
  readonly gvariantAlignment: number;
  /** Size in bytes of every GVariant value of this type, or 0 if values vary in size. */
  readonly gvariantFixedSize: number;
  /** Containers around this type's most deeply nested value (0 for basic types). */
  readonly depth: number;
}

const BASIC_CODES = 'ybnqiuxtdhsog';

/** [dbus1 alignment, GVariant alignment, GVariant fixed size (0 = variable)] per leaf type. */
const LEAF_LAYOUT: Readonly<Record<string, readonly [number, number, number]>> = {
  y: [1, 1, 1],
  b: [4, 1, 1],
  n: [2, 2, 2],
  q: [2, 2, 2],
  i: [4, 4, 4],
  u: [4, 4, 4],
  h: [4, 4, 4],
  x: [8, 8, 8],
  t: [8, 8, 8],
  d: [8, 8, 8],
  s: [4, 1, 0],
  o: [4, 1, 0],
  g: [1, 1, 0],
  v: [1, 8, 0],
};

export function isBasicCode(code: string): boolean {
  return code.length === 1 && BASIC_CODES.includes(code);
}

export function alignUp(n: number, alignment: number): number {
  return (n + alignment - 1) & ~(alignment - 1);
}

/**
 * GVariant layout of a tuple of the given members: alignment is the largest member
 * alignment; it is fixed-size when every member is, its size then padded to its alignment.
 * The unit tuple "()" — which only occurs as the body of a message without arguments — is
 * fixed-size 1 (a single zero byte).
 */
/**
 * gvariantTupleLayout of a message body's types, kept per types array: parseSignature hands
 * out the same array for a signature, and every GVariant message needs its body's layout.
 */
const bodyLayouts = new WeakMap<readonly CompleteType[], { alignment: number; fixedSize: number }>();
export function gvariantBodyLayout(types: readonly CompleteType[]): { readonly alignment: number; readonly fixedSize: number } {
  let layout = bodyLayouts.get(types);
  if (layout === undefined) {
    layout = gvariantTupleLayout(types);
    bodyLayouts.set(types, layout);
  }
  return layout;
}

export function gvariantTupleLayout(fields: readonly CompleteType[]): { alignment: number; fixedSize: number } {
  let alignment = 1;
  let offset = 0;
  let fixed = true;
  for (const f of fields) {
    if (f.gvariantAlignment > alignment) alignment = f.gvariantAlignment;
    if (f.gvariantFixedSize === 0) fixed = false;
    else offset = alignUp(offset, f.gvariantAlignment) + f.gvariantFixedSize;
  }
  if (!fixed) return { alignment, fixedSize: 0 };
  if (fields.length === 0) return { alignment: 1, fixedSize: 1 };
  return { alignment, fixedSize: alignUp(offset, alignment) };
}

function leaf(code: TypeCode): CompleteType {
  const [dbus1Alignment, gvariantAlignment, gvariantFixedSize] = LEAF_LAYOUT[code]!;
  return { signature: code, code, element: undefined, fields: [], dbus1Alignment, gvariantAlignment, gvariantFixedSize, depth: code === 'v' ? 1 : 0 };
}

/** Leaf types are shared: they carry no position-dependent information. */
const LEAVES = new Map<string, CompleteType>(Object.keys(LEAF_LAYOUT).map((c) => [c, leaf(c as TypeCode)]));

class Parser {
  private pos = 0;

  constructor(private readonly sig: string) {}

  parseAll(): CompleteType[] {
    const types: CompleteType[] = [];
    while (this.pos < this.sig.length) types.push(this.parseOne(0, 0, 0));
    return types;
  }

  private fail(reason: string, at = this.pos): never {
    throw new SignatureError(this.sig, at, reason);
  }

  private parseOne(arrays: number, structs: number, dicts: number): CompleteType {
    const start = this.pos;
    const c = this.sig[this.pos];
    if (c === undefined) this.fail('a complete type is missing at the end');
    const shared = LEAVES.get(c);
    if (shared !== undefined) {
      this.pos++;
      return shared;
    }
    switch (c) {
      case 'a': {
        if (arrays + 1 > MAX_ARRAY_DEPTH) this.fail(`arrays nested deeper than ${MAX_ARRAY_DEPTH}`);
        this.checkTotal(arrays + 1 + structs + dicts);
        this.pos++;
        if (this.pos === this.sig.length) this.fail('array without an element type');
        const element =
          this.sig[this.pos] === '{' ? this.parseDictEntry(arrays + 1, structs, dicts) : this.parseOne(arrays + 1, structs, dicts);
        return {
          signature: this.sig.slice(start, this.pos),
          code: 'a',
          element,
          fields: [],
          dbus1Alignment: 4,
          gvariantAlignment: element.gvariantAlignment,
          gvariantFixedSize: 0,
          depth: element.depth + 1,
        };
      }
      case '(': {
        if (structs + 1 > MAX_STRUCT_DEPTH) this.fail(`structs nested deeper than ${MAX_STRUCT_DEPTH}`);
        this.checkTotal(arrays + structs + 1 + dicts);
        this.pos++;
        const fields: CompleteType[] = [];
        while (this.sig[this.pos] !== ')') {
          if (this.pos === this.sig.length) this.fail('struct not closed', start);
          fields.push(this.parseOne(arrays, structs + 1, dicts));
        }
        if (fields.length === 0) this.fail('empty struct', start);
        this.pos++;
        return this.container('(', start, fields);
      }
      case '{':
        return this.fail('dict entry outside an array');
      case ')':
      case '}':
        return this.fail(`unexpected '${c}'`);
      default:
        return this.fail(`unknown type code '${c}'`);
    }
  }

  private parseDictEntry(arrays: number, structs: number, dicts: number): CompleteType {
    const start = this.pos;
    this.checkTotal(arrays + structs + dicts + 1);
    this.pos++;
    const key = this.sig[this.pos];
    if (key === undefined || key === '}') this.fail('dict entry without a key type', start);
    if (!isBasicCode(key)) this.fail('dict entry key must be a basic type');
    const fields = [this.parseOne(arrays, structs, dicts + 1)];
    if (this.sig[this.pos] === '}' || this.pos === this.sig.length) this.fail('dict entry without a value type', start);
    fields.push(this.parseOne(arrays, structs, dicts + 1));
    if (this.pos === this.sig.length) this.fail('dict entry not closed', start);
    if (this.sig[this.pos] !== '}') this.fail("dict entry not closed by '}' after its two types");
    this.pos++;
    return this.container('{', start, fields);
  }

  private container(code: '(' | '{', start: number, fields: CompleteType[]): CompleteType {
    const layout = gvariantTupleLayout(fields);
    let depth = 0;
    for (const f of fields) if (f.depth > depth) depth = f.depth;
    return {
      signature: this.sig.slice(start, this.pos),
      code,
      element: undefined,
      fields,
      dbus1Alignment: 8,
      gvariantAlignment: layout.alignment,
      gvariantFixedSize: layout.fixedSize,
      depth: depth + 1,
    };
  }

  private checkTotal(depth: number): void {
    if (depth > MAX_TOTAL_DEPTH) this.fail(`containers nested deeper than ${MAX_TOTAL_DEPTH}`);
  }
}

const CACHE_LIMIT = 2048;
const cache = new Map<string, readonly CompleteType[]>();

/**
 * Parses and validates a signature (any number of complete types, "" included). Throws
 * SignatureError saying what is wrong and where.
 */
export function parseSignature(signature: string): readonly CompleteType[] {
  const hit = cache.get(signature);
  if (hit !== undefined) return hit;
  if (signature.length > MAX_SIGNATURE_LENGTH) {
    throw new SignatureError(signature, MAX_SIGNATURE_LENGTH, `longer than ${MAX_SIGNATURE_LENGTH} characters`);
  }
  const types = Object.freeze(new Parser(signature).parseAll());
  // Signatures come from peers; a bounded cache keeps a flood of distinct ones from growing it.
  if (cache.size >= CACHE_LIMIT) cache.clear();
  cache.set(signature, types);
  return types;
}

/** Parses a signature that must hold exactly one complete type (a variant's signature). */
export function parseCompleteType(signature: string): CompleteType {
  const types = parseSignature(signature);
  if (types.length !== 1) {
    throw new SignatureError(signature, types.length === 0 ? 0 : types[0]!.signature.length, 'not a single complete type');
  }
  return types[0]!;
}

export function isValidSignature(signature: string): boolean {
  try {
    parseSignature(signature);
    return true;
  } catch (e) {
    if (e instanceof SignatureError) return false;
    throw e;
  }
}

/** The single complete types of a signature, as strings: "a{sv}si" → ["a{sv}", "s", "i"]. */
export function splitSignature(signature: string): string[] {
  return parseSignature(signature).map((t) => t.signature);
}
