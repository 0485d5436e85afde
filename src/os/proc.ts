/**
 * What /proc tells about a task: the OS side of kdbus process metadata. kdbus read these
 * facts from `current` at SEND time; the daemon reads them from /proc of the calling task,
 * per message, so every reader here is one open/read/close of a small file and only the
 * parts a caller asks for are read.
 *
 * No value is cached between calls (apart from the kernel constant cap_last_cap): credentials
 * and comm change under a live process (setuid, prctl), and kdbus reports them as they are at
 * the moment of the send. Only descriptors of status files are kept open (readStatusFile). A task that is gone, or a file the kernel does not offer (no LSM,
 * no audit), yields an absent part, never an exception.
 */
import * as fs from 'node:fs';
import { Attach } from '../abi/constants';
import type { Credentials } from '../bus/caller';

/** The four capability sets of a task as u64 masks (bit n = capability n). */
export interface TaskCaps {
  inheritable: bigint;
  permitted: bigint;
  effective: bigint;
  bounding: bigint;
}

/** The part of /proc/<pid>/task/<tid>/status that kdbus metadata uses. */
export interface TaskStatus {
  tgid: number;
  /** Thread-group id of the real parent; 0 when the kernel reports none. */
  ppid: number;
  creds: Credentials;
  caps: TaskCaps;
  /**
   * For a task in a pid namespace below the reader's: its thread-group id and thread id in
   * each namespace from the reader's down to its own (NStgid, NSpid). Undefined otherwise.
   */
  nsTgid?: number[];
  nsPid?: number[];
}

export interface TaskAudit {
  loginuid: number;
  sessionid: number;
}

/**
 * The facts readTask() could read. Byte strings are Buffers without a trailing NUL: paths and
 * comms are bytes to the kernel, and a JS string round trip could change them.
 */
export interface TaskInfo {
  status?: TaskStatus;
  tidComm?: Buffer;
  pidComm?: Buffer;
  exe?: Buffer;
  /** argv[0] only: kdbus copied the argument area with strndup_user, which stops at the first NUL. */
  cmdline?: Buffer;
  /** Path in the first (lowest-id) cgroup hierarchy, else in the unified one, else "/". */
  cgroup?: Buffer;
  seclabel?: Buffer;
  audit?: TaskAudit;
}

/** Attach bits that need the status file. */
const STATUS_PARTS = Attach.CREDS | Attach.PIDS | Attach.AUXGROUPS | Attach.CAPS;

/**
 * Reads the parts of task `tid` of process `pid` that the kdbus attach bits in `mask` need.
 * Bits that are not process metadata (TIMESTAMP, NAMES, CONN_DESCRIPTION) are ignored.
 */
export function readTask(pid: number, tid: number, mask: bigint): TaskInfo {
  const task = `/proc/${pid}/task/${tid}`;
  // Every field from the start: one shape for every result, which optimized callers keep
  // knowing. Fields added one by one make short-lived shapes that garbage collection drops,
  // and with them what the callers learned; each new client's first request then sent the
  // daemon's request path back to unoptimized code.
  const info: TaskInfo = {
    status: undefined, tidComm: undefined, pidComm: undefined, exe: undefined,
    cmdline: undefined, cgroup: undefined, seclabel: undefined, audit: undefined,
  };
  if (mask & STATUS_PARTS) info.status = readStatus(task);
  if (mask & Attach.TID_COMM) info.tidComm = readLine(`${task}/comm`);
  if (mask & Attach.PID_COMM) info.pidComm = readLine(`/proc/${pid}/comm`);
  if (mask & Attach.EXE) info.exe = readLink(`/proc/${pid}/exe`);
  if (mask & Attach.CMDLINE) info.cmdline = readArgv0(`/proc/${pid}/cmdline`);
  if (mask & Attach.CGROUP) info.cgroup = readCgroup(`${task}/cgroup`);
  if (mask & Attach.SECLABEL && kernelHas().lsm) info.seclabel = readSeclabel(`${task}/attr/current`);
  if (mask & Attach.AUDIT && kernelHas().audit) info.audit = readAudit(task);
  return info;
}

/** Whether a task (process or thread) with this id exists in the daemon's pid namespace. */
export function taskExists(id: number): boolean {
  return Number.isSafeInteger(id) && id > 0 && fs.existsSync(`/proc/${id}`);
}

let lastCap: number | undefined;
let features: { lsm: boolean; audit: boolean } | undefined;

