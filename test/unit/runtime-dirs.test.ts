import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { serveConfig } from '../../src/cli/main';
import { CreatedDirs, runtimeDirs } from '../../src/daemon/runtime-dirs';

describe('directories the daemon creates', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'runtime-dirs-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('are the socket directory, the kdbus root and the directories of --listen and control sockets', () => {
    const c = serveConfig(['--socket', '/run/k/kdbus.sock', '--kdbus-root', '/dev/kdbus', '--listen', 'unix:path=/run/legacy/bus', '--listen', 'unix:dir=/run/d;unix:abstract=x'])!;
    assert.deepEqual(runtimeDirs(c), ['/run/k', '/dev/kdbus', '/run/k', '/run/legacy', '/run/d']);
    // The default legacy and control sockets sit beside the transport socket.
    assert.deepEqual(runtimeDirs(serveConfig(['--socket', '/run/k/kdbus.sock', '--kdbus-root', '/dev/kdbus'])!), ['/run/k', '/dev/kdbus', '/run/k', '/run/k']);
  });

  it('removes what did not exist before, deepest first, and keeps what existed or is not empty', () => {
    fs.mkdirSync(path.join(dir, 'run'));
    const created = new CreatedDirs([path.join(dir, 'run/a/b'), path.join(dir, 'run'), path.join(dir, 'dev/kdbus'), path.join(dir, 'other/x')]);
    for (const d of ['run/a/b', 'dev/kdbus', 'other/x']) fs.mkdirSync(path.join(dir, d), { recursive: true });
    fs.writeFileSync(path.join(dir, 'other/x/someone-elses'), '');
    created.removeEmpty();
    assert.deepEqual(fs.readdirSync(dir).sort(), ['other', 'run']);
    assert.deepEqual(fs.readdirSync(path.join(dir, 'run')), []);
    assert.deepEqual(fs.readdirSync(path.join(dir, 'other/x')), ['someone-elses']);
  });

  it('takes a directory already gone as removed', () => {
    const created = new CreatedDirs([path.join(dir, 'gone/deeper')]);
    assert.doesNotThrow(() => created.removeEmpty());
    assert.deepEqual(fs.readdirSync(dir), []);
  });
});
