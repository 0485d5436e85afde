/**
 * Timers on CLOCK_MONOTONIC deadlines in nanoseconds, the clock kdbus clients put into
 * timeout_ns (Node's hrtime reads the same clock). setTimeout cannot wait longer than
 * 2^31-1 ms, so a far deadline is approached in steps.
 */
const MAX_DELAY_MS = 0x7fffffff;

export function nowNs(): bigint {
  return process.hrtime.bigint();
}

/** Delay for setTimeout until `deadlineNs`, rounded up, capped at what setTimeout accepts. */
export function delayUntil(deadlineNs: bigint): number {
  const ms = Number((deadlineNs - nowNs()) / 1_000_000n);
  return Math.min(Math.max(0, ms) + 1, MAX_DELAY_MS);
}

/** Calls `fire` once the deadline has passed; returns a function that cancels. */
export function atDeadline(deadlineNs: bigint, fire: () => void, unref = false): () => void {
  let timer: NodeJS.Timeout;
  const arm = (): void => {
    timer = setTimeout(() => (nowNs() >= deadlineNs ? fire() : arm()), delayUntil(deadlineNs));
    if (unref) timer.unref();
  };
  arm();
  return () => clearTimeout(timer);
}
