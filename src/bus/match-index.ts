/**
 * The match databases of all connections of a bus, indexed so that a broadcast only looks
 * at the entries that could match it instead of at every entry on the bus.
 *
 * Each entry that can match anything sits in exactly one place, chosen when it is added:
 *  - user entries with a specific ID rule: under that sender id;
 *  - user entries with a BLOOM_MASK rule: under one bit of the mask (per class of filter
 *    generations, see BloomClass); a filter lacking that bit cannot satisfy the mask, so a
 *    broadcast only visits the buckets of bits its filter has. The bit picked is the one
 *    fewest indexed masks share, which keeps common bits (message type, popular interfaces)
 *    from collecting everyone, and a second word of the mask is tested before the entry
 *    itself is looked at;
 *  - user entries with a specific DST_ID rule: under that destination id;
 *    whichever of these keys is currently the least crowded wins;
 *  - other user entries (only NAME or ANY rules): a catch-all visited by every broadcast;
 *  - notification entries: per notification type, under the name, old id, new id or id
 *    they ask for, or in the type's catch-all;
 *  - entries without rules: a catch-all visited by everything.
 * A visited entry is still checked exactly, and a connection is reported once per message.
 */
import { ItemType, KDBUS_MATCH_ID_ANY } from '../abi/constants';
import {
  MatchDb,
  MatchScope,
  prepareFilter,
  type BloomMaskRule,
  type MatchEntry,
  type MatchRule,
  type NotificationView,
  type PreparedFilter,
  type UserMessageView,
} from './match';

interface Owner<C> {
  readonly conn: C;
  readonly db: MatchDb;
  /** The last lookup that reported this connection, so that it is reported once. */
  mark: number;
}

interface Placement<C> {
  readonly entry: MatchEntry;
  readonly owner: Owner<C>;
  /** Undo steps of the placement: bucket removals, bloom frequency decrements. */
  readonly releases: Array<() => void>;
}

type Bucket<C> = Set<Placement<C>>;

/** Buckets under keys of one kind; a bucket exists only while it holds something. */
class Buckets<K, C> {
  private readonly map = new Map<K, Bucket<C>>();

  get(key: K): Bucket<C> | undefined {
    return this.map.get(key);
  }

  size(key: K): number {
    return this.map.get(key)?.size ?? 0;
  }

  put(key: K, p: Placement<C>): void {
    let bucket = this.map.get(key);
    if (bucket === undefined) {
      bucket = new Set();
      this.map.set(key, bucket);
    }
    bucket.add(p);
    p.releases.push(() => {
      bucket.delete(p);
      if (bucket.size === 0) this.map.delete(key);
    });
  }
}

/**
 * The entries filed under one bloom bit. Each also carries a probe, one whole word of its
 * mask block, kept in flat arrays: a filter must contain the probe bits too, and testing
 * that here skips most entries that merely share the bucket bit without touching them.
 */
class BitBucket<C> {
  readonly placements: Array<Placement<C>> = [];
  probeWord: Int32Array = new Int32Array(4);
  probeBits: Int32Array = new Int32Array(4);
  private readonly positions = new Map<Placement<C>, number>();

  get size(): number {
    return this.placements.length;
  }

  add(p: Placement<C>, word: number, bits: number): void {
    const at = this.placements.length;
    if (at === this.probeWord.length) {
      this.probeWord = grow(this.probeWord);
      this.probeBits = grow(this.probeBits);
    }
    this.placements.push(p);
    this.probeWord[at] = word;
    this.probeBits[at] = bits;
    this.positions.set(p, at);
  }

  /** Moves the last entry into the gap so that the arrays stay dense. */
  delete(p: Placement<C>): void {
    const at = this.positions.get(p)!;
    const last = this.placements.length - 1;
    const moved = this.placements[last];
    this.placements[at] = moved;
    this.probeWord[at] = this.probeWord[last];
    this.probeBits[at] = this.probeBits[last];
    this.positions.set(moved, at);
    this.positions.delete(p);
    this.placements.pop();
  }
}

