/**
 * kdbus over real CUSE devices, in the VM with Debian's 6.1 LTS kernel: the daemon serves
 * /dev/kdbus, and clients use it as they used kdbus.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Vm, type VmJob } from '../vm/vm';
import { requireOrSkip } from '../helpers/require';
import { C_CLIENT_SCENARIOS } from '../helpers/c-client-scenarios';

const ROOT = path.resolve(__dirname, '..', '..', '..');
/** The guest sees the host's tree at the same paths: its scripts run from there. */
const RAW_CLIENT = path.join(ROOT, 'test', 'vm', 'cuse-raw-client.py');

describe('CUSE transport in a VM', function () {
  this.timeout(120_000);
  let vm: Vm | undefined;
  let daemon: VmJob | undefined;

  before(async function () {
    const missing = Vm.unavailableReason();
    requireOrSkip(this, missing === undefined, `the test VM: ${missing}`);
    const built = spawnSync('make', ['-s', '-C', path.join(ROOT, 'test', 'c')], { encoding: 'utf8' });
    assert.equal(built.status, 0, `building the C test client: ${built.stderr}`);
    vm = await Vm.boot();
    daemon = vm.start(`cd ${ROOT} && exec node bin/kdbus-cuse serve --transport cuse --bus 0-system --socket /run/kdbus-cuse/kdbus.sock`, { timeoutMs: 110_000 });
    const wait = await vm.run('for i in $(seq 1 600); do [ -e /dev/kdbus/0-system/bus ] && exit 0; sleep 0.1; done; exit 1', { timeoutMs: 90_000 });
    assert.equal(wait.code, 0, 'the daemon made /dev/kdbus/0-system/bus');
  });

  after(async () => {
    if (daemon) await daemon.stop('TERM');
    await vm?.shutdown();
  });

  it('creates the kdbus tree as character devices with kdbus modes', async () => {
    const r = await vm!.run('stat -c "%F %a %u" /dev/kdbus/control /dev/kdbus/0-system/bus; stat -c "%a" /dev/kdbus/0-system');
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), ['character special file 666 0', 'character special file 666 0', '555']);
  });

  it('serves a raw-ioctl client without any preload library', async () => {
    const r = await vm!.run(`/usr/bin/python3 ${RAW_CLIENT} /dev/kdbus`, { timeoutMs: 60_000 });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /^ok$/m);
  });

  for (const libc of ['glibc', 'musl']) {
    it(`runs the C test client's scenarios through the shim (${libc})`, async function () {
      const shim = path.join(ROOT, 'shim', 'build', libc, 'libkdbus-cuse-shim.so');
      const client = path.join(ROOT, 'test', 'c', 'build', libc, 'kdbus-client');
      requireOrSkip(this, fs.existsSync(shim) && fs.existsSync(client), `the ${libc} shim and C client (musl needs musl-gcc)`);
      const env = `LD_PRELOAD=${shim} KDBUS_CUSE_ROOT=/dev/kdbus KDBUS_CUSE_SOCKET=/run/kdbus-cuse/kdbus.sock`;
      const r = await vm!.run(`env ${env} ${client} -v all /dev/kdbus/0-system/bus`, { timeoutMs: 100_000 });
      assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
      for (const scenario of C_CLIENT_SCENARIOS) {
        assert.match(r.stdout, new RegExp(`^\\[${scenario}\\] ok$`, 'm'), `scenario ${scenario}`);
      }
    });
  }

  it('makes and drops 210 buses with no thread and at most two descriptors per device', async () => {
    const script = path.join(ROOT, 'test', 'vm', 'cuse-churn.py');
    // kdbus let a user own at most 16 buses (EMFILE beyond); root owns 0-system already.
    const atOnce = 15;
    const rounds = 14;
    const r = await vm!.run(`/usr/bin/python3 ${script} /dev/kdbus $(pgrep -f 'bin/kdbus-cuse serve' | head -n 1) ${atOnce} ${rounds}`, { timeoutMs: 100_000 });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    interface Counts { threads: number; fds: number }
    const report = JSON.parse(r.stdout) as { before: Counts; rounds: Array<{ made: Counts; after: Counts }> };
    assert.equal(report.rounds.length, rounds);
    const { before } = report;
    for (const [i, round] of report.rounds.entries()) {
      const what = `round ${i + 1}: ${JSON.stringify(round)}, before ${JSON.stringify(before)}`;
      // A thread per device would be 15 more; Node may start a few of its own on the way.
      assert.ok(round.made.threads <= before.threads + 4, `threads grew with the devices: ${what}`);
      // A bus needs its /dev/cuse channel, a connection its pool; nothing else per device
      // (the few beyond are caches, such as /proc status files of callers).
      assert.ok(round.made.fds - before.fds >= atOnce, `the buses' channels are not among the descriptors: ${what}`);
      assert.ok(round.made.fds - before.fds <= 2 * atOnce + 8, `more than two descriptors per bus: ${what}`);
      assert.ok(round.after.fds <= before.fds + 8, `descriptors left behind by dropped buses: ${what}`);
      assert.ok(round.after.threads <= before.threads + 4, `threads left behind by dropped buses: ${what}`);
    }
  });

  it('serves the same clients through the FUSE ioctl retry protocol', async function () {
    const shim = path.join(ROOT, 'shim', 'build', 'glibc', 'libkdbus-cuse-shim.so');
    const client = path.join(ROOT, 'test', 'c', 'build', 'glibc', 'kdbus-client');
    await daemon!.stop('TERM');
    daemon = vm!.start(`cd ${ROOT} && KDBUS_CUSE_IOCTL_MEMORY=retry exec node bin/kdbus-cuse serve --transport cuse --bus 0-system --socket /run/kdbus-cuse/kdbus.sock`, { timeoutMs: 110_000 });
    const wait = await vm!.run('for i in $(seq 1 600); do [ -e /dev/kdbus/0-system/bus ] && exit 0; sleep 0.1; done; exit 1', { timeoutMs: 90_000 });
    assert.equal(wait.code, 0, 'the daemon came back');
    const raw = await vm!.run(`/usr/bin/python3 ${RAW_CLIENT} /dev/kdbus`, { timeoutMs: 60_000 });
    assert.equal(raw.code, 0, `${raw.stdout}\n${raw.stderr}`);
    const env = `LD_PRELOAD=${shim} KDBUS_CUSE_ROOT=/dev/kdbus KDBUS_CUSE_SOCKET=/run/kdbus-cuse/kdbus.sock`;
    const r = await vm!.run(`env ${env} ${client} -v all /dev/kdbus/0-system/bus`, { timeoutMs: 100_000 });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    const log = await daemon!.stop('TERM');
    daemon = undefined;
    assert.match(log.stderr, /caller memory through the FUSE ioctl retry protocol/);
  });

  it('joins an upstream dbus-daemon: kdbus clients on CUSE call its services, its clients call theirs', async function () {
    this.timeout(240_000);
    const shim = path.join(ROOT, 'shim', 'build', 'glibc', 'libkdbus-cuse-shim.so');
    const peer = path.join(ROOT, 'test', 'c', 'build', 'glibc', 'kdbus-dbus-peer');
    const upstream = 'unix:path=/run/upstream.sock';
    const jobs: VmJob[] = [];
    try {
      const bus = vm!.start(`exec dbus-daemon --session --address=${upstream} --nofork --nopidfile --print-address`, { timeoutMs: 230_000 });
      jobs.push(bus);
      const up = await vm!.run('for i in $(seq 1 600); do [ -S /run/upstream.sock ] && exit 0; sleep 0.1; done; exit 1', { timeoutMs: 90_000 });
      assert.equal(up.code, 0, 'dbus-daemon made its socket');
      jobs.push(vm!.start(`exec /usr/bin/python3 ${ROOT}/test/legacy/cross-peer.py ${upstream} serve org.example.PyPeer`, { timeoutMs: 230_000 }));
      const bridged = vm!.start(`cd ${ROOT} && exec node bin/kdbus-cuse serve --transport cuse --bus 0-system --socket /run/kdbus-cuse/kdbus.sock --upstream ${upstream}`, { timeoutMs: 230_000 });
      jobs.push(bridged);
      const ready = await vm!.run('for i in $(seq 1 900); do [ -e /dev/kdbus/0-system/bus ] && dbus-send --bus=' + upstream +
        ' --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.NameHasOwner string:org.example.PyPeer | grep -q "boolean true" && exit 0; sleep 0.1; done; exit 1', { timeoutMs: 120_000 });
      assert.equal(ready.code, 0, 'the bridged daemon and the python service are up');
      const env = `LD_PRELOAD=${shim} KDBUS_CUSE_ROOT=/dev/kdbus KDBUS_CUSE_SOCKET=/run/kdbus-cuse/kdbus.sock`;
      const call = await vm!.run(`env ${env} ${peer} /dev/kdbus/0-system/bus call org.example.PyPeer /org/example/Peer org.example.Peer Echo cuse`, { timeoutMs: 60_000 });
      assert.equal(call.code, 0, `${call.stdout}\n${call.stderr}`);
      assert.match(call.stdout, /^reply sender=:1\.\d+ arg=cuse\?$/m);
      const service = vm!.start(`env ${env} ${peer} /dev/kdbus/0-system/bus serve org.example.KPeer`, { timeoutMs: 230_000 });
      jobs.push(service);
      // NAME_ACQUIRE over CUSE waits for upstream's answer; then busctl upstream reaches the service.
      const busctl = await vm!.run('for i in $(seq 1 300); do busctl --address=' + upstream +
        ' call org.example.KPeer /org/example/Peer org.example.Peer Echo s up 2>/dev/null && exit 0; sleep 0.2; done; exit 1', { timeoutMs: 90_000 });
      assert.equal(busctl.code, 0, `${busctl.stdout}\n${busctl.stderr}`);
      assert.equal(busctl.stdout.trim(), 's "up!"');
    } finally {
      for (const j of jobs.reverse()) await j.stop('TERM');
    }
  });

  it('removes its nodes on SIGTERM', async () => {
    daemon = vm!.start(`cd ${ROOT} && exec node bin/kdbus-cuse serve --transport cuse --bus 0-system --socket /run/kdbus-cuse/kdbus.sock`);
    const wait = await vm!.run('for i in $(seq 1 600); do [ -e /dev/kdbus/0-system/bus ] && exit 0; sleep 0.1; done; exit 1', { timeoutMs: 90_000 });
    assert.equal(wait.code, 0, 'the daemon came back');
    const log = await daemon.stop('TERM');
    daemon = undefined;
    assert.match(log.stderr, /SIGTERM: shutting down/);
    const r = await vm!.run('ls /dev/kdbus 2>&1; true');
    assert.match(r.stdout, /No such file/);
  });
});
