/**
 * Cross tests of the legacy D-Bus endpoint (issue 5): dbus1 clients (gdbus, dbus-send,
 * python3-dbus) and a real kdbus client share one bus. The kdbus side is test/c's
 * kdbus-dbus-peer, which speaks D-Bus over kdbus the way sd-bus did (GVariant messages, bloom
 * filters, matches, NAME_ACQUIRE, LIST) and reaches the daemon through the preload shim; the
 * python side is test/legacy/cross-peer.py. Both answer org.example.Peer: the kdbus peer
 * echoes s + "!", the python peer s + "?", so a reply shows who produced it.
 *
 * Everything runs once per libc build of the kdbus peer (and its shim), against one daemon on
 * the socket transport with a legacy listening socket.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DaemonProcess as Daemon } from '../helpers/daemon-process';
import { openFiles, MESSAGE_MEMFDS } from '../helpers/open-files';
import { requireOrSkip } from '../helpers/require';

const PROJECT = path.resolve(__dirname, '../../..');
const C_DIR = path.join(PROJECT, 'test/c');
const PY_PEER = path.join(PROJECT, 'test/legacy/cross-peer.py');
/** python3-dbus is Debian's package for the system interpreter, not for any python3 on PATH. */
const PYTHON = '/usr/bin/python3';
const LIBCS = ['glibc', 'musl'] as const;
const IFACE = 'org.example.Peer';
const OBJ = '/org/example/Peer';
const WAIT_MS = 10_000;
/** The programs' own watchdogs fire after 30 s; this is the backstop. */
const KILL_MS = 40_000;

function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function hasPythonDbus(): boolean {
  return spawnSync(PYTHON, ['-c', 'import dbus, dbus.mainloop.glib; from gi.repository import GLib'], { stdio: 'ignore' }).status === 0;
}

/** A child process whose output is kept line by line. */
class Proc {
  out = '';
  err = '';
  exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private readonly child: ChildProcess;
  private readonly done: Promise<void>;
  private readonly timer: NodeJS.Timeout;

