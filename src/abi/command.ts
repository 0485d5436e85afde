/**
 * The generic half of every kdbus ioctl: copying the argument struct out of the caller,
 * checking its size, flags and items, and answering flag/item negotiation. Follows the
 * kernel's kdbus_args_parse() step by step, because clients observe which errno wins when
 * several things are wrong, and which bytes of their struct get written.
 */
import { Limits, KDBUS_FLAG_NEGOTIATE, ItemType, ITEM_HEADER_SIZE, Off } from './constants';
import { fail, isKdbusError } from './errno';
import type { CallerMemory } from './memory';
import { type Item, itemTypeName, validateItem } from './items';
import { putBigU64 } from './words';

export type { Item } from './items';

export interface ItemRule {
  readonly type: number;
  /** May appear more than once. */
  readonly multiple: boolean;
  /** Must appear (except when the caller only negotiates). */
  readonly mandatory: boolean;
}

/** What one command struct (or kdbus_msg) accepts; see commands.ts. */
export interface CommandSpec {
  /** For error messages: "HELLO", "SEND", "kdbus_msg". */
  readonly name: string;
  /** sizeof the fixed part; items start right after it. */
  readonly fixedSize: number;
  /** Command structs have return_flags at offset 16; kdbus_msg does not. */
  readonly isCmd: boolean;
  /** Includes KDBUS_FLAG_NEGOTIATE, which every command and kdbus_msg accept. */
  readonly allowedFlags: bigint;
  /** Accepted item types; at most 31 rules (the walk tracks them in a bit mask). */
  readonly items: readonly ItemRule[];
}

/** A command struct copied from the caller and checked; payload views point into buf. */
export class ParsedCommand {
  constructor(
    readonly spec: CommandSpec,
    /** Where the struct lives in the caller's memory (write-backs go here). */
    readonly address: bigint,
    readonly size: number,
    /** The daemon's copy: return_flags already zeroed for commands. */
    readonly buf: Buffer,
    readonly flags: bigint,
    /** In order of appearance. */
    readonly items: readonly Item[],
    /** KDBUS_FLAG_NEGOTIATE was set: the command must return 0 without doing anything. */
    readonly negotiate: boolean,
  ) {}

  /** First item of the type (commands have few items: a scan beats a Map). */
  get(type: number): Item | undefined {
    const items = this.items;
    for (let i = 0; i < items.length; i++) if (items[i].type === type) return items[i];
    return undefined;
  }

  all(type: number): Item[] {
    return this.items.filter((it) => it.type === type);
  }

  /** A u64 field of the fixed part, e.g. cmd.u64(Off.hello.pool_size). */
  u64(fieldOffset: number): bigint {
    return this.buf.readBigUInt64LE(fieldOffset);
  }
}

const U64_BYTES = 8;
/** What most write-backs write (return_flags 0); never written into, so shared. */
const ZERO_U64 = Buffer.alloc(U64_BYTES);
const RETURN_FLAGS_OFFSET = BigInt(Off.cmd.return_flags);

function u64Bytes(value: bigint): Buffer {
  if (value === 0n) return ZERO_U64;
  const b = Buffer.allocUnsafe(U64_BYTES);
  putBigU64(b, 0, value);
  return b;
}

/** Writes a u64 field of the caller's struct (EFAULT from memory propagates). */
export function writeU64(mem: CallerMemory, cmd: ParsedCommand, fieldOffset: number, value: bigint): void {
  mem.write(cmd.address + BigInt(fieldOffset), u64Bytes(value));
}

/**
 * The kernel's final write-back of return_flags (kdbus_args_clear). Command handlers call
 * it on their success and error exits; readCommand does it itself for failures it detects.
 */
export function writeReturnFlags(mem: CallerMemory, cmd: ParsedCommand, flags: bigint): void {
  if (!cmd.spec.isCmd) throw new Error(`${cmd.spec.name} has no return_flags field`);
  mem.write(cmd.address + RETURN_FLAGS_OFFSET, u64Bytes(flags));
}

/**
 * Copies and checks the struct at `address` (kdbus_args_parse):
 *  1. address not 8-aligned or unreadable → EFAULT;
 *  2. size < fixed size → EINVAL, size > 32 KiB → EMSGSIZE, size changed between the two
 *     reads → EINVAL;
 *  3. return_flags zeroed in the copy (commands only);
 *  4. flags outside the allowed set → EINVAL;
 *  5. item walk (walkItems);
 *  6. negotiation write-back (negotiate);
 *  7. mandatory items missing → EINVAL, unless negotiating.
 * When steps 4-7 fail on a command, return_flags (0) is written back first, as the kernel
 * does; if that write faults the error becomes EFAULT.
 */
