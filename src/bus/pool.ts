/**
 * A connection's pool: the memory the client maps read-only and everything the bus returns
 * to it lives in (HELLO items, received messages, sync replies, LIST, CONN_INFO). Returned
 * data is a slice, reported as (offset, size), and stays until the client FREEs the offset.
 *
 * The allocator reproduces kdbus's byte for byte (ipc/kdbus/pool.c), because clients and the
 * self-tests observe offsets (connection-info expects a freed slice's offset to come back):
 *  - sizes are rounded up to 8;
 *  - free slices sit in a red-black tree ordered by size (equal sizes go right); allocation
 *    walks it for the smallest size >= the request, taking the first exact match met on the
 *    way down, otherwise the closest larger one; it uses the slice's beginning and puts the
 *    remainder back as a new free slice right after it;
 *  - a released slice merges with a free successor, then with a free predecessor.
 * Which of several equally sized free slices wins depends on the tree's shape, so the tree
 * rebalances exactly as the kernel's rbtree does (lib/rbtree.c's insert and erase cases);
 * a sorted array would pick a different one.
 *
 * A slice is held by the bus (the "kernel reference": a queue entry, a command building its
 * reply) and, once published, by the client (the "user reference", dropped by FREE). It goes
 * back to the free tree when both are gone. Accounted slices are messages sitting in a queue;
 * their total is what the quota (quota.ts) measures, and it stops counting a slice as soon as
 * the bus drops its reference, even if the client has not freed it yet.
 */
import { fail } from '../abi/errno';
import type { HeldAccount } from '../os/held-budget';
import type { PoolStorage } from './pool-storage';

/** Where something lives in the pool, as the ABI reports it. */
export interface PoolExtent {
  readonly offset: number;
  readonly size: number;
}

/**
 * An allocated slice, seen from outside the allocator. The handle is only valid while the bus
 * holds its reference: after releaseKernel() the same object may be recycled for another
 * allocation, as the kernel recycles its slice structs.
 */
export interface Slice extends PoolExtent {
  readonly accounted: boolean;
  /** Copies `data` into the slice; EFAULT if it does not fit. */
  write(offsetInSlice: number, data: Uint8Array): void;
  fill(offsetInSlice: number, length: number, byte: number): void;
  read(offsetInSlice: number, length: number): Buffer;
  /** Copies all of an equally sized slice of any pool (queue moves between connections). */
  copyFrom(src: Slice): void;
  /** Gives the client a reference it must FREE; returns this slice as the extent to report. */
  publish(): PoolExtent;
  /** Drops the bus's reference; the slice is freed now if the client holds none. */
  releaseKernel(): void;
}

const MAX_OFFSET = BigInt(Number.MAX_SAFE_INTEGER);

/** Arithmetic, not bit operations: pools may exceed 2 GiB. */
const align8 = (n: number): number => n + 7 - ((n + 7) % 8);

class SliceNode implements Slice {
  /** Address-order neighbours: all slices, free and busy, tile the pool. */
  prev: SliceNode | null = null;
  next: SliceNode | null = null;
  /** Free-tree links, meaningful while `free`. */
  left: SliceNode | null = null;
  right: SliceNode | null = null;
  parent: SliceNode | null = null;
  red = false;

  free = true;
  accounted = false;
  refKernel = false;
  refUser = false;

  constructor(
    readonly pool: Pool,
    public offset: number,
    public size: number,
  ) {}

  write(offsetInSlice: number, data: Uint8Array): void {
    this.checkAccess(offsetInSlice, data.length);
    this.pool.storage.write(this.offset + offsetInSlice, data);
  }

  fill(offsetInSlice: number, length: number, byte: number): void {
    this.checkAccess(offsetInSlice, length);
    this.pool.storage.fill(this.offset + offsetInSlice, length, byte);
  }

