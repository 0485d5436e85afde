/**
 * Bytes in a memfd of their own, sealed against any change (F_SEAL_SHRINK, GROW, WRITE and
 * SEAL), which is what kdbus requires of a PAYLOAD_MEMFD: the daemon's own way to send a
 * large body, as sd-bus sent its bodies of 512 KiB and more. tmpfs holds the bytes, not
 * the daemon's heap, and they count against the sender's share until the daemon closes
 * the file (its receivers keep their own references).
 */
import * as fs from 'node:fs';
import { fail, KdbusError } from '../abi/errno';
import type { ImportedFile } from '../bus/caller';
import type { HeldAccount } from './held-budget';
import {
  errno, F_ADD_SEALS, F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_WRITE, fcntl, memfd_create, MFD_ALLOW_SEALING, MFD_CLOEXEC,
} from './libc';
import { ImportedFd } from './pidfd-files';

const ALL_SEALS = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

class SealedMemfd extends ImportedFd {
  constructor(fd: number, private readonly account: HeldAccount) {
    super(fd);
  }

  override close(): void {
    super.close();
    this.account.hold(0);
  }
}

/** EXFULL, as from a full pool, when the bytes would take the sender beyond its share. */
export function sealedMemfd(bytes: Uint8Array, account: HeldAccount, name = 'kdbus-cuse-payload'): ImportedFile {
  if (!account.hold(bytes.length)) throw fail('EXFULL', `a ${bytes.length}-byte body in a memfd: ${account.refusal}`);
  const fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    account.hold(0);
    throw new KdbusError(errno(), `cannot create a memfd for a ${bytes.length}-byte payload`);
  }
  try {
    for (let done = 0; done < bytes.length;) done += fs.writeSync(fd, bytes, done, bytes.length - done, done);
    if (fcntl(fd, F_ADD_SEALS, ALL_SEALS) < 0) throw new KdbusError(errno(), 'cannot seal the payload memfd');
    return new SealedMemfd(fd, account);
  } catch (e) {
    fs.closeSync(fd);
    account.hold(0);
    if (e instanceof KdbusError) throw e;
    throw new KdbusError('ENOMEM', `cannot fill a memfd with a ${bytes.length}-byte payload: ${(e as Error).message}`);
  }
}
