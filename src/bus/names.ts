/**
 * The well-known name registry of one bus, with the final (Aug 2015) kdbus semantics: per
 * name an ordered queue of owner records (the head is the primary owner) plus at most one
 * activator record outside the queue.
 *
 * Pure bookkeeping. Every mutation returns the NAME_ADD / NAME_REMOVE / NAME_CHANGE
 * notifications in the order the kernel queues them; the bus turns them into messages and,
 * where a change says so, moves queued messages and reply trackers between connections.
 *
 * Record flags are stored the way the kernel stores them (saved ALLOW_REPLACEMENT|QUEUE plus
 * PRIMARY / IN_QUEUE / ACTIVATOR), so what LIST, CONN_INFO and the notifications report is
 * exactly the stored value.
 */
import { Limits, NameFlags } from '../abi/constants';
import { KdbusError, fail } from '../abi/errno';
import { isValidWellKnownName } from '../abi/names';

export interface NameOwner {
  readonly id: bigint;
  readonly helloFlags: bigint;
}

/** One owner's claim on one name: primary, queued, or activator. Live view; copy to keep. */
export interface NameRecord<O> {
  readonly owner: O;
  readonly name: string;
  readonly flags: bigint;
}

/** Read-only view of a registered name. Live view; copy to keep. */
export interface NameEntry<O> {
  readonly name: string;
  /**
   * Registration sequence number, unique per bus for the lifetime of this entry (the entry
   * lives while any record, activator included, exists). Messages sent to the name carry
   * it so that a hand-over between activator and implementer moves exactly those messages.
   */
  readonly nameId: bigint;
  readonly primary: O | undefined;
  readonly activator: O | undefined;
  /** Where messages for the name go: the primary owner, else the activator. */
  readonly owner: O | undefined;
  /** Queue order (primary first), then the activator record if there is one. */
  records(): IterableIterator<NameRecord<O>>;
}

export interface NameChangeSide<O> {
  readonly owner: O;
  /** The record's name flags (not the connection's HELLO flags), as the kernel reports them. */
  readonly flags: bigint;
}

/**
 * One kernel notification. `old` is absent for 'add' and `new` for 'remove' (the kernel
 * writes id 0 / flags 0 there).
 */
export interface NameChange<O> {
  readonly kind: 'add' | 'remove' | 'change';
  readonly name: string;
  readonly nameId: bigint;
  readonly old?: NameChangeSide<O>;
  readonly new?: NameChangeSide<O>;
  /**
   * Activator hand-over: before emitting the notification, the bus moves every message
   * queued on old.owner whose destination name id is `nameId` to new.owner (lost on
   * failure, counted on new.owner), and re-targets reply trackers that wait for old.owner
   * on that name id.
   */
  readonly moveMessages: boolean;
}

export interface AcquireResult<O> {
  /** What the kernel writes to kdbus_cmd.return_flags. */
  readonly returnFlags: bigint;
  readonly changes: NameChange<O>[];
}

/**
 * NAME_ACQUIRE refused because the name is taken and queueing was not requested. The kernel
 * still writes return_flags (the request's saved flags), hence the extra field.
 */
export class NameExistsError extends KdbusError {
  constructor(
    readonly returnFlags: bigint,
    name: string,
  ) {
    super('EEXIST', `name "${name}" is owned by another connection that does not allow replacement; pass KDBUS_NAME_QUEUE to wait for it`);
  }
}

const { REPLACE_EXISTING, ALLOW_REPLACEMENT, QUEUE, IN_QUEUE, ACTIVATOR, PRIMARY, ACQUIRED } = NameFlags;
const SAVED_MASK = ALLOW_REPLACEMENT | QUEUE;

class OwnerRecord<O> implements NameRecord<O> {
  /** Neighbours in the entry's queue; both null and not the head when not queued. */
  prev: OwnerRecord<O> | null = null;
  next: OwnerRecord<O> | null = null;

  constructor(
    readonly owner: O,
    readonly entry: Entry<O>,
    public flags: bigint,
  ) {}

  get name(): string {
    return this.entry.name;
  }
}

