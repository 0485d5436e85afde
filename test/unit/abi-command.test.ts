/**
 * The generic command protocol (kernel handle.c __kdbus_args_parse, kdbus_args_verify,
 * kdbus_args_negotiate, kdbus_args_clear; item.c kdbus_item_validate). Expected errnos and
 * orderings come from the kernel code, not from this implementation.
 */
import assert from 'node:assert/strict';
import { readCommand, writeReturnFlags, writeU64, type CommandSpec } from '../../src/abi/command';
import { Specs } from '../../src/abi/commands';
import { ItemType } from '../../src/abi/constants';
import { KdbusError } from '../../src/abi/errno';
import { itemString, itemU64 } from '../../src/abi/items';
import { Arena } from '../helpers/arena';

type U64 = bigint | number;
const NEG = 1n << 63n;
const align8 = (n: number): number => (n + 7) & ~7;

interface RawItem {
  type: U64;
  payload?: Uint8Array;
  /** Overrides the size field (default 16 + payload length). */
  size?: U64;
}

function itemBytes(it: RawItem): Buffer {
  const payload = it.payload ?? Buffer.alloc(0);
  const out = Buffer.alloc(align8(16 + payload.length));
  out.writeBigUInt64LE(BigInt(it.size ?? 16 + payload.length), 0);
  out.writeBigUInt64LE(BigInt(it.type), 8);
  out.set(payload, 16);
  return out;
}

interface StructOptions {
  flags?: U64;
  returnFlags?: U64;
  /** Other u64 fields of the fixed part, by offset. */
  fields?: [number, U64][];
  items?: RawItem[];
  /** Raw bytes appended after the items. */
  tail?: Uint8Array;
  /** Bytes dropped from the end (e.g. the last item's padding). */
  trim?: number;
  /** Overrides the size field (default: the struct's byte length). */
  size?: U64;
}

function struct(fixed: number, o: StructOptions = {}): Buffer {
  const parts = [Buffer.alloc(fixed), ...(o.items ?? []).map(itemBytes), Buffer.from(o.tail ?? [])];
  let buf = Buffer.concat(parts);
  if (o.trim) buf = buf.subarray(0, buf.length - o.trim);
  buf.writeBigUInt64LE(BigInt(o.size ?? buf.length), 0);
  buf.writeBigUInt64LE(BigInt(o.flags ?? 0), 8);
  if (o.returnFlags !== undefined) buf.writeBigUInt64LE(BigInt(o.returnFlags), 16);
  for (const [off, v] of o.fields ?? []) buf.writeBigUInt64LE(BigInt(v), off);
  return buf;
}

const str = (s: string): Buffer => Buffer.from(s + '\0', 'latin1');
function u64s(...values: U64[]): Buffer {
  const b = Buffer.alloc(values.length * 8);
  values.forEach((v, i) => b.writeBigUInt64LE(BigInt(v), i * 8));
  return b;
}
function memfd(start: U64, size: U64, fd: number): Buffer {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(BigInt(start), 0);
  b.writeBigUInt64LE(BigInt(size), 8);
  b.writeInt32LE(fd, 16);
  return b;
}
const bloomParam = (): RawItem => ({ type: ItemType.BLOOM_PARAMETER, payload: u64s(64, 1) });
const makeName = (s: string): RawItem => ({ type: ItemType.MAKE_NAME, payload: str(s) });

function errnoOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof KdbusError) return e.code;
    throw e;
  }
  return 'no error';
}

/** Maps the struct and returns the parse outcome plus the memory for inspection. */
function setup(spec: CommandSpec, bytes: Buffer, opts: { readOnly?: boolean; misalign?: number } = {}) {
  const mem = new Arena();
  const address = mem.put(bytes, opts);
  return { mem, address, parse: () => readCommand(mem, address, spec), errno: () => errnoOf(() => readCommand(mem, address, spec)) };
}

