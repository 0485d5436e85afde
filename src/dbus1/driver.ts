/**
 * org.freedesktop.DBus for legacy clients: what dbus-daemon answers, computed from the kdbus
 * bus through the client's own connection (names, LIST, CONN_INFO, matches), as
 * systemd-bus-proxyd did. Reply codes, error names and texts follow dbus-daemon.
 */
import fs from 'node:fs';
import { Attach, HelloFlags, ListFlags, NameFlags } from '../abi/constants';
import { KdbusError } from '../abi/errno';
import { logger } from '../log/logger';
import { ActivationError } from './activation';
import type { LocalConnection } from './local-connection';
import { DRIVER_NAME, DRIVER_PATH, driverReply, errorReply, SYSTEMD_NAME, uniqueName } from './translate';
import { MatchRule, MatchRuleInvalid, kdbusIdOfUniqueName } from './match-rule';
import { MessageFlag, MessageType, type Message } from './message';
import { isValidWellKnownName } from './names';
import type { InfoRecord } from './pool-records';
import type { Entries } from './stats';
import type { Value } from './value';
import { Variant } from './value';

export const DBusError = {
  Failed: 'org.freedesktop.DBus.Error.Failed',
  ServiceUnknown: 'org.freedesktop.DBus.Error.ServiceUnknown',
  NameHasNoOwner: 'org.freedesktop.DBus.Error.NameHasNoOwner',
  InvalidArgs: 'org.freedesktop.DBus.Error.InvalidArgs',
  UnknownMethod: 'org.freedesktop.DBus.Error.UnknownMethod',
  UnknownInterface: 'org.freedesktop.DBus.Error.UnknownInterface',
  UnknownProperty: 'org.freedesktop.DBus.Error.UnknownProperty',
  PropertyReadOnly: 'org.freedesktop.DBus.Error.PropertyReadOnly',
  AccessDenied: 'org.freedesktop.DBus.Error.AccessDenied',
  MatchRuleNotFound: 'org.freedesktop.DBus.Error.MatchRuleNotFound',
  MatchRuleInvalid: 'org.freedesktop.DBus.Error.MatchRuleInvalid',
  LimitsExceeded: 'org.freedesktop.DBus.Error.LimitsExceeded',
  NoReply: 'org.freedesktop.DBus.Error.NoReply',
  NotSupported: 'org.freedesktop.DBus.Error.NotSupported',
  UnixProcessIdUnknown: 'org.freedesktop.DBus.Error.UnixProcessIdUnknown',
  SELinuxSecurityContextUnknown: 'org.freedesktop.DBus.Error.SELinuxSecurityContextUnknown',
  AdtAuditDataUnknown: 'org.freedesktop.DBus.Error.AdtAuditDataUnknown',
} as const;

const PEER_INTERFACE = 'org.freedesktop.DBus.Peer';

/** A D-Bus error to answer a call with. */
export class DriverError extends Error {
  constructor(readonly errorName: string, message: string) {
    super(message);
  }
}

/** What the driver needs of the client it answers. */
export interface DriverClient {
  readonly conn: LocalConnection;
  readonly uniqueName: string;
  /** May change bus-wide state only the bus owner or root may (activation environment). */
  readonly trusted: boolean;
  send(m: Message): void;
  /** The driver answered `call` (or kept back a bare acknowledgement), not with an error. */
  answered(call: Message): void;
  addMatch(rule: MatchRule): void;
  removeMatch(rule: MatchRule): boolean;
  becomeMonitor(rules: MatchRule[]): void;
}

/** What the driver needs of the endpoint: activation. */
export interface DriverBus {
  listActivatable(): string[];
  isActivatable(name: string): boolean;
  startService(name: string, client: DriverClient): Promise<void>;
  updateActivationEnvironment(vars: Record<string, string>): void;
  reload(): void;
  /** Ids of the owner and the queue of `name`, in queue order (kdbus's LIST is per connection). */
  queuedOwners(name: string): bigint[];
  /** The bus does systemd activation (activation.ts). */
  readonly systemdActivation: boolean;
  /** systemd could not start `unit`: the starts waiting for it fail with this error. */
  systemdFailure(unit: string, errorName: string, text: string): void;
  /** Debug.Stats (stats.ts): the bus's counts. */
  busStats(): Entries;
  /** Debug.Stats of the connection with kdbus id `id`. */
  connectionStats(id: bigint): Entries;
  /** Debug.Stats: each legacy client's match rules, by unique name (kdbus clients' matches are no rules of dbus1). */
  allMatchRules(): Array<[string, string[]]>;
}

