/**
 * The client preload library (shim/) and its C tests (test/shim/): both builds compile with
 * the project's flags and depend on nothing but libc, the unit test of paths, frames,
 * prefetch and holders passes, the shim serves a mock daemon correctly (threads, fork, exec,
 * FETCH, passed and installed files, pool mapping, poll, release at the last close, end of
 * stream), and programs that do not use kdbus behave exactly as without it.
 */
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { requireOrSkip } from '../helpers/require';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const TESTS = path.join(ROOT, 'shim', 'build', 'test');

type Libc = 'glibc' | 'musl';

/** The functions the shim interposes; glibc has more entry points for the same calls. */
const COMMON = [
  'close', 'dup', 'dup2', 'dup3', 'epoll_ctl', 'fcntl', 'ioctl', 'mmap', 'open', 'openat', 'poll', 'ppoll', 'pread', 'pselect', 'pwrite',
  'read', 'readv', 'select', 'write', 'writev',
];
const GLIBC_ONLY = ['__open64_2', '__open_2', '__openat64_2', '__openat_2', '__poll_chk', '__ppoll_chk', 'close_range', 'closefrom', 'fcntl64', 'mmap64', 'open64', 'openat64', 'pread64', 'pwrite64'];

function run(cmd: string, args: string[], env: Record<string, string> = {}): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60000 });
}

