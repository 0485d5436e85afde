/**
 * Transport benchmark: kdbus clients of kdbus-cuse against sd-bus clients of dbus-daemon
 * and dbus-broker doing the same work, in the same run, printed side by side.
 *
 *   npm run bench:transport                      native run, then the VM run
 *   node dist/bench/transport.js --only=native   socket transport through the shim, here
 *   node dist/bench/transport.js --only=vm       CUSE transport in the test VM (test/vm)
 *   ... --profile=DIR                            CPU profile of the daemon, per case, summarized
 *   ... --quick                                  fewer iterations (a smoke run)
 *   ... --daemon-node-options='--jitless'        NODE_OPTIONS for the daemon alone
 *
 * Natively kdbus clients reach the daemon over its socket transport through the preload
 * shim; in the VM they open the CUSE devices (the shim only maps the pool and carries
 * files). The clients are the C programs of bench/c: kdbus-pingpong (raw ioctls) and
 * sdbus-pingpong (sd-bus). Numbers are printed against the issues' targets, never asserted.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cpuModel, failed, progress, type Outcome, type Stats } from './report';
import { Vm } from '../test/vm/vm';
import { buildPrograms, C_BUILD, KDBUS_PINGPONG, PROJECT, SDBUS_PINGPONG } from './c-programs';

const DGRAM_SINK = path.join(C_BUILD, 'dgram-sink');
const SOCKET_RTT = path.join(C_BUILD, 'socket-rtt');
const CUSE_RTT = path.join(C_BUILD, 'cuse-rtt');
const SOCKET_RELAY = path.join(C_BUILD, 'socket-relay');
const NODE_RELAY = path.join(__dirname, 'socket-relay.js');
/** Relayed floors run this often, alternating C and Node; the best run of each counts. */
const RELAY_RUNS = 3;
const SESSION_CONF = '/usr/share/dbus-1/session.conf';
const KIB = 1024;
const MIB = 1024 * 1024;

// ---- what is measured --------------------------------------------------------------------

type Where = 'native' | 'vm';

interface Plan {
  rtt: number;
  /** Iterations per call payload size. */
  calls: Array<{ size: number; iterations: number }>;
  fanout: Array<{ receivers: number; iterations: number }>;
  /** Unmeasured 0-byte calls each bus makes before the first case. */
  warmUpCalls: number;
  /**
   * Whether every case also runs once, unmeasured, before the measured ones: natively, the
   * first case's calls alone left later cases on paths the daemon had not optimized yet
   * (see bench/bridge.ts). Under TCG that would double a run of several minutes.
   */
  warmUpEveryCase: boolean;
  clientTimeoutMs: number;
}

/** Sized so a native run stays under 2 minutes and a VM run (TCG) under 5, warm-ups included. */
function plan(where: Where, quick: boolean): Plan {
  const q = (n: number): number => (quick ? Math.max(5, Math.round(n / 10)) : n);
  if (where === 'native') {
    return {
      rtt: q(5000),
      calls: [
        { size: 0, iterations: q(3000) },
        { size: KIB, iterations: q(3000) },
        { size: 64 * KIB, iterations: q(1500) },
        { size: MIB, iterations: q(300) },
      ],
      fanout: [
        { receivers: 10, iterations: q(300) },
        { receivers: 100, iterations: q(60) },
      ],
      warmUpCalls: q(3000),
      warmUpEveryCase: true,
      clientTimeoutMs: 60_000,
    };
  }
  return {
    rtt: q(1000),
    calls: [
      { size: 0, iterations: q(400) },
      { size: KIB, iterations: q(400) },
      { size: 64 * KIB, iterations: q(200) },
      { size: MIB, iterations: q(60) },
    ],
    fanout: [
      { receivers: 10, iterations: q(60) },
      { receivers: 100, iterations: q(15) },
    ],
    // V8 needs as many calls to optimize the daemon as natively, each one slower under TCG:
    // the 400 of the first call case left it well short of its steady pace.
    warmUpCalls: q(3000),
    warmUpEveryCase: false,
    clientTimeoutMs: 120_000,
  };
}


// ---- processes ---------------------------------------------------------------------------

/** A long-running process (a bus), in its own process group, with its output kept. */
class Service {
  output = '';
  exited: string | undefined;
  private readonly child: ChildProcess;
  private readonly done: Promise<void>;

  constructor(
    readonly label: string,
    file: string,
    args: string[],
    env: NodeJS.ProcessEnv = process.env,
  ) {
    this.child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const keep = (d: Buffer): void => {
      this.output += d.toString();
    };
    this.child.stdout!.on('data', keep);
    this.child.stderr!.on('data', keep);
    this.done = new Promise((resolve) => {
      this.child.on('error', (e) => {
        this.exited = e.message;
        resolve();
      });
      this.child.on('exit', (code, signal) => {
        this.exited = signal ? `killed by ${signal}` : `exit code ${code}`;
        resolve();
      });
    });
  }

