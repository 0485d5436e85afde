/**
 * A dbus1 client that writes whatever bytes it is given: it authenticates (EXTERNAL, the
 * test's own uid) and says Hello as sd-bus does, all in one write, and from then on sends
 * messages that may be malformed, reads what the bus sends back, and notices when the bus
 * hangs up. Tests of bad input drive it; well-formed peers use the daemon's own
 * UpstreamConnection instead.
 */
import net from 'node:net';
import { decodeMessage, DBUS1_PREFIX_SIZE, encodeMessage, messageLength, MessageType, type Message } from '../../src/dbus1/message';

const DRIVER = 'org.freedesktop.DBus';

export class RawDbus1Client {
  private pending: Buffer = Buffer.alloc(0);
  private authenticated = false;
  private lastSerial = 0;
  private readonly received: Message[] = [];
  private readonly waiters = new Set<() => void>();
  private closedValue = false;
  /** Why reading stopped: the bus hung up, or sent what this client cannot decode. */
  closeReason = '';
  uniqueName = '';

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', (e) => this.onClosed(e.message));
    socket.on('close', () => this.onClosed('the bus closed the connection'));
  }

  /** Connects to the unix socket `path` and resolves once Hello was answered. */
  static async connect(path: string, timeoutMs = 5_000): Promise<RawDbus1Client> {
    const socket = net.createConnection(path);
    const c = new RawDbus1Client(socket);
    const uid = Buffer.from(String(process.getuid!())).toString('hex');
    const serial = c.nextSerial();
    const hello = encodeMessage({
      type: MessageType.MethodCall, flags: 0, serial, destination: DRIVER, path: '/org/freedesktop/DBus',
      interface: DRIVER, member: 'Hello', signature: '', body: [],
    });
    socket.write(Buffer.concat([Buffer.from(`\0AUTH EXTERNAL ${uid}\r\nBEGIN\r\n`, 'latin1'), hello]));
    const reply = await c.waitFor((m) => m.replySerial === serial, timeoutMs);
    if (!reply) throw new Error(`no answer to Hello within ${timeoutMs} ms (${c.closeReason || 'still connected'})`);
    if (reply.type !== MessageType.MethodReturn) throw new Error(`Hello refused: ${reply.errorName}`);
    c.uniqueName = reply.body[0] as string;
    return c;
  }

  get closed(): boolean {
    return this.closedValue;
  }

  /** A serial not used yet on this connection. */
  nextSerial(): bigint {
    return BigInt(++this.lastSerial);
  }

  write(bytes: Buffer): void {
    if (!this.closedValue) this.socket.write(bytes);
  }

  /** Every message received so far that answers `serial`. */
  repliesTo(serial: bigint): Message[] {
    return this.received.filter((m) => m.replySerial === serial);
  }

  /** Every message received so far. */
  messages(): readonly Message[] {
    return this.received;
  }

  /**
   * The first message received (now or later) that `match` accepts; undefined when the
   * connection closes first or `timeoutMs` passes.
   */
  async waitFor(match: (m: Message) => boolean, timeoutMs: number): Promise<Message | undefined> {
    return (await this.until(() => this.received.some(match), timeoutMs)) ? this.received.find(match) : undefined;
  }

  /** Whether `n` messages that `match` accepts came before the connection closed or `timeoutMs` passed. */
  waitForCount(match: (m: Message) => boolean, n: number, timeoutMs: number): Promise<boolean> {
    return this.until(() => this.received.filter(match).length >= n, timeoutMs);
  }

  private until(done: () => boolean, timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const check = (): boolean => {
        const ok = done();
        if (ok || this.closedValue) {
          clearTimeout(timer);
          this.waiters.delete(wake);
          resolve(ok);
          return true;
        }
        return false;
      };
      const wake = (): void => void check();
      const timer = setTimeout(() => {
        this.waiters.delete(wake);
        resolve(done());
      }, timeoutMs);
      if (!check()) this.waiters.add(wake);
    });
  }

  close(): void {
    this.socket.destroy();
    this.onClosed('closed by the test');
  }

  private onData(d: Buffer): void {
    this.pending = this.pending.length === 0 ? d : Buffer.concat([this.pending, d]);
    if (!this.authenticated) {
      const end = this.pending.indexOf('\r\n');
      if (end < 0) return;
      const line = this.pending.subarray(0, end).toString('latin1');
      if (!line.startsWith('OK ')) {
        this.fail(`authentication refused: ${line}`);
        return;
      }
      this.authenticated = true;
      this.pending = this.pending.subarray(end + 2);
    }
    while (this.pending.length >= DBUS1_PREFIX_SIZE) {
      const length = messageLength(this.pending);
      if (this.pending.length < length) break;
      try {
        this.received.push(decodeMessage(this.pending.subarray(0, length)));
      } catch (e) {
        this.fail(`the bus sent a message that does not decode: ${(e as Error).message}`);
        return;
      }
      this.pending = this.pending.subarray(length);
    }
    this.wake();
  }

  private fail(reason: string): void {
    this.socket.destroy();
    this.onClosed(reason);
  }

  private onClosed(reason: string): void {
    if (this.closedValue) return;
    this.closedValue = true;
    this.closeReason = reason;
    this.wake();
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }
}
