/**
 * The server side of D-Bus authentication. Expected behaviour comes from the D-Bus
 * specification ("Authentication Protocol") and from dbus-daemon: its auth test scripts
 * (test/data/auth/*.auth-script: external-successful, external-auto, external-username,
 * external-root, cancel, extra-bytes, fail-after-n-attempts, invalid-command,
 * invalid-hex-encoding, mechanisms) and dbus-auth.c's state tables; and from the byte
 * sequences real clients send (libdbus/GDBus wait for each answer; sd-bus and dbus-broker
 * pipeline everything).
 */
import assert from 'node:assert/strict';
import { MAX_AUTH_FAILURES, MAX_AUTH_LINE_BYTES, SaslServer, type SaslStep } from '../../src/dbus1/sasl';

const GUID = '0123456789abcdef0123456789ABCDEF';
const OK = 'OK 0123456789abcdef0123456789abcdef\r\n';
const REJECTED = 'REJECTED EXTERNAL\r\n';

/** Hex of the ASCII decimal uid, as clients send it ("1000" → 31303030). */
const hexUid = (uid: number | string): string => Buffer.from(String(uid), 'ascii').toString('hex');

function server(peerUid = 1000, unixFdsPossible = true): SaslServer {
  return new SaslServer({ peerUid, guid: GUID, unixFdsPossible });
}

/** A server past the credentials byte. */
function started(peerUid = 1000, unixFdsPossible = true): SaslServer {
  const s = server(peerUid, unixFdsPossible);
  assert.deepEqual(s.feed(Buffer.from([0])), { output: Buffer.alloc(0) });
  return s;
}

function send(s: SaslServer, text: string): SaslStep {
  return s.feed(Buffer.from(text, 'latin1'));
}

/** Sends lines, returns what came back as text; the conversation must go on. */
function say(s: SaslServer, text: string): string {
  const r = send(s, text);
  assert.equal(r.done, undefined, `unexpected BEGIN after ${JSON.stringify(text)}`);
  assert.equal(r.disconnect, undefined, `unexpected disconnect after ${JSON.stringify(text)}: ${r.disconnect}`);
  return r.output.toString('latin1');
}

const isError = (out: string): boolean => /^ERROR( "[^"\r\n]*")?\r\n$/.test(out);

