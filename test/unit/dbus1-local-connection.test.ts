/**
 * LocalConnection against a real bus (src/bus through BUS_MAKE), no mocks: two or three
 * daemon-held connections exchanging messages, names, matches and notifications, with what
 * the bus puts into their pools decoded and the pools left empty afterwards.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import {
  Attach, HelloFlags, KDBUS_DST_ID_BROADCAST, KDBUS_PAYLOAD_DBUS, Limits, ListFlags, MsgFlags, NameFlags, PolicyAccess,
} from '../../src/abi/constants';
import { Errno, KdbusError } from '../../src/abi/errno';
import type { ImportedFile } from '../../src/bus/caller';
import { nowNs } from '../../src/bus/deadline';
import { payloadBuffers } from '../../src/bus/payload-buffers';
import type { KdbusNode } from '../../src/bus/handle';
import { LocalConnection, type LocalConnectionOptions, type LocalIdentity } from '../../src/dbus1/local-connection';
import {
  decodeInfo, payloadBytes, type InfoRecord, type KdbusMessage, type KdbusNotification, type MemfdPart, type Received,
} from '../../src/dbus1/pool-records';
import { fcntl, memfd_create } from '../../src/os/libc';
import { HeldBudget } from '../../src/os/held-budget';
import { ImportedFd } from '../../src/os/pidfd-files';
import { registrar, unprivileged, world } from './bus-fixtures';
import { credsOf, selfCreds, TestBus } from '../helpers/kdbus-client';

const me = (): LocalIdentity => ({ creds: selfCreds(), pid: process.pid, privileged: false });
/** Lets the scheduled drains (microtasks) and timers of this turn run. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function errnoOf(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    if (e instanceof KdbusError) return e.errno;
    throw e;
  }
  return 0;
}

async function rejection(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (e) {
    if (e instanceof KdbusError) return e.errno;
    throw e;
  }
  return 0;
}

/** A connection that records what it receives. */
class Peer {
  readonly got: Received[] = [];
  dropped = 0;
  constructor(readonly lc: LocalConnection, listen = true) {
    if (listen) this.listen();
  }
  listen(): void {
    this.lc.onMessage((r) => this.got.push(r));
    this.lc.onDropped((n) => (this.dropped += n));
  }
  messages(): KdbusMessage[] {
    return this.got.filter((r): r is KdbusMessage => r.kind === 'message');
  }
  notifications(): KdbusNotification[] {
    return this.got.filter((r): r is KdbusNotification => r.kind !== 'message');
  }
  get busySlices(): number {
    return this.lc.handle.connection!.pool.busySlices;
  }
}

/** A sealed memfd with `content`, as a daemon-side file; records whether the bus closed it. */
class TrackedMemfd implements ImportedFile {
  closed = false;
  private readonly f: ImportedFd;
  constructor(content: string) {
    const fd = memfd_create('local-connection-test', 0x1 | 0x2);
    assert.ok(fd >= 0);
    fs.writeSync(fd, Buffer.from(content));
    assert.equal(fcntl(fd, 1033 /* F_ADD_SEALS */, 0xf), 0);
    this.f = new ImportedFd(fd);
  }
  get kind(): ImportedFile['kind'] { return this.f.kind; }
  get seals(): number { return this.f.seals; }
  get size(): number { return this.f.size; }
  get pollable(): boolean { return this.f.pollable; }
  get fd(): number { return this.f.fd; }
  read(offset: number, length: number): Buffer { return this.f.read(offset, length); }
  onReadable(cb: () => void): () => void { return this.f.onReadable(cb); }
  close(): void {
    this.closed = true;
    this.f.close();
  }
}

