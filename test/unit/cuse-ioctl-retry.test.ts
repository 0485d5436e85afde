/**
 * Ioctls through the FUSE retry protocol, the CUSE transport's way to caller memory when
 * process_vm is refused: a CuseNode in retry mode, driven by a stand-in for the kernel's
 * side of fs/fuse/ioctl.c that enforces its limits (128 KiB in and out per round, 256
 * iovecs) and copies from and to a test address space. The real kernel runs the same
 * clients in the VM (test/integration/cuse-vm.test.ts, the C client's "large" scenario).
 */
import assert from 'node:assert/strict';
import { Cmd, ItemType, Off, StructSize } from '../../src/abi/constants';
import { Errno } from '../../src/abi/errno';
import { ItemWriter } from '../../src/abi/items';
import type { CuseChannel } from '../../src/cuse/cuse-channel';
import { CuseNode } from '../../src/cuse/cuse-node';
import { IOCTL_MAX_BYTES, IOCTL_MAX_IOV, IOCTL_RETRY, IOCTL_UNRESTRICTED, Opcode, OUT_HEADER, readCounter, type Iovec } from '../../src/cuse/fuse-abi';
import { HeldBudget } from '../../src/os/held-budget';
import { AttachmentRegistry } from '../../src/transport/attachments';
import { Arena } from '../helpers/arena';
import { TestBus } from '../helpers/kdbus-client';

interface Outcome {
  result: number;
  rounds: number;
  /** The most bytes one round copied in. */
  mostIn: number;
}

/** One process with a CUSE file open, and the kernel between it and the daemon. */
class CuseCaller {
  readonly mem = new Arena();
  readonly fh: number;
  private unique = 1;
  private readonly answers = new Map<number, (b: Buffer) => void>();
  private readonly ch = { send: (b: Buffer) => this.answers.get(readCounter(b, 8))?.(Buffer.from(b)) } as unknown as CuseChannel;
  /** Memory changes to make before the ioctl's round `n` (the caller's other threads at work). */
  beforeRound: ((round: number) => void) | undefined;

  constructor(readonly node: CuseNode) {
    const opened = this.request(Opcode.OPEN, Buffer.alloc(8));
    assert.equal(opened.readInt32LE(4), 0, 'OPEN');
    this.fh = readCounter(opened, OUT_HEADER);
  }

  /** A request whose reply comes at once. */
  private request(opcode: number, payload: Buffer): Buffer {
    let got: Buffer | undefined;
    this.submit(opcode, payload, (b) => (got = b));
    assert.ok(got, `no reply to opcode ${opcode}`);
    return got;
  }

  private submit(opcode: number, payload: Buffer, onReply: (b: Buffer) => void): void {
    const unique = this.unique++;
    this.answers.set(unique, (b) => {
      this.answers.delete(unique);
      onReply(b);
    });
    this.node.request(this.ch, { len: 40 + payload.length, opcode, unique, uid: process.getuid!(), gid: process.getgid!(), pid: process.pid }, payload);
  }

