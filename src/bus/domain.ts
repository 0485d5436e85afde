/**
 * The domain: what one kdbusfs mount was. It owns the buses, the per-uid accounting users,
 * and the id counter that buses and connections share (ids are never reused).
 */
import type { Bus } from './bus';
import type { NodeHost } from './node-host';
import type { PoolStorage } from './pool-storage';
import { SparseStorage } from './pool-storage';
import { KdbusUser } from './user';
import { Limits } from '../abi/constants';
import { byteShares, HeldBudget } from '../os/held-budget';

export class Domain {
  readonly buses = new Map<string, Bus>();
  readonly hosts: NodeHost[] = [];
  private readonly users = new Map<number, KdbusUser>();
  private lastId = 0n;

  /**
   * Where connection pools live. Transports whose clients map the pool (CUSE and the
   * socket transport, through the shim) install a memfd-backed factory; in-process users
   * keep the sparse in-memory default.
   */
  poolStorage: (size: number) => PoolStorage = (size) => new SparseStorage(size);

  /**
   * The daemon's memory that connections' match entries take, by the opener's uid: kdbus
   * bounded them by count alone (4096 entries of up to 32 KiB each, per connection), which
   * in a daemon's heap is hundreds of MB per connection.
   */
  matchBytes = new HeldBudget('bytes of match entries', byteShares(Limits.CMD_MAX_SIZE));

  /**
   * The daemon's memory that pools' slices in use take, by the opener's uid: kdbus's pools
   * were charged to their clients; here a client that receives and never FREEs fills pools
   * of up to 4 GiB each in the daemon.
   */
  poolBytes = new HeldBudget('bytes of pool slices in use', byteShares(Limits.MSG_MAX_PAYLOAD_VEC_SIZE));

  /**
   * Message bodies the daemon itself put into memfds, by the sender's uid, for as long as
   * the daemon holds them: the legacy endpoint and the bridge send bodies of 512 KiB and
   * more so, where kdbus's vectors would stop at 2 MiB. Unlike a client's memfd, whose pages
   * its client pays for, these are the daemon's; one dbus1 message may have 128 MiB.
   */
  bodyBytes = new HeldBudget('bytes of message bodies in memfds', byteShares(128 * 1024 * 1024));

  /**
   * The daemon's descriptors that files in messages take from SEND until their receiver
   * takes them, by the sender's uid. kdbus held them as references in the kernel; a daemon
   * holds open descriptors, out of a limit all users share. Set by whoever knows that limit
   * (the daemon); unbounded here.
   */
  messageFds: HeldBudget | undefined;

  nextId(): bigint {
    return ++this.lastId;
  }

  user(uid: number): KdbusUser {
    let user = this.users.get(uid);
    if (!user) {
      user = new KdbusUser(uid);
      this.users.set(uid, user);
    }
    return user;
  }

  /** Tears down every bus, as unmounting kdbusfs did. */
  shutdown(): void {
    for (const bus of [...this.buses.values()]) bus.destroy();
  }
}
