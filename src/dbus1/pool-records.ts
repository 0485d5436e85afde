/**
 * What the bus writes into a connection's pool, decoded for the daemon's own connections
 * (local-connection.ts): received messages and kernel notifications (kdbus-abi.md §3.6,
 * §3.16), metadata items (§3.17), and the kdbus_info records of LIST, CONN_INFO and
 * BUS_CREATOR_INFO (§3.10, §3.11).
 *
 * Every decoder works on one copy of the slice the caller read out of the pool: payload
 * buffers are views into that copy, so they stay valid after the slice is freed and cost no
 * further copy. Unknown item types are skipped, as kdbus clients skip them.
 */
import {
  ALIGN8, ITEM_HEADER_SIZE, ItemType, KDBUS_PAYLOAD_DBUS, MsgFlags, Off, StructSize,
} from '../abi/constants';
import { fail } from '../abi/errno';
import { getU64 } from '../abi/words';
import type { ImportedFile } from '../bus/caller';

export interface Timestamp {
  seqnum: bigint;
  monotonicNs: bigint;
  realtimeNs: bigint;
}

/** uid_t/gid_t values; 0xffffffff is kdbus's "invalid". */
export interface UnixCreds {
  uid: number;
  euid: number;
  suid: number;
  fsuid: number;
  gid: number;
  egid: number;
  sgid: number;
  fsgid: number;
}

/** 0 where the task is not visible to the receiver. */
export interface Pids {
  pid: number;
  tid: number;
  ppid: number;
}

/** The four capability sets, bit n = capability n. */
export interface Caps {
  lastCap: number;
  inheritable: bigint;
  permitted: bigint;
  effective: bigint;
  bounding: bigint;
}

export interface Audit {
  sessionId: number;
  loginUid: number;
}

/** A name record: OWNED_NAME items of metadata and LIST. */
export interface OwnedName {
  name: string;
  /** KDBUS_NAME_* flags of the record (PRIMARY, IN_QUEUE, ACTIVATOR, ALLOW_REPLACEMENT, QUEUE). */
  flags: bigint;
}

/** Metadata items; a field is undefined when its item was not attached. */
export class Metadata {
  timestamp: Timestamp | undefined = undefined;
  creds: UnixCreds | undefined = undefined;
  pids: Pids | undefined = undefined;
  auxGroups: number[] | undefined = undefined;
  /** OWNED_NAME items: the names the subject held (primary or as activator). */
  names: OwnedName[] | undefined = undefined;
  tidComm: string | undefined = undefined;
  pidComm: string | undefined = undefined;
  exe: string | undefined = undefined;
  /** The bytes of the CMDLINE item without its final NUL (arguments are NUL-separated). */
  cmdline: Buffer | undefined = undefined;
  cgroup: string | undefined = undefined;
  caps: Caps | undefined = undefined;
  seclabel: string | undefined = undefined;
  audit: Audit | undefined = undefined;
  description: string | undefined = undefined;
}

/** A PAYLOAD_MEMFD part of a message. */
export interface MemfdPart {
  /** Received: the memfd, owned by the receiver; null where it could not be kept (INCOMPLETE_FDS). */
  readonly file: ImportedFile | null;
  readonly start: number;
  readonly size: number;
}

/** Payload parts in message order: bytes, or a range of a memfd. */
export type PayloadPart = Buffer | MemfdPart;

export interface KdbusMessage {
  readonly kind: 'message';
  readonly srcId: bigint;
  /** As sent: a connection id, 0 for a name-addressed message, ~0 for a broadcast. */
  readonly dstId: bigint;
  /** KDBUS_MSG_* flags. */
  readonly flags: bigint;
  readonly priority: bigint;
  readonly payloadType: bigint;
  readonly cookie: bigint;
  /** The absolute CLOCK_MONOTONIC deadline of a call (EXPECT_REPLY), else 0. */
  readonly timeoutNs: bigint;
  /** The cookie a reply answers (no EXPECT_REPLY), else 0. */
  readonly cookieReply: bigint;
  readonly dstName: string | undefined;
  /** Data vectors (views into the copied slice; zero runs as zero-filled buffers) and memfds, in order. */
  readonly payload: PayloadPart[];
  /** FDS: owned by the receiver; null where a file could not be kept. */
  readonly fds: Array<ImportedFile | null>;
  readonly bloom: { generation: bigint; data: Buffer } | undefined;
  readonly meta: Metadata;
  /** RECV reported KDBUS_RECV_RETURN_INCOMPLETE_FDS. */
  readonly incompleteFds: boolean;
}

