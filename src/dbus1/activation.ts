/**
 * Service activation for the legacy endpoint, as dbus-daemon does it: `.service` files in a
 * list of directories map well-known names to command lines; starting a name spawns its
 * command and waits until the name has an owner on the bus.
 *
 * The rules are dbus-daemon's where the D-Bus specification leaves things open:
 * - file syntax of its desktop-file reader (comments only at column 0, keys [A-Za-z0-9-],
 *   spaces around '=', escapes \s \t \n \r \\, localized keys ignored, the first of
 *   duplicate groups and keys counts, 128 KiB and valid UTF-8 at most);
 * - Exec required (SystemdService alone does not do), split into words with shell quoting
 *   but no expansion when the service starts, not when the file is read (a line that does
 *   not split fails the start with InvalidArgs, an empty one with Spawn.ExecFailed), and run
 *   without a PATH search;
 * - the first directory that provides a name wins; on a system bus a file must be named
 *   after its name (what the launch helper relies on) and needs a User;
 * - a child that exits with status 0 before its name appears is not a failure (it may have
 *   forked into the background); a failure ends every pending start with the same Exec;
 * - the timeout kills the child; children outlive the daemon.
 *
 * With systemd activation (dbus-daemon's --systemd-activation), a file that names a
 * SystemdService is started by systemd instead: the driver sends the ActivationRequest signal
 * with that unit to org.freedesktop.systemd1 (once systemd is on the bus; a start waits for it
 * within the timeout), systemd starts the unit, or answers with an ActivationFailure signal
 * that fails every start waiting for the unit with the error it names. Files without it still
 * run their Exec line; org.freedesktop.systemd1 itself needs no file: starting it waits for
 * systemd to connect. UpdateActivationEnvironment is passed on to systemd (SetEnvironment).
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import * as fs from 'node:fs';
import { constants as osConstants, homedir } from 'node:os';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import * as koffi from 'koffi';
import { HelloFlags, NameFlags } from '../abi/constants';
import { Errno, KdbusError } from '../abi/errno';
import { logger } from '../log/logger';
import type { LocalConnection } from './local-connection';
import { MessageType, type Message } from './message';
import { isValidErrorName, isValidWellKnownName } from './names';
import { closeMessageFiles, type Received } from './pool-records';
import { DRIVER_PATH, driverToSystemd, SYSTEMD_NAME } from './translate';

// --- errors ----------------------------------------------------------------------------

export const ActivationErrorName = {
  SERVICE_UNKNOWN: 'org.freedesktop.DBus.Error.ServiceUnknown',
  LIMITS_EXCEEDED: 'org.freedesktop.DBus.Error.LimitsExceeded',
  TIMED_OUT: 'org.freedesktop.DBus.Error.TimedOut',
  ACCESS_DENIED: 'org.freedesktop.DBus.Error.AccessDenied',
  FAILED: 'org.freedesktop.DBus.Error.Failed',
  INVALID_ARGS: 'org.freedesktop.DBus.Error.InvalidArgs',
  EXEC_FAILED: 'org.freedesktop.DBus.Error.Spawn.ExecFailed',
  FORK_FAILED: 'org.freedesktop.DBus.Error.Spawn.ForkFailed',
  CHILD_EXITED: 'org.freedesktop.DBus.Error.Spawn.ChildExited',
  CHILD_SIGNALED: 'org.freedesktop.DBus.Error.Spawn.ChildSignaled',
  SETUP_FAILED: 'org.freedesktop.DBus.Error.Spawn.FailedToSetup',
  FILE_INVALID: 'org.freedesktop.DBus.Error.Spawn.FileInvalid',
} as const;

/** A start that failed; `errorName` is the D-Bus error the caller is answered with. */
export class ActivationError extends Error {
  override readonly name = 'ActivationError';

  constructor(
    readonly errorName: string,
    message: string,
  ) {
    super(message);
  }
}

/** What is wrong with a service file (or its Exec line); the message names the line. */
export class ServiceFileError extends Error {
  override readonly name = 'ServiceFileError';
}

// --- service files ---------------------------------------------------------------------

export const SERVICE_GROUP = 'D-BUS Service';
/** dbus-daemon refuses bigger files. */
export const MAX_SERVICE_FILE_SIZE = 128 * 1024;

