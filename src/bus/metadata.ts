/**
 * kdbus metadata: the items describing a sender (process facts, held names, description,
 * timestamp) that are appended to messages, CONN_INFO and BUS_CREATOR_INFO records
 * (kdbus-abi.md §3.17, kernel metadata.c).
 *
 * Process facts are snapshotted into a ProcMetadata — from the calling task through /proc,
 * or from the CREDS/PIDS/SECLABEL items a privileged HELLO supplies instead. The encoder
 * emits what a mask selects and the snapshot has, in the kernel's fixed order. Every
 * process item is encoded once per snapshot and reused for every receiver.
 *
 * Namespaces: facts are read in the daemon's namespaces, which stand for the domain's. A
 * receiver made in other namespaces gets them translated (kdbus_meta_export): ids through
 * its id maps, pids into its pid namespace, capabilities by how the user namespaces nest
 * (src/os/namespaces.ts). Those items are then encoded per receiver; everyone else shares
 * the cached encoding.
 */
import { ALIGN8, Attach, ITEM_HEADER_SIZE, ItemType, NameFlags, StructSize } from '../abi/constants';
import { fail } from '../abi/errno';
import type { ItemWriter } from '../abi/items';
import { capLastCap, readTask, taskExists, type TaskAudit, type TaskCaps } from '../os/proc';
import {
  capsInView, DAEMON_VIEW, gidInView, isDaemonUserNamespace, loginUidInView, pidInView, pidNamespaceChain,
  uidInView, userNamespaceOfTask, type NamespaceView, type PidTrail,
} from '../os/namespaces';
import type { Credentials } from './caller';

/** Granted to every receiver whatever the sender allows (kdbus_meta_get_mask). */
export const IMPLICIT_ATTACH =
  Attach.CONN_DESCRIPTION | Attach.TIMESTAMP | Attach.NAMES | Attach.AUXGROUPS | Attach.CREDS | Attach.PIDS;

/** Granted beyond the sender's mask only when the receiver could read the sender's /proc entry. */
export const PROCFS_ATTACH =
  Attach.TID_COMM | Attach.PID_COMM | Attach.SECLABEL | Attach.CMDLINE | Attach.CGROUP | Attach.AUDIT |
  Attach.CAPS | Attach.EXE;

/** Kernel notifications carry a timestamp, whatever the receiver asked for. */
export const NOTIFICATION_ATTACH = Attach.TIMESTAMP;

/** Every process item: what HELLO and BUS_MAKE snapshot, and what a ProcMetadata can hold. */
export const PROC_ATTACH_MASK = PROCFS_ATTACH | Attach.CREDS | Attach.PIDS | Attach.AUXGROUPS;

/** Items that come out of one read of the status file, so they are collected together. */
const STATUS_ITEMS = Attach.CREDS | Attach.PIDS | Attach.AUXGROUPS | Attach.CAPS;

/**
 * Attach masks from clients (HELLO, UPDATE, BUS_MAKE, CONN_INFO): ~0 means "all there is",
 * for compatibility with clients built before later bits existed; unknown bits are an error.
 */
export function sanitizeAttachMask(mask: bigint): bigint {
  if (mask === Attach.ANY) return Attach.ALL;
  if (mask & ~Attach.ALL) {
    throw fail('EINVAL', `attach mask 0x${mask.toString(16)} has bits outside 0x${Attach.ALL.toString(16)}`);
  }
  return mask;
}

/**
 * The metadata a receiver gets on a message: what it asked for (attach_flags_recv), limited
 * to what the sender allows (attach_flags_send), the implicit items, and — when the
 * receiver could read the sender's /proc entry — the /proc-like items. That is when the
 * sending task is visible in the receiver's pid namespace (ProcMetadata.visibleIn); kdbus's
 * hidepid case is not modelled, as the daemon's /proc is not the receiver's.
 * (CONN_INFO is different: requested & the target's attach_flags_send.)
 */
