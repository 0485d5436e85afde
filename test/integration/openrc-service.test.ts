/**
 * openrc/kdbus-cuse run by OpenRC's own openrc-run, without installing OpenRC or touching
 * the machine's init. Installing Debian's openrc package would remove nothing, but its
 * postinst registers every existing init script with rc-update and writes /etc/runlevels:
 * that is a change to the machine's init configuration. Instead, Debian's packages
 * (openrc, librc1, libeinfo1, and insserv, which openrc depends on for the LSB headers)
 * are unpacked with dpkg-deb into a temporary directory and overlaid, read-only, on /usr
 * and /etc inside a private mount namespace with its own /run: openrc-run finds its
 * compiled-in paths (/sbin/openrc-run, /lib/rc, /etc/init.d, /run/openrc) there. Only the
 * mount namespace is private: the daemon is an ordinary process of the machine, started
 * by dpkg's start-stop-daemon as on Debian, Devuan or any OpenRC system using dpkg's.
 *
 * /etc/init.d holds only kdbus-cuse and two stand-ins: localmount (what the script needs)
 * and a kdbus client that needs "kdbus" and checks at its start that the sockets and
 * nodes exist, which tests both the provide and the readiness wait. The conf.d file is the
 * shipped one with the test's settings appended, as an administrator would edit it.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { requireOrSkip } from '../helpers/require';

const PROJECT = path.resolve(__dirname, '../../..');
const PACKAGES = ['openrc', 'librc1', 'libeinfo1', 'insserv'];
const CACHE = path.join(os.tmpdir(), 'kdbus-cuse-openrc-cache');
/** openrc-run computes the dependency cache on first use; a slow CI machine gets room. */
const RC_MS = 60_000;

interface Rc {
  code: number | null;
  out: string;
}

function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** Debian's packages, downloaded once into $TMPDIR (apt-get download needs no root and changes nothing). */
function openrcDebs(): string[] | string {
  fs.mkdirSync(CACHE, { recursive: true });
  const find = (): Map<string, string> => {
    const m = new Map<string, string>();
    for (const f of fs.readdirSync(CACHE)) {
      const pkg = f.split('_')[0]!;
      if (f.endsWith('.deb') && PACKAGES.includes(pkg)) m.set(pkg, path.join(CACHE, f));
    }
    return m;
  };
  let found = find();
  if (found.size < PACKAGES.length) {
    const r = spawnSync('apt-get', ['download', ...PACKAGES.filter((p) => !found.has(p))], { cwd: CACHE, encoding: 'utf8' });
    if (r.status !== 0) return `apt-get download ${PACKAGES.join(' ')} failed (run apt-get update?): ${r.stderr}`;
    found = find();
  }
  return PACKAGES.map((p) => found.get(p)!);
}

const SETUP = `set -e
T=$1; X=$T/pkg
mount -t tmpfs -o mode=0755 tmpfs /run
for d in lib sbin bin; do mount -t overlay overlay -o lowerdir=$X/$d:/usr/$d /usr/$d; done
mount -t overlay overlay -o lowerdir=$T/etc:$X/etc:/etc /etc
mount --bind $T/etc/init.d /etc/init.d
# What OpenRC's boot makes in /run/openrc; "default" as the running runlevel.
mkdir -p /run/openrc && cd /run/openrc
mkdir daemons exclusive failed hotplugged inactive options scheduled started starting stopping tmp wasinactive
echo default > softlevel
echo ready
exec sleep 1000000
`;

