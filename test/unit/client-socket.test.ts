/**
 * The daemon's raw end of a client's socket (src/transport/client-socket.ts): bytes,
 * descriptors and the writer's credentials in each read.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { closeFd, setPassCred, socketpair, SOCK_STREAM } from '../../src/os/unix-socket';
import { ClientSocket } from '../../src/transport/client-socket';

describe('client socket', () => {
  let a: number;
  let b: number;

  beforeEach(() => {
    [a, b] = socketpair(SOCK_STREAM);
  });

  afterEach(() => {
    closeFd(a);
    closeFd(b);
  });

  it('reads the bytes, the descriptors sent with them and, with SO_PASSCRED, who wrote them', () => {
    setPassCred(b);
    const file = fs.openSync('/dev/null', 'r');
    try {
      assert.equal(new ClientSocket(a).send(Buffer.from('xxhello world'), 2, 11, [file]), 11);
      const reader = new ClientSocket(b);
      const into = Buffer.alloc(32);
      assert.equal(reader.recv(into, 4, 28), 11);
      assert.equal(into.toString('latin1', 4, 15), 'hello world');
      assert.equal(reader.fds.length, 1);
      assert.equal(fs.readlinkSync(`/proc/self/fd/${reader.fds[0]}`), '/dev/null');
      closeFd(reader.fds[0]!);
      assert.deepEqual([reader.pid, reader.uid, reader.gid], [process.pid, process.getuid!(), process.getgid!()]);
      assert.equal(reader.recv(into, 0, 32), -1, 'nothing queued reads as -1');
    } finally {
      fs.closeSync(file);
    }
  });
});