export function effectiveMask(senderSendMask: bigint, receiverRecvMask: bigint, senderVisible = true): bigint {
  const granted = senderSendMask | IMPLICIT_ATTACH | (senderVisible ? PROCFS_ATTACH : 0n);
  return granted & receiverRecvMask;
}

export type UnixIds = Omit<Credentials, 'groups'>;

export interface TaskPids {
  /** Thread-group id. */
  pid: number;
  /** Thread id. */
  tid: number;
  /** Real parent's thread-group id, 0 when unknown. */
  ppid: number;
}

/** Process facts; an absent field means the matching item is not attached. */
export interface ProcFacts {
  creds?: UnixIds;
  groups?: readonly number[];
  pids?: TaskPids;
  /** Where pids lie below the daemon's pid namespace; absent: all three are in it. */
  pidTrails?: { pid?: PidTrail; tid?: PidTrail; ppid?: PidTrail };
  /** The task's user namespace (inode), read when CAPS is asked for; absent: the daemon's. */
  userNs?: number;
  caps?: TaskCaps & { lastCap: number };
  /** Byte strings, without the NUL the items add. */
  tidComm?: Buffer;
  pidComm?: Buffer;
  exe?: Buffer;
  cmdline?: Buffer;
  cgroup?: Buffer;
  seclabel?: Buffer;
  audit?: TaskAudit;
}

const INVALID_ID = 0xffff_ffff;

/** Items whose content depends on the receiver's namespaces. */
const NAMESPACED = Attach.CREDS | Attach.PIDS | Attach.AUXGROUPS | Attach.CAPS | Attach.AUDIT;

/** Attach bit numbers of the process items, in the kernel's emission order. */
const PROC_ORDER = [1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12].map((bit) => ({ bit, flag: 1n << BigInt(bit) }));

/** A snapshot of a task's process metadata, or of the faked items of a privileged HELLO. */
export class ProcMetadata {
  private readonly f: ProcFacts;
  private collected = 0n;
  private userNsRead = false;
  private valid_ = 0n;
  private readonly wire: Array<Buffer | undefined> = [];

  /**
   * A snapshot of the given facts. With `source`, ensure() can add facts of that task later
   * (collectProcMetadata builds snapshots that way). `faked`: made from HELLO items rather
   * than a task (fakeProcMetadata); messages of such a connection carry no process metadata.
   */
  constructor(
    facts: ProcFacts = {},
    private readonly source?: { pid: number; tid: number },
    readonly faked = false,
  ) {
    this.f = { ...facts };
    this.refreshValid();
  }

  get creds(): Readonly<UnixIds> | undefined { return this.f.creds; }
  get groups(): readonly number[] | undefined { return this.f.groups; }
  get pids(): Readonly<TaskPids> | undefined { return this.f.pids; }
  get caps(): Readonly<TaskCaps & { lastCap: number }> | undefined { return this.f.caps; }
  get tidComm(): Buffer | undefined { return this.f.tidComm; }
  get pidComm(): Buffer | undefined { return this.f.pidComm; }
  get exe(): Buffer | undefined { return this.f.exe; }
  get cmdline(): Buffer | undefined { return this.f.cmdline; }
  get cgroup(): Buffer | undefined { return this.f.cgroup; }
  get seclabel(): Buffer | undefined { return this.f.seclabel; }
  get audit(): Readonly<TaskAudit> | undefined { return this.f.audit; }

  /** Attach bits of the items this snapshot can emit. */
  get valid(): bigint {
    return this.valid_;
  }

