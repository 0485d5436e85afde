/**
 * The legacy D-Bus endpoint of one bus: the unix sockets where dbus1 clients connect
 * (`--listen` addresses), and the clients connected there. Every client becomes a kdbus
 * connection of the bus, so legacy and kdbus clients share names, signals and calls.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Bus } from '../bus/bus';
import { logger } from '../log/logger';
import { byteShares, descriptorShares, HeldBudget, Refusals, type HeldAccount, type HeldShares } from '../os/held-budget';
import { openFileLimit } from '../os/libc';
import { takeListenFds } from '../os/listen-fds';
import { describe as describeListener, inheritedListener, UnixListener, type ListenAddress } from '../os/unix-listener';
import { closeFd, type PeerCred } from '../os/unix-socket';
import { Activation, ActivationError, ActivationErrorName, defaultServiceDirs, waitForName, type SystemdLink } from './activation';
import { formatAddress, parseAddress } from './address';
import type { DriverBus } from './driver';
import { LocalConnection } from './local-connection';
import { kdbusIdOfUniqueName } from './match-rule';
import { busStats, connectionStats, MatchRuleCounts, StatsSerial, type BusCounts } from './stats';
import { DRIVER_NAME, driverSignal, nameOwnersOf, SYSTEMD_NAME, uniqueName } from './translate';
import { DEFAULT_LEGACY_LIMITS, LegacyClient, type LegacyEndpointContext, type LegacyLimits } from './legacy-client';

export interface LegacyEndpointOptions {
  /** D-Bus addresses to listen on (unix:path=, unix:abstract=, unix:dir=, unix:tmpdir=). */
  addresses: string[];
  /** Directories of D-Bus service files; default: dbus-daemon's for this kind of bus. */
  serviceDirs?: string[];
  /** Services whose files name a SystemdService are started by systemd (activation.ts). */
  systemdActivation?: boolean;
  limits?: Partial<LegacyLimits>;
  /** The daemon's descriptors legacy connections may take; by default shares of its file limit. */
  connectionDescriptors?: HeldShares;
}

/** A bus named <uid>-system of root is a system bus to legacy clients; any other a session bus. */
function busType(bus: Bus): 'system' | 'session' {
  return bus.uid === 0 && bus.name === '0-system' ? 'system' : 'session';
}

export class LegacyEndpoint {
  private readonly listeners: UnixListener[] = [];
  private readonly clients = new Set<LegacyClient>();
  /** Per user, the clients that have not said Hello yet, oldest first. */
  private readonly incomplete = new Map<number, Set<LegacyClient>>();
  /**
   * The daemon's descriptor each connection takes, out of the limit all users share: each
   * user gets a share (held-budget.ts), as on the socket transport.
   */
  private readonly files: HeldBudget;
  private readonly accounts = new Map<LegacyClient, HeldAccount>();
  private readonly refusals = new Refusals();
  private readonly ctx: LegacyEndpointContext;
  private activation: Activation | undefined;
  /** Watches for activated services taking their names (one connection for every start). */
  private watcher: LocalConnection | undefined;
  private readonly busStatsSerial = new StatsSerial();
  private readonly connectionStatsSerial = new StatsSerial();
  /** The addresses clients use, as printed at start-up. */
  readonly clientAddresses: string[] = [];

  constructor(readonly bus: Bus, private readonly opts: LegacyEndpointOptions) {
    const limits = { ...DEFAULT_LEGACY_LIMITS, ...opts.limits };
    this.files = new HeldBudget('descriptors of legacy connections', opts.connectionDescriptors ?? descriptorShares(openFileLimit(), 1));
    this.ctx = {
      node: { kind: 'endpoint', ep: bus.defaultEndpoint },
      // dbus-daemon's GetId answers the server GUID; kdbus's bus id serves as both.
      guid: bus.id128.toString('hex'),
      bus: this.driverBus(),
      ownerUid: bus.uid,
      limits,
      heldFds: new HeldBudget('descriptors of unfinished messages', descriptorShares(openFileLimit(), limits.maxFdsPerMessage)),
      heldBytes: new HeldBudget('bytes of unfinished messages', byteShares(limits.maxMessageBytes)),
      unsentBytes: new HeldBudget('bytes not yet sent', byteShares(limits.maxOutgoingBytes)),
      owners: nameOwnersOf(bus),
      isOwned: (name) => {
        if (name === DRIVER_NAME) return true;
        if (!name.startsWith(':')) return bus.names.primaryOwner(name) !== undefined;
        const id = kdbusIdOfUniqueName(name);
        return id !== undefined && bus.connection(id) !== undefined;
      },
      monitors: new Set(),
      eavesdroppers: new Set(),
      rules: new MatchRuleCounts(),
      legacyClients: new Map(),
      registered: (c) => this.complete(c),
      forget: (c) => {
        this.clients.delete(c);
        this.complete(c);
        this.accounts.get(c)?.hold(0);
        this.accounts.delete(c);
        this.refusals.forget(c.uid);
      },
    };
  }

