/**
 * Systemd activation on dbus-daemon (--systemd-activation) and on kdbus-cuse's legacy
 * endpoint (systemdActivation) side by side. A client that takes org.freedesktop.systemd1
 * plays systemd's part of the protocol as systemd's manager does: it reads the driver's
 * ActivationRequest signals, starts the unit (here: connects a client that takes the
 * service's name) or answers with an ActivationFailure signal to the driver. Each start,
 * each message the driver sends to systemd, and what the driver does with a failure sent by
 * anyone but systemd, must be as on dbus-daemon.
 */
import assert from 'node:assert/strict';
import { MessageType, type Message } from '../../src/dbus1/message';
import { UpstreamCallError, UpstreamConnection } from '../../src/dbus1/upstream-connection';
import type { Variant } from '../../src/dbus1/value';
import { type BusPair, connectClient, DRIVER, DRIVER_PATH, pairUnavailable, startActivationPair } from '../helpers/dbus1-differential';
import { PYTHON, pythonHas, type LegacyBus } from '../helpers/legacy-bus';
import { requireOrSkip } from '../helpers/require';

const SYSTEMD = 'org.freedesktop.systemd1';
const ACTIVATOR = 'org.freedesktop.systemd1.Activator';

function serviceFiles(takeName: string): Record<string, string> {
  return {
    // systemd's own files say Exec=/bin/false: the unit, not Exec, must run.
    'good.service': '[D-BUS Service]\nName=com.example.Sd.Good\nExec=/bin/false\nSystemdService=sd-good.service\n',
    'failing.service': '[D-BUS Service]\nName=com.example.Sd.Failing\nExec=/bin/false\nSystemdService=sd-failing.service\n',
    'plain.service': `[D-BUS Service]\nName=com.example.Sd.Plain\nExec=${PYTHON} ${takeName} com.example.Sd.Plain\n`,
  };
}

/** A message from the driver to systemd, as comparable across buses (no serial, systemd's unique name by role). */
function seen(m: Message, systemdUniqueName: string): Record<string, unknown> {
  const destination = m.destination === systemdUniqueName ? "systemd's unique name" : m.destination;
  return { type: m.type, flags: m.flags, path: m.path, interface: m.interface, member: m.member, sender: m.sender, destination, signature: m.signature, body: m.body };
}

const outcome = (p: Promise<Message>): Promise<string> => p.then(
  (r) => `returned ${JSON.stringify(r.body)}`,
  (e: unknown) => (e instanceof UpstreamCallError ? e.message : String(e)),
);

/** The whole exchange on one bus: what the caller got and what systemd's stand-in saw. */
async function exchange(bus: LegacyBus): Promise<Record<string, unknown>> {
  const toSystemd: Array<Record<string, unknown>> = [];
  const services: UpstreamConnection[] = [];
  let systemd: UpstreamConnection | undefined;
  const caller = await connectClient(bus, 'caller');
  try {
    const start = (name: string): Promise<string> =>
      outcome(caller.callDriver('StartServiceByName', 'su', [name, 0], { timeoutMs: 20_000 }));
    // Asked for before systemd is on the bus: the request waits for it.
    const early = start('com.example.Sd.Good');
    const onMessage = (m: Message): void => {
      if (m.sender !== DRIVER || m.member === 'NameAcquired') return;
      toSystemd.push(seen(m, systemd!.uniqueName));
      if (m.type !== MessageType.Signal || m.member !== 'ActivationRequest') return;
      const unit = m.body[0] as string;
      if (unit === 'sd-good.service') {
        void connectClient(bus, 'unit sd-good').then(async (s) => {
          services.push(s);
          await s.callDriver('RequestName', 'su', ['com.example.Sd.Good', 0]);
        });
        return;
      }
      // Anyone but systemd failing the start is ignored: the caller gets systemd's error.
      caller.send({ type: MessageType.Signal, flags: 0, serial: 0n, path: DRIVER_PATH, interface: ACTIVATOR, member: 'ActivationFailure',
        destination: DRIVER, signature: 'sss', body: [unit, 'com.example.Forged', 'not from systemd'] });
      systemd!.send({ type: MessageType.Signal, flags: 0, serial: 0n, path: DRIVER_PATH, interface: ACTIVATOR, member: 'ActivationFailure',
        destination: DRIVER, signature: 'sss', body: [unit, 'org.freedesktop.systemd1.NoSuchUnit', `Unit ${unit} not found.`] });
    };
    systemd = await connectClient(bus, 'systemd', onMessage);
    const took = (await systemd.callDriver('RequestName', 'su', [SYSTEMD, 0])).body;
    const result: Record<string, unknown> = { took };
    result['early'] = await early;
    result['failing'] = await start('com.example.Sd.Failing');
    result['plain'] = await start('com.example.Sd.Plain');
    result['systemd itself'] = await start(SYSTEMD);
    const features = (await caller.call({ destination: DRIVER, path: DRIVER_PATH, interface: 'org.freedesktop.DBus.Properties',
      member: 'Get', signature: 'ss', body: [DRIVER, 'Features'] })).body[0] as Variant;
    result['features'] = features.value;
    const before = toSystemd.length;
    await caller.callDriver('UpdateActivationEnvironment', 'a{ss}', [[['KDBUS_CUSE_TEST', 'one two']]]);
    // The driver's message to systemd and its reply to the caller cross different sockets.
    for (let waited = 0; toSystemd.length === before && waited < 2_000; waited += 20) await new Promise((r) => setTimeout(r, 20));
    result['to systemd'] = toSystemd;
    return result;
  } finally {
    caller.close();
    systemd?.close();
    for (const s of services) s.close();
  }
}

describe('legacy endpoint: systemd activation, against dbus-daemon', function () {
  this.timeout(60_000);
  let pair: BusPair | undefined;

  before(async function () {
    const missing = pairUnavailable(pythonHas('dbus, dbus.mainloop.glib, gi') ? undefined : `${PYTHON} with python3-dbus and python3-gi`);
    requireOrSkip(this, missing === undefined, missing ?? '');
    ({ pair } = await startActivationPair('differential-systemd', serviceFiles, { systemdActivation: true }));
  });

  after(async function () {
    await pair?.stop();
  });

  it('hands starts to systemd, takes its failures from it alone, and passes the environment on, as dbus-daemon', async () => {
    const [reference, ours] = [await exchange(pair!.buses[0]!), await exchange(pair!.buses[1]!)];
    assert.deepEqual(ours, reference);
    // What dbus-daemon did, so that agreeing means something.
    assert.equal(reference['early'], 'returned [1]', 'a start asked for before systemd connected');
    assert.equal(reference['failing'], 'org.freedesktop.systemd1.NoSuchUnit: Unit sd-failing.service not found.');
    assert.equal(reference['plain'], 'returned [1]', 'a file without SystemdService runs its Exec');
    assert.deepEqual(reference['features'], ['ActivatableServicesChanged', 'HeaderFiltering', 'SystemdActivation']);
    assert.deepEqual((reference['to systemd'] as Array<Record<string, unknown>>).map((m) => [m['member'], m['body']]), [
      ['ActivationRequest', ['sd-good.service']],
      ['ActivationRequest', ['sd-failing.service']],
      ['SetEnvironment', [['KDBUS_CUSE_TEST=one two']]],
    ]);
  });
});