  /**
   * Reads the facts `mask` asks for that this snapshot has not tried yet (kdbus collected
   * incrementally the same way while it went through a broadcast's receivers). A no-op for
   * snapshots without a source task.
   */
  ensure(mask: bigint): void {
    const src = this.source;
    let want = mask & PROC_ATTACH_MASK & ~this.collected;
    if (!src || want === 0n) {
      if (src && mask & Attach.CAPS) this.placeCaps(src.pid);
      return;
    }
    if (want & STATUS_ITEMS) want |= STATUS_ITEMS;
    this.collected |= want;
    const info = readTask(src.pid, src.tid, want);
    const f = this.f;
    if (want & STATUS_ITEMS) {
      const st = info.status;
      if (st) {
        const { groups, ...ids } = st.creds;
        f.creds = ids;
        f.groups = groups;
        f.caps = { ...st.caps, lastCap: capLastCap() };
      }
      // The transport saw pid and tid itself; only the parent is lost with the status file.
      f.pids = { pid: st ? st.tgid : src.pid, tid: src.tid, ppid: st ? st.ppid : 0 };
      if (st?.nsTgid && st.nsPid) {
        // A task below the daemon's pid namespace; its parent is in the same or an outer one.
        const chain = pidNamespaceChain(src.tid);
        const parent = st.ppid > 0 ? readTask(st.ppid, st.ppid, Attach.PIDS).status : undefined;
        const ppidNrs = parent?.nsTgid ?? [st.ppid];
        f.pidTrails = {
          pid: { nrs: st.nsTgid, chain },
          tid: { nrs: st.nsPid, chain },
          ppid: { nrs: ppidNrs, chain: chain.slice(0, ppidNrs.length - 1) },
        };
      }
    }
    if (info.tidComm) f.tidComm = info.tidComm;
    if (info.pidComm) f.pidComm = info.pidComm;
    if (info.exe) f.exe = info.exe;
    if (info.cmdline) f.cmdline = info.cmdline;
    if (info.cgroup) f.cgroup = info.cgroup;
    if (info.seclabel) f.seclabel = info.seclabel;
    if (info.audit) f.audit = info.audit;
    if (mask & Attach.CAPS) this.placeCaps(src.pid);
    this.refreshValid();
  }

  /**
   * Capabilities only mean something in their user namespace: a task that made its own
   * holds every bit there, and must not look privileged to receivers outside it.
   */
  private placeCaps(pid: number): void {
    const f = this.f;
    if (this.userNsRead || !f.caps || !f.creds) return;
    this.userNsRead = true;
    const ns = userNamespaceOfTask(pid, f.creds.euid, f.caps);
    if (ns !== undefined && !isDaemonUserNamespace(ns)) f.userNs = ns;
  }

  /**
   * Whether the task is visible in the pid namespace of `view` (kdbus_meta_proc_mask's
   * condition for the /proc-like items). Reads the status file if it was not read yet.
   */
  visibleIn(view: NamespaceView): boolean {
    if (view.pidChain.length === 0) return true;
    this.ensure(Attach.PIDS);
    const p = this.f.pids;
    return p !== undefined && pidInView(view, p.tid, this.f.pidTrails?.tid) !== 0;
  }

  /** The item for attach bit `bit`, header to padding, as it goes on the wire to `view`. */
  wireItem(bit: number, view: NamespaceView = DAEMON_VIEW): Buffer | undefined {
    if (view.foreign || this.f.userNs !== undefined) {
      const flag = 1n << BigInt(bit);
      if ((view.foreign && flag & NAMESPACED) || flag === Attach.CAPS) return encodeProcItem(bit, this.f, view);
    }
    let item = this.wire[bit];
    if (item === undefined) {
      item = encodeProcItem(bit, this.f);
      this.wire[bit] = item;
    }
    return item;
  }

  private refreshValid(): void {
    const f = this.f;
    let v = 0n;
    if (f.creds) v |= Attach.CREDS;
    if (f.pids) v |= Attach.PIDS;
    if (f.groups) v |= Attach.AUXGROUPS;
    if (f.tidComm) v |= Attach.TID_COMM;
    if (f.pidComm) v |= Attach.PID_COMM;
    if (f.exe) v |= Attach.EXE;
    if (f.cmdline) v |= Attach.CMDLINE;
    if (f.cgroup) v |= Attach.CGROUP;
    if (f.caps) v |= Attach.CAPS;
    if (f.seclabel) v |= Attach.SECLABEL;
    if (f.audit) v |= Attach.AUDIT;
    this.valid_ = v;
  }
}

