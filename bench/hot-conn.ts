/**
 * The benchmark's side of one connection: a TestClient (used for HELLO and anything else
 * done once) plus prebuilt command structs in a FlatMemory, so that the measured loop is
 * nothing but Handle.ioctl() calls on structs already in place, as a real client reuses
 * its buffers. Every call goes through the bus's entry point; nothing is shortcut.
 */
import { Cmd, ItemType, KDBUS_PAYLOAD_DBUS, MsgFlags, Off, SendFlags, StructSize } from '../src/abi/constants';
import { ItemWriter } from '../src/abi/items';
import type { CallContext } from '../src/bus/caller';
import type { Connection } from '../src/bus/connection';
import type { Handle } from '../src/bus/handle';
import type { TestClient } from '../test/helpers/kdbus-client';
import { FlatMemory } from './flat-memory';

/** The largest struct command() copies into its scratch area. */
const SCRATCH = 4096;

export interface MessageSpec {
  dst: bigint;
  flags?: bigint;
  cookie?: bigint;
  /** timeout_ns of a call (absolute CLOCK_MONOTONIC) or cookie_reply of a reply. */
  timeoutOrReply?: bigint;
  /** Sent as one PAYLOAD_VEC; no vector at all when absent or empty. */
  payload?: Buffer;
  /** BLOOM_FILTER data (generation 0); the SIGNAL flag is added with it. */
  bloom?: Buffer;
  /** SEND with KDBUS_SEND_SYNC_REPLY. */
  sync?: boolean;
}

/** A kdbus_cmd_send and its kdbus_msg, placed in caller memory. */
export interface Outgoing {
  readonly cmd: bigint;
  readonly msg: bigint;
}

export class HotConn {
  readonly mem: FlatMemory;
  readonly ctx: CallContext;
  readonly handle: Handle;
  readonly id: bigint;
  private readonly recvAt: bigint;
  private readonly freeAt: bigint;
  private readonly scratch: bigint;

  constructor(readonly client: TestClient, memoryBytes = 16 * 1024) {
    this.mem = new FlatMemory(memoryBytes + SCRATCH + 256);
    this.ctx = { mem: this.mem, files: client.fds, installer: client.fds, pid: client.pid, tid: client.tid, creds: client.creds };
    this.handle = client.handle;
    this.id = client.id;
    this.recvAt = this.mem.put(struct(StructSize.cmd_recv));
    this.freeAt = this.mem.put(struct(Off.free.items));
    this.scratch = this.mem.alloc(SCRATCH);
  }

  get conn(): Connection {
    return this.client.conn;
  }

  /** Messages waiting in the queue. */
  get queued(): number {
    return this.conn.queue.size;
  }

  prepare(spec: MessageSpec): Outgoing {
    const w = new ItemWriter();
    const flags = (spec.flags ?? 0n) | (spec.bloom ? MsgFlags.SIGNAL : 0n);
    w.u64(0).u64(flags).u64(0).u64(spec.dst).u64(0).u64(KDBUS_PAYLOAD_DBUS).u64(spec.cookie ?? 1n).u64(spec.timeoutOrReply ?? 0n);
    if (spec.payload && spec.payload.length > 0) {
      w.itemU64(ItemType.PAYLOAD_VEC, BigInt(spec.payload.length), this.mem.put(spec.payload));
    }
    if (spec.bloom) {
      const at = w.beginItem(ItemType.BLOOM_FILTER);
      w.u64(0).bytes(spec.bloom);
      w.endItem(at);
    }
    const msg = this.mem.put(sized(w));
    const cmd = this.mem.put(sized(new ItemWriter(64).u64(0).u64(spec.sync ? SendFlags.SYNC_REPLY : 0n).u64(0).u64(msg).zeros(24)));
    return { cmd, msg };
  }

  send(o: Outgoing): void {
    if (this.handle.ioctl(Cmd.SEND, o.cmd, this.ctx)) throw new Error('SEND went asynchronous without SYNC_REPLY');
  }

  /** A SYNC_REPLY SEND: settles when the reply arrived (or the call failed). */
  call(o: Outgoing): Promise<void> {
    const p = this.handle.ioctl(Cmd.SEND, o.cmd, this.ctx);
    if (!p) throw new Error('a SYNC_REPLY SEND returned synchronously');
    return p;
  }

  /** Pool offset of the reply a finished call() left in its kdbus_cmd_send. */
  replyOffset(o: Outgoing): number {
    return Number(this.mem.u64(o.cmd + BigInt(Off.send.reply_offset)));
  }

  setCookie(o: Outgoing, cookie: bigint): void {
    this.mem.setU64(o.msg + BigInt(Off.msg.cookie), cookie);
  }

  setCookieReply(o: Outgoing, cookie: bigint): void {
    this.mem.setU64(o.msg + BigInt(Off.msg.cookie_reply), cookie);
  }

  /** RECV of the next message; returns its pool offset. Throws EAGAIN on an empty queue. */
  recv(): number {
    this.handle.ioctl(Cmd.RECV, this.recvAt, this.ctx);
    return Number(this.mem.u64(this.recvAt + BigInt(Off.recv.msg_offset)));
  }

  /** Size of the slice the last recv() returned. */
  get lastSize(): number {
    return Number(this.mem.u64(this.recvAt + BigInt(Off.recv.msg_msg_size)));
  }

  free(offset: number): void {
    this.mem.setU64(this.freeAt + BigInt(Off.free.offset), BigInt(offset));
    this.handle.ioctl(Cmd.FREE, this.freeAt, this.ctx);
  }

  recvFree(): void {
    this.free(this.recv());
  }

  /** Receives and frees everything queued; returns how many messages that was. */
  drain(): number {
    let n = 0;
    while (this.conn.queue.size > 0) {
      this.recvFree();
      n++;
    }
    return n;
  }

  /** Runs a one-off command (MATCH_ADD, NAME_ACQUIRE, ...) built by `build`; its size is patched in. */
  command(cmd: number, build: (w: ItemWriter) => void): void {
    const w = new ItemWriter();
    build(w);
    const b = sized(w);
    if (b.length > SCRATCH) throw new RangeError(`a ${b.length}-byte command does not fit the scratch area`);
    this.mem.write(this.scratch, b);
    const r = this.handle.ioctl(cmd, this.scratch, this.ctx);
    if (r) throw new Error('a one-off command went asynchronous');
  }

  /** Places a command struct for repeated use with run(). */
  place(build: (w: ItemWriter) => void): bigint {
    const w = new ItemWriter();
    build(w);
    return this.mem.put(sized(w));
  }

  run(cmd: number, at: bigint): void {
    if (this.handle.ioctl(cmd, at, this.ctx)) throw new Error('a command went asynchronous');
  }
}

/** An all-zero command struct of `size` bytes with its size field set. */
function struct(size: number): Buffer {
  const b = Buffer.alloc(size);
  b.writeBigUInt64LE(BigInt(size), 0);
  return b;
}

/** The writer's bytes, copied, with the leading u64 set to their length. */
function sized(w: ItemWriter): Buffer {
  const b = Buffer.from(w.finish());
  b.writeBigUInt64LE(BigInt(b.length), 0);
  return b;
}
