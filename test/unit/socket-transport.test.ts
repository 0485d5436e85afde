/**
 * The socket transport's daemon side over real sockets, driven by a client written from
 * docs/socket-protocol.md: OPEN and access, HELLO with the pool handed over as a read-only
 * memfd, SEND/RECV with prefetched and fetched memory, files both ways, WAKE, teardown,
 * and garbage from a client.
 */
import assert from 'node:assert/strict';
import { requireOrSkip } from '../helpers/require';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Attach, Cmd, HelloFlags, ItemType, KDBUS_MATCH_ID_ANY, KDBUS_PAYLOAD_DBUS, Limits, Off } from '../../src/abi/constants';
import { Errno } from '../../src/abi/errno';
import { ItemWriter } from '../../src/abi/items';
import { Daemon } from '../../src/daemon/daemon';
import { defaults } from '../../src/config/config';
import { SocketTransport } from '../../src/transport/socket-transport';
import { SESSION_DESCRIPTORS } from '../../src/transport/socket-session';
import { FrameType, OPEN_FEATURE_HEADS } from '../../src/transport/frames';
import { memfd_create } from '../../src/os/libc';
import { fcntl } from '../../src/os/libc';
import { ProtocolClient } from '../helpers/socket-client';
import { startSocketDaemon, type SocketDaemon } from '../helpers/socket-daemon';
import { apply, Peer, readPool } from '../helpers/socket-peer';
import { closeFd, SOCK_STREAM, socketpair } from '../../src/os/unix-socket';
import { spawn, spawnSync } from 'node:child_process';

const F_ADD_SEALS = 1033;
const ALL_SEALS = 0xf;

/** A policy-holder HELLO for `name`: only the bus owner or a privileged opener may make one. */
function policyHolderHello(name: string): Buffer {
  const w = new ItemWriter();
  w.u64(0).u64(HelloFlags.POLICY_HOLDER).u64(0).u64(0).u64(0).u64(0).u64(0).u64(16n * 1024n * 1024n).u64(0).u64(0).zeros(16);
  w.string(ItemType.NAME, name);
  const b = Buffer.from(w.finish());
  b.writeBigUInt64LE(BigInt(b.length), 0);
  return b;
}

/** Whether this machine lets uid 65534 make a user namespace (unshare -r). */
function userNamespacesUsable(): boolean {
  if (process.getuid!() !== 0) return false;
  return spawnSync('unshare', ['-r', 'true'], { uid: 65534, gid: 65534 }).status === 0;
}

