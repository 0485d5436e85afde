/**
 * Staging: a message on its way from SEND (or from the bus itself, for notifications) into
 * receivers' pools. It is examined and imported once — payload copied out of the sender,
 * files taken from it — and then emitted into each receiver's pool with that receiver's
 * metadata. Layout of an emitted slice (kdbus-abi.md §3.6):
 *
 *   kdbus_msg + items as sent (PAYLOAD_VEC rewritten to PAYLOAD_OFF), padded to 8
 *   metadata items for this receiver, padded to 8
 *   payload: the data vectors back to back, plus the zero bytes zero-vectors and
 *            odd-sized memfds contribute, padded to 8
 *
 * kdbus_msg.size in the slice is ALIGN8(message size) + metadata size.
 */
import {
  ALIGN8, Attach, ItemType, KDBUS_DST_ID_BROADCAST, KDBUS_DST_ID_NAME, Limits, MsgFlags, Off, SendFlags, U64_MAX,
} from '../abi/constants';
import { Errno, fail, KdbusError } from '../abi/errno';
import type { Item, ParsedCommand } from '../abi/command';
import { isValidWellKnownName } from '../abi/names';
import type { CallContext, ImportedFile } from './caller';
import type { HeldAccount } from '../os/held-budget';
import type { Bus } from './bus';
import type { Connection } from './connection';
import { collectProcMetadata, effectiveMask, encodeMetadata, IMPLICIT_ATTACH, metadataSize, type MetadataParts, type ProcMetadata } from './metadata';
import { ItemWriter } from '../abi/items';
import { putBigU64, putU64 } from '../abi/words';
import type { NotificationView } from './match';
import { Gaps } from './queue';
import type { Slice } from './pool';
import type { QuotaCharge } from './quota';
import { KERNEL_USER } from './user';
import { nowNs } from './deadline';
import { payloadBuffers, POOLED_PAYLOAD_MIN } from './payload-buffers';

/** Highest user-space address on x86-64 (TASK_SIZE): kdbus's access_ok() bound for vectors. */
const USER_ADDRESS_LIMIT = 0x7fff_ffff_f000n;
const ALL_SEALS = 0x1 | 0x2 | 0x4 | 0x8;
const ZEROS = Buffer.alloc(8);
const NO_PAYLOAD = Buffer.alloc(0);
const INLINE_PAYLOAD_MAX = 16 * 1024;
const MAX_VEC_TOTAL = BigInt(Limits.MSG_MAX_PAYLOAD_VEC_SIZE);

export interface Emitted {
  slice: Slice;
  charge: QuotaCharge;
}

export class Staging {
  readonly seqnum: bigint;
  /** Sender; undefined for kernel notifications. */
  readonly src: Connection | undefined;
  /** kdbus_msg and items as they go into every receiver's pool (size and offsets patched per receiver). */
  readonly header: Buffer;
  /** kdbus_msg.size as sent, without padding after the last item. */
  readonly headerSize: number;
  /**
   * The data vectors' bytes. Delivery reads them; nothing may after the SEND has delivered,
   * since they may be a view of the sender's memory or a buffer given back by release().
   */
  readonly payload: Buffer;
  /** The reusable buffer payload lies in, until release() gives it back. */
  private pooled: Buffer | undefined;
  /** Positions (in header) of PAYLOAD_OFF offset fields of data vectors, with their offset inside the payload. */
  readonly payloadOffsets: Array<{ pos: number; rel: number }>;
  readonly gaps: Gaps | undefined;
  readonly flags: bigint;
  readonly priority: bigint;
  readonly dstId: bigint;
  readonly cookie: bigint;
  /** timeout_ns for calls, cookie_reply otherwise (they share one field). */
  readonly timeoutOrReply: bigint;
  readonly bloom: { generation: bigint; data: Buffer } | undefined;
  readonly dstName: string | undefined;
  /** Kernel notification item type (0 for user messages) and its view for match rules. */
  readonly notifyType: number;
  /**
   * Why the payload could not be read from the sender, if it could not. kdbus copies data
   * vectors out of the sender into each receiver's slice, so a vector over unmapped memory
   * fails each delivery (after quota and allocation), not the SEND as a whole.
   */
  readonly fault: string | undefined;
  private readonly callerPid: number;
  private readonly callerTid: number;
  private procMeta: ProcMetadata | undefined;
  private timestamp: { seqnum: bigint; monotonicNs: bigint; realtimeNs: bigint } | undefined;

