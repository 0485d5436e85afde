/**
 * KDBUS_CMD_HELLO: turns an endpoint handle into a connection (ordinary, activator, policy
 * holder or monitor), in kdbus_conn_new's order of checks, and announces it with ID_ADD.
 */
import { HelloFlags, ItemType, Limits, Off } from '../abi/constants';
import { fail } from '../abi/errno';
import { readCommand, writeReturnFlags } from '../abi/command';
import { Specs } from '../abi/commands';
import { itemString, ItemWriter } from '../abi/items';
import { isValidWellKnownName } from '../abi/names';
import type { CallContext, Opener } from './caller';
import { Connection } from './connection';
import type { Endpoint } from './endpoint';
import { collectProcMetadata, fakeProcMetadata, PROC_ATTACH_MASK, sanitizeAttachMask } from './metadata';
import { namespaceView } from '../os/namespaces';
import { applyNameChanges, flushNotifications, notifyIdChange } from './notify';
import { parsePolicyUpload } from './policy';
import { Pool } from './pool';
import { QuotaTable } from './quota';
import { policyItems } from './cmd-make';
import { logger } from '../log/logger';

/** The largest pool kdbus-cuse hands out; quota arithmetic is 32-bit in kdbus. */
const MAX_POOL_SIZE = 0x1_0000_0000 - Limits.PAGE_SIZE;

export function cmdHello(ep: Endpoint, opener: Opener, ctx: CallContext, arg: bigint): Connection | undefined {
  const cmd = readCommand(ctx.mem, arg, Specs.HELLO);
  if (cmd.negotiate) return undefined;
  let conn: Connection | undefined;
  let charged: { connections: number } | undefined;
  try {
    const bus = ep.bus;
    const flags = cmd.flags;
    const poolSize = cmd.u64(Off.hello.pool_size);
    const nameItem = cmd.get(ItemType.NAME);
    const name = nameItem ? itemString(nameItem) : undefined;
    const credsItem = cmd.get(ItemType.CREDS);
    const pidsItem = cmd.get(ItemType.PIDS);
    const seclabelItem = cmd.get(ItemType.SECLABEL);
    const descItem = cmd.get(ItemType.CONN_DESCRIPTION);
    const isMonitor = (flags & HelloFlags.MONITOR) !== 0n;
    const isActivator = (flags & HelloFlags.ACTIVATOR) !== 0n;
    const isHolder = (flags & HelloFlags.POLICY_HOLDER) !== 0n;
    const owner = ep.isOwner(opener);

    if (poolSize === 0n || poolSize % BigInt(Limits.PAGE_SIZE) !== 0n) {
      throw fail('EINVAL', `pool_size ${poolSize} must be a non-zero multiple of ${Limits.PAGE_SIZE}`);
    }
    if (Number(isMonitor) + Number(isActivator) + Number(isHolder) > 1) {
      throw fail('EINVAL', 'a connection can be only one of monitor, activator and policy holder');
    }
    if (name !== undefined && !isActivator && !isHolder) throw fail('EINVAL', 'only activators and policy holders pass a NAME in HELLO');
    if (name === undefined && (isActivator || isHolder)) throw fail('EINVAL', 'activators and policy holders need a NAME item');
    if (name !== undefined && !isValidWellKnownName(name, true)) throw fail('EINVAL', `invalid name "${name}"`);
    if (isMonitor && !ep.isDefault) throw fail('EOPNOTSUPP', 'monitors can only connect to the default endpoint');
    if (!owner && (isActivator || isHolder || isMonitor)) {
      throw fail('EPERM', 'only the bus owner may create activators, policy holders and monitors');
    }
    if (!owner && (credsItem || pidsItem || seclabelItem)) throw fail('EPERM', 'only the bus owner may fake credentials');
    const attachSend = sanitizeAttachMask(cmd.u64(Off.hello.attach_flags_send));
    const attachRecv = sanitizeAttachMask(cmd.u64(Off.hello.attach_flags_recv));
    if (!ep.active || !bus.active) throw fail('ESHUTDOWN', `endpoint ${ep.path} is going away`);
    // kdbus numbers the connection before the steps that can still fail (pool, faked
    // metadata, the user's connection limit): a failed HELLO uses up an id.
    const id = bus.domain.nextId();
    if (poolSize > BigInt(MAX_POOL_SIZE)) throw fail('ENOMEM', `pool_size ${poolSize} exceeds the ${MAX_POOL_SIZE}-byte maximum`);

    const fakeMeta = credsItem || pidsItem || seclabelItem
      ? fakeProcMetadata({
        creds: credsItem?.payload,
        pids: pidsItem?.payload,
        seclabel: seclabelItem ? itemString(seclabelItem) : undefined,
      })
      : undefined;
    const meta = fakeMeta ? undefined : collectProcMetadata(ctx.pid, ctx.tid, PROC_ATTACH_MASK);
    const privileged = ep.isPrivileged(opener);
    const fakeUid = fakeMeta?.creds?.uid;
    const user = ep.user ?? bus.domain.user(privileged && fakeUid !== undefined && fakeUid !== 0xffffffff ? fakeUid : opener.creds.uid);
    user.chargeConnection();
    charged = user;

    const pool = new Pool((opener.poolStorage ?? bus.domain.poolStorage)(Number(poolSize)), bus.domain.poolBytes.account(opener.creds.uid));
    conn = new Connection({
      id,
      ep,
      helloFlags: flags,
      opener,
      user,
      attachSend,
      attachRecv,
      description: descItem ? itemString(descItem) : undefined,
      pool,
      quota: new QuotaTable(pool),
      meta,
      fakeMeta,
      pid: ctx.pid,
      view: namespaceView(opener.pid, ctx.pid),
    });

    const bloom = new ItemWriter(32).itemU64(ItemType.BLOOM_PARAMETER, BigInt(bus.bloom.size), bus.bloom.nHash).finish();
    const slice = pool.alloc(bloom.length, false);
    slice.write(0, bloom);
    const pub = slice.publish();
    slice.releaseKernel();

    conn.active = true;
    bus.connections.set(conn.id, conn);
    ep.connections.add(conn);
    if (isMonitor) bus.monitors.add(conn);
    else notifyIdChange(bus, ItemType.ID_ADD, conn.id, flags);
    if (isActivator) applyNameChanges(bus, bus.names.addActivator(conn, name!));
    // An activator's wildcard name is not refused: see policy.ts on kdbus's wildcard test.
    if (isActivator || isHolder) bus.policy.set(conn, parsePolicyUpload(policyItems(cmd), { maxNames: 1 }));

    // kdbus copies its whole kdbus_cmd_hello back, input fields as it read them included.
    const out = cmd.buf.subarray(0, Off.hello.items);
    out.writeBigUInt64LE(bus.flags, Off.hello.bus_flags);
    out.writeBigUInt64LE(conn.id, Off.hello.id);
    out.writeBigUInt64LE(BigInt(pub.offset), Off.hello.offset);
    out.writeBigUInt64LE(BigInt(pub.size), Off.hello.items_size);
    bus.id128.copy(out, Off.hello.id128);
    ctx.mem.write(cmd.address, out);
    logger.verbose(`${conn.label}: connected (flags 0x${flags.toString(16)}, pool ${poolSize})`);
    flushNotifications(bus);
    return conn;
  } catch (e) {
    if (conn?.active) conn.disconnect(false);
    else if (charged) charged.connections--;
    conn?.pool.close();
    throw e;
  } finally {
    writeReturnFlags(ctx.mem, cmd, 0n);
  }
}
