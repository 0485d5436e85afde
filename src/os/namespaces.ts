/**
 * The user and pid namespaces of client processes, as seen from the daemon, whose own
 * namespaces stand for the kdbus domain's.
 *
 * kdbus decided privilege with file_ns_capable() against the domain's user namespace and DAC
 * override with capable_wrt_inode_uidgid(): a capability bit in /proc/<pid>/status counts
 * only in the namespace that holds it. And kdbus translated metadata into the namespaces a
 * receiving connection was made in (kdbus_meta_export): ids through the receiver's id maps
 * (unmapped ids become the overflow id), pids into its pid namespace (0 where the task is not
 * visible), capabilities by how the two user namespaces nest. The daemon reads /proc from
 * its own namespaces, so every id and pid it has is already in the domain's terms; a
 * NamespaceView says how to go from there to a receiver's.
 *
 * Nesting is learnt from nsfs: NS_GET_PARENT walks up from a process's namespace until the
 * daemon's, NS_GET_OWNER_UID gives a user namespace's creator. Namespaces are compared by
 * inode number (what the /proc/<pid>/ns links name).
 */
import * as fs from 'node:fs';
import { ioctl } from './libc';

/** _IO(0xb7, 2) and _IO(0xb7, 4) of linux/nsfs.h. */
const NS_GET_PARENT = 0xb702;
const NS_GET_OWNER_UID = 0xb704;
/** PROC_USER_INIT_INO: the initial user namespace's inode number, fixed by the kernel. */
const INIT_USER_NS = 0xeffffffd;
/** Both user and pid namespaces nest at most 32 deep. */
const MAX_DEPTH = 33;
const INVALID_ID = 0xffff_ffff;

/** One line of /proc/<pid>/uid_map or gid_map: ids first..first+count-1 inside are lower.. outside. */
export interface IdExtent {
  first: number;
  lower: number;
  count: number;
}

/** A user namespace between a receiver's and the daemon's, and its creator's uid. */
export interface UserNsLink {
  ino: number;
  owner: number;
}

/** How metadata in the daemon's terms translates into one receiver's namespaces. */
export interface NamespaceView {
  /** Whether anything needs translating (false for the daemon's own namespaces). */
  readonly foreign: boolean;
  /**
   * The receiver's user namespace and its ancestors below the daemon's, innermost first;
   * empty for the daemon's namespace.
   */
  readonly userChain: readonly UserNsLink[];
  /** Whether userChain ends right below the daemon's namespace (false: one beside it). */
  readonly userBelowDaemon: boolean;
  /** The receiver's id maps; undefined in the daemon's user namespace. */
  readonly uidMap: readonly IdExtent[] | undefined;
  readonly gidMap: readonly IdExtent[] | undefined;
  /** The pid namespaces below the daemon's down to the receiver's, outermost first (index i: depth i+1). */
  readonly pidChain: readonly number[];
}

/** The daemon's own namespaces: nothing to translate. */
export const DAEMON_VIEW: NamespaceView = {
  foreign: false, userChain: [], userBelowDaemon: true, uidMap: undefined, gidMap: undefined, pidChain: [],
};

/**
 * A task's numbers in each pid namespace from the daemon's down to its own (NSpid of its
 * status file), with those namespaces below the daemon's, outermost first.
 */
export interface PidTrail {
  readonly nrs: readonly number[];
  readonly chain: readonly number[];
}

let ownUser: number | undefined;
let ownPid: number | undefined;
let overflow: { uid: number; gid: number } | undefined;

function linkInode(path: string): number | undefined {
  try {
    const link = fs.readlinkSync(path);
    const open = link.indexOf('[');
    return open === -1 ? undefined : Number(link.slice(open + 1, -1));
  } catch {
    return undefined;
  }
}

function daemonUserNs(): number {
  ownUser ??= linkInode('/proc/self/ns/user') ?? INIT_USER_NS;
  return ownUser;
}

function daemonPidNs(): number {
  ownPid ??= linkInode('/proc/self/ns/pid') ?? 0;
  return ownPid;
}

/** The user namespace (inode) task `tid` of `pid` is in now; undefined when it cannot be read. */
export function userNamespaceOf(pid: number, tid = pid): number | undefined {
  return linkInode(`/proc/${pid}/task/${tid}/ns/user`);
}

interface NsMemo {
  euid: number;
  inheritable: bigint;
  permitted: bigint;
  effective: bigint;
  bounding: bigint;
  ns: number | undefined;
}

/** Remembered user namespaces by process; bounded like the status file cache. */
const nsMemo = new Map<number, NsMemo>();
const NS_MEMO_KEPT = 256;