function succeeds(r: SpawnSyncReturns<string>, what: string): string {
  assert.equal(r.error, undefined, `${what}: ${r.error?.message}`);
  assert.equal(r.status, 0, `${what} exited with ${r.status}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

function available(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;
}

function shimPath(libc: Libc): string {
  return path.join(ROOT, 'shim', 'build', libc, 'libkdbus-cuse-shim.so');
}

/** Dynamic symbols the library defines, and the libraries it needs. */
function linkage(lib: string): { exported: string[]; needed: string[] } {
  const syms = succeeds(run('readelf', ['--dyn-syms', '-W', lib]), 'readelf --dyn-syms');
  const exported = syms
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 8 && f[3] === 'FUNC' && f[4] === 'GLOBAL' && f[6] !== 'UND')
    .map((f) => f[7]!.replace(/@.*/, ''))
    .filter((name) => name !== '_init' && name !== '_fini')
    .sort();
  const dynamic = succeeds(run('readelf', ['-d', lib]), 'readelf -d');
  const needed = [...dynamic.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]!);
  return { exported, needed };
}

function checkLines(out: string, expected: string[]): void {
  const failed = out.split('\n').filter((l) => l.startsWith('not ok'));
  assert.deepEqual(failed, [], 'failed checks');
  for (const line of expected) assert.ok(out.includes(`ok - ${line}\n`), `missing check "${line}" in:\n${out}`);
}

function suite(libc: Libc, compiler: string): void {
  describe(`shim (${libc})`, function () {
    this.timeout(60000);

    before(function () {
      requireOrSkip(this, available(compiler), `${compiler}${libc === 'musl' ? ' (musl-tools)' : ''}`);
      succeeds(run('make', ['-C', 'shim', libc]), `make -C shim ${libc}`);
      succeeds(run('make', ['-C', 'test/shim', libc]), `make -C test/shim ${libc}`);
    });

    it('builds a library that needs only libc and exports only the interposed functions', () => {
      const lib = shimPath(libc);
      assert.ok(fs.existsSync(lib), `${lib} was not built`);
      const { exported, needed } = linkage(lib);
      const want = (libc === 'glibc' ? [...COMMON, ...GLIBC_ONLY] : COMMON).slice().sort();
      assert.deepEqual(exported, want);
      // glibc before 2.34 adds libdl and libpthread, which are parts of libc there.
      const libcOnly = libc === 'glibc' ? /^(libc\.so\.6|libdl\.so\.2|libpthread\.so\.0)$/ : /^libc\.so$/;
      for (const n of needed) assert.match(n, libcOnly);
      assert.ok(needed.some((n) => n.startsWith('libc.so')), `no libc among ${needed.join(', ')}`);
    });

    it('passes the unit test of paths, frames, prefetch and holders', () => {
      const out = succeeds(run(path.join(TESTS, libc, 'unit'), []), 'unit');
      checkLines(out, [
        'normalize /dev//kdbus/./0-system/../0-system/bus',
        'IOCTL head layout',
        'SEND: FDS, MEMFD and CANCEL_FD numbers, each once, -1 for a closed one',
        'SEND: vectors are read up to 2 MiB in total',
        'a process that exited holding references does not count',
        'a HEAD left in place with the next behind it, and WAKEs among HEADs',
        'a HUP, alone or behind a HEAD, says no',
      ]);
      assert.match(out, /PASSED: 0 failed/);
    });

    it('serves kdbus descriptors over the socket protocol (mock daemon)', () => {
      const out = succeeds(
        run(path.join(TESTS, libc, 'conn-test'), [path.join(TESTS, libc, 'mock-daemon')], { LD_PRELOAD: shimPath(libc) }),
        'conn-test',
      );
      checkLines(out, [
        'no daemon: open fails with connect\'s ECONNREFUSED',
        'mmap maps the pool',
        'SEND: vector data and passed files reach the daemon',
        'installed files are on the numbers the daemon wrote',
        'FETCH answered from the caller\'s memory',
        'a forked child\'s FETCH, RECV and BYEBYE on the shared connection',
        'the parent\'s SEND gets its reply, FETCHed from the parent',
        'four threads, 1200 ioctls on one connection',
        'RECV on an empty queue: EAGAIN without asking the daemon',
        'FREE of the published slice: answered here, sent on without waiting',
        'closing every other descriptor leaves the shim\'s own alone',
        'a child exec\'ed with the descriptor uses it',
        'the last close releases the handle before close() returns',
        'a forked child\'s reference keeps the connection open',
        'after HUP the descriptor polls POLLERR|POLLHUP, as kdbus\'s did',
        'after HUP and the end of the stream: ECONNRESET',
      ]);
      assert.match(out, /after exec: descriptors pass with an ioctl/);
    });

    it('serves CUSE devices through the side channel, poll, select and epoll included (mock daemon)', () => {
      const out = succeeds(run(path.join(TESTS, libc, 'cuse-test'), [path.join(TESTS, libc, 'mock-daemon')]), 'cuse-test');
      checkLines(out, [
        'after RECV the files are on the numbers the message names (FDS and memfd)',
        'a RECV waits for files the daemon sends late',
        'four threads, 100 RECVs with files over one side channel',
        'on an empty queue poll waits on the side channel, not on the device',
        'a WAKE that comes while poll waits ends the wait',
        'a WAKE another thread reads off the channel wakes the poller too (20 rounds)',
        'a thread cancelled in poll leaves the file as it was',
        'after a HUP, POLLERR and POLLHUP as kdbus gave them',
        'on an empty queue select waits on the side channel, not on the device',
        'a descriptor that is not open in the sets: EBADF',
        'EPOLL_CTL_ADD registers two stand-ins (the READY eventfd and the channel), not the device',
        'the channel saying the queue is empty, the shim empties a count the daemon left',
        'after a WAKE it leaves the count alone',
        'a channel the daemon closed reports EPOLLHUP, with the program\'s data',
        'a dup2 onto a stand-in\'s number moves it, in the set too',
        'a channel that broke takes its stand-ins out; the device itself goes back to the kernel (here /dev/null, which it refuses)',
        'closing the device takes its stand-ins out of the set',
      ]);
    });

    it('changes nothing for descriptors that are not kdbus', () => {
      const plain = succeeds(run(path.join(TESTS, libc, 'passthrough'), [], { KC_EXPECT_SHIM: '0' }), 'passthrough');
      const preloaded = succeeds(
        run(path.join(TESTS, libc, 'passthrough'), [], { KC_EXPECT_SHIM: '1', LD_PRELOAD: shimPath(libc) }),
        'passthrough with the shim',
      );
      assert.match(plain, /^pread got HELLO$/m);
      assert.equal(preloaded, plain);
    });

    if (libc === 'glibc') {
      it('runs sh, python3 and node unchanged', () => {
        const out = succeeds(run(path.join(ROOT, 'test', 'shim', 'run-programs.sh'), [shimPath('glibc')]), 'run-programs.sh');
        checkLines(out, ['sh pipelines']);
        for (const program of ['python3', 'node']) assert.match(out, new RegExp(`^(ok|skip) - ${program}`, 'm'));
      });
    }
  });
}

suite('glibc', 'cc');
suite('musl', 'musl-gcc');
