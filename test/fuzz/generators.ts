/**
 * Inputs for the fuzzer: a seeded PRNG, builders that make command structs and messages the
 * way real clients do (from what the harness knows about the bus: live ids, names, fds,
 * pool offsets), purely random structs, and mutators that damage structs the way buggy or
 * hostile clients do. Everything here is pure: the same seed gives the same bytes.
 */
import {
  ALIGN8, Attach, Cmd, type CmdName, HelloFlags, ItemType, KDBUS_DST_ID_BROADCAST, KDBUS_FLAG_NEGOTIATE,
  KDBUS_PAYLOAD_DBUS, KDBUS_MATCH_ID_ANY, ListFlags, MakeFlags, MatchFlags, MsgFlags, NameFlags, PolicyAccess,
  PolicyAccessType, RecvFlags, SendFlags, StructSize, U64_MAX,
} from '../../src/abi/constants';
import { ItemWriter } from '../../src/abi/items';
import { Specs } from '../../src/abi/commands';

/** sfc32: small, fast, and good enough to drive a fuzzer; seeded through splitmix32. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    let s = seed >>> 0;
    const mix = (): number => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = mix();
    this.b = mix();
    this.c = mix();
    this.d = mix();
    for (let i = 0; i < 12; i++) this.next();
  }

  /** Uniform u32. */
  next(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return n <= 1 ? 0 : Math.floor((this.next() / 0x1_0000_0000) * n);
  }

  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.next() < p * 0x1_0000_0000;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  /** Picks by weight: [[weight, value], ...]. */
  weighted<T>(table: ReadonlyArray<readonly [number, T]>): T {
    let total = 0;
    for (const [w] of table) total += w;
    let x = this.int(total);
    for (const [w, v] of table) {
      if (x < w) return v;
      x -= w;
    }
    return table[table.length - 1]![1];
  }

  u64(): bigint {
    return (BigInt(this.next()) << 32n) | BigInt(this.next());
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(this.next(), i);
    for (; i < n; i++) b[i] = this.next() & 0xff;
    return b;
  }

  /** A random subset of the given bits. */
  bits(mask: bigint): bigint {
    let out = 0n;
    for (let bit = 0n; bit < 64n; bit++) if (mask & (1n << bit) && this.chance(0.5)) out |= 1n << bit;
    return out;
  }

  /** The interesting u64 values: edges, powers of two, and random ones. */
  interesting(): bigint {
    return this.pick([0n, 1n, 7n, 8n, 0xffn, 0xfffn, 0x1000n, 0x7fff_ffffn, 0x8000_0000n, 0xffff_ffffn, 0x1_0000_0000n,
      0x1f_ffff_ffff_ffffn, 0x20_0000_0000_0000n, 0x7fff_ffff_ffff_ffffn, 0x8000_0000_0000_0000n, U64_MAX - 7n, U64_MAX,
      this.u64(), BigInt(this.int(1 << 16))]);
  }
}

/** What the builders may refer to: the caller and the bus as the harness sees them. */
export interface GenContext {
  readonly rng: Rng;
  /** The caller's euid: bus and endpoint names start with "<euid>-". */
  readonly euid: number;
  readonly bloomSize: number;
  readonly ownId: bigint;
  /** Ids that exist or existed on the bus. */
  readonly ids: readonly bigint[];
  /** Well-known names worth trying (owned, activatable, queued, free, policy-covered). */
  readonly names: readonly string[];
  readonly fds: {
    readonly memfd: readonly number[];
    readonly unsealedMemfd: readonly number[];
    readonly plain: readonly number[];
    readonly kdbus: readonly number[];
    readonly socket: readonly number[];
    readonly cancel: readonly number[];
    readonly unpollable: readonly number[];
  };
  /** A mapped region of random bytes that data vectors point into. */
  readonly payload: { readonly address: bigint; readonly length: number };
  readonly poolSize: bigint;
  /** Offsets of slices the caller received and has not freed. */
  readonly offsets: readonly bigint[];
  /** A call this connection received and may answer: [caller id, cookie]. */
  readonly toAnswer: { readonly dst: bigint; readonly cookie: bigint } | undefined;
  /** Cookies this connection used for calls (to restart an interrupted sync call). */
  readonly recentCookies: readonly bigint[];
}

/** Every kdbus ioctl, as the Cmd table lists them. */
export const COMMANDS = Object.keys(Cmd) as CmdName[];

const NAMEFLAGS_REQ = NameFlags.REPLACE_EXISTING | NameFlags.ALLOW_REPLACEMENT | NameFlags.QUEUE;

/** Command struct: size, flags, return_flags, fixed fields, items; size filled in. */
export function cmdStruct(flags: bigint, fixed?: (w: ItemWriter) => void, items?: (w: ItemWriter) => void): Buffer {
  const w = new ItemWriter(256);
  w.u64(0).u64(flags).u64(0);
  fixed?.(w);
  items?.(w);
  return sized(w);
}

