/**
 * KDBUS_CMD_SEND: parse, examine and import the message, then route it as a broadcast, a
 * synchronous call, a unicast (call, signal or plain message) or a reply — in that order of
 * precedence, with the errnos kdbus gave in each case.
 */
import { ItemType, KDBUS_DST_ID_BROADCAST, KDBUS_DST_ID_NAME, MsgFlags, Off, SendFlags } from '../abi/constants';
import { Errno, fail, KdbusError } from '../abi/errno';
import { readCommand, writeReturnFlags, type ParsedCommand } from '../abi/command';
import { Specs } from '../abi/commands';
import { putBigU64, putU64 } from '../abi/words';
import type { CallContext, ImportedFile } from './caller';
import type { Connection } from './connection';
import { stageUserMessage, type Staging } from './message';
import { broadcast, eavesdrop, matchesUnicastSignal } from './broadcast';
import { flushNotifications } from './notify';
import type { ReplyTracker } from './reply';
import { installEntry } from './recv';
import { atDeadline, nowNs } from './deadline';

/** SEND's reply fields: offset and size of the reply's slice, its return_flags. */
interface ReplyFields {
  offset: number;
  size: number;
  flags: bigint;
}

const REPLY_OFFSET = BigInt(Off.send.reply);

interface Destination {
  dst: Connection;
  /** Registration number of the destination name; 0 when addressed by id. */
  nameId: bigint;
}

export function cmdSend(conn: Connection, ctx: CallContext, arg: bigint): void | Promise<void> {
  if (!conn.isOrdinary) throw fail('EOPNOTSUPP', 'only ordinary connections can send');
  const cmd = readCommand(ctx.mem, arg, Specs.SEND);
  const msgAddress = cmd.buf.readBigUInt64LE(Off.send.msg_address);
  if (cmd.negotiate && msgAddress === 0n) return;

  let staging: Staging | undefined;
  let cancel: ImportedFile | undefined;
  let pending: Promise<void> | undefined;
  /** What every exit does, now or when a synchronous wait ends: kdbus_cmd_send's exit path. */
  const cleanup = (): void => {
    cancel?.close();
    staging?.gaps?.unref();
    staging?.release();
    flushNotifications(conn.bus);
    writeReturnFlags(ctx.mem, cmd, 0n);
  };
  try {
    const msg = readCommand(ctx.mem, msgAddress, Specs.MSG);
    if (msg.negotiate && !cmd.negotiate) throw fail('EINVAL', 'a message asks for negotiation but the send command does not');
    if (cmd.negotiate) return;

    const reply: ReplyFields = { offset: conn.pool.size, size: 0, flags: 0n };
    const cancelItem = cmd.get(ItemType.CANCEL_FD);
    if (cancelItem) {
      cancel = ctx.files.get(cancelItem.payload.readInt32LE(0));
      if (!cancel.pollable) throw fail('EINVAL', 'the cancel fd does not support poll');
    }
    const srcId = msg.buf.readBigUInt64LE(Off.msg.src_id);
    if (srcId !== 0n && srcId !== conn.id) throw fail('EINVAL', `src_id ${srcId} is not the sender's id ${conn.id}`);

    staging = stageUserMessage(conn.bus, conn, cmd.flags, msg, ctx);
    if (staging.dstId === KDBUS_DST_ID_BROADCAST) {
      broadcast(conn.bus, staging);
    } else if (cmd.flags & SendFlags.SYNC_REPLY) {
      const tracker = startCall(conn, staging, ctx);
      countSent(conn, staging);
      // Delivered: the payload's buffer need not wait for the reply.
      staging.release();
      pending = waitReply(conn, tracker, ctx, cancel)
        .then((r) => writeReply(ctx, cmd, r))
        .finally(cleanup);
      return pending;
    } else if (staging.flags & MsgFlags.EXPECT_REPLY || staging.timeoutOrReply === 0n) {
      unicast(conn, staging, ctx);
    } else {
      sendReply(conn, staging);
    }
    countSent(conn, staging);
    writeReply(ctx, cmd, reply);
  } finally {
    if (!pending) cleanup();
  }
}

function countSent(conn: Connection, staging: Staging): void {
  conn.counters.sent++;
  conn.counters.sentBytes += staging.payload.length;
}

function writeReply(ctx: CallContext, cmd: ParsedCommand, r: ReplyFields): void {
  const b = Buffer.allocUnsafe(24);
  putU64(b, 0, r.offset);
  putU64(b, 8, r.size);
  putBigU64(b, 16, r.flags);
  ctx.mem.write(cmd.address + REPLY_OFFSET, b);
}

/** Resolves the destination by id or by well-known name (kdbus_pin_dst). */
function pinDestination(conn: Connection, staging: Staging): Destination {
  const bus = conn.bus;
  if (staging.dstName === undefined) {
    const dst = bus.connection(staging.dstId);
    if (!dst || !dst.isOrdinary) throw fail('ENXIO', `no connection with id ${staging.dstId}`);
    return { dst, nameId: 0n };
  }
  const owner = bus.names.ownerOf(staging.dstName);
  if (!owner) {
    const upstream = staging.flags & MsgFlags.NO_AUTO_START ? undefined : bus.bridge?.unownedName(staging.dstName);
    if (upstream) return { dst: upstream, nameId: 0n };
    throw fail('ESRCH', `name ${staging.dstName} has no owner`);
  }
  if (staging.dstId !== KDBUS_DST_ID_NAME && staging.dstId !== owner.id) {
    throw fail('EREMCHG', `name ${staging.dstName} is owned by ${owner.id}, not ${staging.dstId}`);
  }
  if (staging.flags & MsgFlags.NO_AUTO_START && owner.isActivator) {
    throw fail('EADDRNOTAVAIL', `name ${staging.dstName} is only held by an activator and NO_AUTO_START is set`);
  }
  return { dst: owner, nameId: bus.names.nameId(staging.dstName) ?? 0n };
}

