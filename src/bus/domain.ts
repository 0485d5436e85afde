/**
 * The domain: what one kdbusfs mount was. It owns the buses, the per-uid accounting users,
 * and the id counter that buses and connections share (ids are never reused).
 */
import type { Bus } from './bus';
import type { NodeHost } from './node-host';
import type { PoolStorage } from './pool-storage';
import { SparseStorage } from './pool-storage';
import { KdbusUser } from './user';

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
