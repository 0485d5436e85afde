/**
 * The kdbus tree as files, for the socket transport: `<root>/control` and, per bus, a
 * directory with one file per endpoint, with kdbus's names, modes and owners. Clients (and
 * the kdbus self-tests) stat, access and list these paths as they did on kdbusfs; opening
 * them goes through the shim to the daemon.
 */
import fs from 'node:fs';
import path from 'node:path';
import { MakeFlags } from '../abi/constants';
import type { Bus } from '../bus/bus';
import type { Endpoint } from '../bus/endpoint';
import type { NodeHost } from '../bus/node-host';
import { logger } from '../log/logger';

/** Bus directory mode: 0500, plus r-x for group and world as the bus's make flags ask. */
export function busDirMode(bus: Bus): number {
  let mode = 0o500;
  if (bus.flags & (MakeFlags.ACCESS_GROUP | MakeFlags.ACCESS_WORLD)) mode |= 0o050;
  if (bus.flags & MakeFlags.ACCESS_WORLD) mode |= 0o005;
  return mode;
}

export class PlaceholderTree implements NodeHost {
  private createdRoot = false;

  constructor(readonly root: string) {}

  /** Creates the root (if missing) and the control file. */
  create(): void {
    if (!fs.existsSync(this.root)) {
      fs.mkdirSync(this.root, { recursive: true, mode: 0o755 });
      this.createdRoot = true;
    }
    fs.chmodSync(this.root, 0o755);
    this.writeNode(path.join(this.root, 'control'), 0o666, 0, 0);
  }

  addEndpoint(ep: Endpoint): void {
    const dir = path.join(this.root, ep.bus.name);
    if (ep.isDefault) {
      fs.mkdirSync(dir, { recursive: true });
      // The directory stays writable for the daemon until its files are in place.
      fs.chmodSync(dir, 0o700);
    }
    this.writeNode(path.join(dir, ep.name), ep.mode, ep.uid, ep.gid);
    if (ep.isDefault) {
      chownIfRoot(dir, ep.bus.uid, ep.bus.gid);
      fs.chmodSync(dir, busDirMode(ep.bus));
    }
  }

  removeEndpoint(ep: Endpoint): void {
    const dir = path.join(this.root, ep.bus.name);
    // The directory has kdbus's read-only mode; its owner (or root) needs write to unlink.
    makeWritable(dir);
    fs.rmSync(path.join(dir, ep.name), { force: true });
    if (ep.isDefault) fs.rmSync(dir, { recursive: true, force: true });
    else if (fs.existsSync(dir)) fs.chmodSync(dir, busDirMode(ep.bus));
  }

  /** Removes everything it made, so nothing is left behind in /dev or /run. */
  remove(): void {
    fs.rmSync(path.join(this.root, 'control'), { force: true });
    if (this.createdRoot) {
      try {
        for (const bus of fs.readdirSync(this.root)) makeWritable(path.join(this.root, bus));
        fs.rmSync(this.root, { recursive: true, force: true });
      } catch (e) {
        logger.warn(`removing ${this.root}: ${(e as Error).message}`);
      }
    }
  }

  private writeNode(file: string, mode: number, uid: number, gid: number): void {
    fs.writeFileSync(file, '', { mode });
    chownIfRoot(file, uid, gid);
    fs.chmodSync(file, mode);
  }
}

function makeWritable(dir: string): void {
  try {
    fs.chmodSync(dir, 0o700);
  } catch {
    // Gone already, or not a directory: nothing to unlock.
  }
}

/** Only root can give files away; an unprivileged daemon's nodes stay its own. */
function chownIfRoot(file: string, uid: number, gid: number): void {
  if (process.getuid?.() === 0) fs.chownSync(file, uid, gid);
}
