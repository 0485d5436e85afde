/**
 * Node-creating commands: BUS_MAKE on a control handle, ENDPOINT_MAKE on a bus owner's
 * endpoint handle, and ENDPOINT_UPDATE (the custom endpoint's policy).
 */
import { ItemType, Limits } from '../abi/constants';
import { fail } from '../abi/errno';
import { readCommand, writeReturnFlags, type ParsedCommand } from '../abi/command';
import { Specs } from '../abi/commands';
import { itemString } from '../abi/items';
import { verifyUidPrefix } from '../abi/names';
import { Bus } from './bus';
import type { CallContext, Opener } from './caller';
import type { Domain } from './domain';
import { Endpoint } from './endpoint';
import { collectProcMetadata, PROC_ATTACH_MASK, sanitizeAttachMask } from './metadata';
import { parsePolicyUpload, type PolicyItem } from './policy';
import { logger } from '../log/logger';

/**
 * The asynchronous tail of BUS_MAKE and ENDPOINT_MAKE: wait for the transports to show the
 * node, then write return_flags back. As in kdbus_args_clear, a fault on that write fails
 * the command, and `undo` takes the new object down instead of leaving it without an owner.
 */
async function completeMake<T>(ctx: CallContext, cmd: ParsedCommand, nodes: Promise<void>, made: T, undo: () => void): Promise<T> {
  try {
    await nodes;
    writeReturnFlags(ctx.mem, cmd, 0n);
    return made;
  } catch (e) {
    undo();
    writeReturnFlags(ctx.mem, cmd, 0n);
    throw e;
  }
}

/**
 * BUS_MAKE: resolves to the bus (the handle becomes its owner), or undefined after
 * negotiation. Reading and checking the command happen synchronously, so a transport can
 * fetch missing caller memory and run it again; only the wait for the node is asynchronous.
 */
export function cmdBusMake(domain: Domain, ctx: CallContext, arg: bigint): Promise<Bus | undefined> {
  const cmd = readCommand(ctx.mem, arg, Specs.BUS_MAKE);
  if (cmd.negotiate) return Promise.resolve(undefined);
  let bus: Bus;
  try {
    const name = itemString(cmd.get(ItemType.MAKE_NAME)!);
    const bloomItem = cmd.get(ItemType.BLOOM_PARAMETER)!;
    const bloomSize = bloomItem.payload.readBigUInt64LE(0);
    const nHash = bloomItem.payload.readBigUInt64LE(8);
    if (bloomSize < BigInt(Limits.BUS_BLOOM_MIN) || bloomSize > BigInt(Limits.BUS_BLOOM_MAX) || bloomSize % 8n !== 0n || nHash < 1n) {
      throw fail('EINVAL', `bloom size ${bloomSize} must be a multiple of 8 in [8, 4096] and n_hash ${nHash} at least 1`);
    }
    const attachItem = cmd.get(ItemType.ATTACH_FLAGS_SEND);
    const creatorMask = sanitizeAttachMask(attachItem ? attachItem.payload.readBigUInt64LE(0) : 0n);
    verifyUidPrefix(name, ctx.creds.euid, 'bus name');
    if (domain.buses.has(name)) throw fail('EEXIST', `bus ${name} exists`);
    const user = domain.user(ctx.creds.uid);
    user.chargeBus();
    bus = new Bus(
      domain, name, cmd.flags, { size: Number(bloomSize), nHash }, creatorMask,
      collectProcMetadata(ctx.pid, ctx.tid, PROC_ATTACH_MASK), ctx.creds.euid, ctx.creds.egid, user,
    );
    domain.buses.set(name, bus);
  } catch (e) {
    writeReturnFlags(ctx.mem, cmd, 0n);
    throw e;
  }
  return completeMake(ctx, cmd, bus.addEndpointNodes(bus.defaultEndpoint), bus, () => bus.destroy()).then((b) => {
    logger.info(`bus ${b.name} created by uid ${ctx.creds.uid} (pid ${ctx.pid}), mode ${b.defaultEndpoint.mode.toString(8)}`);
    return b;
  });
}

/** ENDPOINT_MAKE: only the bus owner, only on the default endpoint; synchronous up to the node wait. */
export function cmdEndpointMake(ep: Endpoint, opener: Opener, ctx: CallContext, arg: bigint): Promise<Endpoint | undefined> {
  if (!ep.isOwner(opener)) throw fail('EPERM', `only the owner of bus ${ep.bus.name} can create endpoints`);
  const cmd = readCommand(ctx.mem, arg, Specs.ENDPOINT_MAKE);
  if (cmd.negotiate) return Promise.resolve(undefined);
  const bus = ep.bus;
  let custom: Endpoint;
  try {
    const name = itemString(cmd.get(ItemType.MAKE_NAME)!);
    verifyUidPrefix(name, ctx.creds.euid, 'endpoint name');
    if (bus.endpoints.has(name)) throw fail('EEXIST', `endpoint ${name} exists on bus ${bus.name}`);
    if (!bus.active) throw fail('ESHUTDOWN', `bus ${bus.name} is going away`);
    custom = new Endpoint(bus, name, cmd.flags, ctx.creds.euid, ctx.creds.egid, false);
    bus.endpoints.set(name, custom);
  } catch (e) {
    writeReturnFlags(ctx.mem, cmd, 0n);
    throw e;
  }
  return completeMake(ctx, cmd, bus.addEndpointNodes(custom), custom, () => bus.removeEndpoint(custom)).then((c) => {
    logger.info(`endpoint ${c.path} created, mode ${c.mode.toString(8)}`);
    return c;
  });
}

/** The NAME / POLICY_ACCESS items of a command, in order, as policy upload input. */
export function policyItems(cmd: ParsedCommand): PolicyItem[] {
  const out: PolicyItem[] = [];
  for (const it of cmd.items) {
    if (it.type === ItemType.NAME) out.push({ kind: 'name', name: itemString(it) });
    else if (it.type === ItemType.POLICY_ACCESS) {
      out.push({
        kind: 'access',
        type: Number(it.payload.readBigUInt64LE(0)),
        access: Number(it.payload.readBigUInt64LE(8)),
        id: it.payload.readBigUInt64LE(16),
      });
    }
  }
  return out;
}

/** ENDPOINT_UPDATE: replaces the custom endpoint's whole policy (wildcards allowed). */
export function cmdEndpointUpdate(ep: Endpoint, ctx: CallContext, arg: bigint): void {
  const cmd = readCommand(ctx.mem, arg, Specs.ENDPOINT_UPDATE);
  if (cmd.negotiate) return;
  try {
    if (!ep.policy) throw fail('EBADFD', 'the default endpoint has no policy of its own');
    ep.policy.set(ep, parsePolicyUpload(policyItems(cmd)));
  } finally {
    writeReturnFlags(ctx.mem, cmd, 0n);
  }
}