export interface NameChangeNotification {
  readonly kind: 'name-add' | 'name-remove' | 'name-change';
  /** 0 (with flags 0) for NAME_ADD. */
  readonly oldId: bigint;
  readonly oldFlags: bigint;
  /** 0 (with flags 0) for NAME_REMOVE. */
  readonly newId: bigint;
  readonly newFlags: bigint;
  readonly name: string;
  readonly timestamp: Timestamp | undefined;
}

export interface IdChangeNotification {
  readonly kind: 'id-add' | 'id-remove';
  readonly id: bigint;
  /** The connection's HELLO flags. */
  readonly flags: bigint;
  readonly timestamp: Timestamp | undefined;
}

export interface ReplyNotification {
  readonly kind: 'reply-timeout' | 'reply-dead';
  /** The cookie of the call that will get no reply. */
  readonly cookie: bigint;
  readonly timestamp: Timestamp | undefined;
}

export type KdbusNotification = NameChangeNotification | IdChangeNotification | ReplyNotification;
export type Received = KdbusMessage | KdbusNotification;

/** One kdbus_info record of LIST. */
export interface ListEntry {
  id: bigint;
  /** The connection's HELLO flags. */
  flags: bigint;
  names: OwnedName[];
}

/** CONN_INFO: a connection's id, HELLO flags and metadata; BUS_CREATOR_INFO: the bus's id, flags, name and creator. */
export interface InfoRecord {
  id: bigint;
  flags: bigint;
  /** MAKE_NAME (BUS_CREATOR_INFO only). */
  busName: string | undefined;
  meta: Metadata;
}

/** Maps a descriptor number written into a slice back to the file it stands for. */
export type FileLookup = (fd: number) => ImportedFile | null;


const U64_MAX = 0xffff_ffff_ffff_ffffn;
/** The words of KDBUS_PAYLOAD_DBUS ("DBusDBus": the same 32 bits twice). */
const PAYLOAD_DBUS_WORD = Number(KDBUS_PAYLOAD_DBUS & 0xffff_ffffn);

/**
 * A u64 as a bigint, with as few BigInts made as can be: Buffer's reader builds four for
 * every value, and a received message has seven of them. Small values (ids, flags,
 * cookies) take one, 0 and ~0 none.
 */
function bigU64(b: Buffer, at: number): bigint {
  const lo = b.readUInt32LE(at);
  const hi = b.readUInt32LE(at + 4);
  if (hi === 0) return lo === 0 ? 0n : BigInt(lo);
  if (hi === 0xffff_ffff && lo === 0xffff_ffff) return U64_MAX;
  return b.readBigUInt64LE(at);
}

const isU64Max = (b: Buffer, at: number): boolean => b.readUInt32LE(at) === 0xffff_ffff && b.readUInt32LE(at + 4) === 0xffff_ffff;

/** A "str" payload without its NUL. */
const str = (b: Buffer, start: number, end: number, encoding: BufferEncoding): string => b.toString(encoding, start, end - 1);

/**
 * Decodes one metadata item into `meta`; returns false for types that are not metadata.
 * CREDS, PIDS and AUXGROUPS hold 32-bit ids widened to u64: the low words are the ids.
 */