describe('OpenRC service script (openrc-run from Debian\'s package, private mount namespace)', function () {
  this.timeout(180_000);
  let root: string;
  let ns: ChildProcess | undefined;
  let nsRoot: string;
  let configFile: string;
  let log: string;

  const writeConfig = (c: object): void => fs.writeFileSync(configFile, JSON.stringify(c));
  const config = (buses: string[]) => ({ transport: 'socket', kdbusRoot: path.join(root, 'kdbus'), buses });

  /** Runs an init script inside the namespace, as an administrator would. */
  function rc(service: string, ...args: string[]): Rc {
    const r = spawnSync('nsenter', ['-t', String(ns!.pid), '-m', '--', `/etc/init.d/${service}`, ...args], {
      encoding: 'utf8',
      timeout: RC_MS,
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', TERM: 'dumb' },
    });
    return { code: r.status, out: `${r.stdout}${r.stderr}` };
  }

  /** A path inside the namespace (its private /run), through the holder's root. */
  const inNs = (p: string): string => path.join(nsRoot, p);

  const daemonPid = (): number | undefined => {
    try {
      return Number(fs.readFileSync(inNs('/run/kdbus-cuse.pid'), 'utf8').trim()) || undefined;
    } catch {
      return undefined;
    }
  };

  const readLog = (): string => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '');

  const alive = (pid: number): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };

  async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
    const end = Date.now() + ms;
    while (!ok()) {
      if (Date.now() > end) throw new Error(`${what} within ${ms} ms; daemon log:\n${readLog()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  before(async function () {
    requireOrSkip(this, process.getuid?.() === 0, 'root (mount namespaces and overlay mounts)');
    for (const cmd of ['unshare', 'nsenter', 'dpkg-deb', 'apt-get', 'start-stop-daemon']) requireOrSkip(this, hasCommand(cmd), cmd);
    const debs = openrcDebs();
    requireOrSkip(this, typeof debs !== 'string', typeof debs === 'string' ? debs : '');

    root = fs.mkdtempSync(path.join(os.tmpdir(), 'openrc-'));
    for (const deb of debs as string[]) {
      const r = spawnSync('dpkg-deb', ['-x', deb, path.join(root, 'pkg')], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
    }
    // Merged /usr: the packages' /lib, /sbin and /bin are the host's /usr/lib, /usr/sbin, /usr/bin.
    for (const d of ['lib', 'sbin', 'bin']) fs.mkdirSync(path.join(root, 'pkg', d), { recursive: true });
    const etc = path.join(root, 'etc');
    fs.mkdirSync(path.join(etc, 'init.d'), { recursive: true });
    fs.mkdirSync(path.join(etc, 'conf.d'));
    fs.copyFileSync(path.join(PROJECT, 'openrc/kdbus-cuse'), path.join(etc, 'init.d/kdbus-cuse'));
    fs.chmodSync(path.join(etc, 'init.d/kdbus-cuse'), 0o755);
    fs.writeFileSync(
      path.join(etc, 'init.d/localmount'),
      '#!/sbin/openrc-run\ndescription="stand-in for the local file systems"\nstart() { ebegin "Mounting local file systems (stand-in)"; eend 0; }\n',
      { mode: 0o755 },
    );
    const kdbus = path.join(root, 'kdbus');
    fs.writeFileSync(
      path.join(etc, 'init.d/kdbus-client'),
      `#!/sbin/openrc-run
description="stand-in for a service that uses kdbus"
depend() { need kdbus; }
start() {
	ebegin "kdbus client: the daemon's sockets and nodes"
	[ -S /run/kdbus-cuse/kdbus.sock ] && [ -S /run/kdbus-cuse/bus_socket ] && [ -e ${kdbus}/control ] && [ -e ${kdbus}/0-system/bus ]
	eend $? "kdbus is not ready"
}
stop() { ebegin "kdbus client stopping"; eend 0; }
`,
      { mode: 0o755 },
    );
    // The daemon as installed: a program that runs bin/kdbus-cuse with this Node.
    const bin = path.join(root, 'kdbus-cuse');
    fs.writeFileSync(bin, `#!/bin/sh\nexec ${process.execPath} ${path.join(PROJECT, 'bin/kdbus-cuse')} "$@"\n`, { mode: 0o755 });
    configFile = path.join(root, 'kdbus-cuse.json');
    log = path.join(root, 'daemon.log');
    writeConfig(config(['0-system']));
    fs.writeFileSync(
      path.join(etc, 'conf.d/kdbus-cuse'),
      `${fs.readFileSync(path.join(PROJECT, 'openrc/kdbus-cuse.confd'), 'utf8')}\n# test settings\nKDBUS_CUSE_BIN="${bin}"\nKDBUS_CUSE_OPTS="--config ${configFile}"\nKDBUS_CUSE_LOG="${log}"\nKDBUS_CUSE_READY_TIMEOUT=60\n`,
    );

    const holder = spawn('unshare', ['-m', '--propagation', 'private', 'sh', '-c', SETUP, 'sh', root], { stdio: ['ignore', 'pipe', 'pipe'] });
    ns = holder;
    let out = '';
    await new Promise<void>((resolve, reject) => {
      holder.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('ready')) resolve();
      });
      holder.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      holder.on('exit', (code) => reject(new Error(`the namespace setup exited (${code}):\n${out}`)));
    });
    nsRoot = `/proc/${holder.pid}/root`;
  });

  after(() => {
    const pid = ns ? daemonPid() : undefined;
    if (pid && alive(pid)) process.kill(pid, 'SIGKILL');
    ns?.kill('SIGKILL');
    if (root) fs.rmSync(root, { recursive: true, force: true });
  });

  it('checkconfig passes a valid configuration and names file and key of a broken one', () => {
    const ok = rc('kdbus-cuse', 'checkconfig');
    assert.equal(ok.code, 0, ok.out);
    writeConfig({ ...config(['0-system']), transport: 'carrier-pigeon' });
    const bad = rc('kdbus-cuse', 'checkconfig');
    assert.equal(bad.code, 1, bad.out);
    assert.ok(bad.out.includes(`${configFile}: transport: must be auto, cuse or socket`), bad.out);
  });

  it('refuses to start with a broken configuration, and nothing runs', () => {
    const r = rc('kdbus-cuse', 'start');
    assert.notEqual(r.code, 0, r.out);
    assert.ok(r.out.includes('Mounting local file systems'), `localmount starts first (need):\n${r.out}`);
    assert.ok(r.out.includes(`${configFile}: transport:`), r.out);
    assert.equal(rc('kdbus-cuse', 'status').code, 3, 'status: stopped');
    assert.equal(daemonPid(), undefined);
  });

  it('starts for a service that needs kdbus, and is ready when that service starts', async () => {
    writeConfig(config(['0-system']));
    const r = rc('kdbus-client', 'start');
    assert.equal(r.code, 0, r.out);
    // The provider of kdbus first, then the client; localmount (needed) came up with the
    // refused start before.
    const provider = r.out.indexOf('Starting kdbus-cuse');
    assert.ok(provider >= 0 && r.out.indexOf('kdbus client: the daemon') > provider, r.out);
    assert.equal(rc('localmount', 'status').code, 0, 'localmount, which kdbus-cuse needs, is started');
    const status = rc('kdbus-cuse', 'status');
    assert.equal(status.code, 0, status.out);
    assert.match(status.out, /status: started/);
    const pid = daemonPid();
    assert.ok(pid && alive(pid), 'the pid file names the running daemon');
    await until('the log says ready', () => /kdbus-cuse [0-9.]+ ready: buses 0-system/.test(readLog()));
  });

  it('reload applies a new bus; a broken file is refused before the daemon is signalled', async () => {
    writeConfig(config(['0-system', '0-extra']));
    const r = rc('kdbus-cuse', 'reload');
    assert.equal(r.code, 0, r.out);
    await until('bus 0-extra appears', () => fs.existsSync(path.join(root, 'kdbus/0-extra/bus')));
    await until('the log reports the new bus', () => /reload: bus 0-extra created/.test(readLog()));

    writeConfig({ buses: 'not a list' });
    const hups = (): number => (readLog().match(/SIGHUP/g) ?? []).length;
    const before = hups();
    const bad = rc('kdbus-cuse', 'reload');
    assert.equal(bad.code, 1, bad.out);
    assert.ok(bad.out.includes(`${configFile}: buses: expected a list of strings`), bad.out);
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(hups(), before, 'no SIGHUP for a configuration checkconfig refused');
    assert.ok(alive(daemonPid()!));
    writeConfig(config(['0-system', '0-extra']));
  });

  it('stops its dependents, then itself, leaving no socket, node, directory or pid file', async () => {
    const pid = daemonPid()!;
    const r = rc('kdbus-cuse', 'stop');
    assert.equal(r.code, 0, r.out);
    assert.ok(r.out.indexOf('kdbus client stopping') >= 0 && r.out.indexOf('kdbus client stopping') < r.out.indexOf('Stopping kdbus-cuse'), r.out);
    assert.ok(!alive(pid), 'the daemon exited');
    assert.equal(rc('kdbus-cuse', 'status').code, 3);
    assert.equal(rc('kdbus-client', 'status').code, 3);
    assert.match(fs.readFileSync(log, 'utf8'), /SIGTERM: shutting down/);
    assert.equal(fs.existsSync(inNs('/run/kdbus-cuse.pid')), false);
    assert.equal(fs.existsSync(inNs('/run/kdbus-cuse')), false, '/run/kdbus-cuse, which the daemon made, is gone');
    assert.equal(fs.existsSync(path.join(root, 'kdbus')), false);
  });
});
