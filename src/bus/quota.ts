/**
 * How much of a receiving connection's queue one sending user may fill (kdbus-abi.md §3.8,
 * kernel kdbus_conn_quota_inc/_dec). Half the pool stays reserved for the owner's own
 * command results; of the other half, a user may use a third of what is unused, counting
 * its own queued bytes as unused. The first users get the most, and room always remains
 * for the next ones. Per user also: at most 256 queued messages and 16 queued fds.
 *
 * Call order, as in the kernel: charge() first, reading the pool's accounted size *before*
 * the message's own slice exists; then allocate the accounted slice; if that fails, release
 * the charge. The charge belongs to the queued message and is released when it leaves the
 * queue (RECV, DROP, move, disconnect).
 */
import { Limits } from '../abi/constants';
import { fail } from '../abi/errno';
import type { Pool } from './pool';

const U32_MAX = 0xffff_ffff;
/** Idle user records kept before a sweep: senders come back, endpoints' users may not. */
const SWEEP_MIN = 64;

/** What one user has queued on one receiver. The kernel keeps these as u32, u16 and u8. */
interface UserUsage {
  memory: number;
  msgs: number;
  fds: number;
}

export class QuotaTable {
  /**
   * Users with something queued, plus users whose messages all left (all zeros, dropped in
   * sweeps: deleting at each last release made a busy sender's every message pay for it).
   */
  private readonly users = new Map<object, UserUsage>();
  private sweepAt = SWEEP_MIN;

  constructor(private readonly pool: Pick<Pool, 'size' | 'accountedSize'>) {}

  /**
   * Charges a message of `size` bytes (the whole 8-aligned slice) carrying `nfds` fds, queued
   * by `user` (an opaque key: the sender's kdbus user, or the caller's key for kernel
   * notifications). ENOBUFS over the memory or message limit, EMFILE over the fd limit.
   */
  charge(user: object, size: number, nfds: number): QuotaCharge {
    const usage = this.users.get(user) ?? this.addUser(user);
    const half = Math.floor(this.pool.size / 2);
    const accounted = this.pool.accountedSize;
    if (half < accounted) {
      throw fail('ENOBUFS', `receiver's queue holds ${accounted} bytes, more than half its ${this.pool.size}-byte pool`);
    }
    const allowed = Math.floor((half - accounted + usage.memory) / 3);
    if (allowed < usage.memory || allowed - usage.memory < size || usage.memory + size > U32_MAX) {
      throw fail(
        'ENOBUFS',
        `receiver's quota for this sender is exhausted: ${usage.memory} bytes queued, ` +
          `${allowed} allowed, message needs ${size}`,
      );
    }
    if (usage.msgs >= Limits.CONN_MAX_MSGS) {
      throw fail('ENOBUFS', `this sender already has ${usage.msgs} messages queued on the receiver`);
    }
    if (usage.fds + nfds > Limits.CONN_MAX_FDS_PER_USER) {
      throw fail(
        'EMFILE',
        `this sender has ${usage.fds} fds queued on the receiver; ${nfds} more would pass ` +
          `the limit of ${Limits.CONN_MAX_FDS_PER_USER}`,
      );
    }
    usage.memory += size;
    usage.fds += nfds;
    usage.msgs++;
    return new QuotaCharge(user, usage, size, nfds);
  }

  private addUser(user: object): UserUsage {
    if (this.users.size >= this.sweepAt) {
      for (const [key, usage] of this.users) if (usage.msgs === 0) this.users.delete(key);
      this.sweepAt = Math.max(SWEEP_MIN, 2 * this.users.size);
    }
    const usage = { memory: 0, msgs: 0, fds: 0 };
    this.users.set(user, usage);
    return usage;
  }
}

/** One queued message's share of a user's quota; held by the queue entry. */
export class QuotaCharge {
  private released = false;

  constructor(
    /** The key it was charged to: a message moved to another receiver is charged to it again. */
    readonly user: object,
    private readonly usage: UserUsage,
    readonly size: number,
    readonly nfds: number,
  ) {}

  release(): void {
    if (this.released) return;
    this.released = true;
    const usage = this.usage;
    usage.memory -= this.size;
    usage.fds -= this.nfds;
    usage.msgs--;
  }
}
