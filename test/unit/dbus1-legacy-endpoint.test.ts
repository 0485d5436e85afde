/**
 * The legacy endpoint's hold on connections that have not said Hello: the handshake
 * timeout runs until Hello (as dbus-daemon's auth_timeout), and a user's incomplete
 * connections beyond maxIncompletePerUser close the oldest. Real sockets on an in-process
 * endpoint of an in-process bus.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { type LegacyLimits } from '../../src/dbus1/legacy-client';
import { LegacyEndpoint } from '../../src/dbus1/legacy-endpoint';
import { encodeMessage, MessageType } from '../../src/dbus1/message';
import { UpstreamConnection } from '../../src/dbus1/upstream-connection';
import { TestBus } from '../helpers/kdbus-client';
import { requireOrSkip } from '../helpers/require';
import type { HeldShares } from '../../src/os/held-budget';
import { spawn } from 'node:child_process';

const AUTH = Buffer.from(`\0AUTH EXTERNAL ${Buffer.from(String(process.getuid!())).toString('hex')}\r\nBEGIN\r\n`, 'latin1');
const HELLO = encodeMessage({
  type: MessageType.MethodCall, flags: 0, serial: 1n, path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus',
  member: 'Hello', destination: 'org.freedesktop.DBus', signature: '', body: [],
});

interface Client {
  sock: net.Socket;
  received: () => string;
  /** Resolves with the ms from connecting to the endpoint's closing it. */
  closed: Promise<number>;
  isClosed: () => boolean;
}

function connect(socketPath: string, ...chunks: Buffer[]): Promise<Client> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    let data = '';
    let ended = false;
    const sock = net.createConnection(socketPath);
    const closed = new Promise<number>((done) => sock.on('close', () => {
      ended = true;
      done(Date.now() - started);
    }));
    sock.on('data', (d) => (data += d.toString('latin1')));
    sock.on('error', () => undefined);
    sock.once('connect', () => {
      for (const c of chunks) sock.write(c);
      resolve({ sock, received: () => data, closed, isClosed: () => ended });
    });
    sock.once('error', reject);
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('dbus1 LegacyEndpoint: connections that have not said Hello', function () {
  this.timeout(10_000);
  let dir: string;
  let tb: TestBus;
  let endpoint: LegacyEndpoint;
  let socketPath: string;
  const clients: Client[] = [];

  function start(limits: Partial<LegacyLimits>, connectionDescriptors?: HeldShares): void {
    endpoint = new LegacyEndpoint(tb.bus, { addresses: [`unix:path=${socketPath}`], serviceDirs: [], limits, connectionDescriptors });
    endpoint.start();
  }

  async function client(...chunks: Buffer[]): Promise<Client> {
    const c = await connect(socketPath, ...chunks);
    clients.push(c);
    return c;
  }

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'legacy-endpoint-'));
    socketPath = path.join(dir, 'bus');
    tb = await TestBus.create();
  });

  afterEach(() => {
    for (const c of clients.splice(0)) c.sock.destroy();
    endpoint.stop();
    tb.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('closes a connection that authenticated but did not say Hello in time, and keeps one that did', async () => {
    start({ authTimeoutMs: 300 });
    const silent = await client(AUTH);
    const registered = await client(AUTH, HELLO);
    const ms = await silent.closed;
    assert.ok(ms >= 250, `closed after ${ms} ms, before the timeout`);
    assert.match(silent.received(), /^OK [0-9a-f]{32}\r\n$/, 'authenticated, then closed');
    await sleep(300);
    assert.equal(registered.isClosed(), false, 'a connection that said Hello stays');
    assert.match(registered.received(), /NameAcquired/);
  });

  it("closes a user's oldest incomplete connection when one more comes, and counts Hello'd ones no more", async () => {
    start({ maxIncompletePerUser: 2 });
    const first = await client();
    await sleep(50);
    const second = await client(AUTH);
    await sleep(50);
    assert.deepEqual([first.isClosed(), second.isClosed()], [false, false]);
    const third = await client();
    await first.closed;
    await sleep(100);
    assert.deepEqual([second.isClosed(), third.isClosed()], [false, false], 'only the oldest goes');
    second.sock.write(HELLO);
    await sleep(100);
    const fourth = await client();
    await sleep(100);
    assert.deepEqual([second.isClosed(), third.isClosed(), fourth.isClosed()], [false, false, false], 'two incomplete and one registered');
    assert.equal(endpoint.clientCount, 3);
  });

  it("refuses a user more connections than its share of the daemon's descriptors, and no other user", async function () {
    requireOrSkip(this, process.getuid!() === 0, 'root, to connect as another uid');
    fs.chmodSync(dir, 0o755);
    start({}, { perUser: 2, total: 100 });
    const first = await client(AUTH, HELLO);
    const second = await client(AUTH, HELLO);
    const third = await client(AUTH, HELLO);
    const closedAfter = await Promise.race([third.closed, sleep(2000).then(() => -1)]);
    assert.notEqual(closedAfter, -1, "the user's third connection stays open");
    assert.equal(third.received(), '', 'closed before the handshake');
    assert.deepEqual([first.isClosed(), second.isClosed()], [false, false]);
    // Another user authenticates meanwhile.
    const other = await new Promise<string>((resolve) => {
      const script = [
        'import os, socket, sys',
        's = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])',
        "s.sendall(b'\\0AUTH EXTERNAL ' + str(os.getuid()).encode().hex().encode() + b'\\r\\n')",
        'print(s.recv(64)[:3])',
      ].join('\n');
      const child = spawn('python3', ['-c', script, socketPath], { uid: 65534, gid: 65534 });
      let out = '';
      child.stdout.on('data', (b: Buffer) => (out += b.toString()));
      child.on('close', () => resolve(out.trim()));
    });
    assert.equal(other, "b'OK '");
    first.sock.destroy();
    await first.closed;
    await sleep(50);
    const fourth = await client(AUTH, HELLO);
    await sleep(100);
    assert.equal(fourth.isClosed(), false, 'a connection that closed makes room');
    assert.match(fourth.received(), /NameAcquired/);
  });
});

