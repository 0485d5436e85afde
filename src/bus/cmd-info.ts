/**
 * CONN_INFO and BUS_CREATOR_INFO: a kdbus_info record with metadata items in the caller's
 * pool. What is revealed is what was asked for AND what the subject allowed.
 */
import { Attach, ItemType, Off } from '../abi/constants';
import { fail } from '../abi/errno';
import { readCommand, writeReturnFlags, type ParsedCommand } from '../abi/command';
import { Specs } from '../abi/commands';
import { itemString, ItemWriter } from '../abi/items';
import type { CallContext, Credentials } from './caller';
import type { Connection } from './connection';
import { encodeMetadata, sanitizeAttachMask, type MetadataParts } from './metadata';

function publishInfo(conn: Connection, ctx: CallContext, cmd: ParsedCommand, w: ItemWriter): void {
  w.patchU64(0, w.length);
  const data = w.finish();
  const slice = conn.pool.alloc(data.length, false);
  slice.write(0, data);
  const pub = slice.publish();
  slice.releaseKernel();
  const out = Buffer.allocUnsafe(16);
  out.writeBigUInt64LE(BigInt(pub.offset), 0);
  out.writeBigUInt64LE(BigInt(pub.size), 8);
  ctx.mem.write(cmd.address + BigInt(Off.info_cmd.offset), out);
}

export function cmdConnInfo(conn: Connection, ctx: CallContext, arg: bigint): void {
  const cmd = readCommand(ctx.mem, arg, Specs.CONN_INFO);
  if (cmd.negotiate) return;
  try {
    const nameItem = cmd.get(ItemType.NAME);
    const w = new ItemWriter(512);
    writeConnInfo(w, conn, ctx.creds, cmd.u64(Off.info_cmd.id), nameItem && itemString(nameItem), cmd.u64(Off.info_cmd.attach_flags));
    publishInfo(conn, ctx, cmd, w);
  } finally {
    writeReturnFlags(ctx.mem, cmd, 0n);
  }
}

/**
 * Appends the kdbus_info record CONN_INFO gives `conn`, asked by a caller with `creds`:
 * the connection with `id`, or the owner of `name` (which must then have `id`, unless that
 * is 0), with the metadata `attachFlags` asks for and the subject lets through. Fails as
 * CONN_INFO does (EINVAL, ESRCH, ENXIO). For the daemon's own connections, which need the
 * answer without a round trip through their pool.
 */
export function writeConnInfo(w: ItemWriter, conn: Connection, creds: Credentials, id: bigint, name: string | undefined, attachFlags: bigint): void {
  const bus = conn.bus;
  let mask = sanitizeAttachMask(attachFlags);
  let target: Connection | undefined;
  if (name !== undefined) {
    target = bus.names.ownerOf(name);
    if (!target || !conn.canSeeName(creds, name) || (id !== 0n && target.id !== id)) {
      throw fail('ESRCH', `no visible owner of ${name}${id !== 0n ? ` with id ${id}` : ''}`);
    }
  } else if (id > 0n) {
    target = bus.connection(id);
    if (!target || !conn.canSee(creds, target)) throw fail('ENXIO', `no visible connection with id ${id}`);
  } else {
    throw fail('EINVAL', 'CONN_INFO needs an id or a NAME item');
  }
  mask &= target.attachSend & ~Attach.TIMESTAMP;
  const start = w.length;
  w.u64(0).u64(target.id).u64(target.helloFlags);
  const parts: MetadataParts = { view: conn.view };
  const proc = target.fakeMeta ?? target.meta;
  if (proc) parts.proc = proc;
  if (mask & Attach.NAMES) parts.ownedNames = target.ownedNames();
  if (target.description !== undefined) parts.description = target.description;
  encodeMetadata(w, parts, mask);
  w.alignTo8();
  w.patchU64(start, w.length - start);
}

export function cmdBusCreatorInfo(conn: Connection, ctx: CallContext, arg: bigint): void {
  const cmd = readCommand(ctx.mem, arg, Specs.BUS_CREATOR_INFO);
  if (cmd.negotiate) return;
  try {
    const bus = conn.bus;
    const mask = sanitizeAttachMask(cmd.u64(Off.info_cmd.attach_flags)) & bus.creatorAttachMask;
    const w = new ItemWriter(512);
    w.u64(0).u64(bus.id).u64(bus.flags);
    w.string(ItemType.MAKE_NAME, bus.name);
    encodeMetadata(w, { proc: bus.creatorMeta, view: conn.view }, mask & ~(Attach.TIMESTAMP | Attach.NAMES | Attach.CONN_DESCRIPTION));
    w.alignTo8();
    publishInfo(conn, ctx, cmd, w);
  } finally {
    writeReturnFlags(ctx.mem, cmd, 0n);
  }
}
