/**
 * org.freedesktop.DBus.Debug.Stats on kdbus-cuse's legacy endpoint and on dbus-daemon, side
 * by side, after the same clients did the same things: the counts kdbus-cuse gives must be
 * dbus-daemon's, under dbus-daemon's keys (kdbus-cuse leaves out keys it keeps no count for,
 * src/dbus1/stats.ts), and so must the errors and every client's match rules.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { MessageType, type Message } from '../../src/dbus1/message';
import { UpstreamCallError, UpstreamConnection } from '../../src/dbus1/upstream-connection';
import { Variant, type Value } from '../../src/dbus1/value';
import { connectClient, DRIVER, DRIVER_PATH, pairWithArenas } from '../helpers/dbus1-differential';
import { Proc, PYTHON, type LegacyBus } from '../helpers/legacy-bus';

const STATS = 'org.freedesktop.DBus.Debug.Stats';

/** Three clients and one connection that never authenticates, each with rules or names of its own. */
class StatsArena {
  private readonly clients: UpstreamConnection[] = [];
  private raw: net.Socket | undefined;

  static async open(bus: LegacyBus): Promise<StatsArena> {
    const arena = new StatsArena(bus);
    for (let i = 0; i < 3; i++) {
      arena.clients.push(await connectClient(bus, `stats client ${i}`));
    }
    return arena;
  }

  private constructor(readonly bus: LegacyBus) {}

  get a(): UpstreamConnection {
    return this.clients[0]!;
  }

  get b(): UpstreamConnection {
    return this.clients[1]!;
  }

  get c(): UpstreamConnection {
    return this.clients[2]!;
  }

  /**
   * A connection that asks which mechanisms there are and goes no further: incomplete until
   * the bus's auth timeout. The answer (REJECTED) shows the bus has taken it in.
   */
  async incomplete(): Promise<void> {
    const sock = net.createConnection(this.bus.address.replace(/^unix:path=/, '').replace(/,.*$/, ''));
    this.raw = sock;
    sock.on('error', () => undefined);
    let heard = '';
    await new Promise<void>((done) => {
      sock.on('data', (d) => {
        heard += d.toString('latin1');
        if (heard.includes('\r\n')) done();
      });
      sock.once('connect', () => sock.write('\0AUTH\r\n'));
    });
    assert.match(heard, /^REJECTED /, `${this.bus.kind} answered AUTH with ${JSON.stringify(heard)}`);
  }

  /**
   * The answer of `member` to client a (to b, for a question about a: dbus-daemon counts the
   * question itself among the asker's incoming bytes), errors included, in a form both buses
   * can agree on.
   */
  async ask(member: string, signature = '', body: Value[] = [], names: ReadonlyMap<string, string> = this.roles()): Promise<unknown> {
    const asker = body[0] === this.a.uniqueName ? this.b : this.a;
    let reply: Message;
    try {
      reply = await asker.call({ destination: DRIVER, path: DRIVER_PATH, interface: STATS, member, signature, body });
    } catch (e) {
      // dbus-daemon's texts end in a newline at times: the names are what clients act on.
      if (e instanceof UpstreamCallError) return { error: e.name };
      throw e;
    }
    return reply.body.map((v) => plainStats(v, names));
  }

  /** Unique names by role, so both buses' answers read alike. */
  roles(): ReadonlyMap<string, string> {
    return new Map(this.clients.map((c, i) => [c.uniqueName, `client ${'abc'[i]}`]));
  }

  close(): void {
    this.raw?.destroy();
    for (const c of this.clients) c.close();
  }
}

function plainStats(v: Value, names: ReadonlyMap<string, string>): unknown {
  if (v instanceof Variant) return plainStats(v.value, names);
  if (typeof v === 'string') return names.get(v) ?? v;
  if (Array.isArray(v)) return v.map((x: Value) => plainStats(x, names));
  return v;
}

/** dbus-daemon's dictionary cut to the keys kdbus-cuse's has (both are lists of [key, value]). */
function sameKeys(reference: unknown, ours: unknown): { reference: unknown; ours: unknown; missing: string[] } {
  const entries = (x: unknown): Array<[string, unknown]> => (x as Array<Array<[string, unknown]>>)[0]!;
  const keys = new Set(entries(ours).map(([k]) => k));
  const refKeys = new Set(entries(reference).map(([k]) => k));
  return {
    reference: entries(reference).filter(([k]) => keys.has(k)),
    ours: entries(ours),
    missing: [...keys].filter((k) => !refKeys.has(k)),
  };
}

