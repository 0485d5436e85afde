/**
 * The upstream bridge (issue 6) as tests and benchmarks drive it: an upstream dbus-daemon or
 * dbus-broker with a policy the tests need, and a kdbus-cuse daemon whose bus joins it
 * (`serve --upstream`), reached by kdbus clients through the preload shim.
 */
import fs from 'node:fs';
import path from 'node:path';
import { PROJECT, Proc, shimPath, startBus, type LegacyBus, type Libc } from './legacy-bus';

export type UpstreamKind = 'dbus-daemon' | 'dbus-broker';
export const UPSTREAM_KINDS: readonly UpstreamKind[] = ['dbus-daemon', 'dbus-broker'];

/** What the bridge prints once its bus has joined the upstream bus. */
export const UPSTREAM_CONNECTED = /upstream .* connected/i;

export interface Denial {
  /** A user name or uid of the upstream bus's policy. */
  user: string;
  sendDestination: string;
}

/**
 * session.conf's policy (send, receive and own anything) opened to every user, since a
 * bridged client authenticates upstream as its own uid and session.conf admits only the
 * bus's owner; then a user-context deny rule per denial, which outranks the default context.
 */
export function upstreamConfig(denials: readonly Denial[] = [], serviceDir?: string): string {
  const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;');
  return [
    '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"',
    ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">',
    '<busconfig>',
    '  <type>session</type>',
    // dbus-daemon wants a listen element; --address (and dbus-broker's socket) take its place.
    '  <listen>unix:tmpdir=/tmp</listen>',
    '  <auth>EXTERNAL</auth>',
    ...(serviceDir === undefined ? [] : [`  <servicedir>${esc(serviceDir)}</servicedir>`]),
    '  <policy context="default">',
    '    <allow user="*"/>',
    '    <allow send_destination="*" eavesdrop="true"/>',
    '    <allow eavesdrop="true"/>',
    '    <allow own="*"/>',
    '  </policy>',
    ...denials.map((d) => `  <policy user="${esc(d.user)}">\n    <deny send_destination="${esc(d.sendDestination)}"/>\n  </policy>`),
    '</busconfig>',
    '',
  ].join('\n');
}

export interface UpstreamOptions {
  denials?: readonly Denial[];
  /** A directory of D-Bus service files to activate from (dbus-daemon; dbus-broker activates through systemd only). */
  serviceDir?: string;
}

/**
 * An upstream bus under dir, with upstreamConfig() as its configuration, reachable by every
 * user: dir and the socket are opened up (dbus-daemon makes its socket 0777 itself; the
 * broker's comes from systemd-socket-activate with the umask's mode). Starting it again
 * with the same dir puts it on the same socket path.
 */
export async function startUpstream(kind: UpstreamKind, dir: string, opts: UpstreamOptions = {}): Promise<LegacyBus> {
  fs.mkdirSync(dir, { recursive: true });
  fs.chmodSync(dir, 0o755);
  const configFile = path.join(dir, 'bus.conf');
  fs.writeFileSync(configFile, upstreamConfig(opts.denials, opts.serviceDir));
  const bus = await startBus(kind, dir, { configFile });
  fs.chmodSync(bus.socketPath, 0o777);
  return bus;
}


export interface Bridge {
  daemon: Proc;
  busName: string;
  /** DIR/kdbus/<bus>/bus, the node kdbus clients open. */
  busNode: string;
  socket: string;
  root: string;
  /** The environment of a kdbus client: the shim preloaded, pointed at this daemon. */
  clientEnv(libc?: Libc): NodeJS.ProcessEnv;
  /** The daemon's whole output (stdout and stderr). */
  log(): string;
  alive(): boolean;
}

export interface BridgeOptions {
  /** Defaults to <uid>-bridge. */
  busName?: string;
  /** info (the default) or more verbose: readiness is read from an info line. */
  logLevel?: string;
  /** NODE_OPTIONS of the daemon alone. */
  nodeOptions?: string;
  readyMs?: number;
}

/**
 * `kdbus-cuse serve --upstream ADDRESS` on the socket transport under dir (opened to every
 * user, so kdbus clients of another uid reach it), with no legacy endpoint; ready once its
 * socket and bus node exist and it has logged that the upstream connection is up.
 */
export async function startBridge(dir: string, upstream: string, opts: BridgeOptions = {}): Promise<Bridge> {
  fs.mkdirSync(dir, { recursive: true });
  fs.chmodSync(dir, 0o755);
  const busName = opts.busName ?? `${process.getuid!()}-bridge`;
  const root = path.join(dir, 'kdbus');
  const socket = path.join(dir, 'kdbus.sock');
  const busNode = path.join(root, busName, 'bus');
  const env = opts.nodeOptions === undefined ? process.env : { ...process.env, NODE_OPTIONS: opts.nodeOptions };
  const daemon = new Proc('kdbus-cuse --upstream', process.execPath, [
    path.join(PROJECT, 'bin', 'kdbus-cuse'), 'serve', '--transport', 'socket', '--socket', socket,
    '--kdbus-root', root, '--bus', busName, '--upstream', upstream, '--listen', 'none',
    ...(opts.logLevel ? ['--log-level', opts.logLevel] : []),
  ], env);
  const log = (): string => daemon.stdout + daemon.stderr;
  try {
    await daemon.waitFor(`its socket, its bus node and a log line matching ${UPSTREAM_CONNECTED}`,
      () => fs.existsSync(socket) && fs.existsSync(busNode) && UPSTREAM_CONNECTED.test(log()), opts.readyMs ?? 20_000);
  } catch (e) {
    await daemon.stop();
    throw e;
  }
  return {
    daemon,
    busName,
    busNode,
    socket,
    root,
    clientEnv: (libc: Libc = 'glibc') => ({ ...process.env, LD_PRELOAD: shimPath(libc), KDBUS_CUSE_ROOT: root, KDBUS_CUSE_SOCKET: socket }),
    log,
    alive: () => daemon.exited === undefined,
  };
}
