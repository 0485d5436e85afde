import assert from 'node:assert/strict';
import { Errno, KdbusError } from '../../src/abi/errno';
import { Pool, type Slice } from '../../src/bus/pool';
import { SparseStorage } from '../../src/bus/pool-storage';
import { HeldBudget } from '../../src/os/held-budget';

const PAGE = 4096;

function newPool(size = PAGE): Pool {
  return new Pool(new SparseStorage(size));
}

function errnoOf(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof KdbusError, `expected a KdbusError, got ${String(e)}`);
    return e.errno;
  }
  assert.fail('expected an error');
}

/** A slice the client received and must FREE (HELLO, CONN_INFO, a RECV'd message). */
function received(pool: Pool, size: number): number {
  const s = pool.alloc(size, false);
  const { offset } = s.publish();
  s.releaseKernel();
  return offset;
}

describe('Pool allocator', () => {
  it('rounds sizes up to 8 and starts at offset 0', () => {
    const pool = newPool();
    const a = pool.alloc(1, false);
    const b = pool.alloc(13, false);
    const c = pool.alloc(16, false);
    assert.deepEqual([a.offset, a.size, b.offset, b.size, c.offset, c.size], [0, 8, 8, 16, 24, 16]);
  });

  it('takes the smallest free slice that fits and splits off the rest after it', () => {
    const pool = newPool();
    pool.alloc(16, false); // [0,16)
    const b = pool.alloc(32, false); // [16,48)
    pool.alloc(16, false); // [48,64); free: [64,4096)
    b.releaseKernel(); // never published: freed at once; free: [16,48) size 32, [64,4096)
    // 32 is the smallest free size >= 8: its beginning is used, [24,48) size 24 stays free.
    assert.equal(pool.alloc(8, false).offset, 16);
    // exact fit for the remainder
    assert.equal(pool.alloc(24, false).offset, 24);
    // nothing left below 64
    assert.equal(pool.alloc(8, false).offset, 64);
  });

  it('merges a released slice with free neighbours on both sides', () => {
    const pool = newPool();
    const a = pool.alloc(16, false);
    const b = pool.alloc(32, false);
    const c = pool.alloc(16, false);
    a.releaseKernel(); // free [0,16)
    c.releaseKernel(); // merges with the tail: free [48,4096)
    // [0,16) and [48,4096) are free but not adjacent: the whole pool does not fit
    assert.equal(errnoOf(() => pool.alloc(PAGE, false)), Errno.EXFULL);
    b.releaseKernel(); // merges with both: one free slice [0,4096)
    const whole = pool.alloc(PAGE, false);
    assert.deepEqual([whole.offset, whole.size], [0, PAGE]);
  });

  it('gives offset 0 again once everything the client received is freed', () => {
    // The connection-info self-test relies on this: each CONN_INFO reply lands at 0.
    const pool = newPool(16 * 1024 * 1024);
    for (const size of [120, 480, 96, 1000]) {
      const off = received(pool, size);
      assert.equal(off, 0);
      pool.freeByOffset(off);
    }
  });

  it('keeps a published slice until the client frees it, even after the bus lets go', () => {
    const pool = newPool();
    const first = received(pool, 40);
    assert.equal(first, 0);
    assert.equal(pool.alloc(40, false).offset, 40);
    pool.freeByOffset(first);
    assert.equal(pool.alloc(40, false).offset, 0);
  });

  it('keeps a slice the client freed while the bus still holds it (RECV with PEEK)', () => {
    const pool = newPool();
    const s = pool.alloc(64, true);
    s.publish();
    pool.freeByOffset(0);
    assert.equal(pool.alloc(8, false).offset, 64, 'the bus reference keeps [0,64) allocated');
    assert.equal(s.read(0, 4).length, 4, 'the bus can still use it');
    s.releaseKernel();
    assert.equal(pool.alloc(64, false).offset, 0);
  });

  it('counts one user reference however often a slice is published', () => {
    const pool = newPool();
    const s = pool.alloc(8, false);
    s.publish();
    s.publish();
    s.releaseKernel();
    pool.freeByOffset(0);
    assert.equal(errnoOf(() => pool.freeByOffset(0)), Errno.ENXIO);
    assert.equal(pool.alloc(8, false).offset, 0);
  });

  it('picks among equal free slices the way the kernel rbtree does', () => {
    // Five 8-byte slices at 0..32, free tail [40,1024).
    //   free tree: (40,984)
    // Release 8:  (8,8) goes left of (40,984), red.
    // Release 24: equal sizes go right: (24,8) becomes the red right child of (8,8); red
    //   under red with a black uncle (none) in the zig-zag position: rotate left at (8,8),
    //   rotate right at the root -> (24,8) is the black root, (8,8) and (40,984) red children.
    // alloc(8): the walk meets the exact size at the root -> offset 24, not 8.
    // Erasing (24,8): successor (40,984) takes the root; alloc(8) then finds (8,8).
    const pool = newPool(1024);
    const s = [0, 1, 2, 3, 4].map(() => pool.alloc(8, false));
    assert.deepEqual(s.map((x) => x.offset), [0, 8, 16, 24, 32]);
    s[1]!.releaseKernel();
    s[3]!.releaseKernel();
    assert.equal(pool.alloc(8, false).offset, 24);
    assert.equal(pool.alloc(8, false).offset, 8);
    assert.equal(pool.alloc(8, false).offset, 40);
  });

  it('takes the first-inserted of equal larger slices when no size matches exactly', () => {
    // Free (16,16) then (48,16): the walk for 8 goes left at every node and ends on the
    // in-order first of the 16-byte slices, which is the one inserted first.
    const pool = newPool(1024);
    const s = [0, 1, 2, 3, 4].map(() => pool.alloc(16, false));
    s[1]!.releaseKernel();
    s[3]!.releaseKernel();
    assert.equal(pool.alloc(8, false).offset, 16);
  });

  it('reports EXFULL when nothing fits and EINVAL for an empty request', () => {
    const pool = newPool();
    assert.equal(errnoOf(() => pool.alloc(PAGE + 1, false)), Errno.EXFULL);
    pool.alloc(PAGE, false);
    assert.equal(errnoOf(() => pool.alloc(1, false)), Errno.EXFULL);
    assert.equal(errnoOf(() => newPool().alloc(0, false)), Errno.EINVAL);
  });

  it('matches the kernel allocator on a recorded trace', () => {
    // Produced by kdbus pool.c's slice alloc/release/publish/release_offset logic compiled
    // against Linux lib/rbtree.c (2048-byte pool). Tokens: aN[+]=offset/accounted (alloc N
    // bytes, + = accounted; -54 = EXFULL), pO / rO = publish / release the bus reference of the
    // slice at O, fO=result (KDBUS_CMD_FREE; -6 = ENXIO). 27 of its 192 allocations differ
    // from a "lowest offset among best fits" rule.
    const pool = newPool(2048);
    const held = new Map<number, Slice>();
    let step = 0;
    for (const token of TRACE.join(' ').split(' ')) {
      step++;
      const m = /^([aprf])(\d+)(\+?)=(-?\d+)(?:\/(\d+))?$/.exec(token);
      assert.ok(m, `bad token ${token}`);
      const [, op, arg, plus, result, accounted] = m;
      const n = Number(arg);
      const at = `step ${step} (${token})`;
      if (op === 'a') {
        let got: number;
        try {
          const s = pool.alloc(n, plus === '+');
          held.set(s.offset, s);
          got = s.offset;
        } catch (e) {
          got = -(e as KdbusError).errno;
        }
        assert.equal(got, Number(result), at);
        assert.equal(pool.accountedSize, Number(accounted), at);
      } else if (op === 'p') {
        held.get(n)!.publish();
      } else if (op === 'r') {
        held.get(n)!.releaseKernel();
        held.delete(n);
      } else {
        let got = 0;
        try {
          pool.freeByOffset(n);
        } catch (e) {
          got = -(e as KdbusError).errno;
        }
        assert.equal(got, Number(result), at);
      }
    }
    assert.equal(step, 500);
  });

  it('stays a valid red-black tree tiling the pool under random use', () => {
    const pool = newPool(8192);
    const held: Slice[] = [];
    const published: number[] = [];
    let seed = 12345;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return Math.floor(seed / 65536) % n;
    };
    for (let i = 0; i < 4000; i++) {
      const r = rnd(100);
      if (r < 45 || held.length === 0) {
        try {
          held.push(pool.alloc(rnd(10) === 0 ? 1 + rnd(1500) : 1 + rnd(64), rnd(2) === 0));
        } catch (e) {
          assert.equal((e as KdbusError).errno, Errno.EXFULL);
        }
      } else if (r < 75) {
        const s = held.splice(rnd(held.length), 1)[0]!;
        if (rnd(2) === 0) published.push(s.publish().offset);
        s.releaseKernel();
      } else if (published.length > 0) {
        pool.freeByOffset(published.splice(rnd(published.length), 1)[0]!);
      }
      checkStructure(pool);
    }
  });

  it('does not build up state over an alloc/publish/free ping-pong', () => {
    const pool = newPool(16 * 1024 * 1024);
    for (let i = 0; i < 20000; i++) {
      const s = pool.alloc(200 + (i % 7) * 8, true);
      assert.equal(s.offset, 0);
      s.publish();
      s.releaseKernel();
      pool.freeByOffset(0);
    }
    assert.equal(pool.accountedSize, 0);
    assert.equal(internals(pool).busy.size, 0);
    const root = internals(pool).freeTree.root!;
    assert.deepEqual([root.offset, root.size, root.left, root.right], [0, 16 * 1024 * 1024, null, null]);
  });
});