/** A kdbus_msg; timeoutOrReply is timeout_ns for calls, cookie_reply otherwise. */
export function buildMsg(dst: bigint, flags: bigint, cookie: bigint, timeoutOrReply: bigint, items?: (w: ItemWriter) => void): Buffer {
  const w = new ItemWriter(256);
  w.u64(0).u64(flags).u64(0).u64(dst).u64(0).u64(KDBUS_PAYLOAD_DBUS).u64(cookie).u64(timeoutOrReply);
  items?.(w);
  return sized(w);
}

/** kdbus_cmd_hello with both attach masks set to `attach`. */
export function buildHello(flags: bigint, poolSize: bigint, attach: bigint, items?: (w: ItemWriter) => void): Buffer {
  return cmdStruct(flags, (w) => w.u64(attach).u64(attach).u64(0).u64(0).u64(poolSize).u64(0).u64(0).zeros(16), items);
}

/** The written bytes with the leading size field filled in. */
function sized(w: ItemWriter): Buffer {
  const b = Buffer.from(w.finish());
  b.writeBigUInt64LE(BigInt(b.length), 0);
  return b;
}

function attachMask(rng: Rng): bigint {
  return rng.weighted([[4, Attach.ALL], [3, rng.bits(Attach.ALL)], [1, Attach.ANY], [1, 0n], [1, rng.u64()]]);
}

function someName(ctx: GenContext): string {
  const rng = ctx.rng;
  return rng.weighted<string>([
    [12, rng.pick(ctx.names)],
    [1, `org.fuzz.N${rng.int(50)}`],
    [1, rng.pick(['a', 'org', '.org.x', 'org..x', 'org.x.', '1org.x', 'org.1x', 'org.x-y_z.Z9', 'org.*', 'org.fuzz.*', ''])],
    [1, 'org.' + 'x'.repeat(rng.range(250, 260))],
    [1, 'org.fuzz.\u00e9t\u00e9'],
  ]);
}

function someId(ctx: GenContext): bigint {
  const rng = ctx.rng;
  return rng.weighted<bigint>([
    [10, ctx.ids.length ? rng.pick(ctx.ids) : 1n],
    [2, ctx.ownId],
    [1, 0n],
    [1, KDBUS_DST_ID_BROADCAST],
    [1, BigInt(rng.range(1, 4000))],
    [1, rng.interesting()],
  ]);
}

/** NAME items each followed by POLICY_ACCESS items; `groups` NAMEs (random 0..3 when undefined). */
function policyItems(ctx: GenContext, w: ItemWriter, groups = ctx.rng.range(0, 3)): void {
  for (let g = 0; g < groups; g++) {
    w.string(ItemType.NAME, ctx.rng.chance(0.3) ? 'org.fuzz.*' : someName(ctx));
    accessItems(ctx, w);
  }
}

/** 0..3 POLICY_ACCESS items, for the NAME item before them. */
function accessItems(ctx: GenContext, w: ItemWriter): void {
  const rng = ctx.rng;
  for (let i = rng.int(4); i > 0; i--) {
    const type = rng.weighted([[3, PolicyAccessType.WORLD], [2, PolicyAccessType.USER], [2, PolicyAccessType.GROUP], [1, rng.int(6)]]);
    const access = rng.weighted([[3, PolicyAccess.OWN], [3, PolicyAccess.TALK], [2, PolicyAccess.SEE], [1, rng.int(5)]]);
    const id = rng.weighted<bigint>([[3, 0n], [3, 1000n], [1, 0xffff_ffffn], [1, rng.u64()]]);
    w.itemU64(ItemType.POLICY_ACCESS, BigInt(type), BigInt(access), id);
  }
}

export type HelloKind = 'ordinary' | 'activator' | 'policy-holder' | 'monitor';

