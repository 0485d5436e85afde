/**
 * A kdbus connection over the socket transport as the shim makes one, for tests of the
 * daemon's side: OPEN and HELLO through a ProtocolClient, the pool as the memfd HELLO hands
 * over, and the few commands the tests send (FREE, SEND with one vector, MATCH_ADD, RECV).
 * Caller memory is made up: each command's struct sits at its own fixed address.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Attach, Cmd, HelloFlags, ItemType, KDBUS_PAYLOAD_DBUS, Off } from '../../src/abi/constants';
import { ItemWriter } from '../../src/abi/items';
import { ProtocolClient, type Result } from './socket-client';

export function helloStruct(): Buffer {
  const w = new ItemWriter();
  w.u64(0).u64(HelloFlags.ACCEPT_FD).u64(0).u64(Attach.ALL).u64(Attach.ALL).u64(0).u64(0).u64(16n * 1024n * 1024n).u64(0).u64(0).zeros(16);
  w.string(ItemType.CONN_DESCRIPTION, 'socket-test');
  const b = Buffer.from(w.finish());
  b.writeBigUInt64LE(BigInt(b.length), 0);
  return b;
}

/** `struct` with the RESULT's write-backs applied, the struct having been at `base`. */
export function apply(struct: Buffer, base: bigint, r: Result): Buffer {
  const out = Buffer.from(struct);
  for (const w of r.writes) {
    const at = Number(w.address - base);
    if (at >= 0 && at + w.data.length <= out.length) w.data.copy(out, at);
  }
  return out;
}

export function readPool(fd: number, offset: number, size: number): Buffer {
  const b = Buffer.alloc(size);
  fs.readSync(fd, b, 0, size, offset);
  return b;
}

export class Peer {
  client!: ProtocolClient;
  pool = -1;
  id = 0n;
  /** `features`: OPEN's features word (OPEN_FEATURE_HEADS asks for HEAD frames). */
  static async connect(sock: string, bus: string, features = 0): Promise<Peer> {
    const p = new Peer();
    p.client = ProtocolClient.connect(sock);
    const o = await p.client.open(`${bus}/bus`, 2, features);
    assert.equal(o.errno, 0);
    const hello = helloStruct();
    const r = await p.client.ioctl(Cmd.HELLO, 0x10000n, [{ address: 0x10000n, data: hello }]);
    assert.equal(r.errno, 0);
    assert.ok(r.pool !== undefined, 'HELLO hands the pool over');
    p.pool = r.pool!;
    const out = apply(hello, 0x10000n, r);
    p.id = out.readBigUInt64LE(Off.hello.id);
    const items = readPool(p.pool, Number(out.readBigUInt64LE(Off.hello.offset)), 32);
    assert.equal(items.readBigUInt64LE(8), BigInt(ItemType.BLOOM_PARAMETER));
    assert.equal(items.readBigUInt64LE(16), 64n);
    await p.free(out.readBigUInt64LE(Off.hello.offset));
    return p;
  }

  async free(offset: bigint): Promise<void> {
    const b = Buffer.alloc(32);
    b.writeBigUInt64LE(32n, 0);
    b.writeBigUInt64LE(offset, 24);
    const r = await this.client.ioctl(Cmd.FREE, 0x20000n, [{ address: 0x20000n, data: b }]);
    assert.equal(r.errno, 0);
  }

  /** SEND to `dst` with one data vector (cookie 1); `prefetchMsg` false leaves the message for FETCH. */
  async send(dst: bigint, payload: string | Buffer, opts: { prefetchMsg?: boolean; memfd?: number } = {}): Promise<Result> {
    const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
    const w = new ItemWriter();
    w.u64(0).u64(0).u64(0).u64(dst).u64(0).u64(KDBUS_PAYLOAD_DBUS).u64(1n).u64(0n);
    w.itemU64(ItemType.PAYLOAD_VEC, BigInt(data.length), 0x50000n);
    if (opts.memfd !== undefined) {
      const at = w.beginItem(ItemType.PAYLOAD_MEMFD);
      w.u64(0).u64(5).i32(77).u32(0);
      w.endItem(at);
    }
    const msg = Buffer.from(w.finish());
    msg.writeBigUInt64LE(BigInt(msg.length), 0);
    const cmd = Buffer.alloc(56);
    cmd.writeBigUInt64LE(56n, 0);
    cmd.writeBigUInt64LE(0x40000n, Off.send.msg_address);
    const segs = [{ address: 0x30000n, data: cmd }, { address: 0x50000n, data }];
    if (opts.prefetchMsg !== false) segs.push({ address: 0x40000n, data: msg });
    this.client.memory = (a, l) => (a === 0x40000n && l <= msg.length ? msg.subarray(0, l) : undefined);
    const fds = opts.memfd !== undefined ? [{ number: 77, fd: opts.memfd }] : [];
    return this.client.ioctl(Cmd.SEND, 0x30000n, segs, fds);
  }

  /** MATCH_ADD of one rule: the ID_ADD or ID_REMOVE notification of `id`; the errno. */
  async matchId(type: ItemType, id: bigint): Promise<number> {
    const match = new ItemWriter();
    match.u64(0).u64(0).u64(0).u64(1n).itemU64(type, id, 0n);
    const m = Buffer.from(match.finish());
    m.writeBigUInt64LE(BigInt(m.length), 0);
    return (await this.client.ioctl(Cmd.MATCH_ADD, 0x70000n, [{ address: 0x70000n, data: m }])).errno;
  }

  /** RECV: the RESULT, and the message and its offset in the pool (for FREE) if one came. */
  async recv(reserved: number[] = []): Promise<{ r: Result; msg?: Buffer; offset?: bigint }> {
    const b = Buffer.alloc(64);
    b.writeBigUInt64LE(64n, 0);
    const r = await this.client.ioctl(Cmd.RECV, 0x60000n, [{ address: 0x60000n, data: b }], [], reserved);
    if (r.errno) return { r };
    const out = apply(b, 0x60000n, r);
    const offset = out.readBigUInt64LE(Off.recv.msg_offset);
    return { r, msg: readPool(this.pool, Number(offset), Number(out.readBigUInt64LE(Off.recv.msg_msg_size))), offset };
  }

  close(): void {
    this.client.close();
    fs.closeSync(this.pool);
  }
}
