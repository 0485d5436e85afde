/**
 * Kernel notifications: queued on the bus while a command runs and delivered before the
 * command returns (kdbus clients do a non-blocking RECV right after HELLO, close() or a
 * name change and expect to find them).
 */
import { ALIGN8, HelloFlags, ItemType, KDBUS_DST_ID_BROADCAST } from '../abi/constants';
import type { Bus } from './bus';
import type { Connection } from './connection';
import { stageNotification } from './message';
import type { NameChange } from './names';
import { broadcast, eavesdrop } from './broadcast';

export function notifyIdChange(bus: Bus, type: ItemType.ID_ADD | ItemType.ID_REMOVE, id: bigint, flags: bigint): void {
  const p = Buffer.alloc(16);
  p.writeBigUInt64LE(id, 0);
  p.writeBigUInt64LE(flags, 8);
  bus.pendingNotifications.push(stageNotification(bus, KDBUS_DST_ID_BROADCAST, 0n, type, p));
}

export function notifyNameChange(
  bus: Bus,
  type: ItemType.NAME_ADD | ItemType.NAME_REMOVE | ItemType.NAME_CHANGE,
  oldId: bigint, oldFlags: bigint, newId: bigint, newFlags: bigint, name: string,
): void {
  const nameLen = Buffer.byteLength(name, 'latin1') + 1;
  const p = Buffer.alloc(ALIGN8(32 + nameLen));
  p.writeBigUInt64LE(oldId, 0);
  p.writeBigUInt64LE(oldFlags, 8);
  p.writeBigUInt64LE(newId, 16);
  p.writeBigUInt64LE(newFlags, 24);
  p.write(name, 32, 'latin1');
  bus.pendingNotifications.push(stageNotification(bus, KDBUS_DST_ID_BROADCAST, 0n, type, p.subarray(0, 32 + nameLen)));
}

export function notifyReply(bus: Bus, type: ItemType.REPLY_TIMEOUT | ItemType.REPLY_DEAD, dstId: bigint, cookie: bigint): void {
  bus.pendingNotifications.push(stageNotification(bus, dstId, cookie, type, Buffer.alloc(0)));
}

/** Turns name registry changes into notifications and activator message hand-over. */
export function applyNameChanges(bus: Bus, changes: readonly NameChange<Connection>[]): void {
  for (const c of changes) {
    const oldId = c.old?.owner.id ?? 0n;
    const newId = c.new?.owner.id ?? 0n;
    const oldFlags = c.old?.flags ?? 0n;
    const newFlags = c.new?.flags ?? 0n;
    if (c.kind === 'add') notifyNameChange(bus, ItemType.NAME_ADD, oldId, oldFlags, newId, newFlags, c.name);
    else if (c.kind === 'remove') notifyNameChange(bus, ItemType.NAME_REMOVE, oldId, oldFlags, newId, newFlags, c.name);
    else {
      if (c.moveMessages && c.old && c.new) moveMessages(c.old.owner, c.new.owner, c.nameId);
      notifyNameChange(bus, ItemType.NAME_CHANGE, oldId, oldFlags, newId, newFlags, c.name);
    }
  }
}

/**
 * Moves the messages queued for one name (and the callers' trackers expecting the answer)
 * between an activator and the connection that takes the name over, or back. An entry
 * announced to the shim stays: the program may hold it already (QueueEntry.announced).
 */
export function moveMessages(from: Connection, to: Connection, nameId: bigint): void {
  for (const t of [...from.pendingCalls]) {
    if (nameId > 0n && t.nameId !== nameId) continue;
    from.pendingCalls.delete(t);
    t.replySrc = to;
    to.pendingCalls.add(t);
  }
  for (const e of from.queue.entries()) {
    if ((nameId > 0n && e.dstNameId !== nameId) || e.announced) continue;
    from.queue.remove(e);
    if (!to.active || (!(to.helloFlags & HelloFlags.ACCEPT_FD) && e.nFds > 0)) {
      e.dispose();
      to.lostMessage();
      continue;
    }
    try {
      const charge = to.quota.charge(e.charge.user, e.slice.size, e.nFds);
      let slice;
      try {
        slice = to.pool.alloc(e.slice.size, true);
      } catch (err) {
        charge.release();
        throw err;
      }
      slice.write(0, e.slice.read(0, e.slice.size));
      e.charge.release();
      e.slice.releaseKernel();
      e.slice = slice;
      e.charge = charge;
      to.queue.push(e);
    } catch {
      e.dispose();
      to.lostMessage();
    }
  }
  to.wake();
}

export function flushNotifications(bus: Bus): void {
  const list = bus.pendingNotifications;
  while (list.length > 0) {
    const staging = list.shift()!;
    if (staging.dstId !== KDBUS_DST_ID_BROADCAST) {
      const conn = bus.connection(staging.dstId);
      if (conn) {
        eavesdrop(bus, staging);
        try {
          conn.deliver(staging);
        } catch {
          // kdbus ignores a failed unicast notification: the caller finds out by its own timeout.
        }
      }
    } else {
      broadcast(bus, staging);
    }
  }
}
