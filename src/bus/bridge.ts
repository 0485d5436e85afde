/**
 * What a bus joined to an upstream D-Bus bus (dbus-daemon, dbus-broker) leaves to the
 * bridge. Upstream owns the well-known names there: a name a client asks for is asked for
 * upstream, and upstream's answer is what the client gets. Messages to names nobody here
 * owns go upstream too, where they may start a service. The connections the bridge holds
 * itself (stand-ins for upstream peers) use the bus as it is.
 */
import type { Connection } from './connection';

export interface BusBridge {
  /** Whether `conn` is one of the bridge's stand-ins. */
  isOwn(conn: Connection): boolean;
  /**
   * NAME_ACQUIRE by a client: asks upstream, then takes or queues for the name here as
   * upstream decided. Resolves to the return flags; rejects with the client's KdbusError.
   */
  acquireName(conn: Connection, name: string, flags: bigint): Promise<bigint>;
  /** A client released `name` here: upstream should forget its claim too. */
  nameReleased(conn: Connection, name: string): void;
  /**
   * A client's matches changed (MATCH_ADD, MATCH_REMOVE): the bridge takes upstream signals
   * only while some client can receive them. MATCH_ADD returns once the promise settles.
   */
  matchesChanged(conn: Connection): Promise<void> | undefined;
  /** A client is gone, its names already released here. */
  connectionGone(conn: Connection): void;
  /**
   * The connection that carries a message for `name`, which nobody here owns, upstream;
   * undefined when upstream is out of reach.
   */
  unownedName(name: string): Connection | undefined;
}
