/**
 * Process metadata against the real /proc (this process and spawned children), and the
 * metadata item encoding against the layout of kdbus-abi.md §2.6/§3.17 and kernel
 * metadata.c (emission order, item sizes, caps masking, size without trailing padding).
 */
import assert from 'node:assert/strict';
import { requireOrSkip } from '../helpers/require';
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ALIGN8, Attach, ItemType, NameFlags } from '../../src/abi/constants';
import { KdbusError } from '../../src/abi/errno';
import { ItemWriter } from '../../src/abi/items';
import {
  collectProcMetadata, effectiveMask, encodeMetadata, fakeProcMetadata, IMPLICIT_ATTACH, metadataSize,
  type MetadataParts, PROC_ATTACH_MASK, ProcMetadata, sanitizeAttachMask,
} from '../../src/bus/metadata';

const str = (b: Buffer | undefined): string | undefined => b?.toString('latin1');
const statusField = (pid: number | 'self', key: string): string =>
  fs.readFileSync(`/proc/${pid}/status`, 'latin1').split('\n').find((l) => l.startsWith(`${key}:`))!.split('\t')[1];

function errnoOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof KdbusError) return e.code;
    throw e;
  }
  return 'ok';
}

/** Starts a child and resolves with its first stdout line. */
function startChild(cmd: string, args: string[]): Promise<{ child: ChildProcess; line: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    child.on('error', reject);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl !== -1) resolve({ child, line: out.slice(0, nl) });
    });
  });
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

function onPath(cmd: string): string {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const p = path.join(dir, cmd);
    if (fs.existsSync(p)) return fs.realpathSync(p);
  }
  throw new Error(`${cmd} not on PATH`);
}

/** Expected cgroup per kdbus's task_cgroup_path: lowest-numbered v1 hierarchy, else the unified one. */
function expectedCgroup(pid: number | 'self'): string {
  const lines = fs.readFileSync(`/proc/${pid}/cgroup`, 'latin1').trim().split('\n').map((l) => {
    const m = /^(\d+):[^:]*:(.*)$/.exec(l)!;
    return { id: Number(m[1]), path: m[2] };
  });
  const v1 = lines.filter((l) => l.id > 0).sort((a, b) => a.id - b.id);
  return v1.length > 0 ? v1[0].path : lines.find((l) => l.id === 0)!.path;
}

