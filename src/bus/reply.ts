/**
 * A reply tracker: created when a method call expecting a reply is queued, consumed by the
 * matching reply. The caller ("reply destination") holds it in its list; the callee
 * ("reply source") is the only peer allowed to answer. Synchronous calls wait on it.
 */
import type { Connection } from './connection';
import type { QueueEntry } from './queue';

export class ReplyTracker {
  /** The sync caller is still blocked in SEND. */
  waiting: boolean;
  /** The sync caller's syscall was interrupted; a restarted SEND with the same cookie resumes. */
  interrupted = false;
  /** errno handed to the sync caller when it wakes without a reply entry. */
  err = 0;
  /** The reply of a sync call, delivered straight to the caller instead of its queue. */
  entry: QueueEntry | undefined;
  /** Linked into the caller's list of outstanding requests. */
  linked = false;
  /** Called when a sync waiter must look at the tracker again. */
  wake: (() => void) | undefined;
  /**
   * Holders: the caller's list while linked, the queued call message, a blocked sync
   * caller. The caller's request slot (128 at most) is freed when the last one lets go.
   */
  private refs = 1;

  constructor(
    public replySrc: Connection,
    readonly replyDst: Connection,
    readonly cookie: bigint,
    /** Registration number of the name the call was addressed to (0: by id). */
    readonly nameId: bigint,
    /** Absolute CLOCK_MONOTONIC deadline in ns; 0 once the callee died and REPLY_DEAD went out. */
    public deadlineNs: bigint,
    readonly sync: boolean,
  ) {
    this.waiting = sync;
  }

  ref(): this {
    this.refs++;
    return this;
  }

  unref(): void {
    if (--this.refs > 0) return;
    this.replyDst.requestCount--;
    // A reply that reached a caller interrupted in its wait, which then never came back.
    this.entry?.dispose();
    this.entry = undefined;
  }

  /** Ends a synchronous wait with an errno (0 with an entry for a reply). */
  wakeup(err: number): void {
    this.waiting = false;
    this.err = err;
    this.wake?.();
  }
}
