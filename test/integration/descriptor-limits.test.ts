/**
 * The daemon against one user's many connections, held to 256 descriptors (prlimit):
 * descriptors sent with messages or frames that never finish are capped per connection and
 * per user, on the legacy endpoint and on the socket transport; and running out of
 * descriptors altogether pauses accepting, without spinning, until connections close.
 * Other clients are served throughout.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { descriptorShares } from '../../src/os/held-budget';
import { MAX_FDS_PER_READ } from '../../src/transport/client-socket';
import { DEFAULT_LEGACY_LIMITS } from '../../src/dbus1/legacy-client';
import { busUnavailable, driverCall, hasCommand, LEGACY_SCRIPTS, Proc, PYTHON, pythonHas, run, sleep, startBus, type LegacyBus } from '../helpers/legacy-bus';
import { requireOrSkip } from '../helpers/require';

const MAX_OPEN_FILES = 256;
const SCRIPT = path.join(LEGACY_SCRIPTS, 'limits.py');

/** CPU time (user + system) the process has used, in clock ticks. */
function cpuTicks(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

describe('descriptor limits (kdbus-cuse with 256 descriptors)', function () {
  this.timeout(60_000);
  let dir: string;
  let bus: LegacyBus;

  before(async function () {
    const missing = busUnavailable('kdbus-cuse') ?? (hasCommand('prlimit') ? undefined : 'prlimit (util-linux)') ??
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

  it('out of descriptors, it stops accepting without spinning, says so once, and accepts again when some close', async () => {
    const flood = new Proc('limits.py flood', PYTHON, [SCRIPT, bus.socketPath, 'flood', String(MAX_OPEN_FILES + 50)]);
    try {
      await flood.waitForLine(/^SENT /);
      await bus.proc.waitFor('the warning', () => /out of file descriptors \(EMFILE/.test(bus.proc.stdout + bus.proc.stderr), 20_000);
      const before = cpuTicks(bus.busPid()!);
      await sleep(2_000);
      const used = cpuTicks(bus.busPid()!) - before;
      assert.ok(used < 50, `the daemon used ${used} ticks of CPU in 2 s while out of descriptors`);
      flood.write('close\n');
      await bus.proc.waitFor('accepting again', () => /accepting connections again/.test(bus.proc.stdout + bus.proc.stderr), 20_000);
      const warnings = (bus.proc.stdout + bus.proc.stderr).match(/out of file descriptors/g) ?? [];
      assert.equal(warnings.length, 1, `one warning for the whole episode:\n${(bus.proc.stdout + bus.proc.stderr).split("\n").filter((l) => /descriptors|accepting/.test(l)).join("\n")}`);
    } finally {
      await flood.stop();
    }
    assert.equal((await driverCall(bus, 'GetId')).code, 0);
  });
});