export function readCommand(mem: CallerMemory, address: bigint, spec: CommandSpec): ParsedCommand {
  if ((address & 7n) !== 0n) {
    throw fail('EFAULT', `${spec.name} struct at 0x${address.toString(16)} is not 8-byte aligned`);
  }
  // Sizes are compared as two u32 words: a non-zero high word is above any limit, and
  // this path runs for every ioctl, where BigInt arithmetic would allocate.
  const head = mem.read(address, U64_BYTES);
  const sizeLo = head.readUInt32LE(0);
  const sizeHi = head.readUInt32LE(4);
  if (sizeHi === 0 && sizeLo < spec.fixedSize) {
    throw fail('EINVAL', `${spec.name} size ${sizeLo} is smaller than the ${spec.fixedSize}-byte struct`);
  }
  if (sizeHi !== 0 || sizeLo > Limits.CMD_MAX_SIZE) {
    throw fail('EMSGSIZE', `${spec.name} size ${head.readBigUInt64LE(0)} exceeds the ${Limits.CMD_MAX_SIZE}-byte limit`);
  }
  const size = sizeLo;
  const buf = mem.read(address, size);
  if (buf.readUInt32LE(0) !== sizeLo || buf.readUInt32LE(4) !== 0) {
    throw fail('EINVAL', `${spec.name} size field changed from ${size} to ${buf.readBigUInt64LE(0)} while it was being read`);
  }
  if (spec.isCmd) buf.fill(0, Off.cmd.return_flags, Off.cmd.return_flags + U64_BYTES);

  try {
    const flags = buf.readBigUInt64LE(Off.cmd.flags);
    // Most commands come without flags: no BigInt arithmetic for them.
    const unknown = flags === 0n ? 0n : flags & ~spec.allowedFlags;
    if (unknown !== 0n) throw fail('EINVAL', `${spec.name} flags 0x${flags.toString(16)} include unsupported bits 0x${unknown.toString(16)}`);

    const { items, seen } = walkItems(buf, spec);
    const negotiating = flags !== 0n && (flags & KDBUS_FLAG_NEGOTIATE) !== 0n;
    const cmd = new ParsedCommand(spec, address, size, buf, flags, items, negotiating);
    negotiate(mem, cmd);

    if (!negotiating) {
      for (let r = 0; r < spec.items.length; r++) {
        if (spec.items[r].mandatory && (seen & (1 << r)) === 0) {
          throw fail('EINVAL', `${spec.name} requires a ${itemTypeName(spec.items[r].type)} item`);
        }
      }
    }
    return cmd;
  } catch (e) {
    if (spec.isCmd && isKdbusError(e)) {
      try {
        mem.write(address + RETURN_FLAGS_OFFSET, ZERO_U64);
      } catch (writeError) {
        if (isKdbusError(writeError)) throw fail('EFAULT', `${spec.name} failed (${e.message}) and return_flags could not be written back`);
        throw writeError;
      }
    }
    throw e;
  }
}

/**
 * Item walk (kdbus_args_verify). For each item, in this order: header must fit and size
 * must be >= 16 and inside the struct, type must be one the command accepts, payload must
 * pass validateItem, a non-repeatable type must not repeat; all → EINVAL except what
 * validateItem reports. Returns the items and a bit mask of the spec rules seen.
 */
function walkItems(buf: Buffer, spec: CommandSpec): { items: Item[]; seen: number } {
  const rules = spec.items;
  const end = buf.length;
  const items: Item[] = [];
  let seen = 0;
  let pos = spec.fixedSize;
  // Every step advances by the item's aligned size and every item must end inside the
  // struct, so the walk stops exactly at ALIGN8(end): the kernel's final "walk ends at the
  // aligned end" check can never fail once each item passed, and is not repeated here.
  while (pos < end) {
    if (end - pos < ITEM_HEADER_SIZE) {
      throw fail('EINVAL', `${spec.name} has ${end - pos} trailing bytes at offset ${pos}, too few for an item header`);
    }
    // The kernel compares full u64 values; a non-zero high word can never be a valid size
    // (the struct is at most 32 KiB) nor a known type.
    const sizeLo = buf.readUInt32LE(pos);
    const sizeHi = buf.readUInt32LE(pos + 4);
    if (sizeHi !== 0 || sizeLo < ITEM_HEADER_SIZE || sizeLo > end - pos) {
      const s = buf.readBigUInt64LE(pos);
      throw fail('EINVAL', `${spec.name} item at offset ${pos} has size ${s}, outside 16..${end - pos} (the bytes left in the struct)`);
    }
    const typeLo = buf.readUInt32LE(pos + 8);
    const typeHi = buf.readUInt32LE(pos + 12);
    let r = -1;
    if (typeHi === 0) {
      for (let i = 0; i < rules.length; i++) {
        if (rules[i].type === typeLo) {
          r = i;
          break;
        }
      }
    }
    if (r < 0) {
      const t = typeHi === 0 ? itemTypeName(typeLo) : `item type 0x${buf.readBigUInt64LE(pos + 8).toString(16)}`;
      throw fail('EINVAL', `${spec.name} does not accept ${t} (item at offset ${pos})`);
    }
    const item: Item = { type: typeLo, offset: pos, size: sizeLo, payload: buf.subarray(pos + ITEM_HEADER_SIZE, pos + sizeLo) };
    validateItem(item);
    const bit = 1 << r;
    if ((seen & bit) !== 0 && !rules[r].multiple) {
      throw fail('EINVAL', `${spec.name} accepts only one ${itemTypeName(typeLo)} item`);
    }
    seen |= bit;
    items.push(item);
    pos += (sizeLo + 7) & ~7;
  }
  return { items, seen };
}

/**
 * kdbus_args_negotiate. With KDBUS_FLAG_NEGOTIATE the caller's flags field receives the
 * supported flags. Independently of the flag, a NEGOTIATE item has every entry that is not
 * an item type of this command zeroed, in the daemon's copy and in the caller's memory.
 */
function negotiate(mem: CallerMemory, cmd: ParsedCommand): void {
  const spec = cmd.spec;
  if (cmd.negotiate) writeU64(mem, cmd, Off.cmd.flags, spec.allowedFlags & ~KDBUS_FLAG_NEGOTIATE);

  const item = cmd.get(ItemType.NEGOTIATE);
  if (item === undefined) return;
  const p = item.payload;
  for (let off = 0; off < p.length; off += U64_BYTES) {
    const lo = p.readUInt32LE(off);
    const hi = p.readUInt32LE(off + 4);
    if (hi === 0 && spec.items.some((rule) => rule.type === lo)) continue;
    p.fill(0, off, off + U64_BYTES);
    mem.write(cmd.address + BigInt(item.offset + ITEM_HEADER_SIZE + off), ZERO_U64);
  }
}
