/**
 * What the differential tests of the legacy endpoint share: dbus-daemon as the reference
 * and kdbus-cuse side by side, each started fresh in a directory of its own; the seed of
 * their pseudo-random inputs (KDBUS_FUZZ_SEED) and how many (KDBUS_FUZZ_CASES); and the
 * form in which a message of either bus can be compared with one of the other.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MessageFlag, MessageType, type Message } from '../../src/dbus1/message';
import { UpstreamConnection } from '../../src/dbus1/upstream-connection';
import { Variant, type Value } from '../../src/dbus1/value';
import { busUnavailable, startBus, type BusKind, type LegacyBus, type StartOptions } from './legacy-bus';
import { requireOrSkip } from './require';

export const DRIVER = 'org.freedesktop.DBus';
export const DRIVER_PATH = '/org/freedesktop/DBus';

export const SEED = Number(process.env['KDBUS_FUZZ_SEED'] ?? 0x6b647573);
export const CASES = Number(process.env['KDBUS_FUZZ_CASES'] ?? 3000);

const KINDS: readonly BusKind[] = ['dbus-daemon', 'kdbus-cuse'];

/** What the machine lacks for the pair, or for `more` besides; undefined when it has all. */
export function pairUnavailable(...more: Array<string | undefined>): string | undefined {
  const missing = [...KINDS.map(busUnavailable), ...more].filter((m) => m !== undefined);
  return missing.length > 0 ? missing.join('; ') : undefined;
}

/** dbus-daemon and kdbus-cuse, in that order, and how to stop both and clean up after them. */
export interface BusPair {
  buses: LegacyBus[];
  dir: string;
  stop(): Promise<void>;
}

export async function startPair(label: string, options: Partial<Record<BusKind, StartOptions>> = {}, dir?: string): Promise<BusPair> {
  const root = dir ?? fs.mkdtempSync(path.join(os.tmpdir(), `${label}-`));
  const buses: LegacyBus[] = [];
  const stop = async (): Promise<void> => {
    for (const b of buses) await b.stop();
    fs.rmSync(root, { recursive: true, force: true });
  };
  try {
    for (const kind of KINDS) buses.push(await startBus(kind, path.join(root, kind), options[kind]));
  } catch (e) {
    await stop();
    throw e;
  }
  return { buses, dir: root, stop };
}

/** A python3-dbus service that takes the name it is given on the bus that started it, and ends with that bus. */
const TAKE_NAME = [
  'import os, sys, dbus, dbus.mainloop.glib',
  'from gi.repository import GLib',
  'dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)',
  "bus = dbus.bus.BusConnection(os.environ['DBUS_STARTER_ADDRESS'])",
  'bus.set_exit_on_disconnect(True)',
  'bus.request_name(sys.argv[1])',
  'GLib.timeout_add(10000, lambda: sys.exit(0))',
  'GLib.MainLoop().run()',
].join('\n');

/**
 * The pair with one directory of service files: `files(takeName)` gives them by file name,
 * `takeName` being the path of a script that takes the name it is given (run it with
 * PYTHON). dbus-daemon lets everyone send, receive, eavesdrop and own; `kdbusConfig` adds to
 * kdbus-cuse's configuration.
 */
