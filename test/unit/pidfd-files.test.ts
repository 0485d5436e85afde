/**
 * Taking descriptors out of a live child process with pidfd_getfd and classifying them the
 * way kdbus's SEND did (message.c kdbus_get_fd/kdbus_get_memfd, connection.c CANCEL_FD).
 */
import assert from 'node:assert/strict';
import { requireOrSkip } from '../helpers/require';
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { KdbusError } from '../../src/abi/errno';
import { ImportedFd, PidfdFiles } from '../../src/os/pidfd-files';
import { memfd_create } from '../../src/os/libc';

const F_SEAL_SEAL = 1;
const F_SEAL_SHRINK = 2;
const F_SEAL_GROW = 4;
const F_SEAL_WRITE = 8;
const S_IFMT = 0o170000;
const S_IFIFO = 0o010000;

function errnoOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof KdbusError) return e.code;
    throw e;
  }
  return 'ok';
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

/** Resolves once `predicate` holds, failing after `ms`. */
async function eventually(predicate: () => boolean, ms: number, what: string): Promise<void> {
  const until = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

// The child opens one file of each kind kdbus distinguishes, reports the numbers, and
// writes to its pipe / eventfd on request.
const CHILD = `
import fcntl, json, os, socket, sys, tempfile
m = os.memfd_create("kdbus-payload", os.MFD_ALLOW_SEALING)
os.write(m, b"hello kdbus")
fcntl.fcntl(m, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
m2 = os.memfd_create("kdbus-open", os.MFD_ALLOW_SEALING)
os.ftruncate(m2, 4096)
fcntl.fcntl(m2, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
r, w = os.pipe()
a, b = socket.socketpair(socket.AF_UNIX)
inet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
f = tempfile.TemporaryFile()
f.write(b"regular"); f.flush()
ev = os.eventfd(0) if hasattr(os, "eventfd") else -1
closed = os.dup(r); os.close(closed)
print(json.dumps(dict(memfd=m, memfd2=m2, pipe=r, unix=a.fileno(), inet=inet.fileno(), file=f.fileno(), eventfd=ev, closed=closed)), flush=True)
for line in sys.stdin:
    if line.strip() == "pipe": os.write(w, b"x")
    if line.strip() == "eventfd": os.eventfd_write(ev, 1)
`;

type Fds = Record<'memfd' | 'memfd2' | 'pipe' | 'unix' | 'inet' | 'file' | 'eventfd' | 'closed', number>;

describe('os/pidfd-files', function () {
  let child: ChildProcess;
  let fds: Fds;
  let files: PidfdFiles;
  const imported: ImportedFd[] = [];
  const take = (fd: number, from = files): ImportedFd => {
    const f = from.get(fd) as ImportedFd;
    imported.push(f);
    return f;
  };

  before(async () => {
    child = spawn('python3', ['-c', CHILD], { stdio: ['pipe', 'pipe', 'inherit'] });
    fds = await new Promise<Fds>((resolve, reject) => {
      let out = '';
      child.on('error', reject);
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve(JSON.parse(out) as Fds);
      });
    });
    files = new PidfdFiles(child.pid!);
  });

  after(async () => {
    for (const f of imported) f.close();
    files.close();
    child.kill();
    await exited(child);
  });

  it('imports a fully sealed memfd with its seals, size and content', () => {
    const f = take(fds.memfd);
    assert.equal(f.kind, 'memfd');
    assert.equal(f.seals, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE);
    assert.equal(f.size, 11);
    assert.equal(f.pollable, false);
    assert.equal(f.read(0, 11).toString(), 'hello kdbus');
    assert.equal(f.read(6, 5).toString(), 'kdbus');
    assert.equal(f.read(6, 100).toString(), 'kdbus');
  });

  it('reports the seals of a partly sealed memfd', () => {
    const f = take(fds.memfd2);
    assert.equal(f.kind, 'memfd');
    assert.equal(f.seals, F_SEAL_SHRINK);
    assert.equal(f.size, 4096);
  });

  it('tells unix sockets from other sockets, pipes and regular files', () => {
    const unix = take(fds.unix);
    assert.equal(unix.kind, 'unix-socket');
    assert.equal(unix.pollable, true);
    assert.equal(unix.seals, 0);

    const inet = take(fds.inet);
    assert.equal(inet.kind, 'other');
    assert.equal(inet.pollable, true);

    const pipe = take(fds.pipe);
    assert.equal(pipe.kind, 'other');
    assert.equal(pipe.pollable, true);

    const file = take(fds.file);
    assert.equal(file.kind, 'other');
    assert.equal(file.pollable, false);
    assert.equal(file.size, 7);
    assert.equal(file.read(0, 7).toString(), 'regular');
  });

  it('counts an eventfd as pollable', function () {
    requireOrSkip(this, fds.eventfd >= 0, 'python3 >= 3.10 (os.eventfd)');
    const ev = take(fds.eventfd);
    assert.equal(ev.kind, 'other');
    assert.equal(ev.pollable, true);
  });

  it('lets the transport decide what a kdbus handle is', () => {
    const byFifo = new PidfdFiles(child.pid!, (_fd, st) => (st.mode & S_IFMT) === S_IFIFO);
    try {
      assert.equal(take(fds.pipe, byFifo).kind, 'kdbus');
      assert.equal(take(fds.unix, byFifo).kind, 'unix-socket');
    } finally {
      byFifo.close();
    }
  });

  it('answers EBADF for numbers the process has no file under', () => {
    assert.equal(errnoOf(() => files.get(fds.closed)), 'EBADF');
    assert.equal(errnoOf(() => files.get(100_000)), 'EBADF');
    assert.equal(errnoOf(() => files.get(-1)), 'EBADF');
  });

  it("answers EBADF for a number the shim holds with a placeholder, as for a closed one", () => {
    const placeholder = memfd_create('kdbus-cuse-reserved', 1);
    const files = new PidfdFiles(process.pid);
    try {
      assert.throws(() => files.get(placeholder), (e: unknown) => e instanceof KdbusError && e.code === 'EBADF');
    } finally {
      files.close();
      fs.closeSync(placeholder);
    }
  });

  it('answers ESRCH for a process that is gone', async () => {
    const gone = spawn('true');
    await exited(gone);
    const dead = new PidfdFiles(gone.pid!);
    assert.equal(errnoOf(() => dead.get(0)), 'ESRCH');
    dead.close();
  });

  it('answers EPERM when the daemon may not take the process\'s files', async function () {
    requireOrSkip(this, process.getuid!() === 0, 'root (to run a child as nobody)');
    // An unprivileged daemon (nobody) reaching into a root-owned process.
    const script = `
      const { PidfdFiles } = require(${JSON.stringify(path.resolve(__dirname, '../../src/os/pidfd-files.js'))});
      try { new PidfdFiles(${child.pid}).get(${fds.memfd}); console.log('ok'); } catch (e) { console.log(e.code); }`;
    const out = await new Promise<string>((resolve, reject) => {
      const p = spawn(process.execPath, ['-e', script], { uid: 65534, gid: 65534, cwd: os.tmpdir(), stdio: ['ignore', 'pipe', 'inherit'] });
      let s = '';
      p.stdout!.on('data', (d: Buffer) => (s += d.toString()));
      p.on('error', reject);
      p.on('exit', () => resolve(s.trim()));
    });
    assert.equal(out, 'EPERM');
  });

  it('fires onReadable once data arrives, not before and not after stop()', async () => {
    const stopped = take(fds.pipe);
    let stoppedFired = false;
    const stop = stopped.onReadable(() => (stoppedFired = true));

    const f = take(fds.pipe);
    let fired = 0;
    f.onReadable(() => fired++);
    await sleep(30);
    assert.equal(fired, 0);

    stop();
    child.stdin!.write('pipe\n');
    await eventually(() => fired === 1, 2000, 'the pipe to poll readable');
    await sleep(20);
    assert.equal(fired, 1);
    assert.equal(stoppedFired, false);
  });

  it('fires onReadable for an eventfd written by the client', async function () {
    requireOrSkip(this, fds.eventfd >= 0, 'python3 >= 3.10 (os.eventfd)');
    const ev = take(fds.eventfd);
    let fired = false;
    ev.onReadable(() => (fired = true));
    await sleep(20);
    assert.equal(fired, false);
    child.stdin!.write('eventfd\n');
    await eventually(() => fired, 2000, 'the eventfd to poll readable');
  });

  it('closes its descriptor once, and wraps descriptors the daemon already holds', () => {
    const tmp = path.join(os.tmpdir(), `kdbus-imported-${process.pid}`);
    fs.writeFileSync(tmp, 'abc');
    const fd = fs.openSync(tmp, 'r');
    fs.unlinkSync(tmp);
    const f = new ImportedFd(fd);
    assert.equal(f.kind, 'other');
    assert.equal(f.size, 3);
    assert.equal(f.fd, fd);
    f.close();
    assert.throws(() => fs.fstatSync(fd), /EBADF/);
    f.close();
  });
});