export function genHello(ctx: GenContext, kind: HelloKind = ctx.rng.pick(['ordinary', 'ordinary', 'ordinary', 'activator', 'policy-holder', 'monitor'])): Buffer {
  const rng = ctx.rng;
  let flags = rng.chance(0.85) ? HelloFlags.ACCEPT_FD : 0n;
  if (kind === 'activator') flags |= HelloFlags.ACTIVATOR;
  if (kind === 'policy-holder') flags |= HelloFlags.POLICY_HOLDER;
  if (kind === 'monitor') flags |= HelloFlags.MONITOR;
  const pages = rng.weighted<bigint>([[4, BigInt(rng.range(1, 64))], [4, BigInt(rng.range(64, 4096))], [1, 1n], [1, 0n], [1, 0x10_0001n]]);
  const poolSize = rng.chance(0.95) ? pages * 4096n : rng.interesting();
  return cmdStruct(flags, (w) => {
    w.u64(attachMask(rng)).u64(attachMask(rng)).u64(0).u64(0).u64(poolSize).u64(0).u64(0).zeros(16);
  }, (w) => {
    if (kind === 'activator' || kind === 'policy-holder') {
      w.string(ItemType.NAME, kind === 'activator' ? `org.fuzz.Act${rng.int(4)}` : rng.pick(['org.fuzz.*', 'org.fuzz.A', 'com.other.*', someName(ctx)]));
      // The NAME is also the policy's name: its POLICY_ACCESS items follow it.
      accessItems(ctx, w);
    }
    if (rng.chance(0.3)) w.string(ItemType.CONN_DESCRIPTION, rng.pick(['fuzz', 'a-b.c', 'x'.repeat(rng.range(60, 66)), 'bad desc', '-x']));
    if (rng.chance(0.05)) {
      const at = w.beginItem(ItemType.CREDS);
      for (let i = 0; i < 8; i++) w.u64(rng.weighted<bigint>([[4, 1000n], [1, 0xffff_ffffn], [1, 0x1_ffff_ffffn], [1, 0n]]));
      w.endItem(at);
    }
    if (rng.chance(0.05)) w.itemU64(ItemType.PIDS, BigInt(process.pid), rng.chance(0.5) ? BigInt(process.pid) : 0n, rng.chance(0.5) ? 1n : 0x7fff_fff0n);
    if (rng.chance(0.03)) w.string(ItemType.SECLABEL, 'unconfined');
  });
}

export interface MessagePlan {
  /** The message expects a reply and the SEND should wait for it. */
  sync: boolean;
}

/** A kdbus_msg as a client library builds one; `plan.sync` tells the SEND builder to block. */
export function genMessage(ctx: GenContext): { msg: Buffer; plan: MessagePlan } {
  const rng = ctx.rng;
  const kind = rng.weighted<'call' | 'oneway' | 'signal' | 'broadcast' | 'reply'>([
    [4, 'call'], [3, 'oneway'], [2, 'signal'], [3, 'broadcast'], [ctx.toAnswer ? 6 : 1, 'reply'],
  ]);
  let flags = 0n;
  let dst: bigint;
  let name: string | undefined;
  let timeoutOrReply = 0n;
  let cookie = BigInt(rng.range(1, 1 << 20));
  let sync = false;
  if (kind === 'broadcast') {
    flags = MsgFlags.SIGNAL;
    dst = KDBUS_DST_ID_BROADCAST;
  } else if (kind === 'reply' && ctx.toAnswer) {
    dst = ctx.toAnswer.dst;
    timeoutOrReply = ctx.toAnswer.cookie;
  } else {
    if (rng.chance(0.4)) {
      name = someName(ctx);
      dst = rng.chance(0.85) ? 0n : someId(ctx);
    } else {
      dst = someId(ctx);
    }
    if (kind === 'signal') flags = MsgFlags.SIGNAL;
    if (kind === 'call') {
      flags = MsgFlags.EXPECT_REPLY;
      // Short deadlines, so calls time out (or get answered) within the run.
      const ms = rng.weighted<number>([[2, 0], [6, rng.range(1, 40)], [1, rng.range(100, 400)], [1, -5]]);
      timeoutOrReply = process.hrtime.bigint() + BigInt(ms) * 1_000_000n;
      sync = rng.chance(0.5);
      if (sync && ctx.recentCookies.length > 0 && rng.chance(0.1)) cookie = rng.pick(ctx.recentCookies);
    }
    if (kind === 'reply') timeoutOrReply = BigInt(rng.range(1, 1 << 20));
  }
  if (rng.chance(0.1)) flags |= MsgFlags.NO_AUTO_START;
  const w = new ItemWriter(512);
  w.u64(0).u64(flags).u64(rng.chance(0.8) ? 0n : BigInt.asUintN(64, BigInt(rng.range(-3, 3)))).u64(dst).u64(rng.chance(0.9) ? 0n : ctx.ownId);
  w.u64(rng.chance(0.95) ? KDBUS_PAYLOAD_DBUS : rng.u64()).u64(cookie).u64(timeoutOrReply);
  if (name !== undefined) w.string(ItemType.DST_NAME, name);
  for (let i = rng.weighted([[1, 0], [5, 1], [3, 2], [1, rng.range(3, 6)]]); i > 0; i--) {
    if (rng.chance(0.15)) {
      w.itemU64(ItemType.PAYLOAD_VEC, BigInt(rng.range(1, 64)), 0n);
    } else {
      const len = rng.weighted([[6, rng.range(1, 64)], [3, rng.range(64, 2048)], [1, rng.range(2048, ctx.payload.length)]]);
      const at = rng.int(ctx.payload.length - len + 1);
      w.itemU64(ItemType.PAYLOAD_VEC, BigInt(len), ctx.payload.address + BigInt(at));
    }
  }
  if (rng.chance(0.15)) {
    for (let i = rng.range(1, 3); i > 0; i--) {
      const fd = rng.weighted<number>([[6, pickFd(ctx, ctx.fds.memfd)], [1, pickFd(ctx, ctx.fds.unsealedMemfd)], [1, pickFd(ctx, ctx.fds.plain)], [1, 999]]);
      const at = w.beginItem(ItemType.PAYLOAD_MEMFD);
      w.u64(rng.chance(0.8) ? 0 : rng.int(32)).u64(rng.range(1, 40)).i32(fd).u32(0);
      w.endItem(at);
    }
  }
  if (rng.chance(0.15)) {
    const at = w.beginItem(ItemType.FDS);
    for (let i = rng.range(0, 4); i > 0; i--) {
      w.i32(rng.weighted<number>([[6, pickFd(ctx, ctx.fds.plain)], [2, pickFd(ctx, ctx.fds.memfd)], [1, pickFd(ctx, ctx.fds.kdbus)], [1, pickFd(ctx, ctx.fds.socket)], [1, -1], [1, 9999]]));
    }
    w.endItem(at);
  }
  if (flags & MsgFlags.SIGNAL || rng.chance(0.05)) {
    const at = w.beginItem(ItemType.BLOOM_FILTER);
    const size = rng.chance(0.9) ? ctx.bloomSize : rng.pick([0, 8, ctx.bloomSize + 8, 12]);
    w.u64(rng.chance(0.8) ? 0 : rng.int(4));
    // Mostly all-ones filters, so that the bloom masks of matches take the signal.
    w.bytes(rng.chance(0.7) ? Buffer.alloc(size, 0xff) : rng.bytes(size));
    w.endItem(at);
  }
  const msg = sized(w);
  return { msg, plan: { sync: sync && (flags & MsgFlags.EXPECT_REPLY) !== 0n } };
}