const STATS_INTERFACE = 'org.freedesktop.DBus.Debug.Stats';
const REQUEST_ALLOW_REPLACEMENT = 1;
const REQUEST_REPLACE_EXISTING = 2;
const REQUEST_DO_NOT_QUEUE = 4;
const CONN_INFO_CREDS = Attach.CREDS | Attach.PIDS | Attach.AUXGROUPS | Attach.SECLABEL;

const DOCTYPE = `<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
`;

/** The interfaces the driver answers at any path, as dbus-daemon does for old clients. */
const ANY_PATH_INTERFACES = `  <interface name="org.freedesktop.DBus">
    <method name="Hello"><arg direction="out" type="s"/></method>
    <method name="RequestName"><arg direction="in" type="s"/><arg direction="in" type="u"/><arg direction="out" type="u"/></method>
    <method name="ReleaseName"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="StartServiceByName"><arg direction="in" type="s"/><arg direction="in" type="u"/><arg direction="out" type="u"/></method>
    <method name="UpdateActivationEnvironment"><arg direction="in" type="a{ss}"/></method>
    <method name="NameHasOwner"><arg direction="in" type="s"/><arg direction="out" type="b"/></method>
    <method name="ListNames"><arg direction="out" type="as"/></method>
    <method name="ListActivatableNames"><arg direction="out" type="as"/></method>
    <method name="AddMatch"><arg direction="in" type="s"/></method>
    <method name="RemoveMatch"><arg direction="in" type="s"/></method>
    <method name="GetNameOwner"><arg direction="in" type="s"/><arg direction="out" type="s"/></method>
    <method name="ListQueuedOwners"><arg direction="in" type="s"/><arg direction="out" type="as"/></method>
    <method name="GetConnectionUnixUser"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="GetConnectionUnixProcessID"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="GetAdtAuditSessionData"><arg direction="in" type="s"/><arg direction="out" type="ay"/></method>
    <method name="GetConnectionSELinuxSecurityContext"><arg direction="in" type="s"/><arg direction="out" type="ay"/></method>
    <method name="GetConnectionCredentials"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="ReloadConfig"/>
    <method name="GetId"><arg direction="out" type="s"/></method>
    <signal name="NameOwnerChanged"><arg type="s"/><arg type="s"/><arg type="s"/></signal>
    <signal name="NameLost"><arg type="s"/></signal>
    <signal name="NameAcquired"><arg type="s"/></signal>
    <signal name="ActivatableServicesChanged"/>
    <property name="Features" type="as" access="read">
      <annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="const"/>
    </property>
    <property name="Interfaces" type="as" access="read">
      <annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="const"/>
    </property>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg direction="out" type="s"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="GetMachineId"><arg direction="out" type="s"/></method>
    <method name="Ping"/>
  </interface>
`;

/** The interfaces the driver answers only at its canonical path (UnknownInterface elsewhere). */
const CANONICAL_PATH_INTERFACES = `  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get"><arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="out" type="v"/></method>
    <method name="GetAll"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="Set"><arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="in" type="v"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Monitoring">
    <method name="BecomeMonitor"><arg direction="in" type="as"/><arg direction="in" type="u"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Debug.Stats">
    <method name="GetStats"><arg direction="out" type="a{sv}"/></method>
    <method name="GetConnectionStats"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="GetAllMatchRules"><arg direction="out" type="a{sas}"/></method>
  </interface>
`;

/**
 * The driver's introspection at `path`: what it answers there, and on the way to its
 * canonical path the node below, so that tools walking the tree from "/" find it.
 */
