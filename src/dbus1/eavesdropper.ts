/**
 * Eavesdropping for a legacy client: dbus-daemon shows a connection whose rule says
 * eavesdrop='true' the messages other connections address to each other, where kdbus shows
 * them only to monitors. A client that may become a monitor (the bus owner or root) gets,
 * with its first such rule, a kdbus monitor connection of its own, owned by this object;
 * from it this passes on what dbus-daemon would show the client besides its ordinary
 * traffic: messages with a destination other than the client. Broadcasts and the client's
 * own messages reach it through its ordinary connection already. Calls to the driver never
 * cross kdbus: the client that made one shows it to eavesdroppers once the driver answered
 * it without an error (LegacyClient.answered), as dbus-daemon shows them.
 */
import { KDBUS_DST_ID_BROADCAST } from '../abi/constants';
import type { KdbusNode } from '../bus/handle';
import type { Credentials } from '../bus/caller';
import { logger } from '../log/logger';
import { LocalConnection } from './local-connection';
import type { NameOwners } from './match-rule';
import type { Message } from './message';
import { closeMessageFiles, type Received } from './pool-records';
import { fromKdbus, uniqueName } from './translate';

export interface EavesdropperOptions {
  node: KdbusNode;
  /** The client's identity; the monitor connection is privileged on its behalf. */
  creds: Credentials;
  pid: number;
  description: string;
  owners: NameOwners;
  /** The client's unique name: what is addressed to it, it receives anyway. */
  self: string;
  /** Offers the client a message addressed to another connection; its rules decide. */
  overhear: (m: Message) => void;
}

export class Eavesdropper {
  private readonly conn: LocalConnection;

  constructor(private readonly opts: EavesdropperOptions) {
    this.conn = LocalConnection.open(opts.node, { creds: opts.creds, pid: opts.pid, privileged: true }, {
      attachFlagsRecv: 0n,
      acceptFds: false,
      monitor: true,
      description: opts.description,
    });
    this.conn.onMessage((r) => this.monitored(r));
  }

  /** Hands on what the bus delivered before a message from outside it (the driver's). */
  flush(): void {
    this.conn.flush();
  }

  close(): void {
    this.conn.close();
  }

  private monitored(r: Received): void {
    // Name and id notifications reach the client through its own rules.
    if (r.kind !== 'message') return;
    try {
      if (r.dstId === KDBUS_DST_ID_BROADCAST) return;
      const m = fromKdbus(r, r.dstId === 0n ? '' : uniqueName(r.dstId));
      const recipient = m.destination === undefined ? undefined : this.opts.owners.primaryOwner(m.destination);
      if (recipient === this.opts.self) return;
      // Descriptors are not passed on, as to monitors: they belong to the recipient.
      this.opts.overhear(m.unixFds === undefined ? m : { ...m, unixFds: undefined });
    } catch (e) {
      logger.debug(`${this.opts.self}: an overheard message could not be shown: ${(e as Error).message}`);
    } finally {
      closeMessageFiles(r);
    }
  }
}