function pickFd(ctx: GenContext, fds: readonly number[]): number {
  return fds.length ? ctx.rng.pick(fds) : 9999;
}

export function genSend(ctx: GenContext, msgAddress: bigint, plan: MessagePlan): Buffer {
  const rng = ctx.rng;
  const flags = plan.sync || rng.chance(0.03) ? SendFlags.SYNC_REPLY : 0n;
  return cmdStruct(flags, (w) => w.u64(msgAddress).u64(0).u64(0).u64(0), (w) => {
    if (rng.chance(flags ? 0.4 : 0.05)) {
      const at = w.beginItem(ItemType.CANCEL_FD);
      w.i32(rng.weighted<number>([[6, pickFd(ctx, ctx.fds.cancel)], [1, pickFd(ctx, ctx.fds.unpollable)], [1, 9999]]));
      w.endItem(at);
    }
  });
}

export function genRecv(ctx: GenContext): Buffer {
  const rng = ctx.rng;
  const flags = rng.weighted<bigint>([[8, 0n], [2, RecvFlags.PEEK], [2, RecvFlags.DROP], [2, RecvFlags.USE_PRIORITY], [1, rng.bits(RecvFlags.PEEK | RecvFlags.DROP | RecvFlags.USE_PRIORITY)]]);
  return cmdStruct(flags, (w) => {
    w.u64(BigInt.asUintN(64, BigInt(rng.range(-3, 3)))).u64(0).u64(0).u64(0).u64(0);
  });
}

export function genFree(ctx: GenContext): Buffer {
  const rng = ctx.rng;
  const offset = rng.weighted<bigint>([
    [8, ctx.offsets.length ? rng.pick(ctx.offsets) : 0n],
    [1, ctx.poolSize],
    [1, BigInt(rng.int(Number(ctx.poolSize > 0x10000n ? 0x10000n : ctx.poolSize) + 1))],
    [1, rng.interesting()],
  ]);
  return cmdStruct(0n, (w) => w.u64(offset));
}

export function genNameAcquire(ctx: GenContext): Buffer {
  const rng = ctx.rng;
  return cmdStruct(rng.bits(NAMEFLAGS_REQ), undefined, (w) => w.string(ItemType.NAME, someName(ctx)));
}

export function genNameRelease(ctx: GenContext): Buffer {
  return cmdStruct(0n, undefined, (w) => w.string(ItemType.NAME, someName(ctx)));
}

const MATCH_COOKIES = [1n, 2n, 3n, 0xcafen, 0n];

