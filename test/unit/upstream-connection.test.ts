import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { encodeMessage, MessageFlag, MessageType, type Message } from '../../src/dbus1/message';
import {
  UpstreamCallError, UpstreamClosedError, UpstreamConnectError, UpstreamConnection, type UpstreamHandlers,
} from '../../src/dbus1/upstream-connection';
import { withThreadCredentials } from '../../src/os/thread-credentials';
import { closeFd, SOCK_CLOEXEC, SOCK_STREAM, socketpair } from '../../src/os/unix-socket';
import { busUnavailable, Proc, startBus, type BusKind, type LegacyBus } from '../helpers/legacy-bus';
import { requireOrSkip } from '../helpers/require';

const NOBODY = { uid: 65534, gid: 65534, groups: [] as number[] };
const ROOT_CREDS = (): { uid: number; gid: number; groups: number[] } => ({
  uid: process.geteuid!(), gid: process.getegid!(), groups: currentGroups(),
});
const isRoot = process.geteuid!() === 0;

/** The supplementary groups as the kernel shows them for the main thread. */
function currentGroups(): number[] {
  return taskIds(process.pid).groups;
}

function taskIds(tid: number): { euid: number; egid: number; groups: number[] } {
  const status = fs.readFileSync(`/proc/${process.pid}/task/${tid}/status`, 'utf8');
  const field = (name: string): string => status.match(new RegExp(`^${name}:\\s*(.*)$`, 'm'))![1]!.trim();
  return {
    euid: Number(field('Uid').split(/\s+/)[1]),
    egid: Number(field('Gid').split(/\s+/)[1]),
    groups: field('Groups') === '' ? [] : field('Groups').split(/\s+/).map(Number),
  };
}

/** A bus configuration any user may connect to and use, as the nobody cases need. */
function openConfig(dir: string, listen: string): string {
  const file = path.join(dir, 'open.conf');
  fs.writeFileSync(file, `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>${listen}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`);
  return file;
}

function tmpDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'upstream-'));
  // Other users (nobody) reach the socket through this directory.
  fs.chmodSync(dir, 0o755);
  return dir;
}

/** dbus-daemon on an address of our choosing (an abstract one, say), with the open configuration. */
async function startDaemon(dir: string, address: string): Promise<Proc> {
  const proc = new Proc('dbus-daemon', 'dbus-daemon', [
    `--config-file=${openConfig(dir, address)}`, `--address=${address}`, '--nofork', '--nopidfile', '--print-address',
  ]);
  await proc.waitForLine(/^unix:/, 20_000);
  return proc;
}

/** Handlers that record what they get. */
class Recorder implements UpstreamHandlers {
  readonly messages: { m: Message; fds: number[] }[] = [];
  readonly closes: string[] = [];
  private wake: (() => void) | undefined;
  message(m: Message, fds: number[]): void {
    this.messages.push({ m, fds });
    this.wake?.();
  }
  closed(reason: string): void {
    this.closes.push(reason);
    this.wake?.();
  }
  async waitFor<T>(what: string, find: () => T | undefined, ms = 5_000): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = find();
      if (found !== undefined) return found;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }
  message$(pred: (m: Message) => boolean): Promise<{ m: Message; fds: number[] }> {
    return this.waitFor('a message', () => this.messages.find((e) => pred(e.m)));
  }
}

const open: UpstreamConnection[] = [];
async function connect(address: string, extra: { as?: typeof NOBODY; label?: string } = {}): Promise<{ c: UpstreamConnection; r: Recorder }> {
  const r = new Recorder();
  const c = await UpstreamConnection.connect(address, { label: extra.label ?? 'test', handlers: r, ...(extra.as ? { as: extra.as } : {}) });
  open.push(c);
  return { c, r };
}

function readAll(fd: number): string {
  const b = Buffer.alloc(256);
  const n = fs.readSync(fd, b, 0, b.length, null);
  return b.toString('utf8', 0, n);
}

