/**
 * The server side of the D-Bus authentication protocol (a SASL profile) for legacy clients
 * on the bus's unix sockets, as dbus-daemon conducts it with only the EXTERNAL mechanism:
 * a NUL byte, then CRLF-terminated ASCII commands until BEGIN. Pure logic: the transport
 * feeds received bytes in and writes out what comes back.
 *
 * EXTERNAL authenticates the uid the kernel reports for the socket (SO_PEERCRED): the
 * client may claim it (the hex of a number as libdbus reads one) or leave the claim empty,
 * either with "AUTH EXTERNAL" followed by an empty DATA answer to the server's empty DATA
 * challenge.
 */

/** Unterminated or overlong input beyond this is abuse (dbus-daemon's auth buffer limit). */
export const MAX_AUTH_LINE_BYTES = 16 * 1024;
/** dbus-daemon drops a client at its sixth REJECTED. */
export const MAX_AUTH_FAILURES = 6;

export interface SaslServerOptions {
  /** The peer's uid from SO_PEERCRED. */
  peerUid: number;
  /** The server GUID sent in OK: 32 hex digits. */
  guid: string;
  /** Whether fds can pass on this connection; NEGOTIATE_UNIX_FD is refused otherwise. */
  unixFdsPossible: boolean;
}

export interface SaslStep {
  /** Bytes to write to the client, possibly none. Write them before acting on the rest. */
  output: Buffer;
  /** BEGIN arrived: D-Bus messages follow, starting with `rest` (bytes after BEGIN's CRLF). */
  done?: { unixFds: boolean; rest: Buffer };
  /** Close the connection (after writing `output`); why, for the log. */
  disconnect?: string;
}

type State =
  | 'nul' // before the credentials byte
  | 'auth' // waiting for AUTH
  | 'data' // EXTERNAL sent its empty challenge, waiting for DATA
  | 'begin' // OK sent, waiting for BEGIN (or NEGOTIATE_UNIX_FD)
  | 'finished'; // BEGIN seen or disconnected

const CR = 0x0d;
const LF = 0x0a;
const EMPTY = Buffer.alloc(0);
/** What C's strtoul(…, 0) reads in full: blanks, a sign, then hex (0x), octal (0) or decimal digits. */
const UNSIGNED_LONG = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/;
const ULONG_LIMIT = 1n << 64n;

export class SaslServer {
  private state: State = 'nul';
  private failures = 0;
  private unixFds = false;
  /** EXTERNAL's empty challenge went out in this attempt. */
  private askedForIdentity = false;
  /** Received bytes not yet forming a whole line. */
  private pending: Buffer = EMPTY;
  private readonly okLine: string;
  private out: string[] = [];
  private disconnectReason: string | undefined;

  constructor(private readonly options: SaslServerOptions) {
    if (!/^[0-9a-fA-F]{32}$/.test(options.guid)) throw new RangeError(`the server GUID must be 32 hex digits, got "${options.guid}"`);
    if (!Number.isInteger(options.peerUid) || options.peerUid < 0) throw new RangeError(`peer uid ${options.peerUid} is not a uid`);
    this.okLine = `OK ${options.guid.toLowerCase()}`;
  }

  /** Processes received bytes; see SaslStep for what to do with the result. */
  feed(bytes: Uint8Array): SaslStep {
    if (this.state === 'finished') throw new Error('the authentication conversation is over; nothing more may be fed to it');
    let buf = this.pending.length === 0 ? Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) : Buffer.concat([this.pending, bytes]);
    this.pending = EMPTY;
    this.out = [];

    if (this.state === 'nul') {
      if (buf.length === 0) return this.step();
      // Credentials travel with this byte on some systems; on Linux it only has to be NUL.
      if (buf[0] !== 0) return this.close('the first byte was not NUL');
      this.state = 'auth';
      buf = buf.subarray(1);
    }