class Entry<O> implements NameEntry<O> {
  head: OwnerRecord<O> | null = null;
  tail: OwnerRecord<O> | null = null;
  activatorRecord: OwnerRecord<O> | null = null;

  constructor(
    readonly name: string,
    readonly nameId: bigint,
  ) {}

  get primary(): O | undefined {
    return this.head?.owner;
  }

  get activator(): O | undefined {
    return this.activatorRecord?.owner;
  }

  get owner(): O | undefined {
    return (this.head ?? this.activatorRecord)?.owner;
  }

  *records(): IterableIterator<NameRecord<O>> {
    for (let r = this.head; r; r = r.next) yield r;
    if (this.activatorRecord) yield this.activatorRecord;
  }

  get used(): boolean {
    return this.head !== null || this.activatorRecord !== null;
  }

  isQueued(r: OwnerRecord<O>): boolean {
    return this.head === r || r.prev !== null;
  }

  pushFront(r: OwnerRecord<O>): void {
    r.prev = null;
    r.next = this.head;
    if (this.head) this.head.prev = r;
    else this.tail = r;
    this.head = r;
  }

  pushBack(r: OwnerRecord<O>): void {
    r.next = null;
    r.prev = this.tail;
    if (this.tail) this.tail.next = r;
    else this.head = r;
    this.tail = r;
  }

  unlink(r: OwnerRecord<O>): void {
    if (r.prev) r.prev.next = r.next;
    else this.head = r.next;
    if (r.next) r.next.prev = r.prev;
    else this.tail = r.prev;
    r.prev = r.next = null;
  }
}

export class NameRegistry<O extends NameOwner> {
  /**
   * A null-prototype dictionary rather than a Map: V8's Map degrades under insert/delete
   * churn once it holds thousands of keys, and names come and go all the time.
   */
  private readonly entriesByName: { [name: string]: Entry<O> | undefined } = Object.create(null);
  /**
   * Each owner's records keyed by name, in creation order: the kernel's per-connection
   * list, which fixes the order of LIST, OWNED_NAME items and disconnect releases. A record
   * that is dropped and re-created moves to the end, as in the kernel. An owner's map is
   * kept while empty (avoiding churn in this map) and dropped by releaseAll.
   */
  private readonly recordsByOwner = new Map<O, Map<string, OwnerRecord<O>>>();
  private lastNameId = 0n;

  /**
   * NAME_ACQUIRE for an ordinary connection. kdbus reports an invalid name (EINVAL) before
   * a policy denial (EPERM) and checks policy before anything done here, so the bus runs
   * isValidWellKnownName and then its OWN check before calling this. Flag bits other than
   * REPLACE_EXISTING|ALLOW_REPLACEMENT|QUEUE are ignored (the command parser rejects them).
   * Throws EINVAL (invalid name), E2BIG (the owner already has 256 records and would need
   * another), NameExistsError (EEXIST, carrying the return flags the kernel still writes).
   */
  acquire(owner: O, name: string, flags: bigint): AcquireResult<O> {
    if (!isValidWellKnownName(name, false)) throw fail('EINVAL', `"${name}" is not a valid well-known name`);
    const saved = flags & SAVED_MASK;
    let entry = this.entriesByName[name];
    let rec = this.recordsByOwner.get(owner)?.get(name);
    if (rec && rec === entry?.activatorRecord) {
      throw fail('EOPNOTSUPP', `connection ${owner.id} is the activator of "${name}" and cannot acquire names`);
    }
    if (!rec) this.checkRecordLimit(owner);

    const changes: NameChange<O>[] = [];
    const primary = entry?.head ?? null;

    if (!primary) {
      entry ??= this.createEntry(name);
      rec = this.createRecord(owner, entry, saved | PRIMARY);
      entry.pushFront(rec);
      const act = entry.activatorRecord;
      if (act) {
        changes.push(change(entry, act, rec, true));
        act.flags = (act.flags & ~PRIMARY) | IN_QUEUE;
      } else {
        changes.push({ kind: 'add', name, nameId: entry.nameId, new: side(rec), moveMessages: false });
      }
      return { returnFlags: rec.flags | ACQUIRED, changes };
    }
    entry = entry!;

    if (rec === primary) {
      rec.flags = saved | PRIMARY;
      return { returnFlags: rec.flags, changes };
    }

    if ((primary.flags & ALLOW_REPLACEMENT) !== 0n && (flags & REPLACE_EXISTING) !== 0n) {
      if (rec) entry.unlink(rec);
      else rec = this.createRecord(owner, entry, 0n);
      rec.flags = saved | PRIMARY;
      entry.pushFront(rec);
      changes.push(change(entry, primary, rec, false));
      if (primary.flags & QUEUE) {
        primary.flags = (primary.flags & ~PRIMARY) | IN_QUEUE;
      } else {
        entry.unlink(primary);
        this.dropRecord(primary);
      }
      return { returnFlags: rec.flags | ACQUIRED, changes };
    }

    if (flags & QUEUE) {
      if (rec) {
        rec.flags = saved | IN_QUEUE;
        return { returnFlags: rec.flags, changes };
      }
      rec = this.createRecord(owner, entry, saved | IN_QUEUE);
      entry.pushBack(rec);
      return { returnFlags: rec.flags | ACQUIRED, changes };
    }

    if (rec) {
      // D-Bus DO_NOT_QUEUE: leaving the queue silently is the answer to a request without QUEUE.
      entry.unlink(rec);
      this.dropRecord(rec);
      return { returnFlags: saved, changes };
    }

    throw new NameExistsError(saved, name);
  }