describe('Pool FREE', () => {
  it('treats the pool size as the empty result and frees it without effect', () => {
    const pool = newPool();
    assert.deepEqual(pool.publishEmpty(), { offset: PAGE, size: 0 });
    pool.freeByOffset(PAGE);
    pool.freeByOffset(BigInt(PAGE));
    assert.equal(pool.alloc(8, false).offset, 0);
  });

  it('returns ENXIO for offsets no published slice starts at', () => {
    const pool = newPool();
    assert.equal(errnoOf(() => pool.freeByOffset(0)), Errno.ENXIO, 'nothing allocated');
    assert.equal(errnoOf(() => pool.freeByOffset(PAGE + 1)), Errno.ENXIO, 'beyond the pool');
    assert.equal(errnoOf(() => pool.freeByOffset(0xffff_ffff_ffff_ffffn)), Errno.ENXIO, 'u64 max');
    const unpublished = pool.alloc(16, true);
    assert.equal(errnoOf(() => pool.freeByOffset(0)), Errno.ENXIO, 'not published');
    const off = received(pool, 32);
    assert.equal(off, 16);
    assert.equal(errnoOf(() => pool.freeByOffset(24)), Errno.ENXIO, 'inside a slice');
    assert.equal(errnoOf(() => pool.freeByOffset(48)), Errno.ENXIO, 'free space');
    pool.freeByOffset(BigInt(off));
    assert.equal(errnoOf(() => pool.freeByOffset(off)), Errno.ENXIO, 'already freed');
    assert.equal(unpublished.read(0, 16).length, 16, 'the unpublished slice is untouched');
  });
});

