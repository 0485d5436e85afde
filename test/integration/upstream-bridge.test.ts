/**
 * The upstream bridge (issue 6): a kdbus-cuse bus joined to a real dbus-daemon or dbus-broker
 * (`serve --upstream`). The kdbus side is test/c's kdbus-dbus-peer through the preload shim
 * (it speaks D-Bus over kdbus as sd-bus did); the upstream side is python3-dbus
 * (test/legacy/cross-peer.py), busctl, gdbus and dbus-send. The kdbus peer echoes s + "!",
 * the python peer s + "?", so a reply shows who produced it.
 *
 * Everything runs once per upstream kind, each with its own upstream bus (a policy that lets
 * every user connect and denies uid 65534 one destination) and its own kdbus-cuse daemon.
 * The last scenario kills the upstream bus and starts it again on the same socket.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  LEGACY_SCRIPTS, PROJECT, PYTHON, Proc, busUnavailable, driverCall, describeRun, hasCommand, pythonHas, run, shimPath, sleep,
  type LegacyBus, type RunResult,
} from '../helpers/legacy-bus';
import { openFiles, MESSAGE_MEMFDS } from '../helpers/open-files';
import { requireOrSkip } from '../helpers/require';
import { UPSTREAM_KINDS, startBridge, startUpstream, type Bridge, type Denial } from '../helpers/upstream-bridge';

const C_DIR = path.join(PROJECT, 'test/c');
const PEER_BIN = path.join(C_DIR, 'build/glibc/kdbus-dbus-peer');
const PY_PEER = path.join(LEGACY_SCRIPTS, 'cross-peer.py');
const IFACE = 'org.example.Peer';
const OBJ = '/org/example/Peer';
/** Owned upstream by python3-dbus, on kdbus by kdbus-dbus-peer. */
const PY_NAME = 'org.example.PyPeer';
const KDBUS_NAME = 'org.example.KPeer';
const DENIED_NAME = 'org.example.Denied';
const NOBODY = { uid: 65534 };
const DENIALS: Denial[] = [{ user: String(NOBODY.uid), sendDestination: DENIED_NAME }];
/** Shorter than the programs' own watchdogs (30 s), so a hang shows as a timeout here. */
const RUN_MS = 25_000;
const UNIQUE = /^:\d+\.\d+$/;
/** python3-dbus: RequestName(argv[2], flags argv[3]) on the bus at argv[1]; prints the answer, holds the name. */
const REQUEST_NAME_SCRIPT = [
  'import dbus, sys, time',
  'bus = dbus.bus.BusConnection(sys.argv[1])',
  'print(bus.request_name(sys.argv[2], int(sys.argv[3])), flush=True)',
  'time.sleep(60)',
].join('\n');

const nobody = (file: string, args: string[]): [string, string[]] =>
  ['setpriv', [`--reuid=${NOBODY.uid}`, `--regid=${NOBODY.uid}`, '--clear-groups', file, ...args]];

function ok(what: string, r: RunResult): RunResult {
  assert.ok(r.code === 0 && !r.timedOut, describeRun(what, r));
  return r;
}

