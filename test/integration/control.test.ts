/**
 * kdbus-cuse status and monitor against a running daemon with real clients on its bus: a
 * python3-dbus service owning a name, dbus-send calling it.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { DaemonStatus } from '../../src/daemon/status';
import { LEGACY_SCRIPTS, Proc, PYTHON, PROJECT, pythonHas, run, startBus, type LegacyBus } from '../helpers/legacy-bus';
import { requireOrSkip } from '../helpers/require';

const CLI = path.join(PROJECT, 'bin', 'kdbus-cuse');

describe('kdbus-cuse status and monitor', function () {
  this.timeout(60_000);
  let dir: string;
  let bus: LegacyBus;
  let service: Proc;
  let control: string;

  before(async function () {
    requireOrSkip(this, pythonHas('dbus, gi'), `${PYTHON} with python3-dbus and python3-gi`);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'control-'));
    bus = await startBus('kdbus-cuse', dir);
    control = path.join(dir, 'control.sock');
    service = new Proc('service', PYTHON, [path.join(LEGACY_SCRIPTS, 'service.py'), bus.address, 'org.kdbuscuse.Test']);
    await service.waitForLine(/^READY /);
  });

  after(async () => {
    await service?.stop();
    await bus?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('keeps its control socket for root alone', () => {
    assert.equal(fs.statSync(control).mode & 0o777, 0o600);
  });

  it('status lists the bus and each connection with pid, command, uid, names and counters', async () => {
    const call = await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', '--dest=org.kdbuscuse.Test', '/org/kdbuscuse/Test', 'org.kdbuscuse.Test.Echo', 'string:hello']);
    assert.equal(call.code, 0, call.stderr);
    const r = await run(process.execPath, [CLI, 'status', '--json', '--control', control]);
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as DaemonStatus;
    assert.equal(s.buses.length, 1);
    const b = s.buses[0]!;
    assert.equal(b.name, `${process.getuid!()}-legacy`);
    const svc = b.connections.find((c) => c.names.includes('org.kdbuscuse.Test'));
    assert.ok(svc, JSON.stringify(b.connections));
    assert.equal(svc.pid, service.pid);
    assert.equal(svc.comm, 'python3');
    assert.equal(svc.uid, process.getuid!());
    // The call dbus-send made went through kdbus: the service received it and sent the reply.
    assert.ok(svc.received >= 1 && svc.sent >= 1, JSON.stringify(svc));
    assert.ok(svc.sentBytes > 0 && svc.receivedBytes > 0);
    assert.deepEqual(s.legacy.map((l) => l.bus), [b.name]);
    assert.ok(s.legacy[0]!.clients >= 1);

    const text = await run(process.execPath, [CLI, 'status', '--control', control]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, new RegExp(`^  :1\\.${svc.id} +${svc.pid} +python3 +${svc.uid} .*org\\.kdbuscuse\\.Test$`, 'm'));
    assert.match(text.stdout, /^  ID +PID +COMM +UID +KIND +QUEUE +POOL +SENT +RECEIVED +NAMES$/m);
  });

  it('monitor shows a call with its arguments, filtered by a match rule', async () => {
    const mon = new Proc('monitor', process.execPath, [CLI, 'monitor', '--control', control, "interface='org.kdbuscuse.Test'"]);
    try {
      await mon.waitFor('monitoring', () => /Monitoring bus/.test(mon.stderr), 20_000);
      const call = await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', '--dest=org.kdbuscuse.Test', '/org/kdbuscuse/Test', 'org.kdbuscuse.Test.Echo', 'string:watched']);
      assert.equal(call.code, 0, call.stderr);
      await mon.waitFor('the call', () => /Member=Echo/.test(mon.stdout), 20_000);
      assert.match(mon.stdout, /‣ Type=method_call .*\n  Sender=:1\.\d+  Destination=org\.kdbuscuse\.Test  Path=\/org\/kdbuscuse\/Test  Interface=org\.kdbuscuse\.Test  Member=Echo\n  MESSAGE "s" \{\n +"watched";/);
      // The rule names an interface: the reply (which has none) and NameOwnerChanged are left out.
      assert.doesNotMatch(mon.stdout, /method_return|NameOwnerChanged/);
    } finally {
      await mon.stop();
    }
  });

  it('says what is wrong: no such bus, a bad rule, no daemon', async () => {
    const noBus = await run(process.execPath, [CLI, 'monitor', '--control', control, '--bus', '0-nosuch']);
    assert.equal(noBus.code, 1);
    assert.match(noBus.stderr, /no bus named 0-nosuch/);
    const badRule = await run(process.execPath, [CLI, 'monitor', '--control', control, "interface='no'"]);
    assert.equal(badRule.code, 1);
    assert.match(badRule.stderr, /invalid match rule/);
    const none = await run(process.execPath, [CLI, 'status', '--control', path.join(dir, 'nothing.sock')]);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /cannot reach the daemon at .*nothing\.sock: is the daemon running\?/);
  });
});