function introspection(path: string | undefined): string {
  if (path === DRIVER_PATH) return `${DOCTYPE}<node>\n${ANY_PATH_INTERFACES}${CANONICAL_PATH_INTERFACES}</node>\n`;
  const below = path === '/' ? 'org/freedesktop/DBus' : path === '/org' ? 'freedesktop/DBus' : path === '/org/freedesktop' ? 'DBus' : undefined;
  return `${DOCTYPE}<node>\n${ANY_PATH_INTERFACES}${below ? `  <node name="${below}"/>\n` : ''}</node>\n`;
}

const PROPERTIES: Record<string, (bus: DriverBus) => Variant> = {
  // Forwarded messages are re-encoded: fields the bus does not know are gone, SENDER is its own.
  Features: (bus) => new Variant('as', ['ActivatableServicesChanged', 'HeaderFiltering', ...(bus.systemdActivation ? ['SystemdActivation'] : [])]),
  Interfaces: () => new Variant('as', ['org.freedesktop.DBus.Monitoring', STATS_INTERFACE]),
};

/**
 * The properties of one of the driver's interfaces, as dbus-daemon looks them up: only
 * org.freedesktop.DBus has any; an interface the driver does not implement is unknown.
 */
function propertiesOf(iface: string): Record<string, (bus: DriverBus) => Variant> {
  if (!Object.hasOwn(HANDLERS, iface)) throw new DriverError(DBusError.UnknownInterface, `Interface "${iface}" not found`);
  return iface === DRIVER_NAME ? PROPERTIES : {};
}

type Handler = (c: DriverClient, bus: DriverBus, m: Message) => Promise<[string, Value[]]> | [string, Value[]];

function args(m: Message, signature: string): Value[] {
  if (m.signature !== signature) {
    throw new DriverError(DBusError.InvalidArgs, `Call to ${m.member} has wrong args (${m.signature}, expected ${signature})`);
  }
  return m.body;
}

/** The answer of a method that takes no arguments, if the call brought none (as dbus-daemon checks). */
function noArgs<T>(m: Message, answer: T): T {
  args(m, '');
  return answer;
}

/** dbus-daemon takes privileged methods only at the driver's own path. */
function canonicalPathOnly(m: Message): void {
  if (m.path !== DRIVER_PATH) {
    throw new DriverError(DBusError.AccessDenied, `Method '${m.member}' is only available at the canonical object path '${DRIVER_PATH}'`);
  }
}

/**
 * The connection owning `name` now, or undefined; activators and queued owners own nothing.
 * dbus-daemon looks names up without checking their syntax: a name that cannot be owned
 * has no owner.
 */
function ownerInfo(conn: LocalConnection, name: string, attach: bigint): InfoRecord | undefined {
  const id = name.startsWith(':') ? kdbusIdOfUniqueName(name) : undefined;
  if (name.startsWith(':') && id === undefined) return undefined;
  try {
    const info = conn.connInfo(id ?? name, attach);
    if (info.flags & HelloFlags.ACTIVATOR) return undefined;
    return info;
  } catch (e) {
    if (e instanceof KdbusError && ['ESRCH', 'ENXIO', 'EINVAL'].includes(e.code)) return undefined;
    throw e;
  }
}

function requireOwner(conn: LocalConnection, name: string, attach: bigint): InfoRecord {
  const info = ownerInfo(conn, name, attach);
  if (!info) throw new DriverError(DBusError.NameHasNoOwner, `Could not get owner of name '${name}': no such name`);
  return info;
}

function ownedNames(conn: LocalConnection): string[] {
  const out = new Set<string>([DRIVER_NAME]);
  for (const e of conn.listNames(ListFlags.UNIQUE | ListFlags.NAMES)) {
    if (e.flags & HelloFlags.ACTIVATOR) continue;
    out.add(uniqueName(e.id));
    for (const n of e.names) if (!(n.flags & (NameFlags.IN_QUEUE | NameFlags.ACTIVATOR))) out.add(n.name);
  }
  return [...out];
}