describe('socket transport (daemon side)', function () {
  this.timeout(20000);
  let running: SocketDaemon;
  let dir: string;
  let daemon: Daemon;
  let sock: string;
  let root: string;
  const bus = `${process.getuid!()}-sockbus`;

  beforeEach(async () => {
    running = await startSocketDaemon('kdbus-sock', bus, { socketDir: 'run' });
    ({ dir, daemon, sock, root } = running);
  });

  afterEach(async () => {
    await running.stop();
  });

  it('keeps placeholder nodes with kdbus modes and removes them at stop', async () => {
    assert.equal(fs.statSync(path.join(root, 'control')).mode & 0o777, 0o666);
    assert.equal(fs.statSync(path.join(root, bus)).mode & 0o777, 0o555);
    assert.equal(fs.statSync(path.join(root, bus, 'bus')).mode & 0o777, 0o666);
    assert.equal(fs.statSync(sock).isSocket(), true);
    await daemon.stop();
    assert.equal(fs.existsSync(path.join(root, 'control')), false);
    assert.equal(fs.existsSync(sock), false);
  });

  it("makes its buses with the creator's metadata for BUS_CREATOR_INFO, as systemd made them", async () => {
    const a = await Peer.connect(sock, bus);
    const cmd = Buffer.alloc(56);
    cmd.writeBigUInt64LE(56n, 0);
    cmd.writeBigUInt64LE(Attach.ALL, Off.info_cmd.attach_flags);
    const r = await a.client.ioctl(Cmd.BUS_CREATOR_INFO, 0x80000n, [{ address: 0x80000n, data: cmd }]);
    assert.equal(r.errno, 0);
    const out = apply(cmd, 0x80000n, r);
    const info = readPool(a.pool, Number(out.readBigUInt64LE(Off.info_cmd.offset)), Number(out.readBigUInt64LE(Off.info_cmd.info_size)));
    const items = new Map<number, Buffer>();
    for (let at = 24; at + 16 <= info.length; at += (Number(info.readBigUInt64LE(at)) + 7) & ~7) {
      const size = Number(info.readBigUInt64LE(at));
      items.set(Number(info.readBigUInt64LE(at + 8)), info.subarray(at + 16, at + size));
    }
    assert.equal(items.get(ItemType.MAKE_NAME)!.toString('latin1'), `${bus}\0`);
    assert.equal(items.get(ItemType.CREDS)!.readBigUInt64LE(0), BigInt(process.getuid!()), 'the creator is the daemon');
    assert.equal(items.get(ItemType.PIDS)!.readBigUInt64LE(0), BigInt(process.pid));
    for (const t of [ItemType.PID_COMM, ItemType.EXE, ItemType.CMDLINE, ItemType.CAPS]) assert.ok(items.has(t), `item ${t}`);
    a.close();
  });

  it('answers OPEN of a missing node with ENOENT', async () => {
    const c = ProtocolClient.connect(sock);
    assert.equal((await c.open(`${bus}/nope`)).errno, Errno.ENOENT);
    c.close();
  });

  it('carries HELLO, SEND and RECV, with the pool as a read-only memfd', async () => {
    const a = await Peer.connect(sock, bus);
    const b = await Peer.connect(sock, bus);
    assert.ok(b.id > a.id);
    assert.throws(() => fs.writeSync(a.pool, Buffer.from('x'), 0, 1, 0), /EBADF/);
    assert.equal((await a.send(b.id, 'over the socket')).errno, 0);
    const { msg } = await b.recv();
    assert.ok(msg);
    assert.equal(msg.readBigUInt64LE(Off.msg.src_id), a.id);
    assert.ok(msg.includes(Buffer.from('over the socket')));
    assert.ok(b.client.events.includes(FrameType.WAKE), 'the receiver was woken');
    assert.equal((await b.recv()).r.errno, Errno.EAGAIN);
    a.close();
    b.close();
  });

  it('says in HELLO\'s RESULT that its WAKEs are exact, and runs an IOCTL with seq 0 without answering it', async () => {
    const a = await Peer.connect(sock, bus);
    const b = await Peer.connect(sock, bus);
    assert.equal((await a.send(b.id, 'to be freed')).errno, 0);
    const hello = Buffer.alloc(96);
    hello.writeBigUInt64LE(96n, 0);
    hello.writeBigUInt64LE(HelloFlags.ACCEPT_FD, 8);
    hello.writeBigUInt64LE(16n * 1024n * 1024n, Off.hello.pool_size);
    const c = ProtocolClient.connect(sock);
    assert.equal((await c.open(`${bus}/bus`)).errno, 0);
    const r = await c.ioctl(Cmd.HELLO, 0x10000n, [{ address: 0x10000n, data: hello }]);
    assert.equal(r.errno, 0);
    assert.equal(c.lastFlags, 3, 'POOL and EXACT_WAKES');
    fs.closeSync(r.pool!);
    c.close();

    const got = Buffer.alloc(64);
    got.writeBigUInt64LE(64n, 0);
    const recv = await b.client.ioctl(Cmd.RECV, 0x60000n, [{ address: 0x60000n, data: got }]);
    const offset = apply(got, 0x60000n, recv).readBigUInt64LE(Off.recv.msg_offset);
    const free = Buffer.alloc(32);
    free.writeBigUInt64LE(32n, 0);
    free.writeBigUInt64LE(offset, 24);
    b.client.ioctlUnanswered(Cmd.FREE, 0x20000n, [{ address: 0x20000n, data: free }]);
    // The next answer on this socket is the next request's: the FREE ran, and said nothing.
    const again = await b.client.ioctl(Cmd.FREE, 0x20000n, [{ address: 0x20000n, data: free }]);
    assert.equal(again.errno, Errno.ENXIO, 'the slice was freed by the unanswered FREE');
    a.close();
    b.close();
  });

  it('names the next message in a HEAD to a shim that asked, and takes it off the queue on an unanswered RECV', async () => {
    const a = await Peer.connect(sock, bus);
    const b = await Peer.connect(sock, bus, OPEN_FEATURE_HEADS);
    assert.equal((await a.send(b.id, 'first')).errno, 0);
    assert.equal((await a.send(b.id, 'second')).errno, 0);
    assert.equal(await b.client.event(), FrameType.HEAD, 'readiness comes as a HEAD');
    assert.equal(await b.client.event(), FrameType.HEAD);
    const alone = b.client.heads[0]!;
    const first = b.client.heads[1]!;
    assert.equal(alone.last, true, 'the first message was alone when the HEAD went out');
    assert.deepEqual({ ...first, last: true }, alone, 'the second SEND outdated that: the same HEAD, without LAST');
    assert.equal(first.seq, 0n, 'no RECV was taken before it');
    const msg1 = readPool(b.pool, Number(first.offset), Number(first.size));
    assert.equal(msg1.readBigUInt64LE(Off.msg.src_id), a.id);
    assert.ok(msg1.includes(Buffer.from('first')), 'the HEAD names the oldest message');
    // kdbus's RECV reports the slice: the message, then its 5-byte vector padded to 8.
    assert.equal(first.size, ((msg1.readBigUInt64LE(0) + 7n) & ~7n) + 8n);

    b.client.ioctlUnanswered(Cmd.RECV, 0x60000n, []);
    assert.equal(await b.client.event(), FrameType.HEAD, 'after the shim\'s RECV, the next message is named');
    const second = b.client.heads[2]!;
    assert.equal(second.seq, 1n, 'one RECV was taken before it');
    assert.equal(second.last, true, 'and it is alone');
    const { r, msg } = await b.recv();
    assert.equal(r.errno, 0);
    assert.ok(msg!.includes(Buffer.from('second')), 'the unanswered RECV took the first message');
    const got = apply(Buffer.alloc(64), 0x60000n, r);
    assert.equal(got.readBigUInt64LE(Off.recv.msg_offset), second.offset, 'a real RECV reports the offset the HEAD named');
    assert.equal(got.readBigUInt64LE(Off.recv.msg_msg_size), second.size, 'and its size');
    assert.equal((await b.recv()).r.errno, Errno.EAGAIN);
    await b.free(first.offset);

    const memfd = memfd_create('head-test', 2);
    fs.writeSync(memfd, Buffer.from('hello'));
    assert.equal(fcntl(memfd, F_ADD_SEALS, ALL_SEALS), 0);
    assert.equal((await a.send(b.id, 'with a file', { memfd })).errno, 0);
    fs.closeSync(memfd);
    assert.equal(await b.client.event(), FrameType.WAKE, 'a message with files to install is announced by a bare WAKE');
    a.close();
    b.close();
  });

  it('withdraws a HEAD when messages are lost after it, and still takes the message the shim may have had', async () => {
    const a = await Peer.connect(sock, bus);
    const b = await Peer.connect(sock, bus, OPEN_FEATURE_HEADS);
    assert.equal(await b.matchId(ItemType.ID_ADD, KDBUS_MATCH_ID_ANY), 0);
    assert.equal((await a.send(b.id, 'announced')).errno, 0);
    assert.equal(await b.client.event(), FrameType.HEAD);
    // ID_ADD notifications fill b's queue for the kernel's messages; the next one is lost.
    const peers: Peer[] = [];
    for (let i = 0; i <= Limits.CONN_MAX_MSGS; i++) peers.push(await Peer.connect(sock, bus));
    assert.equal(await b.client.event(), FrameType.HEAD, 'the first notification makes the message not the only one');
    assert.deepEqual(b.client.heads.map((h) => h.last), [true, false]);
    assert.equal(await b.client.event(), FrameType.WAKE, 'a bare WAKE withdraws the HEAD');
    b.client.ioctlUnanswered(Cmd.RECV, 0x60000n, []);
    const { r, msg } = await b.recv();
    assert.equal(r.errno, 0);
    const got = apply(Buffer.alloc(64), 0x60000n, r);
    assert.equal(got.readBigUInt64LE(Off.recv.dropped_msgs), 1n, 'the RECV after the loss reports it');
    assert.equal(msg!.readBigUInt64LE(64 + 8), BigInt(ItemType.ID_ADD), 'the announced message was taken by the unanswered RECV');
    for (const p of peers) p.close();
    a.close();
    b.close();
  });

  it('disconnects a client whose unanswered RECV no HEAD allowed', async () => {
    const a = await Peer.connect(sock, bus);
    const b = await Peer.connect(sock, bus);
    assert.equal((await a.send(b.id, 'only a WAKE for this one')).errno, 0);
    assert.equal(await b.client.event(), FrameType.WAKE, 'no HEAD for a client that did not ask');
    b.client.ioctlUnanswered(Cmd.RECV, 0x60000n, []);
    await assert.rejects(b.recv(), /daemon closed the connection/);
    assert.equal((await a.send(a.id, 'the daemon still serves others')).errno, 0);
    a.close();
    b.close();
  });

  it('disconnects a client whose unanswered IOCTL is neither FREE nor RECV', async () => {
    const a = await Peer.connect(sock, bus);
    const info = Buffer.alloc(56);
    info.writeBigUInt64LE(56n, 0);
    info.writeBigUInt64LE(a.id, 24);
    a.client.ioctlUnanswered(Cmd.CONN_INFO, 0x20000n, [{ address: 0x20000n, data: info }]);
    await assert.rejects(a.recv(), /daemon closed the connection/);
    a.close();
  });

  it('disconnects a client that sends READY on a socket that is no side channel', async () => {
    const a = await Peer.connect(sock, bus);
    const b = await Peer.connect(sock, bus);
    const [x, y] = socketpair(SOCK_STREAM);
    try {
      await assert.rejects(b.client.ready(x), /daemon closed the connection/);
    } finally {
      closeFd(x);
      closeFd(y);
    }
    assert.equal((await a.send(a.id, 'the daemon still serves others')).errno, 0);
    a.close();
    b.close();
  });

  it('fetches memory that was not prefetched, and reports EFAULT for unreadable memory', async () => {
    const a = await Peer.connect(sock, bus);
    const b = await Peer.connect(sock, bus);
    assert.equal((await a.send(b.id, 'fetched', { prefetchMsg: false })).errno, 0);
    assert.ok((await b.recv()).msg!.includes(Buffer.from('fetched')));
    a.client.memory = () => undefined;
    const cmd = Buffer.alloc(56);
    cmd.writeBigUInt64LE(56n, 0);
    cmd.writeBigUInt64LE(0x90000n, Off.send.msg_address);
    const r = await a.client.ioctl(Cmd.SEND, 0x30000n, [{ address: 0x30000n, data: cmd }]);
    assert.equal(r.errno, Errno.EFAULT);
    a.close();
    b.close();
  });

  it('carries a payload of several large vectors, one of them fetched, byte for byte', async () => {
    const a = await Peer.connect(sock, bus);
    const b = await Peer.connect(sock, bus);
    const vectors = [
      { address: 0x50000n, data: Buffer.alloc(96, 0x11) },
      { address: 0x80000n, data: Buffer.from(Array.from({ length: 70000 }, (_, i) => (i * 31) & 0xff)) },
      { address: 0x100000n, data: Buffer.alloc(5003, 0x5a) },
    ];
    const w = new ItemWriter();
    w.u64(0).u64(0).u64(0).u64(b.id).u64(0).u64(KDBUS_PAYLOAD_DBUS).u64(1n).u64(0n);
    for (const v of vectors) w.itemU64(ItemType.PAYLOAD_VEC, BigInt(v.data.length), v.address);
    const msg = Buffer.from(w.finish());
    msg.writeBigUInt64LE(BigInt(msg.length), 0);
    const cmd = Buffer.alloc(56);
    cmd.writeBigUInt64LE(56n, 0);
    cmd.writeBigUInt64LE(0x40000n, Off.send.msg_address);
    // The last vector is not sent along: the daemon asks for it, and runs the SEND again.
    const fetched = vectors[2]!;
    a.client.memory = (address, length) => (address === fetched.address && length === fetched.data.length ? fetched.data : undefined);
    const segs = [{ address: 0x30000n, data: cmd }, { address: 0x40000n, data: msg }, vectors[0]!, vectors[1]!];
    assert.equal((await a.client.ioctl(Cmd.SEND, 0x30000n, segs)).errno, 0);
    const got = (await b.recv()).msg!;
    const expected = Buffer.concat(vectors.map((v) => v.data));
    const at = got.indexOf(vectors[0]!.data);
    assert.ok(at > 0 && at % 8 === 0, 'the payload follows the items, 8-aligned');
    assert.deepEqual(got.subarray(at, at + expected.length), expected);
    a.close();
    b.close();
  });

  it('fetches the struct of BUS_MAKE, whose node creation completes asynchronously', async () => {
    const c = ProtocolClient.connect(sock);
    assert.equal((await c.open('control')).errno, 0);
    const w = new ItemWriter();
    w.u64(0).u64(2n).u64(0);
    w.itemU64(ItemType.BLOOM_PARAMETER, 64n, 1n);
    w.string(ItemType.MAKE_NAME, `${process.getuid!()}-fetched`);
    const make = Buffer.from(w.finish());
    make.writeBigUInt64LE(BigInt(make.length), 0);
    c.memory = (a, l) => (a >= 0xa0000n && a + BigInt(l) <= 0xa0000n + BigInt(make.length) ? make.subarray(Number(a - 0xa0000n), Number(a - 0xa0000n) + l) : undefined);
    assert.equal((await c.ioctl(Cmd.BUS_MAKE, 0xa0000n, [])).errno, 0);
    assert.ok(daemon.domain.buses.has(`${process.getuid!()}-fetched`));
    c.close();
  });

  it('passes a sealed memfd from sender to receiver', async () => {
    const a = await Peer.connect(sock, bus);
    const b = await Peer.connect(sock, bus);
    const m = memfd_create('payload', 3);
    fs.writeSync(m, Buffer.from('sealed'));
    assert.equal(fcntl(m, F_ADD_SEALS, ALL_SEALS), 0);
    assert.equal((await a.send(b.id, 'with memfd', { memfd: m })).errno, 0);
    fs.closeSync(m);
    const reserveFd = fs.openSync('/dev/null', 'r');
    const { r, msg } = await b.recv([reserveFd]);
    assert.equal(r.fds.length, 1);
    assert.equal(fs.readFileSync(`/proc/self/fd/${r.fds[0]}`, 'utf8'), 'sealed');
    const memfdItemFd = msg!.indexOf(Buffer.from([0x04, 0, 0, 0, 0, 0, 0, 0]), 64);
    assert.ok(memfdItemFd > 0);
    assert.equal(msg!.readInt32LE(memfdItemFd + 8 + 16), reserveFd, 'the pool names the reserved number');
    fs.closeSync(r.fds[0]!);
    fs.closeSync(reserveFd);
    a.close();
    b.close();
  });

  it('stops reading a client that does not read its answers, and answers every request once it does', async () => {
    const c = ProtocolClient.connect(sock);
    assert.equal((await c.open('control')).errno, 0);
    // Each is answered at once (ENOTTY); a daemon that kept reading would queue the answers
    // it cannot send, and the client could go on writing for as long as it liked.
    const max = 200_000;
    const seqs = await c.pipeline(0xdead, max);
    assert.ok(seqs.length < max, `the daemon took all ${max} requests of a client that read none of the answers`);
    const other = await Peer.connect(sock, bus);
    assert.equal((await other.recv()).r.errno, Errno.EAGAIN, 'others are served meanwhile');
    for (const seq of seqs) assert.equal((await c.result(seq)).errno, Errno.ENOTTY);
    assert.equal((await c.ioctl(0xdead, 0n, [])).errno, Errno.ENOTTY, 'the session goes on');
    other.close();
    c.close();
  });

  it('closes a client whose commands waiting for memory hold more than its user may, and counts what they free', async () => {
    const small = fs.mkdtempSync(path.join(os.tmpdir(), 'kdbus-sock-held-'));
    const smallSock = path.join(small, 'kdbus.sock');
    const smallRoot = path.join(small, 'kdbus');
    const d = new Daemon({ ...defaults(), buses: [bus], socket: smallSock, kdbusRoot: smallRoot });
    const heldBytes = { perUser: 64 * 1024, total: 1024 * 1024 };
    d.addTransport(new SocketTransport({ socketPath: smallSock, kdbusRoot: smallRoot, placeholders: true, heldBytes }));
    await d.start();
    try {
      const c = ProtocolClient.connect(smallSock);
      assert.equal((await c.open(`${bus}/bus`)).errno, 0);
      // HELLOs whose struct did not come along: each waits for memory the client never
      // sends, keeping the 20 KiB it did send.
      const piece = { address: 0x100000n, data: Buffer.alloc(20 * 1024) };
      const waitForMemory = async (): Promise<bigint> => {
        const seq = c.ioctlNoWait(Cmd.HELLO, 0x1000n, [piece]);
        assert.deepEqual(await c.nextFrame(), { type: FrameType.FETCH, seq });
        return seq;
      };
      const first = await waitForMemory();
      await waitForMemory();
      await waitForMemory();
      // A command that ends gives its memory back: the first fails (EFAULT) and a fourth fits.
      c.refuseFetch(first);
      assert.deepEqual(await c.nextFrame(), { type: FrameType.RESULT, seq: first });
      await waitForMemory();
      c.ioctlNoWait(Cmd.HELLO, 0x1000n, [piece]);
      await assert.rejects(c.nextFrame(), /daemon closed the connection/);
      const other = await Peer.connect(smallSock, bus);
      assert.equal((await other.recv()).r.errno, Errno.EAGAIN, 'others of the user are served');
      other.close();
      c.close();
    } finally {
      await d.stop();
      fs.rmSync(small, { recursive: true, force: true });
    }
  });

  it("refuses a user more open files than its share of the daemon's descriptors, and no other user", async function () {
    requireOrSkip(this, process.getuid!() === 0, 'root, to connect as another uid');
    const small = fs.mkdtempSync(path.join(os.tmpdir(), 'kdbus-sock-files-'));
    fs.chmodSync(small, 0o755);
    const smallSock = path.join(small, 'kdbus.sock');
    const smallRoot = path.join(small, 'kdbus');
    const d = new Daemon({ ...defaults(), buses: [bus], socket: smallSock, kdbusRoot: smallRoot });
    const sessionDescriptors = { perUser: 3 * SESSION_DESCRIPTORS, total: 100 * SESSION_DESCRIPTORS };
    d.addTransport(new SocketTransport({ socketPath: smallSock, kdbusRoot: smallRoot, placeholders: true, sessionDescriptors }));
    await d.start();
    const openAs = (uid: number): Promise<string> =>
      new Promise((resolve) => {
        const script = [
          'import socket, struct, sys',
          's = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); p = sys.argv[2].encode()',
          "body = struct.pack('<IIII', 2, 0, len(p), 0) + p; body += bytes(-len(body) % 8)",
          "s.sendall(struct.pack('<IIQ', 16 + len(body), 1, 1) + body)",
          "d = s.recv(64); print(struct.unpack_from('<i', d, 16)[0] if len(d) >= 20 else 'closed')",
        ].join('\n');
        const child = spawn('python3', ['-c', script, smallSock, `${bus}/bus`], { uid, gid: uid });
        let out = '';
        child.stdout.on('data', (b: Buffer) => (out += b.toString()));
        child.on('close', () => resolve(out.trim()));
      });
    try {
      const mine: ProtocolClient[] = [];
      for (let i = 0; i < 3; i++) {
        const c = ProtocolClient.connect(smallSock);
        assert.equal((await c.open(`${bus}/bus`)).errno, 0);
        mine.push(c);
      }
      const fourth = ProtocolClient.connect(smallSock);
      // Closed at once: its OPEN unread, the client sees the connection reset.
      await assert.rejects(fourth.open(`${bus}/bus`), /daemon closed the connection|errno 104/);
      fourth.close();
      assert.equal(await openAs(65534), '0', 'another user opens the bus');
      mine.shift()!.close();
      await new Promise((r) => setTimeout(r, 50));
      const again = ProtocolClient.connect(smallSock);
      assert.equal((await again.open(`${bus}/bus`)).errno, 0, 'a file that closed makes room');
      mine.push(again);
      for (const c of mine) c.close();
    } finally {
      await d.stop();
      fs.rmSync(small, { recursive: true, force: true });
    }
  });

  it('disconnects a client that sends garbage and keeps serving others', async () => {
    const bad = net.createConnection(sock);
    await new Promise((res) => bad.once('connect', res));
    const closed = new Promise((res) => bad.once('close', res));
    bad.write(Buffer.from('this is not a frame at all'));
    await closed;
    const a = await Peer.connect(sock, bus);
    a.close();
  });

  it('releases synchronously on CLOSE, so ID_REMOVE is queued before close() returns', async () => {
    const a = await Peer.connect(sock, bus);
    const b = await Peer.connect(sock, bus);
    const watcher = daemon.domain.buses.get(bus)!.connection(a.id)!;
    assert.equal(await a.matchId(ItemType.ID_REMOVE, b.id), 0);
    assert.equal((await b.client.release()).errno, 0);
    assert.equal(watcher.queue.size, 1, 'ID_REMOVE is queued when CLOSE is answered');
    const { msg } = await a.recv();
    assert.equal(msg!.readBigUInt64LE(64 + 8), BigInt(ItemType.ID_REMOVE));
    const after = Buffer.alloc(64);
    after.writeBigUInt64LE(64n, 0);
    assert.equal((await b.client.ioctl(Cmd.RECV, 0x60000n, [{ address: 0x60000n, data: after }])).errno, Errno.EBADFD);
    a.close();
    b.close();
  });

  it('keeps a connection that said BYEBYE readable with HUP, as kdbus polled POLLHUP', async () => {
    const a = await Peer.connect(sock, bus);
    const bye = Buffer.alloc(24);
    bye.writeBigUInt64LE(24n, 0);
    assert.equal((await a.client.ioctl(Cmd.BYEBYE, 0x80000n, [{ address: 0x80000n, data: bye }])).errno, 0);
    const r = await a.recv();
    assert.equal(r.r.errno, Errno.ESHUTDOWN);
    assert.equal(await a.client.event(), FrameType.HUP, 'a HUP follows every RESULT once the connection is gone');
    a.close();
  });

  it('grants no privilege or DAC override for capabilities held only in a user namespace of the client', async function () {
    requireOrSkip(this, userNamespacesUsable(), 'user and pid namespaces (unshare, with full id maps)');
    // A custom endpoint "0-private": mode 0600, owned by uid 0, which the client cannot name.
    const owner = ProtocolClient.connect(sock);
    assert.equal((await owner.open(`${bus}/bus`)).errno, 0);
    const ep = new ItemWriter();
    ep.u64(0).u64(0).u64(0).string(ItemType.MAKE_NAME, '0-private');
    const epCmd = Buffer.from(ep.finish());
    epCmd.writeBigUInt64LE(BigInt(epCmd.length), 0);
    assert.equal((await owner.ioctl(Cmd.ENDPOINT_MAKE, 0x10000n, [{ address: 0x10000n, data: epCmd }])).errno, 0);
    fs.chmodSync(dir, 0o755);
    fs.chmodSync(path.dirname(sock), 0o755);
    // uid 65534 outside, root with every capability inside a namespace of its own
    // (uid_map "0 65534 1"): kdbus checked CAP_IPC_OWNER in the domain's namespace and
    // CAP_DAC_OVERRIDE only for inodes whose owner maps into the caller's namespace.
    const script = `
      const { ProtocolClient } = require(${JSON.stringify(path.join(__dirname, '../helpers/socket-client.js'))});
      (async () => {
        const out = {};
        const a = ProtocolClient.connect(${JSON.stringify(sock)});
        out.openPrivate = (await a.open(${JSON.stringify(`${bus}/0-private`)})).errno;
        const b = ProtocolClient.connect(${JSON.stringify(sock)});
        out.openBus = (await b.open(${JSON.stringify(`${bus}/bus`)})).errno;
        const hello = Buffer.from(${JSON.stringify(policyHolderHello('com.example.held').toString('hex'))}, 'hex');
        out.holder = (await b.ioctl(${Cmd.HELLO}, 0x10000n, [{ address: 0x10000n, data: hello }])).errno;
        process.stdout.write(JSON.stringify(out));
        process.exit(0);
      })();`;
    const child = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const p = spawn('unshare', ['-r', process.execPath, '-e', script], { uid: 65534, gid: 65534 });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (d) => { stdout += d; });
      p.stderr.on('data', (d) => { stderr += d; });
      p.on('close', (status) => resolve({ status, stdout, stderr }));
    });
    assert.equal(child.status, 0, child.stderr);
    const out = JSON.parse(child.stdout) as Record<string, number>;
    assert.equal(out.openPrivate, Errno.EACCES, 'mode 0600 of uid 0: no DAC override from the namespace');
    assert.equal(out.openBus, 0);
    assert.equal(out.holder, Errno.EPERM, 'not privileged: no policy holder on a bus of another uid');
    owner.close();
  });

  it('places a client it may not trace by its public id maps (an unprivileged daemon, a root client)', async function () {
    requireOrSkip(this, userNamespacesUsable(), 'user and pid namespaces (unshare, with full id maps)');
    // A root process in a user namespace of its own without maps, and this (root) process:
    // uid 65534 can read neither one's namespace link, but both ones' id maps.
    const foreign = spawn('unshare', ['-U', 'sleep', '30'], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 200 && fs.readFileSync(`/proc/${foreign.pid}/comm`, 'latin1') !== 'sleep\n'; i++) {
        await new Promise((res) => setTimeout(res, 10));
      }
      const helper = path.join(__dirname, '../../src/os/namespaces.js');
      const script = `const n = require(${JSON.stringify(helper)});
        process.stdout.write(JSON.stringify([n.userNamespaceOf(${process.pid}) === undefined, n.inDaemonUserNamespace(${process.pid}), n.inDaemonUserNamespace(${foreign.pid})]));`;
      const r = spawnSync(process.execPath, ['-e', script], { uid: 65534, gid: 65534, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout), [true, true, false], '[link unreadable, root client in the daemon namespace, namespaced client not]');
    } finally {
      foreign.kill('SIGKILL');
    }
  });

  it('releases the connection when the socket closes (ID_REMOVE reaches others)', async () => {
    const a = await Peer.connect(sock, bus);
    const b = await Peer.connect(sock, bus);
    const conn = daemon.domain.buses.get(bus)!.connection(b.id);
    assert.ok(conn?.active);
    b.close();
    for (let i = 0; i < 100 && conn!.active; i++) await new Promise((res) => setTimeout(res, 5));
    assert.equal(conn!.active, false);
    a.close();
  });
});