describe('bus/metadata: collecting from /proc', () => {
  it('snapshots this process', () => {
    const m = collectProcMetadata(process.pid, process.pid, Attach.ALL);
    assert.equal(m.faked, false);
    assert.deepEqual(
      { uid: m.creds!.uid, euid: m.creds!.euid, gid: m.creds!.gid, egid: m.creds!.egid },
      { uid: process.getuid!(), euid: process.geteuid!(), gid: process.getgid!(), egid: process.getegid!() },
    );
    for (const g of m.groups!) assert.ok(process.getgroups!().includes(g), `group ${g}`);
    assert.deepEqual(m.pids, { pid: process.pid, tid: process.pid, ppid: process.ppid });
    const comm = fs.readFileSync('/proc/self/comm', 'latin1').trimEnd();
    assert.equal(str(m.tidComm), comm);
    assert.equal(str(m.pidComm), comm);
    assert.equal(str(m.exe), fs.realpathSync(process.execPath));
    assert.equal(str(m.cmdline), process.argv0);
    assert.equal(str(m.cgroup), expectedCgroup('self'));
    assert.equal(m.caps!.lastCap, Number(fs.readFileSync('/proc/sys/kernel/cap_last_cap', 'latin1')));
    assert.equal(m.caps!.effective, BigInt(`0x${statusField('self', 'CapEff')}`));
    assert.equal(m.caps!.bounding, BigInt(`0x${statusField('self', 'CapBnd')}`));
    if (fs.existsSync('/proc/self/loginuid')) {
      assert.deepEqual(m.audit, {
        loginuid: Number(fs.readFileSync('/proc/self/loginuid', 'latin1')),
        sessionid: Number(fs.readFileSync('/proc/self/sessionid', 'latin1')),
      });
    }
    let label: string | undefined;
    try {
      label = fs.readFileSync('/proc/self/attr/current', 'latin1').replace(/[\n\0]+$/, '') || undefined;
    } catch {
      label = undefined;
    }
    assert.equal(str(m.seclabel), label);
    assert.equal(m.valid & Attach.SECLABEL ? 'label' : 'none', label === undefined ? 'none' : 'label');
  });

  it('reports real/effective/saved/fs ids, sorted groups, thread comm and dropped caps of another task', async function () {
    requireOrSkip(this, process.getuid!() === 0, 'root (to change credentials of a child)');
    // Distinct ids in every slot prove the field order; setresuid away from root clears the
    // permitted and effective sets (no keepcaps) and leaves the bounding set alone.
    const script = [
      'import os, sys, threading, ctypes, time',
      'os.setgroups([30, 10, 20]); os.setresgid(100, 200, 300); os.setresuid(1000, 2000, 3000)',
      'ready = threading.Event(); tids = []',
      'def worker():',
      '    ctypes.CDLL(None).prctl(15, b"kdbus-worker", 0, 0, 0)',
      '    tids.append(threading.get_native_id()); ready.set(); time.sleep(60)',
      'threading.Thread(target=worker, daemon=True).start(); ready.wait()',
      'print(tids[0], flush=True); sys.stdin.read()',
    ].join('\n');
    const { child, line } = await startChild('python3', ['-c', script]);
    try {
      const pid = child.pid!;
      const tid = Number(line);
      assert.notEqual(tid, pid);
      const m = collectProcMetadata(pid, tid, Attach.ALL);
      assert.deepEqual(m.creds, { uid: 1000, euid: 2000, suid: 3000, fsuid: 2000, gid: 100, egid: 200, sgid: 300, fsgid: 200 });
      assert.deepEqual(m.groups, [10, 20, 30]);
      assert.deepEqual(m.pids, { pid, tid, ppid: process.pid });
      assert.equal(str(m.tidComm), 'kdbus-worker');
      assert.equal(str(m.pidComm), fs.readFileSync(`/proc/${pid}/comm`, 'latin1').trimEnd());
      assert.equal(m.caps!.permitted, 0n);
      assert.equal(m.caps!.effective, 0n);
      assert.equal(m.caps!.bounding, BigInt(`0x${statusField('self', 'CapBnd')}`));

      const w = new ItemWriter();
      encodeMetadata(w, { proc: m }, Attach.CREDS | Attach.AUXGROUPS);
      const b = w.finish();
      assert.equal(b.length, 80 + 40);
      assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map((i) => b.readBigUInt64LE(16 + i * 8)), [1000n, 2000n, 3000n, 2000n, 100n, 200n, 300n, 200n]);
      assert.deepEqual([0, 1, 2].map((i) => b.readBigUInt64LE(80 + 16 + i * 8)), [10n, 20n, 30n]);
    } finally {
      child.kill();
      await exited(child);
    }
  });

  it('takes only argv[0] as CMDLINE, the executable path as EXE and the binary name as comm', async () => {
    // libuv returns from spawn once exec has happened, so the task is sleep already.
    const child = spawn('sleep', ['30', '1'], { argv0: 'kdbus-argv0', stdio: 'ignore' });
    try {
      const m = collectProcMetadata(child.pid!, child.pid!, Attach.CMDLINE | Attach.EXE | Attach.PID_COMM);
      assert.equal(str(m.cmdline), 'kdbus-argv0');
      assert.equal(str(m.exe), onPath('sleep'));
      assert.equal(str(m.pidComm), 'sleep');
      assert.equal(m.valid, Attach.CMDLINE | Attach.EXE | Attach.PID_COMM);
    } finally {
      child.kill();
      await exited(child);
    }
  });

  it('reads only what the mask asks for, and extends the snapshot with ensure()', () => {
    const m = collectProcMetadata(process.pid, process.pid, Attach.PID_COMM | Attach.TIMESTAMP);
    assert.equal(m.valid, Attach.PID_COMM);
    assert.equal(m.creds, undefined);
    m.ensure(Attach.CREDS);
    // One status read yields creds, pids, groups and caps together.
    assert.equal(m.valid, Attach.PID_COMM | Attach.CREDS | Attach.PIDS | Attach.AUXGROUPS | Attach.CAPS);
    assert.equal(m.creds!.uid, process.getuid!());
  });

  it('reports what is left of a task that is gone, without throwing', async () => {
    const child = spawn('true');
    await exited(child);
    const pid = child.pid!;
    const m = collectProcMetadata(pid, pid, PROC_ATTACH_MASK);
    assert.equal(m.valid, Attach.PIDS);
    assert.deepEqual(m.pids, { pid, tid: pid, ppid: 0 });
  });
});

