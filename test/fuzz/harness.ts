/**
 * The fuzz run: worlds (world.ts) one after another, each set up like a real system (bus,
 * custom endpoint, policy holders, activators, monitor, peers with matches and names), then
 * driven with fuzz inputs — random bytes, structs built as clients build them, and those
 * mutated — at every ioctl on every role, valid traffic that answers calls, receives and
 * calls again, rare floods into the bus's limits, and client-side chaos (cancel fds written,
 * syscalls interrupted and restarted, handles closed, the bus owner gone); then torn down
 * and checked for leaks. Time is virtual (virtual-clock.ts), so a seed replays exactly.
 */
import {
  Attach, Cmd, type CmdName, HelloFlags, ItemType, MakeFlags, MsgFlags, NameFlags, Off, PolicyAccess, PolicyAccessType, U64_MAX,
} from '../../src/abi/constants';
import { Errno, errnoName } from '../../src/abi/errno';
import { ItemWriter } from '../../src/abi/items';
import type { Connection } from '../../src/bus/connection';
import type { KdbusNode } from '../../src/bus/handle';
import { Interruption } from '../../src/bus/interruption';
import { credsOf } from '../helpers/kdbus-client';
import type { HandleRole } from './errno-oracle';
import {
  buildHello, buildMsg, cmdStruct, COMMANDS, fixedSizeOf, genMessage, itemSpans, genRandom, genRecv, genSend, genValid, mutate,
  mutateVecs, Rng,
} from './generators';
import { VirtualClock } from './virtual-clock';
import {
  type Actor, type CallRecord, FuzzFailure, type InputMode, OTHER_UID, type Outcome, type Placement, ROOT, type RunContext,
  settleSoon, World,
} from './world';

export interface FuzzConfig {
  seed: number;
  /** Fuzz inputs (random, valid or mutated structs) to throw; valid background traffic comes on top. */
  iterations: number;
  /** Inputs per world; each world ends with teardown and the leak checks. */
  iterationsPerWorld?: number;
}

export interface FuzzReport {
  seed: number;
  iterations: number;
  /** Extra valid calls made to drive the bus (replies, receives, calls). */
  traffic: number;
  worlds: number;
  elapsedMs: number;
  modes: Record<InputMode, number>;
  /** Calls per "role/command" ("connected:monitor/SEND", "endpoint/UNKNOWN", ...). */
  coverage: Map<string, number>;
  /** Per command: errno name (or "OK") → count. */
  outcomes: Map<string, Map<string, number>>;
  syncCalls: number;
}

const PAGE = 4096n;
const MAX_ACTORS = 40;
/** Virtual time per input: calls with 1..40 ms deadlines end (answered or not) 20..800 inputs later. */
const STEP_NS = 50_000n;
/** Where the virtual clock starts: a fixed value keeps runs with the same seed identical. */
const CLOCK_START_NS = 1_000_000_000_000n;

/** What is thrown at a world: fuzz inputs, valid traffic, floods and the client's own chaos. */
class Fuzzer {
  constructor(
    private readonly world: World,
    private readonly run: Runner,
  ) {}

