/**
 * The driver's side of systemd's ActivationFailure signal: who may send it and what becomes
 * of it, with dbus-daemon's rules (bus/driver.c): root or the bus owner only, and only the
 * owner of org.freedesktop.systemd1; from anyone else it is forged and ignored. The side by
 * side test with dbus-daemon (legacy-systemd-activation) covers a genuine and a forged one;
 * the refusals a second uid would need are here, with the client and the bus stood in for.
 */
import assert from 'node:assert/strict';
import { callDriver, type DriverBus, type DriverClient } from '../../src/dbus1/driver';
import type { LocalConnection } from '../../src/dbus1/local-connection';
import { MessageType, type Message } from '../../src/dbus1/message';
import { LogCapture } from '../helpers/log-capture';

const SYSTEMD_ID = 7n;

function client(id: bigint, trusted: boolean): DriverClient & { sent: Message[] } {
  const sent: Message[] = [];
  // connInfo of org.freedesktop.systemd1 is all the driver asks the connection here.
  const conn = {
    id,
    connInfo: (name: string | bigint) => {
      assert.equal(name, 'org.freedesktop.systemd1');
      return { id: SYSTEMD_ID, flags: 0n };
    },
  } as unknown as LocalConnection;
  return {
    conn, uniqueName: `:1.${id}`, trusted, sent,
    send: (m) => sent.push(m),
    addMatch: () => undefined,
    removeMatch: () => false,
    becomeMonitor: () => undefined,
    answered: () => undefined,
  };
}

function bus(systemdActivation: boolean): DriverBus & { failures: string[][] } {
  const failures: string[][] = [];
  return {
    systemdActivation, failures,
    systemdFailure: (unit, errorName, text) => failures.push([unit, errorName, text]),
    listActivatable: () => [],
    isActivatable: () => false,
    startService: () => Promise.resolve(),
    updateActivationEnvironment: () => undefined,
    reload: () => undefined,
    queuedOwners: () => [],
    busStats: () => [],
    connectionStats: () => [],
    allMatchRules: () => [],
  };
}

function failure(signature = 'sss', body: Message['body'] = ['x.service', 'org.freedesktop.systemd1.NoSuchUnit', 'Unit x.service not found.']): Message {
  return {
    type: MessageType.Signal, flags: 1, serial: 3n, path: '/org/freedesktop/DBus', interface: 'org.freedesktop.systemd1.Activator',
    member: 'ActivationFailure', sender: ':1.7', destination: 'org.freedesktop.DBus', signature, body,
  };
}

describe('dbus1 driver: ActivationFailure', () => {
  let logs: LogCapture;
  beforeEach(() => {
    logs = new LogCapture();
  });
  afterEach(() => logs.stop());

  it("passes systemd's failure on", () => {
    const b = bus(true);
    const systemd = client(SYSTEMD_ID, true);
    callDriver(systemd, b, failure());
    assert.deepEqual(b.failures, [['x.service', 'org.freedesktop.systemd1.NoSuchUnit', 'Unit x.service not found.']]);
    assert.deepEqual(systemd.sent, [], 'a signal gets no answer');
  });

  it('refuses it from a user that is neither root nor the bus owner (AccessDenied)', () => {
    const b = bus(true);
    const stranger = client(SYSTEMD_ID, false);
    callDriver(stranger, b, failure());
    assert.deepEqual(b.failures, []);
    assert.equal(stranger.sent.length, 1);
    assert.equal(stranger.sent[0]!.errorName, 'org.freedesktop.DBus.Error.AccessDenied');
    assert.equal(stranger.sent[0]!.replySerial, 3n);
  });

  it('ignores it, with a warning, from another connection, while not doing systemd activation, or with other arguments', () => {
    const forged = bus(true);
    callDriver(client(8n, true), forged, failure());
    const off = bus(false);
    callDriver(client(SYSTEMD_ID, true), off, failure());
    const odd = bus(true);
    callDriver(client(SYSTEMD_ID, true), odd, failure('ss', ['x.service', 'org.freedesktop.systemd1.NoSuchUnit']));
    assert.deepEqual([forged.failures, off.failures, odd.failures], [[], [], []]);
    const warnings = logs.matching(/ warn /);
    assert.equal(warnings.length, 3);
    assert.match(warnings[0]!, /Ignoring forged ActivationFailure message from connection :1\.8/);
    assert.match(warnings[1]!, /while not using systemd activation/);
    assert.match(warnings[2]!, /with arguments \(ss\), not \(sss\)/);
  });
});