/**
 * Whether the kernel has an LSM that labels tasks and audit support. Both are fixed at boot,
 * so they are probed once on the daemon itself; a failing read for every message would cost
 * as much as a successful one.
 */
function kernelHas(): { lsm: boolean; audit: boolean } {
  features ??= {
    lsm: readSeclabel('/proc/self/attr/current') !== undefined,
    audit: fs.existsSync('/proc/self/loginuid'),
  };
  return features;
}

/**
 * The kernel's CAP_LAST_CAP. Only Linux < 3.2 lacks the file; CAP_CHECKPOINT_RESTORE (40) has
 * been the last capability since 5.9, so that is the best guess there.
 */
export function capLastCap(): number {
  if (lastCap === undefined) {
    const n = slurp('/proc/sys/kernel/cap_last_cap');
    const v = n > 0 ? parseInt(scratch.toString('latin1', 0, n), 10) : NaN;
    lastCap = Number.isInteger(v) ? v : 40;
  }
  return lastCap;
}

// One buffer serves every read: the daemon is single-threaded and each reader copies out
// what it keeps before the next read.
let scratch = Buffer.allocUnsafe(4096);

/**
 * Reads a /proc file into `scratch` and returns its length, or -1 when it cannot be read
 * (task gone, no permission, attribute not supported). With `stopAt`, reading ends once that
 * byte has been read: argv[0] needs only the start of a possibly huge argument area.
 */
function slurp(path: string, stopAt = -1): number {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch {
    return -1;
  }
  try {
    let n = 0;
    for (;;) {
      if (n === scratch.length) {
        const grown = Buffer.allocUnsafe(scratch.length * 2);
        scratch.copy(grown, 0, 0, n);
        scratch = grown;
      }
      const got = fs.readSync(fd, scratch, n, scratch.length - n, null);
      if (got === 0) return n;
      if (stopAt >= 0 && scratch.subarray(n, n + got).includes(stopAt)) return n + got;
      n += got;
    }
  } catch {
    return -1;
  } finally {
    fs.closeSync(fd);
  }
}

const copyOut = (start: number, end: number): Buffer => Buffer.from(scratch.subarray(start, end));

/**
 * Open status files of recently seen tasks. procfs regenerates the file on every read from
 * offset 0, so a kept descriptor reads current values; it stays bound to its task, so a
 * recycled pid reads ESRCH and is reopened. Reading this way costs about half of
 * open+read+close, and it happens for most messages (CREDS and PIDS are implicit metadata).
 */
const statusFds = new Map<string, number>();
const STATUS_FDS_KEPT = 64;

function readStatusFile(task: string): number {
  const path = `${task}/status`;
  let fd = statusFds.get(path);
  if (fd !== undefined) {
    const n = preadAll(fd);
    if (n > 0) return n;
    statusFds.delete(path);
    fs.closeSync(fd);
  }
  try {
    fd = fs.openSync(path, 'r');
  } catch {
    return -1;
  }
  if (statusFds.size >= STATUS_FDS_KEPT) {
    const [oldPath, oldFd] = statusFds.entries().next().value as [string, number];
    statusFds.delete(oldPath);
    fs.closeSync(oldFd);
  }
  statusFds.set(path, fd);
  return preadAll(fd);
}

/** Reads a whole procfs file from offset 0 into `scratch`; -1 if the task is gone. */
function preadAll(fd: number): number {
  try {
    let n = 0;
    for (;;) {
      if (n === scratch.length) {
        const grown = Buffer.allocUnsafe(scratch.length * 2);
        scratch.copy(grown, 0, 0, n);
        scratch = grown;
      }
      const got = fs.readSync(fd, scratch, n, scratch.length - n, n);
      if (got === 0) return n;
      n += got;
    }
  } catch {
    return -1;
  }
}