  /** One fuzz input at a random handle. */
  async fuzzOne(): Promise<void> {
    const rng = this.world.rng;
    const actor = this.pickActor();
    const role = actor.role;
    const cmdName = this.pickCommand(actor, role);
    const mode = rng.weighted<InputMode>([[15, 'random'], [35, 'valid'], [50, 'mutated']]);
    this.run.modes[mode]++;
    const gctx = this.world.genContext(actor);
    const cmd = cmdName === undefined ? this.unknownCommand() : Cmd[cmdName];
    const fixed = cmdName === undefined ? 24 : fixedSizeOf(cmdName);
    const mutations: string[] = [];
    const placement: Placement = mode === 'random'
      ? rng.weighted<Placement>([[95, 'normal'], [5, 'readonly']])
      : rng.weighted<Placement>([[86, 'normal'], [3, 'misaligned'], [3, 'readonly'], [2, 'unmapped'], [1, 'null'], [3, 'payload'], [2, 'racy']]);
    let abort: Interruption | undefined;

    let msg: Buffer | undefined;
    let msgAddress = 0n;
    let msgMapped = false;
    let struct: Buffer;
    if (cmdName === 'SEND') {
      let plan = { sync: false };
      if (mode === 'random') msg = genRandom(rng, 64);
      else {
        const g = genMessage(gctx);
        msg = g.msg;
        plan = g.plan;
        if (mode === 'mutated' && rng.chance(0.6)) {
          const [m, done] = mutate(rng, msg, fixedSizeOf('MSG'));
          msg = m;
          mutations.push(...done.map((d) => `msg:${d}`));
        }
        if (mode === 'mutated' && rng.chance(0.2)) mutations.push(...mutateVecs(rng, msg, [this.world.payload.address, 0n, this.world.mem.unmappedAddress(rng.int(8)), 0x7fff_ffff_f000n]));
      }
      const mp = mode === 'mutated' ? rng.weighted<string>([[85, 'normal'], [3, 'misaligned'], [3, 'readonly'], [3, 'unmapped'], [2, 'null'], [2, 'payload']]) : 'normal';
      if (mp === 'null') msgAddress = 0n;
      else if (mp === 'unmapped') msgAddress = this.world.mem.unmappedAddress(rng.int(64));
      else if (mp === 'payload') msgAddress = this.world.payload.address + BigInt(8 * rng.int(64));
      else {
        msgAddress = this.world.mem.map(msg, { misalign: mp === 'misaligned' ? rng.range(1, 7) : 0, readOnly: mp === 'readonly' });
        msgMapped = true;
      }
      if (mp !== 'normal') mutations.push(`msg@${mp}`);
      struct = mode === 'random' ? genRandom(rng, fixed) : genSend(gctx, msgAddress, plan);
      if (mode === 'random' && struct.length >= 32 && rng.chance(0.7)) struct.writeBigUInt64LE(msgAddress, Off.send.msg_address);
      if (plan.sync && rng.chance(0.3)) {
        abort = new Interruption();
        // A signal already pending when the call starts.
        if (rng.chance(0.05)) abort.abort();
      }
    } else if (mode === 'random' || cmdName === undefined) {
      struct = genRandom(rng, fixed);
    } else {
      struct = genValid(gctx, cmdName);
    }
    if (mode === 'mutated' && cmdName !== undefined && rng.chance(cmdName === 'SEND' ? 0.5 : 1)) {
      const [s, done] = mutate(rng, struct, fixed);
      struct = s;
      mutations.push(...done);
    }
    if (placement !== 'normal') mutations.push(`struct@${placement}`);
    const r: CallRecord = { actor, cmd, struct, placement, mode, mutations };
    if (msg) {
      r.msg = msg;
      r.msgAddress = msgAddress;
    }
    if (abort) r.abort = abort;
    if (rng.chance(0.03)) {
      r.creds = credsOf(r.actor.creds.euid === ROOT ? OTHER_UID : ROOT);
      mutations.push('setuid');
    }
    if (rng.chance(0.02)) {
      r.task = rng.pick([0x7ffffff0, 1, 0x3fffffff]);
      mutations.push(`task ${r.task}`);
    }
    if ((cmdName === 'BUS_MAKE' || cmdName === 'ENDPOINT_MAKE') && rng.chance(0.15)) this.raceSetup(r);
    await this.world.call(r);
    if (msgMapped) this.world.mem.unmap(msgAddress);
  }

  /** While a setup ioctl waits for its node, the client closes the handle or issues another ioctl on it. */
  raceSetup(r: CallRecord): void {
    const a = r.actor;
    if (this.world.rng.chance(0.3) && !a.core) {
      r.during = () => this.world.release(a);
      return;
    }
    const other = this.world.rng.pick(COMMANDS);
    const struct = other === 'SEND' ? genRandom(this.world.rng, fixedSizeOf('SEND')) : genValid(this.world.genContext(a), other);
    r.during = async () => {
      await this.world.call({ actor: a, cmd: Cmd[other], struct, placement: 'normal', mode: 'traffic', mutations: ['concurrent'], extraErrnos: [Errno.EBADFD] });
    };
  }

