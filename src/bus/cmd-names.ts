/**
 * Name commands: NAME_ACQUIRE, NAME_RELEASE and LIST.
 */
import { ItemType, ListFlags, NameFlags, Off } from '../abi/constants';
import { fail } from '../abi/errno';
import { readCommand, writeReturnFlags } from '../abi/command';
import { Specs } from '../abi/commands';
import { itemString, ItemWriter } from '../abi/items';
import { isValidWellKnownName } from '../abi/names';
import type { CallContext } from './caller';
import type { Connection } from './connection';
import { NameExistsError } from './names';
import { applyNameChanges, flushNotifications } from './notify';

export function cmdNameAcquire(conn: Connection, ctx: CallContext, arg: bigint): void | Promise<void> {
  if (!conn.isOrdinary) throw fail('EOPNOTSUPP', 'only ordinary connections can own names');
  const cmd = readCommand(ctx.mem, arg, Specs.NAME_ACQUIRE);
  if (cmd.negotiate) return;
  let returnFlags = 0n;
  let pending: Promise<void> | undefined;
  const finish = (): void => {
    flushNotifications(conn.bus);
    writeReturnFlags(ctx.mem, cmd, returnFlags);
  };
  const keepFlags = (e: unknown): never => {
    if (e instanceof NameExistsError) returnFlags = e.returnFlags;
    throw e;
  };
  try {
    const name = itemString(cmd.get(ItemType.NAME)!);
    if (!isValidWellKnownName(name, false)) throw fail('EINVAL', `invalid name "${name}"`);
    if (!conn.canOwnName(ctx.creds, name)) throw fail('EPERM', `policy does not let uid ${ctx.creds.euid} own ${name}`);
    const bridge = conn.bus.bridge;
    if (bridge && !bridge.isOwn(conn)) {
      pending = bridge.acquireName(conn, name, cmd.flags).then((flags) => {
        returnFlags = flags;
      }, keepFlags).finally(finish);
      return pending;
    }
    try {
      returnFlags = acquireName(conn, name, cmd.flags);
    } catch (e) {
      keepFlags(e);
    }
  } finally {
    if (!pending) finish();
  }
}

/** The name registry's part of NAME_ACQUIRE, with its notifications queued; returns the return flags. */
export function acquireName(conn: Connection, name: string, flags: bigint): bigint {
  const r = conn.bus.names.acquire(conn, name, flags);
  applyNameChanges(conn.bus, r.changes);
  return r.returnFlags;
}

export function cmdNameRelease(conn: Connection, ctx: CallContext, arg: bigint): void {
  if (!conn.isOrdinary) throw fail('EOPNOTSUPP', 'only ordinary connections can own names');
  const cmd = readCommand(ctx.mem, arg, Specs.NAME_RELEASE);
  if (cmd.negotiate) return;
  try {
    const name = itemString(cmd.get(ItemType.NAME)!);
    applyNameChanges(conn.bus, conn.bus.names.release(conn, name));
    const bridge = conn.bus.bridge;
    if (bridge && !bridge.isOwn(conn)) bridge.nameReleased(conn, name);
  } finally {
    flushNotifications(conn.bus);
    writeReturnFlags(ctx.mem, cmd, 0n);
  }
}

/**
 * LIST: one kdbus_info per reported name record (with an OWNED_NAME item), or a bare one
 * per connection that had nothing else to report when UNIQUE is asked for. Monitors are
 * never listed; names the caller may not see are skipped.
 */
export function cmdList(conn: Connection, ctx: CallContext, arg: bigint): void {
  const cmd = readCommand(ctx.mem, arg, Specs.LIST);
  if (cmd.negotiate) return;
  try {
    const flags = cmd.flags;
    const w = new ItemWriter(1024);
    for (const c of conn.bus.connections.values()) {
      if (c.isMonitor) continue;
      let added = false;
      if (flags & (ListFlags.NAMES | ListFlags.ACTIVATORS | ListFlags.QUEUED)) {
        for (const r of conn.bus.names.records(c)) {
          if (r.flags & NameFlags.ACTIVATOR) {
            if (!(flags & ListFlags.ACTIVATORS)) continue;
          } else if (r.flags & NameFlags.IN_QUEUE) {
            if (!(flags & ListFlags.QUEUED)) continue;
          } else if (!(flags & ListFlags.NAMES)) continue;
          added = true;
          if (!conn.canSeeName(ctx.creds, r.name)) continue;
          const at = w.length;
          w.u64(0).u64(c.id).u64(c.helloFlags);
          const item = w.beginItem(ItemType.OWNED_NAME);
          w.u64(r.flags).bytes(Buffer.from(r.name + '\0', 'latin1'));
          w.endItem(item);
          w.patchU64(at, w.length - at);
        }
      }
      if (!added && flags & ListFlags.UNIQUE) w.u64(24).u64(c.id).u64(c.helloFlags);
    }
    let offset = BigInt(conn.pool.size);
    let size = 0n;
    if (w.length > 0) {
      const data = w.finish();
      const slice = conn.pool.alloc(data.length, false);
      slice.write(0, data);
      const pub = slice.publish();
      slice.releaseKernel();
      offset = BigInt(pub.offset);
      size = BigInt(pub.size);
    }
    const out = Buffer.allocUnsafe(16);
    out.writeBigUInt64LE(offset, 0);
    out.writeBigUInt64LE(size, 8);
    ctx.mem.write(cmd.address + BigInt(Off.list.offset), out);
  } finally {
    writeReturnFlags(ctx.mem, cmd, 0n);
  }
}