describe('abi/command: readCommand', () => {
  describe('step 1-2: address and size', () => {
    it('rejects an unaligned address with EFAULT before looking at the size', () => {
      for (const skew of [1, 4]) {
        const t = setup(Specs.BYEBYE, struct(24, { size: 0 }), { misalign: skew });
        assert.equal(t.errno(), 'EFAULT');
      }
    });

    it('reports EFAULT for unmapped memory', () => {
      const mem = new Arena();
      assert.equal(errnoOf(() => readCommand(mem, 0x4000n, Specs.BYEBYE)), 'EFAULT');
      assert.equal(errnoOf(() => readCommand(mem, 0n, Specs.BYEBYE)), 'EFAULT');
    });

    it('reports EINVAL for a size below the fixed struct', () => {
      assert.equal(setup(Specs.HELLO, struct(96, { size: 88 })).errno(), 'EINVAL');
      assert.equal(setup(Specs.BYEBYE, struct(24, { size: 0 })).errno(), 'EINVAL');
      assert.equal(setup(Specs.MSG, struct(64, { size: 56 })).errno(), 'EINVAL');
    });

    it('reports EMSGSIZE above 32 KiB, before trying to read that much', () => {
      // Only 24 bytes are mapped: the size check must come before the copy.
      assert.equal(setup(Specs.BYEBYE, struct(24, { size: 32 * 1024 + 1 })).errno(), 'EMSGSIZE');
      assert.equal(setup(Specs.BYEBYE, struct(24, { size: 0xffff_ffff_ffff_ffffn })).errno(), 'EMSGSIZE');
      assert.equal(setup(Specs.MSG, struct(64, { size: 1n << 32n })).errno(), 'EMSGSIZE');
    });

    it('accepts exactly 32 KiB', () => {
      const payload = Buffer.alloc(32 * 1024 - 32 - 16);
      const t = setup(Specs.MATCH_ADD, struct(32, { items: [{ type: ItemType.BLOOM_MASK, payload }] }));
      assert.equal(t.parse().size, 32768);
      assert.equal(setup(Specs.MATCH_ADD, struct(32, { items: [{ type: ItemType.BLOOM_MASK, payload: Buffer.alloc(payload.length + 8) }] })).errno(), 'EMSGSIZE');
    });

    it('reports EFAULT when the struct extends past mapped memory', () => {
      const t = setup(Specs.BYEBYE, struct(24, { size: 200 }));
      assert.equal(t.errno(), 'EFAULT');
    });

    it('reports EINVAL when the size field changes between the two reads, without write-back', () => {
      const bytes = struct(24, { returnFlags: 0xdead, items: [{ type: ItemType.NEGOTIATE }] });
      const t = setup(Specs.BYEBYE, bytes);
      let reads = 0;
      t.mem.onRead = (address, length) => {
        // Another thread shrinks the size between the 8-byte size read and the full copy.
        if (++reads === 1) assert.equal(length, 8);
        if (reads === 2) t.mem.poke(address, u64s(24));
      };
      assert.equal(t.errno(), 'EINVAL');
      assert.equal(t.mem.writes.length, 0);
      assert.equal(t.mem.peek(t.address + 16n, 8).readBigUInt64LE(), 0xdeadn);
    });
  });

  describe('step 3: return_flags', () => {
    it('zeroes return_flags in the copy of a command but not in the caller on success', () => {
      const t = setup(Specs.FREE, struct(32, { returnFlags: 0xabcd, fields: [[24, 0x1234]] }));
      const cmd = t.parse();
      assert.equal(cmd.buf.readBigUInt64LE(16), 0n);
      assert.equal(cmd.u64(24), 0x1234n);
      assert.equal(t.mem.writes.length, 0);
      assert.equal(t.mem.peek(t.address + 16n, 8).readBigUInt64LE(), 0xabcdn);
    });

    it('leaves offset 16 of a kdbus_msg (priority) alone', () => {
      const t = setup(Specs.MSG, struct(64, { returnFlags: -5n & 0xffff_ffff_ffff_ffffn }));
      assert.equal(t.parse().buf.readBigInt64LE(16), -5n);
    });
  });

  describe('step 4: flags', () => {
    it('rejects unsupported flags with EINVAL and writes return_flags 0 back', () => {
      const t = setup(Specs.HELLO, struct(96, { flags: 1n << 4n, returnFlags: 0xffn }));
      assert.equal(t.errno(), 'EINVAL');
      assert.equal(t.mem.peek(t.address + 16n, 8).readBigUInt64LE(), 0n);
    });

    it('checks flags before items', () => {
      const longName = makeName('1-' + 'a'.repeat(70));
      assert.equal(setup(Specs.BUS_MAKE, struct(24, { items: [longName, bloomParam()] })).errno(), 'ENAMETOOLONG');
      assert.equal(setup(Specs.BUS_MAKE, struct(24, { flags: 4, items: [longName, bloomParam()] })).errno(), 'EINVAL');
      const badFd: RawItem = { type: ItemType.PAYLOAD_MEMFD, payload: memfd(0, 8, -1) };
      assert.equal(setup(Specs.MSG, struct(64, { items: [badFd] })).errno(), 'EBADF');
      assert.equal(setup(Specs.MSG, struct(64, { flags: 8, items: [badFd] })).errno(), 'EINVAL');
    });

    it('turns a failed return_flags write-back into EFAULT', () => {
      const t = setup(Specs.BYEBYE, struct(24, { flags: 1 }), { readOnly: true });
      assert.equal(t.errno(), 'EFAULT');
    });

    it('never writes into a kdbus_msg on error', () => {
      const t = setup(Specs.MSG, struct(64, { flags: 8 }), { readOnly: true });
      assert.equal(t.errno(), 'EINVAL');
    });

    it('returns the flags as given', () => {
      const t = setup(Specs.RECV, struct(64, { flags: 5 }));
      const cmd = t.parse();
      assert.equal(cmd.flags, 5n);
      assert.equal(cmd.negotiate, false);
    });
  });

  describe('step 5: item walk', () => {
    const name = (s: string): RawItem => ({ type: ItemType.NAME, payload: str(s) });

    it('returns items in order with offsets, sizes and payload views', () => {
      const t = setup(Specs.UPDATE, struct(24, {
        items: [name('a.b'), { type: ItemType.ATTACH_FLAGS_SEND, payload: u64s(3) }, name('c.de')],
      }));
      const cmd = t.parse();
      assert.deepEqual(cmd.items.map((i) => [i.type, i.offset, i.size]), [
        [ItemType.NAME, 24, 20], [ItemType.ATTACH_FLAGS_SEND, 48, 24], [ItemType.NAME, 72, 21],
      ]);
      assert.equal(itemString(cmd.get(ItemType.NAME)!), 'a.b');
      assert.deepEqual(cmd.all(ItemType.NAME).map((i) => itemString(i)), ['a.b', 'c.de']);
      assert.equal(itemU64(cmd.get(ItemType.ATTACH_FLAGS_SEND)!), 3n);
      assert.equal(cmd.get(ItemType.ATTACH_FLAGS_RECV), undefined);
      assert.equal(cmd.items[0].payload.buffer, cmd.buf.buffer, 'payload is a view into the copy');
    });

    it('rejects an item smaller than its header', () => {
      assert.equal(setup(Specs.BYEBYE, struct(24, { items: [{ type: ItemType.NEGOTIATE, size: 8 }] })).errno(), 'EINVAL');
      assert.equal(setup(Specs.BYEBYE, struct(24, { items: [{ type: ItemType.NEGOTIATE, size: 0 }] })).errno(), 'EINVAL');
    });

    it('rejects an item that reaches past the struct', () => {
      const it: RawItem = { type: ItemType.NEGOTIATE, payload: u64s(1), size: 32 };
      assert.equal(setup(Specs.BYEBYE, struct(24, { items: [it] })).errno(), 'EINVAL');
      const huge: RawItem = { type: ItemType.NEGOTIATE, payload: u64s(1), size: (1n << 32n) + 24n };
      assert.equal(setup(Specs.BYEBYE, struct(24, { items: [huge] })).errno(), 'EINVAL');
      const wrap: RawItem = { type: ItemType.NEGOTIATE, payload: u64s(1), size: 0xffff_ffff_ffff_fff8n };
      assert.equal(setup(Specs.BYEBYE, struct(24, { items: [wrap] })).errno(), 'EINVAL');
    });

    it('rejects trailing bytes that do not form an item', () => {
      assert.equal(setup(Specs.BYEBYE, struct(24, { tail: Buffer.alloc(8) })).errno(), 'EINVAL');
      assert.equal(setup(Specs.BYEBYE, struct(24, { tail: Buffer.alloc(4) })).errno(), 'EINVAL');
      assert.equal(setup(Specs.BYEBYE, struct(24, { items: [{ type: ItemType.NEGOTIATE }], tail: Buffer.alloc(8) })).errno(), 'EINVAL');
      // A zeroed 16-byte tail is an item of size 0.
      assert.equal(setup(Specs.BYEBYE, struct(24, { tail: Buffer.alloc(16) })).errno(), 'EINVAL');
    });

    it('lets the size omit the last item\'s padding, and ignores bytes inside that padding', () => {
      const cancel: RawItem = { type: ItemType.CANCEL_FD, payload: Buffer.from([3, 0, 0, 0]) };
      const exact = setup(Specs.SEND, struct(56, { items: [cancel], trim: 4 }));
      assert.equal(exact.parse().size, 76);
      assert.equal(exact.parse().get(ItemType.CANCEL_FD)!.payload.readInt32LE(0), 3);
      assert.equal(setup(Specs.SEND, struct(56, { items: [cancel], trim: 3 })).parse().size, 77);
      assert.equal(setup(Specs.SEND, struct(56, { items: [cancel] })).parse().size, 80);
    });

    it('rejects item types the command does not accept', () => {
      assert.equal(setup(Specs.BYEBYE, struct(24, { items: [{ type: 0x9999 }] })).errno(), 'EINVAL');
      assert.equal(setup(Specs.BYEBYE, struct(24, { items: [{ type: 0, payload: u64s(0) }] })).errno(), 'EINVAL');
      assert.equal(setup(Specs.BYEBYE, struct(24, { items: [name('a.b')] })).errno(), 'EINVAL');
      assert.equal(setup(Specs.ENDPOINT_MAKE, struct(24, { items: [makeName('1-ep'), { type: ItemType.POLICY_ACCESS, payload: u64s(3, 0, 0) }] })).errno(), 'EINVAL');
      assert.equal(setup(Specs.MSG, struct(64, { items: [{ type: ItemType.CANCEL_FD, payload: Buffer.alloc(4) }] })).errno(), 'EINVAL');
    });

    it('treats types above 2^32 as unknown, even when the low word is a valid type', () => {
      const it: RawItem = { type: (1n << 32n) + BigInt(ItemType.NAME), payload: str('a.b') };
      assert.equal(setup(Specs.CONN_INFO, struct(56, { items: [it] })).errno(), 'EINVAL');
      const top: RawItem = { type: 0xffff_ffff_ffff_ffffn };
      assert.equal(setup(Specs.BYEBYE, struct(24, { items: [top] })).errno(), 'EINVAL');
    });

    it('checks the type before the payload', () => {
      // A memfd with fd -1 would be EBADF, but BYEBYE does not accept memfds at all.
      assert.equal(setup(Specs.BYEBYE, struct(24, { items: [{ type: ItemType.PAYLOAD_MEMFD, payload: memfd(0, 8, -1) }] })).errno(), 'EINVAL');
    });

    it('rejects a repeated non-repeatable item, but only after validating its payload', () => {
      assert.equal(setup(Specs.HELLO, struct(96, { items: [name('a.b'), name('c.d')] })).errno(), 'EINVAL');
      assert.equal(setup(Specs.MSG, struct(64, { items: [{ type: ItemType.FDS, payload: Buffer.alloc(4) }, { type: ItemType.FDS, payload: Buffer.alloc(4) }] })).errno(), 'EINVAL');
      assert.equal(setup(Specs.MSG, struct(64, { items: [{ type: ItemType.DST_NAME, payload: str('a.b') }, { type: ItemType.DST_NAME, payload: str('a.b') }] })).errno(), 'EINVAL');
      assert.equal(setup(Specs.BYEBYE, struct(24, { items: [{ type: ItemType.NEGOTIATE }, { type: ItemType.NEGOTIATE }] })).errno(), 'EINVAL');
      // Second MAKE_NAME too long: the payload check (ENAMETOOLONG) fires before the repeat check.
      const twice = struct(24, { items: [makeName('1-a'), makeName('1-' + 'b'.repeat(64)), bloomParam()] });
      assert.equal(setup(Specs.BUS_MAKE, twice).errno(), 'ENAMETOOLONG');
    });

    it('accepts repeatable items many times', () => {
      const pa: RawItem = { type: ItemType.POLICY_ACCESS, payload: u64s(3, 1, 0) };
      const cmd = setup(Specs.HELLO, struct(96, { items: [pa, pa, name('a.b'), pa] })).parse();
      assert.equal(cmd.all(ItemType.POLICY_ACCESS).length, 3);
      const vec: RawItem = { type: ItemType.PAYLOAD_VEC, payload: u64s(8, 0x1000) };
      assert.equal(setup(Specs.MSG, struct(64, { items: [vec, vec, vec] })).parse().items.length, 3);
    });

    describe('payload rules (item.c)', () => {
      const cases: [string, CommandSpec, number, RawItem, string][] = [
        ['NEGOTIATE not a multiple of 8', Specs.BYEBYE, 24, { type: ItemType.NEGOTIATE, payload: Buffer.alloc(12) }, 'EINVAL'],
        ['NEGOTIATE empty', Specs.BYEBYE, 24, { type: ItemType.NEGOTIATE }, 'ok'],
        ['VEC of 8 bytes', Specs.MSG, 64, { type: ItemType.PAYLOAD_VEC, payload: u64s(8) }, 'EINVAL'],
        ['VEC size 0', Specs.MSG, 64, { type: ItemType.PAYLOAD_VEC, payload: u64s(0, 0x1000) }, 'EINVAL'],
        ['VEC address 0 (padding)', Specs.MSG, 64, { type: ItemType.PAYLOAD_VEC, payload: u64s(5, 0) }, 'ok'],
        ['MEMFD of 16 bytes', Specs.MSG, 64, { type: ItemType.PAYLOAD_MEMFD, payload: u64s(0, 8) }, 'EINVAL'],
        ['MEMFD size 0', Specs.MSG, 64, { type: ItemType.PAYLOAD_MEMFD, payload: memfd(0, 0, 3) }, 'EINVAL'],
        ['MEMFD size 0 and fd -1', Specs.MSG, 64, { type: ItemType.PAYLOAD_MEMFD, payload: memfd(0, 0, -1) }, 'EINVAL'],
        ['MEMFD fd -1', Specs.MSG, 64, { type: ItemType.PAYLOAD_MEMFD, payload: memfd(0, 8, -1) }, 'EBADF'],
        ['MEMFD fd 0', Specs.MSG, 64, { type: ItemType.PAYLOAD_MEMFD, payload: memfd(0, 8, 0) }, 'ok'],
        ['FDS of 6 bytes', Specs.MSG, 64, { type: ItemType.FDS, payload: Buffer.alloc(6) }, 'EINVAL'],
        ['FDS empty', Specs.MSG, 64, { type: ItemType.FDS }, 'ok'],
        ['CANCEL_FD of 8 bytes', Specs.SEND, 56, { type: ItemType.CANCEL_FD, payload: Buffer.alloc(8) }, 'EINVAL'],
        ['BLOOM_FILTER of 4 bytes', Specs.MSG, 64, { type: ItemType.BLOOM_FILTER, payload: Buffer.alloc(4) }, 'EINVAL'],
        ['BLOOM_FILTER generation only', Specs.MSG, 64, { type: ItemType.BLOOM_FILTER, payload: Buffer.alloc(8) }, 'ok'],
        ['BLOOM_FILTER odd data (checked later)', Specs.MSG, 64, { type: ItemType.BLOOM_FILTER, payload: Buffer.alloc(13) }, 'ok'],
        ['BLOOM_MASK of any size', Specs.MATCH_ADD, 32, { type: ItemType.BLOOM_MASK, payload: Buffer.alloc(3) }, 'ok'],
        ['ID of 16 bytes', Specs.MATCH_ADD, 32, { type: ItemType.ID, payload: u64s(1, 2) }, 'EINVAL'],
        ['DST_ID of 4 bytes', Specs.MATCH_ADD, 32, { type: ItemType.DST_ID, payload: Buffer.alloc(4) }, 'EINVAL'],
        ['NAME_ADD of 24 bytes', Specs.MATCH_ADD, 32, { type: ItemType.NAME_ADD, payload: u64s(0, 0, 0) }, 'EINVAL'],
        ['NAME_ADD without name', Specs.MATCH_ADD, 32, { type: ItemType.NAME_ADD, payload: u64s(0, 0, 0, 0) }, 'ok'],
        ['NAME_CHANGE with name', Specs.MATCH_ADD, 32, { type: ItemType.NAME_CHANGE, payload: Buffer.concat([u64s(0, 0, 0, 0), str('a.b')]) }, 'ok'],
        ['NAME_REMOVE name without NUL', Specs.MATCH_ADD, 32, { type: ItemType.NAME_REMOVE, payload: Buffer.concat([u64s(0, 0, 0, 0), Buffer.from('a.b')]) }, 'EINVAL'],
        ['ID_ADD of 8 bytes', Specs.MATCH_ADD, 32, { type: ItemType.ID_ADD, payload: u64s(1) }, 'EINVAL'],
        ['ID_REMOVE of 16 bytes', Specs.MATCH_ADD, 32, { type: ItemType.ID_REMOVE, payload: u64s(1, 0) }, 'ok'],
        ['ATTACH_FLAGS_SEND of 4 bytes', Specs.UPDATE, 24, { type: ItemType.ATTACH_FLAGS_SEND, payload: Buffer.alloc(4) }, 'EINVAL'],
        ['ATTACH_FLAGS_RECV of 16 bytes', Specs.UPDATE, 24, { type: ItemType.ATTACH_FLAGS_RECV, payload: u64s(1, 1) }, 'EINVAL'],
        ['POLICY_ACCESS of 16 bytes', Specs.UPDATE, 24, { type: ItemType.POLICY_ACCESS, payload: u64s(1, 1) }, 'EINVAL'],
        ['BLOOM_PARAMETER of 8 bytes', Specs.BUS_MAKE, 24, { type: ItemType.BLOOM_PARAMETER, payload: u64s(8) }, 'EINVAL'],
        ['CREDS of 32 bytes', Specs.HELLO, 96, { type: ItemType.CREDS, payload: Buffer.alloc(32) }, 'EINVAL'],
        ['CREDS of 64 bytes', Specs.HELLO, 96, { type: ItemType.CREDS, payload: Buffer.alloc(64) }, 'ok'],
        ['PIDS of any size (unchecked)', Specs.HELLO, 96, { type: ItemType.PIDS, payload: Buffer.alloc(3) }, 'ok'],
        ['SECLABEL without NUL', Specs.HELLO, 96, { type: ItemType.SECLABEL, payload: Buffer.from('x') }, 'EINVAL'],
        ['NAME empty payload', Specs.CONN_INFO, 56, { type: ItemType.NAME }, 'EINVAL'],
        ['NAME empty string', Specs.CONN_INFO, 56, { type: ItemType.NAME, payload: str('') }, 'ok'],
        ['NAME with inner NUL', Specs.CONN_INFO, 56, { type: ItemType.NAME, payload: Buffer.from('a\0b\0') }, 'EINVAL'],
        ['NAME with two NULs at the end', Specs.CONN_INFO, 56, { type: ItemType.NAME, payload: Buffer.from('ab\0\0') }, 'EINVAL'],
        ['NAME not a valid bus name (checked later)', Specs.CONN_INFO, 56, { type: ItemType.NAME, payload: str('..') }, 'ok'],
        ['DST_NAME without NUL', Specs.MSG, 64, { type: ItemType.DST_NAME, payload: Buffer.from('a.b') }, 'EINVAL'],
        ['CONN_DESCRIPTION 63 chars', Specs.HELLO, 96, { type: ItemType.CONN_DESCRIPTION, payload: str('d'.repeat(63)) }, 'ok'],
        ['CONN_DESCRIPTION 64 chars', Specs.HELLO, 96, { type: ItemType.CONN_DESCRIPTION, payload: str('d'.repeat(64)) }, 'ENAMETOOLONG'],
        ['CONN_DESCRIPTION with space', Specs.HELLO, 96, { type: ItemType.CONN_DESCRIPTION, payload: str('a b') }, 'EINVAL'],
      ];
      for (const [label, spec, fixed, item, expected] of cases) {
        it(`${label} → ${expected}`, () => {
          const items = [item];
          if (spec === Specs.BUS_MAKE) items.push(makeName('1-bus'));
          const t = setup(spec, struct(fixed, { items }));
          assert.equal(t.errno(), expected === 'ok' ? 'no error' : expected);
        });
      }
    });

    describe('sysname rules of MAKE_NAME', () => {
      const cases: [string, Buffer, string][] = [
        ['empty string', str(''), 'EINVAL'],
        ['single character', str('a'), 'ok'],
        ['missing NUL', Buffer.from('1-ab'), 'EINVAL'],
        ['NUL inside', Buffer.from('1-a\0b\0'), 'EINVAL'],
        ['63 characters', str('1-' + 'x'.repeat(61)), 'ok'],
        ['64 characters', str('1-' + 'x'.repeat(62)), 'ENAMETOOLONG'],
        ['too long and no NUL at all (length wins)', Buffer.alloc(70, 0x61), 'ENAMETOOLONG'],
        ['dash and dot inside', str('1-a.b_c'), 'ok'],
        ['leading dash', str('-ab'), 'EINVAL'],
        ['trailing dot', str('1-ab.'), 'EINVAL'],
        ['slash', str('1-a/b'), 'EINVAL'],
        ['kernel ctype letter 0xE9', Buffer.from([0x31, 0x2d, 0xe9, 0]), 'ok'],
        ['kernel ctype punctuation 0xD7', Buffer.from([0x31, 0x2d, 0xd7, 0]), 'EINVAL'],
        ['UTF-8 é (0xC3 0xA9: 0xA9 is not a letter)', Buffer.from('1-é\0', 'utf8'), 'EINVAL'],
      ];
      for (const [label, payload, expected] of cases) {
        it(`${label} → ${expected}`, () => {
          const t = setup(Specs.ENDPOINT_MAKE, struct(24, { items: [{ type: ItemType.MAKE_NAME, payload }] }));
          assert.equal(t.errno(), expected === 'ok' ? 'no error' : expected);
        });
      }
    });
  });

  describe('step 6: negotiation', () => {
    it('writes the supported flags into the caller\'s flags field and reports negotiate', () => {
      const t = setup(Specs.HELLO, struct(96, { flags: NEG | 1n, returnFlags: 0x77 }));
      const cmd = t.parse();
      assert.equal(cmd.negotiate, true);
      assert.equal(cmd.flags, NEG | 1n);
      assert.equal(t.mem.peek(t.address + 8n, 8).readBigUInt64LE(), 0xfn);
      // Only the flags field is written; return_flags is left for the handler.
      assert.deepEqual(t.mem.writes.map((w) => [w.address - t.address, w.data.length]), [[8n, 8]]);
    });

    it('gives each command its own flag set', () => {
      const expected: [CommandSpec, number, bigint][] = [
        [Specs.BUS_MAKE, 24, 3n], [Specs.NAME_ACQUIRE, 24, 7n], [Specs.LIST, 40, 0xfn],
        [Specs.RECV, 64, 7n], [Specs.SEND, 56, 1n], [Specs.MATCH_ADD, 32, 1n], [Specs.BYEBYE, 24, 0n],
        [Specs.MSG, 64, 7n],
      ];
      for (const [spec, fixed, flags] of expected) {
        const t = setup(spec, struct(fixed, { flags: NEG }));
        t.parse();
        assert.equal(t.mem.peek(t.address + 8n, 8).readBigUInt64LE(), flags, spec.name);
      }
    });

    it('zeroes unsupported entries of a NEGOTIATE item, in the copy and in the caller', () => {
      const entries = [ItemType.NAME, ItemType.MAKE_NAME, 0x9999, ItemType.CREDS, (1n << 32n) + 15n, ItemType.POLICY_ACCESS, ItemType.NEGOTIATE];
      const t = setup(Specs.HELLO, struct(96, { flags: NEG, items: [{ type: ItemType.NEGOTIATE, payload: u64s(...entries) }] }));
      const cmd = t.parse();
      const want = [15n, 0n, 0n, 0x1001n, 0n, 0x2000n, 1n];
      const user = t.mem.peek(t.address + 96n + 16n, 56);
      assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map((i) => user.readBigUInt64LE(i * 8)), want);
      assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map((i) => itemU64(cmd.get(ItemType.NEGOTIATE)!, i)), want);
      // One 8-byte write per cleared entry, after the flags write.
      assert.deepEqual(t.mem.writes.map((w) => Number(w.address - t.address)), [8, 120, 128, 144]);
    });

    it('also clears entries that are already 0 (the kernel writes every unsupported entry)', () => {
      const t = setup(Specs.BYEBYE, struct(24, { flags: NEG, items: [{ type: ItemType.NEGOTIATE, payload: u64s(0, 1) }] }));
      t.parse();
      assert.deepEqual(t.mem.writes.map((w) => Number(w.address - t.address)), [8, 40]);
    });

    it('processes a NEGOTIATE item even without the flag, and then the command runs', () => {
      const t = setup(Specs.CONN_INFO, struct(56, { flags: 0, items: [{ type: ItemType.NEGOTIATE, payload: u64s(ItemType.NAME, ItemType.ID) }] }));
      const cmd = t.parse();
      assert.equal(cmd.negotiate, false);
      assert.equal(t.mem.peek(t.address + 8n, 8).readBigUInt64LE(), 0n);
      assert.deepEqual([0, 1].map((i) => t.mem.peek(t.address + 72n + BigInt(i * 8), 8).readBigUInt64LE()), [15n, 0n]);
    });

    it('does not require mandatory items when negotiating', () => {
      const t = setup(Specs.BUS_MAKE, struct(24, { flags: NEG }));
      assert.equal(t.parse().negotiate, true);
      assert.equal(setup(Specs.NAME_ACQUIRE, struct(24, { flags: NEG })).parse().negotiate, true);
    });

    it('still validates items when negotiating, before writing anything', () => {
      const t = setup(Specs.HELLO, struct(96, { flags: NEG, items: [{ type: ItemType.NAME, payload: Buffer.from('x') }] }));
      assert.equal(t.errno(), 'EINVAL');
      assert.equal(t.mem.peek(t.address + 8n, 8).readBigUInt64LE(), NEG);
      assert.deepEqual(t.mem.writes.map((w) => Number(w.address - t.address)), [16]);
    });

    it('does not negotiate when other flags are unsupported', () => {
      const t = setup(Specs.BYEBYE, struct(24, { flags: NEG | (1n << 40n) }));
      assert.equal(t.errno(), 'EINVAL');
      assert.equal(t.mem.peek(t.address + 8n, 8).readBigUInt64LE(), NEG | (1n << 40n));
    });

    it('fails with EFAULT when the caller\'s struct is read-only', () => {
      assert.equal(setup(Specs.BYEBYE, struct(24, { flags: NEG }), { readOnly: true }).errno(), 'EFAULT');
      assert.equal(setup(Specs.MSG, struct(64, { flags: NEG }), { readOnly: true }).errno(), 'EFAULT');
    });
  });

  describe('step 7: mandatory items', () => {
    it('reports EINVAL for a missing mandatory item and writes return_flags 0 back', () => {
      const t = setup(Specs.BUS_MAKE, struct(24, { returnFlags: 9, items: [makeName('1-bus')] }));
      assert.equal(t.errno(), 'EINVAL');
      assert.equal(t.mem.peek(t.address + 16n, 8).readBigUInt64LE(), 0n);
      assert.equal(setup(Specs.BUS_MAKE, struct(24, { items: [bloomParam()] })).errno(), 'EINVAL');
      assert.equal(setup(Specs.ENDPOINT_MAKE, struct(24)).errno(), 'EINVAL');
      assert.equal(setup(Specs.NAME_ACQUIRE, struct(24)).errno(), 'EINVAL');
      assert.equal(setup(Specs.NAME_RELEASE, struct(24)).errno(), 'EINVAL');
    });

    it('accepts the mandatory items in any order', () => {
      const cmd = setup(Specs.BUS_MAKE, struct(24, { flags: 2, items: [bloomParam(), { type: ItemType.ATTACH_FLAGS_SEND, payload: u64s(1) }, makeName('0-system')] })).parse();
      assert.equal(itemString(cmd.get(ItemType.MAKE_NAME)!), '0-system');
      assert.equal(itemU64(cmd.get(ItemType.BLOOM_PARAMETER)!, 1), 1n);
    });
  });

  describe('kdbus_msg', () => {
    it('parses a full message', () => {
      const items: RawItem[] = [
        { type: ItemType.PAYLOAD_VEC, payload: u64s(16, 0x7000) },
        { type: ItemType.PAYLOAD_MEMFD, payload: memfd(0, 4096, 5) },
        { type: ItemType.PAYLOAD_VEC, payload: u64s(3, 0) },
        { type: ItemType.FDS, payload: Buffer.from([1, 0, 0, 0, 2, 0, 0, 0]) },
        { type: ItemType.BLOOM_FILTER, payload: Buffer.alloc(8 + 64) },
        { type: ItemType.DST_NAME, payload: str('org.example.Foo') },
      ];
      const t = setup(Specs.MSG, struct(64, { flags: 5, fields: [[24, 0n], [40, 0x4442757344427573n], [48, 7]], items }));
      const msg = t.parse();
      assert.equal(msg.flags, 5n);
      assert.equal(msg.u64(40), 0x4442757344427573n);
      assert.deepEqual(msg.items.map((i) => i.type), [2, 4, 2, 5, 8, 10]);
      assert.equal(msg.all(ItemType.PAYLOAD_VEC).length, 2);
      assert.equal(itemString(msg.get(ItemType.DST_NAME)!), 'org.example.Foo');
      assert.equal(t.mem.writes.length, 0);
    });

    it('accepts a NEGOTIATE item (message examination rejects it later)', () => {
      const t = setup(Specs.MSG, struct(64, { items: [{ type: ItemType.NEGOTIATE, payload: u64s(ItemType.FDS, ItemType.NAME) }] }));
      t.parse();
      assert.deepEqual([0, 1].map((i) => t.mem.peek(t.address + 80n + BigInt(i * 8), 8).readBigUInt64LE()), [5n, 0n]);
    });

    it('checks alignment and size like a command', () => {
      assert.equal(setup(Specs.MSG, struct(64), { misalign: 4 }).errno(), 'EFAULT');
      assert.equal(setup(Specs.MSG, struct(64, { size: 63 })).errno(), 'EINVAL');
    });
  });
});