  start(): void {
    try {
      for (const address of this.opts.addresses) {
        for (const a of parseAddress(address)) {
          if (a.kind === 'systemd') this.listenOnPassed();
          else this.listen(a.kind === 'dir' ? { kind: 'path', path: socketIn(a.dir) } : a);
        }
      }
      const type = busType(this.bus);
      this.activation = new Activation({
        dirs: this.opts.serviceDirs ?? defaultServiceDirs(type),
        busAddress: this.clientAddresses.join(';'),
        busType: type,
        ...(this.opts.systemdActivation ? { systemd: this.systemdLink() } : {}),
      });
      this.activation.watchDirs(() => this.reloadServices());
    } catch (e) {
      this.stop();
      throw e;
    }
  }

  private driverBus(): DriverBus {
    const activation = (): Activation => {
      if (!this.activation) throw new Error('the legacy endpoint is not started');
      return this.activation;
    };
    const systemdActivation = this.opts.systemdActivation === true;
    return {
      systemdActivation,
      systemdFailure: (unit, errorName, text) => activation().systemdFailure(unit, errorName, text),
      listActivatable: () => activation().listActivatable(),
      isActivatable: (name) => this.activation?.isActivatable(name) ?? false,
      startService: (name) => activation().start(name, (n, signal) => waitForName(this.nameWatcher(), n, signal)),
      updateActivationEnvironment: (vars) => activation().updateEnvironment(vars),
      reload: () => this.reloadServices(),
      busStats: () => busStats(this.busStatsSerial.take(), this.busCounts()),
      connectionStats: (id) => {
        const conn = this.bus.connection(id);
        const client = this.ctx.legacyClients.get(id);
        return connectionStats(this.connectionStatsSerial.take(), {
          uniqueName: uniqueName(id),
          busNames: 1 + (conn ? this.bus.names.recordCount(conn) : 0),
          legacy: client?.statsCounts(),
        });
      },
      allMatchRules: () => [...this.ctx.legacyClients.values()].map((c): [string, string[]] => [c.uniqueName, c.matchRules()]),
      queuedOwners: (name) => {
        const entry = this.bus.names.entry(name);
        if (!entry) return [];
        const ids: bigint[] = [];
        for (const r of entry.records()) if (r.owner !== entry.activator || r.owner === entry.primary) ids.push(r.owner.id);
        return ids;
      },
    };
  }

  /**
   * What dbus-daemon counts of itself, of the whole bus: every connection with a unique name
   * (but the endpoint's own watcher) and every legacy monitor are connections; unique names,
   * the well-known names someone owns and the driver's are names.
   */
  private busCounts(): BusCounts {
    const watcher = this.watcher?.connected ? this.watcher.id : undefined;
    let connections = 0;
    for (const c of this.bus.connections.values()) if (c.isOrdinary && c.id !== watcher) connections++;
    let owned = 0;
    for (const e of this.bus.names.entries()) if (e.primary?.isOrdinary) owned++;
    let incomplete = 0;
    for (const waiting of this.incomplete.values()) incomplete += waiting.size;
    return {
      activeConnections: connections + this.ctx.monitors.size,
      incompleteConnections: incomplete,
      // The driver's name counts, as in dbus-daemon.
      busNames: 1 + connections + owned,
      rules: this.ctx.rules,
    };
  }

  /**
   * Re-reads the service files (ReloadConfig, the daemon's SIGHUP, a change in a service
   * directory) and says so with ActivatableServicesChanged, as dbus-daemon does after each
   * reload, whether or not the list changed.
   */
  reloadServices(): void {
    if (!this.activation) return;
    this.activation.reload();
    const m = driverSignal('ActivatableServicesChanged', '', []);
    for (const c of this.clients) c.driverBroadcast(m);
  }