export interface ServiceEntry {
  readonly name: string;
  /**
   * The Exec line as written (after the file's own escapes). dbus-daemon splits it only to
   * start the service: a line that does not split still lists the name.
   */
  readonly exec: string;
  readonly user: string | undefined;
  readonly systemdService: string | undefined;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

const isKeyChar = (c: number): boolean =>
  (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x2d;

function unescapeValue(raw: string, line: number): string {
  if (!raw.includes('\\')) return raw;
  let out = '';
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!;
    if (c !== '\\') {
      out += c;
      continue;
    }
    const next = raw[++i];
    switch (next) {
      case 's': out += ' '; break;
      case 't': out += '\t'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case '\\': out += '\\'; break;
      case undefined: throw new ServiceFileError(`line ${line}: the value ends in a backslash`);
      default: throw new ServiceFileError(`line ${line}: invalid escape sequence \\${next} (only \\s \\t \\n \\r \\\\ are allowed)`);
    }
  }
  return out;
}

/** Groups of a desktop-entry style file: group name -> key -> value. */
function parseGroups(data: Buffer): Map<string, Map<string, string>> {
  if (data.length > MAX_SERVICE_FILE_SIZE) throw new ServiceFileError(`${data.length} bytes is larger than the limit of ${MAX_SERVICE_FILE_SIZE}`);
  let text: string;
  try {
    text = strictUtf8.decode(data);
  } catch {
    throw new ServiceFileError('not valid UTF-8');
  }
  if (text.includes('\0')) throw new ServiceFileError('contains a NUL byte');
  const groups = new Map<string, Map<string, string>>();
  let current: Map<string, string> | undefined;
  const lines = text.split(/\r\n|\r|\n/);
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!;
    const lineNo = n + 1;
    if (line.startsWith('[')) {
      if (line.length <= 2 || !line.endsWith(']')) throw new ServiceFileError(`line ${lineNo}: invalid group header ${JSON.stringify(line)}`);
      const name = line.slice(1, -1);
      for (let i = 0; i < name.length; i++) {
        const c = name.charCodeAt(i);
        if (c < 0x20 || c > 0x7e || c === 0x5b || c === 0x5d) throw new ServiceFileError(`line ${lineNo}: invalid character in group name ${JSON.stringify(name)}`);
      }
      // A repeated group is parsed but, as in dbus-daemon, only the first one is consulted.
      current = new Map();
      if (!groups.has(name)) groups.set(name, current);
      continue;
    }
    if (line[0] === '#' || /^[ \t\f]*$/.test(line)) continue;
    if (!current) throw new ServiceFileError(`line ${lineNo}: key=value line before the first [group]`);
    let p = 0;
    while (p < line.length && isKeyChar(line.charCodeAt(p))) p++;
    if (p === 0) throw new ServiceFileError(`line ${lineNo}: empty key name (comments must start in the first column)`);
    const key = line.slice(0, p);
    if (line[p] === '[') continue; // a localized value: not used for service files
    while (line[p] === ' ') p++;
    if (p === line.length) throw new ServiceFileError(`line ${lineNo}: no '=' after key ${key}`);
    if (line[p] !== '=') throw new ServiceFileError(`line ${lineNo}: invalid character ${JSON.stringify(line[p])} in key name ${JSON.stringify(line.slice(0, p + 1))}`);
    p++;
    while (line[p] === ' ') p++;
    const value = unescapeValue(line.slice(p), lineNo);
    if (!current.has(key)) current.set(key, value);
  }
  return groups;
}

/** Parses a service file; throws ServiceFileError saying what is wrong. */
export function parseServiceFile(data: Buffer): ServiceEntry {
  const group = parseGroups(data).get(SERVICE_GROUP);
  if (!group) throw new ServiceFileError(`no [${SERVICE_GROUP}] group`);
  const name = group.get('Name');
  if (name === undefined) throw new ServiceFileError(`no Name key in [${SERVICE_GROUP}]`);
  if (!isValidWellKnownName(name)) throw new ServiceFileError(`Name ${JSON.stringify(name)} is not a valid well-known bus name`);
  // dbus-daemon needs Exec even beside SystemdService (systemd's files say Exec=/bin/false).
  const exec = group.get('Exec');
  if (exec === undefined) throw new ServiceFileError(`no Exec key in [${SERVICE_GROUP}]`);
  return { name, exec, user: group.get('User'), systemdService: group.get('SystemdService') };
}

/**
 * Splits a command line into words as /bin/sh would, without any expansion: blanks separate
 * words, '...' is literal, "..." honours \" \\ \` \$ and backslash-newline, an unquoted
 * backslash quotes the next character, '#' at the start of a word comments out the rest of
 * the line. Words made only of quotes ('' or "") are kept as empty arguments.
 */
export function splitCommandLine(line: string): string[] {
  const words: string[] = [];
  let word: string | null = null;
  let i = 0;
  const n = line.length;
  while (i < n) {
    const c = line[i]!;
    if (c === ' ' || c === '\t' || c === '\n') {
      if (word !== null) words.push(word);
      word = null;
      i++;
    } else if (c === '#' && word === null) {
      while (i < n && line[i] !== '\n') i++;
    } else if (c === '\\') {
      if (i + 1 >= n) throw new ServiceFileError('the command line ends in a backslash');
      const next = line[i + 1]!;
      // Backslash-newline joins lines; any other character is taken literally.
      if (next !== '\n') word = (word ?? '') + next;
      i += 2;
    } else if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new ServiceFileError('unclosed single quote in the command line');
      word = (word ?? '') + line.slice(i + 1, end);
      i = end + 1;
    } else if (c === '"') {
      let out: string = word ?? '';
      i++;
      for (;;) {
        if (i >= n) throw new ServiceFileError('unclosed double quote in the command line');
        const d = line[i]!;
        if (d === '"') break;
        if (d === '\\' && i + 1 < n) {
          const e = line[i + 1]!;
          if (e === '"' || e === '\\' || e === '`' || e === '$') {
            out += e;
            i += 2;
            continue;
          }
          if (e === '\n') {
            i += 2;
            continue;
          }
        }
        out += d;
        i++;
      }
      word = out;
      i++;
    } else {
      word = (word ?? '') + c;
      i++;
    }
  }
  if (word !== null) words.push(word);
  return words;
}

