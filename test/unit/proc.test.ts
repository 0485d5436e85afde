/**
 * Reading a task from /proc (src/os/proc.ts), on this very process: what each attach bit
 * reads, and that every record has the same fields whatever was asked for.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Attach } from '../../src/abi/constants';
import { readTask } from '../../src/os/proc';

describe('proc: task records', () => {
  const pid = process.pid;

  it('reads the credentials and ids of the calling process', () => {
    const st = readTask(pid, pid, Attach.CREDS).status;
    assert.ok(st, 'the status file was read');
    assert.equal(st.tgid, pid);
    assert.equal(st.ppid, process.ppid);
    assert.equal(st.creds.uid, process.getuid!());
    assert.equal(st.creds.egid, process.getegid!());
    // Node's getgroups() adds the effective gid to the supplementary groups /proc lists.
    const set = (a: readonly number[]): number[] => [...new Set(a)].sort((x, y) => x - y);
    assert.deepEqual(set([...st.creds.groups, st.creds.egid]), set(process.getgroups!()));
  });

  it('reads only what the mask asks for', () => {
    const info = readTask(pid, pid, Attach.PID_COMM);
    assert.equal(info.status, undefined);
    assert.equal(info.pidComm?.toString(), fs.readFileSync('/proc/self/comm', 'latin1').trimEnd());
    assert.equal(info.exe, undefined);
  });

  it('gives every record, and every status in it, the same fields whatever the mask', () => {
    // Optimized callers of readTask rely on one shape: a new client must not deoptimize them.
    const masks = [0n, Attach.CREDS, Attach.PID_COMM | Attach.TID_COMM, Attach.EXE | Attach.CMDLINE | Attach.CGROUP | Attach.CREDS];
    const keys = masks.map((m) => Object.keys(readTask(pid, pid, m)));
    for (const k of keys) assert.deepEqual(k, keys[0]);
    const status = readTask(pid, pid, Attach.CREDS).status!;
    assert.deepEqual(Object.keys(status), ['nsTgid', 'nsPid', 'tgid', 'ppid', 'creds', 'caps']);
  });
});
