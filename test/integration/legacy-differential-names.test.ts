/**
 * Name ownership on dbus-daemon and on kdbus-cuse's legacy endpoint side by side: random
 * RequestName, ReleaseName, ListQueuedOwners and reconnections of three clients; after
 * each step the answers, NameOwnerChanged as watchers with different rules see it,
 * NameAcquired and NameLost, and the names' queues must be dbus-daemon's.
 */
import assert from 'node:assert/strict';
import type { Message } from '../../src/dbus1/message';
import { UpstreamCallError, UpstreamConnection } from '../../src/dbus1/upstream-connection';
import { CASES, connectClient, DRIVER, pairWithArenas, pick, SEED } from '../helpers/dbus1-differential';
import type { LegacyBus } from '../helpers/legacy-bus';
import { seededRandom } from '../helpers/random';

const NAME_STEPS = Math.ceil(CASES / 10);

const OWNED = ['com.example.Name1', 'com.example.Name2'];
/**
 * RequestName flags, all but REPLACE_EXISTING with queueing (2, 3): a request that cannot
 * replace the owner waits next in line on dbus-daemon, at the end of the queue on kdbus
 * (README, "Known differences").
 */
const REQUEST_FLAGS = [0, 1, 4, 5, 6, 7];

interface NameStep {
  /** Who acts (client 0..2) and how. */
  who: number;
  op: 'RequestName' | 'ReleaseName' | 'ListQueuedOwners' | 'reconnect';
  name: string;
  flags: number;
}

function nameStep(rnd: () => number): NameStep {
  const k = rnd();
  const op = k < 0.5 ? 'RequestName' : k < 0.8 ? 'ReleaseName' : k < 0.9 ? 'reconnect' : 'ListQueuedOwners';
  return { who: Math.floor(rnd() * 3), op, name: pick(rnd, OWNED), flags: pick(rnd, REQUEST_FLAGS) };
}

/** NameOwnerChanged rules as programs that watch names write them (GDBus's g_bus_watch_name among them). */
const WATCH_RULES = [
  `type='signal',sender='${DRIVER}',interface='${DRIVER}',member='NameOwnerChanged',arg0='${OWNED[0]}'`,
  `type='signal',sender='${DRIVER}',member='NameOwnerChanged',arg0namespace='com.example'`,
  "type='signal',member='NameOwnerChanged',arg2=''",
  "type='signal',member='NameOwnerChanged',arg1=''",
  `sender='${DRIVER}',arg0='${OWNED[1]}',arg2=''`,
];

/**
 * Three clients competing for OWNED, a watcher of every NameOwnerChanged, and watchers with
 * the rules above; unique names appear by role (c0.0: client 0's first connection).
 */
class NameArena {
  private readonly clients: UpstreamConnection[] = [];
  private readonly events: string[] = [];
  private readonly watched: string[][] = WATCH_RULES.map(() => []);
  private readonly watchers: UpstreamConnection[] = [];
  private readonly gone = new Map<string, () => void>();
  private readonly roles = new Map<string, string>();
  private readonly generations = [0, 0, 0];

  private constructor(private readonly bus: LegacyBus, private readonly watcher: UpstreamConnection) {}

  static async open(bus: LegacyBus): Promise<NameArena> {
    let arena: NameArena | undefined;
    const watcher = await connectClient(bus, 'name watcher', (m) => arena?.onWatched(m));
    arena = new NameArena(bus, watcher);
    await watcher.callDriver('AddMatch', 's', [`type='signal',sender='${DRIVER}',member='NameOwnerChanged'`]);
    for (const [k, rule] of WATCH_RULES.entries()) {
      const w = await connectClient(bus, `name watcher ${k}`, (m) => arena?.onRuled(k, m));
      await w.callDriver('AddMatch', 's', [rule]);
      arena.watchers.push(w);
    }
    for (let i = 0; i < 3; i++) await arena.connect(i);
    // The watchers have heard of the clients before the first step.
    for (const w of arena.watchers) await w.callDriver('GetId');
    return arena;
  }