const HANDLERS: Record<string, Record<string, Handler>> = {
  [DRIVER_NAME]: {
    Hello: (_c, _bus, m) => {
      args(m, '');
      throw new DriverError(DBusError.Failed, 'Already handled an Hello message');
    },
    RequestName: (c, _bus, m) => {
      const [name, flags] = args(m, 'su') as [string, number];
      if (!isValidWellKnownName(name)) {
        throw new DriverError(DBusError.InvalidArgs, `Requested bus name "${name}" is not valid`);
      }
      if (name === DRIVER_NAME) throw new DriverError(DBusError.InvalidArgs, `Connection "${c.uniqueName}" is not allowed to own the name "${name}" because it is reserved for D-Bus' use only`);
      let kflags = 0n;
      if (flags & REQUEST_ALLOW_REPLACEMENT) kflags |= NameFlags.ALLOW_REPLACEMENT;
      if (flags & REQUEST_REPLACE_EXISTING) kflags |= NameFlags.REPLACE_EXISTING;
      if (!(flags & REQUEST_DO_NOT_QUEUE)) kflags |= NameFlags.QUEUE;
      try {
        const ret = c.conn.acquireName(name, kflags);
        // kdbus sets ACQUIRED only when ownership or queue place is new; an owner asking
        // again gets PRIMARY alone (dbus-daemon's ALREADY_OWNER). A queued connection that
        // asks with DO_NOT_QUEUE leaves the queue with neither flag: EXISTS, as dbus-daemon
        // takes it off its queue and answers.
        if (ret & NameFlags.IN_QUEUE) return ['u', [2]];
        if (!(ret & NameFlags.PRIMARY)) return ['u', [3]];
        return ['u', [ret & NameFlags.ACQUIRED ? 1 : 4]];
      } catch (e) {
        if (e instanceof KdbusError && e.code === 'EEXIST') return ['u', [3]];
        if (e instanceof KdbusError && e.code === 'EALREADY') return ['u', [4]];
        if (e instanceof KdbusError && e.code === 'EPERM') throw new DriverError(DBusError.AccessDenied, `Connection "${c.uniqueName}" is not allowed to own the service "${name}" due to security policies`);
        throw e;
      }
    },
    ReleaseName: (c, _bus, m) => {
      const [name] = args(m, 's') as [string];
      if (!isValidWellKnownName(name)) throw new DriverError(DBusError.InvalidArgs, `Given bus name "${name}" is not valid`);
      if (name === DRIVER_NAME) throw new DriverError(DBusError.InvalidArgs, `Cannot release the name "${name}" because it is owned by the bus`);
      try {
        c.conn.releaseName(name);
        return ['u', [1]];
      } catch (e) {
        if (e instanceof KdbusError && e.code === 'ESRCH') return ['u', [2]];
        if (e instanceof KdbusError && e.code === 'EADDRINUSE') return ['u', [3]];
        throw e;
      }
    },
    ListNames: (c, _bus, m) => noArgs(m, ['as', [ownedNames(c.conn)]]),
    ListActivatableNames: (c, bus, m) => {
      args(m, '');
      const out = new Set<string>([DRIVER_NAME, ...bus.listActivatable()]);
      for (const e of c.conn.listNames(ListFlags.ACTIVATORS)) for (const n of e.names) out.add(n.name);
      return ['as', [[...out]]];
    },
    NameHasOwner: (c, _bus, m) => {
      const [name] = args(m, 's') as [string];
      return ['b', [name === DRIVER_NAME || ownerInfo(c.conn, name, 0n) !== undefined]];
    },
    GetNameOwner: (c, _bus, m) => {
      const [name] = args(m, 's') as [string];
      if (name === DRIVER_NAME) return ['s', [DRIVER_NAME]];
      return ['s', [uniqueName(requireOwner(c.conn, name, 0n).id)]];
    },
    ListQueuedOwners: (_c, bus, m) => {
      const [name] = args(m, 's') as [string];
      if (name === DRIVER_NAME) return ['as', [[DRIVER_NAME]]];
      const queue = bus.queuedOwners(name);
      if (queue.length === 0) throw new DriverError(DBusError.NameHasNoOwner, `Could not get owners of name '${name}': no such name`);
      return ['as', [queue.map(uniqueName)]];
    },
    StartServiceByName: async (c, bus, m) => {
      const [name, flags] = args(m, 'su') as [string, number];
      if (flags !== 0) logger.debug(`${c.uniqueName}: StartServiceByName flags ${flags} ignored, as dbus-daemon does`);
      // The driver is no service that could be started: dbus-daemon answers ServiceUnknown.
      if (ownerInfo(c.conn, name, 0n)) return ['u', [2]];
      if (!bus.isActivatable(name)) throw new DriverError(DBusError.ServiceUnknown, `The name ${name} was not provided by any .service files`);
      await bus.startService(name, c);
      return ['u', [1]];
    },
    UpdateActivationEnvironment: (c, bus, m) => {
      canonicalPathOnly(m);
      const [pairs] = args(m, 'a{ss}') as [Array<[string, string]>];
      if (!c.trusted) throw new DriverError(DBusError.AccessDenied, 'Cannot change the activation environment: only the bus owner or root may');
      bus.updateActivationEnvironment(Object.fromEntries(pairs));
      return ['', []];
    },
    GetConnectionUnixUser: (c, _bus, m) => {
      const [name] = args(m, 's') as [string];
      if (name === DRIVER_NAME) return ['u', [daemonUid()]];
      const creds = requireOwner(c.conn, name, Attach.CREDS).meta.creds;
      if (!creds) throw new DriverError(DBusError.Failed, `Could not determine UID for '${name}'`);
      return ['u', [Number(creds.euid)]];
    },
    GetConnectionUnixProcessID: (c, _bus, m) => {
      const [name] = args(m, 's') as [string];
      if (name === DRIVER_NAME) return ['u', [process.pid]];
      const pid = requireOwner(c.conn, name, Attach.PIDS).meta.pids?.pid;
      if (!pid) throw new DriverError(DBusError.UnixProcessIdUnknown, `Could not determine PID for '${name}'`);
      return ['u', [Number(pid)]];
    },
    GetConnectionCredentials: (c, _bus, m) => {
      const [name] = args(m, 's') as [string];
      // In dbus-daemon's order.
      const entries: Array<[string, Variant]> = [];
      if (name === DRIVER_NAME) {
        entries.push(['ProcessID', new Variant('u', process.pid)], ['UnixUserID', new Variant('u', daemonUid())]);
        return ['a{sv}', [entries]];
      }
      const meta = requireOwner(c.conn, name, CONN_INFO_CREDS).meta;
      if (meta.pids?.pid) entries.push(['ProcessID', new Variant('u', Number(meta.pids.pid))]);
      if (meta.creds) entries.push(['UnixUserID', new Variant('u', Number(meta.creds.euid))]);
      // dbus-daemon lists the primary group with the supplementary ones.
      if (meta.creds) entries.push(['UnixGroupIDs', new Variant('au', [...new Set([Number(meta.creds.egid), ...(meta.auxGroups ?? []).map(Number)])].sort((a, b) => a - b))]);
      if (meta.seclabel !== undefined) entries.push(['LinuxSecurityLabel', new Variant('ay', Buffer.from(`${meta.seclabel}\0`))]);
      return ['a{sv}', [entries]];
    },
    GetConnectionSELinuxSecurityContext: (c, _bus, m) => {
      const [name] = args(m, 's') as [string];
      const label = requireOwner(c.conn, name, Attach.SECLABEL).meta.seclabel;
      if (label === undefined) throw new DriverError(DBusError.SELinuxSecurityContextUnknown, `Could not determine security context for '${name}'`);
      return ['ay', [Buffer.from(label)]];
    },
    GetAdtAuditSessionData: (c, _bus, m) => {
      const [name] = args(m, 's') as [string];
      requireOwner(c.conn, name, 0n);
      throw new DriverError(DBusError.AdtAuditDataUnknown, `Could not determine audit session data for '${name}'`);
    },
    AddMatch: (c, _bus, m) => {
      const [text] = args(m, 's') as [string];
      c.addMatch(MatchRule.parse(text));
      return ['', []];
    },
    RemoveMatch: (c, _bus, m) => {
      const [text] = args(m, 's') as [string];
      if (!c.removeMatch(MatchRule.parse(text))) throw new DriverError(DBusError.MatchRuleNotFound, 'The given match rule wasn\'t found and can\'t be removed');
      return ['', []];
    },
    GetId: (c, _bus, m) => noArgs(m, ['s', [c.conn.busId.toString('hex')]]),
    ReloadConfig: (_c, bus, m) => {
      args(m, '');
      bus.reload();
      return ['', []];
    },
  },
  'org.freedesktop.DBus.Introspectable': {
    Introspect: (_c, _bus, m) => noArgs(m, ['s', [introspection(m.path)]]),
  },
  [PEER_INTERFACE]: {
    Ping: (_c, _bus, m) => noArgs(m, ['', []]),
    GetMachineId: (_c, _bus, m) => noArgs(m, ['s', [machineId()]]),
  },
  'org.freedesktop.DBus.Properties': {
    Get: (_c, bus, m) => {
      const [iface, prop] = args(m, 'ss') as [string, string];
      const get = own(propertiesOf(iface), prop);
      if (!get) throw new DriverError(DBusError.UnknownProperty, `Interface "${iface}" has no property "${prop}"`);
      return ['v', [get(bus)]];
    },
    GetAll: (_c, bus, m) => {
      const [iface] = args(m, 's') as [string];
      return ['a{sv}', [Object.entries(propertiesOf(iface)).map(([k, f]) => [k, f(bus)] as [string, Variant])]];
    },
    Set: (_c, _bus, m) => {
      const [iface, prop] = args(m, 'ssv') as [string, string, Variant];
      if (!own(propertiesOf(iface), prop)) throw new DriverError(DBusError.UnknownProperty, `Interface "${iface}" has no property "${prop}"`);
      throw new DriverError(DBusError.PropertyReadOnly, `Property "${prop}" of "${iface}" is read-only`);
    },
  },
  'org.freedesktop.DBus.Monitoring': {
    BecomeMonitor: (c, _bus, m) => {
      const [rules, flags] = args(m, 'asu') as [string[], number];
      if (flags !== 0) throw new DriverError(DBusError.InvalidArgs, 'BecomeMonitor: flags must be 0');
      c.becomeMonitor(rules.map((r) => MatchRule.parse(r)));
      return ['', []];
    },
  },
  [STATS_INTERFACE]: {
    GetStats: (c, bus, m) => {
      args(m, '');
      mayReadStats(c);
      return ['a{sv}', [bus.busStats()]];
    },
    GetConnectionStats: (c, bus, m) => {
      const [name] = args(m, 's') as [string];
      mayReadStats(c);
      if (name === DRIVER_NAME) throw new DriverError(DBusError.InvalidArgs, `GetConnectionStats is not meaningful for the message bus "${DRIVER_NAME}" itself`);
      const info = ownerInfo(c.conn, name, 0n);
      if (!info) throw new DriverError(DBusError.NameHasNoOwner, `Could not get statistics of name '${name}': no such name`);
      return ['a{sv}', [bus.connectionStats(info.id)]];
    },
    GetAllMatchRules: (c, bus, m) => {
      args(m, '');
      mayReadStats(c);
      return ['a{sas}', [bus.allMatchRules()]];
    },
  },
};