describe('dbus1 LegacyEndpoint: an eavesdropper owns its monitor connection', function () {
  this.timeout(10_000);
  let dir: string;
  let tb: TestBus;
  let endpoint: LegacyEndpoint;
  let client: UpstreamConnection | undefined;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'legacy-eavesdrop-'));
    tb = await TestBus.create();
    endpoint = new LegacyEndpoint(tb.bus, { addresses: [`unix:path=${path.join(dir, 'bus')}`], serviceDirs: [] });
    endpoint.start();
  });

  afterEach(() => {
    client?.close();
    endpoint.stop();
    tb.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('opens a kdbus monitor with the first eavesdrop rule and closes it with the last, or with the client', async () => {
    let closed!: () => void;
    const gone = new Promise<void>((r) => (closed = r));
    client = await UpstreamConnection.connect(`unix:path=${path.join(dir, 'bus')}`, {
      label: 'eavesdropper', handlers: { message: () => undefined, closed: () => closed() },
    });
    const c = client;
    const match = async (member: 'AddMatch' | 'RemoveMatch', rule: string): Promise<number> => {
      await c.callDriver(member, 's', [rule]);
      return tb.bus.monitors.size;
    };
    assert.equal(await match('AddMatch', "member='Plain'"), 0);
    assert.equal(await match('AddMatch', "eavesdrop='true',member='A'"), 1);
    assert.equal(await match('AddMatch', "eavesdrop='true',member='B'"), 1);
    assert.equal(await match('RemoveMatch', "eavesdrop='true',member='A'"), 1);
    assert.equal(await match('RemoveMatch', "eavesdrop='true',member='B'"), 0);
    assert.equal(await match('AddMatch', "eavesdrop='true'"), 1);
    // The client hangs up: its end of the socket goes, and the endpoint sees it as a hang-up.
    c.close();
    await gone;
    for (let i = 0; i < 50 && tb.bus.monitors.size > 0; i++) await sleep(10);
    assert.equal(tb.bus.monitors.size, 0);
  });
});
