/**
 * Chooses the transports for this machine and configuration. The socket transport runs in
 * every mode: it is how containers and kernels without CONFIG_CUSE reach the bus, and it is
 * the shim's side channel for CUSE clients (pool mapping, file descriptors). CUSE serves
 * the kdbus tree where /dev/cuse can be opened; the socket transport then keeps no
 * placeholder files there.
 */
import type { Config } from '../config/config';
import { CuseTransport, cuseUnavailable } from '../cuse/cuse-transport';
import { logger } from '../log/logger';
import { StartupError } from './startup-error';
import { AttachmentRegistry } from '../transport/attachments';
import { SocketTransport } from '../transport/socket-transport';
import type { Transport } from './transport';

export async function selectTransports(config: Config): Promise<Transport[]> {
  const attachments = new AttachmentRegistry();
  let cuse = false;
  if (config.transport !== 'socket') {
    const why = cuseUnavailable();
    if (why === undefined) cuse = true;
    else if (config.transport === 'cuse') throw new StartupError(why);
    else logger.info(`CUSE not used: ${why}; serving the socket transport only`);
  }
  const out: Transport[] = [new SocketTransport({ socketPath: config.socket, kdbusRoot: config.kdbusRoot, placeholders: !cuse, attachments })];
  if (cuse) out.unshift(new CuseTransport({ kdbusRoot: config.kdbusRoot, attachments }));
  return out;
}