afterEach(() => {
  for (const c of open.splice(0)) c.close('test over');
});

describe('withThreadCredentials', () => {
  it('runs fn directly when the credentials are already the thread\'s', () => {
    assert.equal(withThreadCredentials(ROOT_CREDS(), () => 42), 42);
  });

  it('switches the main thread alone, and switches it back', async function () {
    requireOrSkip(this, isRoot, 'root (to act as another user)');
    const dir = tmpDir();
    fs.chmodSync(dir, 0o700);
    // The pool must exist before: threads started inside would inherit the switched credentials.
    await fs.promises.writeFile(path.join(dir, 'before'), 'w');
    const seen = withThreadCredentials({ uid: 65534, gid: 65534, groups: [4242] }, () => {
      // Work for libuv's pool while the main thread is someone else: it must run as root.
      const write = fs.promises.writeFile(path.join(dir, 'during'), 'x');
      const tasks = fs.readdirSync(`/proc/${process.pid}/task`).map(Number);
      return { write, main: taskIds(process.pid), others: tasks.filter((t) => t !== process.pid).map(taskIds) };
    });
    assert.deepEqual(seen.main, { euid: 65534, egid: 65534, groups: [4242] });
    assert.ok(seen.others.length >= 4, `libuv and V8 threads exist (${seen.others.length})`);
    for (const t of seen.others) assert.equal(t.euid, 0, 'another thread changed its uid');
    await seen.write;
    assert.equal(process.geteuid!(), 0);
    assert.equal(process.getegid!(), 0);
    assert.deepEqual(taskIds(process.pid).groups, ROOT_CREDS().groups);
    await fs.promises.writeFile(path.join(dir, 'after'), 'y');
    fs.rmSync(dir, { recursive: true });
  });

  it('restores the credentials when fn throws', function () {
    requireOrSkip(this, isRoot, 'root (to act as another user)');
    assert.throws(() => withThreadCredentials(NOBODY, () => {
      throw new Error('inside');
    }), /inside/);
    assert.equal(process.geteuid!(), 0);
    assert.equal(taskIds(process.pid).egid, 0);
  });
});

