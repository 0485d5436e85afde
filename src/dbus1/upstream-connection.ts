/**
 * One dbus1 client connection from the daemon to an upstream bus (dbus-daemon, dbus-broker)
 * on behalf of one user: the bridge opens one per kdbus connection, authenticated as that
 * connection's owner, so the bus's policy and the services behind it see that user.
 *
 * The bus learns who connects from the kernel (SO_PEERCRED, SO_PEERGROUPS), which records
 * the connecting thread's credentials at connect(); connect() therefore runs with the main
 * thread switched to the user (src/os/thread-credentials.ts). Authentication is EXTERNAL
 * with the claim of that uid, pipelined as sd-bus does it: AUTH, NEGOTIATE_UNIX_FD, BEGIN
 * and the Hello call go out in one go, and the answers are read as they come.
 */
import { constants as osConstants } from 'node:os';
import * as koffi from 'koffi';
import { logger } from '../log/logger';
import { CredentialSwitchError, withThreadCredentials, type ThreadCredentials } from '../os/thread-credentials';
import { sockaddr } from '../os/unix-listener';
import { AF_UNIX, closeFd, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, SyscallError } from '../os/unix-socket';
import { parseAddress, type UnixAddress } from './address';
import { decodeMessage, encodeMessage, MAX_MESSAGE_SIZE, MessageFlag, MessageType, type Message } from './message';
import { withReusedOutput } from './output-buffer';
import { MessageStream } from './message-stream';
import { MAX_AUTH_LINE_BYTES } from './sasl';
import type { Value } from './value';

const libc = koffi.load(null);
const socketFn = libc.func('int socket(int domain, int type, int protocol)') as (d: number, t: number, p: number) => number;
const connectFn = libc.func('int connect(int fd, const void *addr, uint32_t len)') as (fd: number, addr: Buffer, len: number) => number;
const geteuidFn = libc.func('uint32_t geteuid(void)') as () => number;

const EINTR = 4;
const EAGAIN = 11;
/** First wait, and longest, between connect() attempts while the bus's backlog is full. */
const BACKLOG_RETRY_MS = 2;
const BACKLOG_RETRY_MAX_MS = 50;

export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
/** dbus-daemon's own default for its outgoing queue to one connection. */
const DEFAULT_MAX_OUTGOING_BYTES = 128 * 1024 * 1024;
/** Received descriptors not yet claimed by a message: far above what one message may carry upstream. */
const MAX_QUEUED_FDS = 1024;

const DRIVER_NAME = 'org.freedesktop.DBus';
const DRIVER_PATH = '/org/freedesktop/DBus';

export interface UpstreamHandlers {
  /**
   * A message that is not the reply to a call(): signals, method calls for this
   * connection, replies to what send() sent (also late replies to calls that timed out).
   * The handler owns `fds` and must close them. Messages that arrive before connect()
   * resolves (NameAcquired) are delivered on a later turn of the loop, after it resolved.
   */
  message(m: Message, fds: number[]): void;
  /**
   * Called exactly once when an established connection ends, whatever the cause (the bus
   * hung up, a protocol error, close()). A connect() that rejects never calls it.
   */
  closed(reason: string): void;
}

export interface UpstreamOptions {
  /** The user to connect as; the daemon's own credentials when absent. */
  as?: ThreadCredentials;
  /** Names the connection in log lines and errors (the kdbus connection it serves, say). */
  label: string;
  handlers: UpstreamHandlers;
  /** A message from the bus longer than this closes the connection (default: the dbus1 maximum). */
  maxMessageBytes?: number;
  /** Unsent bytes beyond which send() refuses messages (default 128 MiB). */
  maxOutgoingBytes?: number;
  /** The whole of connect(): socket, authentication, Hello (default 5 s). */
  timeoutMs?: number;
}

export interface CallOptions {
  /** Sent with the call; ownership as for send(). */
  fds?: readonly number[];
  /** Rejects the call (with UpstreamTimeoutError) when no reply came within this; none by default. */
  timeoutMs?: number;
}

