import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { UnixListener } from '../../src/os/unix-listener';
import { closeFd, type PeerCred } from '../../src/os/unix-socket';

describe('UnixListener: accepted clients as descriptors with their credentials', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'listener-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('accepts clients on a path with the mode asked for and reports their SO_PEERCRED', async () => {
    const file = path.join(dir, 'bus');
    const accepted: Array<[number, PeerCred]> = [];
    const l = new UnixListener({ kind: 'path', path: file, mode: 0o666 }, (fd, peer) => accepted.push([fd, peer]));
    try {
      assert.equal(fs.statSync(file).mode & 0o777, 0o666);
      const c = net.createConnection(file);
      await new Promise((r) => c.once('connect', r));
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(accepted.length, 1);
      assert.deepEqual(accepted[0]![1], { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
      const got = new Promise<Buffer>((r) => c.once('data', r));
      fs.writeSync(accepted[0]![0], 'hi');
      assert.equal((await got).toString(), 'hi');
      c.destroy();
      closeFd(accepted[0]![0]);
    } finally {
      l.close();
    }
    assert.equal(fs.existsSync(file), false);
  });

  it('listens in the abstract namespace', async () => {
    const name = `kdbus-cuse-test-${process.pid}-${Date.now()}`;
    let n = 0;
    const l = new UnixListener({ kind: 'abstract', name }, (fd) => {
      n++;
      closeFd(fd);
    });
    try {
      // Node's net cannot reach abstract names; a process that connects and exits can.
      const r = spawnSync('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).connect("\\0${name}")`]);
      assert.equal(r.status, 0, r.stderr.toString());
      await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(n, 1);
    } finally {
      l.close();
    }
  });

  it('replaces a stale socket file, but neither a live socket nor another file', async () => {
    const file = path.join(dir, 'bus');
    const first = new UnixListener({ kind: 'path', path: file }, closeFd);
    assert.throws(() => new UnixListener({ kind: 'path', path: file }, closeFd), /another process is listening/);
    first.close();
    // A daemon that died leaves its socket file behind.
    const r = spawnSync('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(file)})`]);
    assert.equal(r.status, 0, r.stderr.toString());
    assert.ok(fs.statSync(file).isSocket());
    const second = new UnixListener({ kind: 'path', path: file }, closeFd);
    second.close();
    fs.writeFileSync(file, 'not a socket');
    assert.throws(() => new UnixListener({ kind: 'path', path: file }, closeFd), /not a socket/);
    assert.equal(fs.readFileSync(file, 'utf8'), 'not a socket');
  });

  it('out of descriptors, stops accepting without spinning, says so once, and takes the waiting clients once some close', async function () {
    this.timeout(30_000);
    const file = path.join(dir, 'bus');
    // A process of its own, held to 64 descriptors and then filling its table with /dev/null.
    const script = `
      const fs = require('fs');
      const { UnixListener } = require(${JSON.stringify(require.resolve('../../src/os/unix-listener'))});
      let accepted = 0;
      new UnixListener({ kind: 'path', path: process.argv[1] }, () => accepted++);
      const fillers = [];
      try { for (;;) fillers.push(fs.openSync('/dev/null', 'r')); } catch {}
      console.log('FULL');
      process.stdin.on('data', (d) => {
        if (String(d).startsWith('free')) for (const f of fillers.splice(0, 16)) fs.closeSync(f);
        else console.log('ACCEPTED ' + accepted);
      });`;
    const child = spawn('prlimit', ['--nofile=64:64', process.execPath, '-e', script, file], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const until = async (re: RegExp, what: string): Promise<void> => {
      for (let i = 0; i < 200 && !re.test(out); i++) await new Promise((r) => setTimeout(r, 50));
      assert.match(out, re, `${what}; the listener said:\n${out}`);
    };
    const ticks = (): number => {
      const f = fs.readFileSync(`/proc/${child.pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
      return Number(f[11]) + Number(f[12]);
    };
    const clients: net.Socket[] = [];
    try {
      await until(/FULL/, 'the child filled its descriptors');
      for (let i = 0; i < 5; i++) {
        const c = net.createConnection(file);
        c.on('error', () => undefined);
        clients.push(c);
      }
      await until(/out of file descriptors \(EMFILE/, 'a warning when accept fails');
      const before = ticks();
      await new Promise((r) => setTimeout(r, 2000));
      const used = ticks() - before;
      assert.ok(used < 50, `the listener used ${used} ticks of CPU in 2 s while out of descriptors`);
      child.stdin.write('free\n');
      await until(/accepting connections again/, 'accepting once descriptors are free');
      child.stdin.write('count\n');
      await until(/ACCEPTED 5/, 'every waiting client accepted');
      assert.equal(out.match(/out of file descriptors/g)!.length, 1, 'one warning for the episode');
    } finally {
      for (const c of clients) c.destroy();
      child.kill();
    }
  });
});
