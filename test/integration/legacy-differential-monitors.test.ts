/**
 * Monitors and eavesdroppers on dbus-daemon and on kdbus-cuse's legacy endpoint side by
 * side: six monitors and five eavesdroppers (ordinary clients with eavesdrop='true' rules)
 * with different rules watch two clients' calls, replies, errors, signals and name changes,
 * and must see what dbus-daemon's see, in the same order.
 */
import assert from 'node:assert/strict';
import { MessageFlag, MessageType, type Message } from '../../src/dbus1/message';
import { UpstreamConnection } from '../../src/dbus1/upstream-connection';
import { CASES, connectClient, described, DRIVER, DRIVER_PATH, pairWithArenas, pick, SEED } from '../helpers/dbus1-differential';
import type { LegacyBus } from '../helpers/legacy-bus';
import { seededRandom } from '../helpers/random';

const MONITOR_STEPS = Math.ceil(CASES / 15);

const MON_IFACE = 'com.example.Mon';
const FENCE_IFACE = 'com.example.Fence';
/** The rule sets of the monitors watching at once; each also takes the fences. */
const MONITOR_RULES: readonly (readonly string[])[] = [
  [], ["type='signal'"], [`sender='${DRIVER}'`], ["type='error'", "type='method_return'"], [`destination='${DRIVER}'`], [`interface='${MON_IFACE}'`],
];
/** The rules of the eavesdroppers watching at once; each also takes the fences. */
const EAVESDROP_RULES: readonly (readonly string[])[] = [
  ["eavesdrop='true'"], ["eavesdrop='true',type='method_call'"], [`eavesdrop='true',destination='${DRIVER}'`],
  [`eavesdrop='true',interface='${MON_IFACE}'`], ["eavesdrop='true',type='error'", "eavesdrop='true',type='method_return'"],
];

interface MonitorStep {
  /** Which client acts (A or B), and what it does. */
  actor: 0 | 1;
  action: 'call' | 'no-reply call' | 'signal' | 'unicast signal' | 'request' | 'release' | 'lookup' | 'add match' | 'missing';
  n: number;
}

function monitorStep(rnd: () => number, n: number): MonitorStep {
  const actions: MonitorStep['action'][] = ['call', 'no-reply call', 'signal', 'unicast signal', 'request', 'release', 'lookup', 'add match', 'missing'];
  return { actor: rnd() < 0.5 ? 0 : 1, action: pick(rnd, actions), n };
}

/**
 * Clients A (answers calls) and B (answers calls with an error, takes MON_IFACE's
 * signals), then monitors and eavesdroppers with the rule sets above (the watchers). After
 * each step its actor broadcasts a fence, and the step is over once every watcher saw it:
 * what the watchers saw in between is the step's record.
 */
class MonitorArena {
  private readonly clients: UpstreamConnection[] = [];
  private readonly watchers: UpstreamConnection[] = [];
  private readonly seen: Message[][] = [];
  private fence: { member: string; waiting: Set<number>; done: () => void } | undefined;

  static async open(bus: LegacyBus): Promise<MonitorArena> {
    const arena = new MonitorArena();
    for (let i = 0; i < 2; i++) {
      const c: UpstreamConnection = await connectClient(bus, `monitored client ${i}`, (m) => arena.answer(c, i, m));
      arena.clients.push(c);
    }
    await arena.clients[1]!.callDriver('AddMatch', 's', [`type='signal',interface='${MON_IFACE}'`]);
    for (const [i, rules] of MONITOR_RULES.entries()) {
      arena.seen.push([]);
      const monitor = await connectClient(bus, `monitor ${i}`, (m) => arena.onMonitored(i, m));
      await monitor.call({
        destination: DRIVER, path: DRIVER_PATH, interface: 'org.freedesktop.DBus.Monitoring', member: 'BecomeMonitor',
        signature: 'asu', body: [[...rules, `interface='${FENCE_IFACE}'`], 0],
      });
      arena.watchers.push(monitor);
    }
    for (const rules of EAVESDROP_RULES) {
      const i = arena.seen.push([]) - 1;
      const eavesdropper = await connectClient(bus, `eavesdropper ${i}`, (m) => arena.onMonitored(i, m));
      for (const rule of [...rules, `interface='${FENCE_IFACE}'`]) await eavesdropper.callDriver('AddMatch', 's', [rule]);
      arena.watchers.push(eavesdropper);
    }
    // What the watchers were told of themselves while they set up is no step's.
    await arena.step({ actor: 0, action: 'lookup', n: -1 });
    return arena;
  }