describe('legacy endpoint: Debug.Stats, against dbus-daemon', function () {
  this.timeout(30_000);
  const { buses, arenas } = pairWithArenas('differential-stats', (bus) => StatsArena.open(bus));

  it('counts connections, names and match rules as dbus-daemon does, and lists the rules', async function () {
    await Promise.all(arenas.map(async (x) => {
      for (const r of ["type='signal',member='One'", "type='signal',interface='com.example.Two'", "sender='org.freedesktop.DBus'"]) await x.a.callDriver('AddMatch', 's', [r]);
      await x.a.callDriver('RemoveMatch', 's', ["type='signal',interface='com.example.Two'"]);
      await x.b.callDriver('AddMatch', 's', ["type='method_call',path_namespace='/com/example'"]);
      await x.b.callDriver('RequestName', 'su', ['com.example.Stats.One', 0]);
      await x.b.callDriver('RequestName', 'su', ['com.example.Stats.Two', 0]);
      // A queued owner holds a name too, in dbus-daemon's count of a connection's names.
      await x.c.callDriver('RequestName', 'su', ['com.example.Stats.One', 0]);
      await x.incomplete();
    }));
    const reference = arenas[0];
    const questions: Array<[string, string?, Value[]?]> = [
      ['GetStats'],
      ['GetConnectionStats', 's', [reference!.a.uniqueName]],
      ['GetConnectionStats', 's', [reference!.b.uniqueName]],
      ['GetConnectionStats', 's', ['com.example.Stats.Two']],
      ['GetConnectionStats', 's', [reference!.c.uniqueName]],
      ['GetConnectionStats', 's', [DRIVER]],
      ['GetConnectionStats', 's', ['com.example.Stats.Nobody']],
      ['GetAllMatchRules'],
      ['GetStats', 's', ['extra']],
    ];
    for (const [member, signature, body] of questions) {
      // The same question to each bus, naming its own clients.
      const asked = await Promise.all(arenas.map((x) => {
        const own = (body ?? []).map((v) => (v === reference!.a.uniqueName ? x.a.uniqueName : v === reference!.b.uniqueName ? x.b.uniqueName : v === reference!.c.uniqueName ? x.c.uniqueName : v));
        return x.ask(member, signature, own);
      }));
      const [theirs, mine] = asked;
      const what = `${member}(${(body ?? []).join(', ')}) on ${buses.map((b) => b.kind).join(' and ')}`;
      if (member === 'GetAllMatchRules') {
        const sorted = (x: unknown): unknown => [[...(x as Array<Array<[string, string[]]>>)[0]!].sort(([p], [q]) => p.localeCompare(q))]
          .map((d) => d.map(([k, rules]) => [k, [...rules].sort()]));
        assert.deepEqual(sorted(mine), sorted(theirs), what);
      } else if (Array.isArray(theirs) && Array.isArray(mine)) {
        const cut = sameKeys(theirs, mine);
        assert.deepEqual(cut.missing, [], `${what}: keys dbus-daemon does not give`);
        assert.deepEqual(cut.ours, cut.reference, what);
      } else {
        assert.deepEqual(mine, theirs, what);
      }
    }
  });

  it('counts the bytes and messages waiting for a client that does not read', async function () {
    const x = arenas[1]!;
    const rule = "type='signal',interface='com.example.Flood'";
    // python3-dbus without a main loop reads its socket only when it makes a call.
    const sleeper = new Proc('python3-dbus that does not read', PYTHON, ['-c', [
      'import sys, time, dbus',
      'b = dbus.bus.BusConnection(sys.argv[1])',
      'b.add_match_string(sys.argv[2])',
      'print(b.get_unique_name(), flush=True)',
      'time.sleep(60)',
    ].join('\n'), x.bus.address, rule]);
    try {
      const [unique] = (await sleeper.waitForLine(/^(:\S+)$/)).slice(1);
      const body = [Buffer.alloc(60_000, 7)];
      for (let i = 0; i < 40; i++) {
        x.b.send({ type: MessageType.Signal, flags: 0, serial: 0n, path: '/flood', interface: 'com.example.Flood', member: 'Wave', signature: 'ay', body });
      }
      const counts = async (): Promise<Map<string, unknown>> => new Map((await x.ask('GetConnectionStats', 's', [unique!]) as Array<Array<[string, unknown]>>)[0]!);
      let c = await counts();
      for (let i = 0; i < 50 && c.get('OutgoingBytes') === 0; i++) c = await counts();
      assert.ok((c.get('OutgoingBytes') as number) > 0 && (c.get('OutgoingMessages') as number) > 0, `nothing waits for the client that does not read: ${JSON.stringify([...c])}`);
      assert.equal(c.get('MatchRules'), 1);
    } finally {
      await sleeper.stop();
    }
  });

  it('answers only the bus owner and root (uid 65534: AccessDenied), as only they may monitor', function () {
    const bus = buses[1]!;
    // The bus's directories are the test's own (the pair's and the bus's); the socket in them is for everyone.
    const busDir = path.dirname(bus.address.replace(/^unix:path=/, '').replace(/,.*$/, ''));
    for (const d of [busDir, path.dirname(busDir)]) fs.chmodSync(d, 0o755);
    for (const member of ['GetStats', 'GetAllMatchRules']) {
      const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'dbus-send', `--bus=${bus.address}`, '--print-reply', `--dest=${DRIVER}`, DRIVER_PATH, `${STATS}.${member}`], { encoding: 'utf8' });
      assert.notEqual(r.status, 0, `${member} as 65534: ${r.stdout}`);
      assert.match(r.stderr, /org\.freedesktop\.DBus\.Error\.AccessDenied/, `${member} as 65534`);
    }
  });
});
