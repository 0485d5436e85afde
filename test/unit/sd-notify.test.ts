import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { formatNotification, notifyAddress, SdNotifier } from '../../src/os/sd-notify';
import { NotifyListener } from '../helpers/notify-listener';

describe('sd_notify', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sd-notify-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('lays out sockaddr_un for a path (NUL counted) and an abstract name (NUL first, none after)', () => {
    const p = notifyAddress('/run/systemd/notify');
    assert.equal(p.addr.readUInt16LE(0), 1);
    assert.equal(p.len, 2 + '/run/systemd/notify'.length + 1);
    assert.equal(p.addr.subarray(2, p.len).toString('latin1'), '/run/systemd/notify\0');
    const a = notifyAddress('@sd-test/42');
    assert.equal(a.len, 2 + 1 + 'sd-test/42'.length);
    assert.equal(a.addr.subarray(2, a.len).toString('latin1'), '\0sd-test/42');
  });

  it('refuses addresses the protocol does not have, and ones too long for sun_path', () => {
    assert.throws(() => notifyAddress('relative/notify'), /NOTIFY_SOCKET="relative\/notify": not an absolute path/);
    assert.throws(() => notifyAddress('@'), /not an absolute path or an @abstract name/);
    assert.throws(() => notifyAddress('vsock:2:1234'), /not an absolute path/);
    assert.throws(() => notifyAddress('/' + 'x'.repeat(107)), /too long .*108 bytes, at most 107/);
    assert.doesNotThrow(() => notifyAddress('/' + 'x'.repeat(106)));
  });

  it('formats assignments one per line, in order, without a trailing newline', () => {
    assert.equal(formatNotification([['READY', '1'], ['STATUS', 'a\nb']]).toString(), 'READY=1\nSTATUS=a b');
  });

  it('delivers READY, RELOADING with a current MONOTONIC_USEC, and STOPPING to a path socket', async () => {
    const where = path.join(dir, 'notify');
    const listener = new NotifyListener(where);
    const n = new SdNotifier(where);
    try {
      n.ready('serving 0-x');
      const before = process.hrtime.bigint() / 1000n;
      n.reloading('reloading');
      const after = process.hrtime.bigint() / 1000n;
      n.stopping('bye');
      assert.equal(await listener.next(1000), 'READY=1\nSTATUS=serving 0-x');
      const reload = /^RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=(\d+)$/.exec(await listener.next(1000));
      assert.ok(reload, 'RELOADING notification');
      const usec = BigInt(reload[1]!);
      assert.ok(usec >= before && usec <= after, `MONOTONIC_USEC ${usec} outside [${before}, ${after}]`);
      assert.equal(await listener.next(1000), 'STOPPING=1\nSTATUS=bye');
      assert.equal(listener.poll(), undefined);
    } finally {
      n.close();
      listener.close();
    }
  });

  it('reaches an abstract socket and takes NOTIFY_SOCKET out of the environment', async () => {
    const where = `@kdbus-cuse-test-${crypto.randomBytes(6).toString('hex')}`;
    const listener = new NotifyListener(where);
    const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: where, OTHER: 'x' };
    const n = SdNotifier.fromEnvironment(env);
    try {
      assert.ok(n);
      assert.deepEqual(env, { OTHER: 'x' });
      n.ready('up');
      assert.equal(await listener.next(1000), 'READY=1\nSTATUS=up');
    } finally {
      n?.close();
      listener.close();
    }
    assert.equal(SdNotifier.fromEnvironment({}), undefined);
    assert.equal(SdNotifier.fromEnvironment({ NOTIFY_SOCKET: 'nonsense' }), undefined);
  });

  it('reports a manager that is not listening with the errno, without throwing at construction', () => {
    const n = new SdNotifier(path.join(dir, 'nobody'));
    try {
      assert.throws(() => n.ready('x'), /notifying the service manager at .*nobody: ENOENT/);
    } finally {
      n.close();
    }
  });
});