  close(): void {
    for (const c of [...this.clients, ...this.watchers]) c.close();
  }

  async step(s: MonitorStep): Promise<unknown[][]> {
    for (const l of this.seen) l.length = 0;
    const actor = this.clients[s.actor]!;
    const other = this.clients[1 - s.actor]!;
    const name = `com.example.Mon.N${s.n % 2}`;
    const settle = (p: Promise<unknown>): Promise<unknown> => p.catch(() => undefined);
    const call = (destination: string, flags = 0): Promise<unknown> =>
      settle(actor.call({ destination, path: '/mon', interface: MON_IFACE, member: 'Call', flags, signature: 'u', body: [s.n] }));
    const signal = (destination?: string): void => {
      actor.send({ type: MessageType.Signal, flags: 0, serial: 0n, destination, path: '/mon', interface: MON_IFACE, member: 'Signal', signature: 'u', body: [s.n] });
    };
    switch (s.action) {
      case 'call': await call(other.uniqueName); break;
      case 'no-reply call': actor.send({ type: MessageType.MethodCall, flags: MessageFlag.NoReplyExpected, serial: 0n, destination: other.uniqueName, path: '/mon', interface: MON_IFACE, member: 'Tell', signature: '', body: [] }); break;
      case 'signal': signal(); break;
      case 'unicast signal': signal(other.uniqueName); break;
      case 'request': await settle(actor.callDriver('RequestName', 'su', [name, 0])); break;
      case 'release': await settle(actor.callDriver('ReleaseName', 's', [name])); break;
      case 'lookup': await settle(actor.callDriver('NameHasOwner', 's', [name])); break;
      case 'add match': await settle(actor.callDriver('AddMatch', 's', [`type='signal',member='M${s.n}'`])); break;
      case 'missing': await call('com.example.Mon.Missing'); break;
    }
    const member = `Fence${s.n + 1}`;
    const fenced = new Promise<void>((done) => (this.fence = { member, waiting: new Set(this.watchers.keys()), done }));
    actor.send({ type: MessageType.Signal, flags: 0, serial: 0n, path: '/fence', interface: FENCE_IFACE, member, signature: '', body: [] });
    await fenced;
    const names = new Map<string, string>([...this.clients.map((c, i): [string, string] => [c.uniqueName, `client ${i}`]), ...this.watchers.map((c, i): [string, string] => [c.uniqueName, `watcher ${i}`])]);
    return this.seen.map((l) => l.map((m) => ({ ...(described(m, names) as object), sender: m.sender === undefined ? undefined : names.get(m.sender) ?? m.sender, replySerial: undefined })));
  }

  private answer(c: UpstreamConnection, i: number, m: Message): void {
    if (m.type !== MessageType.MethodCall || m.flags & MessageFlag.NoReplyExpected || m.member !== 'Call') return;
    c.send(i === 0
      ? { type: MessageType.MethodReturn, flags: 0, serial: 0n, replySerial: m.serial, destination: m.sender, signature: 's', body: ['answer'] }
      : { type: MessageType.Error, flags: 0, serial: 0n, replySerial: m.serial, destination: m.sender, errorName: 'com.example.Mon.Refused', signature: 's', body: ['no'] });
  }

  private onMonitored(i: number, m: Message): void {
    if (m.interface === FENCE_IFACE) {
      const f = this.fence;
      if (f && m.member === f.member && f.waiting.delete(i) && f.waiting.size === 0) f.done();
      return;
    }
    this.seen[i]!.push(m);
  }
}

describe('legacy endpoint: monitors and eavesdroppers, against dbus-daemon', function () {
  this.timeout(60_000);
  const { arenas } = pairWithArenas('differential-monitors', (bus) => MonitorArena.open(bus));

  it(`${MONITOR_STEPS} steps of two clients (seed ${SEED}): ${MONITOR_RULES.length} monitors and ${EAVESDROP_RULES.length} eavesdroppers with different rules see what dbus-daemon's see, in order`, async function () {
    const rnd = seededRandom(SEED);
    let seen = 0;
    for (let i = 0; i < MONITOR_STEPS; i++) {
      const s = monitorStep(rnd, i);
      const [reference, ours] = await Promise.all(arenas.map((a) => a.step(s)));
      assert.deepEqual(ours, reference, `step ${i}: client ${s.actor} ${s.action}`);
      seen += reference!.reduce((n, l) => n + l.length, 0);
    }
    assert.ok(seen > MONITOR_STEPS * 2, `the watchers saw only ${seen} messages`);
  });
});