// --- directories -----------------------------------------------------------------------

export interface ServiceDir {
  path: string;
  /** Files must be named after the name they provide (<Name>.service); others are skipped. */
  strictNaming: boolean;
}

/**
 * dbus-daemon's standard service directories, highest priority first. Session:
 * $XDG_RUNTIME_DIR/dbus-1/services (strict naming), $XDG_DATA_HOME/dbus-1/services,
 * <each of $XDG_DATA_DIRS>/dbus-1/services, /usr/share/dbus-1/services (each once). System:
 * /usr/local/share, /usr/share and /lib ... /dbus-1/system-services, all strict.
 */
export function defaultServiceDirs(busType: 'system' | 'session', env: NodeJS.ProcessEnv = process.env): ServiceDir[] {
  if (busType === 'system') {
    return ['/usr/local/share/dbus-1/system-services', '/usr/share/dbus-1/system-services', '/lib/dbus-1/system-services']
      .map((p) => ({ path: p, strictNaming: true }));
  }
  // Relative paths in XDG variables are invalid and ignored (XDG Base Directory Specification).
  const absolute = (p: string | undefined): p is string => p !== undefined && path.isAbsolute(p);
  const dirs: ServiceDir[] = [];
  const runtime = env['XDG_RUNTIME_DIR'];
  if (absolute(runtime)) dirs.push({ path: path.join(runtime, 'dbus-1/services'), strictNaming: true });
  const dataHome = absolute(env['XDG_DATA_HOME']) ? env['XDG_DATA_HOME']! : path.join(env['HOME'] || homedir(), '.local/share');
  const dataDirs = (env['XDG_DATA_DIRS'] || '/usr/local/share:/usr/share').split(':').filter(absolute);
  for (const d of [dataHome, ...dataDirs, '/usr/share']) {
    const p = path.join(d, 'dbus-1/services');
    if (!dirs.some((x) => x.path === p)) dirs.push({ path: p, strictNaming: false });
  }
  return dirs;
}

// --- the activation manager ------------------------------------------------------------

export interface ActivationOptions {
  /** Highest priority first; plain paths get strict naming on a system bus. */
  dirs: ReadonlyArray<string | ServiceDir>;
  /** DBUS_STARTER_ADDRESS of started services (and DBUS_SESSION/SYSTEM_BUS_ADDRESS). */
  busAddress: string;
  busType: 'system' | 'session';
  /**
   * The environment services start with. Default: the daemon's own on a session bus, none
   * on a system bus (dbus-daemon's launch helper clears it). Variables that systemd set for
   * the daemon itself (NOTIFY_SOCKET, LISTEN_*, JOURNAL_STREAM, INVOCATION_ID) are dropped.
   */
  env?: Record<string, string>;
  /** service_start_timeout; default 25000 ms, as dbus-daemon. */
  timeoutMs?: number;
  /** max_pending_service_starts: start() calls in flight at once; default 512, as dbus-daemon. */
  maxPending?: number;
  /** Set: the bus does systemd activation, and this reaches systemd. */
  systemd?: SystemdLink;
}

/** How the driver's messages reach systemd, for systemd activation. */
export interface SystemdLink {
  /**
   * Delivers `m` to the owner of org.freedesktop.systemd1; an ActivationError when it cannot.
   * `toConnection`: the destination becomes that connection's unique name, as in dbus-daemon's
   * calls from the driver (its signals keep the name they were sent to).
   */
  send(m: Message, toConnection: boolean): void;
}

const ACTIVATOR_INTERFACE = 'org.freedesktop.systemd1.Activator';

/** Resolves when the name has an owner; must stop and settle (either way) when `signal` aborts. */
export type WaitForOwner = (name: string, signal: AbortSignal) => Promise<void>;

/** waitForOwner's promise; a watcher that fails at once rejects it rather than throwing. */
function ownerAppears(waitForOwner: WaitForOwner, name: string, signal: AbortSignal): Promise<void> {
  try {
    return waitForOwner(name, signal);
  } catch (e) {
    return Promise.reject(e);
  }
}

const DEFAULT_TIMEOUT_MS = 25_000;
const DEFAULT_MAX_PENDING = 512;
const DAEMON_ONLY_ENV = ['JOURNAL_STREAM', 'LISTEN_FDNAMES', 'LISTEN_FDS', 'LISTEN_PID', 'NOTIFY_SOCKET', 'INVOCATION_ID'];
/** A child's output line longer than this is logged in pieces rather than buffered without bound. */
const MAX_LOG_LINE = 8192;
/** Quiet time after a change in a service directory before it is re-read (a package writes several files). */
const CHANGE_SETTLE_MS = 100;

/** What to run for a service: the program, its arguments and argv[0], and whom as. */
interface Command {
  file: string;
  args: string[];
  argv0: string;
  uid?: number;
  gid?: number;
}

/** One .service file as last read. */
interface FileRecord {
  readonly path: string;
  /** Identity and version of the file (device, inode, size, times): re-read when it changes. */
  readonly stamp: string;
  readonly entry: ServiceEntry | undefined;
  /** Read in the current scan: its problems and conflicts have not been reported yet. */
  fresh: boolean;
}

