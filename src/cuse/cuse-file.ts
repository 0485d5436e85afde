/**
 * One open file of a CUSE device: the Handle behind a FUSE file handle, the poll handle
 * the kernel gave us, the ioctls in flight (for FUSE_INTERRUPT), and the shim's side
 * channel once it attached.
 */
import type { FileInstaller, ImportedFile } from '../bus/caller';
import type { Handle } from '../bus/handle';
import type { Interruption } from '../bus/interruption';
import { callerIdentity, type CallerIdentity } from '../os/caller-identity';
import type { AttachTarget, SideChannel } from '../transport/attachments';

/** Installs files through the attached shim; without one, RECV reports INCOMPLETE_FDS. */
export class SideChannelInstaller implements FileInstaller {
  constructor(private readonly file: CuseFile) {}

  install(files: readonly ImportedFile[]): number[] {
    const side = this.file.side;
    return side ? side.install(files) : files.map(() => -1);
  }
}

export class CuseFile implements AttachTarget {
  /** kh of the last FUSE_POLL that asked to be notified. */
  pollKh: number | undefined;
  /** Waiting SENDs by FUSE request id. */
  readonly inFlight = new Map<number, Interruption>();
  side: SideChannel | undefined;
  stopWake: (() => void) | undefined;
  readonly installer = new SideChannelInstaller(this);
  /**
   * Callers of this open file, by thread and the fsuid/fsgid FUSE reports with every request:
   * reading /proc for each ioctl cost a third of it. A changed uid or gid reads /proc again;
   * the entries go with the file (a thread id reused while the file stays open would need a
   * pid wrap-around within its lifetime).
   */
  private readonly callers = new Map<string, CallerIdentity>();
  /** The last caller, asked first: most files have one calling thread. */
  private lastTid = -1;
  private lastUid = -1;
  private lastGid = -1;
  private lastIdentity: CallerIdentity | undefined;

  constructor(readonly handle: Handle) {}

  caller(tid: number, fsuid: number, fsgid: number): CallerIdentity {
    if (tid === this.lastTid && fsuid === this.lastUid && fsgid === this.lastGid && this.lastIdentity) return this.lastIdentity;
    const key = `${tid}:${fsuid}:${fsgid}`;
    let id = this.callers.get(key);
    if (!id) {
      id = callerIdentity(tid);
      if (this.callers.size >= 256) this.callers.clear();
      this.callers.set(key, id);
    }
    this.lastTid = tid;
    this.lastUid = fsuid;
    this.lastGid = fsgid;
    this.lastIdentity = id;
    return id;
  }

  attach(side: SideChannel): void {
    this.side = side;
  }

  detach(side: SideChannel): void {
    if (this.side === side) this.side = undefined;
  }
}