describe('bus/metadata: item encoding', () => {
  const snapshot = (): ProcMetadata => new ProcMetadata({
    creds: { uid: 1, euid: 2, suid: 3, fsuid: 4, gid: 5, egid: 6, sgid: 7, fsgid: 0xffff_ffff },
    pids: { pid: 100, tid: 101, ppid: 1 },
    groups: [10, 20, 30],
    tidComm: Buffer.from('worker'),
    pidComm: Buffer.from('daemon-main'),
    exe: Buffer.from('/usr/bin/x'),
    cmdline: Buffer.from('x'),
    cgroup: Buffer.from('/'),
    caps: { lastCap: 40, inheritable: 0n, permitted: 0x1ff_ffff_ffffn, effective: 0x1f_ffff_ffffn, bounding: 0xffff_ffff_ffff_ffffn },
    seclabel: Buffer.from('unconfined'),
    audit: { loginuid: 1000, sessionid: 7 },
  });
  const parts = (): MetadataParts => ({
    proc: snapshot(),
    ownedNames: [
      { name: 'org.example.A', flags: NameFlags.PRIMARY | NameFlags.ACQUIRED },
      { name: 'org.example.Queued', flags: NameFlags.IN_QUEUE },
      { name: 'b.c', flags: 0n },
    ],
    description: 'my-conn',
    timestamp: { seqnum: 9n, monotonicNs: 123_456_789n, realtimeNs: 987_654_321n },
  });

  /** Walks items: [type, size] pairs, checking each item's padding is zero. */
  function walk(b: Buffer): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (let at = 0; at < b.length;) {
      const size = Number(b.readBigUInt64LE(at));
      out.push([Number(b.readBigUInt64LE(at + 8)), size]);
      for (let p = at + size; p < ALIGN8(at + size); p++) assert.equal(b[p], 0, `padding at ${p}`);
      at += ALIGN8(size);
    }
    return out;
  }

  const u64s = (b: Buffer, at: number, n: number): bigint[] => Array.from({ length: n }, (_, i) => b.readBigUInt64LE(at + i * 8));
  const u32s = (b: Buffer, at: number, n: number): number[] => Array.from({ length: n }, (_, i) => b.readUInt32LE(at + i * 4));

  it('emits every item in kdbus order with the kernel sizes', () => {
    const w = new ItemWriter();
    const end = encodeMetadata(w, parts(), Attach.ALL);
    const b = w.finish();
    assert.deepEqual(walk(b), [
      [ItemType.CREDS, 16 + 64],
      [ItemType.PIDS, 16 + 24],
      [ItemType.AUXGROUPS, 16 + 3 * 8],
      [ItemType.TID_COMM, 16 + 7],
      [ItemType.PID_COMM, 16 + 12],
      [ItemType.EXE, 16 + 11],
      [ItemType.CMDLINE, 16 + 2],
      [ItemType.CGROUP, 16 + 2],
      [ItemType.CAPS, 52],
      [ItemType.SECLABEL, 16 + 11],
      [ItemType.AUDIT, 16 + 8],
      [ItemType.OWNED_NAME, 16 + 8 + 14],
      [ItemType.OWNED_NAME, 16 + 8 + 4],
      [ItemType.CONN_DESCRIPTION, 16 + 8],
      [ItemType.TIMESTAMP, 16 + 24],
    ]);
    // 80+40+40+24+32+32+24+24+56+32+24+40+32+24+40
    assert.equal(b.length, 544);
    assert.equal(end, 544);

    let at = 0;
    assert.deepEqual(u64s(b, at + 16, 8), [1n, 2n, 3n, 4n, 5n, 6n, 7n, 0xffff_ffffn]);
    at += 80;
    assert.deepEqual(u64s(b, at + 16, 3), [100n, 101n, 1n]);
    at += 40;
    assert.deepEqual(u64s(b, at + 16, 3), [10n, 20n, 30n]);
    at += 40;
    assert.equal(b.toString('latin1', at + 16, at + 23), 'worker\0');
    at += 24 + 32 + 32 + 24 + 24;
    // last_cap, then inheritable, permitted, effective, bounding as (low, high) words;
    // bits above cap 40 are cleared in the high words.
    assert.deepEqual(u32s(b, at + 16, 9), [40, 0, 0, 0xffff_ffff, 0x1ff, 0xffff_ffff, 0x1f, 0xffff_ffff, 0x1ff]);
    at += 56;
    assert.equal(b.toString('latin1', at + 16, at + 27), 'unconfined\0');
    at += 32;
    assert.deepEqual(u32s(b, at + 16, 2), [7, 1000]);
    at += 24;
    assert.equal(b.readBigUInt64LE(at + 16), NameFlags.PRIMARY | NameFlags.ACQUIRED);
    assert.equal(b.toString('latin1', at + 24, at + 38), 'org.example.A\0');
    at += 40;
    assert.equal(b.readBigUInt64LE(at + 16), 0n);
    assert.equal(b.toString('latin1', at + 24, at + 28), 'b.c\0');
    at += 32;
    assert.equal(b.toString('latin1', at + 16, at + 24), 'my-conn\0');
    at += 24;
    assert.deepEqual(u64s(b, at + 16, 3), [9n, 123_456_789n, 987_654_321n]);
  });

  it('emits only what the mask selects and the snapshot has', () => {
    const w = new ItemWriter();
    encodeMetadata(w, parts(), Attach.CAPS | Attach.CREDS | Attach.TIMESTAMP);
    assert.deepEqual(walk(w.finish()).map(([t]) => t), [ItemType.CREDS, ItemType.CAPS, ItemType.TIMESTAMP]);

    const bare = new ProcMetadata({ pidComm: Buffer.from('p') });
    assert.equal(metadataSize({ proc: bare }, Attach.SECLABEL | Attach.CREDS), 0);
    assert.equal(metadataSize({ proc: bare, ownedNames: [] }, Attach.ALL), 16 + 2);
    assert.equal(metadataSize({}, 0n), 0);
  });

  it('sizes without the last item\'s padding, and encodes exactly ALIGN8 of that', () => {
    const masks = [Attach.ALL, Attach.CONN_DESCRIPTION, Attach.NAMES, Attach.TID_COMM | Attach.AUDIT, Attach.ALL & ~Attach.TIMESTAMP];
    const expected = [544, 16 + 8, 40 + 16 + 8 + 4, 24 + 24, 504];
    masks.forEach((mask, i) => {
      const p = parts();
      const w = new ItemWriter();
      const written = encodeMetadata(w, p, mask);
      assert.equal(metadataSize(p, mask), expected[i], `mask 0x${mask.toString(16)}`);
      assert.equal(written, expected[i]);
      assert.equal(w.length, ALIGN8(expected[i]));
    });
    // A description whose item needs padding: size 16+4 = 20, 24 bytes written.
    const w = new ItemWriter();
    assert.equal(encodeMetadata(w, { description: 'abc' }, Attach.ALL), 20);
    assert.equal(w.length, 24);
    assert.equal(metadataSize({ description: 'abc' }, Attach.ALL), 20);
  });
});

