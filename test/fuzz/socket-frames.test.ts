/**
 * Mutated sessions on the socket transport: what a shim sends from OPEN to CLOSE (HELLO,
 * MATCH_ADD, NAME_ACQUIRE, SEND, RECV, FREE, CONN_INFO, LIST, BYEBYE, POOL), one to
 * three bytes changed here and there — in payloads, in frame headers (length, type, seq) —
 * or frames dropped, repeated, cut short, all written at once over a real socket to a daemon
 * serving real sockets. The socket is open to every user of the machine: whatever arrives,
 * the daemon must answer or disconnect, never fail inside (no log line at error level),
 * keep nothing of a session once its socket closed, and go on serving a well-behaved
 * client. The kdbus commands themselves are fuzzed in fuzz.test.ts; here it is the
 * framing, the segments and the protocol's states. FRAMES_FUZZ_SEED and
 * FRAMES_FUZZ_CASES explore further.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { Cmd, ItemType, KDBUS_MATCH_ID_ANY, KDBUS_PAYLOAD_DBUS } from '../../src/abi/constants';
import { ItemWriter } from '../../src/abi/items';
import { encodeFrame, FrameType, OPEN_FEATURE_HEADS, type Segment } from '../../src/transport/frames';
import { LogCapture } from '../helpers/log-capture';
import { seededRandom } from '../helpers/random';
import { ioctlPayload, openPayload } from '../helpers/socket-client';
import { startSocketDaemon, type SocketDaemon } from '../helpers/socket-daemon';
import { helloStruct, Peer } from '../helpers/socket-peer';

const SEED = Number(process.env['FRAMES_FUZZ_SEED'] ?? 0x6672616d);
const CASES = Number(process.env['FRAMES_FUZZ_CASES'] ?? 2000);

/** A command struct: its size first, then `fields`, then items. */
function struct(fields: readonly bigint[], items?: (w: ItemWriter) => void): Buffer {
  const w = new ItemWriter();
  w.u64(0);
  for (const f of fields) w.u64(f);
  items?.(w);
  const b = Buffer.from(w.finish());
  b.writeBigUInt64LE(BigInt(b.length), 0);
  return b;
}

/** An IOCTL frame whose struct is prefetched at `at`, with more prefetched memory if any. */
function ioctl(seq: bigint, cmd: number, at: bigint, data: Buffer, more: Segment[] = []): Buffer {
  return encodeFrame(FrameType.IOCTL, seq, ioctlPayload(cmd, at, [{ address: at, data }, ...more]));
}

/** The frames of one well-formed session, `to` being a connection to send a message to. */
function session(bus: string, to: bigint): Buffer[] {
  const text = Buffer.from('a payload of the fuzzed session');
  const msg = struct([0n, 0n, to, 0n, BigInt(KDBUS_PAYLOAD_DBUS), 7n, 0n], (w) => w.itemU64(ItemType.PAYLOAD_VEC, BigInt(text.length), 0x50000n));
  const send = Buffer.alloc(56);
  send.writeBigUInt64LE(56n, 0);
  send.writeBigUInt64LE(0x40000n, 24);
  return [
    encodeFrame(FrameType.OPEN, 1n, openPayload(`${bus}/bus`, 2, OPEN_FEATURE_HEADS)),
    ioctl(2n, Cmd.HELLO, 0x10000n, helloStruct()),
    ioctl(3n, Cmd.MATCH_ADD, 0x20000n, struct([0n, 0n, 1n], (w) => w.itemU64(ItemType.ID, KDBUS_MATCH_ID_ANY, 0n))),
    ioctl(4n, Cmd.NAME_ACQUIRE, 0x20000n, struct([0n, 0n], (w) => w.string(ItemType.NAME, 'com.example.fuzzed'))),
    ioctl(5n, Cmd.SEND, 0x30000n, send, [{ address: 0x40000n, data: msg }, { address: 0x50000n, data: text }]),
    ioctl(6n, Cmd.RECV, 0x60000n, struct([0n, 0n, 0n, 0n, 0n, 0n, 0n])),
    ioctl(7n, Cmd.FREE, 0x20000n, struct([0n, 0n, 0n])),
    ioctl(8n, Cmd.CONN_INFO, 0x20000n, struct([0n, 0n, to, 0n, 0n, 0n])),
    ioctl(9n, Cmd.LIST, 0x20000n, struct([1n, 0n, 0n, 0n])),
    ioctl(0n, Cmd.FREE, 0x20000n, struct([0n, 0n, 0n])),
    ioctl(10n, Cmd.BYEBYE, 0x20000n, struct([0n, 0n])),
    encodeFrame(FrameType.POOL, 11n),
    encodeFrame(FrameType.CLOSE, 12n),
  ];
}