  pickActor(): Actor {
    const rng = this.world.rng;
    const byRole = (pred: (a: Actor) => boolean): Actor[] => this.world.actors.filter(pred);
    const pool = rng.weighted<() => Actor[]>([
      [60, () => byRole((a) => a.role === 'connected' && a.roleLabel === 'connected:ordinary')],
      [4, () => byRole((a) => a.roleLabel === 'connected:monitor')],
      [4, () => byRole((a) => a.roleLabel === 'connected:activator')],
      [4, () => byRole((a) => a.roleLabel === 'connected:policy-holder')],
      [10, () => byRole((a) => a.role === 'endpoint')],
      [6, () => byRole((a) => a.role === 'control')],
      [4, () => byRole((a) => a.role === 'bus-owner')],
      [5, () => byRole((a) => a.role === 'ep-owner')],
    ])();
    return pool.length ? rng.pick(pool) : rng.pick(this.world.actors);
  }

  /** Mostly commands that do something on the role, but every command on every role. */
  pickCommand(a: Actor, role: HandleRole): CmdName | undefined {
    const rng = this.world.rng;
    if (rng.chance(0.04)) return undefined;
    const own: CmdName[] = role === 'connected'
      ? ['SEND', 'SEND', 'SEND', 'SEND', 'RECV', 'RECV', 'RECV', 'FREE', 'FREE', 'NAME_ACQUIRE', 'NAME_ACQUIRE', 'NAME_RELEASE', 'MATCH_ADD',
        'MATCH_ADD', 'MATCH_REMOVE', 'LIST', 'CONN_INFO', 'CONN_INFO', 'BUS_CREATOR_INFO', 'UPDATE', 'UPDATE']
      : role === 'control' ? ['BUS_MAKE']
        : role === 'endpoint' ? ['HELLO', 'HELLO', 'HELLO', 'ENDPOINT_MAKE']
          : role === 'ep-owner' ? ['ENDPOINT_UPDATE'] : [];
    if (role === 'connected' && a.conn && rng.chance(0.002)) return 'BYEBYE';
    if (own.length && rng.chance(0.8)) return rng.pick(own);
    return rng.pick(COMMANDS);
  }

  unknownCommand(): number {
    const rng = this.world.rng;
    return rng.weighted<number>([
      [3, rng.next()],
      // Known nr with other direction or size bits (as other architectures encode them).
      [3, (Cmd[rng.pick(COMMANDS)] ^ (rng.chance(0.5) ? 0xc000_0000 : 0x0010_0000)) >>> 0],
      [2, (0x4018_9500 | rng.int(256)) >>> 0],
      [1, 0],
    ]);
  }

  /** The callee of a blocked call receives and answers it, so sync calls also succeed. */
  async serve(): Promise<boolean> {
    const calls = [...this.world.pending].filter((p) => p.record.msg && p.record.msg.length >= 64);
    if (!calls.length) return false;
    const msg = this.world.rng.pick(calls).record.msg!;
    let callee: Connection | undefined;
    const dstId = msg.readBigUInt64LE(Off.msg.dst_id);
    if (dstId !== 0n) callee = this.world.bus.connection(dstId);
    else {
      const item = itemSpans(msg, 64).find((it) => msg.readBigUInt64LE(it.offset + 8) === BigInt(ItemType.DST_NAME));
      if (item) callee = this.world.bus.names.ownerOf(msg.toString('latin1', item.offset + 16, item.offset + item.size - 1));
    }
    const actor = callee && this.world.conns.get(callee)?.actor;
    if (!actor || actor.released || !callee!.active || !callee!.isOrdinary) return false;
    this.run.traffic++;
    const recv = cmdStruct(0n, (w) => w.u64(0).u64(0).u64(0).u64(0).u64(0));
    await this.world.call({ actor, cmd: Cmd.RECV, struct: recv, placement: 'normal', mode: 'traffic', mutations: ['serve'] });
    const cookie = msg.readBigUInt64LE(Off.msg.cookie);
    const job = actor.toAnswer.find((t) => t.cookie === cookie);
    if (job) await this.sendMsg(actor, msgStruct(job.dst, 0n, job.cookie, (w) => w.itemU64(ItemType.PAYLOAD_VEC, 16n, this.world.payload.address)));
    return true;
  }

