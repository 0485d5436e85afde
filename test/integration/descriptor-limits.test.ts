/**
 * The daemon against one user's many connections, held to 256 descriptors (prlimit):
 * descriptors sent with messages or frames that never finish are capped per connection and
 * per user, on the legacy endpoint and on the socket transport, and so are connections.
 * Other clients are served throughout. (How a listener that runs out of descriptors all the
 * same waits is test/unit/unix-listener.test.ts's.)
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { descriptorShares } from '../../src/os/held-budget';
import { MAX_FDS_PER_READ } from '../../src/transport/client-socket';
import { DEFAULT_LEGACY_LIMITS } from '../../src/dbus1/legacy-client';
import { busUnavailable, driverCall, hasCommand, LEGACY_SCRIPTS, Proc, PYTHON, pythonHas, run, startBus, type LegacyBus } from '../helpers/legacy-bus';
import { requireOrSkip } from '../helpers/require';

const MAX_OPEN_FILES = 256;
const SCRIPT = path.join(LEGACY_SCRIPTS, 'limits.py');

describe('descriptor limits (kdbus-cuse with 256 descriptors)', function () {
  this.timeout(60_000);
  let dir: string;
  let bus: LegacyBus;

  before(async function () {
    const missing = busUnavailable('kdbus-cuse') ?? (hasCommand('prlimit') && hasCommand('setpriv') ? undefined : 'prlimit and setpriv (util-linux)') ??
      (pythonHas('gi') ? undefined : `${PYTHON} with python3-gi`);
    requireOrSkip(this, missing === undefined, missing ?? '');
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'descriptor-limits-'));
    bus = await startBus('kdbus-cuse', dir, { maxOpenFiles: MAX_OPEN_FILES });
  });

  after(async () => {
    await bus?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && bus) this.currentTest.err!.message += `\n${bus.proc.tail(15)}`;
  });

  it("legacy endpoint: closes the connection whose descriptors of unfinished messages exceed its user's share, and only that one", async () => {
    const share = descriptorShares(MAX_OPEN_FILES, DEFAULT_LEGACY_LIMITS.maxFdsPerMessage).perUser;
    const r = await run(PYTHON, [SCRIPT, bus.socketPath, 'held', String(share)], { timeoutMs: 30_000 });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), ['over-the-share closed', 'holder open', 'after-release open']);
    assert.equal((await driverCall(bus, 'GetId')).code, 0);
  });

  it('socket transport: closes a session holding more than two frames of descriptors, and one over its user\'s share', async () => {
    const share = descriptorShares(MAX_OPEN_FILES, 2 * MAX_FDS_PER_READ).perUser;
    const r = await run(PYTHON, [SCRIPT, path.join(dir, 'kdbus.sock'), 'frames', String(share)], { timeoutMs: 30_000 });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), ['over-the-session-cap closed', 'over-the-share closed', 'holder open']);
    assert.match(bus.proc.stderr + bus.proc.stdout, new RegExp(`would hold ${share + 1} descriptors of unfinished messages, more than the ${share} one user may`));
  });

  it("a user's flood of connections: kept to its share of the daemon's descriptors, said once, other users served", async () => {
    const share = descriptorShares(MAX_OPEN_FILES, 1).perUser;
    const flood = new Proc('limits.py flood', PYTHON, [SCRIPT, bus.socketPath, 'flood', String(MAX_OPEN_FILES + 50)]);
    try {
      const open = await flood.waitForLine(/^OPEN (\d+)/);
      assert.equal(Number(open[1]), share, 'connections the bus kept');
      fs.chmodSync(dir, 0o755);
      const other = await new Promise<string>((resolve) => {
        const child = spawn(PYTHON, [SCRIPT, bus.socketPath, 'hello', '0'], { uid: 65534, gid: 65534 });
        let out = '';
        child.stdout.on('data', (b: Buffer) => (out += b.toString()));
        child.stderr.on('data', (b: Buffer) => (out += b.toString()));
        child.on('close', () => resolve(out.trim()));
      });
      assert.equal(other, 'registered', 'another user says Hello meanwhile');
      const log = bus.proc.stdout + bus.proc.stderr;
      assert.equal((log.match(/refusing clients of uid 0 /g) ?? []).length, 1, 'one warning for the flood');
      assert.doesNotMatch(log, /out of file descriptors/);
      flood.write('close\n');
    } finally {
      await flood.stop();
    }
    assert.equal((await driverCall(bus, 'GetId')).code, 0);
  });
});