describe('dbus1 LocalConnection', () => {
  let tb: TestBus;
  let node: KdbusNode;
  const open: LocalConnection[] = [];
  const connect = (opts: Partial<LocalConnectionOptions> = {}, who: LocalIdentity = me()): LocalConnection => {
    const lc = LocalConnection.open(node, who, { attachFlagsRecv: 0n, ...opts });
    open.push(lc);
    return lc;
  };
  const peer = (opts: Partial<LocalConnectionOptions> = {}, who?: LocalIdentity): Peer => new Peer(connect(opts, who));

  beforeEach(async () => {
    tb = await TestBus.create({ bloomSize: 64, nHash: 8, attach: Attach.ANY });
    node = { kind: 'endpoint', ep: tb.bus.defaultEndpoint };
  });
  afterEach(() => {
    for (const lc of open.splice(0)) lc.close();
    tb.destroy();
  });

  it('says HELLO: id, bloom parameters and bus id as every client of the bus sees them', async () => {
    const a = connect();
    const client = tb.client();
    const hello = await client.hello();
    assert.ok(a.id > 0n);
    assert.equal(hello.out.readBigUInt64LE(48), a.id + 1n, 'ids are handed out in order');
    assert.deepEqual(a.bloom, { size: 64, nHash: 8 });
    assert.deepEqual(a.busId, hello.out.subarray(80, 96));
    assert.equal(a.busFlags, 2n, 'the bus was made world-accessible');
    assert.equal(a.handle.connection!.pool.busySlices, 0, "HELLO's slice was freed");
    assert.equal(a.handle.connection!.pool.size, 16 * 1024 * 1024);
    client.close();
  });

  it('exchanges a unicast by id: header, payload parts, metadata; both pools empty afterwards', async () => {
    const a = peer({ description: 'legacy-a', attachFlagsRecv: Attach.ALL });
    const b = peer({ attachFlagsRecv: Attach.CREDS | Attach.PIDS | Attach.NAMES | Attach.CONN_DESCRIPTION | Attach.TIMESTAMP });
    a.lc.acquireName('org.example.Sender');
    a.lc.send({ dst: b.lc.id, cookie: 77n, payload: [Buffer.from('hello, '), Buffer.alloc(0), Buffer.from('world')] });
    assert.equal(b.got.length, 0, 'nothing is handed on inside the sending command');
    await settle();
    const [m] = b.messages();
    assert.ok(m);
    assert.equal(m.srcId, a.lc.id);
    assert.equal(m.dstId, b.lc.id);
    assert.equal(m.cookie, 77n);
    assert.equal(m.cookieReply, 0n);
    assert.equal(m.timeoutNs, 0n);
    assert.equal(m.flags, 0n);
    assert.equal(m.payloadType, KDBUS_PAYLOAD_DBUS);
    assert.equal(m.dstName, undefined);
    assert.deepEqual(m.payload.map((p) => (p as Buffer).toString()), ['hello, ', 'world']);
    assert.equal(payloadBytes(m).toString(), 'hello, world');
    assert.equal(payloadBytes(m).buffer, (m.payload[0] as Buffer).buffer, 'parts back to back in the slice: joined, not copied');
    const apart = { ...m, payload: [Buffer.from('hello, '), Buffer.from('world')] };
    assert.equal(payloadBytes(apart).toString(), 'hello, world', 'parts apart: copied together');
    const meta = m.meta;
    assert.equal(meta.creds?.uid, process.getuid!());
    assert.equal(meta.creds?.egid, process.getegid!());
    assert.equal(meta.pids?.pid, process.pid);
    assert.deepEqual(meta.names, [{ name: 'org.example.Sender', flags: NameFlags.PRIMARY }]);
    assert.equal(meta.description, 'legacy-a');
    assert.ok(meta.timestamp && meta.timestamp.seqnum > 0n);
    assert.equal(meta.exe, undefined, 'EXE was not asked for');
    assert.equal(a.busySlices, 0);
    assert.equal(b.busySlices, 0);
    assert.equal(b.lc.handle.connection!.pool.accountedSize, 0, 'nothing left in the queue');
  });

  it('with a transient handler, reads a large message into a reused buffer that goes back when the handler returns', async () => {
    const a = peer();
    const b = new Peer(connect(), false);
    const seen: Array<{ bytes: Buffer; backing: ArrayBufferLike }> = [];
    b.lc.onMessage((r) => {
      if (r.kind !== 'message') return;
      const bytes = payloadBytes(r);
      seen.push({ bytes: Buffer.from(bytes), backing: bytes.buffer });
    }, { transient: true });
    const big = Buffer.alloc(20000, 0x3c);
    a.lc.send({ dst: b.lc.id, cookie: 1n, payload: [Buffer.from('head'), big] });
    a.lc.send({ dst: b.lc.id, cookie: 2n, payload: [Buffer.from('small')] });
    await settle();
    assert.deepEqual(seen.map((x) => x.bytes.toString('latin1')), [Buffer.concat([Buffer.from('head'), big]).toString('latin1'), 'small']);
    const next = payloadBuffers.take(32768);
    assert.equal(next.buffer, seen[0]!.backing, 'the large message\'s buffer was given back, and is the next one taken');
    payloadBuffers.give(next);
    assert.equal(b.busySlices, 0);
  });

  it('addresses a well-known name, and reports ESRCH, ENXIO and EADDRNOTAVAIL from SEND', async () => {
    const a = peer();
    const b = peer();
    b.lc.acquireName('org.example.Service');
    a.lc.send({ dst: 'org.example.Service', cookie: 1n, payload: [Buffer.from('x')] });
    await settle();
    assert.equal(b.messages()[0]?.dstName, 'org.example.Service');
    assert.equal(b.messages()[0]?.dstId, 0n, 'dst_id stays 0 for name-addressed messages');

    assert.equal(errnoOf(() => a.lc.send({ dst: 'org.example.Nobody', cookie: 2n, payload: [Buffer.from('x')] })), Errno.ESRCH);
    assert.equal(errnoOf(() => a.lc.send({ dst: b.lc.id + 1000n, cookie: 3n, payload: [Buffer.from('x')] })), Errno.ENXIO);

    const act = await registrar(tb, 'org.example.Activatable', [world(PolicyAccess.TALK)], HelloFlags.ACTIVATOR);
    assert.equal(act.errno, 0);
    const call = { dst: 'org.example.Activatable', cookie: 4n, flags: MsgFlags.EXPECT_REPLY | MsgFlags.NO_AUTO_START, payload: [Buffer.from('x')] };
    assert.equal(errnoOf(() => a.lc.send(call)), Errno.EADDRNOTAVAIL);
    a.lc.send({ ...call, flags: MsgFlags.EXPECT_REPLY });
    assert.equal((await act.client.recv()).msg?.srcId, a.lc.id, 'without NO_AUTO_START the activator gets it');
    act.client.close();
    await settle();
    assert.deepEqual(a.notifications().map((n) => n.kind), ['reply-dead'], 'the activator left the call unanswered');
    assert.equal(a.busySlices, 0);
  });

  it('broadcasts with a bloom filter to the connections whose masks it covers, the sender included', async () => {
    const a = peer();
    const b = peer();
    const c = peer();
    const filter = Buffer.alloc(64);
    filter[0] = 0b0000_0101;
    filter[63] = 0x80;
    const subset = Buffer.alloc(64);
    subset[0] = 0b0000_0100;
    const other = Buffer.alloc(64);
    other[1] = 0x01;
    a.lc.addMatch(1n, [{ kind: 'bloom-mask', mask: Buffer.alloc(64) }]);
    b.lc.addMatch(1n, [{ kind: 'bloom-mask', mask: subset }]);
    c.lc.addMatch(1n, [{ kind: 'bloom-mask', mask: other }]);
    a.lc.send({ dst: KDBUS_DST_ID_BROADCAST, cookie: 9n, bloom: filter, payload: [Buffer.from('signal')] });
    await settle();
    // The final kdbus delivers a broadcast to its sender too when its matches take it
    // (selftest test-message.c: "we do get our own broadcasts").
    assert.deepEqual(a.messages().map((m) => m.srcId), [a.lc.id]);
    assert.equal(c.got.length, 0);
    const [m] = b.messages();
    assert.ok(m);
    assert.equal(m.dstId, KDBUS_DST_ID_BROADCAST);
    assert.equal(m.flags, MsgFlags.SIGNAL);
    assert.deepEqual(m.bloom, { generation: 0n, data: filter });
    assert.equal(payloadBytes(m).toString(), 'signal');

    b.lc.removeMatch(1n);
    assert.equal(errnoOf(() => b.lc.removeMatch(1n)), Errno.EBADSLT);
    a.lc.send({ dst: KDBUS_DST_ID_BROADCAST, cookie: 10n, bloom: filter, payload: [Buffer.from('again')] });
    await settle();
    assert.equal(b.got.length, 1, 'no match, no broadcast');
    assert.equal(a.got.length, 2);
    assert.equal(errnoOf(() => a.lc.send({ dst: KDBUS_DST_ID_BROADCAST, cookie: 11n, bloom: Buffer.alloc(8) })), Errno.EDOM);
  });

  it('answers a SYNC_REPLY call: the reply comes back from the caller pool, which is left empty', async () => {
    const a = peer();
    const b = peer();
    b.lc.onMessage((r) => {
      if (r.kind !== 'message') return;
      b.lc.send({ dst: r.srcId, cookie: 500n, cookieReply: r.cookie, payload: [Buffer.from('pong:'), payloadBytes(r)] });
    });
    const reply = await a.lc.call({ dst: b.lc.id, cookie: 42n, payload: [Buffer.from('ping')] });
    assert.equal(reply.srcId, b.lc.id);
    assert.equal(reply.cookie, 500n);
    assert.equal(reply.cookieReply, 42n);
    assert.equal(payloadBytes(reply).toString(), 'pong:ping');
    assert.equal(a.got.length, 0, 'a synchronous reply bypasses the queue');
    assert.equal(a.busySlices, 0);
    assert.equal(b.busySlices, 0);
    assert.equal(errnoOf(() => b.lc.send({ dst: a.lc.id, cookie: 501n, cookieReply: 42n })), Errno.EBADSLT, 'answered once only');
  });

  it('fails a SYNC_REPLY call with EPIPE when the callee goes away, and ETIMEDOUT at its deadline', async () => {
    const a = peer();
    const b = new Peer(connect(), false);
    const call = a.lc.call({ dst: b.lc.id, cookie: 1n, payload: [Buffer.from('?')] });
    await settle();
    b.lc.close();
    assert.equal(await rejection(call), Errno.EPIPE);
    const c = new Peer(connect(), false);
    assert.equal(await rejection(a.lc.call({ dst: c.lc.id, cookie: 2n, timeoutNs: nowNs() + 20_000_000n })), Errno.ETIMEDOUT);
    assert.equal(a.busySlices, 0);
  });

  it('hears REPLY_TIMEOUT and REPLY_DEAD for its asynchronous calls, without any match', async () => {
    const a = peer();
    const b = peer();
    a.lc.send({ dst: b.lc.id, cookie: 31n, flags: MsgFlags.EXPECT_REPLY, timeoutNs: nowNs() + 20_000_000n });
    await sleep(60);
    await settle();
    assert.equal(b.messages()[0]?.timeoutNs !== 0n, true);
    const timeout = a.notifications().find((n) => n.kind === 'reply-timeout');
    assert.ok(timeout && timeout.kind === 'reply-timeout');
    assert.equal(timeout.cookie, 31n);
    assert.ok(timeout.timestamp, 'kernel notifications carry a timestamp');

    a.lc.send({ dst: b.lc.id, cookie: 32n, flags: MsgFlags.EXPECT_REPLY });
    await settle();
    b.lc.close();
    await settle();
    const dead = a.notifications().find((n) => n.kind === 'reply-dead');
    assert.ok(dead && dead.kind === 'reply-dead');
    assert.equal(dead.cookie, 32n);
    assert.equal(a.busySlices, 0);
  });

  it('acquires, queues and releases names; the other side sees NAME_ADD, NAME_CHANGE, NAME_REMOVE', async () => {
    const a = peer();
    const b = peer();
    const watcher = peer();
    watcher.lc.addMatch(7n, [{ kind: 'name-add' }]);
    watcher.lc.addMatch(7n, [{ kind: 'name-change', name: 'org.example.Name' }]);
    watcher.lc.addMatch(7n, [{ kind: 'name-remove', oldId: b.lc.id }]);

    assert.equal(a.lc.acquireName('org.example.Name'), NameFlags.PRIMARY | NameFlags.ACQUIRED);
    assert.equal(a.lc.acquireName('org.example.Name'), NameFlags.PRIMARY, 'already the owner: no ACQUIRED');
    assert.equal(errnoOf(() => b.lc.acquireName('org.example.Name')), Errno.EEXIST);
    assert.equal(b.lc.acquireName('org.example.Name', NameFlags.QUEUE), NameFlags.QUEUE | NameFlags.IN_QUEUE | NameFlags.ACQUIRED);

    const queued = b.lc.listNames(ListFlags.QUEUED).find((e) => e.id === b.lc.id);
    assert.deepEqual(queued?.names, [{ name: 'org.example.Name', flags: NameFlags.QUEUE | NameFlags.IN_QUEUE }]);

    assert.equal(errnoOf(() => watcher.lc.releaseName('org.example.Name')), Errno.EADDRINUSE);
    assert.equal(errnoOf(() => watcher.lc.releaseName('org.example.Unknown')), Errno.ESRCH);
    a.lc.releaseName('org.example.Name');
    b.lc.releaseName('org.example.Name');
    await settle();

    const seen = watcher.notifications();
    assert.deepEqual(seen.map((n) => n.kind), ['name-add', 'name-change', 'name-remove']);
    const [add, change, remove] = seen as Array<Extract<KdbusNotification, { name: string }>>;
    assert.deepEqual([add.oldId, add.oldFlags, add.newId, add.name], [0n, 0n, a.lc.id, 'org.example.Name']);
    assert.ok(add.newFlags & NameFlags.PRIMARY);
    assert.deepEqual([change.oldId, change.newId], [a.lc.id, b.lc.id]);
    assert.deepEqual([remove.oldId, remove.newId, remove.name], [b.lc.id, 0n, 'org.example.Name']);
    assert.equal(watcher.busySlices, 0);
  });

  it('lists unique ids and names, with the HELLO flags of each connection', () => {
    const a = connect({ acceptFds: true });
    const b = connect();
    a.acquireName('org.example.Listed');
    const entries = b.listNames(ListFlags.UNIQUE | ListFlags.NAMES);
    const ofA = entries.filter((e) => e.id === a.id);
    const ofB = entries.filter((e) => e.id === b.id);
    assert.deepEqual(ofA, [{ id: a.id, flags: HelloFlags.ACCEPT_FD, names: [{ name: 'org.example.Listed', flags: NameFlags.PRIMARY }] }]);
    assert.deepEqual(ofB, [{ id: b.id, flags: 0n, names: [] }]);
    assert.deepEqual(b.listNames(ListFlags.NAMES).map((e) => e.id), [a.id]);
    assert.equal(b.handle.connection!.pool.busySlices, 0);
  });

  describe('on behalf of another process', () => {
    let child: ChildProcess;
    before(() => {
      child = spawn('sleep', ['30'], { stdio: 'ignore' });
    });
    after(() => {
      child.kill();
    });

    it('shows that process in CONN_INFO and in the metadata of its messages', async () => {
      const who: LocalIdentity = { creds: selfCreds(), pid: child.pid!, privileged: false };
      const a = peer({ description: 'for-sleep' }, who);
      const b = peer({ attachFlagsRecv: Attach.PIDS | Attach.PID_COMM });
      a.lc.acquireName('org.example.Sleeper');
      const mask = Attach.CREDS | Attach.PIDS | Attach.PID_COMM | Attach.NAMES | Attach.CONN_DESCRIPTION;
      for (const info of [b.lc.connInfo(a.lc.id, mask), b.lc.connInfo('org.example.Sleeper', mask)]) {
        assert.equal(info.id, a.lc.id);
        assert.equal(info.flags, 0n);
        assert.equal(info.meta.pids?.pid, child.pid);
        assert.equal(info.meta.pids?.tid, child.pid);
        assert.equal(info.meta.pids?.ppid, process.pid);
        assert.equal(info.meta.pidComm, 'sleep');
        assert.equal(info.meta.creds?.uid, process.getuid!());
        assert.deepEqual(info.meta.names, [{ name: 'org.example.Sleeper', flags: NameFlags.PRIMARY }]);
        assert.equal(info.meta.description, 'for-sleep');
        assert.equal(info.meta.exe, undefined, 'EXE was not asked for');
        assert.equal(info.meta.timestamp, undefined, 'CONN_INFO has no timestamp');
      }
      assert.equal(errnoOf(() => b.lc.connInfo(a.lc.id + 1000n, mask)), Errno.ENXIO);
      assert.equal(errnoOf(() => b.lc.connInfo('org.example.Nobody', mask)), Errno.ESRCH);

      a.lc.send({ dst: b.lc.id, cookie: 1n, payload: [Buffer.from('z')] });
      await settle();
      assert.equal(b.messages()[0]?.meta.pids?.pid, child.pid);
      assert.equal(b.messages()[0]?.meta.pidComm, 'sleep');
      assert.equal(b.busySlices, 0);
    });
  });

  it('answers CONN_INFO without its pool exactly as the ioctl answers a client: records, errors, and the ioctl\'s own refusals', async () => {
    const a = connect({ description: 'subject', acceptFds: true });
    a.acquireName('org.example.Subject');
    const b = connect();
    const client = await tb.client().connect();
    const masks = [0n, Attach.CREDS, Attach.PIDS | Attach.AUXGROUPS, Attach.NAMES | Attach.CONN_DESCRIPTION | Attach.PID_COMM, Attach.ALL, Attach.ANY];
    const viaIoctl = async (subject: bigint | string, mask: bigint): Promise<InfoRecord | number> => {
      const r = typeof subject === 'string' ? await client.connInfo(0n, subject, mask) : await client.connInfo(subject, undefined, mask);
      if (r.errno) return r.errno;
      const record = decodeInfo(client.pool(Number(r.offset), Number(r.size)));
      await client.free(r.offset);
      return record;
    };
    const direct = (subject: bigint | string, mask: bigint): InfoRecord | number => {
      try {
        return b.connInfo(subject, mask);
      } catch (e) {
        if (e instanceof KdbusError) return e.errno;
        throw e;
      }
    };
    for (const subject of [a.id, 'org.example.Subject', b.id, a.id + 1000n, 0n, 'org.example.Nobody', '']) {
      for (const mask of masks) assert.deepEqual(direct(subject, mask), await viaIoctl(subject, mask), `${subject} with mask 0x${mask.toString(16)}`);
    }
    assert.equal(direct(a.id, 1n << 60n), Errno.EINVAL, 'an attach mask beyond KDBUS_ATTACH_ALL');
    assert.equal(direct('org.example\0Subject', 0n), Errno.EINVAL, 'a NAME item cannot hold a NUL');
    assert.equal(direct('x'.repeat(40_000), 0n), Errno.EMSGSIZE, 'the command struct would exceed 32 KiB');
    assert.equal(b.handle.connection!.pool.busySlices, 0);
    tb.control.close();
    assert.equal(direct(a.id, 0n), Errno.ESHUTDOWN, 'the bus shut the connection down');
    client.close();
  });

  it('shows faked credentials of a privileged opener, and refuses them to others (EPERM)', () => {
    const fakeCreds = { uid: 4242, euid: 4242, suid: 4242, fsuid: 4242, gid: 4343, egid: 4343, sgid: 4343, fsgid: 4343 };
    const a = connect({ fake: { creds: fakeCreds, pids: { pid: process.pid, tid: process.pid, ppid: 0 }, seclabel: 'unconfined' } },
      { ...me(), privileged: true });
    const b = connect();
    const info = b.connInfo(a.id, Attach.CREDS | Attach.PIDS | Attach.SECLABEL | Attach.PID_COMM);
    assert.deepEqual(info.meta.creds, fakeCreds);
    assert.deepEqual(info.meta.pids, { pid: process.pid, tid: process.pid, ppid: 0 });
    assert.equal(info.meta.seclabel, 'unconfined');
    assert.equal(info.meta.pidComm, undefined, 'a faking connection has no other process metadata');
    const other = unprivileged();
    assert.equal(errnoOf(() => LocalConnection.open(node, { creds: other.creds!, pid: process.pid, privileged: false },
      { attachFlagsRecv: 0n, fake: { creds: fakeCreds } })), Errno.EPERM);
  });

  it('is subject to the bus policy of the identity it stands for', () => {
    const stranger = connect({}, { creds: credsOf(unprivileged().creds!.uid), pid: process.pid, privileged: false });
    assert.equal(errnoOf(() => stranger.acquireName('org.example.Forbidden')), Errno.EPERM);
  });

  it('reads the bus creator info', () => {
    const a = connect();
    const info = a.busCreatorInfo(Attach.PIDS);
    assert.equal(info.busName, tb.name);
    assert.equal(info.flags, 2n);
    assert.equal(info.meta.pids?.pid, process.pid, 'the test process made the bus');
    assert.equal(a.handle.connection!.pool.busySlices, 0);
  });

  it('sees ID_ADD and ID_REMOVE of other connections; close() says goodbye', async () => {
    const watcher = peer();
    watcher.lc.addMatch(3n, [{ kind: 'id-add' }]);
    watcher.lc.addMatch(4n, [{ kind: 'id-remove' }]);
    const a = connect({ acceptFds: true });
    a.close();
    a.close();
    assert.equal(a.connected, false);
    assert.equal(a.handle.connection, undefined, 'the handle was released');
    await settle();
    assert.deepEqual(
      watcher.notifications().map((n) => n.kind === 'id-add' || n.kind === 'id-remove' ? [n.kind, n.id, n.flags] : []),
      [['id-add', a.id, HelloFlags.ACCEPT_FD], ['id-remove', a.id, HelloFlags.ACCEPT_FD]],
    );
    assert.equal(errnoOf(() => watcher.lc.send({ dst: a.id, cookie: 1n })), Errno.ENXIO);
  });

  it('takes matches as raw item bytes, and UPDATEs its attach flags', async () => {
    const a = peer();
    const b = peer();
    const raw = Buffer.alloc(24);
    raw.writeBigUInt64LE(24n, 0);
    raw.writeBigUInt64LE(14n /* KDBUS_ITEM_ID */, 8);
    raw.writeBigUInt64LE(a.lc.id, 16);
    b.lc.addMatch(5n, raw);
    b.lc.update({ recv: Attach.PIDS });
    a.lc.send({ dst: KDBUS_DST_ID_BROADCAST, cookie: 1n, bloom: Buffer.alloc(64) });
    await settle();
    assert.equal(b.messages().length, 1);
    assert.equal(b.messages()[0]!.meta.pids?.pid, process.pid);
    assert.equal(b.messages()[0]!.meta.creds, undefined);
    assert.equal(errnoOf(() => b.lc.update({ recv: 1n << 40n })), Errno.EINVAL);
  });

  it('reports messages the bus had to drop for it (dropped_msgs)', async () => {
    const a = peer();
    const b = new Peer(connect(), false);
    b.lc.addMatch(1n, [{ kind: 'sender-id', id: a.lc.id }]);
    const total = Limits.CONN_MAX_MSGS + 44;
    for (let i = 0; i < total; i++) a.lc.send({ dst: KDBUS_DST_ID_BROADCAST, cookie: BigInt(i + 1), bloom: Buffer.alloc(64) });
    await settle();
    assert.equal(b.got.length, 0, 'no handler: messages wait in the queue');
    b.listen();
    await settle();
    assert.equal(b.got.length, Limits.CONN_MAX_MSGS, 'one sender may queue 256 messages on a receiver');
    assert.equal(b.dropped, 44);
    assert.equal(b.busySlices, 0);
  });

  it('passes files: FDS and PAYLOAD_MEMFD arrive as the receiver\'s own; ECOMM to a peer without ACCEPT_FD', async () => {
    const a = peer();
    const b = peer({ acceptFds: true });
    const fdFile = new TrackedMemfd('passed as FDS');
    const payloadFile = new TrackedMemfd('memfd payload');
    a.lc.send({ dst: b.lc.id, cookie: 1n, payload: [Buffer.from('<'), { file: payloadFile, start: 0, size: 13 }, Buffer.from('>')], fds: [fdFile] });
    await settle();
    const [m] = b.messages();
    assert.ok(m);
    assert.equal(m.incompleteFds, false);
    assert.equal(m.fds.length, 1);
    const got = m.fds[0]!;
    assert.equal(got.kind, 'memfd');
    assert.notEqual(got.fd, fdFile.fd);
    assert.equal(got.read(0, got.size).toString(), 'passed as FDS');
    const part = m.payload[1] as MemfdPart;
    assert.equal(part.size, 13);
    assert.equal(payloadBytes(m).toString(), '<memfd payload>');
    assert.ok(fdFile.closed && payloadFile.closed, 'the bus let go of the sent files once delivered');
    got.close();
    part.file!.close();

    const c = new TrackedMemfd('refused');
    assert.equal(errnoOf(() => a.lc.send({ dst: a.lc.id, cookie: 2n, fds: [c] })), Errno.ECOMM);
    assert.ok(c.closed, 'a failed send consumes its files too');
    const d = new TrackedMemfd('never imported');
    assert.equal(errnoOf(() => a.lc.send({ dst: KDBUS_DST_ID_BROADCAST, cookie: 3n, fds: [d], payload: [Buffer.from('x')] })), Errno.EBADMSG);
    assert.ok(d.closed);
  });

  it('sends sealed bytes in a memfd of its own: past the 2 MiB of vectors, with every seal kdbus asks for', async () => {
    const a = peer();
    const b = peer({ acceptFds: true });
    const body = Buffer.alloc(3 << 20);
    for (let i = 0; i < body.length; i++) body[i] = i % 251;
    const before = fs.readdirSync('/proc/self/fd').length;
    const passed = new TrackedMemfd('passed beside it');
    a.lc.send({ dst: b.lc.id, cookie: 1n, payload: [Buffer.from('head'), { sealed: body }, Buffer.from('tail')], fds: [passed] });
    await settle();
    const [m] = b.messages();
    assert.ok(m);
    assert.equal(m.fds.length, 1);
    assert.equal(m.fds[0]!.read(0, 16).toString(), 'passed beside it', 'the FDS item names the file passed, not the body');
    m.fds[0]!.close();
    const part = m.payload[1] as MemfdPart;
    assert.equal(part.file!.kind, 'memfd');
    assert.equal(part.file!.seals, 0xf, 'SEAL, SHRINK, GROW and WRITE');
    assert.equal(part.size, body.length);
    assert.ok(payloadBytes(m).equals(Buffer.concat([Buffer.from('head'), body, Buffer.from('tail')])));
    part.file!.close();
    assert.equal(fs.readdirSync('/proc/self/fd').length, before, 'the sender\'s memfd went with the delivery');
    assert.equal(errnoOf(() => a.lc.send({ dst: b.lc.id, cookie: 2n, payload: [body] })), Errno.EMSGSIZE, 'the same bytes as a vector');
  });

  it("counts the bodies it put in memfds against the sender's share until the bus lets go of them (EXFULL beyond)", async () => {
    tb.domain.bodyBytes = new HeldBudget('bytes of message bodies in memfds', { perUser: 4 << 20, total: 8 << 20 });
    const a = peer();
    const b = new Peer(connect(), false);
    const body = (): Buffer => Buffer.alloc(3 << 20, 0x61);
    a.lc.send({ dst: b.lc.id, cookie: 1n, payload: [{ sealed: body() }] });
    assert.equal(tb.domain.bodyBytes.held(process.getuid!()), 3 << 20, 'queued, its body is held');
    assert.equal(errnoOf(() => a.lc.send({ dst: b.lc.id, cookie: 2n, payload: [{ sealed: body() }] })), Errno.EXFULL);
    b.listen();
    await settle();
    assert.equal(b.messages().length, 1);
    for (const part of b.messages()[0]!.payload) if (!Buffer.isBuffer(part)) part.file?.close();
    assert.equal(tb.domain.bodyBytes.held(process.getuid!()), 0, 'received, its body is the receiver\'s');
    a.lc.send({ dst: b.lc.id, cookie: 3n, payload: [{ sealed: body() }] });
    await settle();
    assert.equal(b.messages().length, 2);
    for (const part of b.messages()[1]!.payload) if (!Buffer.isBuffer(part)) part.file?.close();
  });

  it('tells when the bus shuts the connection down, once, also to a handler set afterwards', async () => {
    const a = peer();
    const b = connect();
    let down = 0;
    a.lc.onDisconnect(() => down++);
    const pending = rejection(a.lc.call({ dst: a.lc.id, cookie: 1n }));
    tb.control.close();
    await settle();
    assert.equal(down, 1);
    assert.equal(a.lc.connected, false);
    assert.equal(await pending, Errno.ESHUTDOWN);
    let late = 0;
    b.onDisconnect(() => late++);
    await settle();
    assert.equal(late, 1);
    a.lc.onDisconnect(() => down++);
    await settle();
    assert.equal(down, 1, 'reported once only');
    assert.equal(errnoOf(() => b.send({ dst: a.lc.id, cookie: 2n })), Errno.ESHUTDOWN);
  });
});