describe('Pool accounting', () => {
  it('counts accounted slices while the bus holds them', () => {
    const pool = newPool();
    const msg = pool.alloc(5, true);
    pool.alloc(100, false);
    assert.equal(pool.accountedSize, 8);
    const msg2 = pool.alloc(20, true);
    assert.equal(pool.accountedSize, 32);
    // RECV: published to the client and dequeued; no longer in the queue's share
    msg.publish();
    msg.releaseKernel();
    assert.equal(pool.accountedSize, 24);
    msg2.releaseKernel();
    assert.equal(pool.accountedSize, 0);
    assert.equal(msg.accounted, true);
  });
});

describe('Slice data', () => {
  it('writes, fills and reads inside the slice', () => {
    const pool = newPool(2 * PAGE);
    pool.alloc(PAGE - 8, false);
    const s = pool.alloc(24, false); // crosses the first page boundary
    assert.equal(s.offset, PAGE - 8);
    s.write(0, Buffer.from('0123456789abcdef'));
    s.fill(16, 8, 0x2a);
    assert.equal(s.read(0, 24).toString('latin1'), '0123456789abcdef********');
    assert.equal(pool.storage.read(PAGE - 8, 8).toString(), '01234567');
    const into = Buffer.alloc(32, 0x2e);
    pool.storage.readInto(PAGE - 8, 24, into);
    assert.equal(into.toString('latin1'), '0123456789abcdef********........', 'readInto: the same bytes, at the front, nothing after');
    pool.storage.readInto(3 * 8, 8, into);
    assert.ok(into.subarray(0, 8).every((x) => x === 0), 'a range never written reads as zeros');
  });

  it('refuses access outside the slice with EFAULT', () => {
    const s = newPool().alloc(16, false);
    assert.equal(errnoOf(() => s.write(10, Buffer.alloc(7))), Errno.EFAULT);
    assert.equal(errnoOf(() => s.read(16, 1)), Errno.EFAULT);
    assert.equal(errnoOf(() => s.fill(-1, 2, 0)), Errno.EFAULT);
  });

  it('refuses use after the bus released the slice', () => {
    const s = newPool().alloc(16, false);
    s.releaseKernel();
    assert.throws(() => s.write(0, Buffer.alloc(1)), /released/);
    assert.throws(() => s.publish(), /released/);
    assert.throws(() => s.releaseKernel(), /released/);
  });

  it('copies a whole slice between pools of equal slice size only', () => {
    const a = newPool().alloc(16, true);
    a.write(0, Buffer.from('moved message!!!'));
    const other = newPool();
    other.alloc(8, false);
    const b = other.alloc(16, true);
    b.copyFrom(a);
    assert.equal(b.read(0, 16).toString(), 'moved message!!!');
    assert.equal(errnoOf(() => other.alloc(24, true).copyFrom(a)), Errno.EINVAL);
  });
});