  /** fuse_do_ioctl: rounds until the daemon stops asking, within the protocol's limits. */
  async ioctl(cmd: number, arg: bigint, maxRounds = Infinity): Promise<Outcome> {
    let ins: Iovec[] = [];
    let outs: Iovec[] = [];
    let mostIn = 0;
    for (let round = 1; round <= maxRounds; round++) {
      this.beforeRound?.(round);
      const data = Buffer.concat(ins.map((v) => this.mem.read(v.base, v.len)));
      const outSize = outs.reduce((n, v) => n + v.len, 0);
      assert.ok(data.length <= IOCTL_MAX_BYTES && outSize <= IOCTL_MAX_BYTES, `round ${round}: ${data.length} bytes in, ${outSize} out`);
      mostIn = Math.max(mostIn, data.length);
      const p = Buffer.alloc(32 + data.length);
      p.writeUInt32LE(this.fh, 0);
      p.writeUInt32LE(IOCTL_UNRESTRICTED, 8);
      p.writeUInt32LE(cmd, 12);
      p.writeBigUInt64LE(arg, 16);
      p.writeUInt32LE(data.length, 24);
      p.writeUInt32LE(outSize, 28);
      data.copy(p, 32);
      const answer = await new Promise<Buffer>((resolve) => this.submit(Opcode.IOCTL, p, resolve));
      assert.equal(answer.readInt32LE(4), 0, 'the ioctl answer is not a FUSE error');
      const result = answer.readInt32LE(OUT_HEADER);
      const flags = answer.readUInt32LE(OUT_HEADER + 4);
      if (!(flags & IOCTL_RETRY)) {
        const out = answer.subarray(OUT_HEADER + 16);
        assert.ok(out.length <= outSize, `${out.length} bytes of result for ${outSize} declared`);
        let at = 0;
        for (const v of outs) {
          if (at >= out.length) break;
          this.mem.write(v.base, out.subarray(at, at + v.len));
          at += v.len;
        }
        return { result, rounds: round, mostIn };
      }
      const nIn = answer.readUInt32LE(OUT_HEADER + 8);
      const nOut = answer.readUInt32LE(OUT_HEADER + 12);
      assert.ok(nIn + nOut <= IOCTL_MAX_IOV, `${nIn} + ${nOut} iovecs`);
      const iov = (i: number): Iovec => ({
        base: answer.readBigUInt64LE(OUT_HEADER + 16 + 16 * i),
        len: Number(answer.readBigUInt64LE(OUT_HEADER + 24 + 16 * i)),
      });
      ins = Array.from({ length: nIn }, (_, i) => iov(i));
      outs = Array.from({ length: nOut }, (_, i) => iov(nIn + i));
    }
    return { result: NaN, rounds: maxRounds, mostIn };
  }

  /** READ of pool bytes, for clients that cannot map the pool. */
  readPool(offset: number, size: number): Buffer {
    const p = Buffer.alloc(24);
    p.writeUInt32LE(this.fh, 0);
    p.writeBigUInt64LE(BigInt(offset), 8);
    p.writeUInt32LE(size, 16);
    return this.request(Opcode.READ, p).subarray(OUT_HEADER);
  }

  release(): void {
    const p = Buffer.alloc(8);
    p.writeUInt32LE(this.fh, 0);
    this.request(Opcode.RELEASE, p);
  }

  async hello(): Promise<bigint> {
    const b = Buffer.alloc(StructSize.cmd_hello);
    b.writeBigUInt64LE(BigInt(b.length), 0);
    b.writeBigUInt64LE(1n, Off.cmd.flags);
    b.writeBigUInt64LE(16n * 1024n * 1024n, Off.hello.pool_size);
    const at = this.mem.put(b);
    const r = await this.ioctl(Cmd.HELLO, at);
    assert.equal(r.result, 0, 'HELLO');
    const id = this.mem.read(at + BigInt(Off.hello.id), 8).readBigUInt64LE(0);
    await this.free(this.mem.read(at + BigInt(Off.hello.offset), 8).readBigUInt64LE(0));
    return id;
  }

  async free(offset: bigint): Promise<void> {
    const b = Buffer.alloc(StructSize.cmd_free);
    b.writeBigUInt64LE(BigInt(b.length), 0);
    b.writeBigUInt64LE(offset, Off.free.offset);
    assert.equal((await this.ioctl(Cmd.FREE, this.mem.put(b))).result, 0, 'FREE');
  }