  async waitFor(what: string, ready: () => boolean, ms: number): Promise<void> {
    const until = Date.now() + ms;
    while (!ready()) {
      if (this.exited) throw new Error(`${this.label} ended (${this.exited}) before ${what}:\n${this.tail()}`);
      if (Date.now() > until) throw new Error(`${this.label}: no ${what} after ${ms} ms:\n${this.tail()}`);
      await sleep(20);
    }
  }

  tail(lines = 20): string {
    return this.output.trimEnd().split('\n').slice(-lines).join('\n');
  }

  /** SIGTERM to the group (a profiling daemon writes its profile), SIGKILL 5 s later. */
  async stop(): Promise<void> {
    if (this.exited || this.child.pid === undefined) return;
    const group = -this.child.pid;
    signalGroup(group, 'SIGTERM');
    const timer = setTimeout(() => signalGroup(group, 'SIGKILL'), 5_000);
    await this.done;
    clearTimeout(timer);
    // Helpers of the group (the journal sink, dbus-broker) outlive a launcher that exits.
    signalGroup(group, 'SIGKILL');
  }
}

function signalGroup(group: number, signal: NodeJS.Signals): void {
  try {
    process.kill(group, signal);
  } catch {
    // The group is gone already.
  }
}

/** Runs a client to its end; its last stdout line is the JSON result. */
function runClient(file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      signalGroup(-child.pid!, 'SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => resolve({ error: e.message }));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      // Forked peers that survived (they die with their parent, but not instantly).
      signalGroup(-child.pid!, 'SIGKILL');
      const line = out.trim().split('\n').pop() ?? '';
      if (code === 0 && line.startsWith('{')) return resolve(JSON.parse(line) as Stats);
      const how = timedOut ? `timed out after ${timeoutMs / 1000} s` : signal ? `killed by ${signal}` : `exit code ${code}`;
      const why = err.trim().split('\n').slice(-3).join(' | ');
      resolve({ error: `${path.basename(file)} ${args[0]}: ${how}${why ? `: ${why}` : ''}` });
    });
  });
}

// ---- the buses ---------------------------------------------------------------------------

/** How the kdbus-cuse daemon is run. */
interface DaemonOptions {
  /** NODE_OPTIONS for the daemon alone (V8 flags for an experiment). */
  nodeOptions?: string;
  /** Where per-case CPU profiles go (--cpu-prof is refused in NODE_OPTIONS, so it is an argument). */
  profileRoot?: string;
}

interface Peer {
  label: string;
  kind: 'kdbus' | 'dbus1';
  /** The bus node (kdbus) or the D-Bus address (dbus1). */
  target: string;
  clientEnv: NodeJS.ProcessEnv;
  service: Service;
  /** kdbus-cuse: the profile directory of this daemon, when profiling. */
  profileDir?: string;
}

async function startKdbusCuse(where: Where, dir: string, daemon: DaemonOptions, profileDir: string | undefined): Promise<Peer> {
  const transport = where === 'native' ? 'socket' : 'cuse';
  const busName = `${process.getuid!()}-bench`;
  // CUSE nodes appear under /dev; the socket transport keeps its placeholder tree anywhere.
  const root = where === 'native' ? path.join(dir, 'kdbus') : '/dev/kdbus';
  const socket = path.join(dir, 'kdbus.sock');
  const execArgv = profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [];
  const service = new Service(`kdbus-cuse (${transport})`, process.execPath, [
    ...execArgv, path.join(PROJECT, 'bin', 'kdbus-cuse'), 'serve',
    '--transport', transport, '--bus', busName, '--socket', socket, '--kdbus-root', root,
  ], daemon.nodeOptions === undefined ? process.env : { ...process.env, NODE_OPTIONS: daemon.nodeOptions });
  const node = path.join(root, busName, 'bus');
  await service.waitFor('its bus node and socket', () => fs.existsSync(node) && fs.existsSync(socket), where === 'vm' ? 90_000 : 20_000);
  const shim = path.join(PROJECT, 'shim', 'build', 'glibc', 'libkdbus-cuse-shim.so');
  return {
    label: service.label,
    kind: 'kdbus',
    target: node,
    clientEnv: { ...process.env, LD_PRELOAD: shim, KDBUS_CUSE_ROOT: root, KDBUS_CUSE_SOCKET: socket },
    service,
    profileDir,
  };
}

