/**
 * The final kdbus UAPI (kdbus devel branch, Sept 2015; identical to systemd v222-v234's
 * kdbus.h plus KDBUS_NAME_PRIMARY/ACQUIRED). Every number here is pinned by
 * test/unit/abi-constants.test.ts against values computed by compiling that header.
 *
 * 64-bit fields (flags, ids, cookies, masks) are bigint: clients put arbitrary u64 values
 * there (bit 63 is KDBUS_FLAG_NEGOTIATE), and a lossy number would change their meaning.
 */

export const KDBUS_IOCTL_MAGIC = 0x95;

export const KDBUS_SRC_ID_KERNEL = 0n;
export const KDBUS_DST_ID_NAME = 0n;
export const KDBUS_DST_ID_BROADCAST = 0xffff_ffff_ffff_ffffn;
export const KDBUS_MATCH_ID_ANY = 0xffff_ffff_ffff_ffffn;
export const KDBUS_FLAG_NEGOTIATE = 1n << 63n;
export const U64_MAX = 0xffff_ffff_ffff_ffffn;

export const KDBUS_PAYLOAD_KERNEL = 0n;
export const KDBUS_PAYLOAD_DBUS = 0x4442757344427573n;

/** ipc/kdbus/limits.h of the devel branch. */
export const Limits = {
  CMD_MAX_SIZE: 32 * 1024,
  MSG_MAX_PAYLOAD_VEC_SIZE: 2 * 1024 * 1024,
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
} as const;

export const enum ItemType {
  NULL = 0,
  NEGOTIATE = 1,
  PAYLOAD_VEC = 2,
  PAYLOAD_OFF = 3,
  PAYLOAD_MEMFD = 4,
  FDS = 5,
  CANCEL_FD = 6,
  BLOOM_PARAMETER = 7,
  BLOOM_FILTER = 8,
  BLOOM_MASK = 9,
  DST_NAME = 10,
  MAKE_NAME = 11,
  ATTACH_FLAGS_SEND = 12,
  ATTACH_FLAGS_RECV = 13,
  ID = 14,
  NAME = 15,
  DST_ID = 16,

  TIMESTAMP = 0x1000,
  CREDS = 0x1001,
  PIDS = 0x1002,
  AUXGROUPS = 0x1003,
  OWNED_NAME = 0x1004,
  TID_COMM = 0x1005,
  PID_COMM = 0x1006,
  EXE = 0x1007,
  CMDLINE = 0x1008,
  CGROUP = 0x1009,
  CAPS = 0x100a,
  SECLABEL = 0x100b,
  AUDIT = 0x100c,
  CONN_DESCRIPTION = 0x100d,

  POLICY_ACCESS = 0x2000,

  NAME_ADD = 0x8000,
  NAME_REMOVE = 0x8001,
  NAME_CHANGE = 0x8002,
  ID_ADD = 0x8003,
  ID_REMOVE = 0x8004,
  REPLY_TIMEOUT = 0x8005,
  REPLY_DEAD = 0x8006,
}

export const ITEM_ATTACH_BASE = 0x1000;
export const ITEM_HEADER_SIZE = 16;

/** Attach flag bit n selects metadata item type 0x1000 + n. */
export const Attach = {
  TIMESTAMP: 1n << 0n,
  CREDS: 1n << 1n,
  PIDS: 1n << 2n,
  AUXGROUPS: 1n << 3n,
  NAMES: 1n << 4n,
  TID_COMM: 1n << 5n,
  PID_COMM: 1n << 6n,
  EXE: 1n << 7n,
  CMDLINE: 1n << 8n,
  CGROUP: 1n << 9n,
  CAPS: 1n << 10n,
  SECLABEL: 1n << 11n,
  AUDIT: 1n << 12n,
  CONN_DESCRIPTION: 1n << 13n,
  ALL: (1n << 14n) - 1n,
  ANY: 0xffff_ffff_ffff_ffffn,
} as const;

export const MsgFlags = { EXPECT_REPLY: 1n << 0n, NO_AUTO_START: 1n << 1n, SIGNAL: 1n << 2n } as const;
export const SendFlags = { SYNC_REPLY: 1n << 0n } as const;
export const RecvFlags = { PEEK: 1n << 0n, DROP: 1n << 1n, USE_PRIORITY: 1n << 2n } as const;
export const RecvReturn = { INCOMPLETE_FDS: 1n << 0n, DROPPED_MSGS: 1n << 1n } as const;
export const HelloFlags = { ACCEPT_FD: 1n << 0n, ACTIVATOR: 1n << 1n, POLICY_HOLDER: 1n << 2n, MONITOR: 1n << 3n } as const;
export const ListFlags = { UNIQUE: 1n << 0n, NAMES: 1n << 1n, ACTIVATORS: 1n << 2n, QUEUED: 1n << 3n } as const;
export const MatchFlags = { REPLACE: 1n << 0n } as const;
export const MakeFlags = { ACCESS_GROUP: 1n << 0n, ACCESS_WORLD: 1n << 1n } as const;
export const NameFlags = {
  REPLACE_EXISTING: 1n << 0n,
  ALLOW_REPLACEMENT: 1n << 1n,
  QUEUE: 1n << 2n,
  IN_QUEUE: 1n << 3n,
  ACTIVATOR: 1n << 4n,
  PRIMARY: 1n << 5n,
  ACQUIRED: 1n << 6n,
} as const;

export const enum PolicyAccessType { NULL = 0, USER = 1, GROUP = 2, WORLD = 3 }
export const enum PolicyAccess { SEE = 0, TALK = 1, OWN = 2 }

/** ioctl numbers as the x86-64 (asm-generic _IOC) encoding builds them. */
export const Cmd = {
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
} as const;
export type CmdName = keyof typeof Cmd;

/** Fixed struct sizes (sizeof, without the flexible item arrays). */
export const StructSize = {
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
} as const;

/** Field offsets of the command structs and of kdbus_msg. */
export const Off = {
  cmd: { size: 0, flags: 8, return_flags: 16, items: 24 },
  hello: {
    attach_flags_send: 24, attach_flags_recv: 32, bus_flags: 40, id: 48,
    pool_size: 56, offset: 64, items_size: 72, id128: 80, items: 96,
  },
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
} as const;

/**
 * The kernel ignores the direction and size bits of kdbus ioctls, but they are part of the
 * number a client passes. asm-generic (x86, arm, arm64, s390, riscv) encodes _IOC_WRITE=1,
 * _IOC_READ=2 in two bits above a 14-bit size; powerpc, mips, sparc and alpha encode
 * _IOC_READ=2, _IOC_WRITE=4 in three bits above a 13-bit size, so their _IOW and _IOR
 * numbers differ from x86's while _IOWR coincides.
 */
export type IocFlavour = 'generic' | 'powerpc';

export function ioctlNumber(flavour: IocFlavour, dir: 'W' | 'R' | 'WR', nr: number, size: number): number {
  const [write, read, sizeBits] = flavour === 'generic' ? [1, 2, 14] : [4, 2, 13];
  const dirBits = (dir.includes('W') ? write : 0) | (dir.includes('R') ? read : 0);
  const dirShift = 16 + sizeBits;
  return ((dirBits << dirShift) | ((size & ((1 << sizeBits) - 1)) << 16) | (KDBUS_IOCTL_MAGIC << 8) | nr) >>> 0;
}

export const ALIGN8 = (n: number): number => (n + 7) & ~7;
