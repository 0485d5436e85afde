/**
 * Connection housekeeping: UPDATE (attach masks, a holder's policy), BYEBYE, FREE, and the
 * match commands.
 */
import { ItemType, MatchFlags, Off } from '../abi/constants';
import { fail } from '../abi/errno';
import { readCommand, writeReturnFlags } from '../abi/command';
import { Specs } from '../abi/commands';
import { getU64 } from '../abi/words';
import type { CallContext } from './caller';
import type { Connection } from './connection';
import { parseMatchRules } from './match';
import { sanitizeAttachMask } from './metadata';
import { parsePolicyUpload } from './policy';
import { policyItems } from './cmd-make';

export function cmdUpdate(conn: Connection, ctx: CallContext, arg: bigint): void {
  const cmd = readCommand(ctx.mem, arg, Specs.UPDATE);
  if (cmd.negotiate) return;
  try {
    const sendItem = cmd.get(ItemType.ATTACH_FLAGS_SEND);
    const recvItem = cmd.get(ItemType.ATTACH_FLAGS_RECV);
    const hasPolicy = cmd.get(ItemType.NAME) !== undefined || cmd.get(ItemType.POLICY_ACCESS) !== undefined;
    let send: bigint | undefined;
    let recv: bigint | undefined;
    if (sendItem) {
      if (!conn.isOrdinary && !conn.isMonitor) throw fail('EOPNOTSUPP', 'only ordinary connections and monitors have a send attach mask');
      send = sanitizeAttachMask(sendItem.payload.readBigUInt64LE(0));
    }
    if (recvItem) {
      if (!conn.isOrdinary && !conn.isMonitor && !conn.isActivator) throw fail('EOPNOTSUPP', 'policy holders receive nothing');
      recv = sanitizeAttachMask(recvItem.payload.readBigUInt64LE(0));
    }
    if (hasPolicy && !conn.isPolicyHolder) throw fail('EOPNOTSUPP', 'only policy holders upload policy');
    if (hasPolicy) conn.bus.policy.set(conn, parsePolicyUpload(policyItems(cmd), { maxNames: 1 }));
    if (send !== undefined) conn.attachSend = send;
    if (recv !== undefined) conn.attachRecv = recv;
  } finally {
    writeReturnFlags(ctx.mem, cmd, 0n);
  }
}

export function cmdByebye(conn: Connection, ctx: CallContext, arg: bigint): void {
  if (!conn.isOrdinary) throw fail('EOPNOTSUPP', 'only ordinary connections say BYEBYE');
  const cmd = readCommand(ctx.mem, arg, Specs.BYEBYE);
  if (cmd.negotiate) return;
  try {
    if (!conn.disconnect(true)) throw fail('EBUSY', 'messages are still queued; receive them before BYEBYE');
  } finally {
    writeReturnFlags(ctx.mem, cmd, 0n);
  }
}

export function cmdFree(conn: Connection, ctx: CallContext, arg: bigint): void {
  if (!conn.isOrdinary && !conn.isMonitor && !conn.isActivator) throw fail('EOPNOTSUPP', 'policy holders have no pool to free');
  const cmd = readCommand(ctx.mem, arg, Specs.FREE);
  if (cmd.negotiate) return;
  try {
    // As a number: exact below 2^53, and anything above is outside every pool anyway.
    const offset = getU64(cmd.buf, Off.free.offset);
    if (offset > conn.pool.size) throw fail('ENXIO', `offset ${cmd.u64(Off.free.offset)} is outside the pool`);
    conn.pool.freeByOffset(offset);
  } finally {
    writeReturnFlags(ctx.mem, cmd, 0n);
  }
}

export function cmdMatchAdd(conn: Connection, ctx: CallContext, arg: bigint): void | Promise<void> {
  if (!conn.isOrdinary) throw fail('EOPNOTSUPP', 'only ordinary connections add matches');
  const cmd = readCommand(ctx.mem, arg, Specs.MATCH_ADD);
  if (cmd.negotiate) return;
  try {
    const rules = parseMatchRules(cmd.items, conn.bus.bloom.size);
    conn.bus.matches.add(conn, cmd.u64(Off.match.cookie), rules, (cmd.flags & MatchFlags.REPLACE) !== 0n, (bytes) => conn.holdMatchBytes(bytes));
  } finally {
    writeReturnFlags(ctx.mem, cmd, 0n);
  }
  const bridge = conn.bus.bridge;
  // Once MATCH_ADD returns, matching broadcasts reach the client: upstream's too.
  if (bridge && !bridge.isOwn(conn)) return bridge.matchesChanged(conn);
}

export function cmdMatchRemove(conn: Connection, ctx: CallContext, arg: bigint): void {
  if (!conn.isOrdinary) throw fail('EOPNOTSUPP', 'only ordinary connections remove matches');
  const cmd = readCommand(ctx.mem, arg, Specs.MATCH_REMOVE);
  if (cmd.negotiate) return;
  try {
    conn.bus.matches.remove(conn, cmd.u64(Off.match.cookie));
    conn.holdMatchBytes(conn.bus.matches.db(conn)?.bytes ?? 0);
  } finally {
    writeReturnFlags(ctx.mem, cmd, 0n);
  }
  const bridge = conn.bus.bridge;
  if (bridge && !bridge.isOwn(conn)) void bridge.matchesChanged(conn);
}
