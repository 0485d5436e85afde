/**
 * A kdbus "user": the unit that limits and quotas are charged to. Real users are keyed by
 * their real uid in the domain; every custom endpoint has one anonymous user shared by all
 * its connections, so an endpoint's clients cannot exhaust their real users' allowances.
 */
import { Limits } from '../abi/constants';
import { fail } from '../abi/errno';

export class KdbusUser {
  buses = 0;
  connections = 0;

  constructor(
    /** Real uid, or undefined for an endpoint's anonymous user. */
    readonly uid: number | undefined,
  ) {}

  chargeBus(): void {
    if (this.buses >= Limits.USER_MAX_BUSES) {
      throw fail('EMFILE', `user ${this.uid} already owns ${Limits.USER_MAX_BUSES} buses`);
    }
    this.buses++;
  }

  chargeConnection(): void {
    if (this.connections >= Limits.USER_MAX_CONN) {
      throw fail('EMFILE', `user ${this.uid ?? '(endpoint)'} already has ${Limits.USER_MAX_CONN} connections`);
    }
    this.connections++;
  }
}

/** The key kernel notifications are charged to in receivers' quotas. */
export const KERNEL_USER = new KdbusUser(undefined);
