import assert from 'node:assert/strict';
import { serveConfig } from '../../src/cli/main';
import { planReload } from '../../src/daemon/reload';

const base = ['--socket', '/run/k/kdbus.sock', '--kdbus-root', '/dev/kdbus', '--bus', '0-system', '--bus', '0-extra'];
const config = (...more: string[]) => serveConfig([...base, ...more])!;

describe('reload plan', () => {
  it('changes nothing for the same configuration', () => {
    assert.deepEqual(planReload(config(), config()), { logLevel: undefined, addBuses: [], keptBuses: [], restartNeeded: [] });
  });

  it('applies the log level and new buses live, keeps removed buses running', () => {
    const next = serveConfig(['--socket', '/run/k/kdbus.sock', '--kdbus-root', '/dev/kdbus', '--bus', '0-system', '--bus', '0-new', '--bus', '0-newer', '--log-level', 'debug'])!;
    const current = config('--log-level', 'info');
    assert.deepEqual(planReload(current, next), { logLevel: 'debug', addBuses: ['0-new', '0-newer'], keptBuses: ['0-extra'], restartNeeded: [] });
  });

  it('leaves where clients connect for a restart, naming each key', () => {
    const next = serveConfig([
      '--socket', '/run/other/kdbus.sock', '--kdbus-root', '/dev/kdbus2', '--transport', 'socket',
      '--bus', '0-extra', '--bus', '0-system', '--upstream', 'unix:path=/run/dbus/system_bus_socket',
    ])!;
    // The legacy endpoint's default address follows the socket, so listen changes with it.
    assert.deepEqual(planReload(config(), next).restartNeeded, ['transport', 'kdbusRoot', 'socket', 'listen', 'upstream', 'buses[0]']);
    assert.deepEqual(planReload(config(), config('--listen', 'none')).restartNeeded, ['listen']);
    const read = { ...config(), control: '/run/k/other.sock', controlGroup: 'wheel', serviceDirs: ['/usr/share/dbus-1/services'] };
    assert.deepEqual(planReload(config(), read).restartNeeded, ['control', 'controlGroup', 'serviceDirs']);
  });
});