  constructor(init: {
    bus: Bus;
    src: Connection | undefined;
    header: Buffer;
    headerSize: number;
    payload: Buffer;
    pooled?: Buffer;
    payloadOffsets: Array<{ pos: number; rel: number }>;
    gaps: Gaps | undefined;
    bloom: { generation: bigint; data: Buffer } | undefined;
    dstName: string | undefined;
    notifyType: number;
    /** Taken before the payload was imported, as kdbus does: a failed import still uses one up. */
    seqnum?: bigint;
    fault?: string;
    callerPid?: number;
    callerTid?: number;
  }) {
    this.seqnum = init.seqnum ?? init.bus.nextSeqnum();
    this.fault = init.fault;
    this.src = init.src;
    this.header = init.header;
    this.headerSize = init.headerSize;
    this.payload = init.payload;
    this.pooled = init.pooled;
    this.payloadOffsets = init.payloadOffsets;
    this.gaps = init.gaps;
    this.bloom = init.bloom;
    this.dstName = init.dstName;
    this.notifyType = init.notifyType;
    this.flags = init.header.readBigUInt64LE(Off.msg.flags);
    this.priority = init.header.readBigInt64LE(Off.msg.priority);
    this.dstId = init.header.readBigUInt64LE(Off.msg.dst_id);
    this.cookie = init.header.readBigUInt64LE(Off.msg.cookie);
    this.timeoutOrReply = init.header.readBigUInt64LE(Off.msg.timeout_ns);
    this.callerPid = init.callerPid ?? 0;
    this.callerTid = init.callerTid ?? 0;
  }

  /** Ends the payload's life: the SEND that imported it is over. */
  release(): void {
    if (this.pooled) payloadBuffers.give(this.pooled);
    this.pooled = undefined;
  }

  /** The kernel item of a notification, as match rules and SEE checks look at it. */
  notificationView(): NotificationView {
    const h = this.header;
    const p = Off.msg.items + 16;
    if (this.notifyType === ItemType.ID_ADD || this.notifyType === ItemType.ID_REMOVE) {
      return { type: this.notifyType, id: h.readBigUInt64LE(p) };
    }
    return {
      type: this.notifyType,
      oldId: h.readBigUInt64LE(p),
      newId: h.readBigUInt64LE(p + 16),
      name: h.toString('latin1', p + 32, this.headerSize - 1),
    };
  }

  get isSignal(): boolean {
    return (this.flags & MsgFlags.SIGNAL) !== 0n;
  }

  get nFds(): number {
    return this.gaps ? this.gaps.fds.length : 0;
  }

  /** Metadata is collected from the sending task once, at SEND time, for the union of receivers' masks. */
  private senderProcMeta(mask: bigint): ProcMetadata | undefined {
    const src = this.src;
    if (!src || src.fakeMeta) return undefined;
    if (!this.procMeta) this.procMeta = collectProcMetadata(this.callerPid, this.callerTid, mask);
    else this.procMeta.ensure(mask);
    return this.procMeta;
  }

  private stamp(): { seqnum: bigint; monotonicNs: bigint; realtimeNs: bigint } {
    if (!this.timestamp) {
      this.timestamp = {
        seqnum: this.seqnum,
        monotonicNs: nowNs(),
        realtimeNs: BigInt(Date.now()) * 1_000_000n,
      };
    }
    return this.timestamp;
  }