/** The interfaces the driver has only at its own path, as dbus-daemon (CANONICAL_PATH_INTERFACES). */
const CANONICAL_PATH_ONLY = new Set(['org.freedesktop.DBus.Properties', 'org.freedesktop.DBus.Monitoring', STATS_INTERFACE].map((i) => HANDLERS[i]));

/**
 * Statistics name every connection and its rules: the bus owner's and root's to read, as
 * those who may monitor (dbus-daemon leaves it to its policy, which its system bus uses to
 * deny the interface).
 */
function mayReadStats(c: DriverClient): void {
  if (!c.trusted) throw new DriverError(DBusError.AccessDenied, "Only the bus owner or root may read the bus's statistics");
}

/** The bus's own credentials are the daemon's. */
function daemonUid(): number {
  return process.geteuid?.() ?? 0;
}

let cachedMachineId: string | undefined;
function machineId(): string {
  if (cachedMachineId === undefined) {
    try {
      cachedMachineId = fs.readFileSync('/etc/machine-id', 'utf8').trim();
    } catch {
      cachedMachineId = fs.readFileSync('/var/lib/dbus/machine-id', 'utf8').trim();
    }
  }
  return cachedMachineId;
}

/**
 * What dbus-daemon's side of a client's connection (libdbus) answers itself, before the bus
 * looks at the message (even before Hello): a message without destination on the Peer
 * interface, of whatever type, and a method call without destination, which nobody would
 * receive. `m.sender` is what the client wrote, if anything. Returns whether `m`
 * is done with (answered, or dropped as a reply or error addressed to nobody); a signal
 * without destination is not, it goes to the bus.
 */