  constructor(readonly label: string, file: string, args: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (d: Buffer) => (this.out += d.toString()));
    this.child.stderr!.on('data', (d: Buffer) => (this.err += d.toString()));
    this.timer = setTimeout(() => this.child.kill('SIGKILL'), KILL_MS);
    this.done = new Promise((resolve) => {
      this.child.on('error', (e) => {
        this.err += `spawn failed: ${e.message}\n`;
        this.exited = { code: null, signal: null };
        resolve();
      });
      this.child.on('close', (code, signal) => {
        clearTimeout(this.timer);
        this.exited = { code, signal };
        resolve();
      });
    });
  }

  get lines(): string[] {
    return this.out.split('\n').filter((l) => l !== '');
  }

  describe(): string {
    const how = !this.exited ? 'running' : this.exited.signal ? `killed by ${this.exited.signal}` : `exit code ${this.exited.code}`;
    return `${this.label} (${how})\n--- stdout ---\n${this.out}--- stderr ---\n${this.err}`;
  }

  /** The first output line matching re, once it is there. */
  async line(re: RegExp, ms = WAIT_MS): Promise<string> {
    const until = Date.now() + ms;
    for (;;) {
      const found = this.lines.find((l) => re.test(l));
      if (found !== undefined) return found;
      if (this.exited) assert.fail(`${this.label} ended without a line matching ${re}:\n${this.describe()}`);
      if (Date.now() > until) assert.fail(`${this.label} printed no line matching ${re} in ${ms} ms:\n${this.describe()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** The output lines matching re once there are n of them, or those there are after ms. */
  async count(re: RegExp, n: number, ms: number): Promise<string[]> {
    const until = Date.now() + ms;
    for (;;) {
      const found = this.lines.filter((l) => re.test(l));
      if (found.length >= n || this.exited || Date.now() > until) return found;
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Waits for the exit; it must be code 0 unless `ok` says otherwise. */
  async end(ok: (code: number | null) => boolean = (c) => c === 0): Promise<this> {
    await this.done;
    if (!ok(this.exited!.code)) assert.fail(`${this.label} failed: ${this.describe()}`);
    return this;
  }

  stop(): Promise<void> {
    if (!this.exited) this.child.kill('SIGTERM');
    return this.done;
  }
}


describe('legacy endpoint: dbus1 clients and a kdbus client on one bus', function () {
  this.timeout(60_000);
  const busName = `${process.getuid!()}-legacycross`;
  const haveMusl = hasCommand('musl-gcc');
  let tmp = '';
  let root = '';
  let socket = '';
  let address = '';
  let daemon: Daemon | undefined;
  let procs: Proc[] = [];

  before(async function () {
    for (const target of haveMusl ? ['glibc', 'musl'] : ['glibc']) {
      const r = spawnSync('make', ['-C', C_DIR, target], { encoding: 'utf8' });
      assert.equal(r.status, 0, `make -C test/c ${target} failed:\n${r.stdout}${r.stderr}`);
    }
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kdbus-legacycross-'));
    root = path.join(tmp, 'kdbus');
    socket = path.join(tmp, 'kdbus.sock');
    const legacySocket = path.join(tmp, 'bus');
    address = `unix:path=${legacySocket}`;
    const d = new Daemon(['--transport', 'socket', '--bus', busName, '--socket', socket, '--kdbus-root', root, '--listen', address]);
    daemon = d;
    const until = Date.now() + 15_000;
    while (!(fs.existsSync(socket) && fs.existsSync(legacySocket) && fs.existsSync(path.join(root, busName, 'bus')))) {
      if (d.exited) throw new Error(`the daemon exited (${d.exited}) before it was ready:\n${d.log}`);
      if (Date.now() > until) throw new Error(`the daemon was not ready after 15 s:\n${d.log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  afterEach(async function () {
    await Promise.all(procs.map((p) => p.stop()));
    procs = [];
    if (this.currentTest?.state === 'failed' && daemon) {
      this.currentTest.err!.message += `\n--- daemon log ---\n${daemon.tail()}`;
    }
  });

  after(async function () {
    if (daemon && !daemon.exited) await daemon.stop(5_000);
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  function legacyTools(ctx: Mocha.Context): void {
    requireOrSkip(ctx, hasCommand('gdbus'), 'gdbus (libglib2.0-bin)');
    requireOrSkip(ctx, hasCommand('dbus-send'), 'dbus-send (dbus-bin)');
    requireOrSkip(ctx, hasPythonDbus(), `python3-dbus and python3-gi for ${PYTHON}`);
  }

  function start(label: string, file: string, args: string[], env: NodeJS.ProcessEnv = process.env): Proc {
    const p = new Proc(label, file, args, env);
    procs.push(p);
    return p;
  }

  /** python3-dbus: cross-peer.py on the legacy socket. */
  function python(...args: string[]): Proc {
    return start(`cross-peer.py ${args.join(' ')}`, PYTHON, [PY_PEER, address, ...args]);
  }

  function gdbusCall(dest: string, member: string, ...args: string[]): Proc {
    return start(`gdbus call ${member}`, 'gdbus', ['call', '--address', address, '--dest', dest, '--object-path', OBJ, '--method', `${IFACE}.${member}`, ...args]);
  }

  function dbusSend(...args: string[]): Proc {
    return start(`dbus-send ${args.join(' ')}`, 'dbus-send', [`--bus=${address}`, ...args]);
  }

  for (const libc of LIBCS) {
    describe(libc, function () {
      const shim = path.join(PROJECT, 'shim/build', libc, 'libkdbus-cuse-shim.so');
      const peerBin = path.join(C_DIR, 'build', libc, 'kdbus-dbus-peer');
      // Names per libc, so a process left over from one build cannot answer for the other.
      const kdbusName = `org.example.${libc}.KdbusPeer`;
      const legacyName = `org.example.${libc}.LegacyPeer`;

      beforeEach(function () {
        if (libc === 'musl') requireOrSkip(this, haveMusl, 'musl-gcc');
        requireOrSkip(this, fs.existsSync(shim), `the shim ${path.relative(PROJECT, shim)}`);
        legacyTools(this);
        assert.equal(daemon!.exited, undefined, `the daemon died:\n${daemon!.tail()}`);
      });

      /** kdbus-dbus-peer through the shim. */
      function kdbus(...args: string[]): Proc {
        const env = { ...process.env, LD_PRELOAD: shim, KDBUS_CUSE_ROOT: root, KDBUS_CUSE_SOCKET: socket };
        return start(`kdbus-dbus-peer (${libc}) ${args.join(' ')}`, peerBin, [path.join(root, busName, 'bus'), ...args], env);
      }

      async function ready(p: Proc): Promise<string> {
        return (await p.line(/^ready :1\.\d+$/)).slice('ready '.length);
      }

      it('the peer encodes the reference worked example byte for byte (selftest)', async function () {
        const p = await start(`kdbus-dbus-peer (${libc}) selftest`, peerBin, ['selftest']).end();
        assert.deepEqual(p.lines, ['selftest ok']);
      });

      it('a legacy client calls the kdbus service and gets its reply or error', async function () {
        const service = kdbus('serve', kdbusName);
        const serviceId = await ready(service);

        const echo = await gdbusCall(kdbusName, 'Echo', 'hello').end();
        assert.equal(echo.out, "('hello!',)\n");
        await service.line(/member=Echo arg=hello$/);

        const byUnique = await dbusSend('--print-reply=literal', `--dest=${serviceId}`, OBJ, `${IFACE}.Echo`, 'string:by unique name').end();
        assert.equal(byUnique.out.trim(), 'by unique name!');

        const fail = await gdbusCall(kdbusName, 'Fail', 'it broke').end((c) => c !== 0);
        assert.match(fail.err, /GDBus\.Error:org\.example\.Peer\.Error\.Failed: it broke/);

        const unknown = await dbusSend('--print-reply', `--dest=${kdbusName}`, OBJ, `${IFACE}.Nope`).end((c) => c !== 0);
        assert.match(unknown.err, /org\.freedesktop\.DBus\.Error\.UnknownMethod: No method org\.example\.Peer\.Nope/);

        await dbusSend('--print-reply', `--dest=${kdbusName}`, OBJ, `${IFACE}.Quit`).end();
        await service.end();
      });

      it('the kdbus client calls a python3-dbus service and gets its reply or error', async function () {
        const service = python('serve', legacyName);
        const serviceId = await ready(service);

        const echo = await kdbus('call', legacyName, OBJ, IFACE, 'Echo', 'hi').end();
        assert.deepEqual(echo.lines, [`reply sender=${serviceId} arg=hi?`]);
        const caller = (await service.line(/member=Echo arg=hi$/)).match(/sender=(\S+)/)![1];
        assert.match(caller!, /^:1\.\d+$/);

        // Addressed by id (dst_id) instead of DST_NAME.
        const byId = await kdbus('call', serviceId, OBJ, IFACE, 'Echo', 'by id').end();
        assert.deepEqual(byId.lines, [`reply sender=${serviceId} arg=by id?`]);

        const fail = await kdbus('call', legacyName, OBJ, IFACE, 'Fail', 'boom').end();
        assert.deepEqual(fail.lines, [`error sender=${serviceId} name=org.example.Peer.Error.Failed message=boom`]);

        // sd-bus maps this errno to ServiceUnknown (§2.1).
        const nobody = await kdbus('call', `org.example.${libc}.Nobody`, OBJ, IFACE, 'Echo', 'x').end((c) => c === 2);
        assert.match(nobody.err, /SEND to org\.example\.\w+\.Nobody failed: errno 3 /);

        await kdbus('call', legacyName, OBJ, IFACE, 'Quit').end();
        await service.end();
      });

      it('a kdbus signal reaches a legacy match rule, and only the matching signal does', async function () {
        const listener = python('listen', '1', `type='signal',interface='${IFACE}',member='Ping'`);
        await ready(listener);
        // Pong is emitted first: if it got through, it would be the one line printed.
        await kdbus('emit', OBJ, IFACE, 'Pong', `pong-${libc}`).end();
        const emitter = (await kdbus('emit', OBJ, IFACE, 'Ping', `ping-${libc}`).end()).lines[0]!.slice('sent '.length);
        await listener.end();
        assert.deepEqual(listener.lines.slice(1), [`signal sender=${emitter} path=${OBJ} interface=${IFACE} member=Ping args=ping-${libc}`]);
      });

      it('a legacy signal reaches kdbus matches: all broadcasts, a bloom mask, a sender name, a sender id', async function () {
        const service = python('serve', legacyName);
        const serviceId = await ready(service);
        const all = kdbus('listen', '1');
        const bloom = kdbus('listen', '1', '--bloom', `interface:${IFACE}`, '--bloom', 'member:Ping');
        const byName = kdbus('listen', '1', '--sender', legacyName);
        const byId = kdbus('listen', '1', '--sender', serviceId);
        for (const l of [all, bloom, byName, byId]) await ready(l);

        // From connections that own no name: all sees the first; the bloom mask must refuse
        // Pong (the filter the endpoint computed for it lacks member:Ping); the sender matches
        // refuse both.
        const pong = (await python('emit', 'Pong', `pong-${libc}`).end()).lines[0]!.slice('sent '.length);
        await all.end();
        assert.deepEqual(all.lines.slice(1), [`signal sender=${pong} path=${OBJ} interface=${IFACE} member=Pong arg=pong-${libc}`]);
        const ping = (await python('emit', 'Ping', `ping-${libc}`).end()).lines[0]!.slice('sent '.length);
        await bloom.end();
        assert.deepEqual(bloom.lines.slice(1), [`signal sender=${ping} path=${OBJ} interface=${IFACE} member=Ping arg=ping-${libc}`]);

        // From the python service, which owns legacyName.
        await dbusSend('--print-reply', `--dest=${legacyName}`, OBJ, `${IFACE}.EmitPing`, `string:from-python-${libc}`).end();
        const expected = `signal sender=${serviceId} path=${OBJ} interface=${IFACE} member=Ping arg=from-python-${libc}`;
        await byName.end();
        await byId.end();
        assert.deepEqual(byName.lines.slice(1), [expected]);
        assert.deepEqual(byId.lines.slice(1), [expected]);
      });

      it('a legacy signal without NO_REPLY_EXPECTED reaches the kdbus client with the header flag sd-bus requires', async function () {
        // The peer refuses (and exits 1 on) a message whose header flag disagrees with the
        // kdbus flags, as sd-bus drops it (§2.4).
        const listener = kdbus('listen', '1', '--bloom', 'member:Flagless');
        await ready(listener);
        const sender = (await python('emit', 'Flagless', `flagless-${libc}`, '--without-no-reply-flag').end()).lines[0]!.slice('sent '.length);
        await listener.end();
        assert.deepEqual(listener.lines.slice(1), [`signal sender=${sender} path=${OBJ} interface=${IFACE} member=Flagless arg=flagless-${libc}`]);
      });

      it('signals of clients that exit right after sending them (dbus-send --type=signal) all arrive', async function () {
        // dbus-send leaves the bus's Hello reply and NameAcquired unread and exits: the
        // endpoint's socket then polls as an error, with the signal still queued in it.
        const n = 10;
        const listener = kdbus('listen', String(n), '--bloom', 'member:Burst');
        await ready(listener);
        for (let i = 0; i < n; i++) await dbusSend('--type=signal', OBJ, `${IFACE}.Burst`, `string:burst-${i}`).end();
        const got = await listener.count(/ member=Burst arg=burst-\d+$/, n, 3_000);
        assert.deepEqual(got.map((l) => l.replace(/.* arg=/, '')), Array.from({ length: n }, (_, i) => `burst-${i}`),
          `${got.length} of ${n} signals arrived:\n${listener.describe()}`);
      });

      it('names are visible both ways: LIST, ListNames, GetNameOwner, NameOwnerChanged', async function () {
        const watcher = python('listen', '2', `type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='${kdbusName}'`);
        await ready(watcher);
        const legacy = python('serve', legacyName);
        const legacyId = await ready(legacy);
        const service = kdbus('serve', kdbusName);
        const kdbusId = await ready(service);

        const names = (await kdbus('names').end()).lines;
        assert.ok(names.includes(`${legacyName} ${legacyId}`), `LIST lacks "${legacyName} ${legacyId}":\n${names.join('\n')}`);
        assert.ok(names.includes(legacyId), `LIST lacks the python service's id ${legacyId}:\n${names.join('\n')}`);
        assert.ok(names.includes(`${kdbusName} ${kdbusId}`), `LIST lacks "${kdbusName} ${kdbusId}":\n${names.join('\n')}`);

        const list = await dbusSend('--print-reply', '--dest=org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus.ListNames').end();
        assert.match(list.out, new RegExp(`string "${kdbusName.replace(/\./g, '\\.')}"`));
        assert.match(list.out, new RegExp(`string "${kdbusId.replace(/\./g, '\\.')}"`));
        const owner = await dbusSend('--print-reply=literal', '--dest=org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus.GetNameOwner', `string:${kdbusName}`).end();
        assert.equal(owner.out.trim(), kdbusId);

        await kdbus('call', kdbusName, OBJ, IFACE, 'Quit').end();
        await service.end();
        await watcher.end();
        const noc = `signal sender=org.freedesktop.DBus path=/org/freedesktop/DBus interface=org.freedesktop.DBus member=NameOwnerChanged`;
        assert.deepEqual(watcher.lines.slice(1), [`${noc} args=${kdbusName}||${kdbusId}`, `${noc} args=${kdbusName}|${kdbusId}|`]);

        const gone = await dbusSend('--print-reply', '--dest=org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus.GetNameOwner', `string:${kdbusName}`).end((c) => c !== 0);
        assert.match(gone.err, /org\.freedesktop\.DBus\.Error\.NameHasNoOwner/);
        await kdbus('call', legacyName, OBJ, IFACE, 'Quit').end();
        await legacy.end();
      });

      it('bodies of 3 MiB travel both ways, in sealed memfds as sd-bus sent them, and no memfd stays behind', async function () {
        const legacy = python('serve', legacyName);
        await ready(legacy);
        const service = kdbus('serve', kdbusName);
        await ready(service);
        const n = String(3 << 20);

        // kdbus -> dbus1: Digest's body in a memfd from the kdbus peer, Bytes' reply from
        // python3-dbus in one from the daemon, which the kdbus peer maps.
        const toPython = await kdbus('call-big', legacyName, OBJ, IFACE, n).end();
        assert.deepEqual(toPython.lines, [`big n=${n} sent=match received=match (1 in a memfd)`]);
        await legacy.line(new RegExp(`^call sender=:1\\.\\d+ member=Digest arg=<${n} bytes>$`));
        // dbus1 -> kdbus: the same the other way round.
        const fromPython = await python('call-big', kdbusName, n).end();
        assert.deepEqual(fromPython.lines, [`big n=${n} sent=match received=match`]);
        await service.line(new RegExp(`member=Digest arg=<${n} bytes, 1 in a memfd>$`));
        await service.line(new RegExp(`member=Bytes arg=${n}$`));
        assert.deepEqual(openFiles(daemon!.child.pid!, MESSAGE_MEMFDS), [], 'the daemon still holds a body\'s memfd');

        await kdbus('call', kdbusName, OBJ, IFACE, 'Quit').end();
        await kdbus('call', legacyName, OBJ, IFACE, 'Quit').end();
        await Promise.all([service.end(), legacy.end()]);
      });

      it('a file descriptor travels both ways', async function () {
        const legacy = python('serve', legacyName);
        const legacyId = await ready(legacy);
        const service = kdbus('serve', kdbusName);
        await ready(service);

        // kdbus -> dbus1: the pipe's read end in KDBUS_ITEM_FDS, UNIX_FDS 1, body (h) 0.
        const toPython = await kdbus('call-fd', legacyName, OBJ, IFACE, 'EchoFd', `kdbus pipe ${libc}`).end();
        assert.deepEqual(toPython.lines, [`reply sender=${legacyId} arg=kdbus pipe ${libc}`]);
        await legacy.line(new RegExp(`member=EchoFd arg=kdbus pipe ${libc}$`));

        // dbus1 -> kdbus: python passes dbus.types.UnixFd; the kdbus peer reads it.
        const fromPython = await python('call-fd', kdbusName, `python pipe ${libc}`).end();
        assert.deepEqual(fromPython.lines, [`reply python pipe ${libc}`]);
        const seen = await service.line(/member=EchoFd/);
        assert.match(seen, new RegExp(`^call sender=:1\\.\\d+ member=EchoFd arg=python pipe ${libc}$`));

        await kdbus('call', kdbusName, OBJ, IFACE, 'Quit').end();
        await kdbus('call', legacyName, OBJ, IFACE, 'Quit').end();
        await Promise.all([service.end(), legacy.end()]);
      });
    });
  }

  // A suite's own tests run before its child suites, so the shutdown gets a suite of its own.
  describe('shutdown', function () {
    it('the daemon survived every scenario, logged no error, and stops on SIGTERM', async function () {
      const d = daemon!;
      assert.equal(d.exited, undefined, `the daemon died during the scenarios:\n${d.tail()}`);
      const errors = d.log.split('\n').filter((l) => /^\S+ \S+ error\b/.test(l));
      assert.deepEqual(errors, [], `the daemon logged errors:\n${d.tail()}`);
      const how = await d.stop(10_000);
      assert.equal(how, 'code 0', `daemon: ${how}\n${d.tail()}`);
    });
  });
});