function metadataItem(meta: Metadata, b: Buffer, type: number, p: number, end: number): boolean {
  switch (type) {
    case ItemType.TIMESTAMP:
      meta.timestamp = { seqnum: b.readBigUInt64LE(p), monotonicNs: b.readBigUInt64LE(p + 8), realtimeNs: b.readBigUInt64LE(p + 16) };
      return true;
    case ItemType.CREDS:
      meta.creds = {
        uid: b.readUInt32LE(p), euid: b.readUInt32LE(p + 8), suid: b.readUInt32LE(p + 16), fsuid: b.readUInt32LE(p + 24),
        gid: b.readUInt32LE(p + 32), egid: b.readUInt32LE(p + 40), sgid: b.readUInt32LE(p + 48), fsgid: b.readUInt32LE(p + 56),
      };
      return true;
    case ItemType.PIDS:
      meta.pids = { pid: b.readUInt32LE(p), tid: b.readUInt32LE(p + 8), ppid: b.readUInt32LE(p + 16) };
      return true;
    case ItemType.AUXGROUPS: {
      const groups: number[] = [];
      for (let q = p; q + 8 <= end; q += 8) groups.push(b.readUInt32LE(q));
      meta.auxGroups = groups;
      return true;
    }
    case ItemType.OWNED_NAME:
      (meta.names ??= []).push(ownedName(b, p, end));
      return true;
    case ItemType.TID_COMM:
      meta.tidComm = str(b, p, end, 'utf8');
      return true;
    case ItemType.PID_COMM:
      meta.pidComm = str(b, p, end, 'utf8');
      return true;
    case ItemType.EXE:
      meta.exe = str(b, p, end, 'utf8');
      return true;
    case ItemType.CMDLINE:
      meta.cmdline = b.subarray(p, end - 1);
      return true;
    case ItemType.CGROUP:
      meta.cgroup = str(b, p, end, 'utf8');
      return true;
    case ItemType.CAPS:
      meta.caps = caps(b, p, end);
      return true;
    case ItemType.SECLABEL:
      meta.seclabel = str(b, p, end, 'utf8');
      return true;
    case ItemType.AUDIT:
      meta.audit = { sessionId: b.readUInt32LE(p), loginUid: b.readUInt32LE(p + 4) };
      return true;
    case ItemType.CONN_DESCRIPTION:
      meta.description = str(b, p, end, 'latin1');
      return true;
    default:
      return false;
  }
}

function ownedName(b: Buffer, p: number, end: number): OwnedName {
  return { flags: b.readBigUInt64LE(p), name: str(b, p + StructSize.name_header, end, 'latin1') };
}

/** kdbus_caps: last_cap, then inheritable, permitted, effective, bounding, each the same number of u32 words. */
function caps(b: Buffer, p: number, end: number): Caps {
  const words = Math.floor((end - p - 4) / 16);
  const set = (index: number): bigint => {
    let v = 0n;
    for (let w = words - 1; w >= 0; w--) v = (v << 32n) | BigInt(b.readUInt32LE(p + 4 + (index * words + w) * 4));
    return v;
  };
  return { lastCap: b.readUInt32LE(p), inheritable: set(0), permitted: set(1), effective: set(2), bounding: set(3) };
}

/**
 * Walks the items in [start, end) of `b`, calling `visit(type, payloadStart, payloadEnd)`.
 * Item sizes and types are u64 whose high words are zero in anything the bus writes.
 */
function walk(b: Buffer, start: number, end: number, visit: (type: number, p: number, e: number) => void): void {
  let at = start;
  while (at + ITEM_HEADER_SIZE <= end) {
    const size = b.readUInt32LE(at);
    if (size < ITEM_HEADER_SIZE || at + size > end) break;
    visit(b.readUInt32LE(at + 8), at + ITEM_HEADER_SIZE, at + size);
    at += ALIGN8(size);
  }
}

/**
 * Decodes a message or notification slice (`b` is its copy, starting at the kdbus_msg).
 * `files` resolves the descriptor numbers RECV wrote into FDS and PAYLOAD_MEMFD items.
 */