export async function startActivationPair(
  label: string, files: (takeName: string) => Record<string, string>, kdbusConfig: Record<string, unknown> = {},
): Promise<{ pair: BusPair; services: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${label}-`));
  const services = path.join(dir, 'services');
  fs.mkdirSync(services);
  const takeName = path.join(dir, 'take-name.py');
  fs.writeFileSync(takeName, TAKE_NAME);
  for (const [file, text] of Object.entries(files(takeName))) fs.writeFileSync(path.join(services, file), Buffer.from(text, 'latin1'));
  const daemonConfig = path.join(dir, 'dbus-daemon.conf');
  fs.writeFileSync(daemonConfig, [
    '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">',
    `<busconfig><type>session</type><listen>unix:tmpdir=${dir}</listen><servicedir>${services}</servicedir>`,
    '<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow receive_sender="*"/><allow own="*"/></policy></busconfig>',
  ].join('\n'));
  const kdbusConfigFile = path.join(dir, 'kdbus-cuse.json');
  fs.writeFileSync(kdbusConfigFile, JSON.stringify({ serviceDirs: [services], ...kdbusConfig }));
  const pair = await startPair(label, { 'dbus-daemon': { configFile: daemonConfig }, 'kdbus-cuse': { configFile: kdbusConfigFile } }, dir);
  return { pair, services };
}

/**
 * For the tests of the calling `describe`: the pair started before them, with an arena
 * (the clients a test drives) opened on each bus, and all of it stopped after them. The
 * arrays fill in before the first test. `missing`: what else the tests need and lack.
 */
export function pairWithArenas<A extends { close(): void }>(
  label: string, open: (bus: LegacyBus) => Promise<A>, opts: { options?: Partial<Record<BusKind, StartOptions>>; missing?: string } = {},
): { buses: LegacyBus[]; arenas: A[] } {
  const buses: LegacyBus[] = [];
  const arenas: A[] = [];
  let pair: BusPair | undefined;
  before(async function () {
    this.timeout(60_000);
    const missing = pairUnavailable(opts.missing);
    requireOrSkip(this, missing === undefined, missing ?? '');
    pair = await startPair(label, opts.options);
    buses.push(...pair.buses);
    for (const bus of buses) arenas.push(await open(bus));
  });
  after(async function () {
    for (const a of arenas) a.close();
    await pair?.stop();
  });
  return { buses, arenas };
}

/**
 * A dbus1 client of `bus` (after Hello), its errors naming it `label` on the bus's kind;
 * what it receives goes to `onMessage`, and the bus hanging up concerns no test.
 */
export function connectClient(bus: LegacyBus, label: string, onMessage: (m: Message) => void = () => undefined): Promise<UpstreamConnection> {
  return UpstreamConnection.connect(bus.address, { label: `${label} on ${bus.kind}`, handlers: { message: onMessage, closed: () => undefined } });
}

/** One of `from`, chosen by `rnd`. */
export const pick = <T>(rnd: () => number, from: readonly T[]): T => from[Math.floor(rnd() * from.length)]!;

/** Values in a form deepEqual compares by content (Buffers, bigints, Variants, -0). */
export function plain(v: Value, names: ReadonlyMap<string, string>): unknown {
  if (Buffer.isBuffer(v)) return `bytes:${v.toString('hex')}`;
  if (typeof v === 'bigint') return `int:${v}`;
  if (typeof v === 'number') return Object.is(v, -0) ? '-0' : Number.isNaN(v) ? 'NaN' : v;
  if (typeof v === 'string') return names.get(v) ?? v;
  if (v instanceof Variant) return { variant: v.signature, value: plain(v.value, names) };
  if (Array.isArray(v)) return v.map((x: Value) => plain(x, names));
  return v;
}

/**
 * A message as the two buses can agree on it: no sender, unique names by role. A reply or
 * signal reaches a legacy client of kdbus-cuse with NO_REPLY_EXPECTED set whatever its
 * sender said: the flag means something only on method calls, and kdbus clients (sd-bus)
 * drop a message whose flag disagrees with kdbus's EXPECT_REPLY.
 */
export function described(m: Message, names: ReadonlyMap<string, string>): unknown {
  const flags = m.type === MessageType.MethodCall ? m.flags : m.flags & ~MessageFlag.NoReplyExpected;
  // A REPLY_SERIAL on a call or signal that expects no reply does not cross kdbus (README).
  const replyless = m.type === MessageType.Signal || (m.type === MessageType.MethodCall && (m.flags & MessageFlag.NoReplyExpected) !== 0);
  return {
    type: m.type, flags, path: m.path, interface: m.interface, member: m.member, errorName: m.errorName,
    destination: m.destination === undefined ? undefined : names.get(m.destination) ?? m.destination,
    replySerial: replyless ? undefined : m.replySerial?.toString(), signature: m.signature, unixFds: m.unixFds,
    body: m.type === MessageType.Error ? undefined : m.body.map((v) => plain(v, names)),
  };
}
