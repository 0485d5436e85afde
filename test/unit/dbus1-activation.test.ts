/**
 * Service activation: service files parsed as dbus-daemon reads them, Exec lines split as
 * /bin/sh splits words (checked against /bin/sh itself), directories scanned in priority
 * order, and real children started from real files in a temporary directory. Most starts
 * learn that "the name appeared" from a marker file the child writes; one goes through a
 * real bus, where the test takes the name on a LocalConnection once the child has run.
 */
import assert from 'node:assert/strict';
import { requireOrSkip } from '../helpers/require';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HelloFlags, ItemType } from '../../src/abi/constants';
import type { KdbusNode } from '../../src/bus/handle';
import {
  Activation, ActivationError, ActivationErrorName as E, defaultServiceDirs, MAX_SERVICE_FILE_SIZE, parseServiceFile,
  ServiceFileError, splitCommandLine, waitForName, type ActivationOptions, type SystemdLink, type WaitForOwner,
} from '../../src/dbus1/activation';
import type { Message } from '../../src/dbus1/message';
import { LocalConnection, type LocalIdentity } from '../../src/dbus1/local-connection';
import { selfCreds, TestBus } from '../helpers/kdbus-client';
import { LogCapture } from '../helpers/log-capture';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what: string, cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

async function rejection(p: Promise<unknown>): Promise<ActivationError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ActivationError, `expected an ActivationError, got ${String(e)}`);
    return e;
  }
  assert.fail('expected the start to fail');
}

function parseError(text: string | Buffer): string {
  try {
    parseServiceFile(Buffer.isBuffer(text) ? text : Buffer.from(text));
  } catch (e) {
    assert.ok(e instanceof ServiceFileError, String(e));
    return e.message;
  }
  assert.fail('expected the file to be refused');
}

/** Words as /bin/sh splits them (the line must not need expansion). */
function shWords(line: string): string[] {
  const out = execFileSync('/bin/sh', ['-c', `set -- ${line}\nprintf '%s\\0' "$@"`]);
  return out.toString().split('\0').slice(0, -1);
}