describe('bus/metadata: faked HELLO metadata', () => {
  const credsPayload = (ids: bigint[]): Buffer => {
    const b = Buffer.alloc(64);
    ids.forEach((v, i) => b.writeBigUInt64LE(v, i * 8));
    return b;
  };
  const pidsPayload = (pid: bigint, tid: bigint, ppid: bigint): Buffer => {
    const b = Buffer.alloc(24);
    [pid, tid, ppid].forEach((v, i) => b.writeBigUInt64LE(v, i * 8));
    return b;
  };

  it('keeps the given items only, ids truncated to uid_t and ~0 kept', () => {
    const m = fakeProcMetadata({
      creds: credsPayload([0xffff_ffffn, 0x1_0000_0005n, 3n, 4n, 5n, 6n, 7n, 8n]),
      pids: pidsPayload(BigInt(process.pid), BigInt(process.pid), 0n),
      seclabel: 'system_u:system_r:test_t:s0',
    });
    assert.equal(m.faked, true);
    assert.deepEqual(m.creds, { uid: 0xffff_ffff, euid: 5, suid: 3, fsuid: 4, gid: 5, egid: 6, sgid: 7, fsgid: 8 });
    assert.deepEqual(m.pids, { pid: process.pid, tid: process.pid, ppid: 0 });
    assert.equal(m.valid, Attach.CREDS | Attach.PIDS | Attach.SECLABEL);
    m.ensure(Attach.ALL);
    assert.equal(m.valid, Attach.CREDS | Attach.PIDS | Attach.SECLABEL);
    const w = new ItemWriter();
    encodeMetadata(w, { proc: m, description: 'd' }, Attach.ALL);
    const b = w.finish();
    assert.equal(b.readBigUInt64LE(8), BigInt(ItemType.CREDS));
    assert.equal(b.readBigUInt64LE(80 + 8), BigInt(ItemType.PIDS));
    assert.equal(b.readBigUInt64LE(120 + 8), BigInt(ItemType.SECLABEL));
    assert.equal(b.toString('latin1', 120 + 16, 120 + 16 + 28), 'system_u:system_r:test_t:s0\0');
    assert.equal(b.readBigUInt64LE(120 + 48 + 8), BigInt(ItemType.CONN_DESCRIPTION));
  });

  it('rejects ids that become invalid only by truncation and pids naming no task', () => {
    assert.equal(errnoOf(() => fakeProcMetadata({ creds: credsPayload([1n, 2n, 3n, 4n, 5n, 6n, 7n, 0x1_ffff_ffffn]) })), 'EINVAL');
    assert.equal(errnoOf(() => fakeProcMetadata({ pids: pidsPayload(0x7fff_fff0n, 0n, 0n) })), 'EINVAL');
    // Truncated to int this is -1: no such task.
    assert.equal(errnoOf(() => fakeProcMetadata({ pids: pidsPayload(0n, 0xffff_ffffn, 0n) })), 'EINVAL');
  });

  it('reads bytes a short PIDS payload lacks as zero', () => {
    const m = fakeProcMetadata({ pids: pidsPayload(BigInt(process.pid), 0n, 0n).subarray(0, 8) });
    assert.deepEqual(m.pids, { pid: process.pid, tid: 0, ppid: 0 });
  });
});