/**
 * Snapshots task `tid` of process `pid` for the items in `mask`, at the moment of the call
 * (kdbus collected from `current` during SEND). A task that vanished gives what could
 * still be read. ensure() extends the snapshot when later receivers want more.
 */
export function collectProcMetadata(pid: number, tid: number, mask: bigint): ProcMetadata {
  const meta = new ProcMetadata({}, { pid, tid });
  meta.ensure(mask);
  return meta;
}

/**
 * Faked metadata from a privileged HELLO's items, checked like kdbus_meta_fake_collect:
 * - CREDS (kdbus_creds, eight u64): each id is taken as a 32-bit uid_t/gid_t; a value that
 *   only becomes the invalid id (u32 ~0) by that truncation is EINVAL, ~0 itself is kept;
 * - PIDS (kdbus_pids, u64 pid, tid, ppid): a non-zero value, truncated to int as find_vpid()
 *   took it, must name a live task, else EINVAL. kdbus never checked this item's size; bytes
 *   a short payload lacks read as zero here;
 * - SECLABEL: kept as given.
 * Such a connection has no other process metadata, and its messages carry none at all.
 */
export function fakeProcMetadata(items: { creds?: Buffer; pids?: Buffer; seclabel?: string }): ProcMetadata {
  const facts: ProcFacts = {};
  const { creds, pids, seclabel } = items;
  if (creds) {
    const id = (index: number, name: string): number => {
      const raw = creds.readBigUInt64LE(index * 8);
      const v = Number(raw & 0xffff_ffffn);
      if (v === INVALID_ID && raw !== 0xffff_ffffn) {
        throw fail('EINVAL', `faked creds: ${name} 0x${raw.toString(16)} is not a valid id`);
      }
      return v;
    };
    facts.creds = {
      uid: id(0, 'uid'), euid: id(1, 'euid'), suid: id(2, 'suid'), fsuid: id(3, 'fsuid'),
      gid: id(4, 'gid'), egid: id(5, 'egid'), sgid: id(6, 'sgid'), fsgid: id(7, 'fsgid'),
    };
  }
  if (pids) {
    const full = Buffer.alloc(StructSize.pids);
    pids.copy(full, 0, 0, Math.min(pids.length, full.length));
    const task = (index: number, name: string): number => {
      const raw = full.readBigUInt64LE(index * 8);
      if (raw === 0n) return 0;
      const nr = Number(BigInt.asIntN(32, raw));
      if (!taskExists(nr)) throw fail('EINVAL', `faked pids: ${name} ${raw} names no task`);
      return nr;
    };
    facts.pids = { pid: task(0, 'pid'), tid: task(1, 'tid'), ppid: task(2, 'ppid') };
    const trail = (nr: number): PidTrail | undefined => {
      const nrs = nr > 0 ? readTask(nr, nr, Attach.PIDS).status?.nsPid : undefined;
      return nrs && { nrs, chain: pidNamespaceChain(nr) };
    };
    const trails = { pid: trail(facts.pids.pid), tid: trail(facts.pids.tid), ppid: trail(facts.pids.ppid) };
    if (trails.pid || trails.tid || trails.ppid) facts.pidTrails = trails;
  }
  if (seclabel !== undefined) facts.seclabel = Buffer.from(seclabel, 'latin1');
  return new ProcMetadata(facts, undefined, true);
}

/** A zeroed, padded item with its header written. */
function newItem(type: number, payloadLen: number): Buffer {
  const b = Buffer.alloc(ALIGN8(ITEM_HEADER_SIZE + payloadLen));
  b.writeUInt32LE(ITEM_HEADER_SIZE + payloadLen, 0);
  b.writeUInt32LE(type, 8);
  return b;
}