function unicast(conn: Connection, staging: Staging, ctx: CallContext): void {
  const bus = conn.bus;
  const { dst, nameId } = pinDestination(conn, staging);
  if (staging.isSignal) {
    eavesdrop(bus, staging);
    if (!matchesUnicastSignal(bus, dst, staging) || !dst.canTalkTo(dst.cred, conn)) return;
    try {
      dst.deliver(staging, undefined, nameId);
    } catch (e) {
      if (!(e instanceof KdbusError)) throw e;
    }
    return;
  }
  if (!conn.canTalkTo(ctx.creds, dst)) throw fail('EPERM', `policy does not let ${conn.id} talk to ${dst.id}`);
  let tracker: ReplyTracker | undefined;
  if (staging.flags & MsgFlags.EXPECT_REPLY) {
    tracker = conn.newReplyTracker(dst, staging.cookie, nameId, staging.timeoutOrReply, false);
  }
  try {
    eavesdrop(bus, staging);
    dst.deliver(staging, tracker, nameId);
  } finally {
    tracker?.unref();
  }
}

function sendReply(conn: Connection, staging: Staging): void {
  const { dst, nameId } = pinDestination(conn, staging);
  const tracker = dst.findReply(staging.timeoutOrReply, conn);
  if (!tracker) throw fail('EBADSLT', `${dst.id} expects no reply with cookie ${staging.timeoutOrReply} from ${conn.id}`);
  const sync = tracker.sync;
  if (sync) tracker.ref();
  dst.unlinkReply(tracker);
  eavesdrop(conn.bus, staging);
  try {
    if (sync) dst.deliverSyncReply(staging, tracker);
    else dst.deliver(staging, undefined, nameId);
  } finally {
    if (sync) tracker.unref();
  }
}

/** The sending half of a synchronous call (kdbus_conn_call); resumes an interrupted wait. */
function startCall(conn: Connection, staging: Staging, ctx: CallContext): ReplyTracker {
  const resumed = conn.findReply(staging.cookie, undefined);
  if (resumed && resumed.interrupted) {
    resumed.interrupted = false;
    return resumed.ref();
  }
  if (nowNs() >= staging.timeoutOrReply) throw fail('ETIMEDOUT', 'the call timed out before it was sent');
  const { dst, nameId } = pinDestination(conn, staging);
  if (!conn.canTalkTo(ctx.creds, dst)) throw fail('EPERM', `policy does not let ${conn.id} talk to ${dst.id}`);
  const tracker = conn.newReplyTracker(dst, staging.cookie, nameId, staging.timeoutOrReply, true);
  try {
    eavesdrop(conn.bus, staging);
    dst.deliver(staging, tracker, nameId);
  } catch (e) {
    tracker.unref();
    throw e;
  }
  return tracker;
}

/**
 * The blocking half (kdbus_conn_wait_reply), as a promise: nothing else waits while it is
 * pending. Ends on the reply, the callee's death (EPIPE), the caller's own shutdown
 * (ESHUTDOWN), the cancel fd (ECANCELED), an interrupt (EINTR, resumable) or the deadline.
 */
function waitReply(conn: Connection, t: ReplyTracker, ctx: CallContext, cancel: ImportedFile | undefined): Promise<ReplyFields> {
  return new Promise((resolve, reject) => {
    let done = false;
    const cleanups: Array<() => void> = [];
    const finish = (err: number, message: string): void => {
      if (done) return;
      done = true;
      for (const c of cleanups) c();
      t.wake = undefined;
      if (err === Errno.EINTR) {
        t.interrupted = true;
        conn.scheduleReplyScan(t.deadlineNs);
        t.unref();
        reject(fail('EINTR', message));
        return;
      }
      t.waiting = false;
      const result: ReplyFields = { offset: conn.pool.size, size: 0, flags: 0n };
      let error: KdbusError | undefined = err ? new KdbusError(err, message) : undefined;
      const entry = t.entry;
      if (entry) {
        t.entry = undefined;
        try {
          result.flags = installEntry(entry, ctx);
          const pub = entry.slice.publish();
          result.offset = pub.offset;
          result.size = pub.size;
        } catch (e) {
          if (!(e instanceof KdbusError)) throw e;
          error = e;
        }
        entry.dispose();
      }
      conn.unlinkReply(t);
      t.unref();
      if (error) reject(error);
      else resolve(result);
    };
    const check = (): void => {
      if (!conn.active) finish(Errno.ESHUTDOWN, 'the calling connection was shut down while waiting');
      else if (!t.waiting) finish(t.err, t.err === Errno.EPIPE ? 'the peer went away before replying' : 'the reply could not be delivered');
    };
    t.wake = check;
    const removeWake = conn.onWake(check);
    cleanups.push(removeWake);
    if (cancel) cleanups.push(cancel.onReadable(() => finish(Errno.ECANCELED, 'the call was cancelled through its cancel fd')));
    cleanups.push(atDeadline(t.deadlineNs, () => finish(Errno.ETIMEDOUT, 'no reply before the deadline')));
    if (ctx.signal) {
      const onAbort = (): void => finish(Errno.EINTR, 'interrupted by a signal');
      if (ctx.signal.aborted) onAbort();
      else {
        ctx.signal.addEventListener('abort', onAbort, { once: true });
        cleanups.push(() => ctx.signal!.removeEventListener('abort', onAbort));
      }
    }
    check();
  });
}
