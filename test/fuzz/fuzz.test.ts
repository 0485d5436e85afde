/**
 * The CI fuzz run: at least 100,000 random, valid and mutated command structs and messages
 * thrown at every ioctl on every handle role, judged call by call and checked for leaks after
 * each bus's lifetime (harness.ts). FUZZ_SEED replays a run, FUZZ_ITERATIONS changes its
 * length; without FUZZ_SEED every run picks a new seed and prints it.
 */
import assert from 'node:assert/strict';
import { COMMANDS } from './generators';
import { type FuzzReport, runFuzz } from './harness';

const ROLES = [
  'control', 'bus-owner', 'endpoint', 'ep-owner',
  'connected:ordinary', 'connected:monitor', 'connected:activator', 'connected:policy-holder',
];

function envInt(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got "${v}"`);
  return n;
}

function summary(r: FuzzReport): string {
  const perCommand = [...r.outcomes].map(([cmd, m]) => `${cmd} ${[...m.values()].reduce((a, b) => a + b, 0)}`).join(', ');
  return `seed ${r.seed}: ${r.iterations} inputs (random ${r.modes.random}, valid ${r.modes.valid}, mutated ${r.modes.mutated}) ` +
    `+ ${r.traffic} traffic calls, ${r.syncCalls} blocking calls, ${r.worlds} buses, ${r.elapsedMs} ms\n      calls: ${perCommand}`;
}

describe('fuzz', function () {
  this.timeout(300_000);

  const seed = envInt('FUZZ_SEED', Math.floor(Math.random() * 0x1_0000_0000));
  const iterations = envInt('FUZZ_ITERATIONS', 100_000);

  it(`throws ${iterations} inputs at every ioctl on every role (seed ${seed}, replay with FUZZ_SEED=${seed})`, async () => {
    // Printed first, so the seed is known even if the run takes the process down.
    console.log(`      fuzz seed ${seed}, ${iterations} inputs`);
    const report = await runFuzz({ seed, iterations });
    console.log(`      ${summary(report)}`);
    assert.equal(report.iterations, iterations);
    if (iterations >= 50_000) {
      const missing: string[] = [];
      for (const role of ROLES) {
        for (const cmd of [...COMMANDS, 'UNKNOWN']) if (!report.coverage.get(`${role}/${cmd}`)) missing.push(`${role}/${cmd}`);
      }
      assert.deepEqual(missing, [], 'every command reached every handle role');
    }
  });

  describe('fixed seeds', () => {
    for (const fixed of [1, 2, 3]) {
      it(`replays seed ${fixed} (3000 inputs)`, async () => {
        const report = await runFuzz({ seed: fixed, iterations: 3000, iterationsPerWorld: 1500 });
        assert.equal(report.iterations, 3000);
        assert.ok(report.worlds >= 2);
      });
    }
  });
});
