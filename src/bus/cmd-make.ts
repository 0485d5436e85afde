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

/** Runs a command body and writes return_flags back on every exit, as kdbus_args_clear does. */
export function withReturnFlags<T>(ctx: CallContext, cmd: ParsedCommand, body: () => T): T {
  try {
    return body();
  } finally {
    writeReturnFlags(ctx.mem, cmd, 0n);
  }
}

/** BUS_MAKE: returns the bus (the handle becomes its owner), or undefined after negotiation. */
export async function cmdBusMake(domain: Domain, ctx: CallContext, arg: bigint): Promise<Bus | undefined> {
  const cmd = readCommand(ctx.mem, arg, Specs.BUS_MAKE);
  if (cmd.negotiate) return undefined;
  let bus: Bus | undefined;
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
    await bus.addEndpointNodes(bus.defaultEndpoint);
    // As in kdbus_args_clear: a fault writing return_flags back fails the command, and the
    // catch below takes the bus down again instead of leaving it without an owner.
    writeReturnFlags(ctx.mem, cmd, 0n);
    logger.info(`bus ${name} created by uid ${ctx.creds.uid} (pid ${ctx.pid}), mode ${bus.defaultEndpoint.mode.toString(8)}`);
    return bus;
  } catch (e) {
    bus?.destroy();
    writeReturnFlags(ctx.mem, cmd, 0n);
    throw e;
  }
}

/** ENDPOINT_MAKE: only the bus owner, only on the default endpoint. */
export async function cmdEndpointMake(ep: Endpoint, opener: Opener, ctx: CallContext, arg: bigint): Promise<Endpoint | undefined> {
  if (!ep.isOwner(opener)) throw fail('EPERM', `only the owner of bus ${ep.bus.name} can create endpoints`);
  const cmd = readCommand(ctx.mem, arg, Specs.ENDPOINT_MAKE);
  if (cmd.negotiate) return undefined;
  let custom: Endpoint | undefined;
  try {
    const bus = ep.bus;
    const name = itemString(cmd.get(ItemType.MAKE_NAME)!);
    verifyUidPrefix(name, ctx.creds.euid, 'endpoint name');
    if (bus.endpoints.has(name)) throw fail('EEXIST', `endpoint ${name} exists on bus ${bus.name}`);
    if (!bus.active) throw fail('ESHUTDOWN', `bus ${bus.name} is going away`);
    custom = new Endpoint(bus, name, cmd.flags, ctx.creds.euid, ctx.creds.egid, false);
    bus.endpoints.set(name, custom);
    await bus.addEndpointNodes(custom);
    // A fault writing return_flags back fails the command and removes the endpoint (see BUS_MAKE).
    writeReturnFlags(ctx.mem, cmd, 0n);
    logger.info(`endpoint ${custom.path} created, mode ${custom.mode.toString(8)}`);
    return custom;
  } catch (e) {
    if (custom) ep.bus.removeEndpoint(custom);
    writeReturnFlags(ctx.mem, cmd, 0n);
    throw e;
  }
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
  withReturnFlags(ctx, cmd, () => {
    if (!ep.policy) throw fail('EBADFD', 'the default endpoint has no policy of its own');
    ep.policy.set(ep, parsePolicyUpload(policyItems(cmd)));
  });
}

