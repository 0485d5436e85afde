/**
 * What a process holds open, read from /proc: the tests' check that the daemon let go of
 * the files a message travelled with.
 */
import fs from 'node:fs';

/** The targets of `pid`'s descriptors that `which` matches, as "fd -> target". */
export function openFiles(pid: number, which: RegExp): string[] {
  const out: string[] = [];
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (which.test(target)) out.push(`${fd} -> ${target}`);
    } catch {
      // Closed since the directory was read.
    }
  }
  return out;
}

/**
 * Memfds other than pools ("kdbus-pool", src/os/memfd-storage.ts): bodies that travelled
 * in a memfd, the daemon's own (src/os/sealed-memfd.ts) or a client's.
 */
export const MESSAGE_MEMFDS = /^\/memfd:(?!kdbus-pool)/;