export function decodeReceived(b: Buffer, files: FileLookup, incompleteFds: boolean): Received | undefined {
  const msgSize = Math.min(getU64(b, Off.msg.size), b.length);
  const payloadType = b.readUInt32LE(Off.msg.payload_type) === PAYLOAD_DBUS_WORD && b.readUInt32LE(Off.msg.payload_type + 4) === PAYLOAD_DBUS_WORD
    ? KDBUS_PAYLOAD_DBUS
    : b.readBigUInt64LE(Off.msg.payload_type);
  if (payloadType === 0n) return decodeNotification(b, msgSize);

  const flags = bigU64(b, Off.msg.flags);
  const word56 = bigU64(b, Off.msg.timeout_ns);
  const expectsReply = (flags & MsgFlags.EXPECT_REPLY) !== 0n;
  // Connections that attach no metadata (the legacy endpoint's) get the shared empty record.
  let meta: Metadata | undefined;
  const payload: PayloadPart[] = [];
  let fds: Array<ImportedFile | null> = NO_FDS;
  let dstName: string | undefined;
  let bloom: { generation: bigint; data: Buffer } | undefined;
  let at = Off.msg.items;
  while (at + ITEM_HEADER_SIZE <= msgSize) {
    const size = b.readUInt32LE(at);
    if (size < ITEM_HEADER_SIZE || at + size > msgSize) break;
    const type = b.readUInt32LE(at + 8);
    const p = at + ITEM_HEADER_SIZE;
    const end = at + size;
    switch (type) {
      case ItemType.PAYLOAD_OFF: {
        const len = getU64(b, p);
        if (isU64Max(b, p + 8)) payload.push(Buffer.alloc(len));
        else {
          const off = getU64(b, p + 8);
          payload.push(b.subarray(off, off + len));
        }
        break;
      }
      case ItemType.PAYLOAD_MEMFD:
        payload.push({ file: files(b.readInt32LE(p + 16)), start: getU64(b, p), size: getU64(b, p + 8) });
        break;
      case ItemType.FDS:
        fds = [];
        for (let q = p; q + 4 <= end; q += 4) fds.push(files(b.readInt32LE(q)));
        break;
      case ItemType.DST_NAME:
        dstName = str(b, p, end, 'latin1');
        break;
      case ItemType.BLOOM_FILTER:
        bloom = { generation: b.readBigUInt64LE(p), data: b.subarray(p + StructSize.bloom_filter_header, end) };
        break;
      default:
        metadataItem((meta ??= new Metadata()), b, type, p, end);
    }
    at += ALIGN8(size);
  }
  return {
    kind: 'message',
    srcId: bigU64(b, Off.msg.src_id),
    dstId: bigU64(b, Off.msg.dst_id),
    flags,
    priority: b.readUInt32LE(Off.msg.priority + 4) === 0 ? bigU64(b, Off.msg.priority) : b.readBigInt64LE(Off.msg.priority),
    payloadType,
    cookie: bigU64(b, Off.msg.cookie),
    timeoutNs: expectsReply ? word56 : 0n,
    cookieReply: expectsReply ? 0n : word56,
    dstName,
    payload,
    fds,
    bloom,
    meta: meta ?? NO_METADATA,
    incompleteFds,
  };
}

const NO_FDS: Array<ImportedFile | null> = [];
Object.freeze(NO_FDS);
const NO_METADATA = Object.freeze(new Metadata());

/** A kernel notification: one kernel item and a TIMESTAMP. Unknown kernel items give undefined. */
function decodeNotification(b: Buffer, msgSize: number): KdbusNotification | undefined {
  let type = 0;
  let item = 0;
  let itemEnd = 0;
  let timestamp: Timestamp | undefined;
  walk(b, Off.msg.items, msgSize, (t, p, e) => {
    if (t === ItemType.TIMESTAMP) {
      timestamp = { seqnum: b.readBigUInt64LE(p), monotonicNs: b.readBigUInt64LE(p + 8), realtimeNs: b.readBigUInt64LE(p + 16) };
    } else if (t >= ItemType.NAME_ADD && type === 0) {
      type = t;
      item = p;
      itemEnd = e;
    }
  });
  switch (type) {
    case ItemType.NAME_ADD:
    case ItemType.NAME_REMOVE:
    case ItemType.NAME_CHANGE:
      return {
        kind: type === ItemType.NAME_ADD ? 'name-add' : type === ItemType.NAME_REMOVE ? 'name-remove' : 'name-change',
        oldId: b.readBigUInt64LE(item),
        oldFlags: b.readBigUInt64LE(item + 8),
        newId: b.readBigUInt64LE(item + 16),
        newFlags: b.readBigUInt64LE(item + 24),
        name: str(b, item + StructSize.notify_name_change, itemEnd, 'latin1'),
        timestamp,
      };
    case ItemType.ID_ADD:
    case ItemType.ID_REMOVE:
      return {
        kind: type === ItemType.ID_ADD ? 'id-add' : 'id-remove',
        id: b.readBigUInt64LE(item),
        flags: b.readBigUInt64LE(item + 8),
        timestamp,
      };
    case ItemType.REPLY_TIMEOUT:
    case ItemType.REPLY_DEAD:
      return {
        kind: type === ItemType.REPLY_TIMEOUT ? 'reply-timeout' : 'reply-dead',
        cookie: b.readBigUInt64LE(Off.msg.cookie_reply),
        timestamp,
      };
    default:
      return undefined;
  }
}

