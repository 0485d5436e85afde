/**
 * Acting as another user for the length of one synchronous call: the main thread's
 * effective uid, effective gid and supplementary groups are switched, the call runs, and
 * they are switched back. What the kernel records during the call (SO_PEERCRED and
 * SO_PEERGROUPS at connect(), the permission check on a socket file) is the other user's.
 *
 * Linux keeps credentials per thread. glibc's and musl's setresuid/setgroups apply them to
 * every thread of the process (POSIX setxid semantics, by signalling each thread), which
 * would let libuv's pool threads run the daemon's file I/O as a client for a while. The raw
 * system calls change the calling thread alone, so they are used here.
 *
 * The real and saved ids stay untouched: the saved uid (root, or the daemon's own) is what
 * lets the effective uid come back, and with it the effective capabilities.
 */
import * as koffi from 'koffi';

export interface ThreadCredentials {
  uid: number;
  gid: number;
  /** Supplementary groups. */
  groups: readonly number[];
}

interface SyscallNumbers {
  setgroups: number;
  setresuid: number;
  setresgid: number;
}

/** The generic syscall table (arm64) differs from x86-64's; both from the kernel's tables. */
const SYSCALLS: Readonly<Record<string, SyscallNumbers>> = {
  x64: { setgroups: 116, setresuid: 117, setresgid: 119 },
  arm64: { setgroups: 159, setresuid: 147, setresgid: 149 },
};

const EPERM = 1;
/** "Leave this id as it is" for setresuid/setresgid: (uid_t)-1. */
const UNCHANGED = -1;

const libc = koffi.load(null);
// syscall() is variadic; fixed prototypes pass the same registers on x86-64 and arm64.
const syscallIds = libc.func('syscall', 'long', ['long', 'int', 'int', 'int']) as (nr: number, a: number, b: number, c: number) => number;
const syscallList = libc.func('syscall', 'long', ['long', 'int', 'void *']) as (nr: number, n: number, list: Uint32Array | null) => number;
const getgroupsFn = libc.func('int getgroups(int size, void *list)') as (size: number, list: Uint32Array | null) => number;
const geteuidFn = libc.func('uint32_t geteuid(void)') as () => number;
const getegidFn = libc.func('uint32_t getegid(void)') as () => number;

/** The thread could not take on, or give back, another user's credentials. */
export class CredentialSwitchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CredentialSwitchError';
  }
}

let numbers: SyscallNumbers | undefined;

function syscalls(): SyscallNumbers {
  if (numbers) return numbers;
  const n = SYSCALLS[process.arch];
  if (!n) throw new CredentialSwitchError(`acting as another user: no syscall numbers for architecture ${process.arch} (only x64 and arm64 are supported)`);
  return (numbers = n);
}

/** The calling thread's supplementary groups (getgroups is a plain syscall in both libcs). */
function currentGroups(): number[] {
  for (;;) {
    const n = getgroupsFn(0, null);
    if (n < 0) throw new CredentialSwitchError(`getgroups failed: errno ${koffi.errno()}`);
    const list = new Uint32Array(Math.max(n, 1));
    const got = getgroupsFn(n, list);
    // The set can only have changed if another thread switched it; then ask again.
    if (got >= 0) return Array.from(list.subarray(0, got));
  }
}

function sameGroups(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  const set = new Set(a);
  return b.every((g) => set.has(g));
}

function setGroups(groups: readonly number[]): number {
  return syscallList(syscalls().setgroups, groups.length, groups.length === 0 ? null : Uint32Array.from(groups));
}

function check(result: number, what: string, target: ThreadCredentials): void {
  if (result >= 0) return;
  const e = koffi.errno();
  if (e === EPERM) {
    throw new CredentialSwitchError(`cannot act as uid ${target.uid} (gid ${target.gid}): the daemon lacks CAP_SETUID/CAP_SETGID (${what}: EPERM)`);
  }
  throw new CredentialSwitchError(`cannot act as uid ${target.uid} (gid ${target.gid}): ${what} failed with errno ${e}`);
}

/**
 * Runs fn with the calling thread's effective uid, effective gid and supplementary groups
 * set to `who`, and restores them afterwards whatever fn does. When `who` is already what
 * the thread has, fn simply runs (no privilege needed). Throws, without running fn, when
 * the thread may not switch (the daemon is neither root nor holds CAP_SETUID/CAP_SETGID).
 *
 * fn must be synchronous and must not yield to the event loop: everything the main thread
 * does meanwhile happens as `who`. Nor may it start threads, which would keep `who` for
 * good (a thread inherits its creator's credentials): libuv starts its pool at the first
 * fs/dns/crypto request, so none of those belong in fn.
 */
export function withThreadCredentials<T>(who: ThreadCredentials, fn: () => T): T {
  const euid = geteuidFn();
  const egid = getegidFn();
  const groups = currentGroups();
  if (who.uid === euid && who.gid === egid && sameGroups(who.groups, groups)) return fn();

  const nr = syscalls();
  // Groups and gid first: changing them needs CAP_SETGID, which the thread loses once its
  // effective uid leaves 0.
  check(setGroups(who.groups), `setgroups(${who.groups.length} groups)`, who);
  let switchedGid = false;
  try {
    check(syscallIds(nr.setresgid, UNCHANGED, who.gid, UNCHANGED), `setresgid(-1, ${who.gid}, -1)`, who);
    switchedGid = true;
    check(syscallIds(nr.setresuid, UNCHANGED, who.uid, UNCHANGED), `setresuid(-1, ${who.uid}, -1)`, who);
  } catch (e) {
    restore(nr, euid, egid, groups, false, switchedGid);
    throw e;
  }
  try {
    return fn();
  } finally {
    restore(nr, euid, egid, groups, true, true);
  }
}

/**
 * Back to the daemon's own credentials, uid first (which brings back the capabilities the
 * gid and groups need). A failure here leaves the main thread as someone else: no caller
 * can recover from that, so the error says so plainly.
 */
function restore(nr: SyscallNumbers, euid: number, egid: number, groups: readonly number[], uid: boolean, gid: boolean): void {
  const fail = (what: string): never => {
    throw new CredentialSwitchError(`could not restore the daemon's credentials (${what} failed: errno ${koffi.errno()}); the main thread keeps the wrong identity`);
  };
  if (uid && syscallIds(nr.setresuid, UNCHANGED, euid, UNCHANGED) < 0) fail(`setresuid(-1, ${euid}, -1)`);
  if (gid && syscallIds(nr.setresgid, UNCHANGED, egid, UNCHANGED) < 0) fail(`setresgid(-1, ${egid}, -1)`);
  if (setGroups(groups) < 0) fail('setgroups');
}
