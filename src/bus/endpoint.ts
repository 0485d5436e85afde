/**
 * An endpoint: a node clients open to connect to a bus. Every bus has the default endpoint
 * "bus"; bus owners add custom endpoints, which start with an empty policy (nothing visible,
 * nothing talkable or ownable) and charge their connections to one anonymous user.
 */
import { MakeFlags } from '../abi/constants';
import type { Bus } from './bus';
import type { Connection } from './connection';
import { PolicyDb } from './policy';
import { KdbusUser } from './user';
import type { Opener } from './caller';

export class Endpoint {
  readonly connections = new Set<Connection>();
  /** Only custom endpoints filter with a policy of their own. */
  readonly policy: PolicyDb | undefined;
  /** The anonymous user of a custom endpoint; undefined for the default one. */
  readonly user: KdbusUser | undefined;
  active = true;

  constructor(
    readonly bus: Bus,
    readonly name: string,
    /** MAKE_ACCESS_* flags given at creation. */
    readonly accessFlags: bigint,
    /** Creator's euid and egid: the node's owner. */
    readonly uid: number,
    readonly gid: number,
    readonly isDefault: boolean,
  ) {
    this.policy = isDefault ? undefined : new PolicyDb();
    this.user = isDefault ? undefined : new KdbusUser(undefined);
  }

  /** Path of the node below the kdbus root, e.g. "0-system/bus". */
  get path(): string {
    return `${this.bus.name}/${this.name}`;
  }

  /** File mode of the node: 0600, plus group and world rw as the make flags ask. */
  get mode(): number {
    let mode = 0o600;
    if (this.accessFlags & (MakeFlags.ACCESS_GROUP | MakeFlags.ACCESS_WORLD)) mode |= 0o060;
    if (this.accessFlags & MakeFlags.ACCESS_WORLD) mode |= 0o006;
    return mode;
  }

  /** kdbus decides privilege from the opener of the file: CAP_IPC_OWNER on the default endpoint. */
  isPrivileged(opener: Opener): boolean {
    return this.isDefault && opener.privileged;
  }

  /** Bus owner: opener's euid is the bus uid (or privileged), and only on the default endpoint. */
  isOwner(opener: Opener): boolean {
    return this.isDefault && (opener.creds.euid === this.bus.uid || opener.privileged);
  }
}
