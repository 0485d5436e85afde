/**
 * The legacy endpoint on sockets systemd passes (`--listen systemd:`, dbus-daemon's
 * listen address for a dbus.socket unit), started by systemd's own socket activator,
 * systemd-socket-activate: it listens, and runs the daemon when the first client connects,
 * handing over the listening socket as LISTEN_FDS. That client waits in the backlog while
 * the daemon starts, and is served; so are the ones after it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Proc, run } from '../helpers/legacy-bus';
import { requireOrSkip } from '../helpers/require';

const PROJECT = path.resolve(__dirname, '../../..');
const ACTIVATE = '/usr/bin/systemd-socket-activate';

function daemonArgs(dir: string, bus: string): string[] {
  return [
    path.join(PROJECT, 'bin', 'kdbus-cuse'), 'serve', '--transport', 'socket', '--socket', path.join(dir, 'kdbus.sock'),
    '--kdbus-root', path.join(dir, 'kdbus'), '--bus', bus, '--listen', 'systemd:', '--control', path.join(dir, 'control.sock'),
  ];
}

describe('legacy endpoint: socket activation (--listen systemd:)', function () {
  this.timeout(60_000);
  let dir: string;
  const bus = `${process.getuid!()}-activated`;

  before(function () {
    requireOrSkip(this, fs.existsSync(ACTIVATE), `${ACTIVATE} (Debian package systemd)`);
    requireOrSkip(this, spawnSync('dbus-send', ['--help']).error === undefined, 'dbus-send (Debian package dbus-bin)');
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'socket-activation-'));
  });

  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('serves on the socket systemd listened on, the client that caused the start first', async () => {
    const socket = path.join(dir, 'bus_socket');
    const activator = new Proc('systemd-socket-activate', ACTIVATE, ['--listen', socket, process.execPath, ...daemonArgs(dir, bus)]);
    try {
      await activator.waitFor('the socket', () => fs.existsSync(socket), 20_000);
      assert.equal(fs.existsSync(path.join(dir, 'kdbus.sock')), false, 'the daemon is not started before a client connects');
      const address = `unix:path=${socket}`;
      const first = await run('dbus-send', [`--bus=${address}`, '--print-reply', '--dest=org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus.GetId'], { timeoutMs: 30_000 });
      assert.equal(first.code, 0, `${first.stderr}\n${activator.tail()}`);
      assert.match(first.stdout, /string "[0-9a-f]{32}"/);
      const again = await run('dbus-send', [`--bus=${address}`, '--print-reply', '--dest=org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus.ListNames'], { timeoutMs: 10_000 });
      assert.equal(again.code, 0, again.stderr);
      const log = activator.stdout + activator.stderr;
      assert.match(log, new RegExp(`legacy D-Bus endpoint of bus ${bus}: the socket passed as descriptor 3 \\(${socket.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\), from systemd`));
    } finally {
      await activator.stop();
    }
    // systemd-socket-activate does not remove it either; a socket the daemon made, it would.
    assert.equal(fs.existsSync(socket), true, 'the daemon leaves the socket it was given to its giver');
  });

  it('refuses to start with systemd: when systemd passed no socket, saying why', async () => {
    const r = await run(process.execPath, daemonArgs(path.join(dir, 'none'), bus), { timeoutMs: 30_000 });
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /the listen address systemd: needs the sockets of a \.socket unit, and systemd passed none/);
  });
});