  read(offsetInSlice: number, length: number): Buffer {
    this.checkAccess(offsetInSlice, length);
    return this.pool.storage.read(this.offset + offsetInSlice, length);
  }

  copyFrom(src: Slice): void {
    if (src.size !== this.size) {
      throw fail('EINVAL', `cannot copy a ${src.size}-byte slice into a ${this.size}-byte slice`);
    }
    this.write(0, src.read(0, src.size));
  }

  publish(): PoolExtent {
    this.checkHeld();
    this.refUser = true;
    return this;
  }

  releaseKernel(): void {
    this.checkHeld();
    this.refKernel = false;
    if (this.accounted) this.pool.unaccount(this.size);
    if (!this.refUser) this.pool.reclaim(this);
  }

  private checkAccess(offsetInSlice: number, length: number): void {
    this.checkHeld();
    if (!(offsetInSlice >= 0 && length >= 0 && offsetInSlice + length <= this.size)) {
      throw fail('EFAULT', `[${offsetInSlice}, +${length}) does not fit a ${this.size}-byte pool slice`);
    }
  }

  private checkHeld(): void {
    if (!this.refKernel) throw new Error(`pool slice at ${this.offset} used after the bus released it`);
  }
}

export class Pool {
  private readonly freeTree = new FreeTree();
  /** Slices with a reference, by offset: FREE looks them up here. */
  private readonly busy = new Map<number, SliceNode>();
  private accounted = 0;
  /** Bytes in slices that are not free: what the pool's storage may hold. */
  private inUse = 0;
  private readonly empty: PoolExtent;

  /**
   * `account`: the daemon's memory the pool's slices take, counted with the other pools of
   * the same user (held-budget.ts). kdbus's pools were the clients' own memory; here every
   * pool is the daemon's, and a client that never FREEs could fill all of its pools.
   */
  constructor(readonly storage: PoolStorage, private readonly account?: HeldAccount) {
    this.freeTree.insert(new SliceNode(this, 0, storage.size));
    this.empty = Object.freeze({ offset: storage.size, size: 0 });
  }

  get size(): number {
    return this.storage.size;
  }

  /** Bytes in accounted slices the bus still holds: the queue's share the quota measures. */
  get accountedSize(): number {
    return this.accounted;
  }

  /** Slices the bus or the client still holds (leak checks). */
  get busySlices(): number {
    return this.busy.size;
  }

  /**
   * A slice of at least `size` bytes (rounded up to 8), held by the bus. `accounted` marks a
   * message slice going into a queue. EXFULL when no free slice is large enough.
   */
  alloc(size: number, accounted: boolean): Slice {
    if (size <= 0) throw fail('EINVAL', `pool slices must not be empty (asked for ${size} bytes)`);
    const want = align8(size);
    let found: SliceNode | null = null;
    let exact = false;
    for (let n = this.freeTree.root; n; ) {
      if (want < n.size) {
        found = n;
        n = n.left;
      } else if (want > n.size) {
        n = n.right;
      } else {
        found = n;
        exact = true;
        break;
      }
    }
    if (!found) {
      throw fail('EXFULL', `no free ${want}-byte range left in the ${this.size}-byte pool; the client must FREE what it received`);
    }
    if (this.account && !this.account.hold(this.inUse + want)) {
      throw fail('EXFULL', `the pool's ${want} more bytes are refused: ${this.account.refusal}; the client must FREE what it received`);
    }
    this.inUse += want;
    if (!exact) {
      // Order matters for the tree's shape: the remainder goes in while `found` is still there.
      const rest = new SliceNode(this, found.offset + want, found.size - want);
      rest.prev = found;
      rest.next = found.next;
      if (found.next) found.next.prev = rest;
      found.next = rest;
      this.freeTree.insert(rest);
      found.size = want;
    }
    this.freeTree.erase(found);
    this.busy.set(found.offset, found);
    found.free = false;
    found.refKernel = true;
    found.accounted = accounted;
    if (accounted) this.accounted += want;
    return found;
  }