export function answerUnaddressed(c: DriverClient, m: Message): boolean {
  if (m.destination !== undefined) return false;
  // The answer comes from that connection itself, which has no name, and goes to whatever
  // SENDER the message claimed, if any: the bus had not stamped it yet.
  const answer = (reply: Message): void => {
    delete reply.sender;
    c.send(reply);
  };
  if (m.interface === PEER_INTERFACE) {
    if (m.type === MessageType.MethodCall && m.member === 'Ping') answer(driverReply(m, '', []));
    else if (m.type === MessageType.MethodCall && m.member === 'GetMachineId') answer(driverReply(m, 's', [machineId()]));
    else answer(errorReply(m, DRIVER_NAME, DBusError.UnknownMethod, `Unknown method invoked on ${PEER_INTERFACE} interface`));
    return true;
  }
  if (m.type === MessageType.Signal) return false;
  if (m.type === MessageType.MethodCall) {
    answer(errorReply(m, DRIVER_NAME, DBusError.UnknownMethod,
      `Method "${m.member ?? '(null)'}" with signature "${m.signature}" on interface "${m.interface ?? '(null)'}" doesn't exist`));
  }
  return true;
}

/** The methods whose empty reply dbus-daemon sends only to a caller that wants a reply. */
const ACKNOWLEDGEMENTS = new Set(['AddMatch', 'RemoveMatch', 'UpdateActivationEnvironment', 'BecomeMonitor', 'Ping']);

