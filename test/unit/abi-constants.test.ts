/**
 * Pins src/abi/constants.ts. Literal values are taken from the compiled-header facts in
 * shared/data/kdbus-abi.x86_64.json (ioctls, constants, structs), the limits from the
 * kernel's ipc/kdbus/limits.h, and the powerpc ioctl column from kdbus-abi.md §2.3.
 * The literals are written out here on purpose: the test must not read the data file.
 */
import assert from 'node:assert/strict';
import {
  ALIGN8, Attach, Cmd, HelloFlags, ITEM_ATTACH_BASE, ITEM_HEADER_SIZE, ItemType, KDBUS_DST_ID_BROADCAST,
  KDBUS_DST_ID_NAME, KDBUS_FLAG_NEGOTIATE, KDBUS_IOCTL_MAGIC, KDBUS_MATCH_ID_ANY, KDBUS_PAYLOAD_DBUS,
  KDBUS_PAYLOAD_KERNEL, KDBUS_SRC_ID_KERNEL, Limits, ListFlags, MakeFlags, MatchFlags, MsgFlags, NameFlags, Off,
  PolicyAccess, PolicyAccessType, RecvFlags, RecvReturn, SendFlags, StructSize, U64_MAX, ioctlNumber,
} from '../../src/abi/constants';

