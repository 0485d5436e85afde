/**
 * Legacy (D-Bus 1) benchmark: the same sd-bus clients (bench/c/sdbus-pingpong) against
 * kdbus-cuse's legacy endpoint, dbus-daemon and dbus-broker, in one run, side by side:
 * call/reply latency between a legacy caller and a legacy service (0 B, 1 KiB, 64 KiB),
 * signal fan-out to 10 receivers, and the bus's memory per idle legacy client (its RSS with
 * 0 and with 200 connected, idle clients). On kdbus-cuse also the same calls across its two
 * kinds of client: a legacy caller to a kdbus service (`kdbus-pingpong dserve`) and a kdbus
 * caller (`kdbus-pingpong dcall`) to a legacy service, the kdbus side through the preload
 * shim over the socket transport. Targets are reported, never asserted.
 *
 *   node dist/bench/legacy.js            full run
 *   node dist/bench/legacy.js --quick    a tenth of the iterations (a smoke run)
 *
 * kdbus-cuse rows read "n/a (endpoint not available)" while `serve --listen` does not
 * answer a driver call.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as dbus from 'dbus-next';
import { closing, cpuModel, failed, progress, type Outcome } from './report';
import {
  BUS_KINDS, busUnavailable, driverCall, Proc, rssKiB, sleep, startBus, type BusKind, type LegacyBus,
} from '../test/helpers/legacy-bus';
import { buildPrograms, KDBUS_PINGPONG, runProgram, SDBUS_PINGPONG } from './c-programs';

const KIB = 1024;
const IDLE_CLIENTS = 200;


interface Case {
  key: string;
  label: string;
  args: string[];
}

function cases(quick: boolean): Case[] {
  const q = (n: number): number => (quick ? Math.max(5, Math.round(n / 10)) : n);
  return [
    { key: 'call 0', label: '0 B', args: ['call', '0', String(q(3000))] },
    { key: 'call 1024', label: '1 KiB', args: ['call', String(KIB), String(q(3000))] },
    { key: 'call 65536', label: '64 KiB', args: ['call', String(64 * KIB), String(q(1500))] },
    { key: 'fanout 10', label: '10 receivers', args: ['fanout', '10', String(q(300))] },
  ];
}

function pingpong(bus: LegacyBus, args: string[]): Promise<Outcome> {
  const [mode, ...rest] = args;
  return runProgram(SDBUS_PINGPONG, [mode!, bus.address, ...rest]);
}

/** Calls across kdbus-cuse's two kinds of client, per call case, keyed "<direction> <case key>". */
async function crossCalls(bus: LegacyBus, calls: Case[], into: Map<string, Outcome>): Promise<void> {
  const kdbus = bus.kdbus!;
  const directions = [
    {
      key: 'legacy-to-kdbus',
      service: (): Proc => new Proc('kdbus-pingpong dserve', KDBUS_PINGPONG, ['dserve', kdbus.busNode], kdbus.clientEnv()),
      call: (c: Case): Promise<Outcome> => runProgram(SDBUS_PINGPONG, ['caller', bus.address, ...c.args.slice(1)]),
    },
    {
      key: 'kdbus-to-legacy',
      service: (): Proc => new Proc('sdbus-pingpong serve', SDBUS_PINGPONG, ['serve', bus.address]),
      call: (c: Case): Promise<Outcome> => runProgram(KDBUS_PINGPONG, ['dcall', kdbus.busNode, ...c.args.slice(1)], kdbus.clientEnv()),
    },
  ];
  for (const d of directions) {
    const service = d.service();
    try {
      await service.waitForLine(/^ready$/, 30_000);
      // Other code paths than the legacy calls' warm up first, every case once, unmeasured.
      for (const c of calls) {
        progress(`kdbus-cuse: ${d.key} warm-up (${c.key}, not measured)`);
        await d.call(c);
      }
      for (const c of calls) {
        progress(`kdbus-cuse: ${d.key} ${c.key}`);
        into.set(`${d.key} ${c.key}`, await d.call(c));
      }
    } catch (e) {
      for (const c of calls) into.set(`${d.key} ${c.key}`, { error: e instanceof Error ? e.message.split('\n')[0]! : String(e) });
    } finally {
      await service.stop();
    }
  }
}

/** Whether a bus answers a driver call (the kdbus-cuse endpoint may not yet). */
async function answers(bus: LegacyBus): Promise<boolean> {
  const r = await driverCall(bus, 'GetId');
  return r.code === 0 && /string "[0-9a-f]{32}"/.test(r.stdout);
}

interface Memory {
  idleKiB: number;
  loadedKiB: number;
  perClientKiB: number;
}

