/**
 * Match rules, random and partly mutated, tried on dbus-daemon and on kdbus-cuse's legacy
 * endpoint alike: whether AddMatch takes each, which of 40 broadcasts it lets through, and
 * whether RemoveMatch finds it again must be dbus-daemon's answers.
 */
import assert from 'node:assert/strict';
import { MessageType, type Message } from '../../src/dbus1/message';
import { UpstreamCallError, UpstreamConnection } from '../../src/dbus1/upstream-connection';
import type { Value } from '../../src/dbus1/value';
import { CASES, connectClient, DRIVER, pairWithArenas, pick, SEED } from '../helpers/dbus1-differential';
import type { LegacyBus } from '../helpers/legacy-bus';
import { seededRandom } from '../helpers/random';

const RULE_CASES = Math.ceil(CASES / 6);
/** A message to start from. */
type Seed = Omit<Message, 'serial'>;

const RULE_PATHS = ['/', '/com', '/com/example', '/com/example/a', '/com/example/a/b', '/com/examplea', '/org/x'];
const RULE_IFACES = ['com.example.A', 'com.example.B', 'org.x.Y'];
const RULE_STRINGS = ['a', 'a.b', 'a.b.c', 'a.bc', 'ab', '/', '/a', '/a/', '/a/b', '/ab', 'com.example', 'com.example.A', '', 'a/b', ':1.5', DRIVER];
const SENDER = 'com.example.Sender';
const MARKER_IFACE = 'com.example.Marker';

/** The broadcasts every rule is tried against: paths, interfaces and string-like arguments to match. */
const SIGNALS: readonly Seed[] = ((): Seed[] => {
  const rnd = seededRandom(0x5167);
  return Array.from({ length: 40 }, (_, i) => {
    let signature = '';
    const body: Value[] = [];
    for (let n = Math.floor(rnd() * 4); n > 0; n--) {
      const t = pick(rnd, ['s', 's', 's', 'o', 'as', 'i']);
      signature += t;
      body.push(t === 's' ? pick(rnd, RULE_STRINGS) : t === 'o' ? pick(rnd, RULE_PATHS) : t === 'i' ? 7 : [pick(rnd, RULE_STRINGS), pick(rnd, RULE_STRINGS)]);
    }
    const member = `${pick(rnd, ['Changed', 'Ping', 'X'])}${i}`;
    return { type: MessageType.Signal, flags: 0, path: pick(rnd, RULE_PATHS), interface: pick(rnd, RULE_IFACES), member, signature, body };
  });
})();

/**
 * One to three keys of the match rule grammar with values right and wrong; a third of the
 * rules get a character changed, dropped or added. <sender> and <listener> stand for the
 * unique names, which differ between the buses.
 */
function matchRule(rnd: () => number): string {
  const keys: string[] = [];
  for (let n = 1 + Math.floor(rnd() * 3); n > 0; n--) {
    const k = rnd();
    if (k < 0.1) keys.push(`type='${pick(rnd, ['signal', 'signal', 'method_call', 'error', 'bogus'])}'`);
    else if (k < 0.2) keys.push(`interface='${pick(rnd, [...RULE_IFACES, 'com.example', 'bad..name'])}'`);
    else if (k < 0.28) keys.push(`member='${pick(rnd, ['Changed0', 'Ping1', 'X2', 'Bad-Name'])}'`);
    else if (k < 0.38) keys.push(`path='${pick(rnd, [...RULE_PATHS, '/com/example/', 'bad'])}'`);
    else if (k < 0.5) keys.push(`path_namespace='${pick(rnd, [...RULE_PATHS, '/com/example/', 'bad'])}'`);
    else if (k < 0.65) keys.push(`arg${pick(rnd, [0, 0, 1, 2, 3, 63, 64])}='${pick(rnd, RULE_STRINGS)}'`);
    else if (k < 0.8) keys.push(`arg${pick(rnd, [0, 0, 1, 2])}path='${pick(rnd, RULE_STRINGS)}'`);
    else if (k < 0.88) keys.push(`arg0namespace='${pick(rnd, ['a', 'a.b', 'com.example', 'com', '', 'a.', '.a', '1a', 'a-b'])}'`);
    else if (k < 0.91) keys.push(`sender='${pick(rnd, [SENDER, DRIVER, 'com.example.Nobody', '<sender>'])}'`);
    else if (k < 0.94) keys.push(`eavesdrop='${pick(rnd, ['true', 'false', 'maybe'])}'`);
    else keys.push(`destination='${pick(rnd, ['com.example.Listener', '<listener>', ':1.99'])}'`);
  }
  const chars = [...keys.join(',')];
  if (rnd() < 0.3) {
    const at = Math.floor(rnd() * chars.length);
    const how = rnd();
    if (how < 0.3) chars[at] = pick(rnd, ["'", ',', '=', '\\', ' ', '\t', 'x']);
    else if (how < 0.6) chars.splice(at, 1);
    else chars.splice(at, 0, pick(rnd, ["'", ',', '=', '\\', ' ']));
  }
  return chars.join('');
}