describe('bus/metadata: masks', () => {
  it('sanitizes attach masks like kdbus_sanitize_attach_flags', () => {
    assert.equal(sanitizeAttachMask(0xffff_ffff_ffff_ffffn), 0x3fffn);
    assert.equal(sanitizeAttachMask(0n), 0n);
    assert.equal(sanitizeAttachMask(0x3fffn), 0x3fffn);
    assert.equal(sanitizeAttachMask(0x21n), 0x21n);
    assert.equal(errnoOf(() => sanitizeAttachMask(0x4000n)), 'EINVAL');
    assert.equal(errnoOf(() => sanitizeAttachMask(1n << 63n)), 'EINVAL');
    assert.equal(errnoOf(() => sanitizeAttachMask(0xffff_ffff_ffff_fffen)), 'EINVAL');
  });

  it('grants receivers the implicit items, the sender\'s choice, and /proc items of visible senders', () => {
    assert.equal(IMPLICIT_ATTACH, 0x201fn);
    assert.equal(effectiveMask(0n, Attach.ALL), Attach.ALL);
    assert.equal(effectiveMask(0n, Attach.ALL, false), 0x201fn);
    assert.equal(effectiveMask(Attach.EXE, Attach.ALL, false), 0x201fn | Attach.EXE);
    assert.equal(effectiveMask(Attach.ALL, 0n), 0n);
    assert.equal(effectiveMask(0n, Attach.CAPS | Attach.CREDS, false), Attach.CREDS);
  });
});