function grow(a: Int32Array): Int32Array {
  const bigger = new Int32Array(a.length * 2);
  bigger.set(a);
  return bigger;
}

function popcount(w: number): number {
  w -= (w >>> 1) & 0x55555555;
  w = (w & 0x33333333) + ((w >>> 2) & 0x33333333);
  return (Math.imul((w + (w >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24);
}

/** Key of the entries whose mask block for a class is all zero: every filter satisfies it. */
const ZERO_MASK = -1;

/**
 * Bloom-keyed entries for one class of filter generations. A mask with n generations
 * compares filters of generation g < n-1 to block g and all later ones to block n-1, so
 * the classes are "generation exactly g" and "generation g or later"; an entry sits in
 * one class per block, and a filter visits the classes its generation belongs to.
 */
class BloomClass<C> {
  /** Bit b is set while bucket b is non-empty: a filter's words ANDed with it give the buckets to visit. */
  readonly present: Int32Array;
  readonly buckets: Array<BitBucket<C> | undefined>;
  readonly zero: Bucket<C> = new Set();
  /** Per bit: how many indexed masks of this class have it. */
  private readonly frequency: Uint32Array;

  constructor(readonly blockWords: number) {
    this.present = new Int32Array(blockWords);
    this.buckets = new Array<BitBucket<C> | undefined>(blockWords * 32).fill(undefined);
    this.frequency = new Uint32Array(blockWords * 32);
  }

  /** The set bit of the block fewest masks share (then: with the smallest bucket), or ZERO_MASK. */
  pick(words: Int32Array, offset: number): number {
    let best = ZERO_MASK;
    let bestFrequency = Infinity;
    let bestSize = Infinity;
    for (let i = 0; i < this.blockWords; i++) {
      let w = words[offset + i];
      while (w !== 0) {
        const low = w & -w;
        const bit = (i << 5) | (31 - Math.clz32(low));
        w ^= low;
        const f = this.frequency[bit];
        if (f > bestFrequency) continue;
        const size = this.buckets[bit]?.size ?? 0;
        if (f < bestFrequency || size < bestSize) {
          best = bit;
          bestFrequency = f;
          bestSize = size;
        }
      }
    }
    return best;
  }

  /** Crowding estimate of a picked key, comparable with a bucket size. */
  cost(bit: number): number {
    return bit === ZERO_MASK ? this.zero.size : this.frequency[bit];
  }

  /** Files the entry under `bit` of its mask block at `offset`, with the block's fullest word as probe. */
  put(bit: number, p: Placement<C>, words: Int32Array, offset: number): void {
    if (bit === ZERO_MASK) {
      this.zero.add(p);
      p.releases.push(() => this.zero.delete(p));
      return;
    }
    let probe = 0;
    for (let i = 1; i < this.blockWords; i++) if (popcount(words[offset + i]) > popcount(words[offset + probe])) probe = i;
    let bucket = this.buckets[bit];
    if (bucket === undefined) {
      bucket = new BitBucket<C>();
      this.buckets[bit] = bucket;
    }
    const b = bucket;
    b.add(p, probe, words[offset + probe]);
    this.present[bit >>> 5] |= 1 << (bit & 31);
    p.releases.push(() => {
      b.delete(p);
      if (b.size === 0) this.present[bit >>> 5] &= ~(1 << (bit & 31));
    });
  }

  count(words: Int32Array, offset: number, delta: number): void {
    for (let i = 0; i < this.blockWords; i++) {
      let w = words[offset + i];
      while (w !== 0) {
        const low = w & -w;
        this.frequency[(i << 5) | (31 - Math.clz32(low))] += delta;
        w ^= low;
      }
    }
  }
}

/** Notification entries of one notification type. */
class NotificationBuckets<C> {
  readonly any: Bucket<C> = new Set();
  /** ID_ADD / ID_REMOVE: the connection id. */
  readonly byId = new Buckets<bigint, C>();
  readonly byName = new Buckets<string, C>();
  readonly byOldId = new Buckets<bigint, C>();
  readonly byNewId = new Buckets<bigint, C>();
}

/** Stands in for connections that never added a match: removing from it is EBADSLT. */
const NO_MATCHES = new MatchDb();

export class MatchIndex<C> {
  private readonly owners = new Map<C, Owner<C>>();
  private readonly placements = new Map<MatchEntry, Placement<C>>();
  private lookup = 0;

  /** Entries without rules. */
  private readonly everything: Bucket<C> = new Set();
  /** User entries with no selective key. */
  private readonly anyMessage: Bucket<C> = new Set();
  private readonly bySender = new Buckets<bigint, C>();
  private readonly byDestination = new Buckets<bigint, C>();
  /** Bloom classes "generation exactly g", by g. */
  private readonly bloomAt = new Map<number, BloomClass<C>>();
  /** Bloom classes "generation g or later", by g. */
  private readonly bloomFrom = new Map<number, BloomClass<C>>();
  private readonly notifications = new Map<number, NotificationBuckets<C>>();

  /** The connection's database, created (empty) on first use; changes to it keep the index current. */
  connect(conn: C): MatchDb {
    const known = this.owners.get(conn);
    if (known !== undefined) return known.db;
    const owner: Owner<C> = {
      conn,
      mark: 0,
      db: new MatchDb({
        entryAdded: (e) => {
          if (this.owners.get(conn) === owner) this.place(owner, e);
        },
        entryRemoved: (e) => this.unplace(e),
      }),
    };
    this.owners.set(conn, owner);
    return owner.db;
  }

  db(conn: C): MatchDb | undefined {
    return this.owners.get(conn)?.db;
  }

  /** MATCH_ADD for `conn` (EMFILE past KDBUS_MATCH_MAX entries; `afford` may refuse the bytes they would cost). */
  add(conn: C, cookie: bigint, rules: readonly MatchRule[], replace: boolean, afford?: (bytesAfter: number) => void): void {
    this.connect(conn).add(cookie, rules, replace, afford);
  }

  /** MATCH_REMOVE for `conn` (EBADSLT if it has no entry with that cookie). */
  remove(conn: C, cookie: bigint): void {
    (this.db(conn) ?? NO_MATCHES).remove(cookie);
  }

  /** Forgets the connection and all its entries (disconnect). */
  removeConnection(conn: C): void {
    const owner = this.owners.get(conn);
    if (owner === undefined) return;
    this.owners.delete(conn);
    owner.db.clear();
  }

  /** Every connection with an entry matching the user message, each once, in no particular order. */
  candidates(m: UserMessageView): C[] {
    const mark = ++this.lookup;
    const out: C[] = [];
    const filter = prepareFilter(m.bloom);
    this.visitMessage(this.everything, m, filter, mark, out);
    this.visitMessage(this.anyMessage, m, filter, mark, out);
    this.visitMessage(this.bySender.get(m.srcId), m, filter, mark, out);
    this.visitMessage(this.byDestination.get(m.dstId), m, filter, mark, out);
    if (filter !== undefined) {
      const g = filter.generation;
      const at = this.bloomAt.get(g);
      if (at !== undefined) this.visitBloom(at, m, filter, mark, out);
      for (const [from, cls] of this.bloomFrom) if (from <= g) this.visitBloom(cls, m, filter, mark, out);
    }
    return out;
  }

  /** Every connection with an entry matching the kernel notification, each once. */
  notificationTargets(n: NotificationView): C[] {
    const mark = ++this.lookup;
    const out: C[] = [];
    this.visitNotification(this.everything, n, mark, out);
    const t = this.notifications.get(n.type);
    if (t !== undefined) {
      this.visitNotification(t.any, n, mark, out);
      if (n.id !== undefined) this.visitNotification(t.byId.get(n.id), n, mark, out);
      if (n.name !== undefined) this.visitNotification(t.byName.get(n.name), n, mark, out);
      if (n.oldId !== undefined) this.visitNotification(t.byOldId.get(n.oldId), n, mark, out);
      if (n.newId !== undefined) this.visitNotification(t.byNewId.get(n.newId), n, mark, out);
    }
    return out;
  }

  private visitMessage(
    bucket: Bucket<C> | undefined,
    m: UserMessageView,
    filter: PreparedFilter | undefined,
    mark: number,
    out: C[],
  ): void {
    if (bucket === undefined) return;
    for (const p of bucket) this.offer(p, m, filter, mark, out);
  }

  private offer(p: Placement<C>, m: UserMessageView, filter: PreparedFilter | undefined, mark: number, out: C[]): void {
    const owner = p.owner;
    if (owner.mark !== mark && p.entry.matchesMessage(m, filter)) {
      owner.mark = mark;
      out.push(owner.conn);
    }
  }

  private visitBloom(cls: BloomClass<C>, m: UserMessageView, filter: PreparedFilter, mark: number, out: C[]): void {
    this.visitMessage(cls.zero, m, filter, mark, out);
    const f = filter.words;
    const present = cls.present;
    const n = Math.min(f.length, present.length);
    for (let i = 0; i < n; i++) {
      let w = f[i] & present[i];
      while (w !== 0) {
        const low = w & -w;
        w ^= low;
        const bucket = cls.buckets[(i << 5) | (31 - Math.clz32(low))]!;
        const { placements, probeWord, probeBits } = bucket;
        for (let k = 0; k < placements.length; k++) {
          const bits = probeBits[k];
          if ((f[probeWord[k]] & bits) === bits) this.offer(placements[k], m, filter, mark, out);
        }
      }
    }
  }

  private visitNotification(bucket: Bucket<C> | undefined, n: NotificationView, mark: number, out: C[]): void {
    if (bucket === undefined) return;
    for (const p of bucket) {
      const owner = p.owner;
      if (owner.mark !== mark && p.entry.matchesNotification(n)) {
        owner.mark = mark;
        out.push(owner.conn);
      }
    }
  }

  private place(owner: Owner<C>, entry: MatchEntry): void {
    const p: Placement<C> = { entry, owner, releases: [] };
    switch (entry.scope) {
      case MatchScope.Nothing:
        return;
      case MatchScope.Everything:
        this.putInSet(this.everything, p);
        break;
      case MatchScope.User:
        this.placeUser(p);
        break;
      case MatchScope.Notification:
        this.placeNotification(p);
        break;
    }
    this.placements.set(entry, p);
  }

  private unplace(entry: MatchEntry): void {
    const p = this.placements.get(entry);
    if (p === undefined) return;
    this.placements.delete(entry);
    for (const release of p.releases) release();
  }

  private putInSet(set: Bucket<C>, p: Placement<C>): void {
    set.add(p);
    p.releases.push(() => set.delete(p));
  }

  private placeUser(p: Placement<C>): void {
    let sender: bigint | undefined;
    let destination: bigint | undefined;
    let bloom: BloomMaskRule | undefined;
    for (const r of p.entry.rules) {
      if (r.type === ItemType.ID && r.id !== KDBUS_MATCH_ID_ANY) sender ??= r.id;
      else if (r.type === ItemType.DST_ID && r.id !== KDBUS_MATCH_ID_ANY) destination ??= r.id;
      else if (r.type === ItemType.BLOOM_MASK) bloom ??= r;
    }

    const senderCost = sender === undefined ? Infinity : this.bySender.size(sender);
    const destinationCost = destination === undefined ? Infinity : this.byDestination.size(destination);
    const bloomKeys = bloom === undefined ? undefined : this.pickBloomKeys(bloom);
    let bloomCost = Infinity;
    if (bloomKeys !== undefined) {
      bloomCost = 0;
      for (const [cls, key] of bloomKeys) bloomCost = Math.max(bloomCost, cls.cost(key));
    }

    if (sender !== undefined && senderCost <= destinationCost && senderCost <= bloomCost) {
      this.bySender.put(sender, p);
    } else if (destination !== undefined && destinationCost <= bloomCost) {
      this.byDestination.put(destination, p);
    } else if (bloom !== undefined && bloomKeys !== undefined) {
      for (const [cls, key, offset] of bloomKeys) cls.put(key, p, bloom.words, offset);
    } else {
      this.putInSet(this.anyMessage, p);
    }

    // Frequencies describe all indexed masks, whatever key their entries ended up under.
    for (const r of p.entry.rules) {
      if (r.type !== ItemType.BLOOM_MASK) continue;
      this.forEachBlock(r, (cls, offset) => {
        if (cls === undefined) return;
        cls.count(r.words, offset, 1);
        p.releases.push(() => cls.count(r.words, offset, -1));
      });
    }
  }

  /**
   * One key (class, bit, block offset) per generation class of the mask, or undefined if
   * the mask does not fit this bus's classes.
   */
  private pickBloomKeys(rule: BloomMaskRule): Array<[BloomClass<C>, number, number]> | undefined {
    const keys: Array<[BloomClass<C>, number, number]> = [];
    let fits = true;
    this.forEachBlock(rule, (cls, offset) => {
      if (cls === undefined) fits = false;
      else keys.push([cls, cls.pick(rule.words, offset), offset]);
    });
    return fits ? keys : undefined;
  }

  /**
   * Calls `fn` with the class and word offset of each block of the mask: blocks 0..n-2 for
   * "generation exactly g", block n-1 for "generation n-1 or later". The class is undefined
   * if it was made for a different bloom size (never on one bus).
   */
  private forEachBlock(rule: BloomMaskRule, fn: (cls: BloomClass<C> | undefined, offset: number) => void): void {
    const last = rule.generations - 1;
    for (let g = 0; g <= last; g++) {
      const classes = g < last ? this.bloomAt : this.bloomFrom;
      let cls = classes.get(g);
      if (cls === undefined) {
        cls = new BloomClass<C>(rule.blockWords);
        classes.set(g, cls);
      }
      fn(cls.blockWords === rule.blockWords ? cls : undefined, g * rule.blockWords);
    }
  }

  private placeNotification(p: Placement<C>): void {
    const entry = p.entry;
    let t = this.notifications.get(entry.notificationType);
    if (t === undefined) {
      t = new NotificationBuckets<C>();
      this.notifications.set(entry.notificationType, t);
    }
    let id: bigint | undefined;
    let name: string | undefined;
    let oldId: bigint | undefined;
    let newId: bigint | undefined;
    for (const r of entry.rules) {
      if (r.type === ItemType.ID_ADD || r.type === ItemType.ID_REMOVE) {
        if (r.id !== KDBUS_MATCH_ID_ANY) id ??= r.id;
      } else if (r.type === ItemType.NAME_ADD || r.type === ItemType.NAME_REMOVE || r.type === ItemType.NAME_CHANGE) {
        name ??= r.name;
        if (r.oldId !== KDBUS_MATCH_ID_ANY) oldId ??= r.oldId;
        if (r.newId !== KDBUS_MATCH_ID_ANY) newId ??= r.newId;
      }
    }
    // A name is the most selective key; among ids any specific one will do.
    if (id !== undefined) t.byId.put(id, p);
    else if (name !== undefined) t.byName.put(name, p);
    else if (oldId !== undefined) t.byOldId.put(oldId, p);
    else if (newId !== undefined) t.byNewId.put(newId, p);
    else this.putInSet(t.any, p);
  }
}