    let start = 0;
    for (;;) {
      const eol = findCrLf(buf, start);
      if (eol < 0) break;
      if (eol - start > MAX_AUTH_LINE_BYTES) return this.close(`an authentication line is longer than ${MAX_AUTH_LINE_BYTES} bytes`);
      this.command(buf, start, eol);
      start = eol + 2;
      if (this.disconnectReason !== undefined) return this.step();
      if (this.begun()) return { output: this.output(), done: { unixFds: this.unixFds, rest: Buffer.from(buf.subarray(start)) } };
    }
    if (buf.length - start > MAX_AUTH_LINE_BYTES) return this.close(`an authentication line is longer than ${MAX_AUTH_LINE_BYTES} bytes`);
    // Copied: the caller may reuse its read buffer.
    this.pending = Buffer.from(buf.subarray(start));
    return this.step();
  }

  /** After command(): BEGIN arrived (TS cannot see command() change the state). */
  private begun(): boolean {
    return this.state === 'finished';
  }

  private command(buf: Buffer, start: number, end: number): void {
    for (let i = start; i < end; i++) {
      const c = buf[i]!;
      if (c === 0 || c > 0x7f) {
        this.error('Command contained non-ASCII');
        return;
      }
    }
    const line = buf.toString('latin1', start, end);
    let cut = 0;
    while (cut < line.length && !isBlank(line.charCodeAt(cut))) cut++;
    const name = line.slice(0, cut);
    while (cut < line.length && isBlank(line.charCodeAt(cut))) cut++;
    const args = line.slice(cut);

    switch (this.state) {
      case 'auth':
        switch (name) {
          case 'AUTH': return this.auth(args);
          case 'CANCEL':
          case 'DATA': return this.error('Not currently in an auth conversation');
          case 'BEGIN': return this.disconnect('BEGIN before authentication');
          case 'ERROR': return this.reject();
          case 'NEGOTIATE_UNIX_FD': return this.error('Need to authenticate first');
          default: return this.error('Unknown command');
        }
      case 'data':
        switch (name) {
          case 'AUTH': return this.error('Sent AUTH while another AUTH in progress');
          case 'CANCEL':
          case 'ERROR': return this.reject();
          case 'DATA': return this.external(args);
          case 'BEGIN': return this.disconnect('BEGIN before authentication');
          case 'NEGOTIATE_UNIX_FD': return this.error('Need to authenticate first');
          default: return this.error('Unknown command');
        }
      case 'begin':
        switch (name) {
          case 'BEGIN':
            this.state = 'finished';
            return;
          case 'NEGOTIATE_UNIX_FD':
            if (!this.options.unixFdsPossible) return this.error('Unix fd passing is not possible on this connection');
            this.unixFds = true;
            this.out.push('AGREE_UNIX_FD');
            return;
          case 'AUTH': return this.error('Sent AUTH while expecting BEGIN');
          case 'DATA': return this.error('Sent DATA while expecting BEGIN');
          case 'CANCEL':
          case 'ERROR': return this.reject();
          default: return this.error('Unknown command');
        }
      default:
        throw new Error(`no command is expected in state ${this.state}`);
    }
  }

  private auth(args: string): void {
    // A bare AUTH asks for the list of mechanisms, which REJECTED carries.
    if (args.length === 0) return this.reject();
    let cut = 0;
    while (cut < args.length && !isBlank(args.charCodeAt(cut))) cut++;
    const mechanism = args.slice(0, cut);
    while (cut < args.length && isBlank(args.charCodeAt(cut))) cut++;
    if (mechanism !== 'EXTERNAL') return this.reject();
    this.external(args.slice(cut));
  }

  /** EXTERNAL's step with a hex-encoded response (initial response or DATA). */
  private external(hex: string): void {
    const identity = hexDecode(hex);
    if (identity === undefined) return this.error('Invalid hex encoding');
    if (identity.length === 0 && !this.askedForIdentity) {
      this.askedForIdentity = true;
      this.state = 'data';
      this.out.push('DATA');
      return;
    }
    // An empty answer to the challenge means "whoever the socket says I am".
    if (identity.length > 0 && claimedUid(identity) !== BigInt(this.options.peerUid)) return this.reject();
    this.askedForIdentity = false;
    this.state = 'begin';
    this.out.push(this.okLine);
  }

  private reject(): void {
    this.out.push('REJECTED EXTERNAL');
    this.askedForIdentity = false;
    this.unixFds = false;
    this.state = 'auth';
    if (++this.failures >= MAX_AUTH_FAILURES) this.disconnect(`${this.failures} failed authentication attempts`);
  }

  private error(text: string): void {
    this.out.push(`ERROR "${text}"`);
  }

  private disconnect(reason: string): void {
    this.disconnectReason = reason;
    this.state = 'finished';
  }

  private close(reason: string): SaslStep {
    this.disconnect(reason);
    return this.step();
  }

  private step(): SaslStep {
    const output = this.output();
    return this.disconnectReason === undefined ? { output } : { output, disconnect: this.disconnectReason };
  }

  private output(): Buffer {
    if (this.out.length === 0) return EMPTY;
    return Buffer.from(this.out.map((l) => `${l}\r\n`).join(''), 'latin1');
  }
}

const isBlank = (c: number): boolean => c === 0x20 || c === 0x09;

/**
 * The uid an EXTERNAL identity claims, as libdbus reads it (strtoul with base 0, all of the
 * text consumed, 64 bits at most; a minus sign wraps around): "00", "+0" and "0x0" claim
 * uid 0 as "0" does. Undefined for anything else (dbus-daemon looks no user names up for
 * EXTERNAL).
 */
function claimedUid(identity: string): bigint | undefined {
  const m = UNSIGNED_LONG.exec(identity);
  if (!m) return undefined;
  const digits = m[2]!;
  const value = digits.length > 1 && digits[0] === '0' && (digits[1] === 'x' || digits[1] === 'X')
    ? BigInt(`0x${digits.slice(2)}`)
    : digits.length > 1 && digits[0] === '0' ? BigInt(`0o${digits.slice(1)}`) : BigInt(digits);
  if (value >= ULONG_LIMIT) return undefined;
  return m[1] === '-' ? (ULONG_LIMIT - value) % ULONG_LIMIT : value;
}

function findCrLf(buf: Buffer, from: number): number {
  for (let i = buf.indexOf(CR, from); i >= 0; i = buf.indexOf(CR, i + 1)) {
    if (i + 1 < buf.length && buf[i + 1] === LF) return i;
  }
  return -1;
}

/**
 * Hex to a latin1 string as dbus-daemon decodes it: digits of either case; an odd last
 * digit gives the high half of a final byte. Anything else in the text makes it invalid.
 */
function hexDecode(hex: string): string | undefined {
  let out = '';
  for (let i = 0; i < hex.length; i += 2) {
    const hi = hexDigit(hex.charCodeAt(i));
    const lo = i + 1 < hex.length ? hexDigit(hex.charCodeAt(i + 1)) : 0;
    if (hi < 0 || lo < 0) return undefined;
    out += String.fromCharCode((hi << 4) | lo);
  }
  return out;
}

function hexDigit(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}