  /**
   * Registers `owner` (an activator connection, at HELLO) as the activator of `name`. The
   * name is validated like HELLO's NAME item (wildcards pass, as in kdbus). Throws EINVAL,
   * EEXIST (the name already has an activator), EALREADY (owner already has a record for
   * the name), E2BIG (record limit).
   */
  addActivator(owner: O, name: string): NameChange<O>[] {
    if (!isValidWellKnownName(name, true)) throw fail('EINVAL', `"${name}" is not a valid well-known name`);
    let entry = this.entriesByName[name];
    if (this.recordsByOwner.get(owner)?.has(name)) {
      throw fail('EALREADY', `connection ${owner.id} already has a record for "${name}"`);
    }
    this.checkRecordLimit(owner);
    if (entry?.activatorRecord) {
      throw fail('EEXIST', `"${name}" already has an activator (connection ${entry.activatorRecord.owner.id})`);
    }
    entry ??= this.createEntry(name);
    const rec = this.createRecord(owner, entry, ACTIVATOR);
    entry.activatorRecord = rec;
    if (entry.head) {
      rec.flags |= IN_QUEUE;
      return [];
    }
    rec.flags |= PRIMARY;
    return [{ kind: 'add', name, nameId: entry.nameId, new: side(rec), moveMessages: false }];
  }

  /**
   * NAME_RELEASE. The name is deliberately not validated: an invalid name is simply
   * unknown. Throws ESRCH (no such name) and EADDRINUSE (owner has no record for it).
   */
  release(owner: O, name: string): NameChange<O>[] {
    const entry = this.entriesByName[name];
    if (!entry) throw fail('ESRCH', `name "${name}" is not registered on this bus`);
    const rec = this.recordsByOwner.get(owner)?.get(name);
    if (!rec) throw fail('EADDRINUSE', `connection ${owner.id} neither owns nor waits for "${name}"`);
    const changes: NameChange<O>[] = [];
    this.releaseRecord(rec, changes);
    return changes;
  }

  /** Disconnect: releases every record of `owner` (activator included) in creation order. */
  releaseAll(owner: O): NameChange<O>[] {
    const changes: NameChange<O>[] = [];
    const recs = this.recordsByOwner.get(owner);
    if (!recs) return changes;
    // Deleting the visited key while iterating a Map is well-defined in JS.
    for (const rec of recs.values()) this.releaseRecord(rec, changes);
    this.recordsByOwner.delete(owner);
    return changes;
  }

  entry(name: string): NameEntry<O> | undefined {
    return this.entriesByName[name];
  }

  primaryOwner(name: string): O | undefined {
    return this.entriesByName[name]?.head?.owner;
  }

  activatorOf(name: string): O | undefined {
    return this.entriesByName[name]?.activatorRecord?.owner;
  }