export function genMatchAdd(ctx: GenContext): Buffer {
  const rng = ctx.rng;
  const flags = rng.chance(0.2) ? MatchFlags.REPLACE : 0n;
  return cmdStruct(flags, (w) => w.u64(rng.pick(MATCH_COOKIES)), (w) => {
    for (let i = rng.weighted([[2, 0], [6, 1], [3, 2], [1, 4]]); i > 0; i--) {
      const type = rng.pick([ItemType.BLOOM_MASK, ItemType.NAME, ItemType.ID, ItemType.DST_ID, ItemType.NAME_ADD,
        ItemType.NAME_REMOVE, ItemType.NAME_CHANGE, ItemType.ID_ADD, ItemType.ID_REMOVE]);
      const anyOr = (): bigint => (rng.chance(0.5) ? KDBUS_MATCH_ID_ANY : someId(ctx));
      switch (type) {
        case ItemType.BLOOM_MASK: {
          const gens = rng.weighted([[6, 1], [2, 2], [1, 0]]);
          const size = rng.chance(0.9) ? ctx.bloomSize * gens : ctx.bloomSize + 8;
          w.item(ItemType.BLOOM_MASK, rng.chance(0.5) ? Buffer.alloc(size) : rng.bytes(size));
          break;
        }
        case ItemType.NAME:
          w.string(ItemType.NAME, someName(ctx));
          break;
        case ItemType.ID:
        case ItemType.DST_ID:
          w.itemU64(type, anyOr());
          break;
        case ItemType.ID_ADD:
        case ItemType.ID_REMOVE:
          w.itemU64(type, anyOr(), rng.bits(HelloFlags.ACCEPT_FD | HelloFlags.ACTIVATOR));
          break;
        default: {
          const at = w.beginItem(type);
          w.u64(anyOr()).u64(0).u64(anyOr()).u64(0);
          if (rng.chance(0.5)) w.bytes(Buffer.from(someName(ctx) + '\0', 'latin1'));
          w.endItem(at);
        }
      }
    }
  });
}

export function genMatchRemove(ctx: GenContext): Buffer {
  return cmdStruct(0n, (w) => w.u64(ctx.rng.pick(MATCH_COOKIES)));
}

export function genList(ctx: GenContext): Buffer {
  return cmdStruct(ctx.rng.bits(ListFlags.UNIQUE | ListFlags.NAMES | ListFlags.ACTIVATORS | ListFlags.QUEUED), (w) => w.u64(0).u64(0));
}

export function genConnInfo(ctx: GenContext): Buffer {
  const rng = ctx.rng;
  const byName = rng.chance(0.4);
  return cmdStruct(0n, (w) => w.u64(byName && rng.chance(0.7) ? 0n : someId(ctx)).u64(attachMask(rng)).u64(0).u64(0), (w) => {
    if (byName) w.string(ItemType.NAME, someName(ctx));
  });
}

export function genBusCreatorInfo(ctx: GenContext): Buffer {
  return cmdStruct(0n, (w) => w.u64(0).u64(attachMask(ctx.rng)).u64(0).u64(0));
}

export function genUpdate(ctx: GenContext): Buffer {
  const rng = ctx.rng;
  return cmdStruct(0n, undefined, (w) => {
    if (rng.chance(0.5)) w.itemU64(ItemType.ATTACH_FLAGS_SEND, attachMask(rng));
    if (rng.chance(0.5)) w.itemU64(ItemType.ATTACH_FLAGS_RECV, attachMask(rng));
    // Holders may upload one name: more is E2BIG.
    if (rng.chance(0.3)) policyItems(ctx, w, rng.chance(0.7) ? 1 : rng.range(2, 3));
  });
}

export function genByebye(): Buffer {
  return cmdStruct(0n);
}

export function genBusMake(ctx: GenContext): Buffer {
  const rng = ctx.rng;
  const flags = rng.bits(MakeFlags.ACCESS_GROUP | MakeFlags.ACCESS_WORLD);
  return cmdStruct(flags, undefined, (w) => {
    const bloom = rng.chance(0.9) ? BigInt(8 * rng.range(1, 16)) : rng.interesting();
    w.itemU64(ItemType.BLOOM_PARAMETER, bloom, rng.chance(0.9) ? BigInt(rng.range(1, 8)) : 0n);
    w.string(ItemType.MAKE_NAME, rng.weighted<string>([[8, `${ctx.euid}-fuzz${rng.int(8)}`], [1, 'nouid'], [1, `${ctx.euid}-${'b'.repeat(70)}`], [1, `${ctx.euid + 1}-x`]]));
    if (rng.chance(0.5)) w.itemU64(ItemType.ATTACH_FLAGS_SEND, attachMask(rng));
  });
}

export function genEndpointMake(ctx: GenContext): Buffer {
  const rng = ctx.rng;
  return cmdStruct(rng.bits(MakeFlags.ACCESS_GROUP | MakeFlags.ACCESS_WORLD), undefined, (w) => {
    w.string(ItemType.MAKE_NAME, rng.weighted<string>([[8, `${ctx.euid}-ep${rng.int(6)}`], [1, 'bus'], [1, `${ctx.euid}-bad/name`]]));
  });
}

export function genEndpointUpdate(ctx: GenContext): Buffer {
  return cmdStruct(0n, undefined, (w) => policyItems(ctx, w));
}

