/**
 * Real D-Bus 1 clients (dbus-send, dbus-monitor, gdbus, busctl, python3-dbus, GDBus through
 * python3-gi, dbus-next) against a bus, with one set of expectations for every bus kind:
 * the reference dbus-daemon and dbus-broker prove the expectations right, kdbus-cuse's
 * legacy endpoint (`serve --listen`) has to meet them. The services are python3-dbus
 * programs (test/legacy/service.py); what the clients print is checked exactly.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import * as dbus from 'dbus-next';
import { openFiles, MESSAGE_MEMFDS } from '../helpers/open-files';
import { requireOrSkip } from '../helpers/require';
import {
  BUS_KINDS, LEGACY_SCRIPTS, PYTHON, Proc, busUnavailable, describeRun, driverCall, hasCommand, pythonHas, run, sleep,
  startBus, type LegacyBus, type RunResult,
} from '../helpers/legacy-bus';

const SERVICE = 'org.kdbuscuse.Test';
const OTHER = 'org.kdbuscuse.Other';
const IFACE = 'org.kdbuscuse.Test';
const OBJ = '/org/kdbuscuse/Test';
const TOOLS = ['dbus-send', 'dbus-monitor', 'gdbus', 'busctl'];

/** What service.py's Describe prints for test/legacy/client.py's standard arguments. */
const STANDARD_TYPED =
  'sxaa{sv}v(sib) ["s:héllo wörld", "x:-9007199254740993", [{"s:k1": {"v": "i:7"}, "s:k2": {"v": "s:v"}}, {}], ' +
  '{"v": ["u:1", "u:2"]}, {"(": ["s:st", "i:3", "b:true"]}]';

/** The standard arguments as GVariant text (gdbus prints a reply the same way, types where ambiguous). */
const STANDARD_GVARIANT = "('héllo wörld', int64 -9007199254740993, [{'k1': <7>, 'k2': <'v'>}, {}], <[uint32 1, 2]>, ('st', 3, true))";

function toolsMissing(): string | undefined {
  const missing = TOOLS.filter((t) => !hasCommand(t));
  if (!pythonHas('dbus, dbus.mainloop.glib, gi')) missing.push(`${PYTHON} with python3-dbus and python3-gi`);
  return missing.length > 0 ? missing.join(', ') : undefined;
}

function ok(what: string, r: RunResult): string {
  assert.equal(r.code, 0, describeRun(what, r));
  return r.stdout;
}

/** The error name a failed dbus-send printed ("Error NAME: message"). */
function dbusSendError(r: RunResult): string {
  assert.notEqual(r.code, 0, describeRun('dbus-send was expected to fail', r));
  const m = r.stderr.match(/^Error ([\w.]+)(?::|$)/m);
  assert.ok(m, describeRun('dbus-send printed no error name', r));
  return m[1]!;
}

function python(script: string, args: string[], timeoutMs = 20_000): Promise<RunResult> {
  return run(PYTHON, [path.join(LEGACY_SCRIPTS, script), ...args], { timeoutMs });
}

function startService(bus: LegacyBus, name: string): Proc {
  return new Proc(`service ${name}`, PYTHON, [path.join(LEGACY_SCRIPTS, 'service.py'), bus.address, name]);
}

/** dbus-next's bus knows its unique name once connected; its typings leave that out. */
type NextBus = dbus.MessageBus & { readonly name: string };

async function connectNext(bus: LegacyBus): Promise<NextBus> {
  const conn = dbus.sessionBus({ busAddress: bus.address }) as NextBus;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`dbus-next: no Hello reply from ${bus.kind} in 10 s`)), 10_000);
    conn.on('connect', () => {
      clearTimeout(timer);
      resolve();
    });
    conn.on('error', (e) => {
      clearTimeout(timer);
      reject(e instanceof Error ? e : new Error(String(e)));
    });
  });
  return conn;
}

function driverMessage(member: string, signature = '', body: unknown[] = []): dbus.Message {
  return new dbus.Message({
    destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus', member, signature, body,
  });
}

async function nextCall(conn: dbus.MessageBus, msg: dbus.Message): Promise<unknown[]> {
  const reply = await conn.call(msg);
  assert.ok(reply, 'dbus-next: no reply');
  return reply.body;
}

// ---- signals ----------------------------------------------------------------------------

/**
 * service.py's Emit(tag) in order, as subscribers print them: "member path arg0 arg1".
 * The tests emit from SERVICE with tag "Test" and then from OTHER with tag "Other".
 */
const EMITTED = [
  ['Tick', `${OBJ}/sub/a`, 'alpha'],
  ['Tick', `${OBJ}/sub/b`, 'beta'],
  ['Tick', '/org/kdbuscuse/Elsewhere', 'alpha'],
  ['Tock', `${OBJ}/sub`, 'gamma'],
  ['Tick', OBJ, `${OBJ}/sub/x`],
] as const;

interface RuleCase {
  rule: string;
  /** Which of EMITTED (by index) match, for each emitter. */
  fromService: number[];
  fromOther: number[];
}

