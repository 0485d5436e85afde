/**
 * org.freedesktop.DBus.Debug.Stats, as dbus-daemon answers it where it is built with
 * statistics (Debian's is): GetStats for the bus, GetConnectionStats for one connection,
 * GetAllMatchRules. The interface is dbus-daemon's debugging aid, not a stable API, and a
 * reader of its dictionaries takes the keys it knows: kdbus-cuse gives the keys whose counts
 * it keeps and leaves out those it has no equivalent for (dbus-daemon's memory pools, the
 * peaks of bytes and descriptors queued, the peaks of names). Each answer carries Serial,
 * how many answers of its method (GetStats, GetConnectionStats) came before, as dbus-daemon's
 * do.
 */
import { Variant } from './value';

/** An a{sv} as the driver's bodies hold it. */
export type Entries = Array<[string, Variant]>;

/** The legacy clients' match rules: how many there are, and the most there were. */
export class MatchRuleCounts {
  total = 0;
  peak = 0;
  peakPerConnection = 0;

  /** A client added a rule and holds `held` now. */
  added(held: number): void {
    this.total++;
    this.peak = Math.max(this.peak, this.total);
    this.peakPerConnection = Math.max(this.peakPerConnection, held);
  }

  removed(count = 1): void {
    this.total -= count;
  }
}

export interface BusCounts {
  /** Connections of the bus, legacy clients after Hello and kdbus clients alike. */
  activeConnections: number;
  /** Legacy clients that have not said Hello. */
  incompleteConnections: number;
  /** Unique names and owned well-known names. */
  busNames: number;
  rules: MatchRuleCounts;
}

export interface ConnectionCounts {
  uniqueName: string;
  /** Its unique name and the well-known names it owns or waits for. */
  busNames: number;
  /** Only for a legacy client: what dbus-daemon counts of a connection of its own kind. */
  legacy?: {
    matchRules: number;
    peakMatchRules: number;
    /** Received, not yet a whole message: the bytes and descriptors held. */
    incomingBytes: number;
    incomingFds: number;
    /** Accepted for the client, not yet taken by its socket. */
    outgoingMessages: number;
    outgoingBytes: number;
    outgoingFds: number;
  };
}

const u = (n: number): Variant => new Variant('u', n);

/** The Serial of one method's answers. */
export class StatsSerial {
  private next = 0;

  take(): number {
    return this.next++;
  }
}

/** In dbus-daemon's order, less what it has no count for. */
export function busStats(serial: number, c: BusCounts): Entries {
  return [
    ['Serial', u(serial)],
    ['ActiveConnections', u(c.activeConnections)],
    ['IncompleteConnections', u(c.incompleteConnections)],
    ['MatchRules', u(c.rules.total)],
    ['PeakMatchRules', u(c.rules.peak)],
    ['PeakMatchRulesPerConnection', u(c.rules.peakPerConnection)],
    ['BusNames', u(c.busNames)],
  ];
}

/** In dbus-daemon's order, less what it has no count for. */
export function connectionStats(serial: number, c: ConnectionCounts): Entries {
  const l = c.legacy;
  return [
    ['Serial', u(serial)],
    ...(l ? [['MatchRules', u(l.matchRules)], ['PeakMatchRules', u(l.peakMatchRules)]] as Entries : []),
    ['BusNames', u(c.busNames)],
    ['UniqueName', new Variant('s', c.uniqueName)],
    ...(l ? [
      // Whole messages are routed as soon as they are read: none waits.
      ['IncomingMessages', u(0)],
      ['IncomingBytes', u(l.incomingBytes)],
      ['IncomingFDs', u(l.incomingFds)],
      ['OutgoingMessages', u(l.outgoingMessages)],
      ['OutgoingBytes', u(l.outgoingBytes)],
      ['OutgoingFDs', u(l.outgoingFds)],
    ] as Entries : []),
  ];
}
