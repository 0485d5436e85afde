/**
 * One ioctl carried through the FUSE retry protocol (fs/fuse/ioctl.c), for a daemon that
 * may not reach its callers' memory with process_vm. The kernel copies in only what a
 * FUSE_IOCTL_RETRY answer names, at most IOCTL_MAX_BYTES and IOCTL_MAX_IOV ranges per
 * round, and sends the ioctl again; the command runs again from the start each round until
 * everything it reads is there (commands change nothing before they have read all they
 * need). Each round's bytes are kept, so the next round asks only for what is new, and a
 * range longer than a round carries (a SEND's payload vector, up to kdbus's 2 MiB) comes in
 * pieces over several rounds. The command then runs on one copy of all it read, taken
 * piece by piece, as kdbus itself copied a caller's memory while the caller's other threads
 * could change it: every check runs on that copy, none on bytes of an earlier attempt.
 */
import { readCommand } from '../abi/command';
import { Specs } from '../abi/commands';
import { Cmd, ITEM_HEADER_SIZE, ItemType, Limits, Off, StructSize } from '../abi/constants';
import type { Item } from '../abi/items';
import type { HeldAccount } from '../os/held-budget';
import type { Segment } from '../transport/frames';
import { SegmentMemory, type NeedMemory } from '../transport/segment-memory';
import { IOCTL_MAX_BYTES, IOCTL_MAX_IOV, type Iovec } from './fuse-abi';

/**
 * Rounds one ioctl may take, against a loop that would never end: a SEND reads the sizes
 * and then the whole of its struct and of its message (4 rounds), then each vector its 32 KiB
 * message can name (1022 of 32-byte items), the 2 MiB of payload they may add up to in
 * pieces of a round each, and runs once more with everything.
 */
export const MAX_ROUNDS = 4 + Math.floor((Limits.CMD_MAX_SIZE - StructSize.msg) / (ITEM_HEADER_SIZE + StructSize.vec)) +
  Limits.MSG_MAX_PAYLOAD_VEC_SIZE / IOCTL_MAX_BYTES + 1;

/** Ranges one round asks for: the protocol's 256 iovecs, less the two the result may need. */
const MAX_VECTORS_PER_ROUND = IOCTL_MAX_IOV - 3;

/** What to tell the kernel next: copy `ins` in and send the ioctl again; `outs` get the result. */
export interface RetryAsk {
  ins: Iovec[];
  outs: Iovec[];
}

/** Why the ioctl cannot go on, and the errno its caller gets. */
export interface RetryRefusal {
  errno: 'ENOMEM' | 'EMSGSIZE';
  why: string;
}

export class RetriedIoctl {
  /** Caller memory copied in so far, in the order it came. */
  private readonly held: Segment[] = [];
  /** A range longer than one round carries, filled piece by piece. */
  private partial: { address: bigint; data: Buffer; filled: number } | undefined;
  /** What the last answer asked the kernel for: this round's bytes are those, in order. */
  private asked: Iovec[] = [];
  /** Where the result goes, as the last answer declared it (the kernel copies out to these). */
  private outs: Iovec[] = [];
  private rounds = 0;

  constructor(
    readonly fh: number,
    readonly cmd: number,
    readonly arg: bigint,
    /** The caller's user's share of the daemon's memory, charged with the bytes held. */
    private readonly account: HeldAccount,
  ) {}

  /**
   * Takes a round's bytes, as the kernel copied them for the last answer's `ins`. False when
   * they are not that (another ioctl's round, out of order): the caller starts over.
   */
  absorb(data: Buffer): boolean {
    const expected = this.asked.reduce((n, v) => n + v.len, 0);
    if (data.length !== expected) return false;
    let at = 0;
    for (const v of this.asked) {
      const bytes = data.subarray(at, at + v.len);
      at += v.len;
      const p = this.partial;
      if (p && v.base === p.address + BigInt(p.filled)) {
        bytes.copy(p.data, p.filled);
        p.filled += v.len;
        if (p.filled === p.data.length) {
          this.held.push({ address: p.address, data: p.data });
          this.partial = undefined;
        }
      } else {
        // The request buffer is reused by the next read: the bytes become the ioctl's own.
        this.held.push({ address: v.base, data: Buffer.from(bytes) });
      }
    }
    this.asked = [];
    return true;
  }

  /** The memory to run the command on; undefined while a long range is still coming in. */
  memory(): SegmentMemory | undefined {
    return this.partial ? undefined : new SegmentMemory(this.held);
  }

  /** The answer that brings the next piece of the long range in. */
  nextPiece(): RetryAsk | RetryRefusal {
    const p = this.partial!;
    return this.ask({ base: p.address + BigInt(p.filled), len: Math.min(IOCTL_MAX_BYTES, p.data.length - p.filled) });
  }

