/**
 * Daemon configuration: defaults, a JSON file, then command-line flags, in that order of
 * precedence. Every problem names the file (or flag), the key and what is wrong, so an
 * operator can fix it without reading code.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AddressError, escapeValue, parseAddress } from '../dbus1/address';

export type TransportMode = 'auto' | 'cuse' | 'socket';

export interface Config {
  transport: TransportMode;
  /** Where the kdbus tree appears: <root>/control, <root>/<uid>-<name>/bus. */
  kdbusRoot: string;
  /** Buses created at start, full names with the uid prefix. */
  buses: string[];
  /** The socket transport's listening socket (the shim's rendezvous). */
  socket: string;
  /**
   * D-Bus addresses where legacy clients reach the first bus; undefined: the default, a
   * socket named bus_socket beside the transport socket; empty: no legacy endpoint.
   */
  listen: string[] | undefined;
  /** Address of an existing bus to bridge the first bus to. */
  upstream: string | undefined;
  logLevel: string;
  /** The control socket of `status` and `monitor`; undefined: control.sock beside the transport socket. */
  control: string | undefined;
  /** Directories of D-Bus service files for activation; undefined: dbus-daemon's defaults. */
  serviceDirs: string[] | undefined;
  /** Services whose files name a SystemdService are started by systemd, as dbus-daemon --systemd-activation does. */
  systemdActivation: boolean;
  /** A group whose members may use the control socket besides root (mode 0660 instead of 0600). */
  controlGroup: string | undefined;
}

export class ConfigError extends Error {
  constructor(source: string, key: string, problem: string) {
    super(`${source}: ${key}: ${problem}`);
    this.name = 'ConfigError';
  }
}

const LOG_LEVELS = ['error', 'warn', 'info', 'verbose', 'debug'];
const BUS_NAME = /^[0-9]+-[A-Za-z0-9_][A-Za-z0-9_.-]{0,61}[A-Za-z0-9_]$/;

/** Where an unprivileged daemon keeps its files: it cannot write /run or /dev. */
function userRuntimeDir(): string {
  return path.join(process.env['XDG_RUNTIME_DIR'] || path.join(os.tmpdir(), `kdbus-cuse-${process.getuid?.() ?? 'user'}`), 'kdbus-cuse');
}

export function defaultSocketPath(): string {
  if (process.getuid?.() === 0) return '/run/kdbus-cuse/kdbus.sock';
  return path.join(userRuntimeDir(), 'kdbus.sock');
}

/** /dev/kdbus for root (where CUSE puts its nodes); a tree of the user's own otherwise. */
export function defaultKdbusRoot(): string {
  return process.getuid?.() === 0 ? '/dev/kdbus' : path.join(userRuntimeDir(), 'kdbus');
}

export function defaults(): Config {
  const uid = process.getuid?.() ?? 0;
  return {
    transport: 'auto',
    kdbusRoot: defaultKdbusRoot(),
    buses: [uid === 0 ? '0-system' : `${uid}-user`],
    socket: defaultSocketPath(),
    listen: undefined,
    upstream: undefined,
    logLevel: process.env['KDBUS_CUSE_LOG_LEVEL'] ?? 'info',
    control: undefined,
    controlGroup: undefined,
    serviceDirs: undefined,
    systemdActivation: false,
  };
}

function expectString(source: string, key: string, v: unknown): string {
  if (typeof v !== 'string' || v.length === 0) throw new ConfigError(source, key, `expected a non-empty string, got ${JSON.stringify(v)}`);
  return v;
}

function expectBoolean(source: string, key: string, v: unknown): boolean {
  if (typeof v !== 'boolean') throw new ConfigError(source, key, `expected true or false, got ${JSON.stringify(v)}`);
  return v;
}

function expectStrings(source: string, key: string, v: unknown): string[] {
  if (!Array.isArray(v)) throw new ConfigError(source, key, `expected a list of strings, got ${JSON.stringify(v)}`);
  return v.map((x, i) => expectString(source, `${key}[${i}]`, x));
}