  /** Restarts an interrupted sync call: the same SEND again, resuming the wait. */
  async restart(r: CallRecord): Promise<void> {
    const msg = r.msg!;
    const msgAddress = this.world.mem.map(Buffer.from(msg));
    const struct = Buffer.from(r.struct);
    struct.writeBigUInt64LE(msgAddress, Off.send.msg_address);
    await this.world.call({ actor: r.actor, cmd: Cmd.SEND, struct, placement: 'normal', msg, msgAddress, mode: 'traffic', mutations: ['restart'] });
    this.world.mem.unmap(msgAddress);
  }

  /** Valid calls that keep the bus busy: answering calls, receiving, calling. */
  async traffic(): Promise<void> {
    const rng = this.world.rng;
    const restart = this.world.restarts.shift();
    if (restart && !restart.actor.released) return this.restart(restart);
    if (this.world.pending.size && rng.chance(0.5) && (await this.serve())) return;
    const ordinary = this.world.actors.filter((a) => a.roleLabel === 'connected:ordinary' && a.conn?.active);
    if (!ordinary.length) return;
    const answering = ordinary.filter((a) => a.toAnswer.length);
    const choice = rng.weighted<'reply' | 'recv' | 'send'>([[answering.length ? 5 : 0, 'reply'], [4, 'recv'], [3, 'send']]);
    this.run.traffic++;
    if (choice === 'recv') {
      const readers = this.world.actors.filter((a) => a.conn?.active && !a.conn.isPolicyHolder && !a.conn.queue.empty);
      const a = readers.length ? rng.pick(readers) : rng.pick(ordinary);
      await this.world.call({ actor: a, cmd: Cmd.RECV, struct: genRecv(this.world.genContext(a)), placement: 'normal', mode: 'traffic', mutations: [] });
      if (a.offsets.size > 24) {
        for (const off of [...a.offsets].slice(0, 12)) await this.world.free(a, off);
      }
      return;
    }
    const a = choice === 'reply' ? rng.pick(answering) : rng.pick(ordinary);
    const gctx = this.world.genContext(a);
    const { msg, plan } = genMessage(gctx);
    const msgAddress = this.world.mem.map(msg);
    const r: CallRecord = { actor: a, cmd: Cmd.SEND, struct: genSend(gctx, msgAddress, plan), placement: 'normal', msg, msgAddress, mode: 'traffic', mutations: [] };
    await this.world.call(r);
    this.world.mem.unmap(msgAddress);
  }

  /** A valid SEND of a message built by the caller; the message region lives for the call. */
  async sendMsg(a: Actor, msg: Buffer, sendFlags = 0n): Promise<Outcome> {
    const msgAddress = this.world.mem.map(msg);
    const struct = cmdStruct(sendFlags, (w) => w.u64(msgAddress).u64(0).u64(0).u64(0));
    const out = await this.world.call({ actor: a, cmd: Cmd.SEND, struct, placement: 'normal', msg, msgAddress, mode: 'traffic', mutations: [] });
    this.world.mem.unmap(msgAddress);
    return out;
  }