/** Each rule with the signals the D-Bus specification's match semantics select. */
const RULES: Record<string, RuleCase> = {
  arg0: { rule: `type='signal',interface='${IFACE}',arg0='alpha'`, fromService: [0, 2], fromOther: [0, 2] },
  path_namespace: { rule: `type='signal',path_namespace='${OBJ}/sub'`, fromService: [0, 1, 3], fromOther: [0, 1, 3] },
  sender: { rule: `type='signal',sender='${OTHER}',member='Tick'`, fromService: [], fromOther: [0, 1, 2, 4] },
  arg0path: { rule: `type='signal',interface='${IFACE}',arg0path='${OBJ}/'`, fromService: [4], fromOther: [4] },
  'path and member': { rule: `type='signal',path='${OBJ}/sub',member='Tock'`, fromService: [3], fromOther: [3] },
};

function expectedSignals(c: RuleCase): string[] {
  const line = (i: number, tag: string): string => `${EMITTED[i]!.join(' ')} ${tag}`;
  return [...c.fromService.map((i) => line(i, 'Test')), ...c.fromOther.map((i) => line(i, 'Other')), `End ${OBJ} end end`];
}

/** The Tick/Tock/End signals in dbus-monitor's default output, as "member path arg0 arg1". */
function parseMonitorSignals(text: string): string[] {
  const out: string[] = [];
  const blocks = text.split(/\n(?=\S)/);
  for (const b of blocks) {
    const head = b.match(/^signal .*path=([^;]+); interface=[^;]+; member=(\w+)/);
    if (!head || !['Tick', 'Tock', 'End'].includes(head[2]!)) continue;
    const args = [...b.matchAll(/^\s+string "(.*)"$/gm)].map((m) => m[1]);
    out.push([head[2], head[1], ...args].join(' '));
  }
  return out;
}

/** A subscriber of one kind: started, awaited ready, then its received lines. */
interface Subscriber {
  label: string;
  ready(): Promise<void>;
  received(): Promise<string[]>;
  stop(): Promise<void>;
}

function processSubscriber(label: string, proc: Proc, readyRe: RegExp, parse: (p: Proc) => string[]): Subscriber {
  return {
    label,
    ready: async () => void (await proc.waitForLine(readyRe)),
    received: async () => {
      // The whole line: dbus-monitor prints a signal's header before its arguments.
      await proc.waitFor('the End signal', () => parse(proc).includes(`End ${OBJ} end end`), 20_000);
      return parse(proc);
    },
    stop: () => proc.stop(),
  };
}

const sigLines = (p: Proc): string[] => p.lines().filter((l) => l.startsWith('SIG ')).map((l) => l.slice(4));

function pythonSubscriber(bus: LegacyBus, rule: string): Subscriber {
  const p = new Proc('python3-dbus subscriber', PYTHON, [path.join(LEGACY_SCRIPTS, 'client.py'), bus.address, 'subscribe', rule]);
  return processSubscriber(p.label, p, /^READY /, sigLines);
}

function gioSubscriber(bus: LegacyBus, rule: string): Subscriber {
  const p = new Proc('GDBus subscriber', PYTHON, [path.join(LEGACY_SCRIPTS, 'gio-client.py'), bus.address, 'subscribe', rule]);
  return processSubscriber(p.label, p, /^READY /, sigLines);
}

const PROBE_RULE = "type='signal',interface='org.kdbuscuse.Probe'";

/**
 * Waits until a dbus-monitor started with PROBE_RULE among its rules shows a probe signal:
 * from then on it monitors. (Its NameLost would tell too, but that is a case of its own.)
 */
async function monitorActive(bus: LegacyBus, mon: Proc): Promise<void> {
  await mon.waitForLine(/member=NameAcquired/);
  const until = Date.now() + 10_000;
  while (!mon.stdout.includes('interface=org.kdbuscuse.Probe')) {
    if (Date.now() > until) throw new Error(`dbus-monitor shows no probe signal after 10 s\n${mon.tail()}`);
    ok('probe', await run('dbus-send', [`--bus=${bus.address}`, '--type=signal', '/', 'org.kdbuscuse.Probe.Probe']));
    await sleep(50);
  }
}

function monitorSubscriber(bus: LegacyBus, rule: string): Subscriber {
  const p = new Proc('dbus-monitor', 'dbus-monitor', ['--address', bus.address, rule, "type='signal',member='End'", PROBE_RULE]);
  return { ...processSubscriber(p.label, p, /./, (proc) => parseMonitorSignals(proc.stdout)), ready: () => monitorActive(bus, p) };
}

function nextSubscriber(bus: LegacyBus, rule: string): Subscriber {
  const lines: string[] = [];
  let conn: dbus.MessageBus | undefined;
  let gotEnd: () => void = () => undefined;
  const ended = new Promise<void>((resolve) => (gotEnd = resolve));
  return {
    label: 'dbus-next subscriber',
    ready: async () => {
      conn = await connectNext(bus);
      conn.on('message', (m: dbus.Message) => {
        if (m.type !== dbus.MessageType.SIGNAL || !['Tick', 'Tock', 'End'].includes(m.member)) return;
        lines.push([m.member, m.path, ...m.body.slice(0, 2).map(String)].join(' '));
        if (m.member === 'End') gotEnd();
      });
      for (const r of [rule, "type='signal',member='End'"]) await nextCall(conn, driverMessage('AddMatch', 's', [r]));
    },
    received: async () => {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([ended, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('dbus-next: no End signal in 20 s')), 20_000)))]);
      clearTimeout(timer);
      return lines;
    },
    stop: async () => conn?.disconnect(),
  };
}

// ---- raw sockets ------------------------------------------------------------------------

interface RawOutcome {
  data: string;
  /** ms from the last write until the bus closed the connection; undefined if it stayed open. */
  closedAfterMs: number | undefined;
}