/** u32 values widened to u64 fields: the high words stay zero. */
function u64Words(type: number, values: readonly number[]): Buffer {
  const b = newItem(type, values.length * 8);
  for (let i = 0; i < values.length; i++) b.writeUInt32LE(values[i], ITEM_HEADER_SIZE + i * 8);
  return b;
}

function stringItem(type: number, s: Buffer): Buffer {
  const b = newItem(type, s.length + 1);
  s.copy(b, ITEM_HEADER_SIZE);
  return b;
}

/**
 * kdbus_caps as the kernel fills it: last_cap, then inheritable, permitted, effective and
 * bounding sets of two u32 words each (_KERNEL_CAPABILITY_U32S), with the bits above
 * last_cap cleared in the word that holds it (CAP_LAST_U32_VALID_MASK).
 */
function capsItem(caps: TaskCaps & { lastCap: number }, seen: 'verbatim' | 'all' | 'none'): Buffer {
  const words = 2;
  const b = newItem(ItemType.CAPS, 4 + 4 * words * 4);
  b.writeUInt32LE(caps.lastCap, ITEM_HEADER_SIZE);
  const lastWord = caps.lastCap >>> 5;
  const lastWordMask = 2 ** ((caps.lastCap + 1) & 31) - 1;
  const sets = seen === 'verbatim' ? [caps.inheritable, caps.permitted, caps.effective, caps.bounding]
    : seen === 'all' ? [0n, ALL_CAPS, ALL_CAPS, ALL_CAPS] : [0n, 0n, 0n, 0n];
  for (let s = 0; s < sets.length; s++) {
    for (let w = 0; w < words; w++) {
      let word = Number((sets[s] >> BigInt(32 * w)) & 0xffff_ffffn);
      if (w === lastWord) word = (word & lastWordMask) >>> 0;
      b.writeUInt32LE(word, ITEM_HEADER_SIZE + 4 + (s * words + w) * 4);
    }
  }
  return b;
}

/** Every capability bit; capsItem clears those above last_cap. */
const ALL_CAPS = 0xffff_ffff_ffff_ffffn;

/** Encodes one item of `f` as a receiver in the namespaces of `view` sees it. */
function encodeProcItem(bit: number, f: ProcFacts, view: NamespaceView = DAEMON_VIEW): Buffer | undefined {
  switch (1n << BigInt(bit)) {
    case Attach.CREDS: {
      const c = f.creds;
      if (!c) return undefined;
      const u = (id: number): number => uidInView(view, id);
      const g = (id: number): number => gidInView(view, id);
      return u64Words(ItemType.CREDS, [u(c.uid), u(c.euid), u(c.suid), u(c.fsuid), g(c.gid), g(c.egid), g(c.sgid), g(c.fsgid)]);
    }
    case Attach.PIDS: {
      const p = f.pids;
      if (!p) return undefined;
      const t = f.pidTrails;
      return u64Words(ItemType.PIDS, [pidInView(view, p.pid, t?.pid), pidInView(view, p.tid, t?.tid), pidInView(view, p.ppid, t?.ppid)]);
    }
    case Attach.AUXGROUPS:
      return f.groups && u64Words(ItemType.AUXGROUPS, view.gidMap ? f.groups.map((id) => gidInView(view, id)) : f.groups);
    case Attach.TID_COMM:
      return f.tidComm && stringItem(ItemType.TID_COMM, f.tidComm);
    case Attach.PID_COMM:
      return f.pidComm && stringItem(ItemType.PID_COMM, f.pidComm);
    case Attach.EXE:
      return f.exe && stringItem(ItemType.EXE, f.exe);
    case Attach.CMDLINE:
      return f.cmdline && stringItem(ItemType.CMDLINE, f.cmdline);
    case Attach.CGROUP:
      return f.cgroup && stringItem(ItemType.CGROUP, f.cgroup);
    case Attach.CAPS:
      return f.caps && capsItem(f.caps, capsInView(view, f.userNs, f.creds?.euid ?? INVALID_ID));
    case Attach.SECLABEL:
      return f.seclabel && stringItem(ItemType.SECLABEL, f.seclabel);
    case Attach.AUDIT: {
      const a = f.audit;
      if (!a) return undefined;
      const b = newItem(ItemType.AUDIT, StructSize.audit);
      b.writeUInt32LE(a.sessionid >>> 0, ITEM_HEADER_SIZE);
      b.writeUInt32LE(loginUidInView(view, a.loginuid >>> 0), ITEM_HEADER_SIZE + 4);
      return b;
    }
    default:
      return undefined;
  }
}