/**
 * The user namespace of process `pid`, given its current euid and capability sets from its
 * status file. Reading the link costs more than the rest of a message's metadata, so the
 * answer is remembered while euid and sets stay the same: entering a user namespace
 * (unshare, setns; only a single-threaded process may) always sets the sets to empty,
 * full, full, full, so a change shows — except where a process of the same euid (this one
 * before, or an earlier holder of its pid) held exactly those in the daemon's namespace:
 * the stale answer then credits it with what that euid had there anyway.
 */
export function userNamespaceOfTask(
  pid: number, euid: number, caps: { inheritable: bigint; permitted: bigint; effective: bigint; bounding: bigint },
): number | undefined {
  const m = nsMemo.get(pid);
  if (
    m && m.euid === euid && m.inheritable === caps.inheritable && m.permitted === caps.permitted &&
    m.effective === caps.effective && m.bounding === caps.bounding
  ) {
    return m.ns;
  }
  const ns = linkInode(`/proc/${pid}/ns/user`);
  if (!m && nsMemo.size >= NS_MEMO_KEPT) nsMemo.clear();
  nsMemo.set(pid, { euid, ...caps, ns });
  return ns;
}

/**
 * Whether `pid` is in the daemon's own user namespace (the one kdbus's domain would have).
 * The namespace link is only readable for processes the daemon may trace; for others (a
 * root client of an unprivileged daemon) the public id maps decide: a namespace with the
 * daemon's own maps can only have been made by someone who held those ids already.
 */
export function inDaemonUserNamespace(pid: number): boolean {
  const ns = userNamespaceOf(pid);
  if (ns !== undefined) return ns === daemonUserNs();
  const maps = (p: number | 'self'): string | undefined => {
    try {
      return fs.readFileSync(`/proc/${p}/uid_map`, 'latin1') + fs.readFileSync(`/proc/${p}/gid_map`, 'latin1');
    } catch {
      return undefined;
    }
  };
  const theirs = maps(pid);
  return theirs !== undefined && theirs === maps('self');
}

/** Whether the user namespace with inode `ino` is the daemon's. */
export function isDaemonUserNamespace(ino: number): boolean {
  return ino === daemonUserNs();
}

/**
 * The uid or gid map of `pid`'s user namespace. Read by the daemon, the lower ids are the
 * daemon's own (the kernel shows them in the reader's namespace). Undefined when gone.
 */