/**
 * Where the two reference buses part ways and kdbus-cuse sides with dbus-broker: dbus-daemon's
 * tokenizer takes a rule with an empty key ("=x", "type='signal',=x") as ending there, so that
 * "=x" matches everything; libdbus takes unique names the specification does not (":1", ":.5").
 */
function knownDeviation(rule: string): boolean {
  if (/(^|,)[ \t]*=/.test(rule)) return true;
  return [...rule.matchAll(/(?:sender|destination)='(:[^']*)'/g)].some((m) => !/^:[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$/.test(m[1]!));
}

interface RuleOutcome {
  /** AddMatch's answer: "ok" or the error name. */
  add: string;
  /** The signals the listener got while the rule was in place. */
  got: string[];
  /** RemoveMatch's answer, once AddMatch took the rule. */
  remove?: string;
}

/** A listener that tries rules one at a time, and a sender owning SENDER that broadcasts SIGNALS. */
class RuleArena {
  private readonly inbox: string[] = [];
  private markerSeen: (() => void) | undefined;

  private constructor(private readonly listener: UpstreamConnection, private readonly sender: UpstreamConnection) {}

  static async open(bus: LegacyBus): Promise<RuleArena> {
    let arena: RuleArena | undefined;
    const listener = await connectClient(bus, 'rule listener', (m) => arena?.onMessage(m));
    const sender = await connectClient(bus, 'rule sender');
    arena = new RuleArena(listener, sender);
    await sender.callDriver('RequestName', 'su', [SENDER, 4]);
    await listener.callDriver('AddMatch', 's', [`interface='${MARKER_IFACE}'`]);
    return arena;
  }

  close(): void {
    this.listener.close();
    this.sender.close();
  }

  async tryRule(template: string): Promise<RuleOutcome> {
    const rule = template.replace('<sender>', this.sender.uniqueName).replace('<listener>', this.listener.uniqueName);
    const answer = (p: Promise<unknown>): Promise<string> => p.then(() => 'ok', (e: unknown) => (e instanceof UpstreamCallError ? e.name : String(e)));
    const add = await answer(this.listener.callDriver('AddMatch', 's', [rule]));
    if (add !== 'ok') return { add, got: [] };
    this.inbox.length = 0;
    const marker = new Promise<void>((resolve) => (this.markerSeen = resolve));
    for (const signal of SIGNALS) this.sender.send({ ...signal, serial: 0n });
    this.sender.send({ type: MessageType.Signal, flags: 0, serial: 0n, path: '/', interface: MARKER_IFACE, member: 'Marker', signature: '', body: [] });
    await marker;
    const got = [...this.inbox];
    return { add, got, remove: await answer(this.listener.callDriver('RemoveMatch', 's', [rule])) };
  }

  private onMessage(m: Message): void {
    if (m.interface === MARKER_IFACE) this.markerSeen?.();
    // Not the driver's messages, nor the listener's own calls to it, which dbus-daemon shows
    // an eavesdrop='true' rule (kdbus-cuse does not eavesdrop on addressed messages: README).
    else if (m.sender !== DRIVER && m.sender !== this.listener.uniqueName) this.inbox.push(m.member ?? '');
  }
}

describe('legacy endpoint: match rules, against dbus-daemon', function () {
  this.timeout(60_000);
  const { arenas } = pairWithArenas('differential-rules', (bus) => RuleArena.open(bus));

  it(`${RULE_CASES} match rules (seed ${SEED}): kdbus-cuse takes, refuses and applies them as dbus-daemon does`, async function () {
    this.timeout(120_000);
    const rnd = seededRandom(SEED);
    const differences: string[] = [];
    let deviations = 0;
    let matching = 0;
    for (let i = 0; i < RULE_CASES; i++) {
      const rule = matchRule(rnd);
      const [reference, ours] = await Promise.all(arenas.map((a) => a.tryRule(rule)));
      if (JSON.stringify(ours) === JSON.stringify(reference)) {
        if (reference!.got.length > 0) matching++;
      } else if (knownDeviation(rule)) {
        deviations++;
      } else {
        differences.push(`${JSON.stringify(rule)}\n  dbus-daemon: ${JSON.stringify(reference)}\n  kdbus-cuse:  ${JSON.stringify(ours)}`);
      }
    }
    assert.equal(differences.length, 0, `${differences.length} of ${RULE_CASES} rules were handled differently:\n${differences.slice(0, 10).join('\n')}`);
    assert.ok(deviations < RULE_CASES / 20, `${deviations} rules where the reference buses part ways`);
    assert.ok(matching > RULE_CASES / 10, `only ${matching} rules let a signal through`);
  });
});
