/**
 * Activation from service files on dbus-daemon and on kdbus-cuse's legacy endpoint side by
 * side: the same directory of service files, good and bad, gives the same activatable names,
 * and each start ends as on dbus-daemon (started, or failed with the same error).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Message } from '../../src/dbus1/message';
import { UpstreamCallError } from '../../src/dbus1/upstream-connection';
import { type BusPair, connectClient, pairUnavailable, startActivationPair } from '../helpers/dbus1-differential';
import { PYTHON, pythonHas, type LegacyBus } from '../helpers/legacy-bus';
import { requireOrSkip } from '../helpers/require';

/**
 * Service files good and bad, by file name: their syntax, the ways a start fails. Not
 * among them: a Name that is no valid bus name, which dbus-daemon lists and tries to start
 * and kdbus-cuse refuses when it reads the file (README, "Known differences").
 */
function serviceFiles(takeName: string): Record<string, string> {
  const file = (name: string, exec: string, more = ''): string => `[D-BUS Service]\nName=com.example.Act.${name}\nExec=${exec}\n${more}`;
  return {
    good: file('Good', `${PYTHON} ${takeName} com.example.Act.Good`),
    missing: file('Missing', '/nonexistent/program arg'),
    exits: file('Exits', '/bin/sh -c "exit 3"'),
    killed: file('Killed', '/bin/sh -c "kill -9 $$"'),
    unclosed: file('Unclosed', '/bin/sh "-c'),
    empty: file('Empty', ''),
    comment: `# a comment\n[D-BUS Service]\nName=com.example.Act.Comment\nExec=/bin/false\n`,
    crlf: file('Crlf', '/bin/false').replace(/\n/g, '\r\n'),
    'no-eol': file('NoEol', '/bin/false').trimEnd(),
    escapes: file('Escapes', '/bin/sh\\s-c\\s"exit\\s4"'),
    localized: '[D-BUS Service]\nName[de]=com.example.Act.Localized\nName=com.example.Act.Localized2\nExec=/bin/false\n',
    'two-groups': '[Other]\nName=com.example.Act.Other\nExec=/bin/false\n[D-BUS Service]\nName=com.example.Act.Second\nExec=/bin/false\n',
    'two-names': '[D-BUS Service]\nName=com.example.Act.First\nName=com.example.Act.Later\nExec=/bin/false\n',
    'same-name-a': file('Twice', '/bin/false'),
    'same-name-b': file('Twice', '/bin/sh -c "exit 5"'),
    user: file('User', '/bin/false', 'User=root\n'),
    'systemd-only': '[D-BUS Service]\nName=com.example.Act.Systemd\nSystemdService=example.service\n',
    'no-exec': '[D-BUS Service]\nName=com.example.Act.NoExec\n',
    'no-group': 'Name=com.example.Act.NoGroup\nExec=/bin/false\n',
    'indented-key': '[D-BUS Service]\n  Name=com.example.Act.Indented\nExec=/bin/false\n',
    'bad-line': '[D-BUS Service]\nName=com.example.Act.BadLine\nnot a key\nExec=/bin/false\n',
    'bad-escape': file('BadEscape', '/bin/false\\q'),
    'not-utf8': file('NotUtf8', '/bin/false \xff'),
    'lower-case-key': '[D-BUS Service]\nname=com.example.Act.Lower\nExec=/bin/false\n',
  };
}