class PendingStart {
  /** Aborted when the start is over: tells waitForOwner to stop. */
  readonly abort = new AbortController();
  readonly promise: Promise<void>;
  child: ChildProcess | undefined;
  timer: NodeJS.Timeout | undefined;
  settled = false;
  private resolveFn!: () => void;
  private rejectFn!: (e: Error) => void;

  constructor(
    readonly name: string,
    readonly exec: string,
    /** The unit systemd is asked to start instead of running exec. */
    readonly unit: string | undefined,
  ) {
    this.promise = new Promise<void>((resolve, reject) => {
      this.resolveFn = resolve;
      this.rejectFn = reject;
    });
  }

  settle(error?: Error): void {
    if (this.settled) return;
    this.settled = true;
    clearTimeout(this.timer);
    this.abort.abort();
    if (error) this.rejectFn(error);
    else this.resolveFn();
  }
}

/** The service files of one bus and the starts in progress; what the driver's activation methods use. */
export class Activation {
  private readonly dirs: ServiceDir[];
  private readonly busAddress: string;
  private readonly busType: 'system' | 'session';
  private readonly timeoutMs: number;
  private readonly maxPending: number;
  private readonly systemd: SystemdLink | undefined;
  private readonly baseEnv: Record<string, string>;
  private readonly updates = new Map<string, string>();
  /** Directory path -> file name -> record. */
  private files = new Map<string, Map<string, FileRecord>>();
  private byName = new Map<string, FileRecord>();
  private readonly pending = new Map<string, PendingStart>();
  private inFlight = 0;
  private closed = false;
  private readonly watchers: fs.FSWatcher[] = [];
  private changeTimer: NodeJS.Timeout | undefined;

  constructor(opts: ActivationOptions) {
    const seen = new Set<string>();
    this.dirs = [];
    for (const d of opts.dirs) {
      const dir = typeof d === 'string' ? { path: d, strictNaming: opts.busType === 'system' } : d;
      const key = path.resolve(dir.path);
      if (seen.has(key)) continue;
      seen.add(key);
      this.dirs.push({ path: key, strictNaming: dir.strictNaming });
    }
    this.busAddress = opts.busAddress;
    this.busType = opts.busType;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.maxPending = opts.maxPending ?? DEFAULT_MAX_PENDING;
    this.systemd = opts.systemd;
    const base: Record<string, string> = {};
    const source = opts.env ?? (opts.busType === 'session' ? process.env : {});
    for (const [k, v] of Object.entries(source)) if (v !== undefined && !DAEMON_ONLY_ENV.includes(k)) base[k] = v;
    this.baseEnv = base;
    this.rescan(true);
  }

  /** Names with a usable service file, sorted (the directories are re-read for changes first). */
  listActivatable(): string[] {
    this.rescan(false);
    return [...this.byName.keys()].sort();
  }

  /**
   * Whether a start of `name` can begin: a service file provides it (a name not known yet
   * makes the directories be re-read), or it is systemd's and the bus waits for systemd.
   */
  isActivatable(name: string): boolean {
    if (this.byName.has(name) || this.waitsForSystemd(name)) return true;
    this.rescan(false);
    return this.byName.has(name);
  }

  /**
   * UpdateActivationEnvironment: variables for services started from now on. Refused on a
   * system bus, as dbus-daemon refuses it there (AccessDenied).
   */
  updateEnvironment(vars: Record<string, string>): void {
    if (this.busType === 'system') throw new ActivationError(ActivationErrorName.ACCESS_DENIED, 'Cannot change activation environment on a system bus.');
    for (const [k, v] of Object.entries(vars)) this.updates.set(k, v);
    if (!this.systemd) return;
    const assignments = Object.entries(vars).map(([k, v]) => `${k}=${v}`);
    try {
      this.systemd.send(driverToSystemd(MessageType.MethodCall, '/org/freedesktop/systemd1', 'org.freedesktop.systemd1.Manager', 'SetEnvironment', 'as', [assignments]), true);
    } catch (e) {
      logger.info(`the activation environment was not passed on to systemd: ${(e as Error).message}`);
    }
  }

  /**
   * systemd's ActivationFailure for `unit`: every start waiting for it fails with the error
   * systemd named (Failed if that is no error name).
   */
  systemdFailure(unit: string, errorName: string, text: string): void {
    logger.info(`Activation via systemd failed for unit '${unit}': ${text}`);
    const name = isValidErrorName(errorName) ? errorName : ActivationErrorName.FAILED;
    for (const p of [...this.pending.values()]) if (p.unit === unit) this.end(p, new ActivationError(name, text));
  }

  /** Re-reads every service file (ReloadConfig). */
  reload(): void {
    this.rescan(true);
  }

