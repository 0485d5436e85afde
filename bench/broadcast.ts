/**
 * Broadcast signals: fan-out to many matching receivers, and how the per-message cost
 * behaves when the bus holds many match entries that cannot apply to the message (it should
 * follow the entries that could apply, not every entry on the bus).
 */
import { Cmd, ItemType, KDBUS_DST_ID_BROADCAST, KDBUS_MATCH_ID_ANY } from '../src/abi/constants';
import type { ItemWriter } from '../src/abi/items';
import { TestBus } from '../test/helpers/kdbus-client';
import { BloomShape } from './bloom';
import { clock, measure } from './harness';
import { HotConn, type Outgoing } from './hot-conn';
import { timing, us, type TimingRow } from './report';

/** sd-bus's bloom parameters. */
const SHAPE = new BloomShape(64, 8);
const PAYLOAD = Buffer.alloc(256, 0x33);
/** Broadcasts per batch: receivers drain after each, well inside the 256-message quota. */
const BATCH = 32;
const IFACE = 'org.bench.Iface0';
const MEMBER = 'Changed';

async function newBus(): Promise<TestBus> {
  return TestBus.create({ bloomSize: SHAPE.size, nHash: SHAPE.nHash });
}

async function connect(tb: TestBus): Promise<HotConn> {
  return new HotConn(await tb.conn({ attachSend: 0n, attachRecv: 0n }), 1024);
}

function addMatch(c: HotConn, cookie: bigint, rules: (w: ItemWriter) => void): void {
  c.command(Cmd.MATCH_ADD, (w) => {
    w.u64(0).u64(0).u64(0).u64(cookie);
    rules(w);
  });
}

const bloomRule = (iface: string, member: string) => (w: ItemWriter): void => {
  w.item(ItemType.BLOOM_MASK, SHAPE.match(iface, member));
};

function signal(sender: HotConn, dst = KDBUS_DST_ID_BROADCAST): Outgoing {
  return sender.prepare({ dst, bloom: SHAPE.signal(IFACE, MEMBER, '/org/bench/object0'), payload: PAYLOAD });
}

function expectQueued(conns: readonly HotConn[], n: number, what: string): void {
  for (const c of conns) if (c.queued !== n) throw new Error(`benchmark setup: ${what} has ${c.queued} messages queued, expected ${n}`);
}

function closeAll(tb: TestBus, conns: readonly HotConn[]): void {
  for (const c of conns) c.client.close();
  tb.destroy();
}

/** Batches of BATCH broadcasts, SEND timed apart from the receivers' RECV + FREE. Metrics: [send, drain, send + drain]. */
function broadcastRun(sender: HotConn, out: Outgoing, receivers: readonly HotConn[]) {
  return (n: number): number[] => {
    let send = 0;
    let drain = 0;
    for (let done = 0; done < n; done += BATCH) {
      const t0 = clock();
      for (let i = 0; i < BATCH; i++) sender.send(out);
      const t1 = clock();
      for (const r of receivers) r.drain();
      const t2 = clock();
      send += t1 - t0;
      drain += t2 - t1;
    }
    return [send, drain, send + drain];
  };
}

async function fanOut(receiverCount: number): Promise<TimingRow[]> {
  const tb = await newBus();
  const sender = await connect(tb);
  const receivers: HotConn[] = [];
  for (let i = 0; i < receiverCount; i++) {
    const r = await connect(tb);
    addMatch(r, 1n, bloomRule(IFACE, MEMBER));
    receivers.push(r);
  }
  const out = signal(sender);
  sender.send(out);
  expectQueued(receivers, 1, 'a receiver');
  for (const r of receivers) r.drain();

  const m = await measure(broadcastRun(sender, out, receivers), { step: BATCH, targetMs: 300 });
  closeAll(tb, [sender, ...receivers]);
  const label = `broadcast 256 B -> ${receiverCount} receivers`;
  const per = (metric: number): string => `${us(m.nsPerOp[metric] / receiverCount)} µs per receiver`;
  return [
    timing(`${label}, SEND`, m, `delivery into ${receiverCount} queues; ${per(0)}`, 0),
    timing(`${label}, SEND + all RECV/FREE`, m, `receivers drain after each ${BATCH}; ${per(2)}`, 2),
  ];
}

export async function fanOutCases(): Promise<TimingRow[]> {
  return [...(await fanOut(100)), ...(await fanOut(1000))];
}

type Layout = { connections: number; label: string } | undefined;

