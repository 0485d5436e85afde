/**
 * kdbus-cuse: the command line. Exit codes: 0 success, 1 runtime failure, 2 usage or
 * configuration error.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ConfigError, defaults, loadFile, validate, type Config, type TransportMode } from '../config/config';
import { Daemon } from '../daemon/daemon';
import { ServiceLifecycle } from '../daemon/lifecycle';
import { StartupError } from '../daemon/startup-error';
import { logger, setLogLevel } from '../log/logger';
import { openFileLimit, raiseFileLimit } from '../os/libc';
import { SdNotifier } from '../os/sd-notify';
import { parseArgs, UsageError } from './args';
import { monitor, status } from './control-client';
import { selectTransports } from '../daemon/select-transports';

const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string };

const HELP: Record<string, string> = {
  main: `Usage: kdbus-cuse <command> [options]

The kdbus IPC served from userland.

Commands:
  serve       run the daemon
  status      show the running daemon's buses, endpoints and connections
  monitor     show the messages passing on a bus as they pass
  shim-path   print the path of the client preload library

Options:
  --help      show help (also: kdbus-cuse <command> --help)
  --version   print the version
`,
  serve: `Usage: kdbus-cuse serve [options]

Runs the daemon: creates the kdbus control node and the configured buses, and serves
them on every transport the machine allows.

Options:
  --config FILE          JSON configuration file (keys as below, camelCase)
  --transport MODE       auto (default), cuse or socket
  --kdbus-root DIR       where the kdbus tree appears (default /dev/kdbus for root,
                         $XDG_RUNTIME_DIR/kdbus-cuse/kdbus otherwise)
  --bus NAME             bus created at start, e.g. 0-system (repeatable)
  --socket PATH          the socket transport's listening socket
  --listen ADDRESS       D-Bus address where legacy (dbus1) clients reach the first
                         bus (repeatable; default unix:path=<socket's dir>/bus_socket;
                         "none": no legacy endpoint; "systemd:": the sockets of the
                         .socket unit that started the daemon)
  --upstream ADDRESS     join the first bus to an existing D-Bus bus (dbus-daemon,
                         dbus-broker): a unix: address, "system" or "session"
  --log-level LEVEL      error, warn, info (default), verbose or debug
  --control PATH         the control socket of status and monitor (default
                         control.sock beside the transport socket)
  --control-group GROUP  a group that may use the control socket besides root
  --service-dir DIR      a directory of D-Bus service files for activation
                         (repeatable; default dbus-daemon's directories)
  --systemd-activation   services whose files name a SystemdService are started
                         by systemd (ActivationRequest), as dbus-daemon does
  --check-config         validate the configuration and exit (0: valid, 2: the error)

Signals: SIGHUP reloads the configuration (log level, new buses; other changes
wait for a restart), SIGTERM and SIGINT stop the daemon and remove its nodes.
`,
  'shim-path': `Usage: kdbus-cuse shim-path [--libc glibc|musl]

Prints the absolute path of the built preload library for the given C library
(default: the one this system uses).
`,
};

const SERVE_FLAGS = {
  config: { value: true },
  transport: { value: true },
  'kdbus-root': { value: true },
  bus: { value: true, repeat: true },
  socket: { value: true },
  listen: { value: true, repeat: true },
  upstream: { value: true },
  'log-level': { value: true },
  control: { value: true },
  'control-group': { value: true },
  'service-dir': { value: true, repeat: true },
  'systemd-activation': { value: false },
  'check-config': { value: false },
  help: { value: false },
};

export function serveConfig(argv: readonly string[]): Config | undefined {
  const { flags, positional } = parseArgs(argv, SERVE_FLAGS);
  if (flags.has('help')) return undefined;
  if (positional.length > 0) throw new UsageError(`serve takes no arguments, got "${positional[0]}"`);
  const file = flags.get('config')?.[0];
  const c = file ? loadFile(file) : defaults();
  const one = (k: string): string | undefined => flags.get(k)?.[0];
  if (one('transport')) c.transport = one('transport') as TransportMode;
  if (one('kdbus-root')) c.kdbusRoot = path.resolve(one('kdbus-root')!);
  if (flags.has('bus')) c.buses = flags.get('bus')!;
  if (one('socket')) c.socket = path.resolve(one('socket')!);
  if (flags.has('listen')) c.listen = flags.get('listen')!.filter((a) => a !== 'none');
  if (one('upstream')) c.upstream = one('upstream');
  if (one('log-level')) c.logLevel = one('log-level')!;
  if (one('control')) c.control = path.resolve(one('control')!);
  if (one('control-group')) c.controlGroup = one('control-group');
  if (flags.has('service-dir')) c.serviceDirs = flags.get('service-dir')!.map((d) => path.resolve(d));
  if (flags.has('systemd-activation')) c.systemdActivation = true;
  return validate(c, file ? `${file} and command line` : 'command line');
}

/** The descriptor limit dbus-daemon raises itself to where it may. */
const DAEMON_FILE_LIMIT = 65536;

