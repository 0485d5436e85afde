/**
 * A real C kdbus client (test/c) against the daemon, once per libc: the client only uses
 * open/ioctl/mmap/poll/close, as sd-bus does, and reaches the daemon through the preload
 * shim. Each scenario is one test, so a failure names the scenario; its stderr names the
 * step and errno.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DaemonProcess as Daemon } from '../helpers/daemon-process';
import { requireOrSkip } from '../helpers/require';
import { C_CLIENT_SCENARIOS as SCENARIOS } from '../helpers/c-client-scenarios';

const PROJECT = path.resolve(__dirname, '../../..');
const CLIENT_DIR = path.join(PROJECT, 'test/c');
const LIBCS = ['glibc', 'musl'] as const;
/** The client's own watchdog gives up on a scenario after 30 s; this is the backstop. */
const CLIENT_KILL_MS = 40_000;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), CLIENT_KILL_MS);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, output });
    });
  });
}

function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function make(target: string): void {
  const r = spawnSync('make', ['-C', CLIENT_DIR, target], { encoding: 'utf8' });
  assert.equal(r.status, 0, `make -C test/c ${target} failed:\n${r.stdout}${r.stderr}`);
}

async function waitFor(what: string, ready: () => boolean, daemon: Daemon, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!ready()) {
    if (daemon.exited) throw new Error(`the daemon exited (${daemon.exited}) before ${what}:\n${daemon.log}`);
    if (Date.now() > until) throw new Error(`no ${what} after ${ms} ms:\n${daemon.log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}


describe('C kdbus client through the shim (test/c)', function () {
  this.timeout(60_000);
  const busName = `${process.getuid!()}-citest`;
  let tmp = '';
  let root = '';
  let socket = '';
  let daemon: Daemon | undefined;
  const haveMusl = hasCommand('musl-gcc');

  before(async function () {
    make('glibc');
    if (haveMusl) make('musl');
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kdbus-citest-'));
    root = path.join(tmp, 'kdbus');
    socket = path.join(tmp, 'kdbus.sock');
    daemon = new Daemon(['--transport', 'socket', '--bus', busName, '--socket', socket, '--kdbus-root', root]);
    const d = daemon;
    await waitFor('listening socket and bus node', () => fs.existsSync(socket) && fs.existsSync(path.join(root, busName, 'bus')), d, 15_000);
  });

  after(async function () {
    if (daemon && !daemon.exited) await daemon.stop(5_000);
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  for (const libc of LIBCS) {
    describe(libc, function () {
      const shim = path.join(PROJECT, 'shim/build', libc, 'libkdbus-cuse-shim.so');
      const client = path.join(CLIENT_DIR, 'build', libc, 'kdbus-client');

      for (const scenario of SCENARIOS) {
        it(scenario, async function () {
          if (libc === 'musl') requireOrSkip(this, haveMusl, 'musl-gcc');
          requireOrSkip(this, fs.existsSync(shim), `the shim ${path.relative(PROJECT, shim)}`);
          const env = { ...process.env, LD_PRELOAD: shim, KDBUS_CUSE_ROOT: root, KDBUS_CUSE_SOCKET: socket };
          const r = await run(client, ['-v', scenario, path.join(root, busName, 'bus')], env);
          if (r.code !== 0) {
            const how = r.signal ? `killed by ${r.signal}` : `exit code ${r.code}`;
            assert.fail(`${libc} kdbus-client ${scenario}: ${how}\n${r.output}\n--- daemon log ---\n${daemon!.tail()}`);
          }
        });
      }
    });
  }

  // A suite's own tests run before its child suites, so the shutdown gets a suite of its own.
  describe('shutdown', function () {
    it('the daemon stops on SIGTERM and removes its nodes and socket', async function () {
      const d = daemon!;
      assert.equal(d.exited, undefined, `the daemon died during the scenarios:\n${d.tail()}`);
      const how = await d.stop(10_000);
      assert.equal(how, 'code 0', `daemon: ${how}\n${d.tail()}`);
      assert.equal(fs.existsSync(socket), false, 'the listening socket is still there');
      assert.equal(fs.existsSync(path.join(root, busName)), false, 'the bus directory is still there');
      assert.equal(fs.existsSync(path.join(root, 'control')), false, 'the control node is still there');
    });
  });
});