/**
 * Answers a method call addressed to org.freedesktop.DBus (a bare acknowledgement only if a
 * reply is expected, as dbus-daemon does).
 * A handler's answer goes out on the next microtask, after what its work set in motion
 * (NameAcquired before RequestName's reply, as dbus-daemon orders them); a refusal at once.
 */
export function callDriver(c: DriverClient, bus: DriverBus, m: Message): void {
  if (m.type === MessageType.Signal && m.interface === 'org.freedesktop.systemd1.Activator' && m.member === 'ActivationFailure') {
    activationFailure(c, bus, m);
    return;
  }
  if (m.type !== MessageType.MethodCall) return;
  // dbus-daemon keeps back only its bare acknowledgements from a caller that said
  // NO_REPLY_EXPECTED; answers with content, and errors, go out all the same.
  const wantsAck = !(m.flags & MessageFlag.NoReplyExpected);
  let answer: Promise<[string, Value[]]> | [string, Value[]];
  try {
    const byIface = m.interface === undefined ? findMethod(m.member!) : own(HANDLERS, m.interface);
    if (!byIface) {
      // Without an interface only the method can be unknown.
      throw new DriverError(m.interface === undefined ? DBusError.UnknownMethod : DBusError.UnknownInterface, `org.freedesktop.DBus does not understand message ${m.member}`);
    }
    if (m.path !== DRIVER_PATH && CANONICAL_PATH_ONLY.has(byIface)) {
      // As with dbus-daemon, these interfaces exist only at the driver's own path.
      throw new DriverError(DBusError.UnknownInterface, `Interface "${m.interface ?? ''}" is only available at the canonical object path '${DRIVER_PATH}'`);
    }
    const handler = own(byIface, m.member!);
    if (!handler) throw new DriverError(DBusError.UnknownMethod, `org.freedesktop.DBus does not understand message ${m.member}`);
    answer = handler(c, bus, m);
  } catch (e) {
    c.send(errorReply(m, DRIVER_NAME, ...driverErrorOf(e)));
    return;
  }
  const refuse = (e: unknown): void => c.send(errorReply(m, DRIVER_NAME, ...driverErrorOf(e)));
  // Without an async function: the common, synchronous answer needs no promise of its own.
  // A reply that cannot be made (a bug) is refused like a failed handler, never left unhandled.
  void Promise.resolve(answer)
    .then(([signature, body]) => {
      const reply = driverReply(m, signature, body);
      if (wantsAck || !ACKNOWLEDGEMENTS.has(m.member!)) c.send(reply);
      c.answered(m);
    }, refuse)
    .catch((e: unknown) => {
      try {
        refuse(e);
      } catch (again) {
        logger.error(`driver: cannot answer ${m.member ?? ''} from ${c.uniqueName}: ${(again as Error).stack ?? String(again)}`);
      }
    });
}

