/**
 * The container sidecar layout (container/, docs/container.md) without a container engine:
 * two mount namespaces, each with a private /run, share one host directory at
 * /run/kdbus-cuse. The "sidecar" runs container/entrypoint.sh with container/sidecar.json,
 * as the image does; the "application" sees nothing of the sidecar but that directory, and
 * reaches the daemon only through what the entrypoint published there: the shim libraries,
 * the transport socket, the placeholder tree and the legacy endpoint.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { requireOrSkip } from '../helpers/require';

const PROJECT = path.resolve(__dirname, '../../..');
const C_DIR = path.join(PROJECT, 'test/c');
const ENTRYPOINT = path.join(PROJECT, 'container/entrypoint.sh');
const CONFIG = path.join(PROJECT, 'container/sidecar.json');
/** The paths as the image and compose.yaml name them, valid only inside the namespaces. */
const SHARED = '/run/kdbus-cuse';
const BUS_NODE = `${SHARED}/kdbus/0-system/bus`;
const CONTROL = '/run/kdbus-cuse-control/control.sock';
const LEGACY = `unix:path=${SHARED}/bus_socket`;
const SCENARIOS = ['hello', 'name', 'call', 'fds'];
const LIBCS = ['glibc', 'musl'] as const;
const KILL_MS = 20_000;

/** A private /run holding only the shared directory; then the command. */
const SIDECAR_SETUP = `mount -t tmpfs -o mode=0755 tmpfs /run && mkdir ${SHARED} && mount --bind "$1" ${SHARED} && shift && exec "$@"`;
/** The same, read-only, as compose.yaml mounts the volume in the application. */
const APP_SETUP = SIDECAR_SETUP.replace(' && shift', ` && mount -o remount,bind,ro ${SHARED} && shift`);

function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function make(dir: string, target: string): void {
  const r = spawnSync('make', ['-C', dir, target], { encoding: 'utf8' });
  assert.equal(r.status, 0, `make -C ${path.relative(PROJECT, dir)} ${target} failed:\n${r.stdout}${r.stderr}`);
}

class Proc {
  out = '';
  err = '';
  exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  readonly child: ChildProcess;
  private readonly done: Promise<void>;

