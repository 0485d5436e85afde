/**
 * A way for clients to reach the domain's nodes. The daemon starts each transport the
 * configuration and the machine allow; all of them call the same Handle code.
 */
import type { Domain } from '../bus/domain';

export interface Transport {
  readonly name: string;
  /** Starts serving; resolves once the control node exists for this transport. */
  start(domain: Domain): Promise<void>;
  /** Stops serving and removes every node it created. */
  stop(): Promise<void>;
  /** One line for the start-up log: where clients find it. */
  describe(): string;
}