describe('abi/command: write-back helpers', () => {
  it('writeU64 and writeReturnFlags write the caller\'s fields', () => {
    const t = setup(Specs.RECV, struct(64));
    const cmd = t.parse();
    writeU64(t.mem, cmd, 40, 0x1122334455667788n);
    writeReturnFlags(t.mem, cmd, 2n);
    assert.equal(t.mem.peek(t.address + 40n, 8).readBigUInt64LE(), 0x1122334455667788n);
    assert.equal(t.mem.peek(t.address + 16n, 8).readBigUInt64LE(), 2n);
  });

  it('propagate EFAULT', () => {
    const t = setup(Specs.RECV, struct(64), { readOnly: true });
    const cmd = t.parse();
    assert.equal(errnoOf(() => writeReturnFlags(t.mem, cmd, 1n)), 'EFAULT');
  });

  it('refuse return_flags on a kdbus_msg', () => {
    const t = setup(Specs.MSG, struct(64));
    const msg = t.parse();
    assert.throws(() => writeReturnFlags(t.mem, msg, 0n), /no return_flags/);
  });
});

describe('abi/commands: table of accepted flags and items (kdbus-abi.md §2.7, kernel argv tables)', () => {
  // [name, fixed size, allowed flags without NEGOTIATE, items as [type, multiple, mandatory]]
  const table: [keyof typeof Specs, number, bigint, [number, boolean, boolean][]][] = [
    ['BUS_MAKE', 24, 0x3n, [[1, false, false], [11, false, true], [7, false, true], [12, false, false]]],
    ['ENDPOINT_MAKE', 24, 0x3n, [[1, false, false], [11, false, true]]],
    ['ENDPOINT_UPDATE', 24, 0n, [[1, false, false], [15, true, false], [0x2000, true, false]]],
    ['HELLO', 96, 0xfn, [[1, false, false], [15, false, false], [0x1001, false, false], [0x1002, false, false],
      [0x100b, false, false], [0x100d, false, false], [0x2000, true, false]]],
    ['UPDATE', 24, 0n, [[1, false, false], [12, false, false], [13, false, false], [15, true, false], [0x2000, true, false]]],
    ['BYEBYE', 24, 0n, [[1, false, false]]],
    ['FREE', 32, 0n, [[1, false, false]]],
    ['CONN_INFO', 56, 0n, [[1, false, false], [15, false, false]]],
    ['BUS_CREATOR_INFO', 56, 0n, [[1, false, false]]],
    ['LIST', 40, 0xfn, [[1, false, false]]],
    ['SEND', 56, 0x1n, [[1, false, false], [6, false, false]]],
    ['RECV', 64, 0x7n, [[1, false, false]]],
    ['NAME_ACQUIRE', 24, 0x7n, [[1, false, false], [15, false, true]]],
    ['NAME_RELEASE', 24, 0n, [[1, false, false], [15, false, true]]],
    ['MATCH_ADD', 32, 0x1n, [[1, false, false], [9, true, false], [15, true, false], [14, true, false], [16, true, false],
      [0x8000, true, false], [0x8001, true, false], [0x8002, true, false], [0x8003, true, false], [0x8004, true, false]]],
    ['MATCH_REMOVE', 32, 0n, [[1, false, false]]],
    ['MSG', 64, 0x7n, [[1, false, false], [2, true, false], [4, true, false], [5, false, false], [8, false, false], [10, false, false]]],
  ];

  it('covers every command', () => {
    assert.deepEqual(Object.keys(Specs).sort(), table.map((r) => r[0]).sort());
  });

  for (const [name, fixed, flags, items] of table) {
    it(name, () => {
      const spec = Specs[name];
      assert.equal(spec.fixedSize, fixed);
      assert.equal(spec.isCmd, name !== 'MSG');
      assert.equal(spec.allowedFlags, flags | NEG);
      assert.deepEqual(
        [...spec.items].map((r) => [r.type, r.multiple, r.mandatory]).sort((a, b) => Number(a[0]) - Number(b[0])),
        [...items].sort((a, b) => a[0] - b[0]),
      );
    });
  }
});
