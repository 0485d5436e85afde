/**
 * Where kdbus nodes become visible to clients. kdbus created files in kdbusfs; here each
 * transport makes its own kind of node (a CUSE character device, a unix socket file) for
 * every endpoint, and the bus tells all of them when an endpoint appears or goes.
 */
import type { Endpoint } from './endpoint';

export interface NodeHost {
  /**
   * Makes the endpoint's node appear at `<root>/<bus>/<endpoint>` with the endpoint's mode
   * and owner. kdbus clients expect the node to exist once BUS_MAKE / ENDPOINT_MAKE
   * returns, so the command waits for a returned promise.
   */
  addEndpoint(ep: Endpoint): void | Promise<void>;
  /** Removes the node; the endpoint is already shut down. */
  removeEndpoint(ep: Endpoint): void;
}