  close(): void {
    for (const c of [...this.clients, this.watcher, ...this.watchers]) c.close();
  }

  async step(s: NameStep): Promise<{ answer: unknown; events: string[]; queues: string[]; watched: string[][] }> {
    this.events.length = 0;
    for (const w of this.watched) w.length = 0;
    let answer: unknown = 'reconnected';
    if (s.op === 'reconnect') {
      const old = this.clients[s.who]!;
      const gone = new Promise<void>((resolve) => this.gone.set(old.uniqueName, resolve));
      old.close();
      await gone;
      await this.connect(s.who);
    } else {
      const args = s.op === 'RequestName' ? [s.name, s.flags] : [s.name];
      answer = await this.clients[s.who]!.callDriver(s.op, s.op === 'RequestName' ? 'su' : 's', args).then(
        (r) => r.body.map((v) => (Array.isArray(v) ? v.map((x) => this.role(x as string)) : v)),
        (e: unknown) => (e instanceof UpstreamCallError ? e.name : String(e)),
      );
    }
    // A round trip of each client: what the step sent them arrived before its answer.
    for (const c of [...this.clients, this.watcher, ...this.watchers]) await c.callDriver('GetId');
    const queues: string[] = [];
    for (const name of OWNED) {
      const q = await this.watcher.callDriver('ListQueuedOwners', 's', [name]).then((r) => (r.body[0] as string[]).map((x) => this.role(x)).join(','), () => '-');
      queues.push(`${name}: ${q}`);
    }
    // Sorted, as the events: of the names one disconnection frees, dbus-daemon announces the
    // last acquired first, kdbus in its own order; each announcement says all there is.
    const watched = this.watched.map((w) => w.map((e) => e.split(' ').map((x) => this.role(x)).join(' ')).sort());
    return { answer, events: [...this.events].sort(), queues, watched };
  }

  private async connect(i: number): Promise<void> {
    const c = await UpstreamConnection.connect(this.bus.address, {
      label: `name client ${i} on ${this.bus.kind}`,
      handlers: {
        message: (m) => {
          if ((m.member === 'NameAcquired' || m.member === 'NameLost') && OWNED.includes(m.body[0] as string)) this.events.push(`c${i} ${m.member} ${m.body[0] as string}`);
        },
        closed: () => undefined,
      },
    });
    this.roles.set(c.uniqueName, `c${i}.${this.generations[i]!++}`);
    this.clients[i] = c;
  }

  private role(name: string): string {
    return this.roles.get(name) ?? name;
  }

  private onWatched(m: Message): void {
    if (m.member !== 'NameOwnerChanged') return;
    const [name, from, to] = m.body as [string, string, string];
    if (name === from && to === '') this.gone.get(name)?.();
    if (OWNED.includes(name)) this.events.push(`NameOwnerChanged ${name} ${this.role(from)} ${this.role(to)}`);
  }

  private onRuled(k: number, m: Message): void {
    // Named by role when the step ends: a new connection's name may come before its Hello's answer.
    if (m.member === 'NameOwnerChanged') this.watched[k]!.push((m.body as string[]).join(' '));
  }
}

describe('legacy endpoint: name ownership, against dbus-daemon', function () {
  this.timeout(60_000);
  const { arenas } = pairWithArenas('differential-names', (bus) => NameArena.open(bus));

  it(`${NAME_STEPS} RequestName, ReleaseName and reconnections of three clients (seed ${SEED}): the same answers, signals and queues`, async function () {
    this.timeout(120_000);
    const rnd = seededRandom(SEED);
    let changes = 0;
    for (let i = 0; i < NAME_STEPS; i++) {
      const s = nameStep(rnd);
      const [reference, ours] = await Promise.all(arenas.map((a) => a.step(s)));
      assert.deepEqual(ours, reference, `step ${i}: client ${s.who} ${s.op} ${s.name} ${s.flags}`);
      if (reference!.events.length > 0) changes++;
    }
    assert.ok(changes > NAME_STEPS / 10, `only ${changes} steps changed an owner`);
  });
});
