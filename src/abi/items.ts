/**
 * kdbus items: the {u64 size, u64 type, payload} records that follow every command struct,
 * message and info record. This file reads them (payload accessors and the per-type payload
 * validation of the kernel's item.c) and writes them (ItemWriter, for what the daemon puts
 * into pools).
 *
 * Byte order is the host's; like the kernel ABI itself, this code assumes a little-endian
 * host (x86-64, arm64, riscv64).
 */
import { ALIGN8, ITEM_HEADER_SIZE, ItemType, StructSize } from './constants';
import { fail } from './errno';
import { validateSysnamePayload } from './names';
import { putBigU64, putU32, putU64 } from './words';

/** One item inside a buffer the daemon holds (a copied command, a message). */
export interface Item {
  type: number;
  /** Where the item header starts in the enclosing buffer. */
  offset: number;
  /** The item's size field: header plus payload, without trailing padding. */
  size: number;
  /** View of the payload inside the enclosing buffer (not a copy). */
  payload: Buffer;
}

export const itemSize = (payloadLen: number): number => ITEM_HEADER_SIZE + payloadLen;
export const alignedItemSize = (payloadLen: number): number => ALIGN8(ITEM_HEADER_SIZE + payloadLen);

export function itemU64(item: Item, index = 0): bigint {
  return item.payload.readBigUInt64LE(index * 8);
}

export function itemU32(item: Item, index = 0): number {
  return item.payload.readUInt32LE(index * 4);
}

/** Signed 32-bit payload word: file descriptors (FDS, CANCEL_FD, kdbus_memfd.fd at index 4). */
export function itemI32(item: Item, index = 0): number {
  return item.payload.readInt32LE(index * 4);
}

/**
 * The string of a "str" item without its NUL. latin1 keeps one char per byte, so a name
 * that goes back out through ItemWriter.string comes out byte for byte as it came in.
 */
export function itemString(item: Item, encoding: BufferEncoding = 'latin1'): string {
  return item.payload.toString(encoding, 0, item.payload.length - 1);
}

const TYPE_NAMES: Record<number, string> = {
  [ItemType.NULL]: 'NULL',
  [ItemType.NEGOTIATE]: 'NEGOTIATE',
  [ItemType.PAYLOAD_VEC]: 'PAYLOAD_VEC',
  [ItemType.PAYLOAD_OFF]: 'PAYLOAD_OFF',
  [ItemType.PAYLOAD_MEMFD]: 'PAYLOAD_MEMFD',
  [ItemType.FDS]: 'FDS',
  [ItemType.CANCEL_FD]: 'CANCEL_FD',
  [ItemType.BLOOM_PARAMETER]: 'BLOOM_PARAMETER',
  [ItemType.BLOOM_FILTER]: 'BLOOM_FILTER',
  [ItemType.BLOOM_MASK]: 'BLOOM_MASK',
  [ItemType.DST_NAME]: 'DST_NAME',
  [ItemType.MAKE_NAME]: 'MAKE_NAME',
  [ItemType.ATTACH_FLAGS_SEND]: 'ATTACH_FLAGS_SEND',
  [ItemType.ATTACH_FLAGS_RECV]: 'ATTACH_FLAGS_RECV',
  [ItemType.ID]: 'ID',
  [ItemType.NAME]: 'NAME',
  [ItemType.DST_ID]: 'DST_ID',
  [ItemType.TIMESTAMP]: 'TIMESTAMP',
  [ItemType.CREDS]: 'CREDS',
  [ItemType.PIDS]: 'PIDS',
  [ItemType.AUXGROUPS]: 'AUXGROUPS',
  [ItemType.OWNED_NAME]: 'OWNED_NAME',
  [ItemType.TID_COMM]: 'TID_COMM',
  [ItemType.PID_COMM]: 'PID_COMM',
  [ItemType.EXE]: 'EXE',
  [ItemType.CMDLINE]: 'CMDLINE',
  [ItemType.CGROUP]: 'CGROUP',
  [ItemType.CAPS]: 'CAPS',
  [ItemType.SECLABEL]: 'SECLABEL',
  [ItemType.AUDIT]: 'AUDIT',
  [ItemType.CONN_DESCRIPTION]: 'CONN_DESCRIPTION',
  [ItemType.POLICY_ACCESS]: 'POLICY_ACCESS',
  [ItemType.NAME_ADD]: 'NAME_ADD',
  [ItemType.NAME_REMOVE]: 'NAME_REMOVE',
  [ItemType.NAME_CHANGE]: 'NAME_CHANGE',
  [ItemType.ID_ADD]: 'ID_ADD',
  [ItemType.ID_REMOVE]: 'ID_REMOVE',
  [ItemType.REPLY_TIMEOUT]: 'REPLY_TIMEOUT',
  [ItemType.REPLY_DEAD]: 'REPLY_DEAD',
};

