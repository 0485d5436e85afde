/**
 * kdbus-cuse: the command line. Exit codes: 0 success, 1 runtime failure, 2 usage or
 * configuration error.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ConfigError, defaults, loadFile, validate, type Config, type TransportMode } from '../config/config';
import { Daemon } from '../daemon/daemon';
import { logger, setLogLevel } from '../log/logger';
import { parseArgs, UsageError } from './args';
import { selectTransports } from '../daemon/select-transports';

const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string };

const HELP: Record<string, string> = {
  main: `Usage: kdbus-cuse <command> [options]

The kdbus IPC served from userland.

Commands:
  serve       run the daemon
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
                         "none": no legacy endpoint)
  --upstream ADDRESS     bridge the first bus to an existing bus
  --log-level LEVEL      error, warn, info (default), verbose or debug
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
  return validate(c, file ? `${file} and command line` : 'command line');
}

async function serve(argv: readonly string[]): Promise<number> {
  const config = serveConfig(argv);
  if (!config) {
    process.stdout.write(HELP['serve']!);
    return 0;
  }
  setLogLevel(config.logLevel);
  const daemon = new Daemon(config);
  for (const t of await selectTransports(config)) daemon.addTransport(t);
  await daemon.start();
  logger.info(`kdbus-cuse ${pkg.version} ready: buses ${config.buses.join(', ')}`);
  await new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      logger.info(`${sig}: shutting down`);
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
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
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (e) {
    if (e instanceof UsageError || e instanceof ConfigError) {
      process.stderr.write(`kdbus-cuse: ${e.message}\n${e instanceof UsageError ? 'Try "kdbus-cuse --help".\n' : ''}`);
      return 2;
    }
    logger.error(`fatal: ${(e as Error).stack ?? String(e)}`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => process.exit(code));
}
