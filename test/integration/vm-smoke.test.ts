/**
 * The VM harness (test/vm) boots Debian's kernel, which has CUSE, under qemu, and this suite
 * checks what every VM test relies on: the guest kernel, /dev/cuse, the host's node inside
 * the guest, a CUSE device served from userland, and the harness's own job handling.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { requireOrSkip } from '../helpers/require';
import { Vm } from '../vm/vm';

const CUSE_SMOKE = path.resolve(__dirname, '../vm/cuse-smoke.js');
/** Debian 12's kernel series, the one the harness is built for. */
const KERNEL_SERIES = /^6\.1\.\d+-\d+-amd64$/;
/** include/linux/miscdevice.h: CUSE_MINOR, on MISC_MAJOR 10. */
const MISC_MAJOR = 10;
const CUSE_MINOR = 203;
const O_ACCMODE = 3;
const O_RDONLY = 0;

describe('VM with a CUSE kernel (qemu, TCG)', function () {
  this.timeout(120_000);
  let vm: Vm | undefined;

  before(async function () {
    const missing = Vm.unavailableReason();
    requireOrSkip(this, missing === undefined, `the test VM: ${missing}`);
    vm = await Vm.boot();
  });

  after(async function () {
    await vm?.shutdown();
  });

  function guest(): Vm {
    assert.ok(vm, 'the VM did not boot');
    return vm;
  }

  it('runs the 6.1 kernel', async function () {
    const r = await guest().run('uname -r');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.trim(), KERNEL_SERIES);
  });

  it('has /dev/cuse as misc 10:203', async function () {
    // stat prints the device numbers in hex.
    const r = await guest().run("stat -c '%F %t:%T' /dev/cuse && grep -w cuse /proc/misc");
    assert.equal(r.code, 0, r.stderr);
    const [kind, misc] = r.stdout.trim().split('\n');
    assert.equal(kind, `character special file ${MISC_MAJOR.toString(16)}:${CUSE_MINOR.toString(16)}`);
    assert.match(misc ?? '', new RegExp(`^\\s*${CUSE_MINOR} cuse$`));
  });

  it("runs the host's node", async function () {
    const r = await guest().run('node --version');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), process.version);
  });

  it('serves a CUSE device from userland (init, node, open, release, removal)', async function () {
    const r = await guest().run(`node ${CUSE_SMOKE}`, { timeoutMs: 60_000 });
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
    const seen = JSON.parse(r.stdout) as {
      kernel: { major: number; minor: number; flags: number };
      node: { major: number; minor: number };
      sysfsDev: string;
      open: { nodeid: number; flags: number; byClient: boolean };
      release: { fh: number };
      removed: boolean;
    };
    assert.equal(seen.kernel.major, 7);
    assert.ok(seen.kernel.minor >= 16, `kernel FUSE minor ${seen.kernel.minor}`);
    assert.equal(seen.kernel.flags & 1, 1, 'the kernel offers CUSE_UNRESTRICTED_IOCTL');
    assert.notEqual(seen.node.major, 0, 'a dynamic major was allocated');
    assert.equal(seen.sysfsDev, `${seen.node.major}:${seen.node.minor}`);
    assert.equal(seen.open.nodeid, 0, 'CUSE requests carry nodeid 0');
    assert.equal(seen.open.flags & O_ACCMODE, O_RDONLY, 'the client opened the node for reading');
    assert.equal(seen.open.byClient, true, "the request header carries the opener's pid");
    assert.equal(seen.release.fh, 1, 'FUSE_RELEASE carries the fh the open reply gave');
    assert.equal(seen.removed, true);
  });

  it('passes cwd, env, exit status and both output streams', async function () {
    const dir = path.join(guest().shareDir, 'cwd-check');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'from-host'), 'hello\n');
    const r = await guest().run('cat from-host; echo "$GREETING" >&2; echo back > from-guest; exit 7', {
      cwd: dir,
      env: { GREETING: "it's me" },
    });
    assert.deepEqual(r, { code: 7, stdout: 'hello\n', stderr: "it's me\n" });
    assert.equal(fs.readFileSync(path.join(dir, 'from-guest'), 'utf8'), 'back\n');
  });

  it('kills a job at its time limit, with everything it started', async function () {
    await assert.rejects(guest().run('sleep 600 & echo started; wait', { timeoutMs: 1000 }), /timed out[\s\S]*started/);
    // One argument per line; processes that exit meanwhile make cat complain, which is fine.
    const r = await guest().run(`cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n'`);
    assert.match(r.stdout, /^\/init$/m, 'the process listing works');
    assert.doesNotMatch(r.stdout, /^sleep\n600$/m);
  });

  it('stops a running job on request', async function () {
    const marker = path.join(guest().shareDir, 'stop-check');
    const job = guest().start(`touch ${marker}; exec sleep 600`);
    while (!fs.existsSync(marker)) await new Promise((r) => setTimeout(r, 20));
    const r = await job.stop('TERM');
    assert.equal(r.code, 128 + 15);
  });
});
