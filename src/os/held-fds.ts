/**
 * Descriptors the daemon holds for messages that have not arrived whole. A client sends a
 * message's descriptors with its first bytes (a dbus1 message on the legacy endpoint, a
 * frame on the socket transport); until the last byte comes, the daemon keeps them open.
 * One connection may hold only a few messages' worth, but a user with hundreds of
 * connections could fill the daemon's descriptor table that way, and then nobody could
 * connect any more. So a listener counts them per user and in all, against shares of the
 * daemon's own limit (RLIMIT_NOFILE); the connection whose read would go beyond a share is
 * closed, and only that user's traffic suffers.
 */

export interface HeldFdShares {
  /** Descriptors all the connections of one user may hold at once. */
  perUser: number;
  /** Descriptors all connections together may hold at once. */
  total: number;
}

/**
 * The shares for a daemon that may have `fileLimit` descriptors open: a quarter for
 * unfinished messages of all users, a sixteenth for any one, and room for one message of
 * the most descriptors however low the limit is.
 */
export function sharesOf(fileLimit: number, maxFdsPerMessage: number): HeldFdShares {
  return {
    perUser: Math.max(maxFdsPerMessage, Math.floor(fileLimit / 16)),
    total: Math.max(maxFdsPerMessage, Math.floor(fileLimit / 4)),
  };
}

export class HeldFdBudget {
  private readonly byUser = new Map<number, number>();
  private heldTotal = 0;

  constructor(readonly shares: HeldFdShares) {}

  /** Descriptors held now: by one user's connections, or by all. */
  held(uid?: number): number {
    return uid === undefined ? this.heldTotal : (this.byUser.get(uid) ?? 0);
  }

  /** A new connection's account, charged to `uid`. */
  account(uid: number): HeldFdAccount {
    return new HeldFdAccount(this, uid);
  }

  /** Why `delta` more descriptors for `uid` would exceed a share; undefined if they fit. */
  excess(uid: number, delta: number): string | undefined {
    if (delta <= 0) return undefined;
    const user = this.held(uid) + delta;
    if (user > this.shares.perUser) {
      return `its user (uid ${uid}) would hold ${user} descriptors of unfinished messages, more than the ${this.shares.perUser} one user may`;
    }
    const total = this.heldTotal + delta;
    if (total > this.shares.total) {
      return `all clients would hold ${total} descriptors of unfinished messages, more than the ${this.shares.total} all may`;
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

/** One connection's part of the budget: how many descriptors it holds now. */
export class HeldFdAccount {
  private mine = 0;
  /** Why the last refused hold() was refused, for the log. */
  refusal = '';

  constructor(private readonly budget: HeldFdBudget, readonly uid: number) {}

  /**
   * The connection holds `n` descriptors from now on. False, with nothing recorded, when an
   * increase would exceed a share: the caller closes the connection (and then holds 0).
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