/** Non-matching entries, spread round-robin over the filler connections (at most 4096 each: MATCH_MAX). */
const FILLER_ENTRIES = 10_000;

/**
 * Entry `k` of the fillers, one of the shapes sd-bus clients add: signal matches on other
 * interfaces, signals from one particular other peer, and NameOwnerChanged watches.
 */
function fillerRule(k: number, otherPeer: bigint): (w: ItemWriter) => void {
  switch (k % 5) {
    case 3:
      return (w) => {
        w.itemU64(ItemType.ID, otherPeer);
        bloomRule(`org.bench.Iface${k + 1}`, `Member${k}`)(w);
      };
    case 4:
      return (w) => {
        const at = w.beginItem(ItemType.NAME_CHANGE);
        w.u64(KDBUS_MATCH_ID_ANY).u64(0).u64(KDBUS_MATCH_ID_ANY).u64(0).bytes(Buffer.from(`org.bench.Watched${k}\0`, 'latin1'));
        w.endItem(at);
      };
    default:
      return bloomRule(`org.bench.Iface${k + 1}`, `Member${k}`);
  }
}

/** µs per broadcast SEND into 10 matching receivers, with the fillers of `layout` on the bus. */
async function scaled(layout: Layout): Promise<TimingRow> {
  const tb = await newBus();
  const sender = await connect(tb);
  const receivers: HotConn[] = [];
  for (let i = 0; i < 10; i++) {
    const r = await connect(tb);
    addMatch(r, 1n, bloomRule(IFACE, MEMBER));
    receivers.push(r);
  }
  const fillers: HotConn[] = [];
  if (layout) {
    for (let j = 0; j < layout.connections; j++) fillers.push(await connect(tb));
    for (let k = 0; k < FILLER_ENTRIES; k++) {
      const j = k % layout.connections;
      addMatch(fillers[j], BigInt(k + 1), fillerRule(k, fillers[(j + 1) % fillers.length].id));
    }
  }
  const out = signal(sender);
  sender.send(out);
  expectQueued(receivers, 1, 'a receiver');
  expectQueued(fillers, 0, 'a connection without a matching entry');
  for (const r of receivers) r.drain();

  const run = broadcastRun(sender, out, receivers);
  const m = await measure((n) => [run(n)[0]], { step: BATCH, targetMs: 200 });
  expectQueued(fillers, 0, 'a connection without a matching entry');
  closeAll(tb, [sender, ...receivers, ...fillers]);
  const what = layout ? `+ 10,000 non-matching entries on ${layout.label}` : 'only the 10 matching entries on the bus';
  return timing(`broadcast SEND -> 10 receivers, ${what}`, m, '');
}

export async function matchScalingCases(): Promise<TimingRow[]> {
  const base = await scaled(undefined);
  const spread = await scaled({ connections: 1000, label: '1,000 conns' });
  const packed = await scaled({ connections: 3, label: '3 conns' });
  base.note = 'baseline: 10 entries, all matching';
  for (const r of [spread, packed]) r.note = `ratio to baseline ${(r.nsPerOp / base.nsPerOp).toFixed(2)}`;
  return [base, spread, packed, ...(await unicastSignal())];
}

/**
 * A unicast signal checks the destination's own entries one by one (kdbus did the same):
 * its cost follows the destination's entry count when the matching entry comes last.
 */
async function unicastSignal(): Promise<TimingRow[]> {
  const rows: TimingRow[] = [];
  for (const extra of [0, 4095]) {
    const tb = await newBus();
    const sender = await connect(tb);
    const dst = await connect(tb);
    for (let k = 0; k < extra; k++) addMatch(dst, BigInt(k + 2), fillerRule(k, sender.id + 1000n));
    addMatch(dst, 1n, bloomRule(IFACE, MEMBER));
    const out = signal(sender, dst.id);
    sender.send(out);
    expectQueued([dst], 1, 'the signal destination');
    dst.drain();
    const m = await measure((n) => {
      for (let i = 0; i < n; i++) {
        sender.send(out);
        dst.recvFree();
      }
    });
    closeAll(tb, [sender, dst]);
    const entries = extra ? `${(extra + 1).toLocaleString('en-US')} match entries` : '1 match entry';
    rows.push(timing(`unicast signal + RECV/FREE, dst has ${entries}`, m, extra ? 'the matching entry was added last' : ''));
  }
  rows[1].note += `; ratio ${(rows[1].nsPerOp / rows[0].nsPerOp).toFixed(2)}`;
  return rows;
}