describe('legacy endpoint: activation from service files, against dbus-daemon', function () {
  this.timeout(60_000);
  let pair: BusPair | undefined;
  let buses: LegacyBus[] = [];
  let services: string;

  before(async function () {
    const missing = pairUnavailable(pythonHas('dbus, dbus.mainloop.glib, gi') ? undefined : `${PYTHON} with python3-dbus and python3-gi`);
    requireOrSkip(this, missing === undefined, missing ?? '');
    const files = (takeName: string): Record<string, string> => ({
      ...Object.fromEntries(Object.entries(serviceFiles(takeName)).map(([name, text]) => [`${name}.service`, text])),
      'wrong-suffix.txt': '[D-BUS Service]\nName=com.example.Act.Txt\nExec=/bin/false\n',
    });
    ({ pair, services } = await startActivationPair('differential-activation', files));
    buses = pair.buses;
  });

  after(async function () {
    await pair?.stop();
  });

  it('lists the same names, and every start ends as on dbus-daemon', async function () {
    const names = new Set<string>();
    for (const text of Object.values(serviceFiles(''))) for (const m of text.matchAll(/Name\s*=\s*(\S+)/g)) names.add(m[1]!);
    const outcomes = await Promise.all(buses.map(async (bus) => {
      const c = await connectClient(bus, 'activation');
      try {
        const listed = ((await c.callDriver('ListActivatableNames')).body[0] as string[]).filter((n) => n.startsWith('com.example.')).sort();
        const starts: Record<string, string> = {};
        for (const name of [...names].sort()) {
          starts[name] = await c.callDriver('StartServiceByName', 'su', [name, 0], { timeoutMs: 30_000 }).then(
            (r) => `started (${String(r.body[0])})`,
            (e: unknown) => (e instanceof UpstreamCallError ? e.name : String(e)),
          );
        }
        return { listed, starts };
      } finally {
        c.close();
      }
    }));
    assert.deepEqual(outcomes[1], outcomes[0]);
    assert.equal(outcomes[0]!.starts['com.example.Act.Good'], 'started (1)');
  });

  it('says ActivatableServicesChanged after ReloadConfig, SIGHUP and a new service file, as dbus-daemon', async () => {
    const rule = "type='signal',interface='org.freedesktop.DBus',member='ActivatableServicesChanged'";
    const watchers = await Promise.all(buses.map(async (bus) => {
      const got: Message[] = [];
      const c = await connectClient(bus, 'watcher', (m) => got.push(m));
      await c.callDriver('AddMatch', 's', [rule]);
      return { bus, c, got };
    }));
    const settled = async (w: (typeof watchers)[number], n: number): Promise<number> => {
      for (let waited = 0; w.got.filter((m) => m.member === 'ActivatableServicesChanged').length < n && waited < 5_000; waited += 20) await new Promise((r) => setTimeout(r, 20));
      // A change seen twice (the file made, then written) may come as two signals: only "at least" counts.
      return Math.min(n, w.got.filter((m) => m.member === 'ActivatableServicesChanged').length);
    };
    try {
      const counts: number[][] = watchers.map(() => []);
      for (const w of watchers) await w.c.callDriver('ReloadConfig');
      for (const [i, w] of watchers.entries()) counts[i]!.push(await settled(w, 1));
      for (const w of watchers) process.kill(w.bus.busPid()!, 'SIGHUP');
      for (const [i, w] of watchers.entries()) counts[i]!.push(await settled(w, 2));
      fs.writeFileSync(path.join(services, 'added.service'), '[D-BUS Service]\nName=com.example.Act.Added\nExec=/bin/false\n');
      for (const [i, w] of watchers.entries()) counts[i]!.push(await settled(w, 3));
      assert.deepEqual(counts, [[1, 2, 3], [1, 2, 3]], 'signals after ReloadConfig, SIGHUP, a new file (dbus-daemon, kdbus-cuse)');
      const shape = (m: Message): unknown[] => [m.type, m.sender, m.destination, m.path, m.interface, m.signature ?? '', m.body];
      assert.deepEqual(shape(watchers[1]!.got.find((m) => m.member === 'ActivatableServicesChanged')!), shape(watchers[0]!.got.find((m) => m.member === 'ActivatableServicesChanged')!));
      for (const w of watchers) assert.ok(((await w.c.callDriver('ListActivatableNames')).body[0] as string[]).includes('com.example.Act.Added'), w.bus.kind);
    } finally {
      for (const w of watchers) w.c.close();
    }
  });
});