  /**
   * Rare floods that drive the bus into its limits: 256 names per connection, 128 pending
   * calls, the receiver's message and fd quotas and pool, 4096 matches, 16 fds per message.
   */
  async burst(): Promise<void> {
    const rng = this.world.rng;
    const ordinary = this.world.actors.filter((x) => x.roleLabel === 'connected:ordinary' && x.conn?.active);
    if (ordinary.length < 2) return;
    const a = rng.pick(ordinary);
    const b = rng.pick(ordinary.filter((x) => x !== a));
    const dst = b.conn!.id;
    const kind = rng.weighted<'names' | 'calls' | 'flood' | 'matches' | 'fds'>([[3, 'names'], [3, 'calls'], [3, 'flood'], [1, 'matches'], [3, 'fds']]);
    this.run.count('burst', kind);
    const call = (cmd: CmdName, struct: Buffer): Promise<Outcome> =>
      this.world.call({ actor: a, cmd: Cmd[cmd], struct, placement: 'normal', mode: 'traffic', mutations: ['burst'] });
    switch (kind) {
      case 'names':
        for (let i = 0; i < 270 && a.conn!.active; i++) {
          await call('NAME_ACQUIRE', cmdStruct(rng.chance(0.5) ? NameFlags.QUEUE : 0n, undefined, (w) => w.string(ItemType.NAME, `org.fuzz.burst.N${i}`)));
        }
        break;
      case 'calls': {
        const deadline = this.run.clock.now + BigInt(rng.range(20, 300)) * 1_000_000n;
        for (let i = 0; i < 132; i++) await this.sendMsg(a, msgStruct(dst, MsgFlags.EXPECT_REPLY, deadline, (w) => w.itemU64(ItemType.PAYLOAD_VEC, 8n, this.world.payload.address)));
        break;
      }
      case 'flood':
        for (let i = 0; i < 300; i++) {
          const len = rng.chance(0.9) ? 16 : rng.range(4096, 60000);
          await this.sendMsg(a, msgStruct(dst, 0n, 0n, (w) => w.itemU64(ItemType.PAYLOAD_VEC, BigInt(len), this.world.payload.address)));
        }
        break;
      case 'matches':
        for (let i = 0; i < 4100; i++) {
          const { errno } = await call('MATCH_ADD', cmdStruct(0n, (w) => w.u64(BigInt(100 + i)), (w) => w.itemU64(ItemType.ID, BigInt(1 + rng.int(4)))));
          if (errno) break;
        }
        for (let i = 0; i < 4100; i += rng.range(1, 50)) await call('MATCH_REMOVE', cmdStruct(0n, (w) => w.u64(BigInt(100 + i))));
        break;
      case 'fds': {
        const fdsItem = (n: number) => (w: ItemWriter): void => {
          const at = w.beginItem(ItemType.FDS);
          for (let i = 0; i < n; i++) w.i32(rng.pick(this.world.fds.plain));
          w.endItem(at);
        };
        await this.sendMsg(a, msgStruct(dst, 0n, 0n, fdsItem(17)));
        await this.sendMsg(a, msgStruct(dst, 0n, 0n, (w) => {
          for (let i = 0; i < 17; i++) {
            const at = w.beginItem(ItemType.PAYLOAD_MEMFD);
            w.u64(0).u64(8).i32(rng.pick(this.world.fds.memfd)).u32(0);
            w.endItem(at);
          }
        }));
        for (let i = 0; i < 4; i++) await this.sendMsg(a, msgStruct(dst, 0n, 0n, fdsItem(rng.range(5, 9))));
        break;
      }
    }
  }

  /** Random events of the client side: cancel fds written, syscalls interrupted, handles closed. */
  async chaos(): Promise<void> {
    const rng = this.world.rng;
    if (rng.chance(0.01)) rng.pick(this.world.cancelFiles).signal();
    if (rng.chance(0.05)) {
      const withAbort = [...this.world.pending].filter((p) => p.record.abort);
      if (withAbort.length) rng.pick(withAbort).record.abort!.abort();
    }
    this.world.files.failInstall = rng.chance(0.02);
    if (rng.chance(0.002)) {
      const victims = this.world.actors.filter((a) => !a.core);
      if (victims.length) this.world.release(rng.pick(victims));
    }
    // Rarely the bus owner goes while everything is in flight; the world ends there.
    if (rng.chance(0.0003)) this.world.release(this.world.actors.find((a) => a.core)!);
    await this.housekeeping();
  }