  /**
   * The answer to a run that needed `need`: copy it in, or its first piece if it is longer
   * than a round carries; or why it cannot go on: beyond the user's share of memory, or
   * beyond what the protocol can carry.
   */
  askFor(need: NeedMemory): RetryAsk | RetryRefusal {
    if (need.length > IOCTL_MAX_BYTES) {
      if (!this.account.hold(this.bytes + need.length)) return { errno: 'ENOMEM', why: this.account.refusal };
      this.partial = { address: need.address, data: Buffer.alloc(need.length), filled: 0 };
      return this.nextPiece();
    }
    const ranges = [{ base: need.address, len: need.length }, ...this.vectorsAfter(need, IOCTL_MAX_BYTES - need.length)];
    const bytes = ranges.reduce((n, v) => n + v.len, 0);
    if (!this.account.hold(this.bytes + bytes)) return { errno: 'ENOMEM', why: this.account.refusal };
    return this.ask(...ranges);
  }

  /**
   * A SEND reads its vectors one after the other, each a round of its own: those of its
   * message that are not here yet come along with the one it asked for, as many as fit.
   */
  private vectorsAfter(need: NeedMemory, room: number): Iovec[] {
    const out: Iovec[] = [];
    if (this.cmd !== Cmd.SEND) return out;
    const mem = new SegmentMemory(this.held);
    let items: readonly Item[];
    try {
      items = readCommand(mem, mem.read(this.arg + BigInt(Off.send.msg_address), 8).readBigUInt64LE(0), Specs.MSG).items;
    } catch {
      return out;
    }
    for (const it of items) {
      if (it.type !== ItemType.PAYLOAD_VEC || out.length >= MAX_VECTORS_PER_ROUND) continue;
      const len = Number(it.payload.readBigUInt64LE(0));
      const base = it.payload.readBigUInt64LE(8);
      if (base !== 0n && len > 0 && len <= room && base !== need.address && !mem.has(base, len)) {
        out.push({ base, len });
        room -= len;
      }
    }
    return out;
  }

  private ask(...ranges: Iovec[]): RetryAsk | RetryRefusal {
    if (++this.rounds > MAX_ROUNDS) return { errno: 'EMSGSIZE', why: `it read caller memory in more than ${MAX_ROUNDS} pieces` };
    this.asked = ranges;
    // Sizes of the struct and message may be among the bytes asked for; until they come,
    // zeros stand in for them, and the ranges are declared once they are known: commands
    // read a size before what it covers, so that is a round before the command can finish.
    const ahead = [...this.held];
    if (this.partial) ahead.push({ address: this.partial.address, data: this.partial.data });
    else for (const v of ranges) ahead.push({ address: v.base, data: Buffer.alloc(v.len) });
    this.outs = resultRanges(this.cmd, this.arg, new SegmentMemory(ahead));
    return { ins: this.asked, outs: this.outs };
  }

  /** The data for the declared out ranges: the caller's bytes as read, with the command's writes on them. */
  result(mem: SegmentMemory): Buffer {
    const parts: Buffer[] = [];
    for (const o of this.outs) {
      let b: Buffer;
      try {
        b = mem.read(o.base, o.len);
      } catch {
        b = Buffer.alloc(o.len);
      }
      for (const w of mem.writes) {
        const start = Number(w.address - o.base);
        if (start >= 0 && start + w.data.length <= o.len) w.data.copy(b, start);
      }
      parts.push(b);
    }
    return Buffer.concat(parts);
  }

  /** Bytes of caller memory this ioctl holds. */
  get bytes(): number {
    let n = this.partial?.data.length ?? 0;
    for (const s of this.held) n += s.data.length;
    return n;
  }

  /** The ioctl is over (answered, or its file closed): its bytes are no longer charged. */
  end(): void {
    this.account.hold(0);
  }
}

/**
 * The caller memory a kdbus command writes back into: its own struct, and for SEND the
 * message (negotiation answers). Known once their sizes have been read; at most 32 KiB
 * each, kdbus's limit for both, so the two fit in one round's out data.
 */
function resultRanges(cmd: number, arg: bigint, mem: SegmentMemory): Iovec[] {
  const out: Iovec[] = [];
  const size = sizeAt(mem, arg);
  if (size === undefined) return out;
  out.push({ base: arg, len: size });
  if (cmd === Cmd.SEND) {
    let msgAddr: bigint;
    try {
      msgAddr = mem.read(arg + BigInt(Off.send.msg_address), 8).readBigUInt64LE(0);
    } catch {
      return out;
    }
    const msgSize = sizeAt(mem, msgAddr);
    if (msgSize !== undefined) out.push({ base: msgAddr, len: msgSize });
  }
  return out;
}

function sizeAt(mem: SegmentMemory, address: bigint): number | undefined {
  try {
    const size = Number(mem.read(address, 8).readBigUInt64LE(0));
    return size >= 8 && size <= 32768 ? size : undefined;
  } catch {
    return undefined;
  }
}
