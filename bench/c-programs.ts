/**
 * The C programs of bench/c the benchmarks run, and their build: each benchmark makes what it
 * uses before it starts.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';

export const PROJECT = path.resolve(__dirname, '..', '..');
export const C_DIR = path.join(PROJECT, 'bench', 'c');
export const C_BUILD = path.join(C_DIR, 'build');
export const KDBUS_PINGPONG = path.join(C_BUILD, 'kdbus-pingpong');
export const SDBUS_PINGPONG = path.join(C_BUILD, 'sdbus-pingpong');

/** Builds the named programs (all of bench/c with none named); throws with make's output. */
export function buildPrograms(...programs: string[]): void {
  const r = spawnSync('make', ['-s', '-C', C_DIR, ...programs.map((p) => path.join('build', p))], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`make -C bench/c ${programs.map((p) => `build/${p}`).join(' ')} failed:\n${r.stdout}${r.stderr}`);
}
