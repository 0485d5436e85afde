import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { serveConfig } from '../../src/cli/main';
import { ConfigError, listenAddresses, loadFile } from '../../src/config/config';

describe('configuration', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'config-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('puts the legacy endpoint beside the transport socket unless told otherwise', () => {
    const c = serveConfig(['--socket', '/run/x y/kdbus.sock'])!;
    assert.deepEqual(listenAddresses(c), ['unix:path=/run/x%20y/bus_socket']);
    assert.deepEqual(listenAddresses(serveConfig(['--listen', 'unix:abstract=a', '--listen', 'unix:path=/b'])!), ['unix:abstract=a', 'unix:path=/b']);
    assert.deepEqual(listenAddresses(serveConfig(['--listen', 'none'])!), []);
  });

  it('names the file, the key and the problem', () => {
    const file = path.join(dir, 'c.json');
    const cases: Array<[unknown, RegExp]> = [
      [{ listen: ['tcp:host=x'] }, /c\.json: listen\[0\]: .*transport "tcp" is not supported/],
      [{ upstream: 'unix:path=' }, /c\.json: upstream: .*path= is empty/],
      [{ upstream: 'unix:path=/run/u', listen: ['unix:path=/run/l'] }, /c\.json: listen: a bus bridged to an upstream bus has no legacy endpoint/],
      [{ buses: ['system'] }, /c\.json: buses\[0\]: "system" is not a bus name/],
      [{ bogus: 1 }, /c\.json: bogus: unknown key/],
      [{ systemdActivation: 'yes' }, /c\.json: systemdActivation: expected true or false, got "yes"/],
      [{ transport: 'tcp' }, /c\.json: transport: must be auto, cuse or socket/],
    ];
    for (const [content, re] of cases) {
      fs.writeFileSync(file, JSON.stringify(content));
      assert.throws(() => loadFile(file), (e: unknown) => e instanceof ConfigError && re.test(e.message), JSON.stringify(content));
    }
    fs.writeFileSync(file, '{ "listen": [');
    assert.throws(() => loadFile(file), /c\.json: \(syntax\): is not valid JSON/);
  });

  it('takes every setting from a flag too', () => {
    const c = serveConfig(['--control', '/run/x/ctl.sock', '--control-group', 'adm', '--service-dir', '/a', '--service-dir', '/b', '--systemd-activation'])!;
    assert.equal(c.control, '/run/x/ctl.sock');
    assert.equal(c.controlGroup, 'adm');
    assert.deepEqual(c.serviceDirs, ['/a', '/b']);
    assert.equal(c.systemdActivation, true);
    assert.equal(serveConfig([])!.systemdActivation, false, 'systemd activation only when asked for');
  });

  it('takes systemdActivation from the file as true or false', () => {
    const file = path.join(dir, 'systemd.json');
    fs.writeFileSync(file, '{ "systemdActivation": true }');
    assert.equal(loadFile(file).systemdActivation, true);
  });

  it('bridges to the system bus, the session bus or an address, with no legacy endpoint of its own', () => {
    const saved = { system: process.env.DBUS_SYSTEM_BUS_ADDRESS, session: process.env.DBUS_SESSION_BUS_ADDRESS };
    try {
      delete process.env.DBUS_SYSTEM_BUS_ADDRESS;
      assert.equal(serveConfig(['--upstream', 'system'])!.upstream, 'unix:path=/run/dbus/system_bus_socket');
      process.env.DBUS_SYSTEM_BUS_ADDRESS = 'unix:path=/run/other';
      assert.equal(serveConfig(['--upstream', 'system'])!.upstream, 'unix:path=/run/other');
      process.env.DBUS_SESSION_BUS_ADDRESS = 'unix:abstract=s';
      assert.equal(serveConfig(['--upstream', 'session'])!.upstream, 'unix:abstract=s');
      delete process.env.DBUS_SESSION_BUS_ADDRESS;
      assert.throws(() => serveConfig(['--upstream', 'session']), /upstream: "session" needs DBUS_SESSION_BUS_ADDRESS/);
      const c = serveConfig(['--upstream', 'unix:path=/run/u'])!;
      assert.equal(c.upstream, 'unix:path=/run/u');
      assert.deepEqual(listenAddresses(c), []);
      assert.deepEqual(listenAddresses(serveConfig(['--upstream', 'unix:path=/run/u', '--listen', 'none'])!), []);
    } finally {
      for (const [k, v] of [['DBUS_SYSTEM_BUS_ADDRESS', saved.system], ['DBUS_SESSION_BUS_ADDRESS', saved.session]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it('takes an empty listen list in the file as no legacy endpoint', () => {
    const file = path.join(dir, 'c.json');
    fs.writeFileSync(file, JSON.stringify({ listen: [] }));
    assert.deepEqual(listenAddresses(loadFile(file)), []);
  });
});
