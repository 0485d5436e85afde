import assert from 'node:assert/strict';
import * as koffi from 'koffi';
import { KdbusError } from '../../src/abi/errno';
import { ProcessMemory } from '../../src/os/process-memory';

const addressOf = (b: Buffer): bigint => koffi.address(b) as bigint;
const libc = koffi.load(null);
const mmap = libc.func('uint64_t mmap(uint64_t addr, size_t length, int prot, int flags, int fd, int64_t offset)');
const munmap = libc.func('int munmap(uint64_t addr, size_t length)');
const PAGE = 4096;

/** Two pages, the second unmapped: reads may run up to the first page's end and no further. */
function pageBeforeHole(): { base: bigint; release(): void } {
  const PROT_READ = 1;
  const PROT_WRITE = 2;
  const MAP_PRIVATE = 2;
  const MAP_ANONYMOUS = 0x20;
  const base = BigInt(mmap(0, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) as number | bigint);
  munmap(base + BigInt(PAGE), PAGE);
  return { base, release: () => munmap(base, PAGE) };
}

describe('ProcessMemory: caller memory through process_vm_readv/writev', () => {
  // The test process plays the caller: process_vm on oneself needs no privilege.
  const mem = (): ProcessMemory => new ProcessMemory(process.pid);

  it('reads what the caller holds, and what it changed before the next ioctl', () => {
    const b = Buffer.alloc(4096);
    for (let i = 0; i < b.length; i++) b[i] = i & 0xff;
    const m = mem();
    assert.deepEqual(m.read(addressOf(b) + 10n, 6), Buffer.from([10, 11, 12, 13, 14, 15]));
    assert.deepEqual(m.read(addressOf(b) + 3000n, 4), b.subarray(3000, 3004));
    b[11] = 0xee;
    assert.equal(mem().read(addressOf(b) + 11n, 1)[0], 0xee);
  });

  it('writes reach the caller and later reads of the same ioctl see them', () => {
    const b = Buffer.alloc(256);
    const m = mem();
    assert.deepEqual(m.read(addressOf(b), 8), Buffer.alloc(8));
    m.write(addressOf(b) + 4n, Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]));
    assert.deepEqual(b.subarray(4, 12), Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]));
    assert.deepEqual(m.read(addressOf(b), 12), Buffer.from([0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]));
  });

  it('reads up to the last mapped byte before a hole, and EFAULT across it', () => {
    const page = pageBeforeHole();
    try {
      const m = mem();
      assert.equal(m.read(page.base + BigInt(PAGE - 8), 8).length, 8);
      assert.throws(() => m.read(page.base + BigInt(PAGE - 8), 9), (e: unknown) => e instanceof KdbusError && e.errno === 14);
      assert.throws(() => mem().write(page.base + BigInt(PAGE - 4), Buffer.alloc(8)), (e: unknown) => e instanceof KdbusError && e.errno === 14);
    } finally {
      page.release();
    }
  });

  it('readInto puts the bytes at the offset asked for, from the read-ahead window or straight from the caller', () => {
    const b = Buffer.alloc(4 * PAGE);
    for (let i = 0; i < b.length; i++) b[i] = (i * 13) & 0xff;
    const m = mem();
    m.read(addressOf(b), 8);
    const target = Buffer.alloc(PAGE * 2 + 16, 0xaa);
    m.readInto(addressOf(b) + 100n, 50, target, 3);
    assert.deepEqual(target.subarray(3, 53), b.subarray(100, 150), 'inside the window');
    m.readInto(addressOf(b) + 5000n, 2 * PAGE, target, 16);
    assert.deepEqual(target.subarray(16), b.subarray(5000, 5000 + 2 * PAGE), 'beyond it');
    assert.ok(target.subarray(0, 3).every((x) => x === 0xaa) && target.subarray(53, 16).every((x) => x === 0xaa), 'nothing else touched');
  });

  it('readInto is EFAULT for a range that runs into a hole', () => {
    const page = pageBeforeHole();
    try {
      const target = Buffer.alloc(64);
      mem().readInto(page.base + BigInt(PAGE - 8), 8, target, 0);
      assert.throws(() => mem().readInto(page.base + BigInt(PAGE - 8), 16, target, 0), (e: unknown) => e instanceof KdbusError && e.errno === 14);
    } finally {
      page.release();
    }
  });

  it('gives EFAULT for a null pointer', () => {
    assert.throws(() => mem().read(0n, 8), (e: unknown) => e instanceof KdbusError && e.errno === 14);
  });
});