  /**
   * Starts the service for `name` and resolves once `waitForOwner` says the name has an owner.
   * A start of a name already being started joins it (the first caller's waitForOwner is the
   * one used). Rejects with an ActivationError.
   */
  start(name: string, waitForOwner: WaitForOwner): Promise<void> {
    if (this.closed) return Promise.reject(new ActivationError(ActivationErrorName.FAILED, `cannot activate ${name}: the bus is shutting down`));
    if (this.inFlight >= this.maxPending) {
      return Promise.reject(new ActivationError(ActivationErrorName.LIMITS_EXCEEDED,
        `The maximum number of pending activations has been reached, activation of ${name} failed (max_pending_service_starts=${this.maxPending})`));
    }
    let pending = this.pending.get(name);
    if (!pending) {
      const systemdItself = this.waitsForSystemd(name);
      const entry = systemdItself ? undefined : this.find(name);
      if (!entry && !systemdItself) return Promise.reject(new ActivationError(ActivationErrorName.SERVICE_UNKNOWN, `The name ${name} was not provided by any .service files`));
      pending = new PendingStart(name, entry?.exec ?? '', this.systemd ? entry?.systemdService : undefined);
      this.pending.set(name, pending);
      this.launch(pending, entry, waitForOwner);
    }
    this.inFlight++;
    const done = (): void => {
      this.inFlight--;
    };
    pending.promise.then(done, done);
    return pending.promise;
  }

  /**
   * Calls `onChange` when files come, go or change in the service directories that exist,
   * as dbus-daemon re-reads them on inotify's word; a burst of changes makes one call.
   */
  watchDirs(onChange: () => void): void {
    for (const dir of this.dirs) {
      if (!fs.existsSync(dir.path)) continue;
      try {
        const w = fs.watch(dir.path, { persistent: false }, () => {
          clearTimeout(this.changeTimer);
          this.changeTimer = setTimeout(onChange, CHANGE_SETTLE_MS);
          this.changeTimer.unref();
        });
        w.on('error', (e) => logger.verbose(`service directory ${dir.path} is no longer watched: ${e.message}`));
        this.watchers.push(w);
      } catch (e) {
        logger.verbose(`service directory ${dir.path} is not watched for changes: ${(e as Error).message}`);
      }
    }
  }

  /** Abandons pending starts (they reject); started services keep running. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.changeTimer);
    for (const w of this.watchers.splice(0)) w.close();
    for (const p of [...this.pending.values()]) {
      this.end(p, new ActivationError(ActivationErrorName.FAILED, `activation of ${p.name} abandoned: the bus is shutting down`));
    }
  }

  // --- catalogue -------------------------------------------------------------------------

  /** systemd's own name needs no file with systemd activation: systemd connects when it is up. */
  private waitsForSystemd(name: string): boolean {
    return this.systemd !== undefined && name === SYSTEMD_NAME;
  }

  /** The entry for `name`, checked against its file as dbus-daemon does before a start. */
  private find(name: string): ServiceEntry | undefined {
    const known = this.byName.get(name);
    if (known && stampOf(known.path) === known.stamp) return known.entry;
    this.rescan(false);
    return this.byName.get(name)?.entry;
  }

  /**
   * Reads the directories: files whose stamp is unchanged keep their parse (unless `force`),
   * new or changed ones are parsed and their problems logged once.
   */
  private rescan(force: boolean): void {
    const files = new Map<string, Map<string, FileRecord>>();
    const byName = new Map<string, FileRecord>();
    for (const dir of this.dirs) {
      const before = force ? undefined : this.files.get(dir.path);
      const records = new Map<string, FileRecord>();
      for (const file of serviceFilesIn(dir.path)) {
        const full = path.join(dir.path, file);
        const stamp = stampOf(full);
        if (stamp === undefined) continue;
        let rec = before?.get(file);
        if (!rec || rec.stamp !== stamp) rec = loadServiceFile(dir, file, full, stamp);
        records.set(file, rec);
        const entry = rec.entry;
        if (!entry) continue;
        const winner = byName.get(entry.name);
        if (!winner) byName.set(entry.name, rec);
        else if (rec.fresh || winner.fresh) logger.info(`service file ${full}: ${entry.name} is already provided by ${winner.path}; ignored`);
      }
      files.set(dir.path, records);
    }
    for (const records of files.values()) for (const rec of records.values()) rec.fresh = false;
    this.files = files;
    this.byName = byName;
  }

  // --- starting --------------------------------------------------------------------------