  /** Builds this receiver's copy in its pool, charged to the sender's user (kernel user for notifications). */
  emit(dst: Connection): Emitted {
    const src = this.src;
    const view = dst.view;
    let mask = src ? effectiveMask(src.attachSend, dst.attachRecv) : Attach.TIMESTAMP;
    // A receiver in a pid namespace of its own may not see the sender's /proc entry, which
    // takes the /proc-like items the sender did not grant (kdbus_meta_proc_mask).
    if (src && view.pidChain.length > 0 && mask & ~(src.attachSend | IMPLICIT_ATTACH)) {
      const proc = this.senderProcMeta(IMPLICIT_ATTACH);
      if (proc && !proc.visibleIn(view)) mask = effectiveMask(src.attachSend, dst.attachRecv, false);
    }
    const parts: MetadataParts = { view };
    if (mask !== 0n) {
      if (mask & Attach.TIMESTAMP) parts.timestamp = this.stamp();
      if (src) {
        const proc = this.senderProcMeta(mask);
        if (proc) parts.proc = proc;
        if (mask & Attach.NAMES) parts.ownedNames = src.ownedNames();
        if (src.description !== undefined) parts.description = src.description;
      }
    }
    const metaSize = mask === 0n ? 0 : metadataSize(parts, mask);
    // Without metadata kdbus leaves kdbus_msg.size at the unpadded end of the last item.
    const msgSize = metaSize > 0 ? ALIGN8(this.headerSize) + metaSize : this.headerSize;
    const payloadStart = ALIGN8(msgSize);
    const size = ALIGN8(payloadStart + this.payload.length);

    const charge = dst.quota.charge(src ? src.user : KERNEL_USER, size, this.nFds);
    let slice: Slice;
    try {
      slice = dst.pool.alloc(size, true);
    } catch (e) {
      charge.release();
      throw e;
    }
    if (this.fault !== undefined) {
      slice.releaseKernel();
      charge.release();
      throw fail('EFAULT', this.fault);
    }

    // Small messages go into the pool in one write (one copy into a memfd pool's mapping); a large
    // payload is written from where it already is instead of being copied once more.
    const inline = this.payload.length <= INLINE_PAYLOAD_MAX;
    const head = Buffer.allocUnsafe(inline ? size : payloadStart);
    this.header.copy(head, 0, 0, ALIGN8(this.headerSize));
    putU64(head, Off.msg.size, msgSize);
    const offsets = this.payloadOffsets;
    for (let i = 0; i < offsets.length; i++) putU64(head, offsets[i]!.pos, payloadStart + offsets[i]!.rel);
    if (metaSize > 0) {
      const w = new ItemWriter(metaSize + 8);
      encodeMetadata(w, parts, mask);
      const meta = w.finish();
      meta.copy(head, ALIGN8(this.headerSize));
      head.fill(0, ALIGN8(this.headerSize) + meta.length, payloadStart);
    } else {
      head.fill(0, this.headerSize, payloadStart);
    }
    if (inline) {
      this.payload.copy(head, payloadStart);
      head.fill(0, payloadStart + this.payload.length, size);
      slice.write(0, head);
    } else {
      slice.write(0, head);
      slice.write(payloadStart, this.payload);
      const pad = size - payloadStart - this.payload.length;
      if (pad > 0) slice.write(payloadStart + this.payload.length, ZEROS.subarray(0, pad));
    }
    return { slice, charge };
  }
}

/**
 * Examines a user message the way kdbus_msg_examine did (same checks, same order, same
 * errnos), then imports it: copies the data vectors out of the caller and takes references
 * to the files it passes.
 */
