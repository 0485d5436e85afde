/**
 * The CUSE transport: kdbus's character devices served from userland. One CUSE channel per
 * node (the control node, and every endpoint of every bus), named so devtmpfs builds the
 * 2014 kdbus tree: /dev/kdbus/control, /dev/kdbus/<uid>-<bus>/bus, .../<uid>-<endpoint>.
 * Nodes get kdbus's modes and owners once they appear, and go when their channel closes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Limits } from '../abi/constants';
import type { Domain } from '../bus/domain';
import type { Endpoint } from '../bus/endpoint';
import type { NodeHost } from '../bus/node-host';
import { StartupError } from '../daemon/startup-error';
import type { Transport } from '../daemon/transport';
import { logger } from '../log/logger';
import { byteShares, HeldBudget } from '../os/held-budget';
import { MemfdStorage } from '../os/memfd-storage';
import type { AttachmentRegistry } from '../transport/attachments';
import { busDirMode } from '../transport/placeholder-tree';
import { CuseChannel } from './cuse-channel';
import { CuseNode, type MemoryMode } from './cuse-node';

export interface CuseTransportOptions {
  /** Where the tree appears; must lie under /dev, where devtmpfs puts CUSE nodes. */
  kdbusRoot: string;
  attachments: AttachmentRegistry;
  cusePath?: string;
  devRoot?: string;
}

/** Why /dev/cuse cannot be used here, in one line, or undefined if it can. */
export function cuseUnavailable(cusePath = '/dev/cuse'): string | undefined {
  try {
    fs.closeSync(fs.openSync(cusePath, 'r+'));
    return undefined;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENODEV' || code === 'ENXIO') {
      const misc = fs.existsSync('/proc/misc') ? fs.readFileSync('/proc/misc', 'utf8') : '';
      if (!/\bcuse\b/.test(misc)) return `${cusePath} is missing: this kernel has no CUSE (CONFIG_CUSE) or the cuse module is not loaded (modprobe cuse)`;
      return `${cusePath} is missing although the kernel has CUSE: create it (mknod ${cusePath} c 10 203) or mount devtmpfs`;
    }
    if (code === 'EACCES' || code === 'EPERM') return `${cusePath}: permission denied; the daemon needs read-write access to it`;
    return `${cusePath}: ${(e as Error).message}`;
  }
}

export class CuseTransport implements Transport, NodeHost {
  readonly name = 'cuse';
  /**
   * process_vm until the kernel refuses it. KDBUS_CUSE_IOCTL_MEMORY=retry starts with the
   * FUSE retry protocol instead (to test it, or where process_vm is known to be blocked).
   */
  private readonly memory: MemoryMode = {
    mode: process.env['KDBUS_CUSE_IOCTL_MEMORY'] === 'retry' ? 'retry' : 'process_vm',
    copiedIn: new HeldBudget('bytes of caller memory copied in for ioctls in progress', byteShares(Limits.MSG_MAX_PAYLOAD_VEC_SIZE + Limits.CMD_MAX_SIZE)),
  };
  private readonly channels = new Map<string, { ch: CuseChannel; node: CuseNode }>();
  /** Device numbers of the nodes this transport made (kernel-assigned, never reused while open). */
  private readonly rdevs = new Set<number>();
  private readonly devRoot: string;
  private readonly prefix: string;

  constructor(readonly opts: CuseTransportOptions) {
    this.devRoot = opts.devRoot ?? '/dev';
    const rel = path.relative(this.devRoot, opts.kdbusRoot);
    if (rel.startsWith('..') || path.isAbsolute(rel) || rel === '') {
      throw new StartupError(`CUSE nodes live under ${this.devRoot}; the kdbus root ${opts.kdbusRoot} is not below it`);
    }
    this.prefix = rel;
  }

  async start(domain: Domain): Promise<void> {
    const why = cuseUnavailable(this.opts.cusePath);
    if (why) throw new StartupError(why);
    domain.poolStorage = (size) => new MemfdStorage(size);
    await this.addNode(`${this.prefix}/control`, { kind: 'control', domain }, 0o666, 0, 0);
    domain.hosts.push(this);
  }

  private async addNode(devname: string, node: ConstructorParameters<typeof CuseNode>[0], mode: number, uid: number, gid: number): Promise<void> {
    const cuseNode = new CuseNode(node, this.memory, this.opts.attachments, (_fd, st) => st.isCharacterDevice() && this.rdevs.has(st.rdev));
    const ch = new CuseChannel(devname, cuseNode, this.opts.cusePath);
    this.channels.set(devname, { ch, node: cuseNode });
    await ch.ready;
    const file = path.join(this.devRoot, devname);
    await appears(file);
    this.rdevs.add(fs.statSync(file).rdev);
    fs.chownSync(file, uid, gid);
    fs.chmodSync(file, mode);
  }

  async addEndpoint(ep: Endpoint): Promise<void> {
    await this.addNode(`${this.prefix}/${ep.path}`, { kind: 'endpoint', ep }, ep.mode, ep.uid, ep.gid);
    if (ep.isDefault) {
      const dir = path.join(this.devRoot, this.prefix, ep.bus.name);
      fs.chownSync(dir, ep.bus.uid, ep.bus.gid);
      fs.chmodSync(dir, busDirMode(ep.bus));
    }
  }

  removeEndpoint(ep: Endpoint): void {
    const devname = `${this.prefix}/${ep.path}`;
    const entry = this.channels.get(devname);
    if (!entry) return;
    this.channels.delete(devname);
    try {
      this.rdevs.delete(fs.statSync(path.join(this.devRoot, devname)).rdev);
    } catch {
      // The node is gone already; its number goes with the channel.
    }
    entry.node.closeAll();
    entry.ch.close();
  }

  async stop(): Promise<void> {
    for (const { ch, node } of this.channels.values()) {
      node.closeAll();
      ch.close();
    }
    this.channels.clear();
  }

  describe(): string {
    return `CUSE devices under ${path.join(this.devRoot, this.prefix)}, caller memory through ${this.memory.mode === 'process_vm' ? 'process_vm_readv/writev' : 'the FUSE ioctl retry protocol'}`;
  }
}

/** devtmpfs creates the node shortly after the kernel accepted CUSE_INIT. */
async function appears(file: string): Promise<void> {
  for (let i = 0; i < 400; i++) {
    // stat, not access(): under a closed device policy access() to our own nodes is refused.
    if (fs.statSync(file, { throwIfNoEntry: false })) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  logger.warn(`${file} did not appear within 2 s`);
  throw new Error(`${file} did not appear (is devtmpfs mounted on /dev?)`);
}