  /** Keeps fresh handles of every kind and a few ordinary peers around, and the number of open handles bounded. */
  async housekeeping(): Promise<void> {
    const rng = this.world.rng;
    const count = (pred: (a: Actor) => boolean): number => this.world.actors.filter(pred).length;
    if (!this.world.bus.active) return;
    if (count((a) => a.role === 'control') === 0) this.world.open({ kind: 'control', domain: this.world.domain }, credsOf(ROOT), 'control');
    if (this.world.bus.active && count((a) => a.role === 'endpoint') < 3) {
      this.world.open({ kind: 'endpoint', ep: this.world.bus.defaultEndpoint }, credsOf(rng.chance(0.5) ? ROOT : OTHER_UID), 'endpoint');
      const custom = [...this.world.endpoints].filter((ep) => ep.active && !ep.isDefault);
      if (custom.length) this.world.open({ kind: 'endpoint', ep: rng.pick(custom) }, credsOf(rng.chance(0.5) ? ROOT : OTHER_UID), 'custom-endpoint');
    }
    if (this.world.bus.active && count((a) => a.roleLabel === 'connected:ordinary' && a.conn!.active) < 4) {
      const a = this.world.open({ kind: 'endpoint', ep: this.world.bus.defaultEndpoint }, credsOf(rng.chance(0.7) ? ROOT : OTHER_UID), 'peer');
      if (a) await this.world.call({ actor: a, cmd: Cmd.HELLO, struct: helloStruct(HelloFlags.ACCEPT_FD, BigInt(rng.range(1, 512))), placement: 'normal', mode: 'traffic', mutations: [] });
    }
    while (this.world.actors.length > MAX_ACTORS) {
      const dead = this.world.actors.filter((a) => !a.core && a.conn && !a.conn.active);
      const extraOwners = this.world.actors.filter((a) => !a.core && a.role === 'bus-owner');
      const victims = dead.length ? dead : extraOwners.length > 2 ? extraOwners : this.world.actors.filter((a) => !a.core);
      this.world.release(rng.pick(victims));
    }
  }
}

// --- world setup ------------------------------------------------------------------------------

/** Cookies of the harness's own messages, apart from the generators' (which stay below 2^20). */
let msgCookie = 1n << 40n;

/** A kdbus_msg to `dst` with the next harness cookie. */
function msgStruct(dst: bigint, flags: bigint, timeoutOrReply: bigint, items?: (w: ItemWriter) => void): Buffer {
  return buildMsg(dst, flags, ++msgCookie, timeoutOrReply, items);
}

function helloStruct(flags: bigint, poolPages: bigint, items?: (w: ItemWriter) => void): Buffer {
  return buildHello(flags, poolPages * PAGE, Attach.ALL, items);
}

const worldTalk = (w: ItemWriter, name: string, access: PolicyAccess): void => {
  w.string(ItemType.NAME, name);
  w.itemU64(ItemType.POLICY_ACCESS, BigInt(PolicyAccessType.WORLD), BigInt(access), 0n);
};

