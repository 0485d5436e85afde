/**
 * A virtual monotonic clock for the fuzz run: while installed, process.hrtime.bigint() and
 * setTimeout/clearTimeout are the clock's, and time only moves when the fuzzer advances it.
 * Timeouts of calls and reply scans then fire at the same iteration of every run with the
 * same seed, which makes a failing seed replayable, and the timers the bus leaves behind can
 * be counted exactly.
 */

interface VirtualTimer {
  readonly id: number;
  readonly at: bigint;
  readonly fn: () => void;
  refed: boolean;
}

/** The object setTimeout returns: what the bus calls on a timer (unref) and clearTimeout takes. */
class TimerHandle {
  constructor(
    readonly timer: VirtualTimer,
  ) {}
  unref(): this {
    this.timer.refed = false;
    return this;
  }
  ref(): this {
    this.timer.refed = true;
    return this;
  }
  hasRef(): boolean {
    return this.timer.refed;
  }
  [Symbol.toPrimitive](): number {
    return this.timer.id;
  }
}

export class VirtualClock {
  private nowNs: bigint;
  private nextId = 1;
  /** Pending timers by id; firing order is (deadline, id). */
  private readonly timers = new Map<number, VirtualTimer>();
  private saved: { hrtime: () => bigint; setTimeout: typeof setTimeout; clearTimeout: typeof clearTimeout } | undefined;

  constructor(
    startNs: bigint,
    /** Gets what a timer callback throws (in a real process: an uncaught exception). */
    private readonly onError: (e: unknown) => void,
  ) {
    this.nowNs = startNs;
  }

  get now(): bigint {
    return this.nowNs;
  }

  /** Pending timers: [all, those that would keep a real process alive]. */
  pending(): { all: number; refed: number } {
    let refed = 0;
    for (const t of this.timers.values()) if (t.refed) refed++;
    return { all: this.timers.size, refed };
  }

  install(): void {
    if (this.saved) return;
    this.saved = { hrtime: process.hrtime.bigint, setTimeout: globalThis.setTimeout, clearTimeout: globalThis.clearTimeout };
    process.hrtime.bigint = () => this.nowNs;
    const set = (fn: (...args: unknown[]) => void, ms?: number, ...args: unknown[]): TimerHandle => {
      const delay = BigInt(Math.max(1, Math.floor(Number(ms) || 0)));
      const timer: VirtualTimer = { id: this.nextId++, at: this.nowNs + delay * 1_000_000n, fn: () => fn(...args), refed: true };
      this.timers.set(timer.id, timer);
      return new TimerHandle(timer);
    };
    const clear = (h: unknown): void => {
      if (h instanceof TimerHandle) this.timers.delete(h.timer.id);
    };
    globalThis.setTimeout = set as unknown as typeof setTimeout;
    globalThis.clearTimeout = clear as unknown as typeof clearTimeout;
  }

  uninstall(): void {
    if (!this.saved) return;
    process.hrtime.bigint = this.saved.hrtime;
    globalThis.setTimeout = this.saved.setTimeout;
    globalThis.clearTimeout = this.saved.clearTimeout;
    this.saved = undefined;
    this.timers.clear();
  }

  /** Moves time forward, running every timer that comes due, in order, as the event loop would. */
  advance(ns: bigint): void {
    const target = this.nowNs + ns;
    for (;;) {
      let next: VirtualTimer | undefined;
      for (const t of this.timers.values()) if (t.at <= target && (!next || t.at < next.at || (t.at === next.at && t.id < next.id))) next = t;
      if (!next) break;
      this.timers.delete(next.id);
      if (next.at > this.nowNs) this.nowNs = next.at;
      try {
        next.fn();
      } catch (e) {
        this.onError(e);
      }
    }
    this.nowNs = target;
  }
}