interface TreeNode {
  offset: number;
  size: number;
  free: boolean;
  red: boolean;
  left: TreeNode | null;
  right: TreeNode | null;
  parent: TreeNode | null;
  prev: TreeNode | null;
  next: TreeNode | null;
}

function internals(pool: Pool): { freeTree: { root: TreeNode | null }; busy: Map<number, TreeNode> } {
  return pool as unknown as { freeTree: { root: TreeNode | null }; busy: Map<number, TreeNode> };
}

/** Red-black rules, in-order sizes, and slices tiling the pool with no two free ones adjacent. */
function checkStructure(pool: Pool): void {
  const { freeTree, busy } = internals(pool);
  const inTree = new Set<TreeNode>();
  let last = -1;
  const walk = (n: TreeNode | null, parent: TreeNode | null): number => {
    if (!n) return 1;
    assert.equal(n.parent, parent);
    assert.ok(!(n.red && parent?.red), 'red node under a red parent');
    const lh = walk(n.left, n);
    assert.ok(n.size >= last, 'in-order sizes must not decrease');
    last = n.size;
    inTree.add(n);
    const rh = walk(n.right, n);
    assert.equal(lh, rh, 'black heights differ');
    return lh + (n.red ? 0 : 1);
  };
  assert.ok(!freeTree.root?.red, 'root must be black');
  walk(freeTree.root, null);

  let first: TreeNode | undefined = busy.get(0);
  if (!first) first = [...inTree].find((n) => n.offset === 0);
  assert.ok(first && first.prev === null);
  let end = 0;
  let frees = 0;
  for (let s: TreeNode | null = first; s; s = s.next) {
    assert.equal(s.offset, end);
    if (s.next) assert.equal(s.next.prev, s);
    if (s.free) {
      frees++;
      assert.ok(inTree.has(s));
      assert.ok(!s.next?.free, 'adjacent free slices must have merged');
    } else {
      assert.equal(busy.get(s.offset), s);
    }
    end += s.size;
  }
  assert.equal(end, pool.size);
  assert.equal(frees, inTree.size);
}