describe('dbus1 SASL server: EXTERNAL', () => {
  it('authenticates the socket uid claimed in the initial response, then BEGIN', () => {
    const s = started();
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid(1000)}\r\n`), OK);
    const r = send(s, 'BEGIN\r\n');
    assert.deepEqual(r, { output: Buffer.alloc(0), done: { unixFds: false, rest: Buffer.alloc(0) } });
  });

  it('sends an empty DATA challenge for an empty initial response; an empty answer means the socket uid', () => {
    const s = started();
    assert.equal(say(s, 'AUTH EXTERNAL\r\n'), 'DATA\r\n');
    assert.equal(say(s, 'DATA\r\n'), OK);
    assert.deepEqual(send(s, 'BEGIN\r\n').done, { unixFds: false, rest: Buffer.alloc(0) });
  });

  it('takes a uid given in answer to the challenge, and rejects a wrong one', () => {
    const s = started();
    assert.equal(say(s, 'AUTH EXTERNAL\r\n'), 'DATA\r\n');
    assert.equal(say(s, `DATA ${hexUid(1000)}\r\n`), OK);
    const t = started();
    assert.equal(say(t, 'AUTH EXTERNAL\r\n'), 'DATA\r\n');
    assert.equal(say(t, `DATA ${hexUid(1001)}\r\n`), REJECTED);
    // After REJECTED the conversation starts over, and the challenge is offered again.
    assert.equal(say(t, 'AUTH EXTERNAL\r\n'), 'DATA\r\n');
  });

  it('rejects a uid other than the peer\'s, and user names', () => {
    const s = started(1000);
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid(0)}\r\n`), REJECTED);
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid('root')}\r\n`), REJECTED);
    // libdbus reads the claim with strtoul(…, 0): octal 01000 is 512.
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid('01000')}\r\n`), REJECTED);
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid('1000 ')}\r\n`), REJECTED);
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid('4294968296')}\r\n`), REJECTED);
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid(1000)}\r\n`), OK);
  });

  it('reads the claimed uid as libdbus reads a number: blanks, sign, hex and octal', () => {
    for (const claim of [' 1000', '+1000', '0x3e8', '0X3E8', '01750', '\t1000']) {
      assert.equal(say(started(1000), `AUTH EXTERNAL ${hexUid(claim)}\r\n`), OK, JSON.stringify(claim));
    }
    for (const claim of ['-0', '00', '0x0']) assert.equal(say(started(0), `AUTH EXTERNAL ${hexUid(claim)}\r\n`), OK, JSON.stringify(claim));
    // A minus sign wraps around, as in C; beyond 64 bits strtoul fails.
    assert.equal(say(started(0), `AUTH EXTERNAL ${hexUid('-18446744073709551616')}\r\n`), REJECTED);
    for (const claim of ['0x', '08', '1e3', '1000x']) assert.equal(say(started(1000), `AUTH EXTERNAL ${hexUid(claim)}\r\n`), REJECTED, JSON.stringify(claim));
  });

  it('authenticates root as uid 0 ("30")', () => {
    const s = started(0);
    assert.equal(say(s, 'AUTH EXTERNAL 30\r\n'), OK);
  });

  it('decodes hex as dbus-daemon: either case, an odd last digit as a high nibble', () => {
    // "3" decodes to 0x30, "0": dbus-daemon authenticates root with it.
    assert.equal(say(started(0), 'AUTH EXTERNAL 3\r\n'), OK);
    // Decimal digits encode without hex letters, so letters of both cases are seen through
    // identities that decode fine and are refused for their content (REJECTED, not ERROR).
    assert.equal(say(started(), 'AUTH EXTERNAL 3A\r\n'), REJECTED);
    assert.equal(say(started(), 'AUTH EXTERNAL 3a\r\n'), REJECTED);
  });

  it('answers invalid hex with ERROR and keeps waiting for AUTH', () => {
    const s = started();
    assert.ok(isError(say(s, 'AUTH EXTERNAL willy\r\n')));
    assert.ok(isError(say(s, `AUTH EXTERNAL ${hexUid(1000)} \r\n`)), 'a trailing blank is not hex');
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid(1000)}\r\n`), OK);
  });

  it('skips any run of blanks between command, mechanism and response', () => {
    assert.equal(say(started(), `AUTH \t EXTERNAL\t  ${hexUid(1000)}\r\n`), OK);
  });

  it('answers a bare AUTH and unknown mechanisms with REJECTED EXTERNAL', () => {
    const s = started();
    assert.equal(say(s, 'AUTH\r\n'), REJECTED);
    assert.equal(say(s, 'AUTH ANONYMOUS\r\n'), REJECTED);
    assert.equal(say(s, `AUTH DBUS_COOKIE_SHA1 ${hexUid('user')}\r\n`), REJECTED);
    assert.equal(say(s, `AUTH external ${hexUid(1000)}\r\n`), REJECTED, 'mechanism names are case-sensitive');
  });
});