/**
 * systemd's answer to an ActivationRequest it could not carry out, a signal to the driver:
 * taken from root or the bus owner, and only from the owner of org.freedesktop.systemd1
 * (another one's is logged as forged and ignored), as dbus-daemon takes it.
 */
function activationFailure(c: DriverClient, bus: DriverBus, m: Message): void {
  if (!c.trusted) {
    logger.warn(`rejected ActivationFailure from ${c.uniqueName}: only root or the bus owner may report systemd's failures`);
    c.send(errorReply(m, DRIVER_NAME, DBusError.AccessDenied, `rejected attempt to call ActivationFailure by connection ${c.uniqueName}: only root or the bus owner may`));
    return;
  }
  if (ownerInfo(c.conn, SYSTEMD_NAME, 0n)?.id !== c.conn.id) {
    logger.warn(`Ignoring forged ActivationFailure message from connection ${c.uniqueName}: it is not ${SYSTEMD_NAME}`);
    return;
  }
  if (!bus.systemdActivation) {
    logger.warn(`Ignoring unexpected ActivationFailure message from ${c.uniqueName} while not using systemd activation`);
    return;
  }
  if (m.signature !== 'sss') {
    logger.warn(`Ignoring an ActivationFailure message from ${c.uniqueName} with arguments (${m.signature ?? ''}), not (sss)`);
    return;
  }
  const [unit, errorName, text] = m.body as [string, string, string];
  bus.systemdFailure(unit, errorName, text);
}

/**
 * A table entry by a name the client chose: only the table's own entries, so that names like
 * "constructor" or "__proto__" find nothing instead of what every object inherits.
 */
function own<T>(table: Readonly<Record<string, T>>, name: string): T | undefined {
  return Object.hasOwn(table, name) ? table[name] : undefined;
}

/** A call without an interface goes to the first interface with that method, as dbus-daemon does. */
function findMethod(member: string): Record<string, Handler> | undefined {
  return Object.values(HANDLERS).find((h) => Object.hasOwn(h, member));
}

export function driverErrorOf(e: unknown): [string, string] {
  if (e instanceof DriverError) return [e.errorName, e.message];
  if (e instanceof MatchRuleInvalid || e instanceof ActivationError) return [e.errorName, e.message];
  if (e instanceof KdbusError) {
    if (e.code === 'EPERM' || e.code === 'EACCES') return [DBusError.AccessDenied, e.message];
    if (['ENOBUFS', 'EMFILE', 'EXFULL', 'ENOSPC', 'EMLINK'].includes(e.code)) return [DBusError.LimitsExceeded, e.message];
    return [DBusError.Failed, e.message];
  }
  logger.error(`driver: unexpected failure: ${(e as Error).stack ?? String(e)}`);
  return [DBusError.Failed, (e as Error).message ?? String(e)];
}

