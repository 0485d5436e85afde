/**
 * The daemon as a service manager sees it: a real `kdbus-cuse serve` process (socket
 * transport, everything under a temporary root) reporting through NOTIFY_SOCKET to a
 * datagram socket this test holds, as systemd's would. Checks the notifications in order,
 * that READY means the nodes and sockets exist, what a reload changes and what it leaves,
 * and that a stop leaves nothing behind.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cuseUnavailable } from '../../src/cuse/cuse-transport';
import { NotifyListener } from '../helpers/notify-listener';

const PROJECT = path.resolve(__dirname, '../../..');
const BIN = path.join(PROJECT, 'bin/kdbus-cuse');
const UID = process.getuid?.() ?? 0;
const A = `${UID}-lifecycle-a`;
const B = `${UID}-lifecycle-b`;
/** Node starts in well under a second here; a slow CI machine gets room. */
const START_MS = 30_000;
const STEP_MS = 10_000;

class Served {
  log = '';
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly child: ChildProcess;

  constructor(args: string[], notifySocket: string) {
    const env: NodeJS.ProcessEnv = { ...process.env, NOTIFY_SOCKET: notifySocket };
    delete env['KDBUS_CUSE_LOG_LEVEL'];
    delete env['JOURNAL_STREAM'];
    this.child = spawn(process.execPath, [BIN, 'serve', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (d: Buffer) => (this.log += d.toString()));
    this.child.stderr!.on('data', (d: Buffer) => (this.log += d.toString()));
    // 'close', not 'exit': by then every line the daemon wrote has been read.
    this.exit = new Promise((resolve) => this.child.on('close', (code, signal) => resolve({ code, signal })));
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Waits for a log line: stderr comes through a pipe, after the datagram may have. */
  async logged(re: RegExp, ms = 10_000): Promise<void> {
    const until = Date.now() + ms;
    while (!re.test(this.log)) {
      if (Date.now() > until) assert.fail(`no log line matching ${re} within ${ms} ms:\n${this.log}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

/** Every path under `dir`, relative, sorted: what a failed "nothing left" check prints. */
function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      out.push(path.relative(dir, p));
      if (e.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out.sort();
}

describe('service lifecycle (sd_notify, reload, clean stop)', function () {
  this.timeout(120_000);
  let root: string;
  let listener: NotifyListener;
  let daemon: Served | undefined;

  beforeEach(() => {
    // /tmp may be a short path already; the notify socket must fit in sun_path.
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'lifecycle-'));
    // Stand-ins for /run and /dev, which exist before any daemon runs.
    fs.mkdirSync(path.join(root, 'run'));
    fs.mkdirSync(path.join(root, 'dev'));
    fs.mkdirSync(path.join(root, 'etc'));
    listener = new NotifyListener(path.join(root, 'notify'));
  });

  afterEach(async () => {
    if (daemon?.alive) {
      daemon.child.kill('SIGKILL');
      await daemon.exit;
    }
    daemon = undefined;
    listener.close();
    fs.rmSync(root, { recursive: true, force: true });
  });

  const writeConfig = (file: string, c: object): void => fs.writeFileSync(file, JSON.stringify(c, null, 2));

  it('reports READY once the nodes exist, reloads on SIGHUP, and reports STOPPING on SIGTERM', async () => {
    const file = path.join(root, 'etc/kdbus-cuse.json');
    const run = path.join(root, 'run/kdbus-cuse');
    const kdbus = path.join(root, 'dev/kdbus');
    const base = { transport: 'socket', kdbusRoot: kdbus, socket: path.join(run, 'kdbus.sock') };
    writeConfig(file, { ...base, buses: [A], logLevel: 'info' });
    daemon = new Served(['--config', file], path.join(root, 'notify'));
    const d = daemon;
    const why = (): string => `daemon ${d.alive ? 'running' : 'exited'}; its log:\n${d.log}`;

    assert.equal(await listener.next(START_MS, why), `READY=1\nSTATUS=serving ${A}`);
    // Ready means usable: the control node, the bus, the transport and legacy sockets.
    for (const p of [path.join(kdbus, 'control'), path.join(kdbus, A, 'bus')]) assert.ok(fs.statSync(p).isFile(), p);
    for (const p of [path.join(run, 'kdbus.sock'), path.join(run, 'bus_socket')]) assert.ok(fs.statSync(p).isSocket(), p);

    // Reload 1: a new bus and a new log level, both live.
    writeConfig(file, { ...base, buses: [A, B], logLevel: 'debug' });
    const before = process.hrtime.bigint() / 1000n;
    d.child.kill('SIGHUP');
    const reloading = /^RELOADING=1\nSTATUS=reloading the configuration\nMONOTONIC_USEC=(\d+)$/.exec(await listener.next(STEP_MS, why));
    const after = process.hrtime.bigint() / 1000n;
    assert.ok(reloading, 'RELOADING=1 with MONOTONIC_USEC');
    const usec = BigInt(reloading[1]!);
    assert.ok(usec >= before && usec <= after, `MONOTONIC_USEC ${usec} is not CLOCK_MONOTONIC between ${before} and ${after}`);
    assert.equal(await listener.next(STEP_MS, why), `READY=1\nSTATUS=serving ${A}, ${B}`);
    assert.ok(fs.statSync(path.join(kdbus, B, 'bus')).isFile(), 'the new bus exists when READY=1 comes');
    await d.logged(/reload: log level debug/);
    await d.logged(new RegExp(`reload: bus ${B} created`));

    // Reload 2: a broken file. The error names file and key; the daemon keeps serving.
    writeConfig(file, { ...base, buses: ['not a bus'] });
    d.child.kill('SIGHUP');
    assert.match(await listener.next(STEP_MS, why), /^RELOADING=1\nSTATUS=reloading the configuration\nMONOTONIC_USEC=\d+$/);
    const failed = await listener.next(STEP_MS, why);
    const prefix = `READY=1\nSTATUS=serving ${A}, ${B}; reload failed, previous configuration kept: ${file}: buses[0]: `;
    assert.ok(failed.startsWith(prefix) && failed.length > prefix.length, failed);
    await d.logged(new RegExp(`${file.replace(/[.]/g, '\\.')}: buses\\[0\\]: "not a bus"`));
    assert.ok(d.alive);
    assert.ok(fs.statSync(path.join(kdbus, A, 'bus')).isFile());

    // Reload 3: bus B dropped (kept running), the socket renamed in its directory (waits for a
    // restart; the legacy socket beside it stays where it is), level warn.
    writeConfig(file, { ...base, socket: path.join(run, 'moved.sock'), buses: [A], logLevel: 'warn' });
    d.child.kill('SIGHUP');
    assert.match(await listener.next(STEP_MS, why), /^RELOADING=1\n/);
    assert.equal(await listener.next(STEP_MS, why), `READY=1\nSTATUS=serving ${A}, ${B}; waiting for a restart: socket`);
    assert.ok(fs.statSync(path.join(kdbus, B, 'bus')).isFile(), 'a bus taken out of the configuration keeps running');
    assert.ok(fs.statSync(path.join(run, 'kdbus.sock')).isSocket(), 'the socket stays where clients know it');
    await d.logged(new RegExp(`reload: bus ${B} is no longer configured but keeps running`));
    await d.logged(/reload: socket changed; the change takes effect when the daemon restarts/);

    d.child.kill('SIGTERM');
    assert.equal(await listener.next(STEP_MS, why), 'STOPPING=1\nSTATUS=shutting down (SIGTERM)');
    assert.deepEqual(await d.exit, { code: 0, signal: null });
    assert.equal(listener.poll(), undefined, 'nothing after STOPPING=1');
    // At warn, the info line that ends a reload is no longer written: reload 1 wrote the only one.
    assert.equal(d.log.match(/reload done/g)?.length, 1, d.log);
    // Nothing left behind: no node, no socket, no directory the daemon made.
    assert.deepEqual(tree(path.join(root, 'run')), []);
    assert.deepEqual(tree(path.join(root, 'dev')), []);
  });

  it('leaves a runtime directory it did not create in place, empty, and removes the ones it did (SIGINT)', async () => {
    const run = path.join(root, 'run/kdbus-cuse');
    fs.mkdirSync(run); // as systemd's RuntimeDirectory= makes it before the daemon starts
    const legacy = path.join(root, 'run/legacy/deeper/bus');
    daemon = new Served(
      ['--transport', 'socket', '--kdbus-root', path.join(root, 'dev/kdbus'), '--socket', path.join(run, 'kdbus.sock'),
        '--bus', A, '--listen', `unix:path=${legacy}`, '--listen', `unix:dir=${path.join(root, 'run/dir-listen')}`],
      path.join(root, 'notify'),
    );
    const d = daemon;
    const why = (): string => d.log;
    assert.equal(await listener.next(START_MS, why), `READY=1\nSTATUS=serving ${A}`);
    assert.ok(fs.statSync(legacy).isSocket());
    assert.equal(fs.readdirSync(path.join(root, 'run/dir-listen')).length, 1);
    d.child.kill('SIGINT');
    assert.equal(await listener.next(STEP_MS, why), 'STOPPING=1\nSTATUS=shutting down (SIGINT)');
    assert.deepEqual(await d.exit, { code: 0, signal: null });
    assert.deepEqual(tree(path.join(root, 'run')), ['kdbus-cuse']);
    assert.deepEqual(tree(path.join(root, 'dev')), []);
  });

  it('cannot start on a socket another daemon serves: one line saying so, exit status 1, the other daemon untouched', async () => {
    const kdbus = path.join(root, 'dev/kdbus');
    const sock = path.join(root, 'run/kdbus.sock');
    daemon = new Served(['--transport', 'socket', '--kdbus-root', kdbus, '--socket', sock, '--bus', A, '--listen', 'none'], path.join(root, 'notify'));
    const d = daemon;
    assert.equal(await listener.next(START_MS, () => d.log), `READY=1\nSTATUS=serving ${A}`);
    const second = spawnSync(process.execPath, [BIN, 'serve', '--transport', 'socket', '--kdbus-root', path.join(root, 'dev/other'), '--socket', sock, '--listen', 'none'], { encoding: 'utf8' });
    assert.equal(second.status, 1, second.stdout + second.stderr);
    const lines = (second.stdout + second.stderr).trim().split('\n');
    assert.equal(lines.length, 1, `one line, no stack:\n${lines.join('\n')}`);
    assert.match(lines[0]!, new RegExp(`error\\s+cannot start: ${sock.replace(/[.]/g, '\\.')}: another daemon is listening there$`));
    assert.ok(d.alive && fs.statSync(sock).isSocket(), 'the first daemon still serves');
  });

  it('with --transport cuse where CUSE cannot serve: one line saying why, exit status 1', () => {
    // Without a usable /dev/cuse that is the reason; with one, the kdbus root given here is
    // outside /dev, where CUSE nodes cannot go. Either way the daemon cannot start.
    const kdbus = path.join(root, 'dev/kdbus');
    const why = cuseUnavailable() ?? `CUSE nodes live under /dev; the kdbus root ${kdbus} is not below it`;
    const r = spawnSync(process.execPath, [BIN, 'serve', '--transport', 'cuse', '--kdbus-root', kdbus, '--socket', path.join(root, 'run/kdbus.sock'), '--listen', 'none'], { encoding: 'utf8' });
    assert.equal(r.status, 1, r.stdout + r.stderr);
    const lines = (r.stdout + r.stderr).trim().split('\n');
    assert.equal(lines.length, 1, `one line, no stack:\n${lines.join('\n')}`);
    assert.match(lines[0]!, /\berror\b/);
    assert.ok(lines[0]!.endsWith(`cannot start: ${why}`), lines[0]);
  });

  it('--check-config validates without starting anything: 0 when valid, 2 with file and key', () => {
    const file = path.join(root, 'etc/kdbus-cuse.json');
    const kdbus = path.join(root, 'dev/kdbus');
    writeConfig(file, { transport: 'socket', kdbusRoot: kdbus, socket: path.join(root, 'run/k/kdbus.sock'), buses: [A] });
    const ok = spawnSync(process.execPath, [BIN, 'serve', '--config', file, '--check-config'], { encoding: 'utf8' });
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(ok.stdout, `configuration valid: transport socket, buses ${A}\n`);
    writeConfig(file, { transport: 'tcp' });
    const bad = spawnSync(process.execPath, [BIN, 'serve', '--config', file, '--check-config'], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
    assert.equal(bad.stdout, '');
    assert.match(bad.stderr, new RegExp(`^kdbus-cuse: ${file.replace(/[.]/g, '\\.')}: transport: must be auto, cuse or socket`));
    const flag = spawnSync(process.execPath, [BIN, 'serve', '--bus', 'system', '--check-config'], { encoding: 'utf8' });
    assert.equal(flag.status, 2);
    assert.match(flag.stderr, /command line: buses\[0\]: "system" is not a bus name/);
    assert.deepEqual(tree(path.join(root, 'run')), []);
    assert.deepEqual(tree(path.join(root, 'dev')), []);
  });
});