const TRACE = [
  'a5+=0/8 a8+=8/16 p8=0 r8=0 a3+=16/16 r16=0 f1738=-6 f8=0 f208=-6 a24+=8/32 a24+=32/56 a3=56/56',
  'f1611=-6 f2003=-6 f789=-6 a5+=64/64 f959=-6 a40+=72/104 a310+=112/416 r56=0 a16+=424/432 r112=0',
  'a16=112/120 f1789=-6 f1778=-6 a3+=56/128 r56=0 f1380=-6 a3=56/120 f346=-6 a3+=128/128',
  'a8=136/128 f1707=-6 f978=-6 p128=0 a5=144/128 a24=152/128 a32=176/128 p176=0 p8=0 f176=0',
  'a32=208/128 r112=0 a8+=112/136 f8=0 r32=0 a24+=32/136 r0=0 a16=240/128 a3+=0/136 a40+=256/176',
  'p112=0 a40+=296/216 f1238=-6 a8=120/216 r136=0 f112=0 f128=0 a24=336/216 a16=360/216 r72=0',
  'r120=0 f1694=-6 f890=-6 a32+=72/208 a8+=120/216 a32+=376/248 r72=0 a40+=72/256 r32=0 r128=0',
  'a24=32/224 r176=0 a3=408/224 f1380=-6 a3+=416/232 a16+=128/248 a49+=440/304 a40+=496/344',
  'a32+=176/376 a5=536/376 p360=0 f360=0 a3+=544/384 r424=0 a16=424/368 a40+=552/408 r424=0',
  'a5=424/408 a16=592/408 a32+=608/440 r592=0 p296=0 a8+=432/448 a32=640/448 a8+=592/456 f296=0',
  'r112=0 r0=0 f432=-6 f1177=-6 f625=-6 a5=112/440 r144=0 f1956=-6 a8+=0/448 r552=0 f1533=-6',
  'f1446=-6 a32=552/408 a3=144/408 f374=-6 a8+=584/416 a32=672/416 p64=0 r128=0 r408=0',
  'a450=704/400 a3=600/400 p296=0 f64=0 a176+=1160/576 p544=0 p336=0 p440=0 p592=0 p64=0 p416=0',
  'f296=0 r544=0 r672=0 r640=0 f592=0 r552=0 a3+=408/576 a16=128/576 p600=0 f64=0 p432=0',
  'a16+=552/592 p56=0 p376=0 p240=0 r1160=0 f1277=-6 f600=0 p208=0 a8=568/416 p416=0 p176=0 p552=0',
  'a32=640/416 f552=0 a8=576/416 a40+=1160/456 a32+=672/488 a8=1200/488 r672=0 f376=0 r704=0',
  'r496=0 f336=0 p64=0 a8+=496/424 f416=0 a16+=504/440 r336=0 a8+=520/448 p120=0 f1248=-6 r592=0',
  'f64=0 a40+=672/480 f345=-6 a16=336/480 p56=0 r424=0 a32+=712/512 r568=0 r32=0 r336=0 f208=0',
  'a3=424/512 f56=0 p296=0 r112=0 a16=32/512 r144=0 a8=568/512 r208=0 p8=0 r600=0 a16+=592/528',
  'a5+=112/536 a40=744/536 f432=0 p8=0 p1160=0 a8=48/536 a5=144/536 a16+=336/552 r56=0 r296=0',
  'a24+=208/536 a32=784/536 f296=0 a32=296/536 r64=0 a8=232/528 f240=0 a5=328/528 f544=0 r592=0',
  'f1160=0 p32=0 f32=0 r504=0 p608=0 r640=0 f176=0 p416=0 a24=640/496 a5+=352/504 r48=0 r520=0',
  'f440=0 f416=0 r576=0 p536=0 a32+=504/528 p552=0 a24+=48/552 a40=816/552 a5=664/552 p408=0',
  'p584=0 f120=0 r112=0 a5+=576/552 r8=0 f536=0 r416=0 r584=0 f584=0 r240=0 p1200=0 f608=0',
  'a8+=112/520 f1200=0 f8=0 a16=240/520 a8=416/520 a16=584/520 a5+=600/528 p432=0 p576=0',
  'a40=856/528 r48=0 f576=0 a32+=896/536 a24=8/536 r896=0 p176=0 a5=544/504 f176=0 r424=0',
  'a8+=424/512 r544=0 p208=0 p208=0 p128=0 a32+=896/544 a5=544/544 r8=0 f432=0 r336=0 r208=0',
  'a8=336/504 p440=0 r552=0 p544=0 r1160=0 r72=0 a32=48/408 r32=0 a3=344/408 f1065=-6 p128=0',
  'f408=0 f1654=-6 p1200=0 r232=0 f128=0 a5+=232/416 p432=0 a3+=80/424 r664=0 p232=0 p600=0 f208=0',
  'a32+=8/456 f232=0 a5+=664/464 p0=0 f552=0 a16+=552/480 r640=0 r8=0 a16+=88/464 p672=0 f672=0',
  'a32+=8/496 a24+=208/520 a16+=640/536 a5=40/536 r896=0 r600=0 r152=0 r568=0 p584=0 a3=656/496',
  'p424=0 r416=0 f544=0 a32+=896/528 p784=0 f584=0 r544=0 r664=0 p424=0 a16+=152/536 a5+=544/544',
  'f432=0 r584=0 a32+=928/576 f600=0 r152=0 f440=0 a40+=960/600 f424=0 p896=0 f0=0 r504=0',
  'a16+=584/584 r232=0 p40=0 a8+=664/584 f784=0 r360=0 a3=600/584 a40+=1000/624 r424=0 f40=0',
  'f896=0 f1200=0 r1000=0 r88=0 a5=232/560 r408=0 f124=-6 a16+=360/568 p664=0 p664=0 a32=504/568',
  'f664=0 a8=568/568 a8+=152/576 r896=0 a16+=160/560 r600=0 f107=-6 a32+=896/592 a3=600/592 r208=0',
  'a8=88/568 p896=0 f896=0 p40=0 p152=0 a5=96/568 a5=104/568 p256=0 a16=408/568 r104=0 a8+=104/576',
  'p232=0 r256=0 r80=0 f232=0 a8=80/528 a338=1208/528 a3+=424/536 a24=208/536 a24+=1000/560 r712=0',
  'f152=0 a24=712/528 r1208=0 r536=0 a3+=736/536 f256=0 a24+=256/560 r328=0 a32=1024/560 f40=0',
  'a40+=1056/600 p1024=0 r48=0 f1024=0 p160=0 a32=48/600 p176=0 f160=0 r440=0 r1000=0 a40=440/520',
  'a5+=328/528 f176=0 a40+=1096/568 f1072=-6 a16+=280/584 a40=1136/584 r496=0 a318=1208/576 p656=0',
  'f656=0 a3+=536/584 a8=1000/584 r280=0 a5=1008/568 p928=0 a40=1528/568 a16=280/568 a40=1568/568',
  'a16+=1176/584 r104=0 a32+=1608/608 a299+=1640/912 f928=0 f82=-6 f1825=-6 a8=1192/912 a3=104/912',
  'f393=-6 f1166=-6 r1136=0 f1970=-6 a16=480/912 r928=0 r1192=0 f187=-6 f1693=-6 r744=0 f1518=-6',
  'a3=496/880 p896=0 a16=928/880 p1056=0 f896=0 r336=0 a32+=1136/912 a32=744/912 f1056=0',
  'a16+=944/928 a32=1944/928 a40=1976/928 a40+=-54/928 p112=0 p360=0 a3+=1168/936 a5=776/936',
  'p712=0 p152=0 f360=0 r480=0 a32+=2016/968 p112=0 p1976=0 r208=0 p408=0 a40+=-54/968 a24=208/968',
  'r504=0 r112=0 a5=1192/960 f152=0 f1976=0 a5+=336/968 a8=1016/968 p944=0 r1136=0 a40=-54/936',
  'r1192=0 a32+=504/968 a16+=480/984 a8+=1192/992 f408=0 f944=0 r88=0 a32=1136/992',
];