const INTERESTING = [0x00, 0xff, 0x7f, 0x80, 0x01, 0x08, 0x10, 0x40];

/** One to three changes: a byte of a frame (its header now and then), or a frame dropped, repeated or cut. */
function mutate(frames: Buffer[], rnd: () => number): Buffer {
  const out = frames.map((f) => Buffer.from(f));
  for (let n = 1 + (rnd() < 0.4 ? 1 : 0) + (rnd() < 0.15 ? 1 : 0); n > 0; n--) {
    const i = Math.floor(rnd() * out.length);
    const f = out[i]!;
    const how = rnd();
    if (how < 0.08) out.splice(i, 1);
    else if (how < 0.14) out.splice(i, 0, Buffer.from(f));
    else if (how < 0.2) out[i] = f.subarray(0, Math.floor(rnd() * f.length));
    else {
      const at = how < 0.35 ? Math.floor(rnd() * 16) : 16 + Math.floor(rnd() * Math.max(1, f.length - 16));
      if (at < f.length) f[at] = rnd() < 0.5 ? f[at]! ^ (1 << Math.floor(rnd() * 8)) : INTERESTING[Math.floor(rnd() * INTERESTING.length)]!;
    }
  }
  return Buffer.concat(out);
}

/**
 * Writes `bytes`, ends the stream and waits for the daemon to close its side: it must,
 * having read the end of the stream (or given up on the client before).
 */
function play(socketPath: string, bytes: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(socketPath);
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`the daemon kept a session open 5 s after its client ended it: ${bytes.toString('hex').slice(0, 400)}`));
    }, 5_000);
    s.on('error', () => undefined);
    s.on('data', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve();
    });
    s.end(bytes);
  });
}

const openFiles = (): number => fs.readdirSync('/proc/self/fd').length;

describe('socket transport: mutated sessions', function () {
  this.timeout(300_000);
  let running: SocketDaemon | undefined;
  let sock: string;
  const bus = `${process.getuid!()}-framesfuzz`;

  before(async () => {
    running = await startSocketDaemon('kdbus-frames', bus);
    sock = running.sock;
  });

  after(async () => {
    await running?.stop();
  });

  it(`${CASES} mutated sessions (seed ${SEED}): answered or disconnected, nothing kept, others served`, async () => {
    // Protocol errors are warnings, one per broken session; only a fault of the daemon's own is an error.
    const logs = new LogCapture('warn');
    try {
      const sink = await Peer.connect(sock, bus, OPEN_FEATURE_HEADS);
      const files = openFiles();
      // The sessions' messages go to the sink, which empties its queue now and then and
      // then gets a message of its own through.
      const drain = async (label: string): Promise<void> => {
        for (let got = await sink.recv(); got.r.errno === 0; got = await sink.recv()) await sink.free(got.offset!);
        assert.equal((await sink.send(sink.id, label)).errno, 0, `SEND ${label}`);
        const own = await sink.recv();
        assert.equal(own.r.errno, 0, `RECV ${label}`);
        assert.ok(own.msg!.includes(label), `RECV ${label}: another message came`);
        await sink.free(own.offset!);
      };
      // Unmutated first: a session the daemon takes whole, its message delivered.
      await play(sock, Buffer.concat(session(bus, sink.id)));
      const first = await sink.recv();
      assert.equal(first.r.errno, 0, 'the unmutated session sent nothing');
      await sink.free(first.offset!);
      const rnd = seededRandom(SEED);
      for (let i = 0; i < CASES; i++) {
        await play(sock, mutate(session(bus, sink.id), rnd));
        if (i % 200 === 199) await drain(`after case ${i}`);
      }
      await drain('at the end');
      assert.deepEqual(logs.matching(/^\S+ \S+ error /), [], 'the daemon logged errors');
      assert.ok(logs.matching(/protocol error/).length > CASES / 10, 'hardly any session broke the protocol: the mutations do not reach it');
      // The sessions' sockets, pools and files went with them.
      assert.ok(openFiles() <= files + 2, `${openFiles() - files} more descriptors open than before the sessions`);
      sink.close();
    } finally {
      logs.stop();
    }
  });
});