  /**
   * KDBUS_CMD_FREE: drops the client's reference on the slice starting at `offset`. The
   * pool size is the "empty result" offset and freeing it succeeds without effect. ENXIO if
   * no published slice starts exactly there.
   */
  freeByOffset(offset: number | bigint): void {
    const off = typeof offset === 'bigint' ? (offset <= MAX_OFFSET ? Number(offset) : -1) : offset;
    if (off === this.size) return;
    const slice = this.busy.get(off);
    if (!slice || !slice.refUser) {
      throw fail('ENXIO', `no slice the client received starts at pool offset ${offset}`);
    }
    slice.refUser = false;
    if (!slice.refKernel) this.reclaim(slice);
  }

  /** The extent reported when a command returns nothing: offset = pool size, size 0. */
  publishEmpty(): PoolExtent {
    return this.empty;
  }

  close(): void {
    this.storage.close();
    this.account?.hold(0);
  }

  /** @internal A slice's bus reference went away while it was accounted. */
  unaccount(size: number): void {
    this.accounted -= size;
  }

  /** @internal Both references are gone: merge with free neighbours and make it allocatable. */
  reclaim(slice: SliceNode): void {
    this.busy.delete(slice.offset);
    this.inUse -= slice.size;
    this.account?.hold(this.inUse);
    const next = slice.next;
    if (next && next.free) {
      this.freeTree.erase(next);
      slice.size += next.size;
      slice.next = next.next;
      if (next.next) next.next.prev = slice;
    }
    let merged = slice;
    const prev = slice.prev;
    if (prev && prev.free) {
      this.freeTree.erase(prev);
      prev.size += slice.size;
      prev.next = slice.next;
      if (slice.next) slice.next.prev = prev;
      merged = prev;
    }
    slice.free = true;
    this.freeTree.insert(merged);
  }
}

/**
 * The free slices keyed by size, a red-black tree with the kernel's insert and erase cases
 * (so the same operations give the same shape). The nodes are the slices themselves.
 */
class FreeTree {
  root: SliceNode | null = null;

  insert(node: SliceNode): void {
    let parent: SliceNode | null = null;
    let goLeft = false;
    for (let n = this.root; n; ) {
      parent = n;
      goLeft = node.size < n.size;
      n = goLeft ? n.left : n.right;
    }
    node.parent = parent;
    node.left = node.right = null;
    node.red = true;
    if (!parent) this.root = node;
    else if (goLeft) parent.left = node;
    else parent.right = node;
    this.afterInsert(node);
  }

  erase(node: SliceNode): void {
    const parentOfNode = node.parent;
    let rebalanceAt: SliceNode | null = null;
    if (!node.left) {
      // A lone child is red under a black node: it takes the node's place and colour.
      const child = node.right;
      this.replaceChild(parentOfNode, node, child);
      if (child) {
        child.parent = parentOfNode;
        child.red = node.red;
      } else if (!node.red) {
        rebalanceAt = parentOfNode;
      }
    } else if (!node.right) {
      const child = node.left;
      this.replaceChild(parentOfNode, node, child);
      child.parent = parentOfNode;
      child.red = node.red;
    } else {
      // Two children: the in-order successor takes the node's place and colour.
      let successor = node.right;
      let successorParent: SliceNode;
      let successorChild: SliceNode | null;
      if (!successor.left) {
        successorParent = successor;
        successorChild = successor.right;
      } else {
        do {
          successorParent = successor;
          successor = successor.left;
        } while (successor.left);
        successorChild = successor.right;
        successorParent.left = successorChild;
        successor.right = node.right;
        node.right.parent = successor;
      }
      successor.left = node.left;
      node.left.parent = successor;
      this.replaceChild(parentOfNode, node, successor);
      const successorWasRed = successor.red;
      successor.parent = parentOfNode;
      successor.red = node.red;
      if (successorChild) {
        successorChild.parent = successorParent;
        successorChild.red = false;
      } else if (!successorWasRed) {
        rebalanceAt = successorParent;
      }
    }
    node.left = node.right = node.parent = null;
    if (rebalanceAt) this.afterErase(rebalanceAt);
  }

