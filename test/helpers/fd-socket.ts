/**
 * One sendmsg or recvmsg with descriptors on a raw socket, for tests that play a client
 * (or a peer) of a daemon in the same process. Both go through the daemon's own ClientSocket,
 * whose headers live as long as it does, so what the kernel is pointed at stays alive.
 */
import { ClientSocket } from '../../src/transport/client-socket';

/** Bytes sent with `fds` on the first; -1 when the socket is full (nothing went out). */
export function sendWithFds(fd: number, data: Buffer, fds: readonly number[]): number {
  return new ClientSocket(fd).send(data, 0, data.length, fds);
}

/** Up to `maxData` bytes and the descriptors that came with them; undefined when nothing is queued. */
export function recvWithFds(fd: number, maxData: number): { data: Buffer; fds: number[] } | undefined {
  const socket = new ClientSocket(fd);
  const data = Buffer.alloc(maxData);
  const n = socket.recv(data, 0, maxData);
  if (n < 0) return undefined;
  return { data: data.subarray(0, n), fds: [...socket.fds] };
}