  /** The SEND struct and its message, in this caller's memory: `parts` become PAYLOAD_VECs. */
  placeSend(dst: bigint, parts: Buffer[]): { cmd: bigint; msg: bigint } {
    const w = new ItemWriter();
    w.u64(0).u64(0).u64(0).u64(dst).u64(0).u64(0x4442757344427573n).u64(7n).u64(0n);
    for (const part of parts) w.itemU64(ItemType.PAYLOAD_VEC, BigInt(part.length), this.mem.put(part));
    const msg = Buffer.from(w.finish());
    msg.writeBigUInt64LE(BigInt(msg.length), 0);
    const msgAt = this.mem.put(msg);
    const cmd = Buffer.alloc(StructSize.cmd_send);
    cmd.writeBigUInt64LE(BigInt(cmd.length), 0);
    cmd.writeBigUInt64LE(msgAt, Off.send.msg_address);
    return { cmd: this.mem.put(cmd), msg: msgAt };
  }

  async send(dst: bigint, parts: Buffer[]): Promise<Outcome> {
    return this.ioctl(Cmd.SEND, this.placeSend(dst, parts).cmd);
  }

  /** RECV and READ of the message; its data vectors' bytes joined. */
  async recv(): Promise<{ result: number; data?: Buffer }> {
    const b = Buffer.alloc(StructSize.cmd_recv);
    b.writeBigUInt64LE(BigInt(b.length), 0);
    const at = this.mem.put(b);
    const r = await this.ioctl(Cmd.RECV, at);
    if (r.result !== 0) return { result: r.result };
    const offset = Number(this.mem.read(at + BigInt(Off.recv.msg_offset), 8).readBigUInt64LE(0));
    const size = Number(this.mem.read(at + BigInt(Off.recv.msg_msg_size), 8).readBigUInt64LE(0));
    const slice = this.readPool(0, offset + size).subarray(offset);
    const data: Buffer[] = [];
    for (let p = 64; p + 16 <= Number(slice.readBigUInt64LE(0));) {
      const itemSize = Number(slice.readBigUInt64LE(p));
      if (slice.readBigUInt64LE(p + 8) === BigInt(ItemType.PAYLOAD_OFF)) {
        const len = Number(slice.readBigUInt64LE(p + 16));
        const off = slice.readBigUInt64LE(p + 24);
        if (off !== 0xffff_ffff_ffff_ffffn) data.push(slice.subarray(Number(off), Number(off) + len));
      }
      p += (itemSize + 7) & ~7;
    }
    await this.free(BigInt(offset));
    return { result: 0, data: Buffer.concat(data) };
  }
}

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = seed >>> 0;
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 16;
  }
  return b;
}