async function startDbusDaemon(dir: string): Promise<Peer> {
  const socket = path.join(dir, 'dbus-daemon.sock');
  const service = new Service('dbus-daemon', 'dbus-daemon', [
    '--session', `--address=unix:path=${socket}`, '--nofork', '--nopidfile',
  ]);
  await service.waitFor('its socket', () => fs.existsSync(socket), 20_000);
  return { label: 'dbus-daemon', kind: 'dbus1', target: `unix:path=${socket}`, clientEnv: process.env, service };
}

/**
 * dbus-broker-launch wants its socket by socket activation and a journal socket to log into
 * (docs/DESIGN.md "Running peers here without systemd"). A private mount namespace with its
 * own /run gives it the journal socket (a sink) without touching the machine's /run.
 */
async function startDbusBroker(dir: string): Promise<Peer> {
  const socket = path.join(dir, 'dbus-broker.sock');
  const runtime = path.join(dir, 'xdg');
  fs.mkdirSync(runtime, { recursive: true, mode: 0o700 });
  const journal = '/run/systemd/journal/socket';
  const script = [
    'set -e',
    'mount -t tmpfs tmpfs /run',
    'mkdir -p /run/systemd/journal',
    `${DGRAM_SINK} ${journal} &`,
    `while [ ! -S ${journal} ]; do sleep 0.01; done`,
    `exec systemd-socket-activate -l ${socket} -E DBUS_SESSION_BUS_ADDRESS=unix:path=${socket} ` +
      `-E XDG_RUNTIME_DIR=${runtime} dbus-broker-launch --scope user --config-file ${SESSION_CONF}`,
  ].join('\n');
  const service = new Service('dbus-broker', 'unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script]);
  await service.waitFor('its socket', () => fs.existsSync(socket), 20_000);
  const peer: Peer = { label: 'dbus-broker', kind: 'dbus1', target: `unix:path=${socket}`, clientEnv: process.env, service };
  // The launcher starts at the first connection; let that one not be a measured one.
  const warm = await runClient(SDBUS_PINGPONG, ['rtt', peer.target, '5'], process.env, 60_000);
  if (failed(warm)) throw new Error(`dbus-broker does not answer: ${warm.error}\n${service.tail()}`);
  return peer;
}

// ---- cases -------------------------------------------------------------------------------

interface Case {
  key: string;
  /** Arguments after the program's mode and target; undefined: this peer kind skips it. */
  args(kind: Peer['kind']): string[] | undefined;
  mode: 'rtt' | 'call' | 'fanout';
  /** Operations the kdbus program runs, warm-up included (as bench/c counts them). */
  ops: number;
}

function cases(p: Plan): Case[] {
  const withWarmup = (n: number, extra: number): number => n + Math.floor(n / 10) + extra;
  const out: Case[] = [{ key: 'rtt', mode: 'rtt', args: () => [String(p.rtt)], ops: withWarmup(p.rtt, 10) }];
  for (const [i, c] of p.calls.entries()) {
    out.push({ key: `call ${c.size}`, mode: 'call', args: () => [String(c.size), String(c.iterations)], ops: withWarmup(c.iterations, 5) });
    if (i > 0) continue;
    // What a callee waiting as sd-event did (epoll) costs against one in poll() (kdbus only),
    // right after it: the daemon warms up over the cases, in the VM for long.
    out.push({
      key: `call ${c.size} epoll`, mode: 'call',
      args: (kind) => (kind === 'kdbus' ? [String(c.size), String(c.iterations), 'vec', 'epoll'] : undefined),
      ops: withWarmup(c.iterations, 5),
    });
  }
  // What the memfd saves: the largest payload once more as a PAYLOAD_VEC (kdbus only).
  const big = p.calls[p.calls.length - 1]!;
  out.push({
    key: `call ${big.size} vec`, mode: 'call',
    args: (kind) => (kind === 'kdbus' ? [String(big.size), String(big.iterations), 'vec'] : undefined),
    ops: withWarmup(big.iterations, 5),
  });
  for (const [i, f] of p.fanout.entries()) {
    out.push({
      key: `fanout ${f.receivers}`, mode: 'fanout', args: () => [String(f.receivers), String(f.iterations)], ops: withWarmup(f.iterations, 3),
    });
    if (i > 0) continue;
    // Receivers waiting as sd-event services do (kdbus only).
    out.push({
      key: `fanout ${f.receivers} epoll`, mode: 'fanout',
      args: (kind) => (kind === 'kdbus' ? [String(f.receivers), String(f.iterations), 'epoll'] : undefined),
      ops: withWarmup(f.iterations, 3),
    });
  }
  return out;
}

type Results = Map<string, Map<string, Outcome>>;

async function runCase(peer: Peer, c: Case, timeoutMs: number): Promise<Outcome | undefined> {
  const args = c.args(peer.kind);
  if (!args) return undefined;
  if (peer.service.exited) return { error: `${peer.label} is not running (${peer.service.exited})` };
  const program = peer.kind === 'kdbus' ? KDBUS_PINGPONG : SDBUS_PINGPONG;
  const r = await runClient(program, [c.mode, peer.target, ...args], peer.clientEnv, timeoutMs);
  if (failed(r) && peer.service.exited) r.error += `; ${peer.label} ended (${peer.service.exited}): ${peer.service.tail(5)}`;
  return r;
}

interface RunOutput {
  results: Results;
  labels: string[];
  /** The daemon's own account of its transport (the "caller memory through" line). */
  transportLine: string;
  profiles: string[];
  floors: Floors;
}

/** What the transports cannot beat on this machine, measured without any bus. */
interface Floors {
  /** One unix-socket round trip between two C processes (every shim round trip). */
  socket: Outcome;
  /** One ioctl answered by a minimal C CUSE server (every CUSE ioctl); VM only. */
  cuse?: Outcome;
  /**
   * One round trip through a relay that forwards and does nothing else (a call's path
   * through a bus), the relay in C and in Node with the daemon's own socket I/O.
   */
  relayC: Outcome;
  relayNode: Outcome;
  /** Making, filling and sealing a memfd of the largest payload, then mapping and touching it. */
  memfd: Outcome;
}

async function measureFloors(where: Where, p: Plan): Promise<Floors> {
  progress(`${where}: floors`);
  const big = p.calls[p.calls.length - 1]!;
  const relayed: Array<[Outcome[], string[]]> = [[[], [SOCKET_RELAY]], [[], [process.execPath, NODE_RELAY]]];
  for (let i = 0; i < RELAY_RUNS; i++) {
    for (const [runs, relay] of relayed) runs.push(await runClient(SOCKET_RTT, [String(p.rtt), ...relay], process.env, p.clientTimeoutMs));
  }
  return {
    socket: await runClient(SOCKET_RTT, [String(p.rtt)], process.env, p.clientTimeoutMs),
    cuse: where === 'vm' ? await runClient(CUSE_RTT, [String(p.rtt)], process.env, p.clientTimeoutMs) : undefined,
    relayC: best(relayed[0]![0]),
    relayNode: best(relayed[1]![0]),
    memfd: await runClient(KDBUS_PINGPONG, ['memfd', String(big.size), String(big.iterations)], process.env, p.clientTimeoutMs),
  };
}

/** The run with the lowest mean; a failure only when all failed. */
function best(runs: Outcome[]): Outcome {
  const ok = runs.filter((r): r is Stats => !failed(r));
  return ok.length === 0 ? runs[0]! : ok.reduce((a, b) => (b.mean_us < a.mean_us ? b : a));
}

/**
 * Runs every case on every peer, case by case (peers interleaved, so a change in the
 * machine's load hits all of them alike). When profiling, each case gets a fresh daemon.
 */
async function runAll(where: Where, p: Plan, daemon: DaemonOptions): Promise<RunOutput> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kdbus-bench-'));
  const results: Results = new Map();
  const peers: Peer[] = [];
  const profiles: string[] = [];
  let transportLine = '';
  const floors = await measureFloors(where, p);
  let daemonRun = 0;
  const startKdbus = async (): Promise<Peer> => {
    daemonRun++;
    const profileDir = daemon.profileRoot ? path.join(daemon.profileRoot, `${where}-${daemonRun}`) : undefined;
    const socketDir = path.join(dir, `d${daemonRun}`);
    fs.mkdirSync(socketDir);
    const peer = await startKdbusCuse(where, socketDir, daemon, profileDir);
    await sleep(200);
    transportLine ||= peer.service.output.split('\n').find((l) => /caller memory through|transport (socket|cuse)/.test(l)) ?? '';
    return peer;
  };
  try {
    peers.push(await startKdbus());
    peers.push(await startDbusDaemon(dir));
    peers.push(await startDbusBroker(dir));
    const all = cases(p);
    // A fresh daemon runs its first thousands of calls unoptimized: every bus makes 0-byte
    // calls first, unmeasured, so the table shows each at its steady pace.
    const warmUp: Case = { key: 'warm-up', mode: 'call', args: () => ['0', String(p.warmUpCalls)], ops: p.warmUpCalls };
    progress(`${where}: warm-up (${p.warmUpCalls} calls, not measured)`);
    for (const peer of peers) await runCase(peer, warmUp, p.clientTimeoutMs);
    for (const c of p.warmUpEveryCase ? all : []) {
      progress(`${where}: warm-up (${c.key}, not measured)`);
      for (const peer of peers) await runCase(peer, c, p.clientTimeoutMs);
    }
    for (const c of all) {
      progress(`${where}: ${c.key}`);
      const row = new Map<string, Outcome>();
      results.set(c.key, row);
      for (const peer of peers) {
        const r = await runCase(peer, c, p.clientTimeoutMs);
        if (r) row.set(peer.label, r);
      }
      if (daemon.profileRoot && c.args('kdbus')) {
        const kdbus = peers[0]!;
        await kdbus.service.stop();
        profiles.push(`${where} ${c.key}: ${summarizeProfile(kdbus.profileDir!, c.ops)}`);
        if (c !== all[all.length - 1]) peers[0] = await startKdbus();
      }
    }
  } finally {
    for (const peer of peers) await peer.service.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return { results, labels: peers.map((x) => x.label), transportLine, profiles, floors };
}

// ---- the shim's cost for everything else -------------------------------------------------

/** Runs per configuration, alternating with and without the shim; the fastest one counts. */
const COST_ROUNDS = 3;

async function interpositionCost(): Promise<string> {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'kdbus-interpose-'));
  const header = ['operation (non-kdbus fd)'];
  /** Per libc: the best ns per operation without and with the shim. */
  const columns: Array<[Record<string, number>, Record<string, number>]> = [];
  try {
    for (const libc of ['glibc', 'musl'] as const) {
      const program = path.join(C_BUILD, libc, 'interpose-cost');
      const shim = path.join(PROJECT, 'shim', 'build', libc, 'libkdbus-cuse-shim.so');
      if (!fs.existsSync(program) || !fs.existsSync(shim)) {
        progress(`interposition: ${libc} skipped (${fs.existsSync(program) ? 'no shim build' : 'no musl-gcc'})`);
        continue;
      }
      header.push(`${libc} ns`, '+shim ns', 'Δ ns');
      const best: [Record<string, number>, Record<string, number>] = [{}, {}];
      for (let round = 0; round < COST_ROUNDS; round++) {
        for (const [i, preload] of [undefined, shim].entries()) {
          progress(`interposition: ${libc}${preload ? ' with the shim' : ''} (${round + 1}/${COST_ROUNDS})`);
          const env = { ...process.env };
          delete env['LD_PRELOAD'];
          if (preload) env['LD_PRELOAD'] = preload;
          const r = spawnSync(program, [scratch], { env, encoding: 'utf8', timeout: 60_000 });
          if (r.status !== 0) throw new Error(`interpose-cost (${libc}${preload ? ', shim' : ''}): ${r.stderr || r.error?.message}`);
          for (const [op, ns] of Object.entries(JSON.parse(r.stdout) as Record<string, number>)) {
            best[i]![op] = Math.min(best[i]![op] ?? Infinity, ns);
          }
        }
      }
      columns.push(best);
    }
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  const ops = Object.keys(columns[0]?.[0] ?? {});
  const rows = ops.map((op) => [
    op,
    ...columns.flatMap(([plain, shim]) => [num(plain[op]), num(shim[op]), signed(shim[op]! - plain[op]!)]),
  ]);
  return table(header, rows, header.map((_, i) => i > 0));
}

