/**
 * Mutated GVariant messages from a kdbus client to a legacy client: the payload of a kdbus
 * message is whatever its sender wrote, and the legacy endpoint turns it into dbus1 for a
 * client whose library disconnects from the bus on the first message it cannot read. So
 * what reaches the legacy client must decode (with this project's decoder, which refuses
 * what libdbus refuses), whatever the kdbus client sent; what cannot be translated is
 * dropped, with no error logged. Over real sockets: the kdbus client speaks the socket
 * transport's protocol, the legacy client dbus1 on the legacy endpoint of the same bus.
 * FRAMES_FUZZ_SEED and FRAMES_FUZZ_CASES explore further, as for the socket frames.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { encodeGVariantPayload } from '../../src/dbus1/gvariant-message';
import { MessageFlag, MessageType, type Message } from '../../src/dbus1/message';
import { Variant } from '../../src/dbus1/value';
import { LogCapture } from '../helpers/log-capture';
import { seededRandom } from '../helpers/random';
import { RawDbus1Client } from '../helpers/raw-dbus1-client';
import { startSocketDaemon, type SocketDaemon } from '../helpers/socket-daemon';
import { Peer } from '../helpers/socket-peer';

const SEED = Number(process.env['FRAMES_FUZZ_SEED'] ?? 0x67766172);
const CASES = Number(process.env['FRAMES_FUZZ_CASES'] ?? 2000);

const OBJ = '/com/example/Gv';
const IFACE = 'com.example.Gv';

/** What a kdbus client may send a legacy client without a call of its own: signals, calls that expect no reply. */
const SEEDS: readonly Message[] = [
  { type: MessageType.Signal, flags: 0, serial: 1n, path: OBJ, interface: IFACE, member: 'Text', signature: 'sx', body: ['héllo', -5n] },
  { type: MessageType.Signal, flags: 0, serial: 1n, path: OBJ, interface: IFACE, member: 'Dict', signature: 'a{sv}', body: [[['a', new Variant('u', 7)], ['b', new Variant('as', ['x', ''])]]] },
  { type: MessageType.Signal, flags: 0, serial: 1n, path: OBJ, interface: IFACE, member: 'Bytes', signature: 'ayab', body: [Buffer.from([0, 1, 2, 255]), [true, false]] },
  { type: MessageType.Signal, flags: 0, serial: 1n, path: OBJ, interface: IFACE, member: 'Mixed', signature: '(ynqiutd)v', body: [[1, -2, 3, -4, 5, 6n, 0.5], new Variant('(so)', ['s', '/o'])] },
  { type: MessageType.MethodCall, flags: MessageFlag.NoReplyExpected, serial: 1n, path: OBJ, interface: IFACE, member: 'Tell', signature: 'aas', body: [[['a'], [], ['b', 'c']]] },
  { type: MessageType.MethodCall, flags: MessageFlag.NoReplyExpected, serial: 1n, path: OBJ, member: 'Bare', signature: '', body: [] },
];

const MARKER: Message = { type: MessageType.Signal, flags: 0, serial: 1n, path: OBJ, interface: IFACE, member: 'Marker', signature: '', body: [] };

const INTERESTING = [0x00, 0xff, 0x7f, 0x80, 0x01, 0x02, 0x08, 0x28, 0x29, 0x61, 0x76, 0x7b];

/** One to three bytes changed anywhere, or the end cut off. */
function mutate(payload: Buffer, rnd: () => number): Buffer {
  let b = Buffer.from(payload);
  for (let n = 1 + (rnd() < 0.3 ? 1 : 0) + (rnd() < 0.1 ? 1 : 0); n > 0; n--) {
    const at = Math.floor(rnd() * b.length);
    const how = rnd();
    if (how < 0.1) b = b.subarray(0, at);
    else if (at < b.length) b[at] = how < 0.55 ? b[at]! ^ (1 << Math.floor(rnd() * 8)) : INTERESTING[Math.floor(rnd() * INTERESTING.length)]!;
  }
  return b;
}

describe('legacy endpoint: mutated GVariant messages from a kdbus client', function () {
  this.timeout(300_000);
  let running: SocketDaemon | undefined;
  let sock: string;
  let legacy: string;
  const bus = `${process.getuid!()}-gvfuzz`;

  before(async () => {
    running = await startSocketDaemon('kdbus-gvfuzz', bus, { listen: (dir) => [`unix:path=${path.join(dir, 'legacy.sock')}`] });
    sock = running.sock;
    legacy = path.join(running.dir, 'legacy.sock');
  });

  after(async () => {
    await running?.stop();
  });

  it(`${CASES} mutated payloads (seed ${SEED}): what reaches the legacy client decodes, the rest is dropped quietly`, async () => {
    const logs = new LogCapture('warn');
    try {
      const sender = await Peer.connect(sock, bus);
      const receiver = await RawDbus1Client.connect(legacy);
      const to = BigInt(receiver.uniqueName.slice(receiver.uniqueName.indexOf('.') + 1));
      const marker = encodeGVariantPayload(MARKER, MessageFlag.NoReplyExpected);
      const seeds = SEEDS.map((m) => encodeGVariantPayload(m, m.flags | MessageFlag.NoReplyExpected));
      const rnd = seededRandom(SEED);
      for (let i = 0; i < seeds.length + CASES; i++) {
        // The seeds go first as they are: the legacy client must get each.
        const payload = i < seeds.length ? seeds[i]! : mutate(seeds[i % seeds.length]!, rnd);
        await sender.send(to, payload);
        await sender.send(to, marker);
        const got = await receiver.waitForCount((m) => m.member === 'Marker', i + 1, 5_000);
        assert.ok(got, `case ${i}: ${receiver.closed ? `the legacy client was disconnected (${receiver.closeReason})` : 'no marker within 5 s'} after ${payload.toString('hex')}`);
        if (i < seeds.length) assert.ok(receiver.messages().some((m) => m.member === SEEDS[i]!.member), `seed ${SEEDS[i]!.member} did not arrive`);
      }
      const delivered = receiver.messages().filter((m) => m.member !== 'Marker').length - seeds.length;
      assert.ok(delivered > CASES / 20, `only ${delivered} mutated payloads were delivered: the mutations do not exercise the translation`);
      assert.deepEqual(logs.matching(/^\S+ \S+ (warn|error) /), [], 'the daemon logged warnings or errors');
      receiver.close();
      sender.close();
    } finally {
      logs.stop();
    }
  });
});
