/**
 * The service manager's notification protocol (sd_notify) without libsystemd: one datagram
 * of newline-separated KEY=VALUE assignments to the unix socket named by NOTIFY_SOCKET.
 * libsystemd is not linked because the daemon must run on musl systems without systemd,
 * and the protocol is small and declared stable by systemd.
 *
 * NOTIFY_SOCKET is a path ("/run/systemd/notify") or an abstract name ("@name"; the '@'
 * stands for the leading NUL byte). Other forms (vsock:, from systemd 254 for VMs) are
 * not used by a service manager starting this daemon on the same machine and are refused.
 */
import os from 'node:os';
import * as koffi from 'koffi';
import { logger } from '../log/logger';
import { AF_UNIX, closeFd, SOCK_CLOEXEC, SyscallError } from './unix-socket';

const libc = koffi.load(null);
const socketFn = libc.func('int socket(int domain, int type, int protocol)') as (d: number, t: number, p: number) => number;
const sendtoFn = libc.func('intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)') as (
  fd: number,
  buf: Buffer,
  len: number,
  flags: number,
  addr: Buffer,
  addrlen: number,
) => number;

const SOCK_DGRAM = 2;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
/** sun_path's size in struct sockaddr_un. */
const SUN_PATH = 108;

export class NotifySocketError extends Error {
  constructor(value: string, problem: string) {
    super(`NOTIFY_SOCKET="${value}": ${problem}`);
    this.name = 'NotifySocketError';
  }
}

/** struct sockaddr_un for a NOTIFY_SOCKET value, and the length to pass with it. */
export function notifyAddress(value: string): { addr: Buffer; len: number } {
  let name: Buffer;
  if (value.startsWith('/')) name = Buffer.from(value, 'utf8');
  else if (value.startsWith('@') && value.length > 1) name = Buffer.concat([Buffer.from([0]), Buffer.from(value.slice(1), 'utf8')]);
  else throw new NotifySocketError(value, 'not an absolute path or an @abstract name');
  if (name.length >= SUN_PATH) throw new NotifySocketError(value, `too long for a unix socket address (${name.length} bytes, at most ${SUN_PATH - 1})`);
  const addr = Buffer.alloc(2 + SUN_PATH);
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, 2);
  // A path ends at its NUL; an abstract name is exactly as long as the length says.
  return { addr, len: 2 + name.length + (value.startsWith('/') ? 1 : 0) };
}

/**
 * The clock the manager compares MONOTONIC_USEC against (CLOCK_MONOTONIC). libuv's hrtime
 * reads the same clock on Linux, so no binding is needed.
 */
export function monotonicUsec(): bigint {
  return process.hrtime.bigint() / 1000n;
}

/** The lines of one notification: assignments in the order given, values on one line. */
export function formatNotification(fields: ReadonlyArray<readonly [string, string]>): Buffer {
  return Buffer.from(fields.map(([k, v]) => `${k}=${v.replace(/\n/g, ' ')}`).join('\n'), 'utf8');
}

export class SdNotifier {
  private fd: number;
  private readonly target: { addr: Buffer; len: number };

  /**
   * The notifier for this process's service manager, or undefined when none asked for
   * notifications. The variable is removed from the environment, as sd_notify's
   * unset_environment does, so programs the daemon starts (activated services) do not
   * report to the manager in the daemon's name.
   */
  static fromEnvironment(env: NodeJS.ProcessEnv = process.env): SdNotifier | undefined {
    const value = env['NOTIFY_SOCKET'];
    if (value === undefined || value === '') return undefined;
    delete env['NOTIFY_SOCKET'];
    try {
      return new SdNotifier(value);
    } catch (e) {
      // As with sd_notify, a manager that cannot be reached does not stop the daemon.
      logger.warn(`service manager notifications disabled: ${(e as Error).message}`);
      return undefined;
    }
  }

  constructor(readonly socket: string) {
    this.target = notifyAddress(socket);
    this.fd = socketFn(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (this.fd < 0) throw new SyscallError('socket(AF_UNIX, SOCK_DGRAM)', koffi.errno());
  }

  /**
   * Sends one notification. Never blocks the event loop: a manager whose socket queue is
   * full (or that went away) costs the daemon a failed notification, not a stall; the
   * error says why.
   */
  send(fields: ReadonlyArray<readonly [string, string]>): void {
    if (this.fd < 0) throw new Error('the notifier is closed');
    const msg = formatNotification(fields);
    const n = sendtoFn(this.fd, msg, msg.length, MSG_DONTWAIT | MSG_NOSIGNAL, this.target.addr, this.target.len);
    if (n < 0) {
      const e = koffi.errno();
      throw new Error(`notifying the service manager at ${this.socket}: ${errnoName(e)}`);
    }
  }

  /** Startup or a reload finished: the nodes and sockets exist. */
  ready(status: string): void {
    this.send([['READY', '1'], ['STATUS', status]]);
  }

  /**
   * A reload began. MONOTONIC_USEC lets systemd 253+ (Type=notify-reload) tell this
   * RELOADING=1 from a stale one; older managers ignore the unknown assignment.
   */
  reloading(status: string): void {
    this.send([['RELOADING', '1'], ['STATUS', status], ['MONOTONIC_USEC', String(monotonicUsec())]]);
  }

  stopping(status: string): void {
    this.send([['STOPPING', '1'], ['STATUS', status]]);
  }

  close(): void {
    if (this.fd >= 0) closeFd(this.fd);
    this.fd = -1;
  }
}

function errnoName(e: number): string {
  const name = Object.entries(os.constants.errno).find(([, v]) => v === e)?.[0];
  return name ? `${name} (errno ${e})` : `errno ${e}`;
}