export function readIdMap(pid: number, kind: 'uid' | 'gid'): IdExtent[] | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/${kind}_map`, 'latin1');
  } catch {
    return undefined;
  }
  const map: IdExtent[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length !== 3) continue;
    map.push({ first: Number(f[0]), lower: Number(f[1]), count: Number(f[2]) });
  }
  return map;
}

/** Whether the daemon-side id `id` has a name inside the namespace of `map` (kuid_has_mapping). */
export function idMapped(map: readonly IdExtent[], id: number): boolean {
  return mapDown(map, id) !== undefined;
}

function mapDown(map: readonly IdExtent[], id: number): number | undefined {
  for (const e of map) if (id >= e.lower && id - e.lower < e.count) return e.first + (id - e.lower);
  return undefined;
}

/** The kernel's overflowuid/overflowgid: what an id without a name in a namespace reads as. */
function overflowIds(): { uid: number; gid: number } {
  if (!overflow) {
    const read = (p: string): number => {
      try {
        const v = Number(fs.readFileSync(p, 'latin1').trim());
        return Number.isInteger(v) ? v : 65534;
      } catch {
        return 65534;
      }
    };
    overflow = { uid: read('/proc/sys/kernel/overflowuid'), gid: read('/proc/sys/kernel/overflowgid') };
  }
  return overflow;
}

/**
 * Walks from the namespace `path` names up to the daemon's (`stopAt`), collecting what lies
 * in between, innermost first. `reached` is false when the walk left the daemon's view
 * (NS_GET_PARENT refuses to go above the caller's own namespace) or the file was unreadable.
 */
function walkUp(path: string, stopAt: number, owners: boolean): { links: UserNsLink[]; reached: boolean } {
  const links: UserNsLink[] = [];
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch {
    return { links, reached: false };
  }
  const uid = Buffer.alloc(4);
  try {
    for (let depth = 0; depth < MAX_DEPTH; depth++) {
      const ino = fs.fstatSync(fd).ino;
      if (ino === stopAt) return { links, reached: true };
      links.push({ ino, owner: owners && ioctl(fd, NS_GET_OWNER_UID, uid) === 0 ? uid.readUInt32LE(0) : INVALID_ID });
      const parent = ioctl(fd, NS_GET_PARENT);
      fs.closeSync(fd);
      fd = parent;
      if (fd < 0) return { links, reached: false };
    }
    return { links, reached: false };
  } finally {
    if (fd >= 0) fs.closeSync(fd);
  }
}

/**
 * The pid namespaces between the daemon's and task `pid`'s, outermost first; empty when the
 * task is in the daemon's (or its namespace cannot be placed below it).
 */
export function pidNamespaceChain(pid: number): number[] {
  const { links, reached } = walkUp(`/proc/${pid}/ns/pid`, daemonPidNs(), false);
  return reached ? links.map((l) => l.ino).reverse() : [];
}

/**
 * The namespaces of a connection: the user namespace of the process that opened the file
 * (kdbus kept the opener's cred), the pid namespace of the one that said HELLO (conn->pid).
 * Two readlinks when both are the daemon's, the usual case.
 */
export function namespaceView(openerPid: number, helloPid: number): NamespaceView {
  const userNs = userNamespaceOf(openerPid) ?? userNamespaceOf(helloPid);
  const pidNs = linkInode(`/proc/${helloPid}/ns/pid`);
  const foreignUser = userNs !== undefined && userNs !== daemonUserNs();
  const foreignPid = pidNs !== undefined && pidNs !== daemonPidNs();
  if (!foreignUser && !foreignPid) return DAEMON_VIEW;
  const mapPid = userNamespaceOf(openerPid) !== undefined ? openerPid : helloPid;
  const user = foreignUser ? walkUp(`/proc/${mapPid}/ns/user`, daemonUserNs(), true) : { links: [], reached: true };
  const pidChain = foreignPid ? pidNamespaceChain(helloPid) : [];
  return {
    foreign: true,
    userChain: user.links,
    userBelowDaemon: user.reached,
    uidMap: foreignUser ? readIdMap(mapPid, 'uid') ?? [] : undefined,
    gidMap: foreignUser ? readIdMap(mapPid, 'gid') ?? [] : undefined,
    pidChain,
  };
}

/** A uid as `view` names it: unmapped ones read as overflowuid, the invalid id stays (kdbus_from_kuid_keep). */
export function uidInView(view: NamespaceView, uid: number): number {
  if (!view.uidMap || uid === INVALID_ID) return uid;
  return mapDown(view.uidMap, uid) ?? overflowIds().uid;
}

export function gidInView(view: NamespaceView, gid: number): number {
  if (!view.gidMap || gid === INVALID_ID) return gid;
  return mapDown(view.gidMap, gid) ?? overflowIds().gid;
}

/** The audit login uid, which kdbus translated with from_kuid(): unmapped is the invalid id. */
export function loginUidInView(view: NamespaceView, uid: number): number {
  if (!view.uidMap) return uid;
  return mapDown(view.uidMap, uid) ?? INVALID_ID;
}

/**
 * A task's number in the receiver's pid namespace (pid_nr_ns): 0 unless that namespace is
 * the task's own or an ancestor of it. `trail` undefined: a task of the daemon's namespace
 * with number `nr`.
 */
export function pidInView(view: NamespaceView, nr: number, trail: PidTrail | undefined): number {
  const depth = view.pidChain.length;
  if (depth === 0 || nr === 0) return nr;
  if (!trail || trail.nrs.length <= depth) return 0;
  return trail.chain[depth - 1] === view.pidChain[depth - 1] ? trail.nrs[depth]! : 0;
}

/**
 * How a sender's capability sets read in the receiver's user namespace
 * (kdbus_meta_export_caps): 'verbatim' when the sender's namespace is the receiver's or an
 * ancestor of it, 'all' when the sender created a namespace on the way up from the
 * receiver's (as a child of the sender's), otherwise 'none'. The walk ends at the initial
 * namespace, or at the daemon's, above which it cannot see.
 */
export function capsInView(view: NamespaceView, senderUserNs: number | undefined, senderEuid: number): 'verbatim' | 'all' | 'none' {
  const own = daemonUserNs();
  const sender = senderUserNs ?? own;
  const chain: UserNsLink[] = view.userBelowDaemon ? [...view.userChain, { ino: own, owner: INVALID_ID }] : [...view.userChain];
  for (let i = 0; i < chain.length; i++) {
    if (chain[i]!.ino === sender) return 'verbatim';
    if (chain[i]!.ino === INIT_USER_NS || i === chain.length - 1) break;
    if (chain[i + 1]!.ino === sender && chain[i]!.owner === senderEuid) return 'all';
  }
  return 'none';
}