/** A method call as call() takes it: type and serial are call()'s to set, flags default to 0. */
export type UpstreamCall = Omit<Message, 'serial' | 'type' | 'flags'> & { flags?: number };

/** The bus or a peer answered a call() with an ERROR message. */
export class UpstreamCallError extends Error {
  constructor(
    /** The D-Bus error name (org.freedesktop.DBus.Error.ServiceUnknown...). */
    override readonly name: string,
    /** The error's message text (its first string argument), "" when it has none. */
    readonly text: string,
    readonly reply: Message,
  ) {
    super(text === '' ? name : `${name}: ${text}`);
  }
}

/** The connection is closed (or closed while a call waited for its reply). */
export class UpstreamClosedError extends Error {
  constructor(readonly label: string, readonly reason: string) {
    super(`${label}: the upstream connection is closed (${reason})`);
    this.name = 'UpstreamClosedError';
  }
}

/** send() refused a message: the bus does not read and the output queue is full. */
export class UpstreamQueueFullError extends Error {
  constructor(readonly label: string, readonly queuedBytes: number) {
    super(`${label}: the upstream bus does not read its messages (${queuedBytes} bytes unsent); message refused`);
    this.name = 'UpstreamQueueFullError';
  }
}

/** No reply to a call() within its timeout. */
export class UpstreamTimeoutError extends Error {
  constructor(readonly label: string, readonly member: string | undefined, readonly timeoutMs: number) {
    super(`${label}: no reply to ${member ?? 'a call'} within ${timeoutMs} ms`);
    this.name = 'UpstreamTimeoutError';
  }
}

/** connect() failed for every socket the address names. */
export class UpstreamConnectError extends Error {
  constructor(
    readonly address: string,
    readonly uid: number,
    /** Why each socket of the address failed, in order. */
    readonly causes: readonly string[],
  ) {
    super(`cannot connect to upstream bus "${address}" as uid ${uid}: ${causes.join('; ')}`);
    this.name = 'UpstreamConnectError';
  }
}

interface PendingCall {
  settle(reply: Message | Error): void;
  timer: NodeJS.Timeout | undefined;
}

type Phase = 'auth-ok' | 'auth-fd' | 'hello' | 'open' | 'closed';

function errnoName(e: number): string {
  for (const [name, value] of Object.entries(osConstants.errno)) if (value === e) return name;
  return `errno ${e}`;
}

