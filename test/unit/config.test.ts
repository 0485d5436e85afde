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
      [{ upstream: 'unix:path=/run/dbus/system_bus_socket' }, /c\.json: upstream: the upstream bridge is not implemented yet/],
      [{ buses: ['system'] }, /c\.json: buses\[0\]: "system" is not a bus name/],
      [{ bogus: 1 }, /c\.json: bogus: unknown key/],
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
    const c = serveConfig(['--control', '/run/x/ctl.sock', '--control-group', 'adm', '--service-dir', '/a', '--service-dir', '/b'])!;
    assert.equal(c.control, '/run/x/ctl.sock');
    assert.equal(c.controlGroup, 'adm');
    assert.deepEqual(c.serviceDirs, ['/a', '/b']);
  });

  it('takes an empty listen list in the file as no legacy endpoint', () => {
    const file = path.join(dir, 'c.json');
    fs.writeFileSync(file, JSON.stringify({ listen: [] }));
    assert.deepEqual(listenAddresses(loadFile(file)), []);
  });
});
