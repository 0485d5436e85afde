/**
 * The relay of socket-rtt's relayed floor in Node, with the daemon's own socket I/O: the
 * listener, SO_PASSCRED, recvmsg and sendmsg through ClientSocket, readiness through FdWatch.
 * Takes two connections and forwards what either writes to the other, as the daemon forwards
 * a call and its reply, with nothing else done: what a Node bus costs before any bus work.
 *
 *   node dist/bench/socket-relay.js <socket path>
 */
import { FdWatch } from '../src/os/fd-watch';
import { UnixListener } from '../src/os/unix-listener';
import { setPassCred } from '../src/os/unix-socket';
import { ClientSocket } from '../src/transport/client-socket';

const socketPath = process.argv[2];
if (!socketPath) {
  console.error('usage: node dist/bench/socket-relay.js <socket path>');
  process.exit(2);
}
const ends: ClientSocket[] = [];
const buf = Buffer.alloc(4096);
const listener = new UnixListener({ kind: 'path', path: socketPath }, (fd) => {
  if (ends.length === 2) return;
  setPassCred(fd);
  const end = new ClientSocket(fd);
  const me = ends.push(end) - 1;
  new FdWatch(fd, () => {
    const n = end.recv(buf, 0, buf.length);
    if (n === 0) process.exit(0);
    if (n > 0 && ends[1 - me]!.send(buf, 0, n, []) !== n) process.exit(1);
  });
  if (ends.length === 2) listener.close();
});
