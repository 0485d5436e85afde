/**
 * D-Bus 1 buses for tests and benchmarks that drive real legacy clients: the reference
 * dbus-daemon, dbus-broker, and kdbus-cuse's legacy endpoint, each started the same way
 * and reached at a unix:path address. Also the process plumbing those tests share: running
 * a client to its end, and keeping a long-running one (a service, a monitor) whose output
 * is awaited line by line.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const PROJECT = path.resolve(__dirname, '..', '..', '..');
/** Debian's interpreter, the one with python3-dbus and python3-gi (a PATH python may lack them). */
export const PYTHON = '/usr/bin/python3';
export const LEGACY_SCRIPTS = path.join(PROJECT, 'test', 'legacy');
const SESSION_CONF = '/usr/share/dbus-1/session.conf';

export type BusKind = 'dbus-daemon' | 'dbus-broker' | 'kdbus-cuse';
export const BUS_KINDS: readonly BusKind[] = ['dbus-daemon', 'dbus-broker', 'kdbus-cuse'];

export function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

export function pythonHas(modules: string): boolean {
  return fs.existsSync(PYTHON) && spawnSync(PYTHON, ['-c', `import ${modules}`], { stdio: 'ignore' }).status === 0;
}

/** What a bus kind needs of the machine; undefined when all of it is there. */
export function busUnavailable(kind: BusKind): string | undefined {
  const need: Record<BusKind, string[]> = {
    'dbus-daemon': ['dbus-daemon'],
    'dbus-broker': ['dbus-broker-launch', 'systemd-socket-activate', 'unshare'],
    'kdbus-cuse': [],
  };
  const missing = need[kind].filter((c) => !hasCommand(c));
  if (kind === 'dbus-broker' && !fs.existsSync(SESSION_CONF)) missing.push(SESSION_CONF);
  if (kind === 'dbus-broker' && !fs.existsSync(PYTHON)) missing.push(PYTHON);
  if (kind === 'kdbus-cuse' && !fs.existsSync(path.join(PROJECT, 'dist', 'src', 'cli', 'main.js'))) missing.push('a build (dist/)');
  return missing.length > 0 ? `${kind} needs ${missing.join(', ')}` : undefined;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  input?: string;
}

/** Runs a program to its end (killed after timeoutMs) and keeps what it printed. */
export function run(file: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(file, args, { env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 30_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, stdout, stderr: stderr + e.message, timedOut, ms: Date.now() - started });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut, ms: Date.now() - started });
    });
  });
}

/** How a run ended and what it printed, for an assertion message. */
export function describeRun(what: string, r: RunResult): string {
  const how = r.timedOut ? 'timed out' : r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
  return `${what}: ${how}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`;
}

/**
 * A long-running process in its own process group (so helpers it forks die with it), with
 * its output kept and awaitable.
 */
export class Proc {
  stdout = '';
  stderr = '';
  exited: string | undefined;
  readonly child: ChildProcess;
  private readonly done: Promise<void>;
  private readonly waiters = new Set<() => void>();