/** Checks a merged configuration; `source` names where each value came from for messages. */
export function validate(c: Config, source: string): Config {
  if (!['auto', 'cuse', 'socket'].includes(c.transport)) {
    throw new ConfigError(source, 'transport', `must be auto, cuse or socket, not "${c.transport}"`);
  }
  if (!path.isAbsolute(c.kdbusRoot)) throw new ConfigError(source, 'kdbusRoot', `must be an absolute path, not "${c.kdbusRoot}"`);
  if (!path.isAbsolute(c.socket)) throw new ConfigError(source, 'socket', `must be an absolute path, not "${c.socket}"`);
  if (c.control !== undefined && !path.isAbsolute(c.control)) throw new ConfigError(source, 'control', `must be an absolute path, not "${c.control}"`);
  if (c.buses.length === 0) throw new ConfigError(source, 'buses', 'at least one bus is needed');
  c.buses.forEach((b, i) => {
    if (!BUS_NAME.test(b)) throw new ConfigError(source, `buses[${i}]`, `"${b}" is not a bus name like 0-system or 1000-user (uid, dash, 1-63 chars of [A-Za-z0-9_.-])`);
  });
  c.listen?.forEach((a, i) => checkAddress(source, `listen[${i}]`, a));
  if (c.upstream !== undefined) {
    c.upstream = upstreamAddress(source, c.upstream);
    checkAddress(source, 'upstream', c.upstream);
    // Legacy clients of a bridged bus have the upstream bus; a second name space beside it would split the bus.
    if (c.listen !== undefined && c.listen.length > 0) {
      throw new ConfigError(source, 'listen', 'a bus bridged to an upstream bus has no legacy endpoint of its own: legacy clients use the upstream bus (drop --listen, or use --listen none)');
    }
  }
  if (!LOG_LEVELS.includes(c.logLevel)) throw new ConfigError(source, 'logLevel', `must be one of ${LOG_LEVELS.join(', ')}`);
  return c;
}

/** "system" and "session" name the machine's buses as D-Bus clients find them; anything else is an address. */
function upstreamAddress(source: string, value: string): string {
  if (value === 'system') return process.env.DBUS_SYSTEM_BUS_ADDRESS || 'unix:path=/run/dbus/system_bus_socket';
  if (value === 'session') {
    const address = process.env.DBUS_SESSION_BUS_ADDRESS;
    if (!address) throw new ConfigError(source, 'upstream', '"session" needs DBUS_SESSION_BUS_ADDRESS in the environment');
    return address;
  }
  return value;
}

function checkAddress(source: string, key: string, address: string): void {
  try {
    parseAddress(address);
  } catch (e) {
    throw new ConfigError(source, key, e instanceof AddressError ? e.message : String(e));
  }
}

/** Where legacy D-Bus clients connect: the configured addresses, or the default one. */
export function listenAddresses(c: Config): string[] {
  if (c.upstream !== undefined) return [];
  return c.listen ?? [`unix:path=${escapeValue(path.join(path.dirname(c.socket), 'bus_socket'))}`];
}

/** Where `status` and `monitor` reach the daemon. */
export function controlPath(c: Pick<Config, 'control' | 'socket'>): string {
  return c.control ?? path.join(path.dirname(c.socket), 'control.sock');
}

const KEYS = new Set(['transport', 'kdbusRoot', 'buses', 'socket', 'listen', 'upstream', 'logLevel', 'control', 'controlGroup', 'serviceDirs', 'systemdActivation']);

/** Reads a JSON configuration file over the defaults. */
export function loadFile(file: string, base: Config = defaults()): Config {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, '(file)', `cannot be read: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(file, '(syntax)', `is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ConfigError(file, '(top level)', 'must be a JSON object');
  const c = { ...base };
  for (const [key, v] of Object.entries(raw as Record<string, unknown>)) {
    if (!KEYS.has(key)) throw new ConfigError(file, key, `unknown key (known: ${[...KEYS].join(', ')})`);
    switch (key) {
      case 'transport': c.transport = expectString(file, key, v) as TransportMode; break;
      case 'kdbusRoot': c.kdbusRoot = expectString(file, key, v); break;
      case 'buses': c.buses = expectStrings(file, key, v); break;
      case 'socket': c.socket = expectString(file, key, v); break;
      case 'listen': c.listen = expectStrings(file, key, v); break;
      case 'upstream': c.upstream = v === null ? undefined : expectString(file, key, v); break;
      case 'logLevel': c.logLevel = expectString(file, key, v); break;
      case 'control': c.control = expectString(file, key, v); break;
      case 'controlGroup': c.controlGroup = expectString(file, key, v); break;
      case 'serviceDirs': c.serviceDirs = expectStrings(file, key, v); break;
      case 'systemdActivation': c.systemdActivation = expectBoolean(file, key, v); break;
    }
  }
  return validate(c, file);
}