/** "KDBUS_ITEM_NAME (0xf)" style label for log and error messages. */
export function itemTypeName(type: number): string {
  const name = TYPE_NAMES[type];
  return name === undefined ? `item type 0x${type.toString(16)}` : `KDBUS_ITEM_${name} (0x${type.toString(16)})`;
}

const isZeroU64 = (b: Buffer, at: number): boolean => b.readUInt32LE(at) === 0 && b.readUInt32LE(at + 4) === 0;

/** A valid "str" payload: non-empty, and its only NUL is the last byte. */
const isTerminatedString = (bytes: Buffer): boolean => bytes.length > 0 && bytes.indexOf(0) === bytes.length - 1;

function exactly(item: Item, expected: number): void {
  if (item.payload.length !== expected) {
    throw fail('EINVAL', `${itemTypeName(item.type)} needs a ${expected}-byte payload, got ${item.payload.length}`);
  }
}

function multipleOf(item: Item, unit: number): void {
  if (item.payload.length % unit !== 0) {
    throw fail('EINVAL', `${itemTypeName(item.type)} payload must be a multiple of ${unit} bytes, got ${item.payload.length}`);
  }
}

function terminated(item: Item, bytes: Buffer): void {
  if (!isTerminatedString(bytes)) {
    throw fail('EINVAL', `${itemTypeName(item.type)} string must be NUL-terminated with no NUL before the end`);
  }
}

/**
 * Per-type payload check of one item supplied by a client (kernel kdbus_item_validate),
 * same checks, same order, same errnos. Types without rules (PIDS, OWNED_NAME, BLOOM_MASK,
 * unknown ones) pass: whether a type is acceptable at all is the command's business.
 */
export function validateItem(item: Item): void {
  const p = item.payload;
  const len = p.length;
  switch (item.type) {
    case ItemType.NEGOTIATE:
      multipleOf(item, 8);
      break;
    case ItemType.PAYLOAD_VEC:
    case ItemType.PAYLOAD_OFF:
      exactly(item, StructSize.vec);
      if (isZeroU64(p, 0)) throw fail('EINVAL', `${itemTypeName(item.type)} has size 0`);
      break;
    case ItemType.PAYLOAD_MEMFD:
      exactly(item, StructSize.memfd);
      if (isZeroU64(p, 8)) throw fail('EINVAL', 'KDBUS_ITEM_PAYLOAD_MEMFD has size 0');
      if (p.readInt32LE(16) < 0) throw fail('EBADF', `KDBUS_ITEM_PAYLOAD_MEMFD has a negative fd (${p.readInt32LE(16)})`);
      break;
    case ItemType.FDS:
    case ItemType.AUXGROUPS:
      multipleOf(item, 4);
      break;
    case ItemType.CANCEL_FD:
      exactly(item, 4);
      break;
    case ItemType.BLOOM_PARAMETER:
      exactly(item, StructSize.bloom_parameter);
      break;
    case ItemType.BLOOM_FILTER:
      if (len < StructSize.bloom_filter_header) {
        throw fail('EINVAL', `KDBUS_ITEM_BLOOM_FILTER needs at least the 8-byte generation, got ${len} bytes`);
      }
      break;
    case ItemType.CONN_DESCRIPTION:
    case ItemType.MAKE_NAME:
      validateSysnamePayload(p, itemTypeName(item.type));
      break;
    case ItemType.ATTACH_FLAGS_SEND:
    case ItemType.ATTACH_FLAGS_RECV:
    case ItemType.ID:
    case ItemType.DST_ID:
      exactly(item, 8);
      break;
    case ItemType.TIMESTAMP:
      exactly(item, StructSize.timestamp);
      break;
    case ItemType.CREDS:
      exactly(item, StructSize.creds);
      break;
    case ItemType.NAME:
    case ItemType.DST_NAME:
    case ItemType.PID_COMM:
    case ItemType.TID_COMM:
    case ItemType.EXE:
    case ItemType.CMDLINE:
    case ItemType.CGROUP:
    case ItemType.SECLABEL:
      terminated(item, p);
      break;
    case ItemType.CAPS: {
      if (len < 4) throw fail('EINVAL', `KDBUS_ITEM_CAPS needs at least the 4-byte last_cap, got ${len} bytes`);
      // Four capability sets, each one u32 word per 32 capabilities below last_cap.
      const needed = 4 + 4 * (p.readUInt32LE(0) >>> 5) * 4;
      if (len < needed) throw fail('EINVAL', `KDBUS_ITEM_CAPS with last_cap ${p.readUInt32LE(0)} needs ${needed} bytes, got ${len}`);
      break;
    }
    case ItemType.AUDIT:
      exactly(item, StructSize.audit);
      break;
    case ItemType.POLICY_ACCESS:
      exactly(item, StructSize.policy_access);
      break;
    case ItemType.NAME_ADD:
    case ItemType.NAME_REMOVE:
    case ItemType.NAME_CHANGE: {
      const fixed = StructSize.notify_name_change;
      if (len < fixed) throw fail('EINVAL', `${itemTypeName(item.type)} needs at least ${fixed} bytes, got ${len}`);
      if (len > fixed) terminated(item, p.subarray(fixed));
      break;
    }
    case ItemType.ID_ADD:
    case ItemType.ID_REMOVE:
      exactly(item, StructSize.notify_id_change);
      break;
    case ItemType.REPLY_TIMEOUT:
    case ItemType.REPLY_DEAD:
      exactly(item, 0);
      break;
    default:
      break;
  }
}

