/**
 * Measuring: a case is a function run(n) doing n operations. The harness sizes n so that one
 * run takes about `targetMs` (the sizing runs double as warm-up), runs one more warm-up,
 * then `repeats` measured runs, and reports the median time per operation. No gc() between
 * runs: a forced full collection was measured to slow the run after it down by half.
 *
 * A run may time parts of itself (a broadcast's SEND apart from the receivers draining) and
 * return those durations, one per metric, in nanoseconds; otherwise its wall time is the one
 * metric. Nothing here judges the numbers: they are printed, never asserted.
 */
/** Measured runs per case (after warm-up); the median of them is reported. */
export const REPEATS = 7;

export type Run = (n: number) => number[] | void | Promise<number[] | void>;

export interface MeasureOptions {
  /** Wall time one measured run should take. */
  targetMs?: number;
  repeats?: number;
  /** n is kept a multiple of this (batches) and at least this. */
  step?: number;
  maxN?: number;
}

export interface Measurement {
  /** Operations per measured run. */
  n: number;
  /** Median nanoseconds per operation, per metric. */
  nsPerOp: number[];
  /** (max - min) / median of the runs, per metric. */
  spread: number[];
}

const now = (): number => Number(process.hrtime.bigint());

async function timed(run: Run, n: number): Promise<{ wall: number; metrics: number[] }> {
  const t0 = now();
  const parts = await run(n);
  const wall = now() - t0;
  return { wall, metrics: parts ? parts : [wall] };
}

export async function measure(run: Run, options: MeasureOptions = {}): Promise<Measurement> {
  const targetNs = (options.targetMs ?? 120) * 1e6;
  const repeats = options.repeats ?? REPEATS;
  const step = options.step ?? 1;
  const maxN = options.maxN ?? 1e7;
  const fit = (x: number): number => Math.min(maxN, Math.max(step, Math.round(x / step) * step));

  let n = fit(step);
  for (;;) {
    const { wall } = await timed(run, n);
    if (wall >= targetNs / 8 || n >= maxN) {
      n = fit((n * targetNs) / Math.max(wall, 1));
      break;
    }
    n = fit(n * 4);
  }
  await timed(run, n);

  const runs: number[][] = [];
  for (let r = 0; r < repeats; r++) runs.push((await timed(run, n)).metrics);
  const nsPerOp: number[] = [];
  const spread: number[] = [];
  for (let m = 0; m < runs[0].length; m++) {
    const xs = runs.map((x) => x[m] / n).sort((a, b) => a - b);
    const med = median(xs);
    nsPerOp.push(med);
    spread.push(med > 0 ? (xs[xs.length - 1] - xs[0]) / med : 0);
  }
  return { n, nsPerOp, spread };
}

export function median(sorted: readonly number[]): number {
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Nanoseconds since an arbitrary origin, as a float: for runs that time their own parts. */
export const clock = now;