  private afterInsert(start: SliceNode): void {
    let node = start;
    for (;;) {
      let parent = node.parent;
      if (!parent) {
        node.red = false;
        return;
      }
      if (!parent.red) return;
      const grandparent = parent.parent!;
      if (parent === grandparent.left) {
        const uncle = grandparent.right;
        if (uncle && uncle.red) {
          parent.red = uncle.red = false;
          grandparent.red = true;
          node = grandparent;
          continue;
        }
        if (node === parent.right) {
          this.rotateLeft(parent);
          parent = node;
        }
        this.rotateRight(grandparent);
      } else {
        const uncle = grandparent.left;
        if (uncle && uncle.red) {
          parent.red = uncle.red = false;
          grandparent.red = true;
          node = grandparent;
          continue;
        }
        if (node === parent.left) {
          this.rotateRight(parent);
          parent = node;
        }
        this.rotateLeft(grandparent);
      }
      parent.red = false;
      grandparent.red = true;
      return;
    }
  }

  /** `parent` lost one black node on the side of `node` (null at first: the emptied spot). */
  private afterErase(start: SliceNode): void {
    let parent = start;
    let node: SliceNode | null = null;
    for (;;) {
      let sibling = parent.right;
      if (node !== sibling) {
        if (sibling!.red) {
          this.rotateLeft(parent);
          sibling!.red = false;
          parent.red = true;
          sibling = parent.right;
        }
        const sib = sibling!;
        if (!isRed(sib.right)) {
          if (!isRed(sib.left)) {
            sib.red = true;
            if (parent.red) {
              parent.red = false;
              return;
            }
            node = parent;
            if (!node.parent) return;
            parent = node.parent;
            continue;
          }
          this.rotateRight(sib);
          sib.red = true;
          sibling = parent.right!;
          sibling.red = false;
        }
        const top = sibling!;
        this.rotateLeft(parent);
        top.red = parent.red;
        parent.red = false;
        top.right!.red = false;
        return;
      } else {
        sibling = parent.left;
        if (sibling!.red) {
          this.rotateRight(parent);
          sibling!.red = false;
          parent.red = true;
          sibling = parent.left;
        }
        const sib = sibling!;
        if (!isRed(sib.left)) {
          if (!isRed(sib.right)) {
            sib.red = true;
            if (parent.red) {
              parent.red = false;
              return;
            }
            node = parent;
            if (!node.parent) return;
            parent = node.parent;
            continue;
          }
          this.rotateLeft(sib);
          sib.red = true;
          sibling = parent.left!;
          sibling.red = false;
        }
        const top = sibling!;
        this.rotateRight(parent);
        top.red = parent.red;
        parent.red = false;
        top.left!.red = false;
        return;
      }
    }
  }

  private rotateLeft(x: SliceNode): void {
    const y = x.right!;
    x.right = y.left;
    if (y.left) y.left.parent = x;
    y.parent = x.parent;
    this.replaceChild(x.parent, x, y);
    y.left = x;
    x.parent = y;
  }

  private rotateRight(x: SliceNode): void {
    const y = x.left!;
    x.left = y.right;
    if (y.right) y.right.parent = x;
    y.parent = x.parent;
    this.replaceChild(x.parent, x, y);
    y.right = x;
    x.parent = y;
  }

  private replaceChild(parent: SliceNode | null, old: SliceNode, replacement: SliceNode | null): void {
    if (!parent) this.root = replacement;
    else if (parent.left === old) parent.left = replacement;
    else parent.right = replacement;
  }
}

function isRed(n: SliceNode | null): boolean {
  return n !== null && n.red;
}