export function stageUserMessage(bus: Bus, src: Connection, sendFlags: bigint, msg: ParsedCommand, ctx: CallContext): Staging {
  const b = msg.buf;
  const flags = msg.flags;
  const dstId = b.readBigUInt64LE(Off.msg.dst_id);
  const payloadType = b.readBigUInt64LE(Off.msg.payload_type);
  const timeout = b.readBigUInt64LE(Off.msg.timeout_ns);

  if (payloadType === 0n) throw fail('EINVAL', 'payload_type 0 (KDBUS_PAYLOAD_KERNEL) is reserved for kernel messages');
  if (dstId === KDBUS_DST_ID_BROADCAST) {
    if (!(flags & MsgFlags.SIGNAL)) throw fail('EBADMSG', 'a broadcast must carry KDBUS_MSG_SIGNAL');
    if (timeout > 0n) throw fail('ENOTUNIQ', 'a broadcast cannot have a timeout');
  }
  if (flags & MsgFlags.EXPECT_REPLY) {
    if (timeout === 0n) throw fail('EINVAL', 'EXPECT_REPLY needs a timeout_ns');
    if (flags & MsgFlags.SIGNAL) throw fail('ENOTUNIQ', 'a signal cannot expect a reply');
  } else {
    if (sendFlags & SendFlags.SYNC_REPLY) throw fail('EINVAL', 'SYNC_REPLY needs a message with EXPECT_REPLY');
    if (timeout !== 0n && flags & MsgFlags.SIGNAL) throw fail('EINVAL', 'a signal cannot be a reply (cookie_reply set)');
  }

  let vecSize = 0n;
  let nMemfds = 0;
  let fdsItem: Item | undefined;
  let bloomItem: Item | undefined;
  let dstNameItem: Item | undefined;
  for (const it of msg.items) {
    switch (it.type) {
      case ItemType.PAYLOAD_VEC: {
        const size = it.payload.readBigUInt64LE(0);
        const address = it.payload.readBigUInt64LE(8);
        vecSize += size;
        if (vecSize > MAX_VEC_TOTAL) {
          throw fail('EMSGSIZE', `payload vectors add up to more than ${Limits.MSG_MAX_PAYLOAD_VEC_SIZE} bytes`);
        }
        if (address !== 0n && address + size > USER_ADDRESS_LIMIT) throw fail('EFAULT', 'payload vector points outside user memory');
        break;
      }
      case ItemType.PAYLOAD_MEMFD: {
        const start = it.payload.readBigUInt64LE(0);
        const size = it.payload.readBigUInt64LE(8);
        if (start + size > U64_MAX) throw fail('EMSGSIZE', 'memfd start + size overflows');
        if (nMemfds >= Limits.MSG_MAX_MEMFD_ITEMS) throw fail('E2BIG', `more than ${Limits.MSG_MAX_MEMFD_ITEMS} memfds in one message`);
        nMemfds++;
        break;
      }
      case ItemType.FDS:
        fdsItem = it;
        if (it.payload.length / 4 > Limits.CONN_MAX_FDS_PER_USER) throw fail('EMFILE', `more than ${Limits.MSG_MAX_FDS} fds in one message`);
        break;
      case ItemType.BLOOM_FILTER: {
        bloomItem = it;
        const dataSize = it.payload.length - 8;
        if (dataSize % 8 !== 0) throw fail('EFAULT', 'bloom filter size is not a multiple of 8');
        if (dataSize !== bus.bloom.size) throw fail('EDOM', `bloom filter has ${dataSize} bytes, the bus uses ${bus.bloom.size}`);
        break;
      }
      case ItemType.DST_NAME:
        dstNameItem = it;
        if (!isValidWellKnownName(itemStr(it), false)) throw fail('EINVAL', `invalid destination name "${itemStr(it)}"`);
        if (dstId === KDBUS_DST_ID_BROADCAST) throw fail('EBADMSG', 'a broadcast cannot have a destination name');
        break;
      default:
        throw fail('EINVAL', `item type ${it.type} is not allowed in a message`);
    }
  }
  if (!(flags & MsgFlags.SIGNAL) !== !bloomItem) throw fail('EBADMSG', 'a bloom filter must be attached if and only if the message is a signal');
  if (dstId === KDBUS_DST_ID_NAME && !dstNameItem) throw fail('EDESTADDRREQ', 'dst_id 0 needs a KDBUS_ITEM_DST_NAME');
  if (dstId === KDBUS_DST_ID_BROADCAST && fdsItem) throw fail('ENOTUNIQ', 'fds cannot be passed with a broadcast');

  return importMessage(bus, src, msg, ctx, bloomItem, dstNameItem);
}

