/**
 * A connection's incoming queue: FIFO for plain RECV, and ordered by priority (lowest value
 * first, FIFO among equals) for RECV with USE_PRIORITY. Each entry owns its pool slice and
 * the quota charge that pays for it, so freeing an entry releases both.
 */
import type { ImportedFile } from './caller';
import type { HeldAccount } from '../os/held-budget';
import type { Slice } from './pool';
import type { QuotaCharge } from './quota';
import type { ReplyTracker } from './reply';

/**
 * The files of one message, shared by all its receivers (a broadcast carries memfds to
 * many). They are installed at RECV into the positions recorded here.
 */
export class Gaps {
  private refs = 1;

  constructor(
    readonly fds: readonly ImportedFile[],
    readonly memfds: readonly ImportedFile[],
    /** Offset of the FDS item's int array inside the kdbus_msg. */
    readonly fdOffset: number,
    /** Offsets of each PAYLOAD_MEMFD item's fd field inside the kdbus_msg. */
    readonly memfdOffsets: readonly number[],
    /** Where the files count as the daemon's descriptors (Domain.messageFds), until they close. */
    private readonly account?: HeldAccount,
  ) {}

  ref(): this {
    this.refs++;
    return this;
  }

  unref(): void {
    if (--this.refs > 0) return;
    for (const f of this.fds) f.close();
    for (const f of this.memfds) f.close();
    this.account?.hold(0);
  }
}

export class QueueEntry {
  prev: QueueEntry | undefined;
  next: QueueEntry | undefined;
  queued = false;
  /**
   * The receiver's shim was told this entry is what its next plain RECV takes, and may
   * already have handed it to the program (docs/socket-protocol.md, HEAD): it stays
   * where it is until that RECV or another reaches the daemon.
   */
  announced = false;

  constructor(
    public slice: Slice,
    public charge: QuotaCharge,
    readonly priority: bigint,
    readonly gaps: Gaps | undefined,
    /** The tracker of the call this message is (the entry holds a reference). */
    public reply: ReplyTracker | undefined,
    /** Registration number of the destination name, so activator hand-over can move it. */
    readonly dstNameId: bigint,
  ) {}

  get nFds(): number {
    return this.gaps ? this.gaps.fds.length : 0;
  }

  /** Releases quota and the kernel's reference on the slice; the files go with the last receiver. */
  dispose(): void {
    this.reply?.unref();
    this.reply = undefined;
    this.charge.release();
    this.slice.releaseKernel();
    this.gaps?.unref();
  }
}

export class Queue {
  private head: QueueEntry | undefined;
  private tail: QueueEntry | undefined;
  private count = 0;
  /** Entries per priority, each a FIFO; plus the sorted list of priorities present. */
  private readonly byPriority = new Map<bigint, Set<QueueEntry>>();
  private priorities: bigint[] = [];

  get size(): number {
    return this.count;
  }

  get empty(): boolean {
    return this.count === 0;
  }

  push(e: QueueEntry): void {
    e.prev = this.tail;
    e.next = undefined;
    if (this.tail) this.tail.next = e;
    else this.head = e;
    this.tail = e;
    e.queued = true;
    this.count++;
    let set = this.byPriority.get(e.priority);
    if (!set) {
      set = new Set();
      this.byPriority.set(e.priority, set);
      this.insertPriority(e.priority);
    }
    set.add(e);
  }

  remove(e: QueueEntry): void {
    if (!e.queued) return;
    if (e.prev) e.prev.next = e.next;
    else this.head = e.next;
    if (e.next) e.next.prev = e.prev;
    else this.tail = e.prev;
    e.prev = e.next = undefined;
    e.queued = false;
    this.count--;
    const set = this.byPriority.get(e.priority)!;
    set.delete(e);
    if (set.size === 0) {
      this.byPriority.delete(e.priority);
      this.priorities.splice(this.findPriority(e.priority), 1);
    }
  }

  /** The next entry: the oldest, or with usePriority the lowest priority if it is <= limit. */
  peek(usePriority: boolean, limit: bigint): QueueEntry | undefined {
    if (!usePriority) return this.head;
    const lowest = this.priorities[0];
    if (lowest === undefined || lowest > limit) return undefined;
    return this.byPriority.get(lowest)!.values().next().value;
  }

  /** Snapshot in FIFO order, for teardown and activator moves. */
  entries(): QueueEntry[] {
    const out: QueueEntry[] = [];
    for (let e = this.head; e; e = e.next) out.push(e);
    return out;
  }

  private findPriority(p: bigint): number {
    let lo = 0;
    let hi = this.priorities.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.priorities[mid]! < p) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private insertPriority(p: bigint): void {
    this.priorities.splice(this.findPriority(p), 0, p);
  }
}