  constructor(
    readonly label: string,
    file: string,
    args: string[],
    env: NodeJS.ProcessEnv = process.env,
  ) {
    this.child = spawn(file, args, { env, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    this.child.stdin!.on('error', () => undefined);
    this.child.stdout!.on('data', (d: Buffer) => {
      this.stdout += d.toString();
      this.wake();
    });
    this.child.stderr!.on('data', (d: Buffer) => {
      this.stderr += d.toString();
      this.wake();
    });
    this.done = new Promise((resolve) => {
      this.child.on('error', (e) => {
        this.exited = e.message;
        this.wake();
        resolve();
      });
      this.child.on('exit', (code, signal) => {
        this.exited = signal ? `killed by ${signal}` : `exit code ${code}`;
        this.wake();
        resolve();
      });
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** The stdout lines so far (complete ones). */
  lines(): string[] {
    const all = this.stdout.split('\n');
    all.pop();
    return all;
  }

  /** Waits until ready() holds, failing early when the process ends. */
  async waitFor(what: string, ready: () => boolean, ms: number): Promise<void> {
    const until = Date.now() + ms;
    while (!ready()) {
      if (this.exited) throw new Error(`${this.label} ended (${this.exited}) before ${what}\n${this.tail()}`);
      const left = until - Date.now();
      if (left <= 0) throw new Error(`${this.label}: no ${what} after ${ms} ms\n${this.tail()}`);
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer);
          this.waiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, Math.min(left, 50));
        this.waiters.add(wake);
      });
    }
  }

  /** Waits for a stdout line matching re and returns its match. */
  async waitForLine(re: RegExp, ms = 20_000): Promise<RegExpMatchArray> {
    let found: RegExpMatchArray | null = null;
    await this.waitFor(`a line matching ${re}`, () => {
      for (const l of this.lines()) if ((found = l.match(re))) return true;
      return false;
    }, ms);
    return found!;
  }

  write(text: string): void {
    this.child.stdin!.write(text);
  }

  tail(lines = 30): string {
    const cut = (s: string): string => s.trimEnd().split('\n').slice(-lines).join('\n');
    return `--- ${this.label} stdout\n${cut(this.stdout)}\n--- ${this.label} stderr\n${cut(this.stderr)}`;
  }

  /** SIGTERM to the group, SIGKILL after graceMs; resolves once the leader has exited. */
  async stop(graceMs = 3_000): Promise<void> {
    if (this.child.pid === undefined) return;
    const group = -this.child.pid;
    if (!this.exited) {
      signalGroup(group, 'SIGTERM');
      const timer = setTimeout(() => signalGroup(group, 'SIGKILL'), graceMs);
      await this.done;
      clearTimeout(timer);
    }
    // Helpers of the group (the journal sink, dbus-broker itself) outlive a launcher.
    signalGroup(group, 'SIGKILL');
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }
}

function signalGroup(group: number, signal: NodeJS.Signals): void {
  try {
    process.kill(group, signal);
  } catch {
    // The group is gone already.
  }
}

/** A running bus that legacy clients reach at `address`. */
export type Libc = 'glibc' | 'musl';

/** The preload shim kdbus clients load, as `npm run build` leaves it. */
export function shimPath(libc: Libc = 'glibc'): string {
  return path.join(PROJECT, 'shim', 'build', libc, 'libkdbus-cuse-shim.so');
}

/** kdbus-cuse's kdbus side of the same bus: its node, and the environment of a client through the shim. */
export interface KdbusSide {
  busNode: string;
  clientEnv(libc?: Libc): NodeJS.ProcessEnv;
}

export interface LegacyBus {
  kind: BusKind;
  /** unix:path=... */
  address: string;
  socketPath: string;
  /** The process whose memory is the bus's (dbus-daemon, dbus-broker, the kdbus-cuse daemon). */
  busPid(): number | undefined;
  proc: Proc;
  /** Whether the bus process is still running (after bad input, say). */
  alive(): boolean;
  stop(): Promise<void>;
  /** kdbus-cuse only. */
  kdbus?: KdbusSide;
}

export interface StartOptions {
  /** kdbus-cuse: NODE_OPTIONS of the daemon alone. */
  nodeOptions?: string;
  /** kdbus-cuse: --log-level. */
  logLevel?: string;
  /** kdbus-cuse: its RLIMIT_NOFILE, soft and hard (prlimit), which it may not raise (setpriv). */
  maxOpenFiles?: number;
  /** dbus-daemon, dbus-broker: the configuration file, instead of the session bus's; kdbus-cuse: its JSON configuration (--config). */
  configFile?: string;
}

/** Starts a bus of the given kind with its sockets under dir (a fresh directory). */
export async function startBus(kind: BusKind, dir: string, opts: StartOptions = {}): Promise<LegacyBus> {
  fs.mkdirSync(dir, { recursive: true });
  switch (kind) {
    case 'dbus-daemon':
      return startDbusDaemon(dir, opts.configFile);
    case 'dbus-broker':
      return startDbusBroker(dir, opts.configFile ?? SESSION_CONF);
    case 'kdbus-cuse':
      return startKdbusCuse(dir, opts);
  }
}

function busOf(kind: BusKind, socketPath: string, proc: Proc, busPid: () => number | undefined): LegacyBus {
  return {
    kind,
    address: `unix:path=${socketPath}`,
    socketPath,
    proc,
    busPid,
    alive: () => proc.exited === undefined && busPid() !== undefined && processExists(busPid()!),
    stop: () => proc.stop(),
  };
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function startDbusDaemon(dir: string, configFile: string | undefined): Promise<LegacyBus> {
  const socketPath = path.join(dir, 'dbus-daemon.sock');
  // --systemd-activation as dbus's own test fixtures start it: its installed tests check
  // the Features property for it.
  const proc = new Proc('dbus-daemon', 'dbus-daemon', [
    configFile ? `--config-file=${configFile}` : '--session', `--address=unix:path=${socketPath}`, '--nofork', '--nopidfile', '--print-address', '--systemd-activation',
  ]);
  await proc.waitForLine(/^unix:/, 20_000);
  return busOf('dbus-daemon', socketPath, proc, () => proc.child.pid);
}

/**
 * dbus-broker-launch wants its socket by socket activation and a journal socket to log
 * into (docs/DESIGN.md "Running peers here without systemd"). A private mount namespace
 * with its own /run gives it a journal socket (a sink) without touching the machine's /run.
 */
async function startDbusBroker(dir: string, configFile: string): Promise<LegacyBus> {
  const socketPath = path.join(dir, 'dbus-broker.sock');
  // A bus restarted in the same directory: the socket of the killed one is still there.
  fs.rmSync(socketPath, { force: true });
  const runtime = path.join(dir, 'xdg');
  fs.mkdirSync(runtime, { recursive: true, mode: 0o700 });
  const journal = '/run/systemd/journal/socket';
  const sink = `import socket\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.bind('${journal}')\nwhile True: s.recv(1 << 16)`;
  const script = [
    'set -e',
    'mount -t tmpfs tmpfs /run',
    'mkdir -p /run/systemd/journal',
    `${PYTHON} -c "${sink}" &`,
    `while [ ! -S ${journal} ]; do sleep 0.01; done`,
    `exec systemd-socket-activate -l ${socketPath} -E DBUS_SESSION_BUS_ADDRESS=unix:path=${socketPath} ` +
      `-E XDG_RUNTIME_DIR=${runtime} dbus-broker-launch --scope user --config-file ${configFile}`,
  ].join('\n');
  const proc = new Proc('dbus-broker', 'unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script]);
  await proc.waitFor('its socket', () => fs.existsSync(socketPath), 20_000);
  const bus = busOf('dbus-broker', socketPath, proc, () => brokerPid(proc.pid));
  // The launcher starts the broker at the first connection: make that one now.
  const r = await run('dbus-send', ['--bus=' + bus.address, '--print-reply', '--dest=org.freedesktop.DBus',
    '/org/freedesktop/DBus', 'org.freedesktop.DBus.GetId'], { timeoutMs: 20_000 });
  if (r.code !== 0) throw new Error(`${describeRun('dbus-broker does not answer', r)}\n${proc.tail()}`);
  return bus;
}

/** The dbus-broker process under the launcher (the one holding the bus's state). */
function brokerPid(launcherGroup: number): number | undefined {
  const r = spawnSync('pgrep', ['-g', String(launcherGroup), '-x', 'dbus-broker'], { encoding: 'utf8' });
  const pid = Number(r.stdout.trim().split('\n')[0]);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

async function startKdbusCuse(dir: string, opts: StartOptions): Promise<LegacyBus> {
  const socketPath = path.join(dir, 'legacy.sock');
  const env = opts.nodeOptions === undefined ? process.env : { ...process.env, NODE_OPTIONS: opts.nodeOptions };
  const command = [
    process.execPath, path.join(PROJECT, 'bin', 'kdbus-cuse'), 'serve', '--transport', 'socket',
    '--socket', path.join(dir, 'kdbus.sock'), '--kdbus-root', path.join(dir, 'kdbus'),
    '--bus', `${process.getuid!()}-legacy`, '--listen', `unix:path=${socketPath}`,
    // As dbus-daemon is started here (above).
    '--systemd-activation',
    ...(opts.logLevel ? ['--log-level', opts.logLevel] : []),
    ...(opts.configFile ? ['--config', opts.configFile] : []),
  ];
  const limit = opts.maxOpenFiles;
  // Without CAP_SYS_RESOURCE, as a daemon that may not raise the limit it was given.
  const held = ['prlimit', `--nofile=${limit}:${limit}`, '--', 'setpriv', '--bounding-set', '-sys_resource', '--inh-caps', '-sys_resource', '--'];
  const [file, ...args] = limit === undefined ? command : [...held, ...command];
  const proc = new Proc('kdbus-cuse', file!, args, env);
  await proc.waitFor('its legacy socket', () => fs.existsSync(socketPath), 30_000);
  const root = path.join(dir, 'kdbus');
  const kdbus: KdbusSide = {
    busNode: path.join(root, `${process.getuid!()}-legacy`, 'bus'),
    clientEnv: (libc = 'glibc') => ({ ...process.env, LD_PRELOAD: shimPath(libc), KDBUS_CUSE_ROOT: root, KDBUS_CUSE_SOCKET: path.join(dir, 'kdbus.sock') }),
  };
  return { ...busOf('kdbus-cuse', socketPath, proc, () => (proc.exited ? undefined : proc.pid)), kdbus };
}

/** Resident set size of a process in KiB (VmRSS), undefined when it is gone. */
export function rssKiB(pid: number): number | undefined {
  try {
    const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB/m);
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** dbus-send --print-reply against the bus's driver. */
export function driverCall(bus: LegacyBus, method: string, args: string[] = [], extra: string[] = []): Promise<RunResult> {
  return run('dbus-send', [
    `--bus=${bus.address}`, '--print-reply', ...extra, '--dest=org.freedesktop.DBus',
    '/org/freedesktop/DBus', `org.freedesktop.DBus.${method}`, ...args,
  ], { timeoutMs: 30_000 });
}