describe('abi/constants', () => {
  it('ids, magic numbers and payload types', () => {
    assert.equal(KDBUS_IOCTL_MAGIC, 0x95);
    assert.equal(KDBUS_SRC_ID_KERNEL, 0x0n);
    assert.equal(KDBUS_DST_ID_NAME, 0x0n);
    assert.equal(KDBUS_DST_ID_BROADCAST, 0xffffffffffffffffn);
    assert.equal(KDBUS_MATCH_ID_ANY, 0xffffffffffffffffn);
    assert.equal(KDBUS_FLAG_NEGOTIATE, 0x8000000000000000n);
    assert.equal(U64_MAX, 0xffffffffffffffffn);
    assert.equal(KDBUS_PAYLOAD_KERNEL, 0x0n);
    assert.equal(KDBUS_PAYLOAD_DBUS, 0x4442757344427573n);
  });

  it('limits (ipc/kdbus/limits.h of the devel branch)', () => {
    assert.deepEqual({ ...Limits }, {
      CMD_MAX_SIZE: 32768,
      MSG_MAX_PAYLOAD_VEC_SIZE: 2097152,
      MSG_MAX_MEMFD_ITEMS: 16,
      CONN_MAX_FDS_PER_USER: 16,
      MSG_MAX_FDS: 16,
      BUS_BLOOM_MIN: 8,
      BUS_BLOOM_MAX: 4096,
      NAME_MAX_LEN: 255,
      SYSNAME_MAX_LEN: 63,
      MATCH_MAX: 4096,
      CONN_MAX_MSGS: 256,
      CONN_MAX_NAMES: 256,
      CONN_MAX_REQUESTS_PENDING: 128,
      USER_MAX_CONN: 1024,
      USER_MAX_BUSES: 16,
      PAGE_SIZE: 4096,
    });
  });

  it('item types', () => {
    const pinned: [number, number][] = [
      [ItemType.NULL, 0x0], [ItemType.NEGOTIATE, 0x1], [ItemType.PAYLOAD_VEC, 0x2], [ItemType.PAYLOAD_OFF, 0x3],
      [ItemType.PAYLOAD_MEMFD, 0x4], [ItemType.FDS, 0x5], [ItemType.CANCEL_FD, 0x6], [ItemType.BLOOM_PARAMETER, 0x7],
      [ItemType.BLOOM_FILTER, 0x8], [ItemType.BLOOM_MASK, 0x9], [ItemType.DST_NAME, 0xa], [ItemType.MAKE_NAME, 0xb],
      [ItemType.ATTACH_FLAGS_SEND, 0xc], [ItemType.ATTACH_FLAGS_RECV, 0xd], [ItemType.ID, 0xe], [ItemType.NAME, 0xf],
      [ItemType.DST_ID, 0x10],
      [ItemType.TIMESTAMP, 0x1000], [ItemType.CREDS, 0x1001], [ItemType.PIDS, 0x1002], [ItemType.AUXGROUPS, 0x1003],
      [ItemType.OWNED_NAME, 0x1004], [ItemType.TID_COMM, 0x1005], [ItemType.PID_COMM, 0x1006], [ItemType.EXE, 0x1007],
      [ItemType.CMDLINE, 0x1008], [ItemType.CGROUP, 0x1009], [ItemType.CAPS, 0x100a], [ItemType.SECLABEL, 0x100b],
      [ItemType.AUDIT, 0x100c], [ItemType.CONN_DESCRIPTION, 0x100d],
      [ItemType.POLICY_ACCESS, 0x2000],
      [ItemType.NAME_ADD, 0x8000], [ItemType.NAME_REMOVE, 0x8001], [ItemType.NAME_CHANGE, 0x8002],
      [ItemType.ID_ADD, 0x8003], [ItemType.ID_REMOVE, 0x8004], [ItemType.REPLY_TIMEOUT, 0x8005],
      [ItemType.REPLY_DEAD, 0x8006],
    ];
    for (const [actual, expected] of pinned) assert.equal(actual, expected);
    assert.equal(ITEM_ATTACH_BASE, 0x1000);
    assert.equal(ITEM_HEADER_SIZE, 16);
  });

  it('attach flags', () => {
    assert.deepEqual({ ...Attach }, {
      TIMESTAMP: 0x1n, CREDS: 0x2n, PIDS: 0x4n, AUXGROUPS: 0x8n, NAMES: 0x10n, TID_COMM: 0x20n, PID_COMM: 0x40n,
      EXE: 0x80n, CMDLINE: 0x100n, CGROUP: 0x200n, CAPS: 0x400n, SECLABEL: 0x800n, AUDIT: 0x1000n,
      CONN_DESCRIPTION: 0x2000n, ALL: 0x3fffn, ANY: 0xffffffffffffffffn,
    });
  });

  it('command and message flags', () => {
    assert.deepEqual({ ...MsgFlags }, { EXPECT_REPLY: 0x1n, NO_AUTO_START: 0x2n, SIGNAL: 0x4n });
    assert.deepEqual({ ...SendFlags }, { SYNC_REPLY: 0x1n });
    assert.deepEqual({ ...RecvFlags }, { PEEK: 0x1n, DROP: 0x2n, USE_PRIORITY: 0x4n });
    assert.deepEqual({ ...RecvReturn }, { INCOMPLETE_FDS: 0x1n, DROPPED_MSGS: 0x2n });
    assert.deepEqual({ ...HelloFlags }, { ACCEPT_FD: 0x1n, ACTIVATOR: 0x2n, POLICY_HOLDER: 0x4n, MONITOR: 0x8n });
    assert.deepEqual({ ...ListFlags }, { UNIQUE: 0x1n, NAMES: 0x2n, ACTIVATORS: 0x4n, QUEUED: 0x8n });
    assert.deepEqual({ ...MatchFlags }, { REPLACE: 0x1n });
    assert.deepEqual({ ...MakeFlags }, { ACCESS_GROUP: 0x1n, ACCESS_WORLD: 0x2n });
    assert.deepEqual({ ...NameFlags }, {
      REPLACE_EXISTING: 0x1n, ALLOW_REPLACEMENT: 0x2n, QUEUE: 0x4n, IN_QUEUE: 0x8n, ACTIVATOR: 0x10n,
      PRIMARY: 0x20n, ACQUIRED: 0x40n,
    });
  });

  it('policy access types and levels', () => {
    assert.deepEqual(
      [PolicyAccessType.NULL, PolicyAccessType.USER, PolicyAccessType.GROUP, PolicyAccessType.WORLD],
      [0x0, 0x1, 0x2, 0x3],
    );
    assert.deepEqual([PolicyAccess.SEE, PolicyAccess.TALK, PolicyAccess.OWN], [0x0, 0x1, 0x2]);
  });

  it('ioctl numbers (x86-64)', () => {
    assert.deepEqual({ ...Cmd }, {
      BUS_MAKE: 0x40189500,
      ENDPOINT_MAKE: 0x40189510,
      ENDPOINT_UPDATE: 0x40189511,
      HELLO: 0xc0609580,
      UPDATE: 0x40189581,
      BYEBYE: 0x40189582,
      FREE: 0x40209583,
      CONN_INFO: 0x80389584,
      BUS_CREATOR_INFO: 0x80389585,
      LIST: 0x80289586,
      SEND: 0x40389590,
      RECV: 0x80409591,
      NAME_ACQUIRE: 0x401895a0,
      NAME_RELEASE: 0x401895a1,
      MATCH_ADD: 0x402095b0,
      MATCH_REMOVE: 0x402095b1,
    });
  });

  describe('ioctlNumber', () => {
    // [command, declaration, nr, struct size, asm-generic value, powerpc/mips/sparc/alpha value]
    const table: [keyof typeof Cmd, 'W' | 'R' | 'WR', number, number, number, number][] = [
      ['BUS_MAKE', 'W', 0x00, 24, 0x40189500, 0x80189500],
      ['ENDPOINT_MAKE', 'W', 0x10, 24, 0x40189510, 0x80189510],
      ['ENDPOINT_UPDATE', 'W', 0x11, 24, 0x40189511, 0x80189511],
      ['HELLO', 'WR', 0x80, 96, 0xc0609580, 0xc0609580],
      ['UPDATE', 'W', 0x81, 24, 0x40189581, 0x80189581],
      ['BYEBYE', 'W', 0x82, 24, 0x40189582, 0x80189582],
      ['FREE', 'W', 0x83, 32, 0x40209583, 0x80209583],
      ['CONN_INFO', 'R', 0x84, 56, 0x80389584, 0x40389584],
      ['BUS_CREATOR_INFO', 'R', 0x85, 56, 0x80389585, 0x40389585],
      ['LIST', 'R', 0x86, 40, 0x80289586, 0x40289586],
      ['SEND', 'W', 0x90, 56, 0x40389590, 0x80389590],
      ['RECV', 'R', 0x91, 64, 0x80409591, 0x40409591],
      ['NAME_ACQUIRE', 'W', 0xa0, 24, 0x401895a0, 0x801895a0],
      ['NAME_RELEASE', 'W', 0xa1, 24, 0x401895a1, 0x801895a1],
      ['MATCH_ADD', 'W', 0xb0, 32, 0x402095b0, 0x802095b0],
      ['MATCH_REMOVE', 'W', 0xb1, 32, 0x402095b1, 0x802095b1],
    ];
    for (const [name, dir, nr, size, generic, powerpc] of table) {
      it(`${name}: generic 0x${generic.toString(16)}, powerpc 0x${powerpc.toString(16)}`, () => {
        assert.equal(ioctlNumber('generic', dir, nr, size), generic);
        assert.equal(ioctlNumber('generic', dir, nr, size), Cmd[name]);
        assert.equal(ioctlNumber('powerpc', dir, nr, size), powerpc);
      });
    }
  });

  it('struct sizes', () => {
    assert.deepEqual({ ...StructSize }, {
      cmd: 24,
      cmd_hello: 96,
      cmd_send: 56,
      cmd_recv: 64,
      cmd_free: 32,
      cmd_info: 56,
      cmd_list: 40,
      cmd_match: 32,
      msg: 64,
      msg_info: 24,
      info: 24,
      vec: 16,
      memfd: 24,
      creds: 64,
      pids: 24,
      caps_header: 8,
      audit: 8,
      timestamp: 24,
      bloom_parameter: 16,
      bloom_filter_header: 8,
      name_header: 8,
      policy_access: 24,
      notify_id_change: 16,
      notify_name_change: 32,
    });
  });

  it('field offsets', () => {
    assert.deepEqual(JSON.parse(JSON.stringify(Off)), {
      cmd: { size: 0, flags: 8, return_flags: 16, items: 24 },
      // items_size is not listed in the data file; kdbus.h declares it between offset (64)
      // and id128 (80), so it sits at 72.
      hello: {
        attach_flags_send: 24, attach_flags_recv: 32, bus_flags: 40, id: 48,
        pool_size: 56, offset: 64, items_size: 72, id128: 80, items: 96,
      },
      // reply / msg are kdbus_msg_info {offset 0, msg_size 8, return_flags 16} at 32 / 40.
      send: { msg_address: 24, reply: 32, reply_offset: 32, reply_msg_size: 40, reply_return_flags: 48, items: 56 },
      recv: { priority: 24, dropped_msgs: 32, msg: 40, msg_offset: 40, msg_msg_size: 48, msg_return_flags: 56, items: 64 },
      free: { offset: 24, items: 32 },
      info_cmd: { id: 24, attach_flags: 32, offset: 40, info_size: 48, items: 56 },
      list: { offset: 24, list_size: 32, items: 40 },
      match: { cookie: 24, items: 32 },
      msg: {
        size: 0, flags: 8, priority: 16, dst_id: 24, src_id: 32, payload_type: 40,
        cookie: 48, timeout_ns: 56, cookie_reply: 56, items: 64,
      },
      info: { size: 0, id: 8, flags: 16, items: 24 },
    });
  });

  it('ALIGN8', () => {
    assert.deepEqual([0, 1, 7, 8, 9, 16, 17, 32767].map(ALIGN8), [0, 8, 8, 8, 16, 16, 24, 32768]);
  });
});