describe('dbus1 SASL server: conversation rules', () => {
  it('needs the NUL byte first and disconnects otherwise', () => {
    const s = server();
    const r = send(s, `AUTH EXTERNAL ${hexUid(1000)}\r\n`);
    assert.ok(r.disconnect);
    assert.equal(r.output.length, 0);
    assert.deepEqual(server().feed(Buffer.alloc(0)), { output: Buffer.alloc(0) });
  });

  it('works on bytes split anywhere, one at a time included', () => {
    const s = server();
    const input = Buffer.from(`\0AUTH EXTERNAL ${hexUid(1000)}\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\nl\x01`, 'latin1');
    let out = '';
    let done: SaslStep['done'];
    for (let i = 0; i < input.length && done === undefined; i++) {
      const r = s.feed(input.subarray(i, i + 1));
      out += r.output.toString('latin1');
      done = r.done;
      if (done) assert.equal(i, input.length - 3, 'done right at the LF of BEGIN');
    }
    assert.equal(out, `${OK}AGREE_UNIX_FD\r\n`);
    assert.deepEqual(done, { unixFds: true, rest: Buffer.alloc(0) });
  });

  it("answers sd-bus's pipelined handshake at once and hands over the message bytes after BEGIN", () => {
    const s = server();
    const message = Buffer.from([0x6c, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0d, 0x0a]);
    const r = s.feed(Buffer.concat([Buffer.from(`\0AUTH EXTERNAL ${hexUid(1000)}\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n`), message]));
    assert.equal(r.output.toString('latin1'), `${OK}AGREE_UNIX_FD\r\n`);
    assert.deepEqual(r.done, { unixFds: true, rest: message });
    assert.equal(r.disconnect, undefined);
  });

  it("answers dbus-broker's pipelined handshake (AUTH EXTERNAL, empty DATA)", () => {
    const r = send(server(), '\0AUTH EXTERNAL\r\nDATA\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n');
    assert.equal(r.output.toString('latin1'), `DATA\r\n${OK}AGREE_UNIX_FD\r\n`);
    assert.deepEqual(r.done, { unixFds: true, rest: Buffer.alloc(0) });
  });

  it('keeps the bytes after BEGIN, whatever they are', () => {
    const s = started();
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid(1000)}\r\n`), OK);
    assert.deepEqual(send(s, 'BEGIN\r\nHello\r\n').done, { unixFds: false, rest: Buffer.from('Hello\r\n') });
  });

  it('refuses NEGOTIATE_UNIX_FD before authentication and where fds cannot pass', () => {
    const s = started(1000, false);
    assert.ok(isError(say(s, 'NEGOTIATE_UNIX_FD\r\n')));
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid(1000)}\r\n`), OK);
    assert.ok(isError(say(s, 'NEGOTIATE_UNIX_FD\r\n')));
    assert.deepEqual(send(s, 'BEGIN\r\n').done, { unixFds: false, rest: Buffer.alloc(0) });
    const t = started();
    assert.equal(say(t, 'AUTH EXTERNAL\r\n'), 'DATA\r\n');
    assert.ok(isError(say(t, 'NEGOTIATE_UNIX_FD\r\n')), 'not while the challenge is open');
  });

  it('CANCEL after OK returns to the start (REJECTED), and a new AUTH succeeds', () => {
    const s = started();
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid(1000)}\r\n`), OK);
    assert.equal(say(s, 'NEGOTIATE_UNIX_FD\r\n'), 'AGREE_UNIX_FD\r\n');
    assert.equal(say(s, 'CANCEL\r\n'), REJECTED);
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid(1000)}\r\n`), OK);
    // The fd agreement belonged to the cancelled attempt.
    assert.deepEqual(send(s, 'BEGIN\r\n').done, { unixFds: false, rest: Buffer.alloc(0) });
  });

  it('CANCEL or ERROR during the challenge, or ERROR while waiting for AUTH, is REJECTED', () => {
    const s = started();
    assert.equal(say(s, 'AUTH EXTERNAL\r\n'), 'DATA\r\n');
    assert.equal(say(s, 'CANCEL\r\n'), REJECTED);
    assert.equal(say(s, 'AUTH EXTERNAL\r\n'), 'DATA\r\n');
    assert.equal(say(s, 'ERROR "no idea"\r\n'), REJECTED);
    assert.equal(say(s, 'ERROR\r\n'), REJECTED);
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid(1000)}\r\n`), OK);
    assert.equal(say(s, 'ERROR\r\n'), REJECTED, 'also after OK');
  });

  it('answers commands that do not fit the state with ERROR and stays in it', () => {
    const s = started();
    assert.ok(isError(say(s, 'CANCEL\r\n')));
    assert.ok(isError(say(s, 'DATA 31\r\n')));
    assert.ok(isError(say(s, 'OK 0123\r\n')));
    assert.ok(isError(say(s, 'REJECTED EXTERNAL\r\n')));
    assert.ok(isError(say(s, 'AGREE_UNIX_FD\r\n')));
    assert.ok(isError(say(s, 'NONEXISTENT_COMMAND foo bar baz blah blah\r\n')));
    assert.ok(isError(say(s, 'auth EXTERNAL\r\n')), 'commands are case-sensitive');
    assert.ok(isError(say(s, '\r\n')));
    assert.equal(say(s, 'AUTH EXTERNAL\r\n'), 'DATA\r\n');
    assert.ok(isError(say(s, 'AUTH EXTERNAL\r\n')), 'AUTH during the challenge');
    assert.equal(say(s, 'DATA\r\n'), OK);
    assert.ok(isError(say(s, `AUTH EXTERNAL ${hexUid(1000)}\r\n`)), 'AUTH after OK');
    assert.ok(isError(say(s, 'DATA\r\n')), 'DATA after OK');
    assert.ok(isError(say(s, 'WHATEVER\r\n')));
    assert.ok(send(s, 'BEGIN\r\n').done);
  });

  it('answers a line with non-ASCII bytes or NUL with ERROR', () => {
    const s = started();
    assert.ok(isError(say(s, 'AUTH EXTERNAL \xe9\r\n')));
    assert.ok(isError(say(s, 'AUTH\0 EXTERNAL\r\n')));
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid(1000)}\r\n`), OK);
  });

  it('ends lines at CRLF only', () => {
    const s = started();
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid(1000)}\n`), '', 'a bare LF ends nothing');
    assert.ok(isError(say(s, '\r\n')), 'the LF became part of the hex');
    assert.equal(say(s, `AUTH EXTERNAL ${hexUid(1000)}\r`), '');
    assert.equal(say(s, '\n'), OK);
  });

  it('disconnects on BEGIN before authentication, without an answer', () => {
    for (const pre of ['', 'AUTH EXTERNAL\r\n']) {
      const s = started();
      say(s, pre);
      const r = send(s, 'BEGIN\r\n');
      assert.ok(r.disconnect);
      assert.equal(r.done, undefined);
      assert.equal(r.output.length, 0);
    }
  });

  it(`disconnects at the ${MAX_AUTH_FAILURES}th REJECTED, after sending it`, () => {
    assert.equal(MAX_AUTH_FAILURES, 6);
    const s = started();
    for (let i = 1; i < 6; i++) assert.equal(say(s, `AUTH EXTERNAL ${hexUid(0)}\r\n`), REJECTED, `attempt ${i}`);
    const r = send(s, `AUTH EXTERNAL ${hexUid(0)}\r\n`);
    assert.equal(r.output.toString('latin1'), REJECTED);
    assert.ok(r.disconnect);
    assert.throws(() => send(s, `AUTH EXTERNAL ${hexUid(1000)}\r\n`), /over/);
  });

  it('counts every REJECTED (bare AUTH, CANCEL) but not ERROR answers', () => {
    const s = started();
    for (let i = 0; i < 20; i++) assert.ok(isError(say(s, 'GARBAGE\r\n')));
    say(s, 'AUTH\r\n');
    say(s, 'AUTH FOO\r\n');
    say(s, 'AUTH EXTERNAL\r\nCANCEL\r\n');
    say(s, `AUTH EXTERNAL ${hexUid(1000)}\r\nCANCEL\r\n`);
    say(s, 'ERROR\r\n');
    const r = send(s, 'AUTH\r\n');
    assert.equal(r.output.toString('latin1'), REJECTED);
    assert.ok(r.disconnect);
  });

  it(`disconnects when a line exceeds ${MAX_AUTH_LINE_BYTES} bytes, ended or not`, () => {
    assert.equal(MAX_AUTH_LINE_BYTES, 16384);
    const s = started();
    assert.ok(isError(say(s, `${'X'.repeat(MAX_AUTH_LINE_BYTES)}\r\n`)), 'a line of exactly the limit is read');
    assert.equal(say(s, 'Y'.repeat(MAX_AUTH_LINE_BYTES)), '');
    assert.ok(send(s, 'Y').disconnect);
    assert.ok(send(started(), `${'Z'.repeat(MAX_AUTH_LINE_BYTES + 1)}\r\n`).disconnect);
  });

  it('refuses to go on after BEGIN', () => {
    const s = started();
    say(s, `AUTH EXTERNAL ${hexUid(1000)}\r\n`);
    assert.ok(send(s, 'BEGIN\r\n').done);
    assert.throws(() => send(s, 'BEGIN\r\n'), /over/);
  });

  it('does not keep a reference to the caller\'s buffer', () => {
    const s = started();
    const chunk = Buffer.from(`AUTH EXTERNAL ${hexUid(1000)}`);
    assert.equal(s.feed(chunk).output.length, 0);
    chunk.fill(0x21);
    assert.equal(say(s, '\r\n'), OK);
  });

  it('checks its options', () => {
    assert.throws(() => new SaslServer({ peerUid: 0, guid: 'abc', unixFdsPossible: true }), RangeError);
    assert.throws(() => new SaslServer({ peerUid: 0, guid: 'g'.repeat(32), unixFdsPossible: true }), RangeError);
    assert.throws(() => new SaslServer({ peerUid: -1, guid: GUID, unixFdsPossible: true }), RangeError);
  });
});