/** The bus's RSS with no client and with IDLE_CLIENTS connected (Hello done) and idle. */
async function idleMemory(bus: LegacyBus): Promise<Memory | { error: string }> {
  const pid = bus.busPid();
  if (pid === undefined) return { error: 'no bus process' };
  const settle = async (): Promise<number | undefined> => {
    await sleep(1_000);
    return rssKiB(pid);
  };
  const idleKiB = await settle();
  const clients: dbus.MessageBus[] = [];
  try {
    for (let i = 0; i < IDLE_CLIENTS; i++) {
      const c = dbus.sessionBus({ busAddress: bus.address });
      clients.push(c);
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`client ${i}: no Hello reply in 10 s`)), 10_000);
        c.on('connect', () => {
          clearTimeout(timer);
          resolve();
        });
        c.on('error', (e) => {
          clearTimeout(timer);
          reject(e instanceof Error ? e : new Error(String(e)));
        });
      });
    }
    const loadedKiB = await settle();
    if (idleKiB === undefined || loadedKiB === undefined) return { error: 'the bus process ended' };
    return { idleKiB, loadedKiB, perClientKiB: (loadedKiB - idleKiB) / IDLE_CLIENTS };
  } catch (e) {
    return { error: e instanceof Error ? e.message : String(e) };
  } finally {
    for (const c of clients) c.disconnect();
  }
}

interface Column {
  kind: BusKind;
  /** Why the column is empty, when it is. */
  unavailable?: string;
  results: Map<string, Outcome>;
  memory?: Memory | { error: string };
}

async function measure(kind: BusKind, dir: string, all: Case[]): Promise<Column> {
  const col: Column = { kind, results: new Map() };
  const missing = busUnavailable(kind);
  if (missing) return { ...col, unavailable: `n/a (${missing})` };
  let bus: LegacyBus | undefined;
  try {
    bus = await startBus(kind, path.join(dir, kind));
    if (!(await answers(bus))) return { ...col, unavailable: kind === 'kdbus-cuse' ? 'n/a (endpoint not available)' : 'n/a (does not answer)' };
    // A fresh daemon runs its first thousands of calls unoptimized: every case once,
    // unmeasured, on every bus, so the table shows each at its steady pace (bench/bridge.ts
    // has the numbers of a warm-up with the first case alone).
    for (const c of all) {
      progress(`${kind}: warm-up (${c.key}, not measured)`);
      await pingpong(bus, c.args);
    }
    for (const c of all) {
      progress(`${kind}: ${c.key}`);
      col.results.set(c.key, await pingpong(bus, c.args));
    }
    if (bus.kdbus) await crossCalls(bus, all.filter((c) => c.key.startsWith('call')), col.results);
  } catch (e) {
    return { ...col, unavailable: kind === 'kdbus-cuse' ? 'n/a (endpoint not available)' : `n/a (${e instanceof Error ? e.message.split('\n')[0] : String(e)})` };
  } finally {
    await bus?.stop();
  }
  // A fresh bus for the memory count: what the latency runs left behind is not idle cost.
  try {
    progress(`${kind}: memory with ${IDLE_CLIENTS} idle clients`);
    bus = await startBus(kind, path.join(dir, `${kind}-memory`));
    col.memory = await idleMemory(bus);
  } catch (e) {
    col.memory = { error: e instanceof Error ? e.message.split('\n')[0]! : String(e) };
  } finally {
    await bus?.stop();
  }
  return col;
}

// ---- reporting ---------------------------------------------------------------------------

const us = (x: number): string => (x >= 1000 ? x.toFixed(0) : x >= 100 ? x.toFixed(1) : x.toFixed(2));

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

function meanOf(col: Column | undefined, key: string): number | undefined {
  const o = col?.results.get(key);
  return o && !failed(o) ? o.mean_us : undefined;
}