describe("Pool: the daemon's memory its slices take", () => {
  it("refuses with EXFULL the slice that would take its user past its share, and counts FREE and close", () => {
    const budget = new HeldBudget('bytes of pool slices in use', { perUser: 3 * PAGE, total: 100 * PAGE });
    const a = new Pool(new SparseStorage(16 * PAGE), budget.account(1000));
    const b = new Pool(new SparseStorage(16 * PAGE), budget.account(1000));
    const other = new Pool(new SparseStorage(16 * PAGE), budget.account(1001));
    const first = received(a, PAGE);
    received(a, PAGE);
    received(b, 1);
    assert.equal(budget.held(1000), 2 * PAGE + 8, 'sizes as allocated, rounded up to 8');
    assert.equal(errnoOf(() => b.alloc(PAGE, true)), Errno.EXFULL);
    assert.equal(budget.held(1000), 2 * PAGE + 8, 'a refused slice counts nothing');
    received(other, 2 * PAGE);
    a.freeByOffset(first);
    received(b, PAGE);
    assert.equal(budget.held(1000), 2 * PAGE + 8);
    a.close();
    assert.equal(budget.held(1000), PAGE + 8);
    b.close();
    assert.equal(budget.held(1000), 0);
    assert.equal(budget.held(1001), 2 * PAGE);
  });
});
