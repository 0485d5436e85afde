/**
 * The daemon in the test's own process, serving one bus over the socket transport (and,
 * with `listen`, its legacy endpoint) under a fresh directory: for tests of the daemon's
 * side of a protocol, whose failures then surface in the test itself.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaults } from '../../src/config/config';
import { Daemon } from '../../src/daemon/daemon';
import { SocketTransport } from '../../src/transport/socket-transport';

export interface SocketDaemon {
  daemon: Daemon;
  dir: string;
  /** The transport's socket. */
  sock: string;
  /** The kdbus root with the placeholder nodes. */
  root: string;
  /** Stops the daemon and removes the directory. */
  stop(): Promise<void>;
}

/** `listen`: the legacy endpoint's addresses, given the directory; `socketDir`: a subdirectory for the transport's socket. */
export async function startSocketDaemon(
  label: string, bus: string, opts: { listen?: (dir: string) => string[]; socketDir?: string } = {},
): Promise<SocketDaemon> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${label}-`));
  const sock = path.join(dir, opts.socketDir ?? '', 'kdbus.sock');
  const root = path.join(dir, 'kdbus');
  const daemon = new Daemon({ ...defaults(), buses: [bus], socket: sock, kdbusRoot: root, ...(opts.listen ? { listen: opts.listen(dir) } : {}) });
  daemon.addTransport(new SocketTransport({ socketPath: sock, kdbusRoot: root, placeholders: true }));
  await daemon.start();
  return {
    daemon, dir, sock, root,
    stop: async () => {
      await daemon.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