async function setupWorld(world: World): Promise<void> {
  const rng = world.rng;
  const must = async (a: Actor | undefined, cmd: CmdName, struct: Buffer): Promise<Actor> => {
    if (!a) throw new Error(`setup: no handle for ${cmd}`);
    const { errno } = await world.call({ actor: a, cmd: Cmd[cmd], struct, placement: 'normal', mode: 'setup', mutations: [] });
    if (errno !== 0) throw new Error(`setup: ${cmd} on ${a.label} failed with ${errnoName(errno)}`);
    return a;
  };
  const root = credsOf(ROOT);
  const other = credsOf(OTHER_UID);

  world.bloomSize = rng.pick([8, 16, 32, 64, 128]);
  const busName = `${ROOT}-fuzz-main`;
  const owner = await must(world.open({ kind: 'control', domain: world.domain }, root, 'bus-owner'), 'BUS_MAKE', cmdStruct(MakeFlags.ACCESS_WORLD, undefined, (w) => {
    w.itemU64(ItemType.BLOOM_PARAMETER, BigInt(world.bloomSize), BigInt(rng.range(1, 4)));
    w.string(ItemType.MAKE_NAME, busName);
    w.itemU64(ItemType.ATTACH_FLAGS_SEND, Attach.ALL);
  }));
  owner.core = true;
  world.bus = world.domain.buses.get(busName)!;
  const defaultEp = (): KdbusNode => ({ kind: 'endpoint', ep: world.bus.defaultEndpoint });

  const epOwner = await must(world.open(defaultEp(), root, 'ep-owner'), 'ENDPOINT_MAKE', cmdStruct(MakeFlags.ACCESS_WORLD, undefined, (w) => w.string(ItemType.MAKE_NAME, `${ROOT}-custom`)));
  await must(epOwner, 'ENDPOINT_UPDATE', cmdStruct(0n, undefined, (w) => {
    for (const n of ['org.fuzz.A', 'org.fuzz.B', 'org.fuzz.Act0']) worldTalk(w, n, PolicyAccess.OWN);
  }));
  const custom = world.bus.endpoints.get(`${ROOT}-custom`)!;

  await must(world.open(defaultEp(), root, 'holder'), 'HELLO', helloStruct(HelloFlags.POLICY_HOLDER, 1n, (w) => worldTalk(w, 'org.fuzz.A', PolicyAccess.OWN)));
  await must(world.open(defaultEp(), root, 'holder'), 'HELLO', helloStruct(HelloFlags.POLICY_HOLDER, 1n, (w) => worldTalk(w, 'org.fuzz.B', PolicyAccess.TALK)));
  for (const n of ['org.fuzz.Act0', 'org.fuzz.Act1']) {
    await must(world.open(defaultEp(), root, 'activator'), 'HELLO', helloStruct(HelloFlags.ACTIVATOR | HelloFlags.ACCEPT_FD, 64n, (w) => worldTalk(w, n, PolicyAccess.TALK)));
  }
  await must(world.open(defaultEp(), root, 'monitor'), 'HELLO', helloStruct(HelloFlags.MONITOR | HelloFlags.ACCEPT_FD, 256n));
  const peers: Actor[] = [];
  for (const [node, creds, pages] of [
    [defaultEp(), root, 256n], [defaultEp(), root, 16n], [defaultEp(), root, 1024n], [defaultEp(), root, 2n],
    [defaultEp(), other, 64n], [defaultEp(), other, 64n],
    [{ kind: 'endpoint', ep: custom } as KdbusNode, root, 64n], [{ kind: 'endpoint', ep: custom } as KdbusNode, other, 64n],
  ] as const) {
    peers.push(await must(world.open(node, creds, 'peer'), 'HELLO', helloStruct(HelloFlags.ACCEPT_FD, pages)));
  }
  // Matches for every broadcast and notification, so signals and name changes fan out.
  for (const a of peers.slice(0, 5)) {
    await must(a, 'MATCH_ADD', cmdStruct(0n, (w) => w.u64(1n), (w) => w.itemU64(ItemType.ID, U64_MAX)));
    await must(a, 'MATCH_ADD', cmdStruct(0n, (w) => w.u64(2n), (w) => w.itemU64(ItemType.NAME_CHANGE, U64_MAX, 0n, U64_MAX, 0n)));
  }
  await must(peers[0], 'NAME_ACQUIRE', cmdStruct(NameFlags.ALLOW_REPLACEMENT, undefined, (w) => w.string(ItemType.NAME, 'org.fuzz.C')));
  await must(peers[1], 'NAME_ACQUIRE', cmdStruct(NameFlags.QUEUE, undefined, (w) => w.string(ItemType.NAME, 'org.fuzz.C')));
  await must(peers[4], 'NAME_ACQUIRE', cmdStruct(0n, undefined, (w) => w.string(ItemType.NAME, 'org.fuzz.A')));
}

// --- the run ----------------------------------------------------------------------------------

/** Run-wide bookkeeping and the asynchronous-error trap. */
class Runner implements RunContext {
  readonly report: FuzzReport;
  traffic = 0;
  syncCalls = 0;
  readonly modes: Record<InputMode, number> = { random: 0, valid: 0, mutated: 0 };
  private asyncErrors: unknown[] = [];
  readonly clock = new VirtualClock(CLOCK_START_NS, (e) => this.asyncError(e));

