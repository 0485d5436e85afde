/**
 * Benchmark of the bus core alone: clients drive Handle.ioctl() in-process, no transport.
 * `npm run bench` builds and runs it; it re-runs itself under --expose-gc for the memory
 * figures. `node --expose-gc dist/bench/core.js --only=meta` runs only the named groups
 * (memory, pool, unicast, meta, call, broadcast, matches, names), e.g. under --cpu-prof.
 *
 * Every timing is the median of several runs after warm-up; nothing is asserted about it.
 */
import { spawnSync } from 'node:child_process';
import { setLogLevel } from '../src/log/logger';
import { fanOutCases, matchScalingCases } from './broadcast';
import { idleConnections, poolCases } from './memory';
import { nameCases } from './names';
import { REPEATS } from './harness';
import { header, memoryTable, timingTable, type MemoryRow, type TimingRow } from './report';
import { callCases, metadataCases, unicastCases } from './unicast';

interface Group {
  name: string;
  run: () => Promise<TimingRow[] | MemoryRow[]>;
  memory?: boolean;
}

// Memory first, while the heap holds nothing else.
const GROUPS: Group[] = [
  { name: 'memory', run: idleConnections, memory: true },
  { name: 'pool', run: poolCases, memory: true },
  { name: 'unicast', run: unicastCases },
  { name: 'meta', run: metadataCases },
  { name: 'call', run: callCases },
  { name: 'broadcast', run: fanOutCases },
  { name: 'matches', run: matchScalingCases },
  { name: 'names', run: nameCases },
];

async function main(): Promise<void> {
  const only = process.argv.find((a) => a.startsWith('--only='))?.slice('--only='.length).split(',');
  const unknown = only?.filter((n) => !GROUPS.some((g) => g.name === n)) ?? [];
  if (unknown.length > 0) throw new Error(`unknown group(s) ${unknown.join(', ')}; known: ${GROUPS.map((g) => g.name).join(', ')}`);
  if (!process.env['KDBUS_CUSE_LOG_LEVEL']) setLogLevel('warn');

  const started = Date.now();
  const head = header();
  const timings: TimingRow[] = [];
  const memory: MemoryRow[] = [];
  for (const g of GROUPS) {
    if (only && !only.includes(g.name)) continue;
    process.stderr.write(`running ${g.name}...\n`);
    const rows = await g.run();
    if (g.memory) memory.push(...(rows as MemoryRow[]));
    else timings.push(...(rows as TimingRow[]));
  }
  const out = [head, ''];
  if (timings.length > 0) out.push(timingTable(timings), '');
  if (memory.length > 0) out.push(memoryTable(memory), '');
  out.push(`median of ${REPEATS} runs after warm-up; spread = (max - min) / median; total ${((Date.now() - started) / 1000).toFixed(1)} s`);
  process.stdout.write(out.join('\n') + '\n');
}

if (typeof (globalThis as { gc?: unknown }).gc !== 'function') {
  const child = spawnSync(process.execPath, ['--expose-gc', ...process.execArgv, __filename, ...process.argv.slice(2)], { stdio: 'inherit' });
  process.exit(child.status ?? 1);
} else {
  main().catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  });
}
