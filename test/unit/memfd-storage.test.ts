import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { MemfdStorage } from '../../src/os/memfd-storage';
import { fcntl } from '../../src/os/libc';

const MiB = 1024 * 1024;
const F_GETFD = 1;
const FD_CLOEXEC = 1;
const F_GET_SEALS = 1034;
const F_SEAL_SHRINK = 0x2;
const F_SEAL_GROW = 0x4;

function readThroughProc(fd: number, offset: number, length: number): Buffer {
  const other = fs.openSync(`/proc/self/fd/${fd}`, 'r');
  try {
    const out = Buffer.alloc(length);
    assert.equal(fs.readSync(other, out, 0, length, offset), length);
    return out;
  } finally {
    fs.closeSync(other);
  }
}

describe('MemfdStorage', () => {
  let storage: MemfdStorage;

  beforeEach(() => {
    storage = new MemfdStorage(16 * MiB, 'kdbus-pool-test');
  });

  afterEach(() => storage.close());

  it('is a memfd of the pool size, close-on-exec, with its size sealed', () => {
    assert.match(fs.readlinkSync(`/proc/self/fd/${storage.fd}`), /^\/memfd:kdbus-pool-test/);
    assert.equal(fs.fstatSync(storage.fd).size, 16 * MiB);
    assert.equal(fcntl(storage.fd, F_GETFD, 0) & FD_CLOEXEC, FD_CLOEXEC);
    assert.equal(fcntl(storage.fd, F_GET_SEALS, 0), F_SEAL_SHRINK | F_SEAL_GROW);
    assert.throws(() => fs.ftruncateSync(storage.fd, 4096), { code: 'EPERM' });
  });

  it('writes what another opener of the file reads back', () => {
    storage.write(4090, Buffer.from('across a page'));
    storage.write(8 * MiB, new Uint8Array([1, 2, 3]));
    assert.equal(readThroughProc(storage.fd, 4090, 13).toString(), 'across a page');
    assert.deepEqual([...readThroughProc(storage.fd, 8 * MiB - 1, 5)], [0, 1, 2, 3, 0]);
    assert.equal(storage.read(4090, 13).toString(), 'across a page');
    const into = Buffer.alloc(16, 0x2e);
    storage.readInto(4090, 13, into);
    assert.equal(into.toString('latin1'), 'across a page...');
  });

  it('fills ranges, including more than one write chunk', () => {
    storage.fill(100, 200_000, 0xab);
    storage.fill(150, 10, 0);
    const back = storage.read(99, 200_002);
    assert.equal(back[0], 0);
    assert.equal(back[1], 0xab);
    assert.equal(back.subarray(51, 61).every((b) => b === 0), true);
    assert.equal(back[61], 0xab);
    assert.equal(back[200_000], 0xab);
    assert.equal(back[200_001], 0);
  });

  it('backs only the pages that were written', () => {
    assert.equal(fs.fstatSync(storage.fd).blocks, 0);
    storage.write(5 * MiB, Buffer.alloc(4096, 1));
    const bytes = fs.fstatSync(storage.fd).blocks * 512;
    assert.ok(bytes >= 4096 && bytes <= 8192, `one page written, ${bytes} bytes backed`);
    assert.equal(storage.resident(), bytes);
  });

  it('refuses access outside the pool and after close', () => {
    assert.throws(() => storage.write(16 * MiB - 1, Buffer.alloc(2)), RangeError);
    assert.throws(() => storage.read(-1, 1), RangeError);
    const fd = storage.fd;
    storage.close();
    storage.close();
    assert.throws(() => fs.fstatSync(fd), { code: 'EBADF' });
    assert.throws(() => storage.write(0, Buffer.alloc(1)), /after close/);
  });
});
