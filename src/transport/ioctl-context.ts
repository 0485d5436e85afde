/**
 * What one IOCTL of the socket transport runs against: the caller's memory (its segments),
 * the descriptors that came with the frame, the numbers the client reserved for files it
 * receives, and the interruption that ends a wait when the client's socket closes.
 */
import { fail } from '../abi/errno';
import type { CallContext, CallerFiles, Credentials, FileInstaller, ImportedFile, Interruptible } from '../bus/caller';
import type { Interruption } from '../bus/interruption';
import { F_DUPFD_CLOEXEC, fcntl } from '../os/libc';
import { ImportedFd } from '../os/pidfd-files';
import { closeFd } from '../os/unix-socket';
import type { SegmentMemory } from './segment-memory';

/** The client's descriptors named in one IOCTL, which came with its frame. */
export class ReceivedFiles implements CallerFiles {
  constructor(private readonly numbers: readonly number[], private readonly fds: readonly number[]) {}

  get(fd: number): ImportedFile {
    const i = this.numbers.indexOf(fd);
    const local = i < 0 ? -1 : this.fds[i]!;
    if (local < 0) throw fail('EBADF', `fd ${fd} is not open in the caller`);
    const dup = fcntl(local, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) throw fail('ENOMEM', 'the daemon is out of file descriptors');
    return new ImportedFd(dup);
  }

  close(): void {
    for (const fd of this.fds) if (fd >= 0) closeFd(fd);
  }
}

/**
 * Gives installed files the numbers the client reserved. The files travel with RESULT,
 * after RECV may already have dropped the message that held them, so the installer keeps
 * duplicates until they are sent.
 */
export class ReservedInstaller implements FileInstaller {
  sent: number[] = [];
  private next = 0;

  constructor(private readonly reserved: readonly number[]) {}

  /** A new attempt of the command: what the last one installed is void. */
  reset(): void {
    this.closeSent();
    this.next = 0;
  }

  closeSent(): void {
    for (const fd of this.sent) closeFd(fd);
    this.sent = [];
  }

  install(files: readonly ImportedFile[]): number[] {
    return files.map((f) => {
      if (this.next >= this.reserved.length || f.fd < 0) return -1;
      const dup = fcntl(f.fd, F_DUPFD_CLOEXEC, 0);
      if (dup < 0) return -1;
      this.sent.push(dup);
      return this.reserved[this.next++]!;
    });
  }
}

/** What one IOCTL runs against. */
export class IoctlContext implements CallContext {
  constructor(
    readonly mem: SegmentMemory,
    readonly files: ReceivedFiles,
    readonly installer: ReservedInstaller,
    readonly pid: number,
    readonly tid: number,
    readonly creds: Credentials,
    private readonly abort: Interruption | undefined,
  ) {}

  get signal(): Interruptible | undefined {
    return this.abort;
  }
}