/**
 * Builds item streams and records for pool slices in one growable buffer. Item helpers
 * write the header, the payload and zeroed padding up to the next 8-byte boundary; the raw
 * appenders (u64, bytes, zeros) let callers compose fixed structs around them.
 *
 * finish() returns a view of the internal buffer: copy it out (e.g. into the pool) before
 * reset() or further appends.
 */
export class ItemWriter {
  private buf: Buffer;
  private len = 0;

  constructor(initialCapacity = 512) {
    this.buf = Buffer.allocUnsafe(Math.max(64, initialCapacity));
  }

  get length(): number {
    return this.len;
  }

  reset(): this {
    this.len = 0;
    return this;
  }

  private reserve(extra: number): void {
    const need = this.len + extra;
    if (need <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < need) cap *= 2;
    const grown = Buffer.allocUnsafe(cap);
    this.buf.copy(grown, 0, 0, this.len);
    this.buf = grown;
  }

  /** Numbers must be non-negative safe integers; bigints cover the full u64 range. */
  u64(value: bigint | number): this {
    this.reserve(8);
    this.put64(value, this.len);
    this.len += 8;
    return this;
  }

  u32(value: number): this {
    this.reserve(4);
    putU32(this.buf, this.len, value);
    this.len += 4;
    return this;
  }

  i32(value: number): this {
    this.reserve(4);
    this.buf.writeInt32LE(value, this.len);
    this.len += 4;
    return this;
  }

  bytes(data: Uint8Array): this {
    this.reserve(data.length);
    this.buf.set(data, this.len);
    this.len += data.length;
    return this;
  }

  zeros(count: number): this {
    this.reserve(count);
    this.buf.fill(0, this.len, this.len + count);
    this.len += count;
    return this;
  }

  alignTo8(): this {
    return this.zeros(ALIGN8(this.len) - this.len);
  }

  /** Overwrites a u64 already written (a record's size, known only after its items). */
  patchU64(at: number, value: bigint | number): this {
    this.put64(value, at);
    return this;
  }

  /**
   * Starts an item whose payload the caller appends with the raw methods; returns the
   * offset to hand to endItem(), which fills in the size and pads.
   */
  beginItem(type: number): number {
    const at = this.len;
    this.header(type, 0);
    return at;
  }

  endItem(at: number): this {
    this.put64(this.len - at, at);
    return this.alignTo8();
  }

  /** An item with the given raw payload. */
  item(type: number, payload: Uint8Array): this {
    this.header(type, payload.length);
    return this.bytes(payload).alignTo8();
  }

  /** An item whose payload is a sequence of u64 values (ids, attach masks, vecs, ...). */
  itemU64(type: number, ...values: (bigint | number)[]): this {
    this.header(type, values.length * 8);
    for (const v of values) this.u64(v);
    return this;
  }

  /** A "str" item: the string's bytes, a NUL, padding. */
  string(type: number, value: string, encoding: BufferEncoding = 'latin1'): this {
    const n = Buffer.byteLength(value, encoding);
    this.header(type, n + 1);
    this.reserve(n + 1);
    this.buf.write(value, this.len, n, encoding);
    this.len += n;
    return this.zeros(1).alignTo8();
  }

  finish(): Buffer {
    return this.buf.subarray(0, this.len);
  }

  private header(type: number, payloadLen: number): void {
    this.reserve(ITEM_HEADER_SIZE);
    this.put64(ITEM_HEADER_SIZE + payloadLen, this.len);
    this.put64(type, this.len + 8);
    this.len += ITEM_HEADER_SIZE;
  }

  private put64(value: bigint | number, at: number): void {
    if (typeof value === 'bigint') putBigU64(this.buf, at, value);
    else putU64(this.buf, at, value);
  }
}