/**
 * The payload's size, known from the items before anything is read, so that the vectors
 * can be read straight into one buffer; and its only data vector, when it has nothing else.
 */
function payloadShape(msg: ParsedCommand): { total: number; only: Item | undefined } {
  let total = 0;
  let vectors = 0;
  let only: Item | undefined;
  let padding = false;
  for (const it of msg.items) {
    if (it.type === ItemType.PAYLOAD_VEC) {
      const size = Number(it.payload.readBigUInt64LE(0));
      if (it.payload.readBigUInt64LE(8) !== 0n) {
        total += size;
        vectors++;
        only = it;
      } else {
        total += size % 8;
        padding ||= size % 8 !== 0;
      }
    } else if (it.type === ItemType.PAYLOAD_MEMFD) {
      const pad = Number(it.payload.readBigUInt64LE(8) % 8n);
      total += pad;
      padding ||= pad !== 0;
    }
  }
  return { total, only: vectors === 1 && !padding ? only : undefined };
}

function itemStr(it: Item): string {
  return it.payload.toString('latin1', 0, it.payload.length - 1);
}

function importMessage(bus: Bus, src: Connection, msg: ParsedCommand, ctx: CallContext, bloomItem: Item | undefined, dstNameItem: Item | undefined): Staging {
  const last = msg.items[msg.items.length - 1];
  const headerSize = last ? last.offset + last.size : Off.msg.items;
  // The parsed struct is the daemon's own copy, and the message's size is mostly a multiple
  // of 8: then it becomes the header as it is. Its items are read below while it is being
  // edited, but each field only after it was read.
  let header = msg.buf;
  if (header.length !== ALIGN8(headerSize)) {
    header = Buffer.allocUnsafe(ALIGN8(headerSize));
    msg.buf.copy(header, 0, 0, headerSize);
  }
  header.fill(0, headerSize);
  putBigU64(header, Off.msg.src_id, src.id);

  const seqnum = bus.nextSeqnum();
  const shape = payloadShape(msg);
  // A payload that is one vector of memory that can lend it is not copied here at all.
  const only = shape.only?.payload;
  const lent = only ? ctx.mem.lend?.(only.readBigUInt64LE(8), Number(only.readBigUInt64LE(0))) : undefined;
  let pooled: Buffer | undefined;
  let payload: Buffer = NO_PAYLOAD;
  if (lent) payload = lent;
  else if (shape.total >= POOLED_PAYLOAD_MIN) payload = pooled = payloadBuffers.take(shape.total);
  else if (shape.total > 0) payload = Buffer.allocUnsafe(shape.total);
  let payloadLen = 0;
  let fault: string | undefined;
  const payloadOffsets: Array<{ pos: number; rel: number }> = [];
  const fds: ImportedFile[] = [];
  const memfds: ImportedFile[] = [];
  const memfdOffsets: number[] = [];
  let fdOffset = 0;
  let account: HeldAccount | undefined;
  try {
    for (const it of msg.items) {
      switch (it.type) {
        case ItemType.PAYLOAD_VEC: {
          const size = Number(it.payload.readBigUInt64LE(0));
          const address = it.payload.readBigUInt64LE(8);
          putU64(header, it.offset + 8, ItemType.PAYLOAD_OFF);
          if (address !== 0n) {
            payloadOffsets.push({ pos: it.offset + 24, rel: payloadLen });
            if (fault !== undefined) break;
            try {
              if (!lent) ctx.mem.readInto(address, size, payload, payloadLen);
              payloadLen += size;
            } catch (e) {
              if (!(e instanceof KdbusError) || e.errno !== Errno.EFAULT) throw e;
              fault = `payload vector at 0x${address.toString(16)} (${size} bytes) is not readable: ${e.message}`;
            }
          } else {
            header.fill(0xff, it.offset + 24, it.offset + 32);
            payload.fill(0, payloadLen, payloadLen + (size % 8));
            payloadLen += size % 8;
          }
          break;
        }
        case ItemType.PAYLOAD_MEMFD: {
          const start = it.payload.readBigUInt64LE(0);
          const size = it.payload.readBigUInt64LE(8);
          const f = ctx.files.get(it.payload.readInt32LE(16));
          memfds.push(f);
          if (f.kind !== 'memfd') throw fail('EMEDIUMTYPE', 'PAYLOAD_MEMFD needs a memfd (a shmem file that supports seals)');
          if ((f.seals & ALL_SEALS) !== ALL_SEALS) throw fail('ETXTBSY', 'a memfd must carry all four seals (SHRINK, GROW, WRITE, SEAL)');
          if (start + size > BigInt(f.size)) throw fail('EFAULT', `memfd range ${start}+${size} exceeds its size ${f.size}`);
          memfdOffsets.push(it.offset + 16 + 16);
          header.writeInt32LE(-1, it.offset + 16 + 16);
          const pad = Number(size % 8n);
          payload.fill(0, payloadLen, payloadLen + pad);
          payloadLen += pad;
          break;
        }
        case ItemType.FDS: {
          fdOffset = it.offset + 16;
          for (let i = 0; i + 4 <= it.payload.length; i += 4) {
            const f = ctx.files.get(it.payload.readInt32LE(i));
            fds.push(f);
            if (f.kind === 'kdbus') throw fail('EOPNOTSUPP', 'kdbus connection fds cannot be passed over kdbus');
            if (f.kind === 'unix-socket') throw fail('EOPNOTSUPP', 'unix domain sockets cannot be passed over kdbus');
            header.writeInt32LE(-1, fdOffset + i);
          }
          break;
        }
      }
    }
    account = fds.length + memfds.length > 0 ? bus.domain.messageFds?.account(ctx.creds.uid) : undefined;
    if (account && !account.hold(fds.length + memfds.length)) {
      throw fail('EMFILE', `the files of this message are refused: ${account.refusal}`);
    }
  } catch (e) {
    for (const f of fds) f.close();
    for (const f of memfds) f.close();
    if (pooled) payloadBuffers.give(pooled);
    throw e;
  }

  const gaps = fds.length > 0 || memfds.length > 0 ? new Gaps(fds, memfds, fdOffset, memfdOffsets, account) : undefined;
  const bloom = bloomItem
    ? { generation: bloomItem.payload.readBigUInt64LE(0), data: Buffer.from(bloomItem.payload.subarray(8)) }
    : undefined;
  return new Staging({
    bus,
    src,
    header,
    headerSize,
    payload: lent ?? payload.subarray(0, payloadLen),
    pooled,
    payloadOffsets,
    gaps,
    bloom,
    dstName: dstNameItem ? itemStr(dstNameItem) : undefined,
    notifyType: 0,
    seqnum,
    fault,
    callerPid: ctx.pid,
    callerTid: ctx.tid,
  });
}