  /** Destination of messages sent to `name`: the primary owner, else the activator. */
  ownerOf(name: string): O | undefined {
    return this.entriesByName[name]?.owner;
  }

  nameId(name: string): bigint | undefined {
    return this.entriesByName[name]?.nameId;
  }

  /**
   * The owner's records in creation order, with the flags kdbus reports: LIST puts records
   * with ACTIVATOR under ACTIVATORS, else those with IN_QUEUE under QUEUED, the rest under
   * NAMES; OWNED_NAME metadata takes every record without IN_QUEUE.
   */
  *records(owner: O): IterableIterator<NameRecord<O>> {
    const recs = this.recordsByOwner.get(owner);
    if (recs) yield* recs.values();
  }

  /**
   * Names the owner currently holds (records without IN_QUEUE: primary ownerships, and an
   * activator's name while no implementer holds it), in creation order. These are the names
   * TALK/SEE policy is checked against.
   */
  *primaryNames(owner: O): IterableIterator<string> {
    const recs = this.recordsByOwner.get(owner);
    if (recs) for (const r of recs.values()) if (!(r.flags & IN_QUEUE)) yield r.entry.name;
  }

  /** Whether `owner` holds `name` (record without IN_QUEUE): the NAME match rule's test. */
  holds(owner: O, name: string): boolean {
    const r = this.recordsByOwner.get(owner)?.get(name);
    return r !== undefined && !(r.flags & IN_QUEUE);
  }

  /** Number of records (owned, queued, activator) the owner has; at most 256. */
  recordCount(owner: O): number {
    return this.recordsByOwner.get(owner)?.size ?? 0;
  }

  /** Every registered name, in registration order. */
  *entries(): IterableIterator<NameEntry<O>> {
    for (const name in this.entriesByName) yield this.entriesByName[name]!;
  }

  private releaseRecord(rec: OwnerRecord<O>, changes: NameChange<O>[]): void {
    const entry = rec.entry;
    const primary = entry.head;
    if (entry.isQueued(rec)) entry.unlink(rec);
    if (entry.activatorRecord === rec) entry.activatorRecord = null;

    // No queue head means rec is an activator that held the name itself.
    if (!primary || rec === primary) {
      const next = entry.head ?? entry.activatorRecord;
      if (next) {
        next.flags = (next.flags & ~IN_QUEUE) | PRIMARY;
        changes.push(change(entry, rec, next, next === entry.activatorRecord));
      } else {
        changes.push({ kind: 'remove', name: entry.name, nameId: entry.nameId, old: side(rec), moveMessages: false });
      }
    }
    this.dropRecord(rec);
  }

  private checkRecordLimit(owner: O): void {
    if (this.recordCount(owner) >= Limits.CONN_MAX_NAMES) {
      throw fail('E2BIG', `connection ${owner.id} already owns or waits for ${Limits.CONN_MAX_NAMES} names`);
    }
  }

  private createEntry(name: string): Entry<O> {
    const entry = new Entry<O>(name, ++this.lastNameId);
    this.entriesByName[name] = entry;
    return entry;
  }

  private createRecord(owner: O, entry: Entry<O>, flags: bigint): OwnerRecord<O> {
    const rec = new OwnerRecord(owner, entry, flags);
    let recs = this.recordsByOwner.get(owner);
    if (!recs) this.recordsByOwner.set(owner, (recs = new Map()));
    recs.set(entry.name, rec);
    return rec;
  }

  /** Forgets a record that is no longer queued nor the activator; drops its entry if unused. */
  private dropRecord(rec: OwnerRecord<O>): void {
    const recs = this.recordsByOwner.get(rec.owner)!;
    recs.delete(rec.entry.name);
    if (!rec.entry.used) delete this.entriesByName[rec.entry.name];
  }
}

function side<O>(rec: OwnerRecord<O>): NameChangeSide<O> {
  return { owner: rec.owner, flags: rec.flags };
}

function change<O>(entry: Entry<O>, from: OwnerRecord<O>, to: OwnerRecord<O>, moveMessages: boolean): NameChange<O> {
  return { kind: 'change', name: entry.name, nameId: entry.nameId, old: side(from), new: side(to), moveMessages };
}
