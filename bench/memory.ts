/**
 * What connections cost the daemon in memory: heap per idle connection (without its pool),
 * and how much of a 16 MiB pool is really backed when it holds one message — with the
 * in-heap SparseStorage and with a memfd (tmpfs st_blocks).
 */
import { Cmd, HelloFlags, Off, StructSize } from '../src/abi/constants';
import type { CallContext, Opener } from '../src/bus/caller';
import { Domain } from '../src/bus/domain';
import { openHandle, type Handle } from '../src/bus/handle';
import { MemfdStorage } from '../src/os/memfd-storage';
import { FdTable, TestBus, credsOf } from '../test/helpers/kdbus-client';
import { FlatMemory } from './flat-memory';
import { HotConn } from './hot-conn';
import { bytes, type MemoryRow } from './report';

const POOL_SIZE = 16n * 1024n * 1024n;
const IDLE = 5000;
/** Connections per uid, under USER_MAX_CONN (1024). */
const PER_USER = 1000;

function gc(): void {
  const collect = (globalThis as { gc?: () => void }).gc;
  if (!collect) throw new Error('run node with --expose-gc for the memory figures');
  collect();
  collect();
}

/**
 * IDLE connections made the way a transport makes them (a Handle per open file, HELLO, FREE
 * of the HELLO slice), from one shared struct so that nothing client-side stays behind.
 */
export async function idleConnections(): Promise<MemoryRow[]> {
  const tb = await TestBus.create();
  const ep = tb.bus.defaultEndpoint;
  const mem = new FlatMemory(1024);
  const hello = Buffer.alloc(StructSize.cmd_hello);
  hello.writeBigUInt64LE(BigInt(hello.length), 0);
  hello.writeBigUInt64LE(HelloFlags.ACCEPT_FD, Off.cmd.flags);
  hello.writeBigUInt64LE(POOL_SIZE, Off.hello.pool_size);
  const helloAt = mem.put(hello);
  const freeAt = mem.put(Buffer.alloc(Off.free.items));
  mem.setU64(freeAt, BigInt(Off.free.items));
  const files = new FdTable();
  const users: Array<{ opener: Opener; ctx: CallContext }> = [];
  for (let u = 0; u * PER_USER < IDLE; u++) {
    const creds = credsOf(60_000 + u);
    users.push({ opener: { creds, privileged: false, pid: process.pid }, ctx: { mem, files, installer: files, pid: process.pid, tid: process.pid, creds } });
  }
  const handles: Handle[] = [];
  const make = (i: number): void => {
    const { opener, ctx } = users[Math.floor(i / PER_USER)];
    const h = openHandle({ kind: 'endpoint', ep }, opener);
    h.ioctl(Cmd.HELLO, helloAt, ctx);
    mem.setU64(freeAt + BigInt(Off.free.offset), mem.u64(helloAt + BigInt(Off.hello.offset)));
    h.ioctl(Cmd.FREE, freeAt, ctx);
    handles.push(h);
  };
  make(0);
  handles.pop()!.release();
  gc();
  const before = process.memoryUsage();
  for (let i = 0; i < IDLE; i++) make(i);
  gc();
  const after = process.memoryUsage();
  if (tb.bus.connections.size !== IDLE) throw new Error(`benchmark setup: ${tb.bus.connections.size} connections, expected ${IDLE}`);
  for (const h of handles) h.release();
  tb.destroy();
  const per = (k: 'heapUsed' | 'arrayBuffers' | 'rss'): number => (after[k] - before[k]) / IDLE;
  return [
    { label: `heap per idle connection (${IDLE.toLocaleString('en-US')})`, value: bytes(per('heapUsed')), note: 'heapUsed delta / N after gc; daemon objects only (Handle, Connection, pool bookkeeping, HELLO metadata)' },
    { label: 'pool pages per idle connection', value: bytes(per('arrayBuffers')), note: 'arrayBuffers delta / N: the SparseStorage page HELLO wrote the bloom item into' },
    { label: 'rss per idle connection', value: bytes(per('rss')), note: 'rss delta / N (includes the above and allocator slack)' },
  ];
}

/** One 1 KiB message queued in a fresh 16 MiB pool, then 10,000 more received and freed. */
async function poolResidency(kind: 'sparse' | 'memfd'): Promise<MemoryRow[]> {
  const domain = new Domain();
  if (kind === 'memfd') domain.poolStorage = (size) => new MemfdStorage(size, 'kdbus-bench-pool');
  const tb = await TestBus.create({ domain });
  const a = new HotConn(await tb.conn({ attachSend: 0n, attachRecv: 0n, poolSize: POOL_SIZE }), 4096);
  const b = new HotConn(await tb.conn({ attachSend: 0n, attachRecv: 0n, poolSize: POOL_SIZE }), 4096);
  const out = a.prepare({ dst: b.id, payload: Buffer.alloc(1024, 7) });
  a.send(out);
  const storage = b.conn.pool.storage;
  const one = storage.resident();
  b.drain();
  for (let i = 0; i < 10_000; i++) {
    a.send(out);
    b.recvFree();
  }
  const many = storage.resident();
  a.client.close();
  b.client.close();
  tb.destroy();
  const name = kind === 'sparse' ? 'SparseStorage resident' : 'MemfdStorage st_blocks';
  return [
    { label: `${name}, 16 MiB pool, 1 message`, value: bytes(one), note: 'untouched pages cost nothing' },
    { label: `${name}, after 10,000 x 1 KiB`, value: bytes(many), note: 'received and freed one by one: the allocator reuses low offsets' },
  ];
}

export async function poolCases(): Promise<MemoryRow[]> {
  return [...(await poolResidency('sparse')), ...(await poolResidency('memfd'))];
}