/** A well-formed struct for the command, as a client would build it (SEND: use genSend). */
export function genValid(ctx: GenContext, cmd: CmdName): Buffer {
  switch (cmd) {
    case 'BUS_MAKE': return genBusMake(ctx);
    case 'ENDPOINT_MAKE': return genEndpointMake(ctx);
    case 'ENDPOINT_UPDATE': return genEndpointUpdate(ctx);
    case 'HELLO': return genHello(ctx);
    case 'UPDATE': return genUpdate(ctx);
    case 'BYEBYE': return genByebye();
    case 'FREE': return genFree(ctx);
    case 'CONN_INFO': return genConnInfo(ctx);
    case 'BUS_CREATOR_INFO': return genBusCreatorInfo(ctx);
    case 'LIST': return genList(ctx);
    case 'RECV': return genRecv(ctx);
    case 'NAME_ACQUIRE': return genNameAcquire(ctx);
    case 'NAME_RELEASE': return genNameRelease(ctx);
    case 'MATCH_ADD': return genMatchAdd(ctx);
    case 'MATCH_REMOVE': return genMatchRemove(ctx);
    case 'SEND': throw new Error('SEND structs are built with genSend');
  }
}

/** Purely random bytes with a plausible size field (and sometimes plausible flags). */
export function genRandom(rng: Rng, fixedSize: number): Buffer {
  const len = rng.weighted<number>([
    [6, rng.range(fixedSize, fixedSize + 96)],
    [2, rng.range(0, fixedSize + 8)],
    [1, rng.range(fixedSize, 2048)],
    [1, rng.range(32 * 1024 - 64, 32 * 1024 + 64)],
  ]);
  const b = rng.chance(0.5) ? rng.bytes(len) : sparseRandom(rng, len);
  if (len >= 8) {
    const size = rng.weighted<bigint>([[8, BigInt(len)], [1, BigInt(rng.range(0, len + 64))], [1, rng.interesting()]]);
    b.writeBigUInt64LE(size, 0);
  }
  if (len >= 16 && rng.chance(0.6)) b.writeBigUInt64LE(rng.chance(0.5) ? 0n : BigInt(rng.int(16)), 8);
  return b;
}

/** Mostly zeros with random bytes and plausible item headers sprinkled in. */
function sparseRandom(rng: Rng, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = rng.int(8); i > 0; i--) if (len > 0) b[rng.int(len)] = rng.next() & 0xff;
  for (let at = 24; at + 16 <= len; at += 8 * rng.range(2, 8)) {
    if (!rng.chance(0.5)) continue;
    b.writeBigUInt64LE(BigInt(rng.range(16, 64)), at);
    b.writeBigUInt64LE(BigInt(rng.pick(ITEM_TYPES)), at + 8);
  }
  return b;
}

const ITEM_TYPES: readonly number[] = [
  ItemType.NULL, ItemType.NEGOTIATE, ItemType.PAYLOAD_VEC, ItemType.PAYLOAD_OFF, ItemType.PAYLOAD_MEMFD, ItemType.FDS,
  ItemType.CANCEL_FD, ItemType.BLOOM_PARAMETER, ItemType.BLOOM_FILTER, ItemType.BLOOM_MASK, ItemType.DST_NAME,
  ItemType.MAKE_NAME, ItemType.ATTACH_FLAGS_SEND, ItemType.ATTACH_FLAGS_RECV, ItemType.ID, ItemType.NAME, ItemType.DST_ID,
  ItemType.TIMESTAMP, ItemType.CREDS, ItemType.PIDS, ItemType.AUXGROUPS, ItemType.OWNED_NAME, ItemType.TID_COMM,
  ItemType.PID_COMM, ItemType.EXE, ItemType.CMDLINE, ItemType.CGROUP, ItemType.CAPS, ItemType.SECLABEL, ItemType.AUDIT,
  ItemType.CONN_DESCRIPTION, ItemType.POLICY_ACCESS, ItemType.NAME_ADD, ItemType.NAME_REMOVE, ItemType.NAME_CHANGE,
  ItemType.ID_ADD, ItemType.ID_REMOVE, ItemType.REPLY_TIMEOUT, ItemType.REPLY_DEAD,
];

/** Where an item sits in a struct: header offset and its size field. */
interface ItemSpan {
  offset: number;
  size: number;
}

/** The items as far as their headers can be followed (mutations may have broken the walk). */
export function itemSpans(b: Buffer, fixedSize: number): ItemSpan[] {
  const out: ItemSpan[] = [];
  for (let at = fixedSize; at + 16 <= b.length && out.length < 64; ) {
    const size = b.readUInt32LE(at);
    if (b.readUInt32LE(at + 4) !== 0 || size < 16 || at + size > b.length) break;
    out.push({ offset: at, size });
    at += ALIGN8(size);
  }
  return out;
}