export interface MetadataTimestamp {
  seqnum: bigint;
  monotonicNs: bigint;
  realtimeNs: bigint;
}

export interface MetadataParts {
  proc?: ProcMetadata;
  /** The sender's name records; those with IN_QUEUE are skipped. Iterated once per call. */
  ownedNames?: Iterable<{ name: string; flags: bigint }>;
  /** latin1, one char per byte, like every name in this project. */
  description?: string;
  timestamp?: MetadataTimestamp;
  /** The receiver's namespaces; absent: the daemon's. */
  view?: NamespaceView;
}

/**
 * Appends the metadata items `mask` selects and `parts` has, in kdbus's order: CREDS, PIDS,
 * AUXGROUPS, TID_COMM, PID_COMM, EXE, CMDLINE, CGROUP, CAPS, SECLABEL, AUDIT, OWNED_NAME×n,
 * CONN_DESCRIPTION, TIMESTAMP. Each item is padded to 8 with zeros; the writer must be at an
 * 8-aligned position. Returns metadataSize(): the bytes written, minus the last item's padding.
 */
export function encodeMetadata(w: ItemWriter, parts: MetadataParts, mask: bigint): number {
  return emit(w, parts, mask);
}

/**
 * The metadata size as kdbus reports it: up to the end of the last item, without its
 * padding — what a message's kdbus_msg.size counts (ALIGN8(msg) + this). encodeMetadata
 * writes ALIGN8 of it.
 */
export function metadataSize(parts: MetadataParts, mask: bigint): number {
  return emit(undefined, parts, mask);
}

// Measuring and writing share this walk, so the two cannot disagree.
function emit(w: ItemWriter | undefined, parts: MetadataParts, mask: bigint): number {
  let size = 0;
  let end = 0;
  const account = (real: number): void => {
    end = size + real;
    size += ALIGN8(real);
  };

  const proc = parts.proc;
  const procMask = proc ? mask & proc.valid : 0n;
  if (proc && procMask !== 0n) {
    for (const { bit, flag } of PROC_ORDER) {
      if (!(procMask & flag)) continue;
      const item = proc.wireItem(bit, parts.view) as Buffer;
      w?.bytes(item);
      account(item.readUInt32LE(0));
    }
  }

  if (mask & Attach.NAMES && parts.ownedNames) {
    for (const { name, flags } of parts.ownedNames) {
      if (flags & NameFlags.IN_QUEUE) continue;
      if (w) {
        const at = w.beginItem(ItemType.OWNED_NAME);
        w.u64(flags).bytes(Buffer.from(name, 'latin1')).zeros(1).endItem(at);
      }
      account(ITEM_HEADER_SIZE + StructSize.name_header + name.length + 1);
    }
  }

  const description = parts.description;
  if (mask & Attach.CONN_DESCRIPTION && description !== undefined) {
    w?.string(ItemType.CONN_DESCRIPTION, description);
    account(ITEM_HEADER_SIZE + description.length + 1);
  }

  const ts = parts.timestamp;
  if (mask & Attach.TIMESTAMP && ts) {
    w?.itemU64(ItemType.TIMESTAMP, ts.seqnum, ts.monotonicNs, ts.realtimeNs);
    account(ITEM_HEADER_SIZE + StructSize.timestamp);
  }

  return end;
}
