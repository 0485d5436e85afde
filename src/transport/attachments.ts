/**
 * The bridge between a CUSE handle and the shim's side channel. CUSE can carry neither a
 * pool mapping nor file descriptors, so the shim asks the device for a one-time token
 * (a private ioctl, which only the holder of the open file can issue), presents it on the
 * socket transport, and that socket then serves the handle: the pool memfd, and the files
 * RECV installs. Tokens are random and single-use.
 */
import { randomBytes } from 'node:crypto';
import type { ImportedFile } from '../bus/caller';
import type { Handle } from '../bus/handle';

/** What an attached side channel offers the CUSE handle. */
export interface SideChannel {
  /** Gives files reserved numbers in the client and sends them; -1 where none is left. */
  install(files: readonly ImportedFile[]): number[];
  /**
   * A command or poll of the handle starts: frames the shim sent before it (FREEs, RECVs it
   * answered from a HEAD, offers of numbers) take effect first, as they would have in the kernel.
   */
  catchUp(): void;
  /**
   * A RECV or SEND of the handle ended, just before its answer: numbers offered for it alone
   * are void now, and after a RECV the shim hears what its next RECV finds (HEAD, or EMPTY if
   * it left the queue empty).
   */
  commandDone(recv: boolean): void;
}

export interface AttachTarget {
  readonly handle: Handle;
  attach(side: SideChannel): void;
  detach(side: SideChannel): void;
}

export class AttachmentRegistry {
  private readonly tokens = new Map<string, AttachTarget>();

  issue(target: AttachTarget): Buffer {
    const token = randomBytes(16);
    this.tokens.set(token.toString('hex'), target);
    return token;
  }

  claim(token: Buffer): AttachTarget | undefined {
    const key = token.toString('hex');
    const t = this.tokens.get(key);
    this.tokens.delete(key);
    return t;
  }

  /** Forgets the tokens of a target that went away before they were used. */
  revoke(target: AttachTarget): void {
    for (const [k, t] of this.tokens) if (t === target) this.tokens.delete(k);
  }
}

/** The private ioctl: _IOWR(0x95, 0xF0, 24), struct {u64 size; u8 token[16]}. */
export const KDBUS_CUSE_CMD_ATTACH = 0xc01895f0;
export const ATTACH_STRUCT_SIZE = 24;