function alive(pid: number): boolean {
  try {
    // A zombie still answers kill(0): only a running or sleeping process counts.
    return !/^\S+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

describe('dbus1 activation', () => {
  let tmp: string;
  let out: string;
  let logs: LogCapture;
  const managers: Activation[] = [];
  const pids: number[] = [];

  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kdbus-activation-'));
    fs.chmodSync(tmp, 0o755);
    out = path.join(tmp, 'out');
    fs.mkdirSync(out, { mode: 0o777 });
    fs.chmodSync(out, 0o777);
    logs = new LogCapture();
  });
  afterEach(() => {
    for (const m of managers.splice(0)) m.close();
    for (const pid of pids.splice(0)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    logs.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  function dir(name: string): string {
    const d = path.join(tmp, name);
    fs.mkdirSync(d, { recursive: true });
    return d;
  }
  function service(d: string, file: string, body: string): string {
    const p = path.join(d, file);
    fs.writeFileSync(p, body);
    return p;
  }
  /** A [D-BUS Service] file named after `name`, whose Exec runs `script` with $0 = the output directory. */
  function shService(d: string, name: string, script: string, extra = ''): void {
    service(d, `${name}.service`, `[D-BUS Service]\nName=${name}\nExec=/bin/sh -c '${script}' ${out}\n${extra}`);
  }
  function manager(opts: Partial<ActivationOptions> & Pick<ActivationOptions, 'dirs'>): Activation {
    const m = new Activation({ busAddress: 'unix:path=/run/test-bus', busType: 'session', timeoutMs: 5000, ...opts });
    managers.push(m);
    return m;
  }
  const signals: AbortSignal[] = [];
  /** The name "appears" when the child creates out/<name>.up. */
  const marker: WaitForOwner = (name, signal) => {
    signals.push(signal);
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (signal.aborted) reject(signal.reason);
        else if (fs.existsSync(path.join(out, `${name}.up`))) resolve();
        else setTimeout(check, 5);
      };
      check();
    });
  };
  const TAKE = (name: string): string => `touch "$0/${name}.up"`;
  const readPid = (name: string): number => {
    const pid = Number(fs.readFileSync(path.join(out, `${name}.pid`), 'utf8'));
    pids.push(pid);
    return pid;
  };

  describe('service files', () => {
    it('reads [D-BUS Service]: comments, blank lines, spaces around =, escapes, first group and key win, localized keys ignored', () => {
      const text = [
        '# Sample service description file',
        '[Other Group]',
        'Name=org.example.Wrong',
        '',
        ' \t',
        '[D-BUS Service]',
        'Name = org.example.Good',
        'Name=org.example.Second',
        String.raw`Exec=/usr/bin/good\s--flag "two  words" tab\there back\\slash`,
        'Exec[de]=/usr/bin/ignored',
        'User=nobody',
        'SystemdService=dbus-org.example.Good.service',
        'AssumedAppArmorLabel=/usr/bin/good',
        '[D-BUS Service]',
        'Exec=/usr/bin/ignored-too',
      ];
      for (const eol of ['\n', '\r\n', '\r']) {
        const e = parseServiceFile(Buffer.from(lines(text, eol)));
        assert.equal(e.name, 'org.example.Good');
        assert.equal(e.exec, '/usr/bin/good --flag "two  words" tab\there back\\slash');
        assert.deepEqual(splitCommandLine(e.exec), ['/usr/bin/good', '--flag', 'two  words', 'tab', 'here', 'backslash']);
        assert.equal(e.user, 'nobody');
        assert.equal(e.systemdService, 'dbus-org.example.Good.service');
      }
    });

    function lines(text: string[], eol = '\n'): string {
      return text.join(eol) + eol;
    }

    it('needs Name and Exec, as dbus-daemon does, SystemdService or not; an Exec that does not split is read all the same', () => {
      assert.match(parseError('[D-BUS Service]\nName=org.example.Unit\nSystemdService=example.service\n'), /^no Exec key/);
      assert.match(parseError('[D-BUS Service]\nExec=/bin/true\n'), /^no Name key in \[D-BUS Service\]$/);
      assert.match(parseError('[D-BUS Service]\nName=org.example.A\nUser=root\n'), /^no Exec key/);
      for (const exec of ['/bin/echo "unclosed', "/bin/echo 'unclosed", '', '# only a comment']) {
        assert.equal(parseServiceFile(Buffer.from(`[D-BUS Service]\nName=org.example.A\nExec=${exec}\n`)).exec, exec);
      }
    });

    it('refuses what dbus-daemon refuses, saying which line is wrong', () => {
      const cases: Array<[string | Buffer, RegExp]> = [
        ['[D-BUS Servic]\nName=org.example.A\nExec=/bin/true\n', /^no \[D-BUS Service\] group$/],
        ['[d-bus service]\nName=org.example.A\nExec=/bin/true\n', /^no \[D-BUS Service\] group$/],
        ['Name=org.example.A\n[D-BUS Service]\n', /^line 1: key=value line before the first \[group\]$/],
        ['# ok\n[D-BUS Service\nName=org.example.A\n', /^line 2: invalid group header/],
        ['[]\n', /^line 1: invalid group header/],
        ['[D-BUS Service] \n', /^line 1: invalid group header/],
        ['[D-BUS\tService]\n', /^line 1: invalid character in group name/],
        ['[D-BUS Service]\n  # indented comment\n', /^line 2: empty key name/],
        ['[D-BUS Service]\n=value\n', /^line 2: empty key name/],
        ['[D-BUS Service]\nName\n', /^line 2: no '=' after key Name$/],
        ['[D-BUS Service]\nName org.example.A\n', /^line 2: invalid character "o" in key name/],
        ['[D-BUS Service]\nName_x=1\n', /^line 2: invalid character "_" in key name/],
        ['[D-BUS Service]\nName=org.example.A\nExec=/bin/true\\q\n', /^line 3: invalid escape sequence \\q/],
        ['[D-BUS Service]\nName=org.example.A\nExec=/bin/true\\\n', /^line 3: the value ends in a backslash$/],
        ['[D-BUS Service]\nName=org.example.A\nExec=/bin/\0true\n', /NUL/],
        [Buffer.from([0x5b, 0x41, 0x5d, 0x0a, 0x4e, 0x3d, 0xff, 0x0a]), /^not valid UTF-8$/],
        [Buffer.alloc(MAX_SERVICE_FILE_SIZE + 1, 0x23), /larger than the limit of 131072/],
        ['[D-BUS Service]\nName=1org.example\nExec=/bin/true\n', /^Name "1org.example" is not a valid well-known bus name$/],
        ['[D-BUS Service]\nName=:1.5\nExec=/bin/true\n', /not a valid well-known bus name/],
        ['[D-BUS Service]\nName=single\nExec=/bin/true\n', /not a valid well-known bus name/],
      ];
      for (const [text, re] of cases) assert.match(parseError(text), re, JSON.stringify(text.toString().slice(0, 60)));
    });

    it('splits Exec into the words /bin/sh makes of it', () => {
      const cases = [
        '/usr/bin/foo  a\tb',
        String.raw`'single  quoted' "double \"q\" \$x \\ \z \`" plain\ space`,
        String.raw`'' "" x`,
        'a#not-a-comment #a comment',
        String.raw`'it'\''s'`,
        String.raw`"a"'b'c d"e f"g`,
        String.raw`x\\y \a "\'"`,
        String.raw`--opt="a b" '--x=$HOME'`,
      ];
      for (const line of cases) assert.deepEqual(splitCommandLine(line), shWords(line), line);
      assert.deepEqual(splitCommandLine('one\ntwo'), ['one', 'two'], 'a newline separates words');
      assert.deepEqual(splitCommandLine('one\\\ntwo "th\\\nree"'), ['onetwo', 'three'], 'backslash-newline joins');
      assert.deepEqual(splitCommandLine('  '), []);
      assert.throws(() => splitCommandLine('a\\'), /ends in a backslash/);
      assert.throws(() => splitCommandLine('"a\\"'), /unclosed double quote/);
    });

    it('knows dbus-daemon\'s standard directories', () => {
      const env = { HOME: '/home/u', XDG_RUNTIME_DIR: '/run/user/7', XDG_DATA_DIRS: '/opt/share:relative:/usr/share' };
      assert.deepEqual(defaultServiceDirs('session', env), [
        { path: '/run/user/7/dbus-1/services', strictNaming: true },
        { path: '/home/u/.local/share/dbus-1/services', strictNaming: false },
        { path: '/opt/share/dbus-1/services', strictNaming: false },
        { path: '/usr/share/dbus-1/services', strictNaming: false },
      ]);
      assert.deepEqual(defaultServiceDirs('session', { HOME: '/h', XDG_DATA_HOME: '/data' }).map((d) => d.path), [
        '/data/dbus-1/services', '/usr/local/share/dbus-1/services', '/usr/share/dbus-1/services',
      ]);
      assert.deepEqual(defaultServiceDirs('system'), [
        { path: '/usr/local/share/dbus-1/system-services', strictNaming: true },
        { path: '/usr/share/dbus-1/system-services', strictNaming: true },
        { path: '/lib/dbus-1/system-services', strictNaming: true },
      ]);
    });
  });

  describe('directories', () => {
    it('lists valid files only; the first directory, then the first file name, wins a name; problems are logged once', () => {
      const high = dir('high');
      const low = dir('low');
      service(high, 'b-first.service', '[D-BUS Service]\nName=org.example.Dup\nExec=/bin/high\n');
      service(high, 'c-second.service', '[D-BUS Service]\nName=org.example.Dup\nExec=/bin/high-too\n');
      service(low, 'org.example.Dup.service', '[D-BUS Service]\nName=org.example.Dup\nExec=/bin/low\n');
      service(low, 'org.example.Low.service', '[D-BUS Service]\nName=org.example.Low\nExec=/bin/low\n');
      const broken = service(low, 'broken.service', '[D-BUS Service]\nName=org.example.Broken\n');
      service(low, 'org.example.Ignored.txt', '[D-BUS Service]\nName=org.example.Ignored\nExec=/bin/x\n');
      const m = manager({ dirs: [high, path.join(tmp, 'missing'), low] });
      assert.deepEqual(m.listActivatable(), ['org.example.Dup', 'org.example.Low']);
      assert.equal(m.isActivatable('org.example.Broken'), false);
      assert.equal(m.isActivatable('org.example.Ignored'), false);
      const warnings = logs.matching(/warn/);
      assert.equal(warnings.length, 1, warnings.join('\n'));
      assert.ok(warnings[0]!.includes(`service file ${broken}: no Exec key in [D-BUS Service]; skipped`), warnings[0]);
      assert.equal(logs.matching(/already provided/).length, 2);
      assert.ok(logs.matching(/already provided/)[0]!.includes(`${path.join(high, 'c-second.service')}: org.example.Dup is already provided by ${path.join(high, 'b-first.service')}`));
      // Rescans do not repeat what was already said.
      m.isActivatable('org.example.Nothing');
      m.listActivatable();
      assert.equal(logs.matching(/warn/).length, 1);
      assert.equal(logs.matching(/already provided/).length, 2);
    });

    it('starts the Exec of the file that wins', async () => {
      const high = dir('high');
      const low = dir('low');
      service(high, 'x.service', `[D-BUS Service]\nName=org.example.Dup\nExec=/bin/sh -c 'echo high > "$0/which"; ${TAKE('org.example.Dup')}' ${out}\n`);
      service(low, 'org.example.Dup.service', `[D-BUS Service]\nName=org.example.Dup\nExec=/bin/sh -c 'echo low > "$0/which"; ${TAKE('org.example.Dup')}' ${out}\n`);
      await manager({ dirs: [high, low] }).start('org.example.Dup', marker);
      assert.equal(fs.readFileSync(path.join(out, 'which'), 'utf8'), 'high\n');
    });

    it('finds files added, changed or removed since the last scan when a name is missing, and on reload()', async () => {
      const d = dir('services');
      service(d, 'a.service', '[D-BUS Service]\nName=org.example.A\nExec=/bin/a\n');
      const m = manager({ dirs: [d] });
      assert.deepEqual(m.listActivatable(), ['org.example.A']);
      service(d, 'b.service', '[D-BUS Service]\nName=org.example.B\nExec=/bin/b\n');
      assert.equal(m.isActivatable('org.example.B'), true, 'a new file is found on a miss');
      // Rewritten in place with another name: the stamp (size, times) changes.
      service(d, 'a.service', '[D-BUS Service]\nName=org.example.Renamed\nExec=/bin/a\n');
      assert.equal(m.isActivatable('org.example.Renamed'), true);
      assert.equal(m.isActivatable('org.example.A'), false);
      fs.unlinkSync(path.join(d, 'b.service'));
      assert.deepEqual(m.listActivatable(), ['org.example.Renamed']);
      assert.equal((await rejection(m.start('org.example.B', marker))).errorName, E.SERVICE_UNKNOWN);
      service(d, 'c.service', '[D-BUS Service]\nName=org.example.C\nExec=/bin/c\n');
      m.reload();
      assert.deepEqual(m.listActivatable(), ['org.example.C', 'org.example.Renamed']);
    });

    it('on a system bus, files must be named after their name', () => {
      const d = dir('system');
      service(d, 'org.example.Right.service', '[D-BUS Service]\nName=org.example.Right\nExec=/bin/x\nUser=root\n');
      const wrong = service(d, 'wrong.service', '[D-BUS Service]\nName=org.example.Wrong\nExec=/bin/x\nUser=root\n');
      const m = manager({ dirs: [d], busType: 'system' });
      assert.deepEqual(m.listActivatable(), ['org.example.Right']);
      assert.equal(logs.matching(/warn/).length, 1);
      assert.ok(logs.lines.some((l) => l.includes(`service file ${wrong}: provides org.example.Wrong, so it must be named org.example.Wrong.service`)));
      assert.deepEqual(manager({ dirs: [{ path: d, strictNaming: false }], busType: 'system' }).listActivatable(), ['org.example.Right', 'org.example.Wrong']);
    });
  });

  describe('starting', () => {
    it('fails with ServiceUnknown for a name no file provides', async () => {
      const e = await rejection(manager({ dirs: [dir('empty')] }).start('org.example.None', marker));
      assert.equal(e.errorName, 'org.freedesktop.DBus.Error.ServiceUnknown');
      assert.equal(e.message, 'The name org.example.None was not provided by any .service files');
    });

    it('runs Exec split as written, with the starter variables, the environment and its updates', async () => {
      const d = dir('services');
      const args = path.join(out, 'args');
      service(d, 'org.example.Env.service', [
        '[D-BUS Service]',
        'Name=org.example.Env',
        String.raw`Exec=/bin/sh -c '/usr/bin/env > "$0/env"; printf "%s\\n" "$@" > "$0/args"; ${TAKE('org.example.Env')}' ${out} 'a  b' "c\\\\d" "e\\"f"`,
        '',
      ].join('\n'));
      const m = manager({
        dirs: [d],
        env: { PATH: '/usr/bin:/bin', FROM_OPTS: 'opts', NOTIFY_SOCKET: '/run/systemd/notify', DBUS_STARTER_ADDRESS: 'not this' },
      });
      m.updateEnvironment({ FROM_UPDATE: 'two words', FROM_OPTS: 'updated' });
      m.updateEnvironment(Object.fromEntries([['__proto__', 'a name like any other']]));
      await m.start('org.example.Env', marker);
      assert.equal(fs.readFileSync(args, 'utf8'), 'a  b\nc\\d\ne"f\n');
      const env = envFile();
      assert.equal(env.get('FROM_OPTS'), 'updated');
      assert.equal(env.get('FROM_UPDATE'), 'two words');
      assert.equal(env.get('__proto__'), 'a name like any other');
      assert.equal(env.get('DBUS_STARTER_ADDRESS'), 'unix:path=/run/test-bus');
      assert.equal(env.get('DBUS_STARTER_BUS_TYPE'), 'session');
      assert.equal(env.get('DBUS_SESSION_BUS_ADDRESS'), 'unix:path=/run/test-bus');
      assert.equal(env.has('NOTIFY_SOCKET'), false, "the daemon's own systemd variables are not passed on");
      assert.equal(env.has('HOME'), false, 'a given environment replaces the daemon\'s');
      assert.ok(logs.lines.some((l) => l.includes("Activating service name='org.example.Env' (pid ")));
      assert.ok(logs.lines.some((l) => l.includes("Successfully activated service 'org.example.Env'")));
    });

    function envFile(): Map<string, string> {
      const env = new Map<string, string>();
      for (const l of fs.readFileSync(path.join(out, 'env'), 'utf8').split('\n')) {
        const at = l.indexOf('=');
        if (at > 0) env.set(l.slice(0, at), l.slice(at + 1));
      }
      return env;
    }

    it("passes the daemon's environment by default on a session bus", async () => {
      const d = dir('services');
      shService(d, 'org.example.Env', `/usr/bin/env > "$0/env"; ${TAKE('org.example.Env')}`);
      await manager({ dirs: [d] }).start('org.example.Env', marker);
      const env = envFile();
      assert.equal(env.get('PATH'), process.env['PATH']);
      assert.equal(env.get('HOME'), process.env['HOME']);
    });

    it('logs the output of the child line by line at info, prefixed with the service name', async () => {
      const d = dir('services');
      shService(d, 'org.example.Talk', `echo "to stdout"; printf "partial "; echo "line" >&2; printf "no newline"; ${TAKE('org.example.Talk')}`);
      await manager({ dirs: [d] }).start('org.example.Talk', marker);
      await until('the output', () => logs.matching(/no newline/).length > 0);
      const said = logs.matching(/org\.example\.Talk\[\d+\]: /).map((l) => l.replace(/^.*? info +/, ''));
      assert.ok(said.every((l) => /^org\.example\.Talk\[\d+\]: /.test(l)), said.join('\n'));
      const texts = said.map((l) => l.replace(/^org\.example\.Talk\[\d+\]: /, '')).sort();
      // stdout: "to stdout\npartial no newline" (the last line unterminated); stderr: "line\n".
      assert.deepEqual(texts, ['line', 'partial no newline', 'to stdout']);
      assert.ok(logs.matching(/org\.example\.Talk\[\d+\]: /).every((l) => / info +org\.example\.Talk/.test(l)), 'at info');
    });

    it('fails with Spawn.ExecFailed when the program cannot be run', async () => {
      const d = dir('services');
      service(d, 'org.example.Missing.service', '[D-BUS Service]\nName=org.example.Missing\nExec=/nonexistent/program --flag\n');
      service(d, 'org.example.Bare.service', '[D-BUS Service]\nName=org.example.Bare\nExec=true\n');
      const m = manager({ dirs: [d] });
      const e = await rejection(m.start('org.example.Missing', marker));
      assert.equal(e.errorName, 'org.freedesktop.DBus.Error.Spawn.ExecFailed');
      assert.equal(e.message, 'Failed to execute program /nonexistent/program for org.example.Missing: No such file or directory');
      assert.equal(signals.at(-1)?.aborted, true, 'waitForOwner was told to stop');
      const bare = await rejection(m.start('org.example.Bare', marker));
      assert.equal(bare.errorName, E.EXEC_FAILED, 'no PATH search, as dbus-daemon execs');
    });

    it('fails with Spawn.ChildExited / ChildSignaled when the child dies before the name appears', async () => {
      const d = dir('services');
      shService(d, 'org.example.Exit', 'exit 3');
      shService(d, 'org.example.Signal', 'kill -TERM $$');
      const m = manager({ dirs: [d] });
      const exited = await rejection(m.start('org.example.Exit', marker));
      assert.equal(exited.errorName, 'org.freedesktop.DBus.Error.Spawn.ChildExited');
      assert.equal(exited.message, 'Process org.example.Exit exited with status 3');
      assert.equal(signals.at(-1)?.aborted, true);
      const signaled = await rejection(m.start('org.example.Signal', marker));
      assert.equal(signaled.errorName, 'org.freedesktop.DBus.Error.Spawn.ChildSignaled');
      assert.equal(signaled.message, 'Process org.example.Signal received signal 15 (SIGTERM)');
    });

    it('keeps waiting when the child exits with status 0 before the name appears (it forked)', async () => {
      const d = dir('services');
      shService(d, 'org.example.Forks', `(sleep 0.2; ${TAKE('org.example.Forks')}) & exit 0`);
      const started = Date.now();
      await manager({ dirs: [d] }).start('org.example.Forks', marker);
      assert.ok(Date.now() - started >= 150);
    });

    it('fails with TimedOut after the start timeout and kills the child', async () => {
      const d = dir('services');
      shService(d, 'org.example.Slow', 'echo $$ > "$0/org.example.Slow.pid"; exec sleep 30');
      const m = manager({ dirs: [d], timeoutMs: 300 });
      const started = Date.now();
      const e = await rejection(m.start('org.example.Slow', marker));
      assert.ok(Date.now() - started >= 290);
      assert.equal(e.errorName, 'org.freedesktop.DBus.Error.TimedOut');
      assert.equal(e.message, "Failed to activate service 'org.example.Slow': timed out (service_start_timeout=300ms)");
      const pid = readPid('org.example.Slow');
      await until('the child to be killed', () => !alive(pid));
    });

    it('shares one child between concurrent starts of a name, success or failure', async () => {
      const d = dir('services');
      shService(d, 'org.example.Once', `echo run >> "$0/runs"; sleep 0.2; ${TAKE('org.example.Once')}`);
      shService(d, 'org.example.Fails', 'echo run >> "$0/fails"; sleep 0.1; exit 7');
      const m = manager({ dirs: [d] });
      let calls = 0;
      const counting: WaitForOwner = (name, signal) => {
        calls++;
        return marker(name, signal);
      };
      await Promise.all([m.start('org.example.Once', counting), m.start('org.example.Once', counting), m.start('org.example.Once', counting)]);
      assert.equal(fs.readFileSync(path.join(out, 'runs'), 'utf8'), 'run\n');
      assert.equal(calls, 1);
      const [a, b] = await Promise.all([rejection(m.start('org.example.Fails', marker)), rejection(m.start('org.example.Fails', marker))]);
      assert.equal(a, b);
      assert.equal(a.message, 'Process org.example.Fails exited with status 7');
      assert.equal(fs.readFileSync(path.join(out, 'fails'), 'utf8'), 'run\n');
      // Over: the next start runs the service again.
      await rejection(m.start('org.example.Fails', marker));
      assert.equal(fs.readFileSync(path.join(out, 'fails'), 'utf8'), 'run\nrun\n');
    });

    it('limits the starts in flight (LimitsExceeded); close() abandons pending starts and leaves children running', async () => {
      const d = dir('services');
      shService(d, 'org.example.Hangs', 'echo $$ > "$0/org.example.Hangs.pid"; exec sleep 30');
      shService(d, 'org.example.Other', TAKE('org.example.Other'));
      const m = manager({ dirs: [d], maxPending: 1 });
      const hanging = m.start('org.example.Hangs', marker);
      const limited = await rejection(m.start('org.example.Other', marker));
      assert.equal(limited.errorName, 'org.freedesktop.DBus.Error.LimitsExceeded');
      assert.match(limited.message, /max_pending_service_starts=1/);
      assert.equal((await rejection(m.start('org.example.Hangs', marker))).errorName, E.LIMITS_EXCEEDED, 'joining counts too');
      await until('the child', () => fs.existsSync(path.join(out, 'org.example.Hangs.pid')));
      const pid = readPid('org.example.Hangs');
      m.close();
      const abandoned = await rejection(hanging);
      assert.equal(abandoned.errorName, 'org.freedesktop.DBus.Error.Failed');
      assert.equal(signals.at(-1)?.aborted, true);
      await sleep(50);
      assert.ok(alive(pid), 'the service is not killed');
      assert.equal((await rejection(m.start('org.example.Other', marker))).errorName, E.FAILED);
    });

    it('does not list a SystemdService file without Exec; lists one whose Exec does not split, and fails its start', async () => {
      const d = dir('services');
      service(d, 'org.example.Unit.service', '[D-BUS Service]\nName=org.example.Unit\nSystemdService=dbus-org.example.Unit.service\n');
      service(d, 'org.example.Unclosed.service', '[D-BUS Service]\nName=org.example.Unclosed\nExec=/bin/sh "-c\n');
      service(d, 'org.example.Empty.service', '[D-BUS Service]\nName=org.example.Empty\nExec=\n');
      const m = manager({ dirs: [d] });
      assert.equal(m.isActivatable('org.example.Unit'), false);
      assert.deepEqual(m.listActivatable(), ['org.example.Empty', 'org.example.Unclosed']);
      const unclosed = await rejection(m.start('org.example.Unclosed', marker));
      assert.equal(unclosed.errorName, 'org.freedesktop.DBus.Error.InvalidArgs');
      assert.match(unclosed.message, /unclosed double quote/);
      assert.equal((await rejection(m.start('org.example.Empty', marker))).errorName, 'org.freedesktop.DBus.Error.Spawn.ExecFailed');
    });
  });

  describe('systemd activation', () => {
    /** systemd's side: what the driver sent it; `reachable` false makes the link refuse, as for a kdbus systemd. */
    function systemdLink(reachable = true): SystemdLink & { sent: Array<{ m: Message; toConnection: boolean }> } {
      const sent: Array<{ m: Message; toConnection: boolean }> = [];
      return {
        sent,
        send(m, toConnection) {
          if (!reachable) throw new ActivationError(E.FAILED, 'org.freedesktop.systemd1 is owned by a kdbus connection');
          sent.push({ m, toConnection });
        },
      };
    }
    const up = (name: string): void => fs.writeFileSync(path.join(out, `${name}.up`), '');

    it('asks systemd for the unit once systemd has its name, instead of running Exec, and is done when the name appears', async () => {
      const d = dir('services');
      shService(d, 'org.example.Unit', TAKE('org.example.Unit'), 'SystemdService=example-unit.service\n');
      const link = systemdLink();
      const m = manager({ dirs: [d], systemd: link });
      const started = m.start('org.example.Unit', marker);
      await sleep(50);
      assert.equal(link.sent.length, 0, 'nothing is sent while systemd is not on the bus');
      up('org.freedesktop.systemd1');
      await until('the request', () => link.sent.length === 1);
      const { m: request, toConnection } = link.sent[0]!;
      assert.equal(toConnection, false, 'a signal to the name');
      assert.deepEqual([request.type, request.path, request.interface, request.member, request.sender, request.destination, request.signature, request.body],
        [4, '/org/freedesktop/DBus', 'org.freedesktop.systemd1.Activator', 'ActivationRequest', 'org.freedesktop.DBus', 'org.freedesktop.systemd1', 's', ['example-unit.service']]);
      assert.equal(fs.existsSync(path.join(out, 'org.example.Unit.up')), false, 'Exec did not run');
      up('org.example.Unit');
      await started;
    });

    it("fails the starts waiting for a unit with systemd's error (Failed for a name that is none); other units wait on", async () => {
      const d = dir('services');
      for (const [name, unit] of [['org.example.A', 'shared.service'], ['org.example.B', 'shared.service'], ['org.example.C', 'other.service']]) {
        service(d, `${name}.service`, `[D-BUS Service]\nName=${name}\nExec=/bin/false\nSystemdService=${unit}\n`);
      }
      up('org.freedesktop.systemd1');
      const m = manager({ dirs: [d], systemd: systemdLink() });
      const a = rejection(m.start('org.example.A', marker));
      const b = rejection(m.start('org.example.B', marker));
      let cDone = false;
      const c = m.start('org.example.C', marker).finally(() => (cDone = true));
      await sleep(50);
      m.systemdFailure('shared.service', 'org.freedesktop.systemd1.NoSuchUnit', 'Unit shared.service not found.');
      for (const e of [await a, await b]) {
        assert.equal(e.errorName, 'org.freedesktop.systemd1.NoSuchUnit');
        assert.equal(e.message, 'Unit shared.service not found.');
      }
      await sleep(50);
      assert.equal(cDone, false, 'a start of another unit waits on');
      m.systemdFailure('other.service', 'not an error name', 'it failed');
      const e = await rejection(c);
      assert.deepEqual([e.errorName, e.message], [E.FAILED, 'it failed']);
    });

    it('fails when systemd is out of reach, and times out when it never comes', async () => {
      const d = dir('services');
      service(d, 'org.example.Unit.service', '[D-BUS Service]\nName=org.example.Unit\nExec=/bin/false\nSystemdService=example-unit.service\n');
      const waiting = manager({ dirs: [d], systemd: systemdLink(), timeoutMs: 200 });
      const late = await rejection(waiting.start('org.example.Unit', marker));
      assert.equal(late.errorName, E.TIMED_OUT);
      up('org.freedesktop.systemd1');
      const unreachable = await rejection(manager({ dirs: [d], systemd: systemdLink(false) }).start('org.example.Unit', marker));
      assert.deepEqual([unreachable.errorName, unreachable.message], [E.FAILED, 'org.freedesktop.systemd1 is owned by a kdbus connection']);
    });

    it('waits for systemd itself without a file, and passes environment updates on to it', async () => {
      const link = systemdLink();
      const m = manager({ dirs: [], systemd: link });
      assert.equal(manager({ dirs: [] }).isActivatable('org.freedesktop.systemd1'), false, 'not without systemd activation');
      assert.equal(m.isActivatable('org.freedesktop.systemd1'), true);
      assert.deepEqual(m.listActivatable(), []);
      const started = m.start('org.freedesktop.systemd1', marker);
      up('org.freedesktop.systemd1');
      await started;
      m.updateEnvironment({ A: '1', B: 'two words' });
      assert.equal(link.sent.length, 1);
      const { m: call, toConnection } = link.sent[0]!;
      assert.equal(toConnection, true, 'a call to the connection');
      assert.deepEqual([call.type, call.flags, call.path, call.interface, call.member, call.signature, call.body],
        [1, 1, '/org/freedesktop/systemd1', 'org.freedesktop.systemd1.Manager', 'SetEnvironment', 'as', [['A=1', 'B=two words']]]);
    });
  });

  describe('system bus', () => {
    const ids = (user: string, flag: string): string => execFileSync('/usr/bin/id', [flag, user], { encoding: 'utf8' }).trim();
    const idScript = (name: string): string =>
      `/usr/bin/id -u > "$0/${name}.uid"; /usr/bin/id -g > "$0/${name}.gid"; /usr/bin/id -G > "$0/${name}.groups"; /usr/bin/env > "$0/${name}.env"; ${TAKE(name)}`;
    const result = (name: string, what: string): string => fs.readFileSync(path.join(out, `${name}.${what}`), 'utf8').trim();

    it('runs the service as its User (uid, gid, groups) with only the starter variables', async function () {
      requireOrSkip(this, process.geteuid!() === 0, 'root (to run services as their User)');
      const d = dir('system');
      shService(d, 'org.example.Nobody', idScript('org.example.Nobody'), 'User=nobody\n');
      const m = manager({ dirs: [d], busType: 'system' });
      await m.start('org.example.Nobody', marker);
      assert.equal(result('org.example.Nobody', 'uid'), ids('nobody', '-u'));
      assert.equal(result('org.example.Nobody', 'gid'), ids('nobody', '-g'));
      assert.equal(result('org.example.Nobody', 'groups'), ids('nobody', '-G'));
      const env = result('org.example.Nobody', 'env').split('\n').map((l) => l.slice(0, l.indexOf('='))).sort();
      // sh adds PWD of its own; nothing of the daemon's environment arrives.
      assert.deepEqual(env.filter((k) => k !== 'PWD'), ['DBUS_STARTER_ADDRESS', 'DBUS_STARTER_BUS_TYPE', 'DBUS_SYSTEM_BUS_ADDRESS']);
      assert.match(fs.readFileSync(path.join(out, 'org.example.Nobody.env'), 'utf8'), /^DBUS_STARTER_BUS_TYPE=system$/m);
    });

    it('sets the supplementary groups of the User, as initgroups() does', async function () {
      requireOrSkip(this, process.geteuid!() === 0, 'root (to run services as their User)');
      // A user that is a member of some group other than its primary one, if the machine has one.
      const member = fs.readFileSync('/etc/group', 'utf8').split('\n')
        .map((l) => l.split(':')[3]?.split(',')[0])
        .find((u): u is string => !!u && ids(u, '-G').includes(' '));
      requireOrSkip(this, member !== undefined, 'a user that belongs to a supplementary group (/etc/group)');
      if (!member) return;
      const name = 'org.example.Member';
      const d = dir('system');
      shService(d, name, idScript(name), `User=${member}\n`);
      await manager({ dirs: [d], busType: 'system' }).start(name, marker);
      assert.equal(result(name, 'uid'), ids(member, '-u'));
      assert.equal(result(name, 'groups'), ids(member, '-G'));
    });

    it('refuses a file without User (FileInvalid), an unknown user (FailedToSetup) and environment updates (AccessDenied)', async () => {
      const d = dir('system');
      shService(d, 'org.example.NoUser', TAKE('org.example.NoUser'));
      shService(d, 'org.example.Ghost', TAKE('org.example.Ghost'), 'User=no-such-user-here\n');
      const m = manager({ dirs: [d], busType: 'system' });
      assert.equal((await rejection(m.start('org.example.NoUser', marker))).errorName, 'org.freedesktop.DBus.Error.Spawn.FileInvalid');
      const ghost = await rejection(m.start('org.example.Ghost', marker));
      assert.equal(ghost.errorName, 'org.freedesktop.DBus.Error.Spawn.FailedToSetup');
      assert.match(ghost.message, /cannot find user 'no-such-user-here'/);
      assert.throws(() => m.updateEnvironment({ A: 'b' }), (e: unknown) => e instanceof ActivationError && e.errorName === E.ACCESS_DENIED);
      assert.equal(fs.existsSync(path.join(out, 'org.example.NoUser.up')), false);
    });
  });

  describe('waitForName on a bus', () => {
    let tb: TestBus;
    let node: KdbusNode;
    const open: LocalConnection[] = [];
    const me = (): LocalIdentity => ({ creds: selfCreds(), pid: process.pid, privileged: false });
    const connect = (): LocalConnection => {
      const lc = LocalConnection.open(node, me(), { attachFlagsRecv: 0n });
      open.push(lc);
      return lc;
    };
    beforeEach(async () => {
      tb = await TestBus.create({ bloomSize: 64, nHash: 8 });
      node = { kind: 'endpoint', ep: tb.bus.defaultEndpoint };
    });
    afterEach(() => {
      for (const lc of open.splice(0)) lc.close();
      tb.destroy();
    });
    const busySlices = (lc: LocalConnection): number => lc.handle.connection!.pool.busySlices;

    it('starts a service and resolves when the name is taken on the bus; the watch is gone afterwards', async () => {
      const d = dir('services');
      shService(d, 'org.example.Bus', 'echo started > "$0/org.example.Bus.started"');
      const watcher = connect();
      const owner = connect();
      const m = manager({ dirs: [d] });
      let done = false;
      const started = m.start('org.example.Bus', (n, s) => waitForName(watcher, n, s)).then(() => (done = true));
      await until('the child to run', () => fs.existsSync(path.join(out, 'org.example.Bus.started')));
      await sleep(20);
      assert.equal(done, false, 'no owner yet');
      owner.acquireName('org.example.Bus');
      await started;
      owner.releaseName('org.example.Bus');
      owner.acquireName('org.example.Bus');
      await sleep(10);
      assert.equal(busySlices(watcher), 0, 'the matches were removed: nothing more reaches the watcher');
    });

    it('resolves at once for an owned name; an activator does not count, its successor does', async () => {
      const watcher = connect();
      const owner = connect();
      owner.acquireName('org.example.Owned');
      await waitForName(watcher, 'org.example.Owned', new AbortController().signal);

      let done = 0;
      // One wait sees the activator arrive (NAME_ADD), one starts while it holds the name.
      const before = waitForName(watcher, 'org.example.Activatable', new AbortController().signal).then(() => done++);
      const activator = await tb.conn({ flags: HelloFlags.ACTIVATOR, items: (w) => w.string(ItemType.NAME, 'org.example.Activatable') });
      const after = waitForName(watcher, 'org.example.Activatable', new AbortController().signal).then(() => done++);
      await sleep(20);
      assert.equal(done, 0, 'held by an activator only');
      owner.acquireName('org.example.Activatable');
      await Promise.all([before, after]);
      activator.close();
    });

    it('rejects with the abort reason and removes its matches', async () => {
      const watcher = connect();
      const owner = connect();
      const ac = new AbortController();
      const waiting = waitForName(watcher, 'org.example.Never', ac.signal);
      const other = waitForName(watcher, 'org.example.Other', new AbortController().signal);
      ac.abort(new Error('given up'));
      await assert.rejects(waiting, /given up/);
      owner.acquireName('org.example.Other');
      await other;
      owner.acquireName('org.example.Never');
      await sleep(10);
      assert.equal(busySlices(watcher), 0);
      await assert.rejects(waitForName(watcher, 'org.example.X', ac.signal), /given up/, 'an aborted signal rejects at once');
    });
  });
});
