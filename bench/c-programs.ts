/**
 * The C programs of bench/c the benchmarks run, and their build: each benchmark makes what it
 * uses before it starts.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { run } from '../test/helpers/legacy-bus';
import type { Outcome, Stats } from './report';

export const PROJECT = path.resolve(__dirname, '..', '..');
export const C_DIR = path.join(PROJECT, 'bench', 'c');
export const C_BUILD = path.join(C_DIR, 'build');
export const KDBUS_PINGPONG = path.join(C_BUILD, 'kdbus-pingpong');
export const SDBUS_PINGPONG = path.join(C_BUILD, 'sdbus-pingpong');

/** How long one run of a program may take before it counts as failed. */
const CLIENT_TIMEOUT_MS = 120_000;

/** One run of a program that prints a JSON line of statistics (stats.h): those, or what went wrong. */
export async function runProgram(file: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Outcome> {
  const r = await run(file, args, { env, timeoutMs: CLIENT_TIMEOUT_MS });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  if (r.code === 0 && line.startsWith('{')) return JSON.parse(line) as Stats;
  const how = r.timedOut ? `timed out after ${CLIENT_TIMEOUT_MS / 1000} s` : r.signal ? `killed by ${r.signal}` : `exit code ${r.code}`;
  return { error: `${path.basename(file)} ${args[0]}: ${how}: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}` };
}

/** Builds the named programs (all of bench/c with none named); throws with make's output. */
export function buildPrograms(...programs: string[]): void {
  const r = spawnSync('make', ['-s', '-C', C_DIR, ...programs.map((p) => path.join('build', p))], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`make -C bench/c ${programs.map((p) => `build/${p}`).join(' ')} failed:\n${r.stdout}${r.stderr}`);
}
