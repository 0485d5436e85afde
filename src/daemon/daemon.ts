/**
 * The daemon: one domain, the buses it was configured to create (it stays their owner, as
 * PID 1 did for kdbus's system bus), and the transports that carry clients to them.
 */
import fs from 'node:fs';
import { Attach, ItemType, Limits } from '../abi/constants';
import { KdbusError } from '../abi/errno';
import { ItemWriter } from '../abi/items';
import { LocalMemory } from '../abi/local-memory';
import type { CallContext, Credentials } from '../bus/caller';
import { Domain } from '../bus/domain';
import { openHandle, type Handle } from '../bus/handle';
import { controlPath, listenAddresses, type Config } from '../config/config';
import { LegacyEndpoint } from '../dbus1/legacy-endpoint';
import { UpstreamBridge } from '../dbus1/upstream-bridge';
import { logger } from '../log/logger';
import { descriptorShares, HeldBudget } from '../os/held-budget';
import { openFileLimit } from '../os/libc';
import { CreatedDirs, runtimeDirs } from './runtime-dirs';
import { ControlSocket } from './control-socket';
import { StartupError } from './startup-error';
import type { Transport } from './transport';

/** systemd's bus parameters: 64-byte bloom filters with 8 hash functions. */
export const DEFAULT_BLOOM = { size: 64n, nHash: 8n };
const MAKE_ACCESS_WORLD = 2n;

export class Daemon {
  readonly domain = new Domain();
  private readonly busOwners: Handle[] = [];
  private readonly transports: Transport[] = [];
  private readonly legacy: LegacyEndpoint[] = [];
  private readonly bridges: UpstreamBridge[] = [];
  private createdDirs: CreatedDirs | undefined;
  private control: ControlSocket | undefined;

  constructor(readonly config: Config, private readonly version = '') {
    this.domain.messageFds = new HeldBudget('descriptors in queued messages', descriptorShares(openFileLimit(), 2 * Limits.MSG_MAX_FDS));
  }

  /** Creates a bus through BUS_MAKE, as its owner; the bus lives as long as the daemon. */
  async createBus(name: string): Promise<void> {
    const uid = Number(name.slice(0, name.indexOf('-')));
    const self = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    const euid = self === 0 ? uid : self;
    const creds: Credentials = { uid: euid, euid, suid: euid, fsuid: euid, gid, egid: gid, sgid: gid, fsgid: gid, groups: [] };
    const handle = openHandle({ kind: 'control', domain: this.domain }, { creds, privileged: self === 0, pid: process.pid });
    const w = new ItemWriter(128);
    w.u64(0).u64(MAKE_ACCESS_WORLD).u64(0);
    w.itemU64(ItemType.BLOOM_PARAMETER, DEFAULT_BLOOM.size, DEFAULT_BLOOM.nHash);
    // systemd made its buses so ("provide all metadata via bus-owner queries"): clients see
    // who made the bus in BUS_CREATOR_INFO (busctl status, sd_bus_get_owner_creds).
    w.itemU64(ItemType.ATTACH_FLAGS_SEND, Attach.ANY);
    w.string(ItemType.MAKE_NAME, name);
    const cmd = Buffer.from(w.finish());
    cmd.writeBigUInt64LE(BigInt(cmd.length), 0);
    const mem = new LocalMemory();
    const ctx: CallContext = {
      mem,
      files: { get: () => { throw new KdbusError('EBADF', 'the daemon passes no files'); } },
      installer: { install: (f) => f.map(() => -1) },
      pid: process.pid,
      tid: process.pid,
      creds,
    };
    await handle.ioctl(0x40189500, mem.put(cmd), ctx);
    this.busOwners.push(handle);
  }

  addTransport(t: Transport): void {
    this.transports.push(t);
  }

  async start(): Promise<void> {
    this.createdDirs = new CreatedDirs(runtimeDirs(this.config));
    for (const t of this.transports) {
      await t.start(this.domain);
      logger.info(`transport ${t.name}: ${t.describe()}`);
    }
    for (const name of this.config.buses) await this.createBus(name);
    const listen = listenAddresses(this.config);
    if (listen.length > 0) this.startLegacyEndpoint(this.config.buses[0]!, listen);
    if (this.config.upstream !== undefined) this.startBridge(this.config.buses[0]!, this.config.upstream);
    this.control = new ControlSocket(controlPath(this.config), this.domain, {
      version: this.version,
      transports: () => this.transports.map((t) => `${t.name}: ${t.describe()}`),
      legacy: () => this.legacy.map((e) => ({ bus: e.bus.name, addresses: e.clientAddresses, clients: e.clientCount })),
      upstream: () => this.bridges.map((b) => b.status()),
    }, groupId(this.config.controlGroup));
    await this.control.start();
  }

  /** dbus1 clients reach the bus at these addresses (the first bus, as --listen says). */
  private startLegacyEndpoint(busName: string, addresses: string[]): void {
    const bus = this.domain.buses.get(busName);
    if (!bus) throw new Error(`bus ${busName} does not exist`);
    const endpoint = new LegacyEndpoint(bus, {
      addresses,
      systemdActivation: this.config.systemdActivation,
      ...(this.config.serviceDirs ? { serviceDirs: this.config.serviceDirs } : {}),
    });
    endpoint.start();
    this.legacy.push(endpoint);
  }

  /** Joins the bus to an upstream bus; the bridge connects (and reconnects) on its own. */
  private startBridge(busName: string, address: string): void {
    const bus = this.domain.buses.get(busName);
    if (!bus) throw new Error(`bus ${busName} does not exist`);
    const bridge = new UpstreamBridge(bus, address);
    bridge.start();
    this.bridges.push(bridge);
    logger.info(`bus ${busName}: joining upstream bus ${address}`);
  }

  /** The service files of every legacy endpoint read again (SIGHUP, as dbus-daemon's). */
  reloadServices(): void {
    for (const e of this.legacy) e.reloadServices();
  }

  /** Addresses where legacy D-Bus clients connect. */
  legacyAddresses(): string[] {
    return this.legacy.flatMap((e) => e.clientAddresses);
  }

  /** Removes every bus (clients see ESHUTDOWN/POLLHUP) and every node the transports made. */
  async stop(): Promise<void> {
    await this.control?.stop();
    this.control = undefined;
    for (const e of this.legacy.splice(0)) e.stop();
    for (const b of this.bridges.splice(0)) b.stop();
    for (const h of this.busOwners.splice(0)) h.release();
    this.domain.shutdown();
    for (const t of this.transports.splice(0).reverse()) {
      try {
        await t.stop();
      } catch (e) {
        logger.warn(`stopping transport ${t.name}: ${(e as Error).message}`);
      }
    }
    this.createdDirs?.removeEmpty();
  }
}

/** The control group, by name (from /etc/group) or number. */
function groupId(group: string | undefined): number | undefined {
  if (group === undefined) return undefined;
  if (/^[0-9]+$/.test(group)) return Number(group);
  const line = fs.readFileSync('/etc/group', 'utf8').split('\n').find((l) => l.split(':')[0] === group);
  if (!line) throw new StartupError(`controlGroup: no group named "${group}" in /etc/group`);
  return Number(line.split(':')[2]);
}