  /** `entry` undefined: the start of systemd itself, which only waits. */
  private launch(p: PendingStart, entry: ServiceEntry | undefined, waitForOwner: WaitForOwner): void {
    const name = p.name;
    let spec: Command | undefined;
    try {
      if (entry && p.unit === undefined) spec = this.commandFor(entry);
    } catch (e) {
      this.fail(p, e as Error);
      return;
    }

    p.timer = setTimeout(() => {
      if (p.child?.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
      const msg = `Failed to activate service '${name}': timed out (service_start_timeout=${this.timeoutMs}ms)`;
      logger.warn(msg);
      this.end(p, new ActivationError(ActivationErrorName.TIMED_OUT, msg));
    }, this.timeoutMs);
    p.timer.unref();

    // Watching starts before the child runs, so that an owner appearing at once is not missed.
    ownerAppears(waitForOwner, name, p.abort.signal).then(
      () => {
        if (p.settled) return;
        logger.info(`Successfully activated service '${name}'`);
        this.end(p);
      },
      (e: unknown) => {
        if (p.settled) return;
        this.end(p, e instanceof ActivationError ? e : new ActivationError(ActivationErrorName.FAILED, `waiting for ${name} to appear failed: ${(e as Error)?.message ?? String(e)}`));
      },
    );

    if (p.unit !== undefined) {
      this.handOff(p, p.unit, waitForOwner);
      return;
    }
    if (!spec) {
      logger.info(`waiting for systemd to connect: ${name} was asked for`);
      return;
    }
    this.spawn(p, spec);
  }

  /** Asks systemd to start `unit`, once systemd is on the bus (it may be starting up still). */
  private handOff(p: PendingStart, unit: string, waitForOwner: WaitForOwner): void {
    ownerAppears(waitForOwner, SYSTEMD_NAME, p.abort.signal).then(
      () => {
        if (p.settled) return;
        try {
          this.systemd!.send(driverToSystemd(MessageType.Signal, DRIVER_PATH, ACTIVATOR_INTERFACE, 'ActivationRequest', 's', [unit]), false);
        } catch (e) {
          const error = e instanceof ActivationError ? e : new ActivationError(ActivationErrorName.FAILED, `cannot ask systemd for ${unit}: ${(e as Error).message}`);
          logger.info(`Failed to activate via systemd: service name='${p.name}' unit='${unit}': ${error.message}`);
          this.end(p, error);
          return;
        }
        logger.info(`Activating via systemd: service name='${p.name}' unit='${unit}'`);
      },
      (e: unknown) => {
        if (p.settled) return;
        this.end(p, new ActivationError(ActivationErrorName.FAILED, `waiting for systemd to start ${unit} failed: ${(e as Error)?.message ?? String(e)}`));
      },
    );
  }

  private spawn(p: PendingStart, spec: Command): void {
    const name = p.name;
    const env = this.childEnv();
    let child: ChildProcess;
    try {
      const opts: SpawnOptions = { argv0: spec.argv0, env, stdio: ['ignore', 'pipe', 'pipe'] };
      if (spec.uid !== undefined) opts.uid = spec.uid;
      if (spec.gid !== undefined) opts.gid = spec.gid;
      child = spawn(spec.file, spec.args, opts);
    } catch (e) {
      this.fail(p, spawnError(name, spec.argv0, e as NodeJS.ErrnoException));
      return;
    }
    p.child = child;
    child.unref();
    if (child.pid !== undefined) logger.info(`Activating service name='${name}' (pid ${child.pid})`);
    logLines(child.stdout, name, child.pid);
    logLines(child.stderr, name, child.pid);
    child.on('error', (e: NodeJS.ErrnoException) => this.fail(p, spawnError(name, spec.argv0, e)));
    child.on('exit', (code, signal) => {
      if (p.settled) {
        if (code !== 0) logger.info(`service ${name} (pid ${child.pid}) ${code !== null ? `exited with status ${code}` : `was killed by ${signal}`}`);
        return;
      }
      // Status 0 before the name appeared: the service may have forked into the background.
      if (code === 0) return;
      if (code !== null) this.fail(p, new ActivationError(ActivationErrorName.CHILD_EXITED, `Process ${name} exited with status ${code}`));
      else {
        const number = signal ? osConstants.signals[signal] : undefined;
        this.fail(p, new ActivationError(ActivationErrorName.CHILD_SIGNALED, `Process ${name} received signal ${number ?? '?'} (${signal})`));
      }
    });
  }

  /** Ends `p`, and every other pending start with the same Exec line, with `error`. */
  private fail(p: PendingStart, error: Error): void {
    if (p.settled) return;
    logger.info(`Activated service '${p.name}' failed: ${error.message}`);
    this.end(p, error);
    if (p.exec === '') return;
    for (const other of [...this.pending.values()]) if (other.exec === p.exec) this.end(other, error);
  }

  /** Settles `p`; a later start of the name starts afresh. */
  private end(p: PendingStart, error?: Error): void {
    if (this.pending.get(p.name) === p) this.pending.delete(p.name);
    p.settle(error);
  }

  /** What to spawn for `entry`, or an ActivationError when it cannot be started at all. */
  private commandFor(entry: ServiceEntry): Command {
    const name = entry.name;
    let words: string[];
    try {
      words = splitCommandLine(entry.exec);
    } catch (e) {
      throw new ActivationError(ActivationErrorName.INVALID_ARGS, `The Exec line of ${name} cannot be split into words: ${(e as Error).message}`);
    }
    // An empty Exec runs nothing, as dbus-daemon fails to run it.
    if (words.length === 0) throw new ActivationError(ActivationErrorName.EXEC_FAILED, `Failed to execute program ${name}: its Exec line is empty`);
    const [argv0, ...args] = words as [string, ...string[]];
    // dbus-daemon execs without a PATH search: a bare name is relative to the working directory.
    const file = argv0.includes('/') ? argv0 : `./${argv0}`;
    if (this.busType !== 'system') return { file, args, argv0 };
    if (entry.user === undefined) {
      throw new ActivationError(ActivationErrorName.FILE_INVALID, `Cannot do system-bus activation of ${name} with no user: its service file has no User key`);
    }
    const pw = lookupUser(entry.user);
    if (!pw) throw new ActivationError(ActivationErrorName.SETUP_FAILED, `cannot find user '${entry.user}' to run ${name} as`);
    const euid = process.geteuid?.() ?? 0;
    if (euid !== 0) {
      if (pw.uid !== euid) logger.info(`starting ${name} as uid ${euid}, not as User=${entry.user}: the daemon is not running as root`);
      return { file, args, argv0 };
    }
    if (pw.uid === 0 && pw.gid === 0) return { file, args, argv0 };
    const setpriv = setprivPath();
    if (!setpriv) {
      warnNoSetpriv();
      return { file, args, argv0, uid: pw.uid, gid: pw.gid };
    }
    // setpriv execs the service in its place (no extra process); its own exec failure would
    // look like an exit status, so the program is checked here first.
    const problem = unexecutable(file);
    if (problem) throw new ActivationError(ActivationErrorName.EXEC_FAILED, `Failed to execute program ${argv0} for ${name}: ${problem}`);
    return { file: setpriv, args: [`--reuid=${pw.uid}`, `--regid=${pw.gid}`, '--init-groups', '--', file, ...args], argv0: 'setpriv' };
  }

  /** Built from entries: a variable a client named "__proto__" is a variable like any other. */
  private childEnv(): Record<string, string> {
    const env = new Map(Object.entries(this.baseEnv));
    for (const [k, v] of this.updates) env.set(k, v);
    env.set('DBUS_STARTER_ADDRESS', this.busAddress);
    env.set('DBUS_STARTER_BUS_TYPE', this.busType);
    env.set(this.busType === 'system' ? 'DBUS_SYSTEM_BUS_ADDRESS' : 'DBUS_SESSION_BUS_ADDRESS', this.busAddress);
    return Object.fromEntries(env);
  }
}

function serviceFilesIn(dir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTDIR') logger.debug(`service directory ${dir} cannot be read: ${code}`);
    return [];
  }
  // Directory order is arbitrary; sorting makes "first file wins" within a directory repeatable.
  return names.filter((n) => n.endsWith('.service')).sort();
}

