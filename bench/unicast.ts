/**
 * Point-to-point traffic: unicast SEND + RECV + FREE pairs at several payload sizes, on the
 * in-heap and the memfd pool storage, with and without sd-bus's metadata, and synchronous
 * method calls answered by the callee.
 */
import { Attach, Cmd, MsgFlags, Off, StructSize } from '../src/abi/constants';
import { Domain } from '../src/bus/domain';
import { MemfdStorage } from '../src/os/memfd-storage';
import { TestBus, expectOk } from '../test/helpers/kdbus-client';
import { measure } from './harness';
import { HotConn } from './hot-conn';
import { timing, type TimingRow } from './report';

const KiB = 1024;

interface Pair {
  tb: TestBus;
  a: HotConn;
  b: HotConn;
}

async function pair(opts: { memfd?: boolean; attachSend?: bigint; attachRecv?: bigint; memoryBytes?: number } = {}): Promise<Pair> {
  const domain = new Domain();
  if (opts.memfd) domain.poolStorage = (size) => new MemfdStorage(size, 'kdbus-bench-pool');
  const tb = await TestBus.create({ domain });
  const a = await tb.conn({ attachSend: opts.attachSend ?? 0n, attachRecv: 0n });
  const b = await tb.conn({ attachSend: 0n, attachRecv: opts.attachRecv ?? 0n });
  return { tb, a: new HotConn(a, opts.memoryBytes), b: new HotConn(b, opts.memoryBytes) };
}

function close(p: Pair): void {
  p.a.client.close();
  p.b.client.close();
  p.tb.destroy();
}

/** One message through, decoded: the loop below must move real messages, not errors. */
function checkDelivery(a: HotConn, b: HotConn, payload: Buffer, send: () => void): void {
  send();
  const offset = b.recv();
  const m = b.client.decode(offset, b.lastSize);
  b.free(offset);
  const got = m.data.length === 0 ? Buffer.alloc(0) : Buffer.concat(m.data);
  if (m.srcId !== a.id || !got.equals(payload)) throw new Error('benchmark setup: the message did not arrive intact');
}

async function unicastRow(label: string, size: number, opts: Parameters<typeof pair>[0], note: string, setup?: (p: Pair) => Promise<void>): Promise<TimingRow> {
  const p = await pair({ ...opts, memoryBytes: size + 4 * KiB });
  await setup?.(p);
  const { a, b } = p;
  const payload = Buffer.alloc(size, 0x5a);
  const out = a.prepare({ dst: b.id, payload });
  checkDelivery(a, b, payload, () => a.send(out));
  const m = await measure((n) => {
    for (let i = 0; i < n; i++) {
      a.send(out);
      b.recvFree();
    }
  });
  close(p);
  return timing(label, m, note);
}

/** The same pair through TestClient.ioctlSync and its Arena, to show what the test memory costs. */
async function arenaRow(): Promise<TimingRow> {
  const tb = await TestBus.create();
  const a = await tb.conn({ attachSend: 0n, attachRecv: 0n });
  const b = await tb.conn({ attachSend: 0n, attachRecv: 0n });
  const msgAt = a.mem.put(a.buildMessage({ dst: b.id }));
  const send = Buffer.alloc(StructSize.cmd_send);
  send.writeBigUInt64LE(BigInt(send.length), 0);
  send.writeBigUInt64LE(msgAt, Off.send.msg_address);
  const sendAt = a.mem.put(send);
  const recvAt = b.mem.put(sizedZeros(StructSize.cmd_recv));
  const freeAt = b.mem.put(sizedZeros(Off.free.items));
  const offsetAt = recvAt + BigInt(Off.recv.msg_offset);
  const freeOffsetAt = freeAt + BigInt(Off.free.offset);
  const m = await measure((n) => {
    for (let i = 0; i < n; i++) {
      a.ioctlSync(Cmd.SEND, sendAt);
      b.ioctlSync(Cmd.RECV, recvAt);
      b.mem.poke(freeOffsetAt, b.mem.peek(offsetAt, 8));
      b.ioctlSync(Cmd.FREE, freeAt);
      a.mem.writes.length = 0;
      b.mem.writes.length = 0;
    }
  });
  a.close();
  b.close();
  tb.destroy();
  return timing('unicast 0 B via TestClient.ioctlSync', m, 'test Arena memory (linear region lookup, write log)');
}

function sizedZeros(size: number): Buffer {
  const b = Buffer.alloc(size);
  b.writeBigUInt64LE(BigInt(size), 0);
  return b;
}

/** sd-bus's HELLO: the receiver asks for names, caps and creds; the sender allows everything. */
export const SD_BUS_RECV = Attach.NAMES | Attach.CAPS | Attach.CREDS;

export async function unicastCases(): Promise<TimingRow[]> {
  const note = 'SEND + RECV + FREE, in-heap pool';
  const rows = [
    await unicastRow('unicast 0 B', 0, {}, note),
    await unicastRow('unicast 1 KiB', KiB, {}, note),
    await unicastRow('unicast 64 KiB', 64 * KiB, {}, note),
    await unicastRow('unicast 0 B, memfd pool', 0, { memfd: true }, 'as above, pool in a memfd (pwrite per slice write)'),
    await unicastRow('unicast 1 KiB, memfd pool', KiB, { memfd: true }, 'as above, pool in a memfd (pwrite per slice write)'),
    await arenaRow(),
  ];
  return rows;
}

export async function metadataCases(): Promise<TimingRow[]> {
  const holdName = async (p: Pair): Promise<void> => {
    await expectOk(p.a.client.acquire('org.bench.Sender'));
  };
  return [
    await unicastRow('unicast 1 KiB, sd-bus attach flags', KiB, { attachSend: Attach.ANY, attachRecv: SD_BUS_RECV }, 'recv NAMES|CAPS|CREDS, send ANY; sender owns 1 name', holdName),
    await unicastRow('unicast 1 KiB, recv NAMES|TIMESTAMP', KiB, { attachSend: Attach.ANY, attachRecv: Attach.NAMES | Attach.TIMESTAMP }, 'metadata without /proc; sender owns 1 name', holdName),
  ];
}

export async function callCases(): Promise<TimingRow[]> {
  const size = 256;
  const p = await pair();
  const { a, b } = p;
  const deadline = process.hrtime.bigint() + 3600n * 1_000_000_000n;
  const call = a.prepare({ dst: b.id, flags: MsgFlags.EXPECT_REPLY, timeoutOrReply: deadline, payload: Buffer.alloc(size, 1), sync: true });
  const reply = b.prepare({ dst: a.id, payload: Buffer.alloc(size, 2) });
  let cookie = 1000n;
  const once = async (): Promise<void> => {
    cookie++;
    a.setCookie(call, cookie);
    b.setCookieReply(reply, cookie);
    const done = a.call(call);
    b.recvFree();
    b.send(reply);
    await done;
    a.free(a.replyOffset(call));
  };
  await once();
  if (a.replyOffset(call) >= a.conn.pool.size) throw new Error('benchmark setup: the sync call got no reply');
  const m = await measure(async (n) => {
    for (let i = 0; i < n; i++) await once();
  });
  close(p);
  return [timing(`sync call/reply ${size} B each way`, m, 'SYNC_REPLY SEND, callee RECV+FREE+reply, caller awaits the Promise, FREEs reply')];
}