/**
 * A kdbus file costs the daemon descriptors that it cost the client before, and each user's
 * clients get a share of them (held-budget.ts): an inherited 1024 or 4096 would leave a user
 * few connections, so the daemon raises its limit as dbus-daemon does.
 */
function raiseDescriptorLimit(): void {
  const before = openFileLimit();
  const after = raiseFileLimit(DAEMON_FILE_LIMIT);
  if (after > before) logger.verbose(`descriptor limit raised from ${before} to ${after}`);
  if (after < DAEMON_FILE_LIMIT) {
    logger.verbose(`descriptor limit ${after} (not ${DAEMON_FILE_LIMIT}: no CAP_SYS_RESOURCE); each user's clients may take ${Math.floor(after / 16)} of them`);
  }
}

async function serve(argv: readonly string[]): Promise<number> {
  const config = serveConfig(argv);
  if (!config) {
    process.stdout.write(HELP['serve']!);
    return 0;
  }
  if (parseArgs(argv, SERVE_FLAGS).flags.has('check-config')) {
    process.stdout.write(`configuration valid: transport ${config.transport}, buses ${config.buses.join(', ')}\n`);
    return 0;
  }
  setLogLevel(config.logLevel);
  raiseDescriptorLimit();
  const daemon = new Daemon(config, pkg.version);
  const lifecycle = new ServiceLifecycle(daemon, { notifier: SdNotifier.fromEnvironment(), readConfig: () => serveConfig(argv)! });
  for (const t of await selectTransports(config)) daemon.addTransport(t);
  await daemon.start();
  logger.info(`kdbus-cuse ${pkg.version} ready: buses ${config.buses.join(', ')}`);
  await lifecycle.run();
  await daemon.stop();
  return 0;
}

function shimPath(argv: readonly string[]): number {
  const { flags, positional } = parseArgs(argv, { libc: { value: true }, help: { value: false } });
  if (flags.has('help')) {
    process.stdout.write(HELP['shim-path']!);
    return 0;
  }
  if (positional.length > 0) throw new UsageError(`shim-path takes no arguments, got "${positional[0]}"`);
  const libc = flags.get('libc')?.[0] ?? (fs.existsSync('/lib/ld-musl-x86_64.so.1') && !fs.existsSync('/lib64/ld-linux-x86-64.so.2') ? 'musl' : 'glibc');
  if (libc !== 'glibc' && libc !== 'musl') throw new UsageError(`--libc must be glibc or musl, not "${libc}"`);
  const lib = path.resolve(__dirname, '..', '..', '..', 'shim', 'build', libc, 'libkdbus-cuse-shim.so');
  if (!fs.existsSync(lib)) {
    process.stderr.write(`kdbus-cuse: the ${libc} shim is not built (${lib} is missing); run "npm run setup"\n`);
    return 1;
  }
  process.stdout.write(`${lib}\n`);
  return 0;
}

export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case undefined:
      case '--help':
      case 'help':
        process.stdout.write(HELP['main']!);
        return command === undefined ? 2 : 0;
      case '--version':
        process.stdout.write(`${pkg.version}\n`);
        return 0;
      case 'serve':
        return await serve(rest);
      case 'shim-path':
        return shimPath(rest);
      case 'status':
        return await status(rest);
      case 'monitor':
        return await monitor(rest);
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (e) {
    if (e instanceof UsageError || e instanceof ConfigError) {
      process.stderr.write(`kdbus-cuse: ${e.message}\n${e instanceof UsageError ? 'Try "kdbus-cuse --help".\n' : ''}`);
      return 2;
    }
    if (e instanceof StartupError) {
      logger.error(`cannot start: ${e.message}`);
      return 1;
    }
    logger.error(`fatal: ${(e as Error).stack ?? String(e)}`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => process.exit(code));
}