function stampOf(file: string): string | undefined {
  try {
    const s = fs.statSync(file, { bigint: true });
    return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
  } catch {
    return undefined;
  }
}

function loadServiceFile(dir: ServiceDir, file: string, full: string, stamp: string): FileRecord {
  let entry: ServiceEntry | undefined;
  try {
    entry = parseServiceFile(fs.readFileSync(full));
    if (dir.strictNaming && file !== `${entry.name}.service`) {
      throw new ServiceFileError(`provides ${entry.name}, so it must be named ${entry.name}.service in this directory`);
    }
  } catch (e) {
    const problem = e instanceof ServiceFileError ? e.message : `cannot be read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
    logger.warn(`service file ${full}: ${problem}; skipped`);
    entry = undefined;
  }
  return { path: full, stamp, entry, fresh: true };
}

const ERRNO_TEXT: Record<string, string> = {
  ENOENT: 'No such file or directory',
  EACCES: 'Permission denied',
  ENOEXEC: 'Exec format error',
  ENOTDIR: 'Not a directory',
  ELOOP: 'Too many levels of symbolic links',
  E2BIG: 'Argument list too long',
  EPERM: 'Operation not permitted',
};

function spawnError(name: string, argv0: string, e: NodeJS.ErrnoException): ActivationError {
  const code = e.code ?? '';
  if (code === 'EAGAIN' || code === 'ENOMEM') return new ActivationError(ActivationErrorName.FORK_FAILED, `Failed to fork a new process for ${name}: ${code}`);
  return new ActivationError(ActivationErrorName.EXEC_FAILED, `Failed to execute program ${argv0} for ${name}: ${ERRNO_TEXT[code] ?? (code || e.message)}`);
}

/** Why execve of `file` would fail, as far as a stat can tell; undefined if it looks runnable. */
function unexecutable(file: string): string | undefined {
  try {
    if (!fs.statSync(file).isFile()) return ERRNO_TEXT['EACCES'];
    fs.accessSync(file, fs.constants.X_OK);
    return undefined;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? '';
    return ERRNO_TEXT[code] ?? code;
  }
}

/** Logs each line of a child's output at info, as `name[pid]: line`. */
function logLines(stream: Readable | null, name: string, pid: number | undefined): void {
  if (!stream) return;
  // The pipes must not keep the daemon alive: services outlive it.
  (stream as Readable & { unref?: () => void }).unref?.();
  stream.setEncoding('utf8');
  const prefix = `${name}[${pid ?? '?'}]: `;
  const emit = (line: string): void => {
    logger.info(prefix + (line.endsWith('\r') ? line.slice(0, -1) : line));
  };
  let partial = '';
  stream.on('data', (chunk: string) => {
    const text = partial + chunk;
    let start = 0;
    for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n', start)) {
      emit(text.slice(start, nl));
      start = nl + 1;
    }
    partial = text.slice(start);
    if (partial.length > MAX_LOG_LINE) {
      emit(partial);
      partial = '';
    }
  });
  stream.on('end', () => {
    if (partial !== '') emit(partial);
  });
  stream.on('error', () => undefined);
}

// --- users -----------------------------------------------------------------------------

interface PasswdRecord {
  uid: number;
  gid: number;
}

let getpwnam: ((name: string) => unknown) | undefined;
let passwdType: koffi.TypeObject | undefined;

/**
 * getpwnam(3), so that every NSS source counts as the launch helper's lookup does. (A
 * candidate for src/os/libc.ts; bound lazily because only a root system bus needs it.)
 */
function lookupUser(user: string): PasswdRecord | undefined {
  if (!getpwnam) {
    passwdType = koffi.struct('activation_passwd', {
      pw_name: 'char *', pw_passwd: 'char *', pw_uid: 'uint32_t', pw_gid: 'uint32_t', pw_gecos: 'char *', pw_dir: 'char *', pw_shell: 'char *',
    });
    getpwnam = koffi.load(null).func('void *getpwnam(const char *name)') as (name: string) => unknown;
  }
  const p = getpwnam(user);
  if (!p) return undefined;
  const pw = koffi.decode(p, passwdType!) as { pw_uid: number; pw_gid: number };
  return { uid: pw.pw_uid, gid: pw.pw_gid };
}

let setprivFound: string | null | undefined;
let setprivWarned = false;

/**
 * util-linux setpriv: Node's spawn sets uid and gid but clears the supplementary groups,
 * and initgroups() is what the launch helper does; setpriv --init-groups does it.
 */
function setprivPath(): string | null {
  if (setprivFound === undefined) {
    setprivFound = null;
    for (const candidate of ['/usr/bin/setpriv', '/bin/setpriv']) {
      try {
        fs.accessSync(candidate, fs.constants.X_OK);
        setprivFound = candidate;
        break;
      } catch {
        // try the next one
      }
    }
  }
  return setprivFound;
}

function warnNoSetpriv(): void {
  if (setprivWarned) return;
  setprivWarned = true;
  logger.warn('setpriv (util-linux) not found: services started with User= get that user\'s uid and primary group but no supplementary groups');
}

// --- waiting for a name on the bus -----------------------------------------------------

/** Cookies of waitForName's matches: a range of their own, apart from the ones others add. */
let nextCookie = 0x6163_7476n << 32n;

/** The waits on one connection; the connection's message handler is theirs while any is pending. */
class NameWaits {
  private readonly byName = new Map<string, Set<() => void>>();
  private count = 0;

  constructor(private readonly conn: LocalConnection) {}

  add(name: string, onOwner: () => void): void {
    let set = this.byName.get(name);
    if (!set) this.byName.set(name, (set = new Set()));
    set.add(onOwner);
    if (this.count++ === 0) this.conn.onMessage(this.receive);
  }

  remove(name: string, onOwner: () => void): void {
    const set = this.byName.get(name);
    if (!set?.delete(onOwner)) return;
    if (set.size === 0) this.byName.delete(name);
    if (--this.count === 0 && this.conn.connected) this.conn.onMessage(undefined);
  }

  private readonly receive = (r: Received): void => {
    if (r.kind === 'message') {
      // Not meant for this connection; its files are ours to close.
      closeMessageFiles(r);
      return;
    }
    if (r.kind !== 'name-add' && r.kind !== 'name-change') return;
    if (r.newId === 0n || (r.newFlags & NameFlags.ACTIVATOR) !== 0n) return;
    const set = this.byName.get(r.name);
    if (set) for (const fn of [...set]) fn();
  };
}

const waitsOf = new WeakMap<LocalConnection, NameWaits>();

/** Whether a real owner (not a kdbus activator) holds `name` now. */
function hasOwner(conn: LocalConnection, name: string): boolean {
  try {
    return (conn.connInfo(name, 0n).flags & HelloFlags.ACTIVATOR) === 0n;
  } catch (e) {
    if (e instanceof KdbusError && e.errno === Errno.ESRCH) return false;
    throw e;
  }
}

/**
 * Resolves when `name` has an owner on the bus (an activator holding it does not count),
 * at once if it has one already; rejects with `signal.reason` when aborted. Works through
 * name-add and name-change matches on `conn`, which must be a connection kept for watching:
 * its message handler belongs to these waits while any is pending.
 */
export function waitForName(conn: LocalConnection, name: string, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<void>((resolve, reject) => {
    let waits = waitsOf.get(conn);
    if (!waits) waitsOf.set(conn, (waits = new NameWaits(conn)));
    const cookie = nextCookie++;
    let done = false;
    const finish = (error?: unknown): void => {
      if (done) return;
      done = true;
      signal.removeEventListener('abort', onAbort);
      waits!.remove(name, onOwner);
      if (conn.connected) {
        try {
          conn.removeMatch(cookie);
        } catch (e) {
          if (!(e instanceof KdbusError)) throw e;
        }
      }
      if (error === undefined) resolve();
      else reject(error);
    };
    const onOwner = (): void => finish();
    const onAbort = (): void => finish(signal.reason ?? new Error('aborted'));
    try {
      // Matches first, then the look: an owner arriving in between is seen by one or the other.
      conn.addMatch(cookie, [{ kind: 'name-add', name }]);
      conn.addMatch(cookie, [{ kind: 'name-change', name }]);
      waits.add(name, onOwner);
      signal.addEventListener('abort', onAbort, { once: true });
      if (hasOwner(conn, name)) finish();
    } catch (e) {
      finish(e);
    }
  });
}