/**
 * Writes each chunk (pausing between them, so the bus sees them apart), then waits up to
 * waitMs for the bus to close the connection. Ends the connection itself if it did not.
 */
function rawExchange(socketPath: string, chunks: Buffer[], waitMs: number): Promise<RawOutcome> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection(socketPath);
    let data = Buffer.alloc(0);
    let lastWrite = 0;
    let closed: number | undefined;
    let settled = false;
    const finish = (): void => {
      if (settled) return;
      settled = true;
      sock.destroy();
      resolve({ data: data.toString('latin1'), closedAfterMs: closed });
    };
    sock.on('data', (d: Buffer) => (data = Buffer.concat([data, d])));
    sock.on('error', (e: NodeJS.ErrnoException) => {
      // A reset is the bus dropping us while we wrote.
      if (e.code === 'ECONNRESET' || e.code === 'EPIPE') return;
      if (!settled) reject(e);
    });
    sock.on('close', () => {
      closed = Date.now() - lastWrite;
      finish();
    });
    sock.on('connect', async () => {
      for (const c of chunks) {
        if (sock.destroyed) break;
        sock.write(c);
        lastWrite = Date.now();
        await sleep(100);
      }
      setTimeout(finish, waitMs);
    });
  });
}

const uidHex = (uid: number): string => Buffer.from(String(uid)).toString('hex');
const authOk = (): Buffer => Buffer.from(`\0AUTH EXTERNAL ${uidHex(process.getuid!())}\r\nBEGIN\r\n`, 'latin1');

/** A D-Bus 1 fixed header (little endian, method call) with the given lengths. */
function header(bodyLength: number, fieldsLength: number): Buffer {
  const b = Buffer.alloc(16);
  b.write('l', 0, 'latin1');
  b[1] = 1; // METHOD_CALL
  b[3] = 1; // protocol version
  b.writeUInt32LE(bodyLength, 4);
  b.writeUInt32LE(1, 8);
  b.writeUInt32LE(fieldsLength, 12);
  return b;
}

// ---- the tests --------------------------------------------------------------------------

