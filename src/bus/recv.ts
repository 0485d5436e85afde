/**
 * KDBUS_CMD_RECV and the installation of a message's files into the receiving process.
 */
import { ItemType, Off, RecvFlags, RecvReturn } from '../abi/constants';
import { Errno, fail } from '../abi/errno';
import { readCommand, writeReturnFlags } from '../abi/command';
import { Specs } from '../abi/commands';
import { putBigU64, putU64 } from '../abi/words';
import type { CallContext } from './caller';
import type { Connection } from './connection';
import type { PoolExtent } from './pool';
import type { QueueEntry } from './queue';
import { flushNotifications, notifyReply } from './notify';

/**
 * Puts the entry's fds and memfds into the receiver and writes their numbers into the
 * slice; returns INCOMPLETE_FDS when some could not be installed (written as -1). The
 * final kdbus code installs on PEEK too, and into monitors, so this does as well.
 */
export function installEntry(entry: QueueEntry, ctx: CallContext): bigint {
  const gaps = entry.gaps;
  if (!gaps || (gaps.fds.length === 0 && gaps.memfds.length === 0)) return 0n;
  const numbers = ctx.installer.install([...gaps.fds, ...gaps.memfds]);
  let incomplete = false;
  if (gaps.fds.length > 0) {
    const b = Buffer.allocUnsafe(gaps.fds.length * 4);
    for (let i = 0; i < gaps.fds.length; i++) {
      const n = numbers[i] ?? -1;
      if (n < 0) incomplete = true;
      b.writeInt32LE(n, i * 4);
    }
    entry.slice.write(gaps.fdOffset, b);
  }
  for (let i = 0; i < gaps.memfds.length; i++) {
    const n = numbers[gaps.fds.length + i] ?? -1;
    if (n < 0) {
      incomplete = true;
      continue;
    }
    const b = Buffer.allocUnsafe(4);
    b.writeInt32LE(n, 0);
    entry.slice.write(gaps.memfdOffsets[i]!, b);
  }
  return incomplete ? RecvReturn.INCOMPLETE_FDS : 0n;
}

/** What a RECV reports in kdbus_cmd_recv: dropped_msgs and the msg fields. */
export interface RecvResult {
  /** Messages the connection lost since the last RECV; the count starts again from 0. */
  dropped: number;
  /** The received slice; the pool size and 0 when there is none (EAGAIN, DROP). */
  offset: number;
  size: number;
  /** msg.return_flags: RecvReturn.INCOMPLETE_FDS when files could not all be installed. */
  msgFlags: bigint;
}

const DROPPED_MSGS_OFFSET = BigInt(Off.recv.dropped_msgs);

/**
 * Hands a queued entry to its receiver: the slice published (the receiver FREEs it), the
 * entry off the queue. Its files, if any, must have been installed first.
 */
export function takeEntry(conn: Connection, entry: QueueEntry): PoolExtent {
  const pub = entry.slice.publish();
  conn.queue.remove(entry);
  entry.dispose();
  return pub;
}

function checkReceiver(conn: Connection): void {
  if (!conn.isOrdinary && !conn.isMonitor && !conn.isActivator) {
    throw fail('EOPNOTSUPP', 'policy holders cannot receive');
  }
}

/**
 * RECV once its struct is read (kdbus_cmd_recv): takes, peeks at or drops the next entry
 * and fills `out`. Returns false when there is no entry, where RECV fails with EAGAIN
 * after writing its fields all the same.
 */
function receive(conn: Connection, ctx: CallContext, flags: bigint, priority: bigint, out: RecvResult): boolean {
  if (flags & RecvFlags.DROP && flags & RecvFlags.USE_PRIORITY) {
    throw fail('EINVAL', 'RECV cannot combine DROP with USE_PRIORITY');
  }
  out.offset = conn.pool.size;
  out.size = 0;
  out.msgFlags = 0n;
  const entry = conn.queue.peek((flags & RecvFlags.USE_PRIORITY) !== 0n, priority);
  if (entry && flags & RecvFlags.DROP) {
    conn.queue.remove(entry);
    const t = entry.reply;
    if (t && t.linked) {
      t.replyDst.unlinkReply(t);
      if (t.sync) t.wakeup(Errno.EPIPE);
      else notifyReply(conn.bus, ItemType.REPLY_DEAD, t.replyDst.id, t.cookie);
    }
    entry.dispose();
    flushNotifications(conn.bus);
  } else if (entry) {
    out.msgFlags = installEntry(entry, ctx);
    const pub = flags & RecvFlags.PEEK ? entry.slice.publish() : takeEntry(conn, entry);
    out.offset = pub.offset;
    out.size = pub.size;
  }
  out.dropped = conn.lostCount;
  conn.lostCount = 0;
  return entry !== undefined;
}

export function cmdRecv(conn: Connection, ctx: CallContext, arg: bigint): void {
  checkReceiver(conn);
  const cmd = readCommand(ctx.mem, arg, Specs.RECV);
  if (cmd.negotiate) return;
  let returnFlags = 0n;
  try {
    const r: RecvResult = { dropped: 0, offset: 0, size: 0, msgFlags: 0n };
    const got = receive(conn, ctx, cmd.flags, cmd.buf.readBigInt64LE(Off.recv.priority), r);
    if (r.dropped > 0) returnFlags |= RecvReturn.DROPPED_MSGS;
    const out = Buffer.allocUnsafe(32);
    putU64(out, 0, r.dropped);
    putU64(out, 8, r.offset);
    putU64(out, 16, r.size);
    putBigU64(out, 24, r.msgFlags);
    ctx.mem.write(cmd.address + DROPPED_MSGS_OFFSET, out);
    if (!got) throw fail('EAGAIN', 'no message queued');
  } finally {
    writeReturnFlags(ctx.mem, cmd, returnFlags);
  }
}

/**
 * A plain RECV (no flags) for the daemon's own connections, which have no command struct
 * to parse nor caller memory to write back to: the same outcome as cmdRecv, the same
 * errors (ESHUTDOWN for a connection shut down), the fields in `out` instead of the
 * struct. Returns false where RECV fails with EAGAIN (`out` is filled all the same).
 */
export function recvNext(conn: Connection, ctx: CallContext, out: RecvResult): boolean {
  if (!conn.active) throw fail('ESHUTDOWN', `connection ${conn.id} is shut down`);
  checkReceiver(conn);
  return receive(conn, ctx, 0n, 0n, out);
}
