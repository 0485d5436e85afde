import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { decodeMessage, encodeMessage, Message, MessageType } from '../../src/dbus1/message';
import { HeldBudget } from '../../src/os/held-budget';
import { MessageStream, MessageStreamLimits } from '../../src/dbus1/message-stream';
import { SaslServer } from '../../src/dbus1/sasl';
import { closeFd, socketpair, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM } from '../../src/os/unix-socket';
import { recvWithFds, sendWithFds } from '../helpers/fd-socket';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const LIMITS: MessageStreamLimits = { maxMessageBytes: 1 << 20, maxOutgoingBytes: 4 << 20, maxQueuedFds: 16 };
const O_CLOEXEC = 0o2000000;

async function until(what: string, cond: () => boolean, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;

function call(serial: number, arg: string | Buffer, unixFds?: number): Buffer {
  const m: Message = {
    type: MessageType.MethodCall,
    flags: 0,
    serial: BigInt(serial),
    path: '/org/example/Stream',
    member: 'Put',
    signature: typeof arg === 'string' ? 's' : 'ay',
    body: [arg],
  };
  if (unixFds !== undefined) m.unixFds = unixFds;
  return encodeMessage(m);
}

/**
 * A method call written big-endian by hand: path "/be", member "Ping", one uint32 argument.
 * Header fields end at byte 55 (39 bytes of fields), the body starts at 56: 60 bytes.
 */
function bigEndianPing(serial: number, value: number): Buffer {
  const b = Buffer.alloc(60);
  b[0] = 0x42; // 'B'
  b[1] = MessageType.MethodCall;
  b[3] = 1;
  b.writeUInt32BE(4, 4);
  b.writeUInt32BE(serial, 8);
  b.writeUInt32BE(39, 12);
  b.set([1, 1, 0x6f, 0], 16);
  b.writeUInt32BE(3, 20);
  b.write('/be', 24);
  b.set([3, 1, 0x73, 0], 32);
  b.writeUInt32BE(4, 36);
  b.write('Ping', 40);
  b.set([8, 1, 0x67, 0], 48);
  b[52] = 1;
  b[53] = 0x75; // 'u'
  b.writeUInt32BE(value, 56);
  return b;
}

/** Writes all of data from the peer's end, waiting while its socket buffer is full. */
async function writeAll(fd: number, data: Buffer): Promise<void> {
  let off = 0;
  while (off < data.length) {
    try {
      off += fs.writeSync(fd, data, off, data.length - off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      await sleep(1);
    }
  }
}

/** What the peer reads: every byte, and where in the stream each batch of descriptors came. */
interface Drained {
  bytes: Buffer;
  fdsAt: { from: number; to: number; fds: number[] }[];
}

async function drain(fd: number, total: number): Promise<Drained> {
  const parts: Buffer[] = [];
  const fdsAt: Drained['fdsAt'] = [];
  let got = 0;
  const deadline = Date.now() + 5000;
  while (got < total) {
    const r = recvWithFds(fd, 256 * 1024);
    if (r === undefined) {
      if (Date.now() > deadline) throw new Error(`drained ${got} of ${total} bytes`);
      await sleep(1);
      continue;
    }
    if (r.data.length === 0) throw new Error('end of stream while draining');
    if (r.fds.length > 0) fdsAt.push({ from: got, to: got + r.data.length, fds: r.fds });
    parts.push(r.data);
    got += r.data.length;
  }
  return { bytes: Buffer.concat(parts), fdsAt };
}

/** Files told apart by inode. */
class TempFiles {
  private readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'message-stream-'));
  private n = 0;
  open(): { fd: number; ino: number } {
    const fd = fs.openSync(path.join(this.dir, `f${this.n++}`), 'w+');
    return { fd, ino: fs.fstatSync(fd).ino };
  }
  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A stream on one end of a socket pair, recording what it hands over. */
class Harness {
  readonly stream: MessageStream;
  readonly peer: number;
  readonly auth: Buffer[] = [];
  readonly messages: Buffer[] = [];
  readonly closed: string[] = [];
  /** Per message, the inodes of the descriptors its UNIX_FDS field claimed, or 'missing'. */
  readonly fdInodes: (number[] | 'missing')[] = [];
  onAuth: (bytes: Buffer) => void = (b) => this.auth.push(Buffer.from(b));
  takeFds = true;

  constructor(limits: MessageStreamLimits = LIMITS) {
    const [mine, peer] = socketpair(SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
    this.peer = peer;
    this.stream = new MessageStream(mine, {
      auth: (b) => this.onAuth(b),
      message: (raw) => {
        this.messages.push(Buffer.from(raw));
        if (!this.takeFds) return;
        const n = decodeMessage(raw).unixFds ?? 0;
        if (n === 0) return;
        const fds = this.stream.takeFds(n);
        if (fds === undefined) {
          this.fdInodes.push('missing');
          return;
        }
        this.fdInodes.push(fds.map((fd) => {
          const flags = /flags:\s+([0-7]+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!;
          assert.ok((parseInt(flags, 8) & O_CLOEXEC) !== 0, 'received descriptors are close-on-exec');
          const ino = fs.fstatSync(fd).ino;
          closeFd(fd);
          return ino;
        }));
      },
      closed: (reason) => this.closed.push(reason),
    }, limits);
  }

  messagesMode(unixFds = true): this {
    this.stream.startMessages(Buffer.alloc(0), unixFds);
    return this;
  }

  finish(): void {
    this.stream.close();
    closeFd(this.peer);
  }
}

describe('dbus1 MessageStream: one legacy client socket', () => {
  it('hands authentication bytes over as read, writes replies, and switches to messages with the bytes after BEGIN', async () => {
    const h = new Harness();
    const uid = process.getuid!();
    const sasl = new SaslServer({ peerUid: uid, guid: '0123456789abcdef0123456789abcdef', unixFdsPossible: true });
    h.onAuth = (bytes) => {
      h.auth.push(Buffer.from(bytes));
      const step = sasl.feed(bytes);
      h.stream.writeRaw(step.output);
      if (step.done) h.stream.startMessages(step.done.rest, step.done.unixFds);
    };
    try {
      const claim = Buffer.from(String(uid)).toString('hex');
      fs.writeSync(h.peer, Buffer.from(`\0AUTH EXTERNAL ${claim}\r\n`));
      const ok = Buffer.from('OK 0123456789abcdef0123456789abcdef\r\n');
      const reply = await drain(h.peer, ok.length);
      assert.deepEqual(reply.bytes, ok);
      assert.equal(Buffer.concat(h.auth).toString(), `\0AUTH EXTERNAL ${claim}\r\n`);

      // BEGIN, one whole message and the start of the next in a single write.
      const m1 = call(1, 'first');
      const m2 = call(2, 'second');
      fs.writeSync(h.peer, Buffer.concat([Buffer.from('NEGOTIATE_UNIX_FD\r\nBEGIN\r\n'), m1, m2.subarray(0, 10)]));
      await until('the first message', () => h.messages.length === 1);
      assert.deepEqual(h.messages[0], m1);
      fs.writeSync(h.peer, m2.subarray(10));
      await until('the second message', () => h.messages.length === 2);
      assert.deepEqual(h.messages[1], m2);
      assert.deepEqual(await drain(h.peer, 'AGREE_UNIX_FD\r\n'.length).then((d) => d.bytes.toString()), 'AGREE_UNIX_FD\r\n');
      assert.deepEqual(h.closed, []);
    } finally {
      h.finish();
    }
  });

  it('frames messages split across reads, the 16-byte prefix included, in order', async () => {
    const h = new Harness().messagesMode();
    try {
      const msgs = [call(1, 'a'), call(2, 'b'.repeat(100)), call(3, 'c'.repeat(7))];
      const all = Buffer.concat(msgs);
      const cuts = [5, 17, 40, msgs[0]!.length + 3, msgs[0]!.length + msgs[1]!.length - 1, all.length];
      let from = 0;
      for (const to of cuts) {
        fs.writeSync(h.peer, all.subarray(from, to));
        from = to;
        await sleep(5);
      }
      await until('three messages', () => h.messages.length === 3);
      assert.deepEqual(h.messages, msgs);
      assert.deepEqual(h.closed, []);
    } finally {
      h.finish();
    }
  });

  it('frames many messages arriving in one read', async () => {
    const h = new Harness().messagesMode();
    try {
      const msgs = Array.from({ length: 50 }, (_, i) => call(i + 1, 'x'.repeat(i * 3)));
      fs.writeSync(h.peer, Buffer.concat(msgs));
      await until('fifty messages', () => h.messages.length === 50);
      assert.deepEqual(h.messages, msgs);
    } finally {
      h.finish();
    }
  });

  it('sizes big-endian messages by their own byte order', async () => {
    const h = new Harness().messagesMode();
    try {
      const be = [bigEndianPing(7, 0xdeadbeef), bigEndianPing(8, 1)];
      const le = call(9, 'after');
      fs.writeSync(h.peer, Buffer.concat([be[0]!, be[1]!, le]));
      await until('three messages', () => h.messages.length === 3);
      assert.deepEqual(h.messages, [...be, le]);
      const decoded = decodeMessage(h.messages[0]!);
      assert.equal(decoded.path, '/be');
      assert.equal(decoded.member, 'Ping');
      assert.deepEqual(decoded.body, [0xdeadbeef]);
    } finally {
      h.finish();
    }
  });

  it('reads a message larger than its read buffer, then keeps framing small ones', async () => {
    const h = new Harness().messagesMode();
    try {
      const big = call(1, Buffer.alloc(600 * 1024, 0xab));
      const small = [call(2, 's'), call(3, 't')];
      await writeAll(h.peer, Buffer.concat([small[0]!, big, small[1]!]));
      await until('three messages', () => h.messages.length === 3);
      assert.deepEqual(h.messages, [small[0], big, small[1]]);
      const again = call(4, 'u');
      fs.writeSync(h.peer, again);
      await until('a fourth message', () => h.messages.length === 4);
      assert.deepEqual(h.messages[3], again);
    } finally {
      h.finish();
    }
  });

  it('frames large messages one after another arriving in pieces, each whole, as its read buffers are reused', async () => {
    const h = new Harness().messagesMode();
    try {
      const msgs = [70000, 30000, 130000, 20000, 70000, 5000].map((n, i) => call(i + 1, Buffer.alloc(n, 0x21 + i)));
      const all = Buffer.concat(msgs);
      for (let from = 0; from < all.length; from += 8191) {
        fs.writeSync(h.peer, all.subarray(from, Math.min(from + 8191, all.length)));
        if (from % (8191 * 4) === 0) await sleep(1);
      }
      await until('six messages', () => h.messages.length === msgs.length);
      assert.deepEqual(h.messages, msgs);
    } finally {
      h.finish();
    }
  });

  it('queues received descriptors in order for the messages that declare them', async () => {
    const files = new TempFiles();
    const h = new Harness().messagesMode(true);
    try {
      const [f1, f2, f3] = [files.open(), files.open(), files.open()];
      assert.equal(sendWithFds(h.peer, call(1, 'two', 2), [f1.fd, f2.fd]), call(1, 'two', 2).length);
      fs.writeSync(h.peer, call(2, 'none'));
      sendWithFds(h.peer, call(3, 'one', 1), [f3.fd]);
      await until('three messages', () => h.messages.length === 3);
      assert.deepEqual(h.fdInodes, [[f1.ino, f2.ino], [f3.ino]]);
      assert.equal(h.stream.queuedFds, 0);
      for (const f of [f1, f2, f3]) closeFd(f.fd);
    } finally {
      h.finish();
      files.remove();
    }
  });

  it('takeFds takes nothing when fewer descriptors are queued than asked for', async () => {
    const files = new TempFiles();
    const before = openFds();
    const h = new Harness().messagesMode(true);
    const f = files.open();
    try {
      sendWithFds(h.peer, call(1, 'claims two', 2), [f.fd]);
      await until('the message', () => h.messages.length === 1);
      assert.deepEqual(h.fdInodes, ['missing']);
      assert.equal(h.stream.queuedFds, 1);
    } finally {
      h.finish();
      closeFd(f.fd);
      files.remove();
    }
    assert.equal(openFds(), before, 'the untaken descriptor was closed with the stream');
  });

  it('closes when descriptors arrive on a connection that did not negotiate them, closing them too', async () => {
    const files = new TempFiles();
    const before = openFds();
    const h = new Harness().messagesMode(false);
    const f = files.open();
    try {
      sendWithFds(h.peer, call(1, 'with fd', 1), [f.fd]);
      await until('the close', () => h.closed.length === 1);
      assert.match(h.closed[0]!, /without negotiating/);
      assert.deepEqual(h.messages, [], 'nothing from the offending read is delivered');
    } finally {
      h.finish();
      closeFd(f.fd);
      files.remove();
    }
    assert.equal(openFds(), before);
  });

  it('closes at startMessages when descriptors came during authentication and were not negotiated', async () => {
    const files = new TempFiles();
    const h = new Harness();
    const f = files.open();
    try {
      sendWithFds(h.peer, Buffer.from('\0AUTH EXTERNAL\r\n'), [f.fd]);
      await until('the auth bytes', () => h.auth.length === 1);
      assert.deepEqual(h.closed, []);
      assert.equal(h.stream.queuedFds, 1);
      h.stream.startMessages(Buffer.alloc(0), false);
      assert.equal(h.closed.length, 1);
      assert.match(h.closed[0]!, /without negotiating/);
    } finally {
      h.finish();
      closeFd(f.fd);
      files.remove();
    }
  });

  it('closes when more descriptors are queued than maxQueuedFds', async () => {
    const files = new TempFiles();
    const h = new Harness({ ...LIMITS, maxQueuedFds: 2 }).messagesMode(true);
    h.takeFds = false;
    const fs3 = [files.open(), files.open(), files.open()];
    try {
      sendWithFds(h.peer, call(1, 'two', 2), [fs3[0]!.fd, fs3[1]!.fd]);
      await until('the first message', () => h.messages.length === 1);
      assert.deepEqual(h.closed, [], 'two queued descriptors are within the limit');
      sendWithFds(h.peer, call(2, 'one', 1), [fs3[2]!.fd]);
      await until('the close', () => h.closed.length === 1);
      assert.match(h.closed[0]!, /more descriptors than the 2/);
    } finally {
      h.finish();
      for (const f of fs3) closeFd(f.fd);
      files.remove();
    }
  });

  it("counts held descriptors in a budget shared by streams; the read beyond the user's share closes its stream only", async () => {
    const files = new TempFiles();
    const before = openFds();
    const budget = new HeldBudget('descriptors of unfinished messages', { perUser: 3, total: 100 });
    const a = new Harness({ ...LIMITS, heldFds: budget.account(1000) }).messagesMode(true);
    const b = new Harness({ ...LIMITS, heldFds: budget.account(1000) }).messagesMode(true);
    const other = new Harness({ ...LIMITS, heldFds: budget.account(1001) }).messagesMode(true);
    const f = [files.open(), files.open(), files.open(), files.open(), files.open()];
    // A message's first bytes with its descriptors; the rest never comes.
    const unfinished = (n: number): Buffer => call(1, 'unfinished', n).subarray(0, 20);
    try {
      sendWithFds(a.peer, unfinished(2), [f[0]!.fd, f[1]!.fd]);
      await until("a's descriptors", () => a.stream.queuedFds === 2);
      assert.equal(budget.held(1000), 2);
      sendWithFds(other.peer, unfinished(2), [f[2]!.fd, f[3]!.fd]);
      await until("the other user's descriptors", () => other.stream.queuedFds === 2);
      sendWithFds(b.peer, unfinished(2), [f[3]!.fd, f[4]!.fd]);
      await until("b's close", () => b.closed.length === 1);
      assert.match(b.closed[0]!, /uid 1000\) would hold 4 descriptors of unfinished messages, more than the 3 one user may/);
      assert.deepEqual([a.closed, other.closed], [[], []], 'the other streams go on');
      assert.deepEqual([budget.held(1000), budget.held(1001), budget.held()], [2, 2, 4]);
      a.stream.close();
      assert.deepEqual([budget.held(1000), budget.held()], [0, 2], 'a closed stream holds nothing');
      other.stream.takeFds(2)!.forEach(closeFd);
      assert.equal(budget.held(), 0, 'taken descriptors are no longer held');
    } finally {
      for (const h of [a, b, other]) h.finish();
      for (const x of f) closeFd(x.fd);
      files.remove();
    }
    assert.equal(openFds(), before, 'every descriptor held was closed');
  });

  it('counts the announced length of a message still arriving, and closes the stream that would go beyond its share', async () => {
    const budget = new HeldBudget('bytes of unfinished messages', { perUser: 1000, total: 100_000 });
    const a = new Harness({ ...LIMITS, heldBytes: budget.account(1000) }).messagesMode(true);
    const b = new Harness({ ...LIMITS, heldBytes: budget.account(1000) }).messagesMode(true);
    const big = call(1, Buffer.alloc(600, 7));
    try {
      fs.writeSync(a.peer, call(2, 'whole'));
      await until('a whole message', () => a.messages.length === 1);
      assert.equal(budget.held(), 0, 'a message that came whole was never held');
      fs.writeSync(a.peer, big.subarray(0, 100));
      await until("a's unfinished message", () => budget.held(1000) === big.length);
      fs.writeSync(b.peer, big.subarray(0, 100));
      await until("b's close", () => b.closed.length === 1);
      assert.match(b.closed[0]!, new RegExp(`uid 1000\\) would hold ${2 * big.length} bytes of unfinished messages, more than the 1000 one user may`));
      fs.writeSync(a.peer, big.subarray(100));
      await until("a's message, whole", () => a.messages.length === 2);
      assert.equal(budget.held(), 0, 'a message no longer held once whole');
      assert.deepEqual(a.closed, []);
    } finally {
      a.finish();
      b.finish();
    }
  });

  it("refuses a message that would take a user's unsent bytes beyond its share, until its clients read", async () => {
    const budget = new HeldBudget('bytes not yet sent', { perUser: 400_000, total: 10_000_000 });
    const a = new Harness({ ...LIMITS, unsentBytes: budget.account(1000) }).messagesMode();
    const b = new Harness({ ...LIMITS, unsentBytes: budget.account(1000) }).messagesMode();
    const other = new Harness({ ...LIMITS, unsentBytes: budget.account(1001) }).messagesMode();
    const m = call(1, Buffer.alloc(60000, 1));
    try {
      // Neither peer reads: what the sockets do not take stays queued, counted for uid 1000.
      let refused = false;
      for (let i = 0; i < 100 && !refused; i++) refused = !(i % 2 === 0 ? a : b).stream.send(m);
      assert.ok(refused, 'a send was refused');
      const queued = a.stream.outgoingBytes + b.stream.outgoingBytes;
      assert.equal(budget.held(1000), queued);
      assert.ok(queued > 0 && queued + m.length > 400_000, `queued ${queued}`);
      assert.equal(other.stream.send(m), true, "another user's client is not affected");
      assert.equal(b.stream.send(m), false, 'the user is at its share');
      // a's peer reads until the stream has sent all it queued.
      await until("a's queue to empty", () => {
        while (recvWithFds(a.peer, 256 * 1024) !== undefined) { /* read what is there */ }
        return a.stream.outgoingBytes === 0;
      });
      assert.equal(budget.held(1000), b.stream.outgoingBytes, "a's bytes are no longer held");
      assert.equal(b.stream.send(m), true, 'room again');
      b.stream.close();
      assert.equal(budget.held(1000), 0, 'a closed stream holds nothing');
      assert.deepEqual([a.closed, other.closed], [[], []]);
    } finally {
      for (const h of [a, b, other]) h.finish();
    }
  });

  it('closes on a declared length over maxMessageBytes, judged from the prefix alone', async () => {
    const h = new Harness({ ...LIMITS, maxMessageBytes: 1024 }).messagesMode();
    try {
      const fits = call(1, 'y'.repeat(900));
      const tooBig = call(2, 'z'.repeat(1100));
      assert.ok(fits.length <= 1024 && tooBig.length > 1024);
      fs.writeSync(h.peer, Buffer.concat([fits, tooBig.subarray(0, 16)]));
      await until('the close', () => h.closed.length === 1);
      assert.deepEqual(h.messages, [fits]);
      assert.match(h.closed[0]!, new RegExp(`message of ${tooBig.length} bytes exceeds the 1024-byte limit`));
      assert.equal(fs.readSync(h.peer, Buffer.alloc(8)), 0, 'the peer sees the connection end');
    } finally {
      h.finish();
    }
  });

  it('closes on a prefix that is no dbus1 message', async () => {
    for (const garbage of [Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n'), Buffer.concat([call(1, 'v')]).fill(2, 3, 4)]) {
      const h = new Harness().messagesMode();
      try {
        fs.writeSync(h.peer, garbage);
        await until('the close', () => h.closed.length === 1);
        assert.match(h.closed[0]!, /invalid message header/);
        assert.deepEqual(h.messages, []);
      } finally {
        h.finish();
      }
    }
  });

  it('queues what the socket does not take, and delivers all of it in order once the peer reads', async () => {
    const files = new TempFiles();
    const before = openFds();
    const h = new Harness().messagesMode();
    const sent: Buffer[] = [];
    const fdIno = new Map<number, number>();
    // The sender's buffer is its own again when send returns (encoders reuse theirs): scribbled over at once.
    const send = (m: Buffer, fds?: number[]): void => {
      sent.push(Buffer.from(m));
      assert.equal(h.stream.send(m, fds), true);
      m.fill(0xee);
    };
    try {
      for (let i = 1; h.stream.outgoingBytes === 0; i++) {
        assert.ok(i < 200, 'the socket buffer never filled');
        send(call(i, Buffer.alloc(60000, i)));
      }
      // More behind the queue, some carrying descriptors the stream now owns.
      for (let i = 0; i < 6; i++) {
        const serial = sent.length + 1;
        if (i % 2 === 0) {
          const f = files.open();
          fdIno.set(sent.reduce((a, b) => a + b.length, 0), f.ino);
          send(call(serial, Buffer.alloc(30000, serial), 1), [f.fd]);
        } else {
          send(call(serial, Buffer.alloc(30000, serial)));
        }
      }
      assert.ok(h.stream.outgoingBytes > 0);
      const expected = Buffer.concat(sent);
      const got = await drain(h.peer, expected.length);
      assert.ok(got.bytes.equals(expected), 'every byte, in order');
      // Each batch of descriptors came with the read that brought its message's first byte.
      const arrived = got.fdsAt.map(({ from, to, fds }) => {
        const starts = [...fdIno.keys()].filter((s) => s >= from && s < to);
        assert.equal(starts.length, 1, `read [${from}, ${to}) holds the start of one fd-carrying message`);
        assert.equal(fds.length, 1);
        const ino = fs.fstatSync(fds[0]!).ino;
        closeFd(fds[0]!);
        return [starts[0], ino];
      });
      assert.deepEqual(arrived, [...fdIno.entries()]);
      await until('the queue to empty', () => h.stream.outgoingBytes === 0);
    } finally {
      h.finish();
      files.remove();
    }
    assert.equal(openFds(), before, 'the stream closed the descriptors it sent');
  });

  it('refuses a message, sending nothing and keeping no descriptor, when queued bytes would pass maxOutgoingBytes', async () => {
    const before = openFds();
    const h = new Harness({ ...LIMITS, maxOutgoingBytes: 100_000 }).messagesMode();
    try {
      let accepted = 0;
      let refusals = 0;
      for (let i = 1; refusals < 2; i++) {
        assert.ok(i < 200, 'send never refused');
        const m = call(i, Buffer.alloc(40000, i), 1);
        const queuedBefore = h.stream.outgoingBytes;
        const fd = fs.openSync('/dev/null', 'r');
        if (h.stream.send(m, [fd])) {
          accepted += m.length;
          continue;
        }
        refusals++;
        assert.ok(queuedBefore > 0 && queuedBefore + m.length > 100_000, `refused with ${queuedBefore} bytes queued`);
        assert.equal(h.stream.outgoingBytes, queuedBefore);
        assert.ok(fs.fstatSync(fd).isCharacterDevice(), 'a refused message leaves its descriptors open, to the caller');
        closeFd(fd);
      }
      const got = await drain(h.peer, accepted);
      for (const x of got.fdsAt) x.fds.forEach(closeFd);
      await until('the queue to empty', () => h.stream.outgoingBytes === 0);
      await sleep(10);
      assert.equal(recvWithFds(h.peer, 16), undefined, 'nothing of the refused messages went out');
      const late = call(1000, 'fits again');
      assert.equal(h.stream.send(late), true);
      assert.deepEqual((await drain(h.peer, late.length)).bytes, late);
    } finally {
      h.finish();
    }
    assert.equal(openFds(), before, 'the stream closed every descriptor it accepted');
  });

  it('reports the peer closing exactly once, and close() after that does nothing', async () => {
    const h = new Harness().messagesMode();
    closeFd(h.peer);
    await until('the close', () => h.closed.length === 1);
    assert.match(h.closed[0]!, /closed the connection/);
    assert.equal(h.stream.isClosed, true);
    h.stream.close('again');
    await sleep(20);
    assert.deepEqual(h.closed.length, 1);
    assert.equal(h.stream.send(call(1, 'late')), true, 'sending to a closed stream drops the message');
  });

  it('closes with the reason when sending to a peer that is gone (EPIPE), closing the descriptors', async () => {
    const before = openFds();
    const h = new Harness().messagesMode();
    closeFd(h.peer);
    const fd = fs.openSync('/dev/null', 'r');
    assert.equal(h.stream.send(call(1, 'nobody there', 1), [fd]), true);
    // The stream first reads what the client may have left, on a later turn.
    await until('closed', () => h.closed.length === 1);
    assert.match(h.closed[0]!, /EPIPE/);
    assert.equal(openFds(), before);
  });

  it('still delivers what a client sent before it went away, when an answer to it fails (EPIPE)', async () => {
    const h = new Harness().messagesMode();
    sendWithFds(h.peer, Buffer.concat([call(1, 'first'), call(2, 'last words')]), []);
    closeFd(h.peer);
    assert.equal(h.stream.send(call(3, 'to nobody'), []), true);
    await until('closed', () => h.closed.length === 1);
    assert.deepEqual(h.messages.map((m) => decodeMessage(m).body[0]), ['first', 'last words']);
  });

  it('close() closes the socket and every descriptor it holds, received or queued to send', async () => {
    const files = new TempFiles();
    const before = openFds();
    const h = new Harness().messagesMode(true);
    h.takeFds = false;
    const given: number[] = [];
    try {
      const a = files.open();
      const b = files.open();
      const c = files.open();
      sendWithFds(h.peer, call(1, 'in', 2), [a.fd, b.fd]);
      sendWithFds(h.peer, call(2, 'in', 1), [c.fd]);
      for (const x of [a, b, c]) closeFd(x.fd);
      await until('two messages', () => h.messages.length === 2);
      assert.equal(h.stream.queuedFds, 3);
      for (let i = 3; h.stream.outgoingBytes === 0; i++) {
        assert.ok(i < 200, 'the socket buffer never filled');
        h.stream.send(call(i, Buffer.alloc(60000)));
      }
      for (let i = 0; i < 3; i++) {
        const fd = fs.openSync('/dev/null', 'r');
        given.push(fd);
        assert.equal(h.stream.send(call(500 + i, 'out', 1), [fd]), true);
      }
      assert.ok(openFds() > before);
      h.stream.close();
      assert.deepEqual(h.closed, ['closed by the daemon']);
      for (const fd of given) assert.throws(() => fs.fstatSync(fd), { code: 'EBADF' });
    } finally {
      closeFd(h.peer);
      files.remove();
    }
    assert.equal(openFds(), before);
  });
});