for (const kind of ['dbus-daemon', 'dbus-broker'] as BusKind[]) {
  describe(`UpstreamConnection against ${kind}`, function () {
    let dir: string;
    let bus: LegacyBus;

    before(async function () {
      requireOrSkip(this, busUnavailable(kind) === undefined && isRoot, busUnavailable(kind) ?? 'root');
      dir = tmpDir();
      bus = await startBus(kind, dir, { configFile: openConfig(dir, `unix:path=${path.join(dir, 'ignored.sock')}`) });
    });

    after(async () => {
      await bus?.stop();
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    it('says Hello: a unique name, the GUID, descriptor passing; NameAcquired comes after connect()', async () => {
      const { c, r } = await connect(bus.address);
      assert.match(c.uniqueName, /^:\d+\.\d+$/);
      assert.match(c.guid, /^[0-9a-f]{32}$/);
      assert.equal(c.unixFds, true);
      assert.equal(r.messages.length, 0, 'nothing reaches the handler before connect() resolved');
      const acquired = await r.message$((m) => m.member === 'NameAcquired');
      assert.deepEqual(acquired.m.body, [c.uniqueName]);
    });

    it('calls the driver: GetId', async () => {
      const { c } = await connect(bus.address);
      const reply = await c.callDriver('GetId');
      assert.equal(reply.type, MessageType.MethodReturn);
      assert.equal(reply.signature, 's');
      assert.match(reply.body[0] as string, /^[0-9a-f]{32}$/);
      assert.equal(reply.destination, c.uniqueName);
    });

    it('connects as the given user, and the bus reports that uid', async () => {
      // The socket file's permission check is the user's too, not root's.
      fs.chmodSync(bus.socketPath, 0o600);
      const denied = await connect(bus.address, { as: NOBODY }).then(() => undefined, (e: unknown) => e);
      assert.ok(denied instanceof UpstreamConnectError, String(denied));
      assert.match(denied.message, /EACCES/);
      fs.chmodSync(bus.socketPath, 0o666);
      const { c } = await connect(bus.address, { as: NOBODY });
      const reply = await c.callDriver('GetConnectionUnixUser', 's', [c.uniqueName]);
      assert.deepEqual(reply.body, [65534]);
      assert.equal(process.geteuid!(), 0);
      const { c: self } = await connect(bus.address);
      const mine = await self.callDriver('GetConnectionUnixUser', 's', [self.uniqueName]);
      assert.deepEqual(mine.body, [0]);
      // The pool threads are still root: a root-only file is still writable.
      const secret = path.join(dir, 'root-only');
      await fs.promises.writeFile(secret, 'a', { mode: 0o600 });
      fs.chmodSync(dir, 0o700);
      try {
        await fs.promises.writeFile(path.join(dir, 'root-only-2'), 'b');
      } finally {
        fs.chmodSync(dir, 0o755);
      }
    });

    it('rejects a call to a name nobody owns with ServiceUnknown', async () => {
      const { c } = await connect(bus.address);
      const err = await c.call({ destination: 'org.example.Nobody', path: '/', interface: 'org.example.X', member: 'Y', signature: '', body: [] })
        .then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof UpstreamCallError, `got ${String(err)}`);
      assert.equal(err.name, 'org.freedesktop.DBus.Error.ServiceUnknown');
      assert.notEqual(err.text, '');
    });

    it('hands signals and method calls from another connection to handlers.message', async () => {
      const a = await connect(bus.address, { label: 'a' });
      const b = await connect(bus.address, { label: 'b' });
      a.c.send({
        type: MessageType.Signal, flags: 0, serial: 0n, destination: b.c.uniqueName,
        path: '/org/example', interface: 'org.example.Test', member: 'Ping', signature: 's', body: ['hi'],
      });
      const sig = await b.r.message$((m) => m.member === 'Ping');
      assert.equal(sig.m.type, MessageType.Signal);
      assert.equal(sig.m.sender, a.c.uniqueName);
      assert.deepEqual(sig.m.body, ['hi']);
      const serial = a.c.send({
        type: MessageType.MethodCall, flags: MessageFlag.NoReplyExpected, serial: 0n, destination: b.c.uniqueName,
        path: '/org/example', interface: 'org.example.Test', member: 'Do', signature: 'u', body: [7],
      });
      const call = await b.r.message$((m) => m.member === 'Do');
      assert.equal(call.m.serial, serial);
      assert.deepEqual(call.m.body, [7]);
    });

    it('passes descriptors both ways', async () => {
      const a = await connect(bus.address, { label: 'a' });
      const b = await connect(bus.address, { label: 'b' });
      const [aEnd, aKeep] = socketpair(SOCK_STREAM | SOCK_CLOEXEC);
      fs.writeSync(aKeep, 'from a');
      const serial = a.c.send({
        type: MessageType.MethodCall, flags: 0, serial: 0n, destination: b.c.uniqueName,
        path: '/org/example', interface: 'org.example.Test', member: 'Take', signature: 'h', body: [0],
      }, [aEnd]);
      const got = await b.r.message$((m) => m.member === 'Take');
      assert.equal(got.m.unixFds, 1);
      assert.equal(got.fds.length, 1);
      assert.equal(readAll(got.fds[0]!), 'from a');
      closeFd(got.fds[0]!);
      closeFd(aKeep);

      const [bEnd, bKeep] = socketpair(SOCK_STREAM | SOCK_CLOEXEC);
      fs.writeSync(bKeep, 'from b');
      b.c.send({
        type: MessageType.MethodReturn, flags: 0, serial: 0n, replySerial: got.m.serial, destination: a.c.uniqueName,
        signature: 'h', body: [0],
      }, [bEnd]);
      const reply = await a.r.message$((m) => m.replySerial === serial);
      assert.equal(reply.fds.length, 1);
      assert.equal(readAll(reply.fds[0]!), 'from b');
      closeFd(reply.fds[0]!);
      closeFd(bKeep);
    });
  });
}

describe('UpstreamConnection faults and addresses', function () {
  let dir: string;
  const procs: Proc[] = [];
  const buses: LegacyBus[] = [];

  beforeEach(function () {
    requireOrSkip(this, busUnavailable('dbus-daemon') === undefined && isRoot, busUnavailable('dbus-daemon') ?? 'root');
    dir = tmpDir();
  });

  afterEach(async () => {
    for (const p of procs.splice(0)) await p.stop();
    for (const b of buses.splice(0)) await b.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('connects to an abstract address (as nobody too)', async () => {
    const name = `kdbus-cuse-upstream-test-${process.pid}`;
    procs.push(await startDaemon(dir, `unix:abstract=${name}`));
    const { c } = await connect(`unix:abstract=${name}`, { as: NOBODY });
    const reply = await c.callDriver('GetConnectionUnixUser', 's', [c.uniqueName]);
    assert.deepEqual(reply.body, [65534]);
  });

  it('tries the entries of an address list in order', async () => {
    const socket = path.join(dir, 's');
    procs.push(await startDaemon(dir, `unix:path=${socket}`));
    const { c } = await connect(`unix:path=${path.join(dir, 'missing')};unix:path=${socket}`);
    assert.match(c.uniqueName, /^:/);
  });

  it('calls handlers.closed once when the bus dies, and fails later sends and waiting calls', async () => {
    const socket = path.join(dir, 's');
    const proc = await startDaemon(dir, `unix:path=${socket}`);
    procs.push(proc);
    const { c, r } = await connect(`unix:path=${socket}`);
    const waiting = assert.rejects(
      c.call({ destination: c.uniqueName, path: '/', interface: 'org.example.X', member: 'NeverAnswered', signature: '', body: [] }),
      UpstreamClosedError,
    );
    await proc.stop();
    const reason = await r.waitFor('closed()', () => r.closes[0]);
    assert.match(reason, /the bus (closed|reset) the connection/);
    await waiting;
    await assert.rejects(c.callDriver('GetId'), UpstreamClosedError);
    assert.throws(() => c.send({
      type: MessageType.Signal, flags: 0, serial: 0n, path: '/', interface: 'org.example.X', member: 'Y', signature: '', body: [],
    }), UpstreamClosedError);
    c.close('again');
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(r.closes, [reason]);
  });

  it('calls handlers.closed once on close()', async () => {
    const socket = path.join(dir, 's');
    procs.push(await startDaemon(dir, `unix:path=${socket}`));
    const { c, r } = await connect(`unix:path=${socket}`);
    c.close('done with it');
    c.close('twice');
    assert.deepEqual(r.closes, ['done with it']);
    assert.equal(c.isClosed, true);
  });

  it('rejects a missing socket with ENOENT, naming the address', async () => {
    const address = `unix:path=${path.join(dir, 'nothing-here')}`;
    const err = await UpstreamConnection.connect(address, { label: 't', handlers: new Recorder() }).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof UpstreamConnectError, String(err));
    assert.match(err.message, /ENOENT/);
    assert.ok(err.message.includes(address));
  });

  it('rejects a REJECTED authentication, naming the address and the uid', async () => {
    const socket = path.join(dir, 's');
    const conf = openConfig(dir, `unix:path=${socket}`).replace('open.conf', 'anonymous.conf');
    fs.writeFileSync(conf, fs.readFileSync(openConfig(dir, `unix:path=${socket}`), 'utf8').replace('<auth>EXTERNAL</auth>', '<auth>ANONYMOUS</auth>'));
    const proc = new Proc('dbus-daemon', 'dbus-daemon', [`--config-file=${conf}`, '--nofork', '--nopidfile', '--print-address']);
    procs.push(proc);
    await proc.waitForLine(/^unix:/, 20_000);
    const address = `unix:path=${socket}`;
    const r = new Recorder();
    const err = await UpstreamConnection.connect(address, { label: 't', handlers: r, as: NOBODY }).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof UpstreamConnectError, String(err));
    assert.match(err.message, /rejected authentication as uid 65534 \(REJECTED ANONYMOUS\)/);
    assert.ok(err.message.includes(address));
    assert.equal(err.uid, 65534);
    assert.deepEqual(r.closes, [], 'closed() is for established connections');
    assert.equal(process.geteuid!(), 0);
  });

  it('says so when the bus admits the authentication but not the user', async () => {
    // The session configuration lets in only the user the bus runs as (root here); dbus-daemon
    // answers OK to EXTERNAL and then hangs up.
    const bus = await startBus('dbus-daemon', dir);
    buses.push(bus);
    const err = await UpstreamConnection.connect(bus.address, { label: 't', handlers: new Recorder(), as: NOBODY })
      .then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof UpstreamConnectError, String(err));
    assert.ok(err.message.includes(bus.address));
    assert.match(err.message, /as uid 65534: .*before answering Hello \(does its policy admit uid 65534\?\)/);
  });

  it('times out against a socket that never answers', async () => {
    // A listener nobody accepts from: connect() succeeds into the backlog, the SASL answer never comes.
    const socket = path.join(dir, 'mute');
    const server = net.createServer(() => undefined);
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    try {
      const started = Date.now();
      const err = await UpstreamConnection.connect(`unix:path=${socket}`, { label: 't', handlers: new Recorder(), timeoutMs: 300 })
        .then(() => undefined, (e: unknown) => e);
      assert.ok(err instanceof UpstreamConnectError, String(err));
      assert.match(err.message, /no answer within the 300 ms/);
      assert.ok(Date.now() - started < 2_000);
    } finally {
      server.close();
    }
  });

  /**
   * A fake bus that authenticates, answers Hello and then sends `after`: what a broken or
   * hostile bus might.
   */
  async function fakeBus(after: Buffer): Promise<{ address: string; server: net.Server }> {
    const socket = path.join(dir, 'fake');
    const server = net.createServer((s) => {
      s.once('data', () => {
        const hello = encodeMessage({
          type: MessageType.MethodReturn, flags: 0, serial: 1n, replySerial: 1n, signature: 's', body: [':1.7'],
        });
        s.write(Buffer.concat([Buffer.from(`OK ${'ab'.repeat(16)}\r\nAGREE_UNIX_FD\r\n`), hello, after]));
      });
    });
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    return { address: `unix:path=${socket}`, server };
  }

  const signal = (extra: Partial<Message>): Buffer => encodeMessage({
    type: MessageType.Signal, flags: 0, serial: 2n, path: '/a', interface: 'org.example.A', member: 'B', signature: '', body: [], ...extra,
  });

  it('closes on a malformed message from the bus, without throwing', async () => {
    const bad = signal({});
    bad[1] = 9; // no such message type
    const { address, server } = await fakeBus(bad);
    try {
      const { c, r } = await connect(address);
      assert.equal(c.uniqueName, ':1.7');
      assert.equal(c.guid, 'ab'.repeat(16));
      const reason = await r.waitFor('closed()', () => r.closes[0]);
      assert.match(reason, /malformed message from the bus: unknown message type 9/);
      assert.equal(r.messages.length, 0);
    } finally {
      server.close();
    }
  });

  it('closes when a message announces descriptors that did not come', async () => {
    const { address, server } = await fakeBus(signal({ unixFds: 1 }));
    try {
      const { r } = await connect(address);
      const reason = await r.waitFor('closed()', () => r.closes[0]);
      assert.match(reason, /announces 1 descriptors, only 0 arrived/);
      assert.equal(r.messages.length, 0);
    } finally {
      server.close();
    }
  });
});