  /**
   * The driver's messages for systemd go to the owner of its name, a client of this endpoint
   * (systemd speaks dbus1): the driver is no kdbus connection, and kdbus clients would not
   * see org.freedesktop.DBus as their sender.
   */
  private systemdLink(): SystemdLink {
    return {
      send: (m, toConnection) => {
        const owner = this.bus.names.primaryOwner(SYSTEMD_NAME);
        if (!owner) throw new ActivationError(ActivationErrorName.FAILED, `${SYSTEMD_NAME} is not on the bus`);
        const client = this.ctx.legacyClients.get(owner.id);
        if (!client) {
          throw new ActivationError(ActivationErrorName.FAILED,
            `${SYSTEMD_NAME} is owned by a kdbus connection (id ${owner.id}); the legacy endpoint's driver reaches only its own clients`);
        }
        if (toConnection) m.destination = client.uniqueName;
        client.send(m);
      },
    };
  }

  private nameWatcher(): LocalConnection {
    if (!this.watcher?.connected) {
      this.watcher = LocalConnection.open(this.ctx.node, {
        creds: { uid: this.bus.uid, euid: this.bus.uid, suid: this.bus.uid, fsuid: this.bus.uid, gid: 0, egid: 0, sgid: 0, fsgid: 0, groups: [] },
        pid: process.pid,
        privileged: true,
      }, { attachFlagsRecv: 0n, description: 'legacy-activation' });
    }
    return this.watcher;
  }

  private listen(a: { kind: 'path'; path: string } | { kind: 'abstract'; name: string }): void {
    const where: ListenAddress = a.kind === 'path' ? { kind: 'path', path: a.path, mode: 0o666 } : a;
    if (a.kind === 'path') fs.mkdirSync(path.dirname(a.path), { recursive: true, mode: 0o755 });
    this.listeners.push(new UnixListener(where, (fd, peer) => this.accept(fd, peer)));
    const address = formatAddress(a, this.ctx.guid);
    this.clientAddresses.push(address);
    logger.info(`legacy D-Bus endpoint of bus ${this.bus.name}: ${address}`);
  }

  /** systemd: the sockets systemd passed (a .socket unit's); none is an error, as for dbus-daemon. */
  private listenOnPassed(): void {
    const fds = takeListenFds();
    if (fds.length === 0) {
      throw new Error('the listen address systemd: needs the sockets of a .socket unit, and systemd passed none (no LISTEN_FDS for this process)');
    }
    for (const fd of fds) {
      const where = inheritedListener(fd);
      this.listeners.push(new UnixListener(where, (client, peer) => this.accept(client, peer)));
      if (where.path !== undefined) this.clientAddresses.push(formatAddress({ kind: 'path', path: where.path }, this.ctx.guid));
      logger.info(`legacy D-Bus endpoint of bus ${this.bus.name}: ${describeListener(where)}, from systemd`);
    }
  }

  private accept(fd: number, peer: PeerCred): void {
    const account = this.files.account(peer.uid);
    if (!account.hold(1)) {
      closeFd(fd);
      this.refusals.note(peer.uid, `legacy endpoint: refusing clients of uid ${peer.uid} until one of its connections closes: ${account.refusal}`);
      return;
    }
    let client: LegacyClient;
    try {
      client = new LegacyClient(this.ctx, fd, peer);
    } catch (e) {
      account.hold(0);
      logger.warn(`legacy endpoint: refusing pid ${peer.pid} (uid ${peer.uid}): ${(e as Error).message}`);
      return;
    }
    this.accounts.set(client, account);
    this.clients.add(client);
    let waiting = this.incomplete.get(peer.uid);
    if (!waiting) this.incomplete.set(peer.uid, (waiting = new Set()));
    waiting.add(client);
    const max = this.ctx.limits.maxIncompletePerUser;
    if (waiting.size > max) {
      const oldest = waiting.values().next().value!;
      oldest.close(`uid ${peer.uid} has more than ${max} connections that have not said Hello; the oldest goes`);
    }
  }

  /** The client is no longer an incomplete connection: it said Hello, or it is gone. */
  private complete(client: LegacyClient): void {
    const waiting = this.incomplete.get(client.uid);
    if (!waiting?.delete(client)) return;
    if (waiting.size === 0) this.incomplete.delete(client.uid);
  }

  get clientCount(): number {
    return this.clients.size;
  }

  /** Closes the sockets and disconnects every client (their kdbus connections go with them). */
  stop(): void {
    this.activation?.close();
    this.watcher?.close();
    for (const l of this.listeners.splice(0)) l.close();
    for (const c of [...this.clients]) c.close('the daemon is shutting down');
    this.clients.clear();
  }
}

/** unix:dir= and unix:tmpdir=: a fresh socket name in the directory, as dbus-daemon makes one. */
function socketIn(dir: string): string {
  return path.join(dir, `dbus-${crypto.randomBytes(8).toString('hex')}`);
}
