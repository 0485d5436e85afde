/**
 * The socket transport: kdbus over a unix socket, for clients that load the shim where no
 * CUSE device can exist. It listens on one socket, keeps the placeholder tree of kdbus
 * nodes under the root, and backs pools with memfds the shim maps.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Domain } from '../bus/domain';
import { StartupError } from '../daemon/startup-error';
import type { Transport } from '../daemon/transport';
import { byteShares, descriptorShares, HeldBudget, Refusals, type HeldShares } from '../os/held-budget';
import { openFileLimit } from '../os/libc';
import { MemfdStorage } from '../os/memfd-storage';
import { logger } from '../log/logger';
import { PlaceholderTree } from './placeholder-tree';
import { MAX_FDS_PER_READ } from './client-socket';
import { MAX_FRAME } from './frames';
import { SESSION_DESCRIPTORS, SessionRefused, SocketSession } from './socket-session';
import { AttachmentRegistry } from './attachments';

export interface SocketTransportOptions {
  socketPath: string;
  kdbusRoot: string;
  /** Keep placeholder files under the root (off where CUSE nodes already live there). */
  placeholders: boolean;
  /** Tokens of CUSE handles whose shim attaches a side channel here. */
  attachments?: AttachmentRegistry;
  /** What clients may make the daemon hold in bytes; by default shares of the machine's memory. */
  heldBytes?: HeldShares;
  /** The daemon's descriptors open kdbus files (sessions) may take; by default shares of its file limit. */
  sessionDescriptors?: HeldShares;
}

export class SocketTransport implements Transport {
  readonly name = 'socket';
  private server: net.Server | undefined;
  private tree: PlaceholderTree | undefined;
  private domain: Domain | undefined;
  private readonly sessions = new Set<SocketSession>();
  private readonly attachments: AttachmentRegistry;
  /**
   * Descriptors sessions hold for frames still arriving (two frames' worth each at most), and
   * bytes: large frames' buffers, and the memory of commands that wait or fetch.
   */
  private readonly held: { fds: HeldBudget; bytes: HeldBudget; files: HeldBudget };
  private readonly refusals = new Refusals();

  constructor(readonly opts: SocketTransportOptions) {
    this.attachments = opts.attachments ?? new AttachmentRegistry();
    this.held = {
      fds: new HeldBudget('descriptors of unfinished messages', descriptorShares(openFileLimit(), 2 * MAX_FDS_PER_READ)),
      bytes: new HeldBudget('bytes of unfinished requests', opts.heldBytes ?? byteShares(MAX_FRAME)),
      files: new HeldBudget('descriptors of open kdbus files', opts.sessionDescriptors ?? descriptorShares(openFileLimit(), SESSION_DESCRIPTORS)),
    };
  }

  async start(domain: Domain): Promise<void> {
    this.domain = domain;
    domain.poolStorage = (size) => new MemfdStorage(size);
    if (this.opts.placeholders) {
      this.tree = new PlaceholderTree(this.opts.kdbusRoot);
      this.tree.create();
      domain.hosts.push(this.tree);
    }
    await this.listen();
  }

  private async listen(): Promise<void> {
    const file = this.opts.socketPath;
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
    if (fs.existsSync(file)) {
      if (await isAlive(file)) throw new StartupError(`${file}: another daemon is listening there`);
      fs.rmSync(file, { force: true });
    }
    // Paused: a session reads its client's socket itself, for the credentials and descriptors.
    const server = net.createServer({ allowHalfOpen: false, pauseOnConnect: true }, (socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(file, () => {
        server.off('error', reject);
        resolve();
      });
    });
    fs.chmodSync(file, 0o666);
    server.on('error', (e) => logger.error(`socket transport: ${e.message}`));
  }

  private accept(socket: net.Socket): void {
    try {
      const s = new SocketSession(this.domain!, socket, (gone) => this.closed(gone), this.attachments, this.held);
      this.sessions.add(s);
    } catch (e) {
      socket.destroy();
      if (e instanceof SessionRefused) {
        this.refusals.note(e.uid, `socket transport: refusing clients of uid ${e.uid} until one of its files closes: ${e.message}`);
      } else {
        logger.warn(`socket transport: refusing a client: ${(e as Error).message}`);
      }
    }
  }

  private closed(s: SocketSession): void {
    this.sessions.delete(s);
    this.refusals.forget(s.peer.uid);
  }

  async stop(): Promise<void> {
    for (const s of [...this.sessions]) s.close();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    fs.rmSync(this.opts.socketPath, { force: true });
    if (this.tree && this.domain) {
      const i = this.domain.hosts.indexOf(this.tree);
      if (i >= 0) this.domain.hosts.splice(i, 1);
      this.tree.remove();
    }
  }

  describe(): string {
    return `listening on ${this.opts.socketPath}${this.opts.placeholders ? `, nodes under ${this.opts.kdbusRoot}` : ''} (clients load the shim)`;
  }
}

function isAlive(file: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.createConnection(file);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}