function readStatus(task: string): TaskStatus | undefined {
  const n = readStatusFile(task);
  if (n <= 0) return undefined;
  const text = scratch.toString('latin1', 0, n);
  const tgid = field(text, 'Tgid');
  const ppid = field(text, 'PPid');
  const uids = field(text, 'Uid');
  const gids = field(text, 'Gid');
  const groups = field(text, 'Groups');
  const capInh = field(text, 'CapInh');
  const capPrm = field(text, 'CapPrm');
  const capEff = field(text, 'CapEff');
  const capBnd = field(text, 'CapBnd');
  if (
    tgid === undefined || ppid === undefined || uids === undefined || gids === undefined || groups === undefined ||
    capInh === undefined || capPrm === undefined || capEff === undefined || capBnd === undefined
  ) {
    return undefined;
  }
  // "Uid:" and "Gid:" list real, effective, saved and filesystem ids in that order.
  const [uid, euid, suid, fsuid] = uids.split('\t').map(Number);
  const [gid, egid, sgid, fsgid] = gids.split('\t').map(Number);
  // One number means the task is in the reader's own pid namespace: nothing to keep.
  const nsPid = field(text, 'NSpid');
  const nested = nsPid !== undefined && nsPid.includes('\t');
  // A literal with every field, for one shape (see readTask).
  return {
    nsTgid: nested ? (field(text, 'NStgid') ?? tgid).split('\t').map(Number) : undefined,
    nsPid: nested ? nsPid.split('\t').map(Number) : undefined,
    tgid: Number(tgid),
    ppid: Number(ppid),
    creds: {
      uid, euid, suid, fsuid, gid, egid, sgid, fsgid,
      groups: groups.split(' ').filter((g) => g !== '').map(Number),
    },
    caps: {
      inheritable: BigInt(`0x${capInh}`),
      permitted: BigInt(`0x${capPrm}`),
      effective: BigInt(`0x${capEff}`),
      bounding: BigInt(`0x${capBnd}`),
    },
  };
}

/** The value of a "Key:\tvalue" line of a status file; no key is on the first line ("Name:"). */
function field(text: string, key: string): string | undefined {
  const tag = `\n${key}:\t`;
  const at = text.indexOf(tag);
  if (at === -1) return undefined;
  const start = at + tag.length;
  const end = text.indexOf('\n', start);
  return text.slice(start, end === -1 ? text.length : end).trimEnd();
}

/** A one-line file (comm) without its newline. */
function readLine(path: string): Buffer | undefined {
  const n = slurp(path);
  if (n <= 0) return undefined;
  return copyOut(0, scratch[n - 1] === 0x0a ? n - 1 : n);
}

function readLink(path: string): Buffer | undefined {
  try {
    return fs.readlinkSync(path, { encoding: 'buffer' });
  } catch {
    return undefined;
  }
}

/** An empty argument area (kernel threads, zombies) means no CMDLINE, as in kdbus (arg_end == 0). */
function readArgv0(path: string): Buffer | undefined {
  const n = slurp(path, 0);
  if (n <= 0) return undefined;
  const nul = scratch.indexOf(0);
  return copyOut(0, nul !== -1 && nul < n ? nul : n);
}

/**
 * kdbus used task_cgroup_path(): the task's path in the hierarchy with the lowest id among
 * the mounted v1 hierarchies. On a cgroup2-only system it would say "/"; the unified
 * hierarchy's path ("0::/path") is reported instead, which is what a reader wants there.
 * Lines are "id:controllers:path", and the path may itself contain colons.
 */
function readCgroup(path: string): Buffer | undefined {
  const n = slurp(path);
  if (n < 0) return undefined;
  const text = scratch.toString('latin1', 0, n);
  let bestId = Infinity;
  let best: string | undefined;
  let unified: string | undefined;
  for (const line of text.split('\n')) {
    const c1 = line.indexOf(':');
    const c2 = c1 === -1 ? -1 : line.indexOf(':', c1 + 1);
    if (c2 === -1) continue;
    const id = Number(line.slice(0, c1));
    const cgPath = line.slice(c2 + 1);
    if (id === 0) unified = cgPath;
    else if (id < bestId) {
      bestId = id;
      best = cgPath;
    }
  }
  return Buffer.from(best ?? unified ?? '/', 'latin1');
}

/**
 * The LSM context. Without an LSM the read fails (EINVAL) and kdbus attached no SECLABEL;
 * SELinux ends the context with a NUL and AppArmor with a newline, neither belongs to it.
 */
function readSeclabel(path: string): Buffer | undefined {
  let n = slurp(path);
  while (n > 0 && (scratch[n - 1] === 0 || scratch[n - 1] === 0x0a)) n--;
  return n > 0 ? copyOut(0, n) : undefined;
}

/** Both files exist only in kernels with audit support, where kdbus attached AUDIT. */
function readAudit(task: string): TaskAudit | undefined {
  const loginuid = readDecimal(`${task}/loginuid`);
  const sessionid = readDecimal(`${task}/sessionid`);
  if (loginuid === undefined || sessionid === undefined) return undefined;
  return { loginuid, sessionid };
}

function readDecimal(path: string): number | undefined {
  const n = slurp(path);
  if (n <= 0) return undefined;
  const v = Number(scratch.toString('latin1', 0, n).trim());
  return Number.isInteger(v) ? v : undefined;
}