/** A kernel notification: kdbus_msg from id 0 with one kernel item, nothing else. */
export function stageNotification(bus: Bus, dstId: bigint, cookieReply: bigint, type: ItemType, itemPayload: Buffer): Staging {
  const itemSize = 16 + itemPayload.length;
  const headerSize = Off.msg.items + itemSize;
  const header = Buffer.alloc(ALIGN8(headerSize));
  header.writeBigUInt64LE(BigInt(headerSize), Off.msg.size);
  header.writeBigUInt64LE(dstId === KDBUS_DST_ID_BROADCAST ? MsgFlags.SIGNAL : 0n, Off.msg.flags);
  header.writeBigUInt64LE(dstId, Off.msg.dst_id);
  header.writeBigUInt64LE(cookieReply, Off.msg.cookie_reply);
  header.writeBigUInt64LE(BigInt(itemSize), Off.msg.items);
  header.writeBigUInt64LE(BigInt(type), Off.msg.items + 8);
  itemPayload.copy(header, Off.msg.items + 16);
  return new Staging({
    bus,
    src: undefined,
    header,
    headerSize,
    payload: Buffer.alloc(0),
    payloadOffsets: [],
    gaps: undefined,
    bloom: undefined,
    dstName: undefined,
    notifyType: type,
  });
}