function lines(r: RunResult): string[] {
  return r.stdout.split('\n').filter((l) => l !== '');
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, ms: number, detail: () => string): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms\n${detail()}`);
    await sleep(100);
  }
}

for (const kind of UPSTREAM_KINDS) {
  describe(`upstream bridge: kdbus clients on a ${kind}`, function () {
    this.timeout(45_000);
    let tmp = '';
    let upstreamDir = '';
    let upstream: LegacyBus | undefined;
    let bridge: Bridge | undefined;
    let bridgeError = '';
    let procs: Proc[] = [];

    before(async function () {
      this.timeout(60_000);
      const missing = busUnavailable(kind);
      requireOrSkip(this, missing === undefined, missing ?? '');
      for (const cmd of ['busctl', 'gdbus', 'dbus-send', 'setpriv']) requireOrSkip(this, hasCommand(cmd), cmd);
      requireOrSkip(this, pythonHas('dbus, dbus.mainloop.glib, gi'), `${PYTHON} with python3-dbus and python3-gi`);
      requireOrSkip(this, fs.existsSync(shimPath()), `the shim ${path.relative(PROJECT, shimPath())}`);
      const make = spawnSync('make', ['-C', C_DIR, 'glibc'], { encoding: 'utf8' });
      assert.equal(make.status, 0, `make -C test/c glibc failed:\n${make.stdout}${make.stderr}`);

      tmp = fs.mkdtempSync(path.join(os.tmpdir(), `kdbus-bridge-${kind}-`));
      fs.chmodSync(tmp, 0o755);
      upstreamDir = path.join(tmp, 'upstream');
      upstream = await startUpstream(kind, upstreamDir, { denials: DENIALS, serviceDir: path.join(upstreamDir, 'services') });
      try {
        bridge = await startBridge(path.join(tmp, 'bridge'), upstream.address, { logLevel: 'debug' });
      } catch (e) {
        // Every scenario that needs the bridge fails with this; the upstream legs still run.
        bridgeError = e instanceof Error ? e.message : String(e);
      }
    });

    afterEach(async function () {
      await Promise.all(procs.map((p) => p.stop()));
      procs = [];
      if (this.currentTest?.state === 'failed' && bridge) {
        this.currentTest.err!.message += `\n--- kdbus-cuse log (last lines) ---\n${bridge.daemon.tail(40)}`;
      }
    });

    after(async function () {
      await bridge?.daemon.stop();
      await upstream?.stop();
      if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    });

    function live(): Bridge {
      if (!bridge) assert.fail(`the bridge did not start:\n${bridgeError}`);
      assert.ok(bridge.alive(), `the kdbus-cuse daemon died (${bridge.daemon.exited}):\n${bridge.daemon.tail(40)}`);
      return bridge;
    }

    function start(label: string, file: string, args: string[], env: NodeJS.ProcessEnv = process.env): Proc {
      const p = new Proc(label, file, args, env);
      procs.push(p);
      return p;
    }

    /** kdbus-dbus-peer through the shim, run to its end; `as` runs it as uid 65534. */
    function kdbus(args: string[], as: 'root' | 'nobody' = 'root'): Promise<RunResult> {
      const b = live();
      const [file, argv] = as === 'nobody' ? nobody(PEER_BIN, [b.busNode, ...args]) : [PEER_BIN, [b.busNode, ...args]];
      return run(file, argv, { env: b.clientEnv(), timeoutMs: RUN_MS });
    }

    /** A long-running kdbus-dbus-peer (serve, listen), once it printed "ready <unique name>". */
    async function kdbusReady(...args: string[]): Promise<[Proc, string]> {
      const b = live();
      const p = start(`kdbus-dbus-peer ${args.join(' ')}`, PEER_BIN, [b.busNode, ...args], b.clientEnv());
      const m = await p.waitForLine(/^ready (:1\.\d+)$/, 10_000);
      return [p, m[1]!];
    }

    /** A long-running cross-peer.py upstream, once it printed "ready <unique name>". */
    async function pythonReady(...args: string[]): Promise<[Proc, string]> {
      const p = start(`cross-peer.py ${args.join(' ')}`, PYTHON, [PY_PEER, upstream!.address, ...args]);
      const m = await p.waitForLine(/^ready (\S+)$/, 10_000);
      return [p, m[1]!];
    }

    /** `kdbus-cuse status` of the bridge's daemon (its control socket sits beside the transport socket). */
    function status(): Promise<RunResult> {
      const control = path.join(path.dirname(live().socket), 'control.sock');
      return run(process.execPath, [path.join(PROJECT, 'bin', 'kdbus-cuse'), 'status', '--control', control], { timeoutMs: RUN_MS });
    }

    function python(...args: string[]): Promise<RunResult> {
      return run(PYTHON, [PY_PEER, upstream!.address, ...args], { timeoutMs: RUN_MS });
    }

    async function hasOwner(name: string): Promise<boolean> {
      const r = ok(`NameHasOwner(${name})`, await driverCall(upstream!, 'NameHasOwner', [`string:${name}`]));
      return /boolean true/.test(r.stdout);
    }

    /** Waits until the upstream bus says `name` is owned (or not): the bridge acts asynchronously. */
    function ownedUpstream(name: string, owned: boolean, ms: number): Promise<true> {
      return until(`upstream NameHasOwner(${name}) ${owned}`, async () => ((await hasOwner(name)) === owned ? true : undefined), ms,
        () => bridge?.daemon.tail(40) ?? bridgeError);
    }

    function busctlEcho(name: string, text: string): Promise<RunResult> {
      return run('busctl', [`--address=${upstream!.address}`, 'call', name, OBJ, IFACE, 'Echo', 's', text], { timeoutMs: RUN_MS });
    }

    function gdbusEcho(name: string, text: string): Promise<RunResult> {
      return run('gdbus', ['call', '--address', upstream!.address, '--dest', name, '--object-path', OBJ, '--method', `${IFACE}.Echo`, text],
        { timeoutMs: RUN_MS });
    }

    it('a kdbus client pings a python3-dbus service upstream (Peer.Ping) and calls its Echo', async function () {
      const [service, serviceUpstream] = await pythonReady('serve', PY_NAME);
      assert.match(serviceUpstream, UNIQUE);

      // libdbus answers org.freedesktop.DBus.Peer itself, with an empty body.
      const ping = lines(ok('Peer.Ping', await kdbus(['call', PY_NAME, '/', 'org.freedesktop.DBus.Peer', 'Ping'])));
      assert.equal(ping.length, 1, ping.join('\n'));
      const pinged = ping[0]!.match(/^reply sender=(:1\.\d+) arg=<>$/);
      assert.ok(pinged, `not an empty reply from a kdbus id: ${ping[0]}`);

      const echo = lines(ok('Echo', await kdbus(['call', PY_NAME, OBJ, IFACE, 'Echo', 'hi'])));
      // The upstream peer keeps one kdbus id across calls.
      assert.deepEqual(echo, [`reply sender=${pinged[1]} arg=hi?`]);
      const seen = await service.waitForLine(/^call sender=(\S+) member=Echo arg=hi$/);
      assert.match(seen[1]!, UNIQUE, 'the python service sees the kdbus client under an upstream unique name');
    });

    it('busctl and gdbus upstream call a kdbus service by its name', async function () {
      const [service] = await kdbusReady('serve', KDBUS_NAME);
      await ownedUpstream(KDBUS_NAME, true, 5_000);

      const busctl = ok('busctl call Echo', await busctlEcho(KDBUS_NAME, 'hi'));
      assert.equal(busctl.stdout, 's "hi!"\n');
      const caller = await service.waitForLine(/^call sender=(:1\.\d+) member=Echo arg=hi$/);
      assert.ok(caller, 'the kdbus service sees the upstream caller under a kdbus id');

      const gdbus = ok('gdbus call Echo', await gdbusEcho(KDBUS_NAME, 'from gdbus'));
      assert.equal(gdbus.stdout, "('from gdbus!',)\n");
    });

    it("the kdbus service's name is listed upstream while it runs and released at once when it exits", async function () {
      const [service] = await kdbusReady('serve', KDBUS_NAME);
      await ownedUpstream(KDBUS_NAME, true, 5_000);
      const list = ok('ListNames', await driverCall(upstream!, 'ListNames'));
      assert.match(list.stdout, new RegExp(`string "${KDBUS_NAME.replace(/\./g, '\\.')}"`));

      ok('Quit', await kdbus(['call', KDBUS_NAME, OBJ, IFACE, 'Quit']));
      await service.waitFor('its exit', () => service.exited !== undefined, 5_000);
      assert.equal(service.exited, 'exit code 0', service.tail());
      // "At once": the disconnect, not a timeout, releases it; 2 s covers the hops.
      await ownedUpstream(KDBUS_NAME, false, 2_000);
      const after = ok('ListNames', await driverCall(upstream!, 'ListNames'));
      assert.doesNotMatch(after.stdout, new RegExp(`string "${KDBUS_NAME.replace(/\./g, '\\.')}"`));
    });

    it("an upstream service's name is in a kdbus client's LIST, under the id its replies come from", async function () {
      await pythonReady('serve', PY_NAME);
      const echo = lines(ok('Echo', await kdbus(['call', PY_NAME, OBJ, IFACE, 'Echo', 'x'])));
      const id = echo[0]?.match(/^reply sender=(:1\.\d+) arg=x\?$/)?.[1];
      assert.ok(id, `no reply from the python service: ${echo.join('\n')}`);
      const names = lines(ok('names', await kdbus(['names'])));
      assert.ok(names.includes(`${PY_NAME} ${id}`), `LIST lacks "${PY_NAME} ${id}":\n${names.join('\n')}`);
      assert.ok(names.includes(id), `LIST lacks the upstream peer's id ${id}:\n${names.join('\n')}`);
    });

    it("CONN_INFO of an upstream service gives its uid and pid as upstream knows them", async function () {
      // As uid 65534, so the uid cannot be the daemon's (root) by accident.
      const [file, argv] = nobody(PYTHON, [PY_PEER, upstream!.address, 'serve', PY_NAME]);
      const service = start('cross-peer.py serve (as nobody)', file, argv);
      await service.waitForLine(/^ready (\S+)$/, 10_000);
      const info = lines(ok('info', await kdbus(['info', PY_NAME])));
      const names = lines(ok('names', await kdbus(['names'])));
      const owner = names.find((l) => l.startsWith(`${PY_NAME} `))?.split(' ')[1];
      assert.ok(owner, `LIST lacks ${PY_NAME}:\n${names.join('\n')}`);
      assert.deepEqual(info, [`info id=${owner} uid=${NOBODY.uid} pid=${service.pid}`]);
    });

    it('a kdbus signal reaches an upstream match rule, and only the matching signal does', async function () {
      const [listener] = await pythonReady('listen', '1', `type='signal',interface='${IFACE}',member='Ping'`);
      // Pong first: had it got through, it would be the one line printed.
      ok('emit Pong', await kdbus(['emit', OBJ, IFACE, 'Pong', 'pong-from-kdbus']));
      ok('emit Ping', await kdbus(['emit', OBJ, IFACE, 'Ping', 'ping-from-kdbus']));
      await listener.waitFor('its exit after one signal', () => listener.exited !== undefined, 10_000);
      const got = listener.lines().slice(1);
      assert.equal(got.length, 1, listener.tail());
      assert.match(got[0]!, new RegExp(`^signal sender=:\\d+\\.\\d+ path=${OBJ} interface=${IFACE} member=Ping args=ping-from-kdbus$`));
    });

    it('an upstream signal reaches the kdbus listener whose bloom mask takes it, not the other', async function () {
      const [taking] = await kdbusReady('listen', '1', '--bloom', `interface:${IFACE}`);
      const [other] = await kdbusReady('listen', '1', '--bloom', 'interface:org.example.Other');
      // MATCH_ADD returned once upstream had the bridge's subscription: one signal is enough.
      ok('python emit', await python('emit', 'Ping', 'up-once'));
      await taking.waitFor('the upstream signal', () => taking.lines().length > 1, 8_000);
      assert.match(taking.lines()[1]!, new RegExp(`^signal sender=:1\\.\\d+ path=${OBJ} interface=${IFACE} member=Ping arg=up-once$`));
      await sleep(1_000);
      assert.deepEqual(other.lines().slice(1), [], `the listener with interface:org.example.Other got a signal:\n${other.tail()}`);
    });

    it('an upstream policy denial reaches the kdbus client of that uid as AccessDenied; root is let through', async function () {
      await pythonReady('serve', DENIED_NAME);
      const [open] = await pythonReady('serve', PY_NAME);
      // The policy itself, for a direct dbus1 client of uid 65534.
      const direct = await run(...nobody('dbus-send', [`--bus=${upstream!.address}`, '--print-reply', `--dest=${DENIED_NAME}`, OBJ, `${IFACE}.Echo`, 'string:x']),
        { timeoutMs: RUN_MS });
      assert.ok(direct.code !== 0 && /org\.freedesktop\.DBus\.Error\.AccessDenied/.test(direct.stderr), describeRun('dbus-send as 65534', direct));

      // The same uid reaches a destination the policy does not name: what refuses the next
      // call is the upstream policy, judging the kdbus client's own uid.
      const allowedNobody = lines(ok('kdbus call to an undenied name as 65534', await kdbus(['call', PY_NAME, OBJ, IFACE, 'Echo', 'y'], 'nobody')));
      assert.match(allowedNobody[0] ?? '', /^reply sender=:1\.\d+ arg=y\?$/);
      await open.waitForLine(/^call sender=:\d+\.\d+ member=Echo arg=y$/);

      const denied = await kdbus(['call', DENIED_NAME, OBJ, IFACE, 'Echo', 'x'], 'nobody');
      // Either an error reply or SEND failing with EPERM/EACCES, which sd-bus reports as AccessDenied.
      const asReply = denied.code === 0 && /^error sender=\S+ name=org\.freedesktop\.DBus\.Error\.AccessDenied message=/.test(denied.stdout);
      const asErrno = denied.code === 2 && /failed: errno (1|13) /.test(denied.stderr);
      assert.ok(asReply || asErrno, describeRun('kdbus call as 65534', denied));

      const allowed = lines(ok('kdbus call as root', await kdbus(['call', DENIED_NAME, OBJ, IFACE, 'Echo', 'x'])));
      assert.match(allowed[0] ?? '', /^reply sender=:1\.\d+ arg=x\?$/);
    });

    it('a file descriptor travels both ways', async function () {
      const [legacy] = await pythonReady('serve', PY_NAME);
      const [service] = await kdbusReady('serve', KDBUS_NAME);

      const toPython = lines(ok('call-fd', await kdbus(['call-fd', PY_NAME, OBJ, IFACE, 'EchoFd', 'kdbus pipe'])));
      assert.match(toPython[0] ?? '', /^reply sender=:1\.\d+ arg=kdbus pipe$/);
      await legacy.waitForLine(/member=EchoFd arg=kdbus pipe$/);

      await ownedUpstream(KDBUS_NAME, true, 5_000);
      const fromPython = ok('python call-fd', await python('call-fd', KDBUS_NAME, 'python pipe'));
      assert.deepEqual(lines(fromPython), ['reply python pipe']);
      await service.waitForLine(/^call sender=:1\.\d+ member=EchoFd arg=python pipe$/);
    });

    it('bodies of 3 MiB travel both ways, in sealed memfds on the kdbus side, and no memfd stays behind', async function () {
      await pythonReady('serve', PY_NAME);
      const [service] = await kdbusReady('serve', KDBUS_NAME);
      const n = String(3 << 20);

      const toPython = lines(ok('call-big', await kdbus(['call-big', PY_NAME, OBJ, IFACE, n])));
      assert.deepEqual(toPython, [`big n=${n} sent=match received=match (1 in a memfd)`]);

      await ownedUpstream(KDBUS_NAME, true, 5_000);
      const fromPython = ok('python call-big', await python('call-big', KDBUS_NAME, n));
      assert.deepEqual(lines(fromPython), [`big n=${n} sent=match received=match`]);
      await service.waitForLine(new RegExp(`member=Digest arg=<${n} bytes, 1 in a memfd>$`));
      assert.deepEqual(openFiles(live().daemon.child.pid!, MESSAGE_MEMFDS), [], "the daemon still holds a body's memfd");
    });

    it('names are owned once across both sides: EEXIST, queueing and replacement as upstream decides', async function () {
      const [service, serviceUpstream] = await pythonReady('serve', PY_NAME);
      // The python service owns it without allowing replacement: a kdbus client is refused or queued.
      const first = start('hold (no flags)', PEER_BIN, [live().busNode, 'hold', PY_NAME], live().clientEnv());
      await first.waitForLine(/^refused EEXIST$/, 10_000);
      const waiter = start('hold queue', PEER_BIN, [live().busNode, 'hold', PY_NAME, 'queue'], live().clientEnv());
      const queued = (await waiter.waitForLine(/^queued (:1\.\d+)$/, 10_000))[1]!;
      const queue = ok('ListQueuedOwners', await driverCall(upstream!, 'ListQueuedOwners', [`string:${PY_NAME}`]));
      assert.equal([...queue.stdout.matchAll(/string ":/g)].length, 2, `upstream does not queue the kdbus client:\n${queue.stdout}`);

      // The owner leaves upstream: the queued kdbus client owns the name on both sides.
      ok('Quit', await run('busctl', [`--address=${upstream!.address}`, 'call', PY_NAME, OBJ, IFACE, 'Quit'], { timeoutMs: RUN_MS }));
      await service.waitFor('its exit', () => service.exited !== undefined, 5_000);
      const owner = await until(`a new owner of ${PY_NAME} upstream`, async () => {
        const r = await driverCall(upstream!, 'GetNameOwner', [`string:${PY_NAME}`]);
        const m = r.stdout.match(/string "(:\S+)"/);
        return m && m[1] !== serviceUpstream ? m[1] : undefined;
      }, 5_000, () => live().daemon.tail(40));
      assert.notEqual(owner, serviceUpstream);
      await until(`${PY_NAME} owned by ${queued} in LIST`, async () => {
        const l = lines(ok('names', await kdbus(['names'])));
        return l.includes(`${PY_NAME} ${queued}`) ? true : undefined;
      }, 5_000, () => live().daemon.tail(40));

      // Replacement: a kdbus owner that allows it loses the name to an upstream REPLACE_EXISTING.
      const holder = start('hold allow-replacement', PEER_BIN, [live().busNode, 'hold', KDBUS_NAME, 'allow-replacement'], live().clientEnv());
      const holderId = (await holder.waitForLine(/^owner (:1\.\d+)$/, 10_000))[1]!;
      await ownedUpstream(KDBUS_NAME, true, 5_000);
      const taker = start('RequestName REPLACE_EXISTING', PYTHON, ['-c', REQUEST_NAME_SCRIPT, upstream!.address, KDBUS_NAME, '2']);
      await taker.waitForLine(/^1$/, 10_000);
      await until(`${KDBUS_NAME} taken from ${holderId} in LIST`, async () => {
        const l = lines(ok('names', await kdbus(['names'])));
        const entry = l.find((x) => x.startsWith(`${KDBUS_NAME} `));
        return entry !== undefined && entry !== `${KDBUS_NAME} ${holderId}` ? true : undefined;
      }, 5_000, () => live().daemon.tail(40));
    });

    // dbus-broker activates through systemd alone, and no systemd runs here.
    if (kind === 'dbus-daemon') it('a call to a name only activatable upstream starts its service there, and the reply comes back', async function () {
      const name = 'org.example.Activated';
      const dir = path.join(upstreamDir, 'services');
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, `${name}.service`), `[D-BUS Service]\nName=${name}\nExec=${PYTHON} ${PY_PEER} ${upstream!.address} serve ${name}\n`);
      ok('ReloadConfig', await driverCall(upstream!, 'ReloadConfig'));
      assert.equal(await hasOwner(name), false, `${name} runs already`);
      const echo = lines(ok('Echo', await kdbus(['call', name, OBJ, IFACE, 'Echo', 'wake'])));
      assert.match(echo[0] ?? '', /^reply sender=:1\.\d+ arg=wake\?$/);
      assert.equal(await hasOwner(name), true);
      ok('Quit', await kdbus(['call', name, OBJ, IFACE, 'Quit']));
      await ownedUpstream(name, false, 5_000);
    });

    it('a call to a name nobody owns upstream fails as ServiceUnknown, at once', async function () {
      const r = await kdbus(['call', 'org.example.Nobody', OBJ, IFACE, 'Echo', 'x']);
      assert.ok(!r.timedOut && r.ms < 10_000, describeRun(`the call (${r.ms} ms)`, r));
      const asReply = r.code === 0 && /^error sender=\S+ name=org\.freedesktop\.DBus\.Error\.ServiceUnknown message=/.test(r.stdout);
      // ESRCH: sd-bus turns it into ServiceUnknown itself (§2.1).
      const asErrno = r.code === 2 && /SEND to org\.example\.Nobody failed: errno 3 /.test(r.stderr);
      assert.ok(asReply || asErrno, describeRun('kdbus call to org.example.Nobody', r));
    });

    it('the upstream bus killed and restarted: upstream peers vanish, the daemon lives, names come back', async function () {
      this.timeout(60_000);
      const b = live();
      await pythonReady('serve', PY_NAME);
      await kdbusReady('serve', KDBUS_NAME);
      await ownedUpstream(KDBUS_NAME, true, 5_000);
      ok('Echo before', await kdbus(['call', PY_NAME, OBJ, IFACE, 'Echo', 'before']));

      const bus = upstream!;
      process.kill(-bus.proc.pid, 'SIGKILL');
      await bus.stop();
      upstream = undefined;

      // While upstream is down: the python service is gone from kdbus, the kdbus one is not.
      const names = await until(`LIST without ${PY_NAME} while upstream is down`, async () => {
        const l = lines(ok('names', await kdbus(['names'])));
        return l.some((x) => x.startsWith(`${PY_NAME} `)) ? undefined : l;
      }, 5_000, () => b.daemon.tail(40));
      assert.ok(names.some((x) => /^org\.example\.KPeer :1\.\d+$/.test(x)), `LIST lost the kdbus service's name:\n${names.join('\n')}`);
      assert.ok(b.alive(), `the daemon died with its upstream:\n${b.daemon.tail(40)}`);
      assert.match(ok('status', await status()).stdout, /^upstream of \S+: unix:path=\S+, (down|connecting) \(0 upstream peers, 0 kdbus clients upstream\)$/m);

      upstream = await startUpstream(kind, upstreamDir, { denials: DENIALS, serviceDir: path.join(upstreamDir, 'services') });
      await ownedUpstream(KDBUS_NAME, true, 10_000);
      assert.match(ok('status', await status()).stdout, /^upstream of \S+: unix:path=\S+, up as :\d+\.\d+ \(\d+ upstream peers?, [1-9]\d* kdbus clients? upstream\)$/m);
      assert.equal(ok('busctl after restart', await busctlEcho(KDBUS_NAME, 'again')).stdout, 's "again!"\n');
      assert.equal(ok('gdbus after restart', await gdbusEcho(KDBUS_NAME, 'again')).stdout, "('again!',)\n");

      // A service that joins the new upstream bus is reachable from kdbus again.
      await pythonReady('serve', 'org.example.PyPeer2');
      const echo = lines(ok('Echo after restart', await kdbus(['call', 'org.example.PyPeer2', OBJ, IFACE, 'Echo', 'after'])));
      assert.match(echo[0] ?? '', /^reply sender=:1\.\d+ arg=after\?$/);
    });

    it('the daemon survived every scenario and stops on SIGTERM', async function () {
      const b = live();
      await b.daemon.stop(10_000);
      assert.equal(b.daemon.exited, 'exit code 0', b.daemon.tail(40));
    });
  });
}
