/**
 * What the bus knows about the process on the other side of a handle. Transports fill
 * these in (CUSE from fuse_in_header and /proc, the socket transport from SO_PEERCRED and
 * /proc); the bus never asks the OS about a client itself except through these objects.
 */
import type { CallerMemory } from '../abi/memory';
import type { PoolStorage } from './pool-storage';

/** Credentials as kdbus snapshots them: at open() for the file, at each ioctl for SEND. */
export interface Credentials {
  uid: number;
  euid: number;
  suid: number;
  fsuid: number;
  gid: number;
  egid: number;
  sgid: number;
  fsgid: number;
  /** Supplementary groups. */
  groups: readonly number[];
}

/** The opener of a kdbus file, captured once at open(): decides ownership and privilege. */
export interface Opener {
  creds: Credentials;
  /** CAP_IPC_OWNER in the domain's user namespace (the daemon's). */
  privileged: boolean;
  pid: number;
  /**
   * Where this file's pool lives, if not where the domain puts pools: a connection the
   * daemon holds itself is never mapped, so its pool needs no memfd.
   */
  poolStorage?: (size: number) => PoolStorage;
}

/**
 * A file the caller referred to by fd number (FDS, PAYLOAD_MEMFD, CANCEL_FD), imported into
 * the daemon. The daemon owns the reference until close() is called.
 */
export interface ImportedFile {
  /** What kdbus cares about when it checks an fd it is asked to pass. */
  readonly kind: 'memfd' | 'kdbus' | 'unix-socket' | 'other';
  /** F_GET_SEALS of a memfd (F_SEAL_SEAL 1, SHRINK 2, GROW 4, WRITE 8), 0 otherwise. */
  readonly seals: number;
  /** Current size in bytes (memfds). */
  readonly size: number;
  /** Whether the file supports poll (required of a CANCEL_FD). */
  readonly pollable: boolean;
  /** A daemon-side descriptor number, for transports that hand it on. */
  readonly fd: number;
  /** Copy of part of the file's content (memfd payloads delivered to monitors, bridges). */
  read(offset: number, length: number): Buffer;
  /** Resolves once the file polls readable (CANCEL_FD); the returned function stops waiting. */
  onReadable(callback: () => void): () => void;
  close(): void;
}

/** Takes files out of the caller's descriptor table (pidfd_getfd, SCM_RIGHTS side channel). */
export interface CallerFiles {
  /** Throws KdbusError EBADF when the caller has no such descriptor. */
  get(fd: number): ImportedFile;
}

/** Puts files into a receiving process at RECV; returns the new numbers, -1 where it failed. */
export interface FileInstaller {
  install(files: readonly ImportedFile[]): number[];
}

/** Everything one ioctl runs against. */
export interface CallContext {
  mem: CallerMemory;
  files: CallerFiles;
  installer: FileInstaller;
  /** Calling thread and process, as the transport saw them for this ioctl. */
  pid: number;
  tid: number;
  /** The calling task's credentials now (kdbus's current_cred() at SEND). */
  creds: Credentials;
  /** Aborted when the client's syscall is interrupted (FUSE_INTERRUPT, socket closed). */
  signal?: Interruptible;
}

/**
 * What a waiting command uses of an interruption. An AbortSignal is one; a transport may
 * pass something cheaper (an AbortController costs microseconds, once per synchronous call).
 */
export interface Interruptible {
  readonly aborted: boolean;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}
