/**
 * The directories the daemon brings into existence (the socket's directory under /run, the
 * kdbus root, the directories of --listen sockets and of the control socket, and any
 * missing parents: every creator
 * uses mkdir -p), so that stopping leaves nothing behind. A directory that existed before
 * the start (a RuntimeDirectory= of systemd, /run itself) is never removed, and neither is
 * one that still holds something at stop: that belongs to someone else.
 */
import fs from 'node:fs';
import path from 'node:path';
import { controlPath, listenAddresses, type Config } from '../config/config';
import { parseAddress } from '../dbus1/address';
import { logger } from '../log/logger';

/** Directories the daemon may create for this configuration. */
export function runtimeDirs(c: Config): string[] {
  const dirs = [path.dirname(c.socket), c.kdbusRoot, path.dirname(controlPath(c))];
  for (const address of listenAddresses(c)) {
    for (const a of parseAddress(address)) {
      if (a.kind === 'path') dirs.push(path.dirname(path.resolve(a.path)));
      else if (a.kind === 'dir') dirs.push(path.resolve(a.dir));
    }
  }
  return dirs;
}

export class CreatedDirs {
  /** Deepest first, the order they can be removed in. */
  private readonly dirs: string[];

  /** Records which of `dirs` and their ancestors do not exist yet; call before creating anything. */
  constructor(dirs: readonly string[]) {
    const missing = new Set<string>();
    for (const d of dirs) {
      for (let p = path.resolve(d); !fs.existsSync(p); p = path.dirname(p)) missing.add(p);
    }
    this.dirs = [...missing].sort((a, b) => depth(b) - depth(a) || b.localeCompare(a));
  }

  /** Removes each recorded directory that exists and is empty; what remains is logged. */
  removeEmpty(): void {
    const kept: string[] = [];
    for (const d of this.dirs) {
      try {
        fs.rmdirSync(d);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') continue;
        // Its parents stay too; one warning names the directory that holds something.
        if (kept.some((k) => k.startsWith(d + path.sep))) continue;
        kept.push(d);
        const why = code === 'ENOTEMPTY' || code === 'EEXIST' ? 'it is not empty' : (e as Error).message;
        logger.warn(`leaving ${d}, which the daemon created: ${why}`);
      }
    }
  }
}

function depth(p: string): number {
  return p.split(path.sep).length;
}