/** LIST's slice: consecutive kdbus_info records, each with its OWNED_NAME items. */
export function decodeList(b: Buffer): ListEntry[] {
  const out: ListEntry[] = [];
  let at = 0;
  while (at + StructSize.info <= b.length) {
    const size = getU64(b, at + Off.info.size);
    if (size < StructSize.info || at + size > b.length) break;
    const names: OwnedName[] = [];
    walk(b, at + Off.info.items, at + size, (t, p, e) => {
      if (t === ItemType.OWNED_NAME) names.push(ownedName(b, p, e));
    });
    out.push({ id: b.readBigUInt64LE(at + Off.info.id), flags: b.readBigUInt64LE(at + Off.info.flags), names });
    at += ALIGN8(size);
  }
  return out;
}

/** CONN_INFO's or BUS_CREATOR_INFO's slice: one kdbus_info record. */
export function decodeInfo(b: Buffer): InfoRecord {
  const size = Math.min(getU64(b, Off.info.size), b.length);
  const meta = new Metadata();
  let busName: string | undefined;
  // walk() inlined: the driver decodes a record for nearly every call an sd-bus service gets.
  let at: number = Off.info.items;
  while (at + ITEM_HEADER_SIZE <= size) {
    const itemSize = b.readUInt32LE(at);
    if (itemSize < ITEM_HEADER_SIZE || at + itemSize > size) break;
    const t = b.readUInt32LE(at + 8);
    if (t === ItemType.MAKE_NAME) busName = str(b, at + ITEM_HEADER_SIZE, at + itemSize, 'latin1');
    else metadataItem(meta, b, t, at + ITEM_HEADER_SIZE, at + itemSize);
    at += ALIGN8(itemSize);
  }
  return { id: bigU64(b, Off.info.id), flags: bigU64(b, Off.info.flags), busName, meta };
}

/** HELLO's item list: the bus's bloom parameters. */
export function decodeBloomParameter(b: Buffer): { size: number; nHash: number } | undefined {
  let found: { size: number; nHash: number } | undefined;
  walk(b, 0, b.length, (t, p) => {
    if (t === ItemType.BLOOM_PARAMETER) found = { size: getU64(b, p), nHash: getU64(b, p + 8) };
  });
  return found;
}

/** Closes what a received message holds open: its FDS and the memfds of its payload. */
export function closeMessageFiles(msg: KdbusMessage): void {
  for (const f of msg.fds) f?.close();
  closePayloadFiles(msg);
}

/** Closes the memfds of a message's payload: once its bytes are read, nothing needs them. */
export function closePayloadFiles(msg: KdbusMessage): void {
  for (const part of msg.payload) if (!Buffer.isBuffer(part)) part.file?.close();
}

/**
 * The message's payload bytes, memfd ranges read in, as one buffer: no copy when the data
 * parts lie back to back in one buffer, as kdbus packs a message's data vectors in its slice.
 */
export function payloadBytes(msg: KdbusMessage): Buffer {
  const parts = msg.payload;
  if (parts.length === 1 && Buffer.isBuffer(parts[0])) return parts[0];
  const joined = adjacentParts(parts);
  if (joined) return joined;
  const bufs: Buffer[] = [];
  for (const part of parts) {
    if (Buffer.isBuffer(part)) bufs.push(part);
    else if (part.file) bufs.push(part.file.read(part.start, part.size));
    else throw fail('EBADF', `a ${part.size}-byte memfd part of message ${msg.cookie} could not be received`);
  }
  return Buffer.concat(bufs);
}

/** One view of all the parts, when each is a Buffer that starts where the one before it ends. */
function adjacentParts(parts: KdbusMessage['payload']): Buffer | undefined {
  const first = parts[0];
  if (!Buffer.isBuffer(first)) return undefined;
  let end = first.byteOffset + first.length;
  for (let i = 1; i < parts.length; i++) {
    const part = parts[i]!;
    if (!Buffer.isBuffer(part) || part.buffer !== first.buffer || part.byteOffset !== end) return undefined;
    end += part.length;
  }
  return Buffer.from(first.buffer, first.byteOffset, end - first.byteOffset);
}