/** A struct mutation; returns the (possibly new) buffer and a label for reports. */
type Mutator = (rng: Rng, b: Buffer, fixedSize: number) => [Buffer, string];

const setSize = (b: Buffer, size: bigint): Buffer => {
  if (b.length >= 8) b.writeBigUInt64LE(size, 0);
  return b;
};

const MUTATORS: ReadonlyArray<readonly [number, Mutator]> = [
  [6, (rng, b) => {
    if (b.length === 0) return [b, 'flip(empty)'];
    const at = rng.chance(0.5) ? rng.int(Math.min(b.length, 32)) : rng.int(b.length);
    const bit = rng.int(8);
    b[at] ^= 1 << bit;
    return [b, `flip@${at}.${bit}`];
  }],
  [3, (rng, b) => {
    if (b.length === 0) return [b, 'byte(empty)'];
    const at = rng.int(b.length);
    b[at] = rng.next() & 0xff;
    return [b, `byte@${at}`];
  }],
  [4, (rng, b, fixed) => {
    const v = rng.weighted<bigint>([
      [4, BigInt(b.length + rng.range(-16, 16))], [1, 0n], [1, BigInt(fixed - 1)], [1, 32768n], [1, 32769n],
      [1, BigInt(b.length) + 0x1_0000_0000n], [1, rng.interesting()],
    ]);
    return [setSize(b, BigInt.asUintN(64, v)), `size=${BigInt.asUintN(64, v)}`];
  }],
  [3, (rng, b) => {
    const len = rng.int(b.length);
    const keep = rng.chance(0.5);
    const t = Buffer.from(b.subarray(0, len));
    if (!keep) setSize(t, BigInt(len));
    return [t, `truncate(${len}${keep ? ',size kept' : ''})`];
  }],
  [2, (rng, b) => {
    const extra = rng.weighted<Buffer>([[3, rng.bytes(rng.range(1, 40))], [2, Buffer.alloc(rng.range(1, 24))], [2, junkItem(rng)]]);
    const t = Buffer.concat([b, extra]);
    if (rng.chance(0.7)) setSize(t, BigInt(t.length));
    return [t, `extend(+${extra.length})`];
  }],
  [4, (rng, b, fixed) => {
    const items = itemSpans(b, fixed);
    if (!items.length) return [b, 'itemsize(none)'];
    const it = rng.pick(items);
    const v = rng.weighted<bigint>([[3, BigInt(it.size + rng.range(-8, 8))], [1, 0n], [1, 15n], [1, 16n], [1, BigInt(b.length)], [1, 0x1_0000_0010n], [1, rng.interesting()]]);
    b.writeBigUInt64LE(BigInt.asUintN(64, v), it.offset);
    return [b, `itemsize@${it.offset}=${BigInt.asUintN(64, v)}`];
  }],
  [4, (rng, b, fixed) => {
    const items = itemSpans(b, fixed);
    if (!items.length) return [b, 'itemtype(none)'];
    const it = rng.pick(items);
    const t = rng.chance(0.85) ? BigInt(rng.pick(ITEM_TYPES)) : rng.interesting();
    b.writeBigUInt64LE(t, it.offset + 8);
    return [b, `itemtype@${it.offset}=0x${t.toString(16)}`];
  }],
  [4, (rng, b, fixed) => {
    // A u64 of the fixed part or of an item payload gets an edge value.
    const slots = Math.floor(b.length / 8);
    if (slots < 2) return [b, 'huge(none)'];
    const items = itemSpans(b, fixed);
    let at: number;
    if (items.length && rng.chance(0.5)) {
      const it = rng.pick(items);
      const n = Math.floor((it.size - 16) / 8);
      at = n > 0 ? it.offset + 16 + 8 * rng.int(n) : it.offset;
    } else {
      at = 8 * rng.range(1, Math.max(1, Math.min(slots, fixed / 8) - 1));
    }
    const v = rng.interesting();
    b.writeBigUInt64LE(v, at);
    return [b, `u64@${at}=0x${v.toString(16)}`];
  }],
  [3, (rng, b) => {
    if (b.length < 16) return [b, 'flags(short)'];
    const bits = rng.weighted<bigint>([[3, KDBUS_FLAG_NEGOTIATE], [2, 1n << BigInt(rng.range(0, 62))], [1, rng.u64()], [1, 1n << BigInt(rng.range(4, 8))]]);
    b.writeBigUInt64LE(b.readBigUInt64LE(8) ^ bits, 8);
    return [b, `flags^=0x${bits.toString(16)}`];
  }],
  [2, (rng, b) => {
    const w = new ItemWriter(64);
    const at = w.beginItem(ItemType.NEGOTIATE);
    for (let i = rng.range(0, 4); i > 0; i--) w.u64(rng.chance(0.8) ? rng.pick(ITEM_TYPES) : rng.interesting());
    if (rng.chance(0.1)) w.u32(7);
    w.endItem(at);
    const t = Buffer.concat([b, w.finish()]);
    setSize(t, BigInt(t.length));
    if (rng.chance(0.5) && t.length >= 16) t.writeBigUInt64LE(t.readBigUInt64LE(8) | KDBUS_FLAG_NEGOTIATE, 8);
    return [t, 'negotiate-item'];
  }],
  [2, (rng, b, fixed) => {
    const items = itemSpans(b, fixed);
    if (!items.length) return [b, 'dup(none)'];
    const it = rng.pick(items);
    const t = Buffer.concat([b.subarray(0, ALIGN8(b.length)), Buffer.alloc(ALIGN8(b.length) - b.length), b.subarray(it.offset, it.offset + ALIGN8(it.size))]);
    setSize(t, BigInt(t.length));
    return [t, `dup@${it.offset}`];
  }],
  [2, (rng, b, fixed) => {
    const items = itemSpans(b, fixed);
    if (!items.length) return [b, 'drop(none)'];
    const it = rng.pick(items);
    const t = Buffer.concat([b.subarray(0, it.offset), b.subarray(Math.min(b.length, it.offset + ALIGN8(it.size)))]);
    setSize(t, BigInt(t.length));
    return [t, `drop@${it.offset}`];
  }],
  [2, (rng, b, fixed) => {
    // Damages a string item: NUL moved, NUL removed, a bad character.
    const items = itemSpans(b, fixed).filter((it) => it.size > 17);
    if (!items.length) return [b, 'str(none)'];
    const it = rng.pick(items);
    const end = it.offset + it.size - 1;
    const what = rng.int(3);
    if (what === 0) b[end] = 0x41;
    else if (what === 1) b[it.offset + 16 + rng.int(it.size - 16)] = 0;
    else b[it.offset + 16 + rng.int(it.size - 17)] = rng.pick([0x2e, 0x2a, 0x20, 0x2d, 0x30, 0xff, 0x2f]);
    return [b, `str@${it.offset}#${what}`];
  }],
  [2, (rng, b, fixed) => {
    // Shrinks the last item's payload by up to 7 bytes: padding the struct size no longer covers.
    const items = itemSpans(b, fixed);
    if (!items.length) return [b, 'shrink(none)'];
    const it = items[items.length - 1]!;
    const cut = rng.range(1, 7);
    if (it.size - cut < 16) return [b, 'shrink(small)'];
    b.writeBigUInt64LE(BigInt(it.size - cut), it.offset);
    const t = b.subarray(0, it.offset + it.size - cut);
    setSize(t, BigInt(t.length));
    return [Buffer.from(t), `shrink@${it.offset}-${cut}`];
  }],
];