for (const kind of BUS_KINDS) {
  describe(`legacy clients on ${kind}`, function () {
    this.timeout(60_000);
    let dir: string;
    let bus: LegacyBus;
    let service: Proc;
    let other: Proc;
    let serviceUnique = '';
    const extra: Proc[] = [];

    before(async function () {
      this.timeout(90_000);
      const missing = busUnavailable(kind) ?? toolsMissing();
      requireOrSkip(this, missing === undefined, missing ?? '');
      dir = fs.mkdtempSync(path.join(os.tmpdir(), `legacy-${kind}-`));
      bus = await startBus(kind, dir);
      service = startService(bus, SERVICE);
      other = startService(bus, OTHER);
      serviceUnique = (await service.waitForLine(/^READY (\S+)/))[1]!;
      await other.waitForLine(/^READY /);
    });

    after(async function () {
      this.timeout(30_000);
      for (const p of [service, other, ...extra]) await p?.stop();
      await bus?.stop();
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    afterEach(function () {
      if (this.currentTest?.state === 'failed' && bus) {
        this.currentTest.err!.message += `\n${kind} ${bus.alive() ? 'is running' : 'has ENDED'}; its output:\n${bus.proc.tail(15)}`;
      }
    });

    describe('the driver through dbus-send', () => {
      it('GetId answers 32 hex digits', async () => {
        const out = ok('GetId', await driverCall(bus, 'GetId'));
        assert.match(out, /^\s+string "[0-9a-f]{32}"$/m);
      });

      it('ListNames lists the driver, the service and its unique name', async () => {
        const out = ok('ListNames', await driverCall(bus, 'ListNames'));
        const names = [...out.matchAll(/^\s+string "([^"]+)"$/gm)].map((m) => m[1]);
        for (const n of ['org.freedesktop.DBus', SERVICE, OTHER, serviceUnique]) assert.ok(names.includes(n), `${n} not in ${names.join(' ')}`);
      });

      it('NameHasOwner is true for an owned name and false for a missing one', async () => {
        assert.match(ok('NameHasOwner', await driverCall(bus, 'NameHasOwner', [`string:${SERVICE}`])), /^\s+boolean true$/m);
        assert.match(ok('NameHasOwner', await driverCall(bus, 'NameHasOwner', ['string:org.kdbuscuse.Missing'])), /^\s+boolean false$/m);
      });

      it("GetNameOwner gives the owner's unique name, NameHasNoOwner for a missing name", async () => {
        assert.match(ok('GetNameOwner', await driverCall(bus, 'GetNameOwner', [`string:${SERVICE}`])), new RegExp(`^\\s+string "${serviceUnique}"$`, 'm'));
        assert.equal(dbusSendError(await driverCall(bus, 'GetNameOwner', ['string:org.kdbuscuse.Missing'])), 'org.freedesktop.DBus.Error.NameHasNoOwner');
      });

      it("GetConnectionUnixProcessID and GetConnectionUnixUser give the service's pid and uid", async () => {
        const pid = ok('GetConnectionUnixProcessID', await driverCall(bus, 'GetConnectionUnixProcessID', [`string:${SERVICE}`]));
        assert.match(pid, new RegExp(`^\\s+uint32 ${service.pid}$`, 'm'));
        const uid = ok('GetConnectionUnixUser', await driverCall(bus, 'GetConnectionUnixUser', [`string:${serviceUnique}`]));
        assert.match(uid, new RegExp(`^\\s+uint32 ${process.getuid!()}$`, 'm'));
      });
    });

    describe("the driver's object", () => {
      it('busctl tree finds it from /, and gdbus introspects its interfaces there', async () => {
        const tree = ok('busctl tree', await run('busctl', [`--address=${bus.address}`, 'tree', 'org.freedesktop.DBus']));
        assert.match(tree, /\/org\/freedesktop\/DBus$/m);
        const intro = (path: string): Promise<RunResult> =>
          run('gdbus', ['introspect', '--address', bus.address, '--dest', 'org.freedesktop.DBus', '--object-path', path]);
        const canonical = ok('gdbus introspect', await intro('/org/freedesktop/DBus'));
        for (const iface of ['org.freedesktop.DBus', 'org.freedesktop.DBus.Properties', 'org.freedesktop.DBus.Monitoring']) {
          assert.match(canonical, new RegExp(`^  interface ${iface.replace(/\./g, '\\.')} \\{$`, 'm'), `${iface} at the canonical path`);
        }
        assert.match(canonical, /readonly as Features/);
        assert.match(ok('gdbus introspect /', await intro('/')), /^  node org\/freedesktop\/DBus \{$/m);
      });
    });

    describe('calls with arguments of several types', () => {
      it('dbus-send: basic types, an array and a dict arrive typed and come back', async () => {
        const args = ['string:héllo', 'int64:-9007199254740993', 'array:uint32:1,2', 'dict:string:int32:a,1,b,2', 'variant:double:2.5', 'objpath:/a/b', 'boolean:true', 'byte:7'];
        const call = (m: string): Promise<RunResult> =>
          run('dbus-send', [`--bus=${bus.address}`, '--print-reply', `--dest=${SERVICE}`, OBJ, `${IFACE}.${m}`, ...args]);
        const described = ok('Describe', await call('Describe'));
        assert.ok(described.includes(
          'string "sxaua{si}voby ["s:héllo", "x:-9007199254740993", ["u:1", "u:2"], {"s:a": "i:1", "s:b": "i:2"}, {"v": "d:2.5"}, "o:/a/b", "b:true", "y:7"]"',
        ), described);
        const echoed = ok('Echo', await call('Echo'));
        const body = echoed.split('\n').slice(1).map((l) => l.trim()).filter((l) => l).join('|');
        assert.equal(body, [
          'string "héllo"', 'int64 -9007199254740993', 'array [', 'uint32 1', 'uint32 2', ']', 'array [',
          'dict entry(', 'string "a"', 'int32 1', ')', 'dict entry(', 'string "b"', 'int32 2', ')', ']',
          'variant       double 2.5', 'object path "/a/b"', 'boolean true', 'byte 7',
        ].join('|'));
      });

      it('gdbus call: nested containers, a variant and a struct', async () => {
        const args = ["'héllo wörld'", 'int64 -9007199254740993', "[{'k1': <int32 7>, 'k2': <'v'>}, @a{sv} {}]", '<[uint32 1, 2]>', "('st', 3, true)"];
        const call = (m: string): Promise<RunResult> =>
          run('gdbus', ['call', '--address', bus.address, '--dest', SERVICE, '--object-path', OBJ, '--method', `${IFACE}.${m}`, ...args]);
        assert.equal(ok('gdbus Echo', await call('Echo')).trim(), STANDARD_GVARIANT);
        assert.equal(ok('gdbus Describe', await call('Describe')).trim(), `('${STANDARD_TYPED}',)`);
      });

      it('busctl call: the same arguments through sd-bus', async () => {
        const args = ['sxaa{sv}v(sib)', 'héllo wörld', '-9007199254740993', '2', '2', 'k1', 'i', '7', 'k2', 's', 'v', '0', 'au', '2', '1', '2', 'st', '3', 'true'];
        const call = (m: string): Promise<RunResult> => run('busctl', [`--address=${bus.address}`, 'call', '--', SERVICE, OBJ, IFACE, m, ...args]);
        assert.equal(ok('busctl Echo', await call('Echo')).trim(),
          'sxaa{sv}v(sib) "h\\303\\251llo w\\303\\266rld" -9007199254740993 2 2 "k1" i 7 "k2" s "v" 0 au 2 1 2 "st" 3 true');
        const described = ok('busctl Describe', await call('Describe')).trim();
        assert.equal(described, `s ${JSON.stringify(STANDARD_TYPED).replace(/é/g, '\\303\\251').replace(/ö/g, '\\303\\266')}`);
      });

      it('python3-dbus: Echo and Describe; its own unique name is listed', async () => {
        const r = await python('client.py', [bus.address, 'echo', SERVICE]);
        const lines = ok('client.py echo', r).trim().split('\n');
        assert.match(lines[0]!, /^UNIQUE :\S+$/);
        assert.deepEqual(lines.slice(1), ['LISTED true', `ECHO ${STANDARD_TYPED}`, `DESCRIBE ${STANDARD_TYPED}`]);
      });

      it('GDBus (python3-gi): Echo', async () => {
        assert.equal(ok('gio-client.py echo', await python('gio-client.py', [bus.address, 'echo', SERVICE])).trim(), `ECHO ${STANDARD_GVARIANT}`);
      });

      it('dbus-next: Echo and Describe; ListNames holds its unique name; GetId as dbus-send saw it', async () => {
        const conn = await connectNext(bus);
        try {
          const body = [
            'héllo wörld', -9007199254740993n,
            [{ k1: new dbus.Variant('i', 7), k2: new dbus.Variant('s', 'v') }, {}],
            new dbus.Variant('au', [1, 2]), ['st', 3, true],
          ];
          const call = (member: string): dbus.Message =>
            new dbus.Message({ destination: SERVICE, path: OBJ, interface: IFACE, member, signature: 'sxaa{sv}v(sib)', body });
          assert.deepEqual(await nextCall(conn, call('Describe')), [STANDARD_TYPED]);
          const echoed = await nextCall(conn, call('Echo'));
          assert.equal(echoed[0], 'héllo wörld');
          assert.equal(echoed[1], -9007199254740993n);
          const dicts = echoed[2] as Array<Record<string, dbus.Variant>>;
          assert.deepEqual(dicts.map((d) => Object.entries(d).map(([k, v]) => [k, v.signature, v.value])), [[['k1', 'i', 7], ['k2', 's', 'v']], []]);
          const v = echoed[3] as dbus.Variant;
          assert.deepEqual([v.signature, v.value], ['au', [1, 2]]);
          assert.deepEqual(echoed[4], ['st', 3, true]);
          const names = (await nextCall(conn, driverMessage('ListNames')))[0] as string[];
          assert.ok(names.includes(conn.name), `${conn.name} not in ${names.join(' ')}`);
          const id = (await nextCall(conn, driverMessage('GetId')))[0];
          assert.match(ok('GetId', await driverCall(bus, 'GetId')), new RegExp(`string "${String(id)}"`));
        } finally {
          conn.disconnect();
        }
      });
    });

    describe('signals reach exactly the subscribers whose rules match', () => {
      for (const [what, c] of Object.entries(RULES)) {
        it(`${what}: ${c.rule}`, async () => {
          const subs = [pythonSubscriber(bus, c.rule), gioSubscriber(bus, c.rule), monitorSubscriber(bus, c.rule), nextSubscriber(bus, c.rule)];
          try {
            await Promise.all(subs.map((s) => s.ready()));
            // One after the other, each reply awaited: the bus has every signal of one
            // emitter before the next emits, so each subscriber's order is fixed.
            for (const [dest, tag] of [[SERVICE, 'Test'], [OTHER, 'Other']] as const) {
              ok(`Emit on ${dest}`, await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', `--dest=${dest}`, OBJ, `${IFACE}.Emit`, `string:${tag}`]));
            }
            ok('EmitEnd', await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', `--dest=${SERVICE}`, OBJ, `${IFACE}.EmitEnd`]));
            for (const s of subs) assert.deepEqual(await s.received(), expectedSignals(c), `${s.label} with ${c.rule}`);
          } finally {
            for (const s of subs) await s.stop();
          }
        });
      }
    });

    describe('monitoring', () => {
      it('dbus-monitor sees a method call between two other peers, with its arguments', async () => {
        const mon = new Proc('dbus-monitor', 'dbus-monitor', ['--address', bus.address, `type='method_call',interface='${IFACE}',member='Describe'`, PROBE_RULE]);
        extra.push(mon);
        await monitorActive(bus, mon);
        ok('Describe', await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', `--dest=${SERVICE}`, OBJ, `${IFACE}.Describe`, 'string:watched']));
        await mon.waitFor('the call in its output', () => /member=Describe\n\s+string "watched"/.test(mon.stdout), 10_000);
        assert.match(mon.stdout, new RegExp(`method call .* -> destination=${SERVICE.replace(/\./g, '\\.')} serial=\\d+ path=${OBJ}; interface=${IFACE}; member=Describe`));
        await mon.stop();
      });

      it('BecomeMonitor (python3-dbus) receives the calls its rule selects and no others', async () => {
        const mon = new Proc('python3-dbus monitor', PYTHON, [path.join(LEGACY_SCRIPTS, 'client.py'), bus.address, 'monitor', `type='method_call',member='Describe'`]);
        extra.push(mon);
        await mon.waitForLine(/^MONITORING$/);
        ok('Pid', await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', `--dest=${SERVICE}`, OBJ, `${IFACE}.Pid`]));
        ok('Describe', await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', `--dest=${SERVICE}`, OBJ, `${IFACE}.Describe`]));
        const seen = await mon.waitForLine(/^MSG method_call (\S+) (\S+) (\S+) (\S+) (\S+)$/, 10_000);
        assert.deepEqual(seen.slice(2), [SERVICE, OBJ, IFACE, 'Describe']);
        const calls = mon.lines().filter((l) => l.startsWith('MSG method_call'));
        assert.equal(calls.length, 1, calls.join('\n'));
        await mon.stop();
      });

      // dbus-broker has no eavesdropping: it refuses the rule.
      if (kind !== 'dbus-broker') {
        it("an eavesdrop='true' rule (python3-dbus) takes a call between two other peers, and not their other calls", async () => {
          const ear = new Proc('python3-dbus eavesdropper', PYTHON, [path.join(LEGACY_SCRIPTS, 'client.py'), bus.address, 'eavesdrop', `eavesdrop='true',member='Describe'`]);
          extra.push(ear);
          await ear.waitForLine(/^EAVESDROPPING /);
          ok('Pid', await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', `--dest=${SERVICE}`, OBJ, `${IFACE}.Pid`]));
          ok('Describe', await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', `--dest=${SERVICE}`, OBJ, `${IFACE}.Describe`]));
          const seen = await ear.waitForLine(/^MSG method_call (\S+) (\S+) (\S+) (\S+) (\S+)$/, 10_000);
          assert.deepEqual(seen.slice(2), [SERVICE, OBJ, IFACE, 'Describe']);
          assert.deepEqual(ear.lines().filter((l) => l.startsWith('MSG method_call ')), [seen[0]]);
          await ear.stop();
        });
      }

      if (kind === 'kdbus-cuse') {
        it("an eavesdrop='true' rule of a client that may not become a monitor (uid 65534) takes broadcasts alone", async () => {
          // The bus's directory is the test's own; the socket in it is for everyone.
          fs.chmodSync(dir, 0o755);
          const ear = new Proc('python3-dbus eavesdropper as 65534', 'setpriv', [
            '--reuid=65534', '--regid=65534', '--clear-groups',
            PYTHON, path.join(LEGACY_SCRIPTS, 'client.py'), bus.address, 'eavesdrop', `eavesdrop='true',interface='${IFACE}'`,
          ]);
          extra.push(ear);
          await ear.waitForLine(/^EAVESDROPPING /);
          ok('Describe', await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', `--dest=${SERVICE}`, OBJ, `${IFACE}.Describe`]));
          // kdbus lets a connection hear broadcasts of its own uid (no policy names others).
          ok('a signal as 65534', await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'dbus-send', `--bus=${bus.address}`, '--type=signal', OBJ, `${IFACE}.Tick`]));
          await ear.waitForLine(/^MSG signal \S+ None \S+ \S+ Tick$/, 10_000);
          assert.deepEqual(ear.lines().filter((l) => l.startsWith('MSG method_call ')), [], 'it saw what others addressed to each other');
          await ear.stop();
        });
      }

      it('a monitor loses its unique name: NameLost, and the name has no owner any more', async () => {
        const mon = new Proc('python3-dbus monitor', PYTHON, [path.join(LEGACY_SCRIPTS, 'client.py'), bus.address, 'monitor', `type='method_call',member='Nothing'`]);
        extra.push(mon);
        await mon.waitForLine(/^MONITORING$/);
        const lost = await mon.waitForLine(/^MSG signal org\.freedesktop\.DBus (:\S+) \/org\/freedesktop\/DBus org\.freedesktop\.DBus NameLost$/, 5_000);
        assert.match(ok('NameHasOwner', await driverCall(bus, 'NameHasOwner', [`string:${lost[1]}`])), /^\s+boolean false$/m);
        await mon.stop();
      });
    });

    describe('names', () => {
      const NAME = 'org.kdbuscuse.Names';
      const REPLY = { PRIMARY_OWNER: 1, IN_QUEUE: 2, EXISTS: 3, ALREADY_OWNER: 4 };
      const RELEASE = { RELEASED: 1, NON_EXISTENT: 2, NOT_OWNER: 3 };
      const FLAG = { ALLOW_REPLACEMENT: 1, REPLACE_EXISTING: 2, DO_NOT_QUEUE: 4 };

      /** Driver signals a connection receives (NameOwnerChanged for NAME only), as text. */
      function recordSignals(conn: NextBus): string[] {
        const seen: string[] = [];
        conn.on('message', (m: dbus.Message) => {
          if (m.type !== dbus.MessageType.SIGNAL || m.sender !== 'org.freedesktop.DBus') return;
          if (!['NameOwnerChanged', 'NameAcquired', 'NameLost'].includes(m.member) || m.body[0] !== NAME) return;
          seen.push(`${m.member} ${(m.body as string[]).join(' ')}`.trimEnd());
        });
        return seen;
      }

      async function until(what: string, cond: () => boolean): Promise<void> {
        const end = Date.now() + 5_000;
        while (!cond()) {
          if (Date.now() > end) throw new Error(`no ${what} in 5 s`);
          await sleep(20);
        }
      }

      it('RequestName codes 1-4, queueing, ReleaseName codes 1-3, and the signals each party sees', async () => {
        const [a, b, watcher] = [await connectNext(bus), await connectNext(bus), await connectNext(bus)];
        try {
          const seenA = recordSignals(a);
          const seenB = recordSignals(b);
          const watched = recordSignals(watcher);
          await nextCall(watcher, driverMessage('AddMatch', 's', [`type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='${NAME}'`]));
          const request = async (c: NextBus, flags: number): Promise<unknown> => (await nextCall(c, driverMessage('RequestName', 'su', [NAME, flags])))[0];
          const release = async (c: NextBus): Promise<unknown> => (await nextCall(c, driverMessage('ReleaseName', 's', [NAME])))[0];

          assert.equal(await release(a), RELEASE.NON_EXISTENT);
          assert.equal(await request(a, 0), REPLY.PRIMARY_OWNER);
          assert.equal(await request(a, 0), REPLY.ALREADY_OWNER);
          assert.equal(await request(b, FLAG.DO_NOT_QUEUE), REPLY.EXISTS);
          assert.equal(await request(b, 0), REPLY.IN_QUEUE);
          assert.equal(await release(watcher), RELEASE.NOT_OWNER);
          assert.deepEqual((await nextCall(watcher, driverMessage('ListQueuedOwners', 's', [NAME])))[0], [a.name, b.name]);
          assert.deepEqual((await nextCall(watcher, driverMessage('GetNameOwner', 's', [NAME])))[0], a.name);
          // b asked without ALLOW_REPLACEMENT on a's side: replacing is refused, b stays queued.
          assert.equal(await request(b, FLAG.REPLACE_EXISTING), REPLY.IN_QUEUE);
          assert.equal(await release(a), RELEASE.RELEASED);
          await until('hand-over to b', () => watched.length >= 2);
          assert.deepEqual((await nextCall(watcher, driverMessage('GetNameOwner', 's', [NAME])))[0], b.name);

          assert.deepEqual(watched, [`NameOwnerChanged ${NAME}  ${a.name}`, `NameOwnerChanged ${NAME} ${a.name} ${b.name}`]);
          assert.deepEqual(seenA.filter((s) => !s.startsWith('NameOwnerChanged')), [`NameAcquired ${NAME}`, `NameLost ${NAME}`]);
          assert.deepEqual(seenB.filter((s) => !s.startsWith('NameOwnerChanged')), [`NameAcquired ${NAME}`]);
        } finally {
          for (const c of [a, b, watcher]) c.disconnect();
        }
      });

      it('REPLACE_EXISTING takes a name whose owner allowed replacement; the owner is queued or dropped', async () => {
        const [a, b, c] = [await connectNext(bus), await connectNext(bus), await connectNext(bus)];
        try {
          const seenA = recordSignals(a);
          const request = async (conn: NextBus, flags: number): Promise<unknown> => (await nextCall(conn, driverMessage('RequestName', 'su', [NAME, flags])))[0];
          assert.equal(await request(a, FLAG.ALLOW_REPLACEMENT), REPLY.PRIMARY_OWNER);
          assert.equal(await request(b, FLAG.REPLACE_EXISTING | FLAG.ALLOW_REPLACEMENT), REPLY.PRIMARY_OWNER);
          await until('NameLost for a', () => seenA.includes(`NameLost ${NAME}`));
          // a did not say DO_NOT_QUEUE: it waits in the queue behind the new owner.
          assert.deepEqual((await nextCall(c, driverMessage('ListQueuedOwners', 's', [NAME])))[0], [b.name, a.name]);
          assert.equal(await request(c, FLAG.REPLACE_EXISTING | FLAG.DO_NOT_QUEUE), REPLY.PRIMARY_OWNER);
          // The replaced owner goes second, ahead of those already waiting.
          assert.deepEqual((await nextCall(c, driverMessage('ListQueuedOwners', 's', [NAME])))[0], [c.name, b.name, a.name]);
        } finally {
          for (const conn of [a, b, c]) conn.disconnect();
        }
      });

      it('a vanished owner passes the name on, and NameOwnerChanged tells the watcher', async () => {
        const owner = startService(bus, NAME);
        extra.push(owner);
        const unique = (await owner.waitForLine(/^READY (\S+)/))[1]!;
        const watcher = await connectNext(bus);
        try {
          const watched = recordSignals(watcher);
          await nextCall(watcher, driverMessage('AddMatch', 's', [`type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='${NAME}'`]));
          await owner.stop();
          await until('NameOwnerChanged', () => watched.length >= 1);
          assert.deepEqual(watched, [`NameOwnerChanged ${NAME} ${unique}`]);
          assert.equal(dbusSendError(await driverCall(bus, 'GetNameOwner', [`string:${NAME}`])), 'org.freedesktop.DBus.Error.NameHasNoOwner');
        } finally {
          watcher.disconnect();
        }
      });
    });

    describe('file descriptors (python3-dbus)', () => {
      it('a pipe passed to the service is read there', async () => {
        assert.equal(ok('send-fd', await python('client.py', [bus.address, 'send-fd', SERVICE, 'through a pipe ✓'])).trim(), 'READ through a pipe ✓');
      });

      it('a pipe returned by the service is read by the caller', async () => {
        assert.equal(ok('recv-fd', await python('client.py', [bus.address, 'recv-fd', SERVICE, 'and back ✓'])).trim(), 'GOT and back ✓');
      });
    });

    describe('large messages (python3-dbus)', () => {
      // kdbus takes at most 2 MiB of vectors in a message; dbus1 messages reach 128 MiB.
      it('byte arrays of 3 and 16 MiB travel both ways intact', async () => {
        const sizes = [3 << 20, 16 << 20];
        const r = await python('client.py', [bus.address, 'big', SERVICE, ...sizes.map(String)], 120_000);
        assert.deepEqual(ok('big', r).trim().split('\n'), sizes.map((n) => `BIG ${n} sent=match received=match`));
        if (kind === 'kdbus-cuse') assert.deepEqual(openFiles(bus.busPid()!, MESSAGE_MEMFDS), [], 'the daemon still holds the memfds the bodies travelled in');
      });
    });

    describe('errors', () => {
      it('a call to a missing name fails with ServiceUnknown', async () => {
        const r = await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', '--dest=org.kdbuscuse.Missing', OBJ, `${IFACE}.Echo`]);
        assert.equal(dbusSendError(r), 'org.freedesktop.DBus.Error.ServiceUnknown');
      });

      it("the service's error name and message reach dbus-send and gdbus", async () => {
        const r = await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', `--dest=${SERVICE}`, OBJ, `${IFACE}.Fail`]);
        assert.equal(dbusSendError(r), 'org.kdbuscuse.Test.Error.Custom');
        assert.match(r.stderr, /custom failure/);
        const g = await run('gdbus', ['call', '--address', bus.address, '--dest', SERVICE, '--object-path', OBJ, '--method', `${IFACE}.Fail`]);
        assert.notEqual(g.code, 0, describeRun('gdbus Fail', g));
        assert.match(g.stderr, /GDBus\.Error:org\.kdbuscuse\.Test\.Error\.Custom: custom failure/);
      });

      it('driver methods and properties named like what every object inherits do not exist', async () => {
        // Debian's dbus-broker spells this error name its own way.
        const unknownProperty = `org.freedesktop.DBus.Error.${kind === 'dbus-broker' ? 'UnkonwnProperty' : 'UnknownProperty'}`;
        for (const member of ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf']) {
          const call = dbusSendError(await driverCall(bus, member));
          assert.equal(call, 'org.freedesktop.DBus.Error.UnknownMethod', `${member}: ${call}`);
          const get = dbusSendError(await driverCall(bus, 'Properties.Get', ['string:org.freedesktop.DBus', `string:${member}`]));
          assert.equal(get, unknownProperty, `Get ${member}: ${get}`);
        }
        assert.equal(bus.alive(), true, `${kind} ended`);
        ok('GetId after the calls', await driverCall(bus, 'GetId'));
      });

      it('a call never answered ends in NoReply after the client timeout (1 s)', async () => {
        const r = await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', '--reply-timeout=1000', `--dest=${SERVICE}`, OBJ, `${IFACE}.Never`]);
        assert.equal(dbusSendError(r), 'org.freedesktop.DBus.Error.NoReply');
        assert.ok(r.ms >= 900 && r.ms < 10_000, `took ${r.ms} ms`);
      });

      it('a callee that disconnects without answering gives the caller NoReply at once', async () => {
        const callee = startService(bus, 'org.kdbuscuse.Vanishing');
        extra.push(callee);
        await callee.waitForLine(/^READY /);
        const pending = run('dbus-send', [`--bus=${bus.address}`, '--print-reply', '--reply-timeout=30000', '--dest=org.kdbuscuse.Vanishing', OBJ, `${IFACE}.Never`]);
        await sleep(500);
        await callee.stop();
        const r = await pending;
        assert.equal(dbusSendError(r), 'org.freedesktop.DBus.Error.NoReply');
        assert.ok(r.ms < 10_000, `NoReply only after ${r.ms} ms (the client's own timeout is 30 s)`);
      });
    });

    describe('bad input on a raw socket; the bus and its other clients carry on', () => {
      const stillServes = async (): Promise<void> => {
        assert.ok(bus.alive(), `${kind} ended`);
        ok('Describe after bad input', await run('dbus-send', [`--bus=${bus.address}`, '--print-reply', `--dest=${SERVICE}`, OBJ, `${IFACE}.Describe`, 'string:fine']));
      };

      it('an unknown mechanism is REJECTED with the supported list (EXTERNAL)', async () => {
        const r = await rawExchange(bus.socketPath, [Buffer.from('\0AUTH FOO\r\n', 'latin1')], 1_000);
        assert.match(r.data, /^REJECTED (\S+ )*EXTERNAL( \S+)*\r\n$/);
        await stillServes();
      });

      it('an unknown command is answered with ERROR', async () => {
        const r = await rawExchange(bus.socketPath, [Buffer.from('\0HELLO\r\n', 'latin1')], 1_000);
        assert.match(r.data, /^ERROR( .*)?\r\n$/);
        await stillServes();
      });

      it('EXTERNAL claiming another uid is REJECTED', async () => {
        const other = process.getuid!() === 0 ? 1000 : 0;
        const r = await rawExchange(bus.socketPath, [Buffer.from(`\0AUTH EXTERNAL ${uidHex(other)}\r\n`, 'latin1')], 1_000);
        assert.match(r.data, /^REJECTED (\S+ )*EXTERNAL( \S+)*\r\n$/);
        await stillServes();
      });

      it('no NUL byte before the first line: disconnected', async () => {
        const r = await rawExchange(bus.socketPath, [Buffer.from('AUTH EXTERNAL 30\r\n', 'latin1')], 5_000);
        assert.notEqual(r.closedAfterMs, undefined, `still connected; received ${JSON.stringify(r.data)}`);
        await stillServes();
      });

      it('garbage after BEGIN: disconnected', async () => {
        const garbage = Buffer.from('this is not a D-Bus message, nor is any of what follows!!!!!', 'latin1');
        const r = await rawExchange(bus.socketPath, [authOk(), garbage], 5_000);
        assert.match(r.data, /^OK [0-9a-f]{32}\r\n/);
        assert.notEqual(r.closedAfterMs, undefined, 'still connected 5 s after the garbage');
        await stillServes();
      });

      it('a length header beyond the maximum message size: disconnected', async () => {
        const r = await rawExchange(bus.socketPath, [authOk(), header(0x7fff_ffff, 0)], 5_000);
        assert.notEqual(r.closedAfterMs, undefined, 'still connected 5 s after announcing a 2 GiB body');
        const r2 = await rawExchange(bus.socketPath, [authOk(), header(0, 0x0900_0000)], 5_000);
        assert.notEqual(r2.closedAfterMs, undefined, 'still connected 5 s after announcing 144 MiB of header fields');
        await stillServes();
      });

      it('a truncated message, then the client closes', async () => {
        const hello = header(0, 256);
        const r = await rawExchange(bus.socketPath, [authOk(), Buffer.concat([hello, Buffer.alloc(40, 1)])], 1_000);
        assert.match(r.data, /^OK [0-9a-f]{32}\r\n/);
        assert.equal(r.closedAfterMs, undefined, 'a message still arriving is waited for, not refused');
        await stillServes();
      });
    });
  });
}