  constructor(readonly seed: number) {
    this.report = {
      seed, iterations: 0, traffic: 0, worlds: 0, elapsedMs: 0, modes: this.modes, coverage: new Map(), outcomes: new Map(), syncCalls: 0,
    };
  }

  count(role: string, cmd: string): void {
    const key = `${role}/${cmd}`;
    this.report.coverage.set(key, (this.report.coverage.get(key) ?? 0) + 1);
  }

  outcome(cmd: string, errno: number): void {
    let m = this.report.outcomes.get(cmd);
    if (!m) this.report.outcomes.set(cmd, (m = new Map()));
    const k = errno === 0 ? 'OK' : errnoName(errno);
    m.set(k, (m.get(k) ?? 0) + 1);
  }

  asyncError(e: unknown): void {
    this.asyncErrors.push(e);
  }

  takeAsyncError(): unknown {
    return this.asyncErrors.shift();
  }
}

function activeTimers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

/**
 * After a world is torn down no timer of the bus may be left: none that keeps the process
 * alive, and no unref'd one either (it would hold a dead connection until it fires).
 */
function checkTimers(clock: VirtualClock, before: number, seed: number, iteration: number): void {
  const virtual = clock.pending();
  if (virtual.all) throw new FuzzFailure(seed, iteration, `${virtual.all} bus timers (${virtual.refed} keeping the process alive) still pending after teardown`, '');
  const now = activeTimers();
  if (now > before) throw new FuzzFailure(seed, iteration, `${now - before} real timers still keep the process alive after teardown`, '');
}

/** Runs the fuzzer; throws FuzzFailure on the first problem. */
export async function runFuzz(cfg: FuzzConfig): Promise<FuzzReport> {
  const started = Date.now();
  const run = new Runner(cfg.seed);
  const rng = new Rng(cfg.seed);
  const perWorld = cfg.iterationsPerWorld ?? 4000;
  // Errors thrown from the bus's own timers and callbacks end up here instead of crashing.
  const trap = (e: unknown): void => run.asyncError(e);
  msgCookie = 1n << 40n;
  const saved = { exc: process.listeners('uncaughtException'), rej: process.listeners('unhandledRejection') };
  process.removeAllListeners('uncaughtException');
  process.removeAllListeners('unhandledRejection');
  process.on('uncaughtException', trap);
  process.on('unhandledRejection', trap);
  run.clock.install();
  let iteration = 0;
  // The caller's own timers (mocha arms its test timeout right after the test starts) count as baseline.
  await settleSoon();
  const timersBefore = activeTimers();
  try {
    while (iteration < cfg.iterations) {
      const world = new World(rng, run);
      run.report.worlds++;
      world.iteration = iteration;
      await setupWorld(world);
      const fuzzer = new Fuzzer(world, run);
      const end = Math.min(cfg.iterations, iteration + perWorld);
      for (; iteration < end && world.bus.active; iteration++) {
        world.iteration = iteration;
        run.clock.advance(STEP_NS);
        await fuzzer.fuzzOne();
        if (rng.chance(0.3)) await fuzzer.traffic();
        if (rng.chance(0.001)) await fuzzer.burst();
        await fuzzer.chaos();
        if (iteration % 32 === 31) await settleSoon();
        if (iteration % 256 === 255) world.check();
      }
      await world.teardown();
      checkTimers(run.clock, timersBefore, cfg.seed, iteration);
    }
  } finally {
    run.clock.uninstall();
    process.removeListener('uncaughtException', trap);
    process.removeListener('unhandledRejection', trap);
    for (const l of saved.exc) process.on('uncaughtException', l as (e: Error) => void);
    for (const l of saved.rej) process.on('unhandledRejection', l as (e: unknown) => void);
  }
  run.report.iterations = iteration;
  run.report.traffic = run.traffic;
  run.report.syncCalls = run.syncCalls;
  run.report.elapsedMs = Date.now() - started;
  return run.report;
}