function report(columns: Column[], all: Case[], seconds: number): string {
  const byKind = new Map(columns.map((c) => [c.kind, c]));
  const kc = byKind.get('kdbus-cuse');
  const cell = (col: Column, key: string, field: 'mean_us' | 'p99_us'): string => {
    if (col.unavailable) return field === 'mean_us' ? col.unavailable : '';
    const o = col.results.get(key);
    return o === undefined ? '' : failed(o) ? 'failed' : us(o[field]);
  };
  const ratio = (key: string, versus: BusKind): string => {
    const a = meanOf(byKind.get('kdbus-cuse'), key);
    const b = meanOf(byKind.get(versus), key);
    return a === undefined || b === undefined ? '-' : `${(a / b).toFixed(2)}x`;
  };
  const head = ['', ...columns.flatMap((c) => [`${c.kind} mean µs`, 'p99']), 'kdbus-cuse/broker', 'kdbus-cuse/daemon'];
  const rowOf = (c: Case): string[] => [c.label, ...columns.flatMap((col) => [cell(col, c.key, 'mean_us'), cell(col, c.key, 'p99_us')]), ratio(c.key, 'dbus-broker'), ratio(c.key, 'dbus-daemon')];
  const calls = all.filter((c) => c.key.startsWith('call'));
  const fan = all.filter((c) => c.key.startsWith('fanout'));

  const crossHead = ['payload', 'legacy to legacy mean µs', 'p99', 'legacy to kdbus mean µs', 'p99', 'kdbus to legacy mean µs', 'p99'];
  const crossRows = kc?.unavailable ? [] : calls.map((c) => [
    c.label, ...['', 'legacy-to-kdbus ', 'kdbus-to-legacy '].flatMap((d) => [cell(kc!, `${d}${c.key}`, 'mean_us'), cell(kc!, `${d}${c.key}`, 'p99_us')]),
  ]);

  const memHead = ['', ...columns.map((c) => c.kind)];
  const mem = (f: (m: Memory) => string): string[] =>
    columns.map((c) => (c.unavailable ? c.unavailable : !c.memory ? '' : 'error' in c.memory ? `failed: ${c.memory.error}` : f(c.memory)));
  const memRows = [
    ['RSS, no client (KiB)', ...mem((m) => String(m.idleKiB))],
    [`RSS, ${IDLE_CLIENTS} idle clients (KiB)`, ...mem((m) => String(m.loadedKiB))],
    ['per idle client (KiB)', ...mem((m) => m.perClientKiB.toFixed(1))],
  ];

  const verdict = (ok: boolean | undefined): string => (ok === undefined ? 'not measured' : ok ? 'met' : 'NOT met');
  const targets: string[] = ['Targets (reported, not asserted):'];
  for (const c of calls) {
    const a = meanOf(kc, c.key);
    const broker = meanOf(byKind.get('dbus-broker'), c.key);
    const daemon = meanOf(byKind.get('dbus-daemon'), c.key);
    const within = a !== undefined && broker !== undefined ? a <= 1.25 * broker : undefined;
    const ahead = a !== undefined && daemon !== undefined ? a < daemon : undefined;
    targets.push(`  ${c.label} call/reply within 1.25x of dbus-broker: ${ratio(c.key, 'dbus-broker')} -> ${verdict(within)}; ahead of dbus-daemon: ${ratio(c.key, 'dbus-daemon')} -> ${verdict(ahead)}`);
  }
  const kcMem = kc?.memory && !('error' in kc.memory) ? kc.memory.perClientKiB : undefined;
  targets.push(`  memory per idle legacy client under 64 KiB: ${kcMem === undefined ? '-' : `${kcMem.toFixed(1)} KiB`} -> ${verdict(kcMem === undefined ? undefined : kcMem < 64)}`);

  const errors = columns.flatMap((col) => [...col.results].filter(([, o]) => failed(o)).map(([k, o]) => `  ${col.kind} ${k}: ${(o as { error: string }).error}`));
  return [
    'kdbus-cuse legacy benchmark — sd-bus clients (bench/c/sdbus-pingpong) on each bus over unix:path sockets',
    `node ${process.version}  ${os.type()} ${os.release()} ${os.arch()}  cpu ${cpuModel()} (${os.cpus().length} logical)`,
    `date ${new Date().toISOString()}  load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} (1/5/15 min at the end)`,
    '',
    'Legacy caller to legacy service, call/reply (payload an "ay" argument; the callee touches every page), µs per call',
    table(head, calls.map(rowOf)),
    '',
    'Signal fan-out, µs from sending until the last of the receivers (each a process) has the signal',
    table(head, fan.map(rowOf)),
    '',
    'Across kdbus-cuse\'s two kinds of client, call/reply µs per call (the same calls; the kdbus side a C client on raw ioctls',
    'with sd-bus\'s GVariant messages, through the preload shim over the socket transport)',
    crossRows.length > 0 ? table(crossHead, crossRows) : kc?.unavailable ?? 'kdbus-cuse not measured',
    '',
    `Memory of the bus process (VmRSS) with no client and with ${IDLE_CLIENTS} idle dbus-next clients (Hello done)`,
    table(memHead, memRows),
    '',
    ...targets,
    ...closing(errors, seconds),
  ].join('\n');
}

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const started = Date.now();
  buildPrograms('sdbus-pingpong', 'kdbus-pingpong');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kdbus-legacy-bench-'));
  const all = cases(quick);
  const columns: Column[] = [];
  try {
    for (const kind of BUS_KINDS) columns.push(await measure(kind, dir, all));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  // kdbus-cuse first, as in bench/transport.ts.
  columns.sort((a, b) => (a.kind === 'kdbus-cuse' ? -1 : b.kind === 'kdbus-cuse' ? 1 : 0));
  process.stdout.write(`${report(columns, all, (Date.now() - started) / 1000)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
