/**
 * What the daemon holds on behalf of a user's connections. A client sends a message's
 * descriptors with its first bytes, and announces its length in them (a dbus1 message on
 * the legacy endpoint, a frame on the socket transport); until the last byte comes, the
 * daemon keeps the descriptors open and a buffer for the whole message. A client that does
 * not read leaves the messages for it queued in the daemon. One connection may hold only so
 * much, but a user with hundreds of connections could fill the daemon's descriptor table or
 * its memory that way, and then nobody could connect any more, or the kernel would end the
 * daemon. So a listener counts what they hold per user and in all, against shares of what
 * the daemon may have (RLIMIT_NOFILE, the machine's or the cgroup's memory); what would go
 * beyond a share is refused, and only that user's traffic suffers.
 */
import os from 'node:os';
import { logger } from '../log/logger';

export interface HeldShares {
  /** What all the connections of one user may hold at once. */
  perUser: number;
  /** What all connections together may hold at once. */
  total: number;
}

/** A sixteenth of `available` for one user, a quarter for all; never less than `atLeast`. */
function sharesOf(available: number, atLeast: number): HeldShares {
  return {
    perUser: Math.max(atLeast, Math.floor(available / 16)),
    total: Math.max(atLeast, Math.floor(available / 4)),
  };
}

/** Descriptors, for a daemon that may have `fileLimit` open; room for one message's at least. */
export function descriptorShares(fileLimit: number, maxFdsPerMessage: number): HeldShares {
  return sharesOf(fileLimit, maxFdsPerMessage);
}

/** Bytes, out of the memory the daemon can have: the machine's, or its cgroup's if less. */
export function byteShares(maxMessageBytes: number, memory = availableMemory()): HeldShares {
  return sharesOf(memory, maxMessageBytes);
}

function availableMemory(): number {
  const total = os.totalmem();
  const constrained = process.constrainedMemory?.() ?? 0;
  return constrained > 0 && constrained < total ? constrained : total;
}

export class HeldBudget {
  private readonly byUser = new Map<number, number>();
  private heldTotal = 0;

  /** `what` names what is counted, in refusals: "descriptors of unfinished messages". */
  constructor(readonly what: string, readonly shares: HeldShares) {}

  /** Held now: by one user's connections, or by all. */
  held(uid?: number): number {
    return uid === undefined ? this.heldTotal : (this.byUser.get(uid) ?? 0);
  }

  /** A new connection's account, charged to `uid`. */
  account(uid: number): HeldAccount {
    return new HeldAccount(this, uid);
  }

  /** Why `delta` more for `uid` would exceed a share; undefined if it fits. */
  excess(uid: number, delta: number): string | undefined {
    if (delta <= 0) return undefined;
    const user = this.held(uid) + delta;
    if (user > this.shares.perUser) {
      return `its user (uid ${uid}) would hold ${user} ${this.what}, more than the ${this.shares.perUser} one user may`;
    }
    const total = this.heldTotal + delta;
    if (total > this.shares.total) {
      return `all clients would hold ${total} ${this.what}, more than the ${this.shares.total} all may`;
    }
    return undefined;
  }

  /** @internal records what an account changed; excess() has allowed it. */
  move(uid: number, delta: number): void {
    const user = this.held(uid) + delta;
    this.heldTotal += delta;
    if (user === 0) this.byUser.delete(uid);
    else this.byUser.set(uid, user);
  }
}

/** One connection's part of a budget: how much it holds now. */
export class HeldAccount {
  private mine = 0;
  /** Why the last refused hold() was refused, for the log. */
  refusal = '';

  constructor(private readonly budget: HeldBudget, readonly uid: number) {}

  /** Whether `extra` more than the connection holds now would stay within the shares. */
  fits(extra: number): boolean {
    return this.budget.excess(this.uid, extra) === undefined;
  }

  /**
   * The connection holds `n` from now on. False, with nothing recorded, when an increase
   * would exceed a share: the caller closes the connection (and then holds 0).
   */
  hold(n: number): boolean {
    const delta = n - this.mine;
    const excess = this.budget.excess(this.uid, delta);
    if (excess !== undefined) {
      this.refusal = excess;
      return false;
    }
    this.mine = n;
    if (delta !== 0) this.budget.move(this.uid, delta);
    return true;
  }
}

/**
 * The log of clients refused at accept because their user is over a share: one warning per
 * user and episode, later refusals at verbose, until one of that user's connections closes.
 */
export class Refusals {
  private readonly warned = new Set<number>();

  note(uid: number, line: string): void {
    if (this.warned.has(uid)) {
      logger.verbose(line);
      return;
    }
    this.warned.add(uid);
    logger.warn(line);
  }

  /** A connection of the user closed: its next refusal starts a new episode. */
  forget(uid: number): void {
    this.warned.delete(uid);
  }
}