// ---- reporting ---------------------------------------------------------------------------

const num = (x: number | undefined): string => (x === undefined ? '-' : x.toFixed(1));
const signed = (x: number): string => `${x >= 0 ? '+' : ''}${x.toFixed(1)}`;
const us = (x: number): string => (x >= 1000 ? x.toFixed(0) : x >= 100 ? x.toFixed(1) : x.toFixed(2));

function sizeLabel(size: number): string {
  return size >= MIB ? `${size / MIB} MiB` : size >= KIB ? `${size / KIB} KiB` : `${size} B`;
}

function table(head: string[], rows: string[][], right: boolean[]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

function cell(o: Outcome | undefined, field: 'mean_us' | 'p99_us'): string {
  if (o === undefined) return '';
  if (failed(o)) return 'failed';
  return us(o[field]);
}

/** mean(a) / mean(b), or '' when either is missing. */
function ratio(a: Outcome | undefined, b: Outcome | undefined): number | undefined {
  if (!a || !b || failed(a) || failed(b) || b.mean_us === 0) return undefined;
  return a.mean_us / b.mean_us;
}

function floorLine(what: string, o: Outcome): string {
  return failed(o) ? `floor: ${what}: ${o.error}` : `floor: ${what}: mean ${us(o.mean_us)} µs, p99 ${us(o.p99_us)} µs`;
}

const x = (r: number | undefined): string => (r === undefined ? '-' : `${r.toFixed(2)}x`);

function resultTables(where: Where, p: Plan, run: RunOutput): string {
  const [kd, daemon, broker] = run.labels as [string, string, string];
  const peerHead = run.labels.flatMap((l) => [`${l} mean`, 'p99']);
  const out: string[] = [];
  const errors: string[] = [];
  const note = (key: string, row: Map<string, Outcome>): void => {
    for (const [label, o] of row) if (failed(o)) errors.push(`${key} / ${label}: ${o.error}`);
  };

  const rtt = run.results.get('rtt') ?? new Map<string, Outcome>();
  note('rtt', rtt);
  out.push(
    'Smallest round trip, µs — kdbus: RECV on an empty queue (EAGAIN); dbus1: org.freedesktop.DBus.Peer.Ping to the bus',
    table(
      ['', ...peerHead],
      [['round trip', ...run.labels.flatMap((l) => [cell(rtt.get(l), 'mean_us'), cell(rtt.get(l), 'p99_us')])]],
      [false, ...peerHead.map(() => true)],
    ),
    floorLine('one unix-socket round trip between two C processes (64 bytes each way)', run.floors.socket),
    ...(run.floors.cuse ? [floorLine('one ioctl (EAGAIN) on a minimal single-threaded C CUSE server', run.floors.cuse)] : []),
    floorLine(`the same round trip through a relay in C that only forwards (a call's path through a bus), best of ${RELAY_RUNS}`, run.floors.relayC),
    floorLine(`the same relay in Node, with the daemon's socket I/O (FdWatch, recvmsg/sendmsg, SO_PASSCRED), best of ${RELAY_RUNS}`, run.floors.relayNode),
    '',
  );

  const callRows: string[][] = [];
  const big = p.calls[p.calls.length - 1]!;
  for (const c of p.calls) {
    const row = run.results.get(`call ${c.size}`) ?? new Map<string, Outcome>();
    note(`call ${sizeLabel(c.size)}`, row);
    const k = row.get(kd);
    const via = k && !failed(k) ? `${k.path}${k.pool === 'read' ? ', pool by read(2)' : ''}` : '';
    callRows.push([
      sizeLabel(c.size), via, String(c.iterations),
      ...run.labels.flatMap((l) => [cell(row.get(l), 'mean_us'), cell(row.get(l), 'p99_us')]),
      x(ratio(k, row.get(broker))), x(ratio(k, row.get(daemon))),
    ]);
  }
  // kdbus-only variants of a call case, against the peers' numbers for that case.
  const variantRow = (key: string, base: string, size: number, via: string, iterations: number): void => {
    const row = run.results.get(key);
    if (!row) return;
    note(`call ${sizeLabel(size)}, ${via}`, row);
    const k = row.get(kd);
    const same = run.results.get(base);
    callRows.push([
      sizeLabel(size), via, String(iterations),
      cell(k, 'mean_us'), cell(k, 'p99_us'), '', '', '', '',
      x(ratio(k, same?.get(broker))), x(ratio(k, same?.get(daemon))),
    ]);
  };
  variantRow(`call ${big.size} vec`, `call ${big.size}`, big.size, 'vec (for comparison)', big.iterations);
  const small = p.calls[0]!;
  variantRow(`call ${small.size} epoll`, `call ${small.size}`, small.size, 'callee in epoll_wait', small.iterations);
  const callHead = ['payload', 'kdbus payload via', 'calls', ...peerHead, 'kdbus/broker', 'kdbus/daemon'];
  out.push(
    'Unicast call/reply, µs per call (caller and callee are two processes; the reply carries no body)',
    table(callHead, callRows, callHead.map((_, i) => i >= 2)),
    floorLine(`the memfd path's own cost for ${sizeLabel(big.size)} (make, fill, seal; map, touch every page, unmap, close), no bus`, run.floors.memfd),
    '',
  );

  const fanRows: string[][] = [];
  for (const f of p.fanout) {
    const row = run.results.get(`fanout ${f.receivers}`) ?? new Map<string, Outcome>();
    note(`fanout ${f.receivers}`, row);
    fanRows.push([
      String(f.receivers), String(f.iterations),
      ...run.labels.flatMap((l) => [cell(row.get(l), 'mean_us'), cell(row.get(l), 'p99_us')]),
      x(ratio(row.get(kd), row.get(broker))), x(ratio(row.get(kd), row.get(daemon))),
    ]);
  }
  const firstFan = p.fanout[0]!;
  const fanEpoll = run.results.get(`fanout ${firstFan.receivers} epoll`);
  if (fanEpoll) {
    note(`fanout ${firstFan.receivers}, receivers in epoll_wait`, fanEpoll);
    const same = run.results.get(`fanout ${firstFan.receivers}`);
    fanRows.push([
      `${firstFan.receivers} in epoll_wait`, String(firstFan.iterations),
      cell(fanEpoll.get(kd), 'mean_us'), cell(fanEpoll.get(kd), 'p99_us'), '', '', '', '',
      x(ratio(fanEpoll.get(kd), same?.get(broker))), x(ratio(fanEpoll.get(kd), same?.get(daemon))),
    ]);
  }
  const fanHead = ['receivers', 'signals', ...peerHead, 'kdbus/broker', 'kdbus/daemon'];
  out.push(
    'Broadcast fan-out, µs from SEND until the last matching receiver has the signal (each receiver a process)',
    table(fanHead, fanRows, fanHead.map(() => true)),
    '',
  );

  out.push('Targets (reported, not asserted):');
  const call = (size: number): Map<string, Outcome> => run.results.get(`call ${size}`) ?? new Map<string, Outcome>();
  const verdict = (ok: boolean | undefined): string => (ok === undefined ? 'not measured' : ok ? 'met' : 'NOT met');
  if (where === 'native') {
    for (const size of [0, KIB]) {
      const r = ratio(call(size).get(kd), call(size).get(broker));
      out.push(`  ${sizeLabel(size)} call/reply no slower than dbus-broker: ${x(r)} of dbus-broker's mean -> ${verdict(r === undefined ? undefined : r <= 1)}`);
    }
    const r = ratio(call(MIB).get(daemon), call(MIB).get(kd));
    out.push(`  1 MiB through a memfd at least 5x faster than dbus-daemon: ${r === undefined ? '-' : `${r.toFixed(2)}x faster`} -> ${verdict(r === undefined ? undefined : r >= 5)}`);
  } else {
    for (const c of p.calls) {
      const r = ratio(call(c.size).get(kd), call(c.size).get(daemon));
      out.push(`  ${sizeLabel(c.size)} call/reply at most half of dbus-daemon's: ${x(r)} -> ${verdict(r === undefined ? undefined : r <= 0.5)}`);
    }
  }
  if (errors.length > 0) out.push('', 'Failures:', ...errors.map((e) => `  ${e}`));
  if (run.profiles.length > 0) out.push('', 'Daemon CPU profile per case (one daemon per case; operations = calls, signals or ioctls incl. warm-up):', ...run.profiles);
  return out.join('\n');
}

function header(where: Where, run: RunOutput): string {
  const lines = [
    where === 'native'
      ? 'kdbus-cuse transport benchmark — native: kdbus clients over the socket transport (preload shim) vs sd-bus clients'
      : 'kdbus-cuse transport benchmark — test VM (qemu TCG): kdbus clients over CUSE devices vs sd-bus clients',
    `node ${process.version}  ${os.type()} ${os.release()} ${os.arch()}  cpu ${cpuModel()} (${os.cpus().length} logical)`,
    `date ${new Date().toISOString()}  load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} (1/5/15 min at the end; other processes skew timings)`,
    'payloads: kdbus >= 512 KiB in a sealed memfd made per call (sd-bus MEMFD_MIN_SIZE), smaller as PAYLOAD_VEC; ' +
      'dbus1 as an "ay" argument; the callee touches every page',
  ];
  if (run.transportLine) lines.push(`daemon: ${run.transportLine.replace(/^.*?(transport )/, '$1').trim()}`);
  return lines.join('\n');
}

// ---- profiles ----------------------------------------------------------------------------

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const frameKey = (n: ProfileNode): string => {
  const cf = n.callFrame;
  const at = cf.url ? ` ${cf.url.split('/').slice(-2).join('/')}:${cf.lineNumber + 1}` : '';
  return `${cf.functionName || '(anonymous)'}${at}`;
};

/**
 * The daemon's main-thread profile in dir as its busy time per measured operation, the top
 * self-time entries, and the project functions with the most inclusive time. Idle time and
 * start-up (module loading) are left out.
 */
function summarizeProfile(dir: string, operations: number): string {
  // CPU.<date>.<time>.<pid>.<thread id>.<seq>.cpuprofile: thread 0 is the main thread.
  const files = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.cpuprofile') && f.split('.')[4] === '0').sort() : [];
  if (files.length === 0) return 'no profile written';
  const out: string[] = [];
  for (const f of files) {
    const prof = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as Profile;
    const byId = new Map(prof.nodes.map((n) => [n.id, n]));
    const parent = new Map<number, number>();
    for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    const self = new Map<string, number>();
    const inclusive = new Map<string, number>();
    let busy = 0;
    prof.samples.forEach((id, i) => {
      const chain: ProfileNode[] = [];
      for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) chain.push(byId.get(cur)!);
      if (chain[0]!.callFrame.functionName === '(idle)') return;
      if (chain.some((n) => /run_main_module|compileForInternalLoader/.test(n.callFrame.url))) return;
      const t = prof.timeDeltas[i] ?? 0;
      busy += t;
      self.set(frameKey(chain[0]!), (self.get(frameKey(chain[0]!)) ?? 0) + t);
      const seen = new Set<string>();
      for (const n of chain) {
        if (!n.callFrame.url.includes('/dist/src/')) continue;
        const k = frameKey(n);
        if (seen.has(k)) continue;
        seen.add(k);
        inclusive.set(k, (inclusive.get(k) ?? 0) + t);
      }
    });
    const pct = (t: number): string => `${((t / Math.max(busy, 1)) * 100).toFixed(1).padStart(5)}%`;
    const top = (m: Map<string, number>, n: number): string[] =>
      [...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, t]) => `        ${pct(t)}  ${k}`);
    out.push(
      `    main thread: busy ${(busy / 1000).toFixed(0)} ms, ${(busy / Math.max(operations, 1)).toFixed(0)} µs per operation; self time:`,
      ...top(self, 10),
      '      project functions, inclusive:',
      ...top(inclusive, 12),
    );
  }
  return [`(${dir})`, ...out].join('\n');
}

