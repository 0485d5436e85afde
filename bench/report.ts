/**
 * The printed result: plain-text tables with aligned columns, one for timings and one for
 * memory, preceded by the facts that make numbers comparable (node, CPU, date).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import type { Measurement } from './harness';

export interface TimingRow {
  label: string;
  nsPerOp: number;
  /** Run-to-run spread, (max - min) / median. */
  spread: number;
  note: string;
}

export interface MemoryRow {
  label: string;
  value: string;
  note: string;
}

/** Metric `metric` of a measurement as a row. */
export function timing(label: string, m: Measurement, note = '', metric = 0): TimingRow {
  return { label, nsPerOp: m.nsPerOp[metric], spread: m.spread[metric], note };
}

export function cpuModel(): string {
  try {
    const line = fs.readFileSync('/proc/cpuinfo', 'latin1').split('\n').find((l) => l.startsWith('model name'));
    if (line) return line.slice(line.indexOf(':') + 1).trim();
  } catch {
    // Not Linux, or /proc hidden: os.cpus() still knows something.
  }
  return os.cpus()[0]?.model ?? 'unknown';
}

/** The machine, the date and its load (when called: at the end of a run), for a run's header. */
export function machineLines(): string[] {
  return [
    `node ${process.version}  ${os.type()} ${os.release()} ${os.arch()}  cpu ${cpuModel()} (${os.cpus().length} logical)`,
    `date ${new Date().toISOString()}  load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} (1/5/15 min at the end)`,
  ];
}

export function header(): string {
  return [
    'kdbus-cuse core benchmark (in-process, no transport)',
    `node ${process.version}  ${os.type()} ${os.release()} ${os.arch()}`,
    `cpu  ${cpuModel()} (${os.cpus().length} logical)`,
    `date ${new Date().toISOString()}`,
    `load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} (1/5/15 min, at start: other processes on this machine skew timings)`,
  ].join('\n');
}

export const us = (ns: number): string => (ns / 1000).toFixed(ns < 10_000 ? 2 : ns < 1_000_000 ? 1 : 0);

export const count = (x: number): string => Math.round(x).toLocaleString('en-US');

export const bytes = (b: number): string =>
  b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB` : b >= 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${Math.round(b)} B`;

export function timingTable(rows: readonly TimingRow[]): string {
  return table(
    ['case', 'ops/s', 'µs/op', 'spread', 'notes'],
    rows.map((r) => [r.label, count(1e9 / r.nsPerOp), us(r.nsPerOp), `${(r.spread * 100).toFixed(0)}%`, r.note]),
    [false, true, true, true, false],
  );
}

export function memoryTable(rows: readonly MemoryRow[]): string {
  return table(['memory', 'value', 'notes'], rows.map((r) => [r.label, r.value, r.note]), [false, true, false]);
}

export function table(head: string[], rows: string[][], right: boolean[]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (right[i] ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** A line on stderr saying what a long run is doing now. */
export function progress(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

/** One JSON line of bench/c/stats.h: what a C benchmark client prints at its end. */
export interface Stats {
  n: number;
  mean_us: number;
  p50_us: number;
  p99_us: number;
  max_us: number;
  /** kdbus: how the payload travelled (none, vec, memfd); how the pool was read (mmap, read). */
  path?: string;
  pool?: string;
}

/** A client's statistics, or why there are none. */
export type Outcome = Stats | { error: string };

export const failed = (o: Outcome | undefined): o is { error: string } => o !== undefined && 'error' in o;

/** The end of a printed report: the failures, if any, and how long the run took. */
export function closing(errors: readonly string[], seconds: number): string[] {
  return [...(errors.length > 0 ? ['', 'Failures:', ...errors] : []), '', `run: ${seconds.toFixed(1)} s`];
}