function describeSocket(a: UnixAddress): string {
  return a.kind === 'path' ? a.path : a.kind === 'abstract' ? `@${a.name}` : a.kind === 'dir' ? a.dir : 'systemd:';
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * connect() of the non-blocking socket as `who`. A unix socket connects at once or fails;
 * EAGAIN means the listener's backlog is full, so it is tried again after a pause, without
 * blocking the loop, until the deadline.
 */
async function connectAs(fd: number, a: { kind: 'path'; path: string } | { kind: 'abstract'; name: string }, who: ThreadCredentials | undefined, deadline: number): Promise<void> {
  const { addr, len } = sockaddr(a);
  // errno is read inside: restoring the credentials makes system calls of its own.
  const attempt = (): number => (connectFn(fd, addr, len) < 0 ? koffi.errno() : 0);
  for (let pause = BACKLOG_RETRY_MS; ; pause = Math.min(pause * 2, BACKLOG_RETRY_MAX_MS)) {
    const e = who ? withThreadCredentials(who, attempt) : attempt();
    if (e === 0) return;
    if (e === EINTR) continue;
    if (e !== EAGAIN) throw new Error(`connect to ${describeSocket(a)}: ${errnoName(e)}`);
    if (Date.now() + pause > deadline) throw new Error(`connect to ${describeSocket(a)}: the bus's listen backlog stayed full (EAGAIN)`);
    await sleep(pause);
  }
}

function hexOfDecimal(uid: number): string {
  return Buffer.from(String(uid), 'ascii').toString('hex');
}

export class UpstreamConnection {
  private phaseValue: Phase = 'auth-ok';
  private uniqueNameValue = '';
  private guidValue = '';
  private unixFdsValue = false;
  private readonly stream: MessageStream;
  private lastSerial = 0;
  private readonly calls = new Map<bigint, PendingCall>();
  /** An authentication line not yet complete. */
  private authPending: Buffer | undefined;
  /** Messages for the handler that came before connect() resolved; undefined once handed on. */
  private early: { m: Message; fds: number[] }[] | undefined = [];
  private connecting: { resolve(c: UpstreamConnection): void; reject(e: Error): void; timer: NodeJS.Timeout } | undefined;
  private closeReason = '';
  /** close() was called here, as opposed to the bus hanging up or breaking the protocol. */
  private closedHere = false;

  /**
   * Opens a connection to the first socket of `address` that accepts it (entries in order;
   * dir=/tmpdir= entries are for listening and skipped), authenticated as `opts.as`, and
   * resolves once the bus answered Hello. Rejects with UpstreamConnectError, whose message
   * names the address, the uid and why each socket failed (ENOENT, the bus REJECTED the
   * uid, no answer within timeoutMs...); AddressError for an address that does not parse;
   * an Error when the daemon may not act as `opts.as` (lacks CAP_SETUID/CAP_SETGID).
   */
  static async connect(address: string, opts: UpstreamOptions): Promise<UpstreamConnection> {
    const uid = opts.as?.uid ?? geteuidFn();
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const targets = parseAddress(address);
    const causes: string[] = [];
    for (const t of targets) {
      if (t.kind === 'dir' || t.kind === 'systemd') {
        causes.push(`${describeSocket(t)}: ${t.kind === 'dir' ? 'dir= and tmpdir= name' : 'systemd: names'} no socket to connect to`);
        continue;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        causes.push(`${describeSocket(t)}: not tried, the ${timeoutMs} ms to connect are over`);
        continue;
      }
      const fd = socketFn(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) throw new SyscallError('socket(AF_UNIX, SOCK_STREAM)', koffi.errno());
      try {
        await connectAs(fd, t, opts.as, deadline);
      } catch (e) {
        closeFd(fd);
        if (!(e instanceof Error) || e instanceof CredentialSwitchError) throw e;
        causes.push(e.message);
        continue;
      }
      try {
        return await new UpstreamConnection(fd, uid, opts).handshake(deadline - Date.now(), timeoutMs);
      } catch (e) {
        causes.push(`${describeSocket(t)}: ${(e as Error).message}`);
      }
    }
    throw new UpstreamConnectError(address, uid, causes);
  }

  private constructor(
    fd: number,
    private readonly uid: number,
    private readonly opts: UpstreamOptions,
  ) {
    this.stream = new MessageStream(
      fd,
      {
        auth: (bytes) => this.onAuth(bytes),
        message: (raw) => this.onMessage(raw),
        closed: (reason) => this.onClosed(reason),
      },
      {
        maxMessageBytes: opts.maxMessageBytes ?? MAX_MESSAGE_SIZE,
        maxOutgoingBytes: opts.maxOutgoingBytes ?? DEFAULT_MAX_OUTGOING_BYTES,
        maxQueuedFds: MAX_QUEUED_FDS,
      },
      'the bus',
    );
  }

  /** The name the bus gave this connection in its Hello reply. */
  get uniqueName(): string {
    return this.uniqueNameValue;
  }

  /** Whether the bus agreed to descriptor passing (AGREE_UNIX_FD). */
  get unixFds(): boolean {
    return this.unixFdsValue;
  }

  /** The bus's GUID from its OK. */
  get guid(): string {
    return this.guidValue;
  }

  get label(): string {
    return this.opts.label;
  }

  get isClosed(): boolean {
    return this.phaseValue === 'closed';
  }

  /** Bytes send() accepted that the bus has not read yet. */
  get outgoingBytes(): number {
    return this.stream.outgoingBytes;
  }

  /**
   * Sends m with the next serial, which it writes into m.serial and returns (m.unixFds is
   * set from `fds`). On return the
   * connection owns `fds`: they are closed once sent (or when the connection closes first);
   * the caller must not use them afterwards. On a throw nothing was sent and `fds` stay the
   * caller's: UpstreamClosedError when the connection is closed, UpstreamQueueFullError when
   * the bus does not read and the output queue is over its limit, ValueError when m cannot
   * be encoded, RangeError for more descriptors than one sendmsg carries, Error for
   * descriptors on a connection without descriptor passing.
   */
  send(m: Message, fds: readonly number[] = []): bigint {
    if (this.phaseValue === 'closed') throw new UpstreamClosedError(this.opts.label, this.closeReason);
    if (fds.length > 0 && !this.unixFdsValue) {
      throw new Error(`${this.opts.label}: descriptors cannot be sent upstream: the bus did not agree to descriptor passing`);
    }
    const serial = this.nextSerial();
    m.serial = serial;
    m.unixFds = fds.length > 0 ? fds.length : undefined;
    // The stream copies what the socket does not take at once: the bytes are done with after send().
    const sent = withReusedOutput((out) => this.stream.send(encodeMessage(m, out), fds));
    if (!sent) throw new UpstreamQueueFullError(this.opts.label, this.stream.outgoingBytes);
    return serial;
  }

  /**
   * Sends a method call and resolves with its METHOD_RETURN. Rejects with UpstreamCallError
   * for an ERROR reply, UpstreamClosedError when the connection closes first,
   * UpstreamTimeoutError after opts.timeoutMs; synchronously-detected failures of send()
   * reject the same way. Descriptors a reply carries are closed (a caller that wants them
   * uses send() and takes the reply in handlers.message).
   */
  call(m: UpstreamCall, opts: CallOptions = {}): Promise<Message> {
    const message: Message = { ...m, type: MessageType.MethodCall, flags: (m.flags ?? 0) & ~MessageFlag.NoReplyExpected, serial: 0n };
    return new Promise((resolve, reject) => {
      let serial: bigint;
      try {
        serial = this.send(message, opts.fds);
      } catch (e) {
        reject(e);
        return;
      }
      const pending: PendingCall = {
        settle: (reply) => {
          if (reply instanceof Error) reject(reply);
          else if (reply.type === MessageType.Error) reject(callError(reply));
          else resolve(reply);
        },
        timer: undefined,
      };
      if (opts.timeoutMs !== undefined) {
        pending.timer = setTimeout(() => {
          this.calls.delete(serial);
          reject(new UpstreamTimeoutError(this.opts.label, m.member, opts.timeoutMs!));
        }, opts.timeoutMs);
      }
      this.calls.set(serial, pending);
    });
  }

  /** A call to the bus driver (org.freedesktop.DBus) on its canonical path. */
  callDriver(member: string, signature = '', body: Value[] = [], opts: CallOptions = {}): Promise<Message> {
    return this.call({ destination: DRIVER_NAME, path: DRIVER_PATH, interface: DRIVER_NAME, member, signature, body }, opts);
  }

  /**
   * Closes the connection: the socket and every descriptor still queued either way.
   * handlers.closed(reason) follows at once (for an established connection), calls
   * waiting for replies reject. Later calls do nothing.
   */
  close(reason = 'closed by the daemon'): void {
    this.closedHere = true;
    this.stream.close(reason);
  }

  private nextSerial(): bigint {
    // 32 bits in dbus1; 0 is not a serial.
    this.lastSerial = this.lastSerial >= 0xffff_ffff ? 1 : this.lastSerial + 1;
    return BigInt(this.lastSerial);
  }

  /** Sends the pipelined authentication and Hello; resolves once Hello is answered. */
  private handshake(leftMs: number, timeoutMs: number): Promise<UpstreamConnection> {
    const promise = new Promise<UpstreamConnection>((resolve, reject) => {
      const timer = setTimeout(() => this.close(`no answer within the ${timeoutMs} ms to connect`), Math.max(leftMs, 0));
      this.connecting = { resolve, reject, timer };
    });
    this.stream.writeRaw(Buffer.from(`\0AUTH EXTERNAL ${hexOfDecimal(this.uid)}\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n`, 'ascii'));
    const serial = this.nextSerial();
    this.calls.set(serial, { settle: (reply) => this.onHello(reply), timer: undefined });
    try {
      this.stream.send(encodeMessage({
        type: MessageType.MethodCall, flags: 0, serial,
        destination: DRIVER_NAME, path: DRIVER_PATH, interface: DRIVER_NAME, member: 'Hello', signature: '', body: [],
      }));
    } catch (e) {
      this.close(`Hello could not be sent: ${(e as Error).message}`);
    }
    return promise;
  }

  private onHello(reply: Message | Error): void {
    if (reply instanceof Error) return; // the connection closed; onClosed rejects connect()
    if (reply.type === MessageType.Error) {
      this.close(`the bus refused Hello: ${callError(reply).message}`);
      return;
    }
    const name = reply.body[0];
    if (reply.signature !== 's' || typeof name !== 'string' || !name.startsWith(':')) {
      this.close(`the bus answered Hello with (${reply.signature}), not a unique name`);
      return;
    }
    this.uniqueNameValue = name;
    this.phaseValue = 'open';
    const c = this.connecting!;
    this.connecting = undefined;
    clearTimeout(c.timer);
    logger.debug(`${this.opts.label}: connected upstream as ${name} (uid ${this.uid})`);
    c.resolve(this);
    // After whoever awaits connect() has the connection (promise jobs run before immediates).
    setImmediate(() => this.deliverEarly());
  }

  private deliverEarly(): void {
    const queued = this.early;
    this.early = undefined;
    if (!queued) return;
    for (const { m, fds } of queued) {
      if (this.phaseValue === 'closed') for (const fd of fds) closeFd(fd);
      else this.deliver(m, fds);
    }
  }

  /** The bus's authentication lines: "OK <guid>", then the answer to NEGOTIATE_UNIX_FD. */
  private onAuth(bytes: Buffer): void {
    const data = this.authPending ? Buffer.concat([this.authPending, bytes]) : bytes;
    this.authPending = undefined;
    let at = 0;
    while (this.phaseValue === 'auth-ok' || this.phaseValue === 'auth-fd') {
      const eol = data.indexOf('\r\n', at);
      if (eol < 0) break;
      const line = data.toString('latin1', at, eol);
      at = eol + 2;
      if (!this.authLine(line)) return;
    }
    if (this.phaseValue === 'auth-ok' || this.phaseValue === 'auth-fd') {
      if (data.length - at > MAX_AUTH_LINE_BYTES) {
        this.fault(`an authentication line of more than ${MAX_AUTH_LINE_BYTES} bytes`);
        return;
      }
      // A copy: bytes is a view of the stream's read buffer.
      this.authPending = Buffer.from(data.subarray(at));
      return;
    }
    this.stream.startMessages(data.subarray(at), this.unixFdsValue);
  }

  /** False when the line ended the connection. */
  private authLine(line: string): boolean {
    const [command] = line.split(' ', 1);
    if (this.phaseValue === 'auth-ok') {
      if (command === 'OK') {
        const guid = line.slice(3).trim();
        if (!/^[0-9a-fA-F]{32}$/.test(guid)) {
          this.fault(`the bus's OK carries "${guid}", not a 32-hex-digit GUID`);
          return false;
        }
        this.guidValue = guid;
        this.phaseValue = 'auth-fd';
        return true;
      }
      if (command === 'REJECTED') this.close(`the bus rejected authentication as uid ${this.uid} (${line})`);
      else this.fault(`unexpected answer to AUTH EXTERNAL: ${JSON.stringify(line)}`);
      return false;
    }
    if (command === 'AGREE_UNIX_FD') this.unixFdsValue = true;
    else if (command !== 'ERROR') {
      this.fault(`unexpected answer to NEGOTIATE_UNIX_FD: ${JSON.stringify(line)}`);
      return false;
    }
    this.phaseValue = 'hello';
    return true;
  }

  private onMessage(raw: Buffer): void {
    let m: Message;
    try {
      m = decodeMessage(raw);
    } catch (e) {
      this.fault(`malformed message from the bus: ${(e as Error).message}`);
      return;
    }
    let fds: number[] = [];
    if (m.unixFds) {
      const got = this.stream.takeFds(m.unixFds);
      if (!got) {
        this.fault(`a message from ${m.sender ?? 'the bus'} announces ${m.unixFds} descriptors, only ${this.stream.queuedFds} arrived`);
        return;
      }
      fds = got;
    }
    if ((m.type === MessageType.MethodReturn || m.type === MessageType.Error) && m.replySerial !== undefined) {
      const pending = this.calls.get(m.replySerial);
      if (pending) {
        this.calls.delete(m.replySerial);
        if (pending.timer) clearTimeout(pending.timer);
        for (const fd of fds) closeFd(fd);
        pending.settle(m);
        return;
      }
    }
    if (this.early) this.early.push({ m, fds });
    else this.deliver(m, fds);
  }

  private deliver(m: Message, fds: number[]): void {
    try {
      this.opts.handlers.message(m, fds);
    } catch (e) {
      logger.error(`${this.opts.label}: the handler of a message from ${m.sender ?? 'the bus'} threw: ${(e as Error).stack ?? String(e)}`);
    }
  }

  /** Something only a broken or hostile bus sends: logged, and the connection ends. */
  private fault(reason: string): void {
    logger.warn(`${this.opts.label}: ${reason}; closing the upstream connection`);
    this.close(reason);
  }

  private onClosed(reason: string): void {
    const phase = this.phaseValue;
    const wasOpen = phase === 'open';
    this.phaseValue = 'closed';
    this.closeReason = reason;
    this.authPending = undefined;
    const calls = [...this.calls.values()];
    this.calls.clear();
    for (const c of calls) {
      if (c.timer) clearTimeout(c.timer);
      c.settle(new UpstreamClosedError(this.opts.label, reason));
    }
    if (this.connecting) {
      const c = this.connecting;
      this.connecting = undefined;
      clearTimeout(c.timer);
      // dbus-daemon checks its <allow user> rules only after it said OK: a user it does not
      // admit sees authentication succeed and the connection dropped.
      const why = phase === 'hello' && !this.closedHere
        ? `${reason} after accepting the authentication of uid ${this.uid} and before answering Hello (does its policy admit uid ${this.uid}?)`
        : reason;
      c.reject(new Error(why));
    }
    if (!wasOpen) {
      // Messages held for after connect(): nobody will take them now.
      for (const { fds } of this.early ?? []) for (const fd of fds) closeFd(fd);
      this.early = undefined;
      return;
    }
    logger.debug(`${this.opts.label}: upstream connection ${this.uniqueNameValue} closed: ${reason}`);
    try {
      this.opts.handlers.closed(reason);
    } catch (e) {
      logger.error(`${this.opts.label}: the closed handler threw: ${(e as Error).stack ?? String(e)}`);
    }
  }
}

function callError(reply: Message): UpstreamCallError {
  const first = reply.body[0];
  const text = reply.signature.startsWith('s') && typeof first === 'string' ? first : '';
  return new UpstreamCallError(reply.errorName ?? 'org.freedesktop.DBus.Error.Failed', text, reply);
}