function junkItem(rng: Rng): Buffer {
  const w = new ItemWriter(64);
  w.item(rng.pick(ITEM_TYPES), rng.bytes(rng.range(0, 40)));
  return Buffer.from(w.finish());
}

/** Applies 1..n random mutations; returns the new buffer and what was done. */
export function mutate(rng: Rng, buf: Buffer, fixedSize: number, count = rng.weighted([[6, 1], [3, 2], [1, 4]])): [Buffer, string[]] {
  let b: Buffer = Buffer.from(buf);
  const done: string[] = [];
  for (let i = 0; i < count; i++) {
    const [next, label] = rng.weighted(MUTATORS)(rng, b, fixedSize);
    b = next;
    done.push(label);
  }
  return [b, done];
}

/** Data-vector addresses in a message redirected (unmapped, misaligned, into other regions, huge). */
export function mutateVecs(rng: Rng, msg: Buffer, targets: readonly bigint[]): string[] {
  const done: string[] = [];
  for (const it of itemSpans(msg, StructSize.msg)) {
    if (msg.readBigUInt64LE(it.offset + 8) !== BigInt(ItemType.PAYLOAD_VEC) || it.size !== 32 || !rng.chance(0.5)) continue;
    const choice = rng.int(5);
    if (choice === 0) msg.writeBigUInt64LE(rng.pick(targets), it.offset + 24);
    else if (choice === 1) msg.writeBigUInt64LE(BigInt.asUintN(64, msg.readBigUInt64LE(it.offset + 24) + BigInt(rng.range(1, 7))), it.offset + 24);
    else if (choice === 2) msg.writeBigUInt64LE(rng.interesting(), it.offset + 24);
    else if (choice === 3) msg.writeBigUInt64LE(rng.interesting(), it.offset + 16);
    else msg.writeBigUInt64LE(BigInt(rng.range(1, 0x30_0000)), it.offset + 16);
    done.push(`vec@${it.offset}#${choice}`);
  }
  return done;
}

/** Fixed size of each command's struct (what the parser requires before items). */
export function fixedSizeOf(cmd: CmdName | 'MSG'): number {
  return Specs[cmd].fixedSize;
}