describe('CUSE ioctls through the FUSE retry protocol', () => {
  let tb: TestBus;
  let budget: HeldBudget;
  let node: CuseNode;

  beforeEach(async () => {
    tb = await TestBus.create();
    budget = new HeldBudget('bytes copied in', { perUser: 64 << 20, total: 256 << 20 });
    node = new CuseNode({ kind: 'endpoint', ep: tb.bus.defaultEndpoint }, { mode: 'retry', copiedIn: budget }, new AttachmentRegistry(), () => false);
  });

  afterEach(() => {
    node.closeAll();
    tb.destroy();
  });

  it('carries payload vectors beyond one round in pieces of at most 128 KiB, every byte intact', async () => {
    const a = new CuseCaller(node);
    const b = new CuseCaller(node);
    await a.hello();
    const bId = await b.hello();
    const header = Buffer.from('a header of 24 bytes....');
    // sd-bus's largest inline body, and the most kdbus takes in vectors (2 MiB in all).
    for (const bodyLen of [512 * 1024 - 8, 2 * 1024 * 1024 - 24 - 3]) {
      const body = pattern(bodyLen, bodyLen);
      const sent = await a.send(bId, [header, body]);
      assert.equal(sent.result, 0, `SEND of ${bodyLen} bytes`);
      assert.ok(sent.mostIn <= IOCTL_MAX_BYTES);
      // The struct, the message and its header vector, then the body piece by piece.
      assert.ok(sent.rounds >= Math.ceil(bodyLen / IOCTL_MAX_BYTES) + 4, `${sent.rounds} rounds`);
      const got = await b.recv();
      assert.equal(got.result, 0);
      assert.ok(got.data!.equals(Buffer.concat([header, body])), `the ${bodyLen}-byte body arrived changed`);
    }
    assert.equal(budget.held(process.getuid!()), 0, 'nothing stays charged once the ioctls are answered');
  });

  it('carries a message that names a thousand vectors, as many to a round as the protocol takes', async () => {
    const a = new CuseCaller(node);
    const b = new CuseCaller(node);
    await a.hello();
    const bId = await b.hello();
    const parts = Array.from({ length: 1000 }, (_, i) => pattern(8, i));
    const sent = await a.send(bId, parts);
    assert.equal(sent.result, 0);
    // The first round, the sizes and the whole of struct and message, then the vectors
    // with the two result ranges beside them in each round's 256 iovecs.
    assert.ok(sent.rounds <= 1 + 4 + Math.ceil(1000 / (IOCTL_MAX_IOV - 3)), `${sent.rounds} rounds`);
    const got = await b.recv();
    assert.ok(got.data!.equals(Buffer.concat(parts)));
  });

  it('refuses more than 2 MiB of vectors with EMSGSIZE before copying them in', async () => {
    const a = new CuseCaller(node);
    await a.hello();
    const sent = await a.send(5n, [Buffer.alloc(24), Buffer.alloc(2 * 1024 * 1024 - 16)]);
    assert.equal(sent.result, -Errno.EMSGSIZE);
    assert.ok(sent.mostIn < 4096, `${sent.mostIn} bytes copied in for a refused message`);
  });

  it('answers ENOMEM, and queues nothing, when the pieces would exceed the user\'s share', async () => {
    budget = new HeldBudget('bytes copied in', { perUser: 256 * 1024, total: 1 << 20 });
    node = new CuseNode({ kind: 'endpoint', ep: tb.bus.defaultEndpoint }, { mode: 'retry', copiedIn: budget }, new AttachmentRegistry(), () => false);
    const a = new CuseCaller(node);
    const b = new CuseCaller(node);
    await a.hello();
    const bId = await b.hello();
    assert.equal((await a.send(bId, [pattern(200 * 1024, 1)])).result, 0, 'within the share');
    assert.equal((await b.recv()).result, 0);
    assert.equal((await a.send(bId, [pattern(300 * 1024, 2)])).result, -Errno.ENOMEM);
    assert.equal((await b.recv()).result, -Errno.EAGAIN);
    assert.equal(budget.held(process.getuid!()), 0);
  });

  it('runs the command on one copy: a size changed between rounds is EINVAL, as kdbus read it twice', async () => {
    const a = new CuseCaller(node);
    const b = new CuseCaller(node);
    await a.hello();
    const bId = await b.hello();
    const { cmd } = a.placeSend(bId, [Buffer.alloc(16)]);
    // Round 1 asks for nothing, round 2 brings the struct's size, round 3 the whole struct.
    a.beforeRound = (round) => {
      if (round === 3) a.mem.write(cmd, Buffer.from([StructSize.cmd_send + 8, 0, 0, 0, 0, 0, 0, 0]));
    };
    assert.equal((await a.ioctl(Cmd.SEND, cmd)).result, -Errno.EINVAL);
    assert.equal((await b.recv()).result, -Errno.EAGAIN);
  });

  it('lets go of what an ioctl copied in when its file closes between two rounds', async () => {
    const a = new CuseCaller(node);
    const b = new CuseCaller(node);
    await a.hello();
    const bId = await b.hello();
    const { cmd } = a.placeSend(bId, [pattern(1 << 20, 3)]);
    // The caller is killed with its body half copied in: the kernel sends no further round.
    await a.ioctl(Cmd.SEND, cmd, 8);
    assert.ok(budget.held(process.getuid!()) >= 3 * IOCTL_MAX_BYTES, 'the pieces so far are charged');
    a.release();
    assert.equal(budget.held(process.getuid!()), 0);
    assert.equal((await b.recv()).result, -Errno.EAGAIN);
  });
});
