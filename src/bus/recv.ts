/**
 * KDBUS_CMD_RECV and the installation of a message's files into the receiving process.
 */
import { ItemType, Off, RecvFlags, RecvReturn } from '../abi/constants';
import { Errno, fail, KdbusError } from '../abi/errno';
import { readCommand, writeReturnFlags } from '../abi/command';
import { Specs } from '../abi/commands';
import type { CallContext } from './caller';
import type { Connection } from './connection';
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

export function cmdRecv(conn: Connection, ctx: CallContext, arg: bigint): void {
  if (!conn.isOrdinary && !conn.isMonitor && !conn.isActivator) {
    throw fail('EOPNOTSUPP', 'policy holders cannot receive');
  }
  const cmd = readCommand(ctx.mem, arg, Specs.RECV);
  if (cmd.negotiate) return;
  let returnFlags = 0n;
  try {
    const flags = cmd.flags;
    let msgFlags = 0n;
    let offset = BigInt(conn.pool.size);
    let size = 0n;
    if (flags & RecvFlags.DROP && flags & RecvFlags.USE_PRIORITY) {
      throw fail('EINVAL', 'RECV cannot combine DROP with USE_PRIORITY');
    }
    const entry = conn.queue.peek((flags & RecvFlags.USE_PRIORITY) !== 0n, cmd.buf.readBigInt64LE(Off.recv.priority));
    let error: KdbusError | undefined;
    if (!entry) {
      error = fail('EAGAIN', 'no message queued');
    } else if (flags & RecvFlags.DROP) {
      conn.queue.remove(entry);
      const t = entry.reply;
      if (t && t.linked) {
        t.replyDst.unlinkReply(t);
        if (t.sync) t.wakeup(Errno.EPIPE);
        else notifyReply(conn.bus, ItemType.REPLY_DEAD, t.replyDst.id, t.cookie);
      }
      entry.dispose();
      flushNotifications(conn.bus);
    } else {
      msgFlags = installEntry(entry, ctx);
      const pub = entry.slice.publish();
      offset = BigInt(pub.offset);
      size = BigInt(pub.size);
      if (!(flags & RecvFlags.PEEK)) {
        conn.queue.remove(entry);
        entry.dispose();
      }
    }
    const dropped = BigInt(conn.lostCount);
    conn.lostCount = 0;
    if (dropped > 0n) returnFlags |= RecvReturn.DROPPED_MSGS;
    const out = Buffer.allocUnsafe(32);
    out.writeBigUInt64LE(dropped, 0);
    out.writeBigUInt64LE(offset, 8);
    out.writeBigUInt64LE(size, 16);
    out.writeBigUInt64LE(msgFlags, 24);
    ctx.mem.write(cmd.address + BigInt(Off.recv.dropped_msgs), out);
    if (error) throw error;
  } finally {
    writeReturnFlags(ctx.mem, cmd, returnFlags);
  }
}