// ---- main --------------------------------------------------------------------------------

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function native(quick: boolean, daemon: DaemonOptions): Promise<string> {
  const started = Date.now();
  const p = plan('native', quick);
  const run = await runAll('native', p, daemon);
  const cost = await interpositionCost();
  return [
    header('native', run), '',
    resultTables('native', p, run), '',
    `The shim's cost for programs that do not use kdbus: ns per operation (median of 5 loops, best of ${COST_ROUNDS} alternating runs), without and with LD_PRELOAD`,
    cost, '',
    `native run: ${((Date.now() - started) / 1000).toFixed(1)} s`,
  ].join('\n');
}

/** Inside the guest: the same run, with the CUSE transport. */
async function insideVm(quick: boolean, daemon: DaemonOptions): Promise<string> {
  const p = plan('vm', quick);
  const run = await runAll('vm', p, daemon);
  return [header('vm', run), '', resultTables('vm', p, run)].join('\n');
}

async function vm(quick: boolean, daemon: DaemonOptions): Promise<string> {
  const missing = Vm.unavailableReason();
  if (missing) return `VM run skipped: ${missing}`;
  const started = Date.now();
  progress('vm: booting');
  const machine = await Vm.boot();
  try {
    const profileRoot = daemon.profileRoot;
    const guestProfile = profileRoot ? path.join(machine.shareDir, 'profiles') : undefined;
    const args = [path.join(PROJECT, 'dist', 'bench', 'transport.js'), '--inside-vm', ...(quick ? ['--quick'] : [])];
    if (guestProfile) args.push(`--profile=${guestProfile}`);
    if (daemon.nodeOptions !== undefined) args.push(`--daemon-node-options=${daemon.nodeOptions}`);
    const r = await machine.run([process.execPath, ...args].map(shellQuote).join(' '), { timeoutMs: 280_000 });
    if (guestProfile && profileRoot && fs.existsSync(guestProfile)) fs.cpSync(guestProfile, profileRoot, { recursive: true });
    if (r.code !== 0) return `VM run failed (exit ${r.code}):\n${r.stderr.trim().split('\n').slice(-30).join('\n')}`;
    return `${r.stdout.trimEnd()}\n\nVM run: ${((Date.now() - started) / 1000).toFixed(1)} s (boot included, kernel ${machine.kernelRelease})`;
  } finally {
    await machine.shutdown();
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const opt = (name: string): string | undefined => argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const quick = argv.includes('--quick');
  const profileArg = opt('profile');
  const daemon: DaemonOptions = { nodeOptions: opt('daemon-node-options'), profileRoot: profileArg ? path.resolve(profileArg) : undefined };
  if (argv.includes('--inside-vm')) {
    process.stdout.write(`${await insideVm(quick, daemon)}\n`);
    return;
  }
  const only = opt('only');
  if (only && only !== 'native' && only !== 'vm') throw new Error(`--only must be native or vm, not ${only}`);
  buildPrograms();
  if (only !== 'vm') process.stdout.write(`${await native(quick, daemon)}\n\n`);
  if (only !== 'native') process.stdout.write(`${await vm(quick, daemon)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