  constructor(readonly label: string, file: string, args: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (d: Buffer) => (this.out += d.toString()));
    this.child.stderr!.on('data', (d: Buffer) => (this.err += d.toString()));
    const timer = setTimeout(() => this.child.kill('SIGKILL'), KILL_MS);
    this.done = new Promise((resolve) =>
      this.child.on('close', (code, signal) => {
        clearTimeout(timer);
        this.exit = { code, signal };
        resolve();
      }),
    );
  }

  describe(): string {
    const how = !this.exit ? 'running' : this.exit.signal ? `killed by ${this.exit.signal}` : `exit code ${this.exit.code}`;
    return `${this.label}: ${how}\n--- stdout ---\n${this.out}--- stderr ---\n${this.err}`;
  }

  /** Waits for the end; fails unless the exit code satisfies `ok`. */
  async end(ok: (code: number | null) => boolean = (c) => c === 0): Promise<this> {
    await this.done;
    if (!ok(this.exit!.code)) assert.fail(`unexpected end of ${this.describe()}`);
    return this;
  }

  async waitFor(what: string, ready: () => boolean, ms = 15_000): Promise<void> {
    const until = Date.now() + ms;
    while (!ready()) {
      if (this.exit) assert.fail(`${this.label} ended before ${what}:\n${this.describe()}`);
      if (Date.now() > until) assert.fail(`no ${what} after ${ms} ms:\n${this.describe()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async stop(): Promise<void> {
    if (!this.exit) this.child.kill('SIGTERM');
    await this.done;
  }
}

describe('container sidecar layout: two mount namespaces sharing /run/kdbus-cuse', function () {
  this.timeout(60_000);
  let host = '';
  let sidecar: Proc | undefined;
  let app: Proc | undefined;
  const procs: Proc[] = [];
  /** node and the tools, for the entrypoint's `exec node`. */
  const env = { ...process.env, PATH: `${path.dirname(process.execPath)}:${process.env['PATH'] ?? '/usr/bin:/bin'}` };

  /** A command in the application's mount namespace. */
  function inApp(label: string, file: string, args: string[], extraEnv: NodeJS.ProcessEnv = {}): Proc {
    const p = new Proc(`app: ${label}`, 'nsenter', ['--target', String(app!.child.pid), '--mount', '--', file, ...args], { ...env, ...extraEnv });
    procs.push(p);
    return p;
  }

  function inSidecar(label: string, file: string, args: string[]): Proc {
    const p = new Proc(`sidecar: ${label}`, 'nsenter', ['--target', String(sidecar!.child.pid), '--mount', '--', file, ...args], env);
    procs.push(p);
    return p;
  }

  before(async function () {
    requireOrSkip(this, process.getuid!() === 0, 'root (mount namespaces)');
    for (const cmd of ['unshare', 'nsenter', 'dbus-send', 'musl-gcc']) requireOrSkip(this, hasCommand(cmd), cmd);
    make(C_DIR, 'glibc');
    make(C_DIR, 'musl');
    make(path.join(PROJECT, 'shim'), 'glibc');
    make(path.join(PROJECT, 'shim'), 'musl');
    host = fs.mkdtempSync(path.join(os.tmpdir(), 'kdbus-sidecar-'));
    const sidecarEnv = { ...env, KDBUS_CUSE_HOME: PROJECT, KDBUS_CUSE_CONFIG: CONFIG };
    sidecar = new Proc('sidecar (container/entrypoint.sh)', 'unshare', ['--mount', '--propagation', 'private', 'sh', '-c', SIDECAR_SETUP, 'sh', host, ENTRYPOINT], sidecarEnv);
    await sidecar.waitFor('transport socket, legacy socket and bus node on the shared directory', () =>
      ['kdbus.sock', 'bus_socket', 'kdbus/0-system/bus'].every((f) => fs.existsSync(path.join(host, f))),
    );
    app = new Proc('application namespace', 'unshare', ['--mount', '--propagation', 'private', 'sh', '-c', APP_SETUP, 'sh', host, 'sh', '-c', 'echo ready && exec sleep 600'], env);
    await app.waitFor('the application namespace', () => app!.out.includes('ready'));
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && sidecar) this.currentTest.err!.message += `\n--- sidecar ---\n${sidecar.describe()}`;
  });

  after(async function () {
    await Promise.all(procs.map((p) => p.stop()));
    if (app) await app.stop();
    if (sidecar) await sidecar.stop();
    if (host) fs.rmSync(host, { recursive: true, force: true });
  });

  it('the application sees the shared directory (read-only) with the published shims, and nothing else of the sidecar', async function () {
    const paths = [
      `${SHARED}/kdbus.sock`,
      `${SHARED}/bus_socket`,
      BUS_NODE,
      `${SHARED}/kdbus/control`,
      `${SHARED}/lib/glibc/libkdbus-cuse-shim.so`,
      `${SHARED}/lib/musl/libkdbus-cuse-shim.so`,
      CONTROL,
    ];
    const probe = 'for p; do if [ -e "$p" ]; then echo "$p present"; else echo "$p absent"; fi; done';
    const seen = (p: Proc) => p.out.trim().split('\n');
    const inAppNs = await inApp('probe', 'sh', ['-c', probe, 'sh', ...paths]).end();
    const inSidecarNs = await inSidecar('probe', 'sh', ['-c', probe, 'sh', CONTROL]).end();
    assert.deepEqual(seen(inAppNs), [...paths.slice(0, -1).map((p) => `${p} present`), `${CONTROL} absent`]);
    assert.deepEqual(seen(inSidecarNs), [`${CONTROL} present`]);
    const write = await inApp('write', 'touch', [`${SHARED}/written-by-app`]).end((c) => c !== 0);
    assert.match(write.err, /Read-only file system/);
    for (const libc of LIBCS) {
      const built = fs.readFileSync(path.join(PROJECT, 'shim/build', libc, 'libkdbus-cuse-shim.so'));
      const published = fs.readFileSync(path.join(host, 'lib', libc, 'libkdbus-cuse-shim.so'));
      assert.ok(built.equals(published), `the ${libc} shim on the shared directory differs from shim/build/${libc}`);
    }
  });

  it('the health check (kdbus-cuse status --config) answers in the sidecar, not in the application', async function () {
    const args = [path.join(PROJECT, 'bin/kdbus-cuse'), 'status', '--config', CONFIG];
    const ok = await inSidecar('status', process.execPath, args).end();
    assert.match(ok.out, /0-system/);
    const refused = await inApp('status', process.execPath, args).end((c) => c !== 0);
    assert.match(refused.err + refused.out, /control\.sock/);
  });

  for (const libc of LIBCS) {
    describe(`C client (${libc}) in the application through the published shim`, function () {
      const shimEnv = { LD_PRELOAD: `${SHARED}/lib/${libc}/libkdbus-cuse-shim.so`, KDBUS_CUSE_ROOT: `${SHARED}/kdbus`, KDBUS_CUSE_SOCKET: `${SHARED}/kdbus.sock` };
      for (const scenario of SCENARIOS) {
        it(scenario, async function () {
          await inApp(`kdbus-client ${scenario}`, path.join(C_DIR, 'build', libc, 'kdbus-client'), ['-v', scenario, BUS_NODE], shimEnv).end();
        });
      }
    });
  }

  describe('legacy client in the application', function () {
    function dbusSend(...args: string[]): Proc {
      return inApp(`dbus-send ${args.join(' ')}`, 'dbus-send', [`--bus=${LEGACY}`, '--print-reply', ...args]);
    }

    it('ListNames and GetId on the legacy endpoint', async function () {
      const names = await dbusSend('--dest=org.freedesktop.DBus', '/', 'org.freedesktop.DBus.ListNames').end();
      assert.match(names.out, /string "org\.freedesktop\.DBus"/);
      const id = await dbusSend('--dest=org.freedesktop.DBus', '/', 'org.freedesktop.DBus.GetId').end();
      assert.match(id.out, /string "[0-9a-f]{32}"/);
    });

    it('sees and calls a name a kdbus client owns in another process of the application', async function () {
      const name = 'org.example.Sidecar';
      const shimEnv = { LD_PRELOAD: `${SHARED}/lib/musl/libkdbus-cuse-shim.so`, KDBUS_CUSE_ROOT: `${SHARED}/kdbus`, KDBUS_CUSE_SOCKET: `${SHARED}/kdbus.sock` };
      const peer = inApp(`kdbus-dbus-peer serve ${name}`, path.join(C_DIR, 'build/musl/kdbus-dbus-peer'), [BUS_NODE, 'serve', name], shimEnv);
      await peer.waitFor('the peer owning its name', () => /^ready :1\.\d+$/m.test(peer.out));
      const names = await dbusSend('--dest=org.freedesktop.DBus', '/', 'org.freedesktop.DBus.ListNames').end();
      assert.match(names.out, /string "org\.example\.Sidecar"/);
      const echo = await dbusSend(`--dest=${name}`, '/', 'org.example.Peer.Echo', 'string:through the volume').end();
      assert.match(echo.out, /string "through the volume!"/);
      await dbusSend(`--dest=${name}`, '/', 'org.example.Peer.Quit').end();
      await peer.end();
    });
  });

  describe('shutdown', function () {
    it('SIGTERM stops the sidecar, which removes its sockets and tree from the shared directory', async function () {
      const s = sidecar!;
      assert.equal(s.exit, undefined, `the sidecar died during the tests:\n${s.describe()}`);
      await s.stop();
      assert.deepEqual(s.exit, { code: 0, signal: null }, s.describe());
      for (const f of ['kdbus.sock', 'bus_socket', 'kdbus/0-system']) assert.equal(fs.existsSync(path.join(host, f)), false, `${f} is still on the shared directory`);
    });
  });
});
