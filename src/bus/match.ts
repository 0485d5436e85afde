/**
 * Match rules and a connection's match database (KDBUS_CMD_MATCH_ADD / MATCH_REMOVE).
 *
 * One MATCH_ADD makes one entry, identified by the client's cookie; each of its items is a
 * rule. An entry matches when all its rules do, a connection accepts a broadcast (or a
 * unicast signal) when any of its entries matches. Rules of the user kinds (BLOOM_MASK,
 * NAME, ID, DST_ID) only ever match user messages, rules of the notification kinds only
 * the kernel notification of their own item type; an entry without rules matches both.
 *
 * The per-bus index that finds the interested connections for a broadcast without asking
 * every database lives in match-index.ts.
 */
import { ItemType, KDBUS_MATCH_ID_ANY, Limits, StructSize } from '../abi/constants';
import { fail } from '../abi/errno';
import { itemTypeName, validateItem, type Item } from '../abi/items';
import { isValidWellKnownName } from '../abi/names';

export interface BloomMaskRule {
  readonly type: ItemType.BLOOM_MASK;
  /** Number of masks carried, one per bloom filter generation (the last one covers all later ones). */
  readonly generations: number;
  /** Bus bloom size in 32-bit words: the length of one mask. */
  readonly blockWords: number;
  /** All masks back to back, in host byte order like the filters they are compared to. */
  readonly words: Int32Array;
}

/** The sender must currently be the primary owner of `name`. */
export interface SenderNameRule {
  readonly type: ItemType.NAME;
  readonly name: string;
}

/** ID: the sender's id; DST_ID: the message's dst_id (~0 for broadcasts). ANY matches all. */
export interface IdRule {
  readonly type: ItemType.ID | ItemType.DST_ID;
  readonly id: bigint;
}

/** ID_ADD / ID_REMOVE notification about connection `id` (or ANY). */
export interface IdChangeRule {
  readonly type: ItemType.ID_ADD | ItemType.ID_REMOVE;
  readonly id: bigint;
}

/** NAME_ADD / NAME_REMOVE / NAME_CHANGE notification; ids may be ANY, no name means any name. */
export interface NameChangeRule {
  readonly type: ItemType.NAME_ADD | ItemType.NAME_REMOVE | ItemType.NAME_CHANGE;
  readonly oldId: bigint;
  readonly newId: bigint;
  readonly name: string | undefined;
}

/**
 * The kernel turns every item of MATCH_ADD into a rule, the NEGOTIATE item included; such a
 * rule matches neither messages nor notifications, so its entry never matches.
 */
export interface NegotiateRule {
  readonly type: ItemType.NEGOTIATE;
}

export type MatchRule = BloomMaskRule | SenderNameRule | IdRule | IdChangeRule | NameChangeRule | NegotiateRule;

/** What match rules look at in a user message (a signal, broadcast or unicast). */
export interface UserMessageView {
  srcId: bigint;
  dstId: bigint;
  /** Signals always carry a filter of the bus bloom size; a BLOOM_MASK rule needs one to match. */
  bloom?: { generation: bigint; data: Buffer };
  /** Whether the sender is the primary owner of `name` right now; asked only when a NAME rule needs it. */
  senderHoldsName(name: string): boolean;
}

/** What match rules look at in a kernel notification. */
export interface NotificationView {
  /** ItemType of the notification item (ID_ADD ... NAME_CHANGE). */
  type: number;
  /** ID_ADD / ID_REMOVE: the connection's id. */
  id?: bigint;
  /** NAME_*: old_id.id and new_id.id (0 where there is no owner). */
  oldId?: bigint;
  newId?: bigint;
  name?: string;
}

const NAME_CHANGE_NAME_OFFSET = StructSize.notify_name_change;
/** Item types MATCH_ADD accepts (kdbus_cmd_match_add's argv); anything else is EINVAL. */
const ACCEPTED_TYPES: ReadonlySet<number> = new Set<number>([
  ItemType.NEGOTIATE,
  ItemType.BLOOM_MASK,
  ItemType.NAME,
  ItemType.ID,
  ItemType.DST_ID,
  ItemType.NAME_ADD,
  ItemType.NAME_REMOVE,
  ItemType.NAME_CHANGE,
  ItemType.ID_ADD,
  ItemType.ID_REMOVE,
]);

/**
 * Turns the items of a MATCH_ADD command into rules, with the kernel's checks in the
 * kernel's order: first every item is checked on its own (accepted type, payload shape; a
 * second NEGOTIATE item is EINVAL), then items become rules front to back, where a
 * BLOOM_MASK that is not a positive multiple of the bus bloom size fails with EDOM and a
 * NAME that is no valid well-known name with EINVAL. `payload` is the item's payload
 * without trailing padding (size - 16 bytes).
 */
export function parseMatchRules(items: ReadonlyArray<Pick<Item, 'type' | 'payload'>>, bloomSize: number): MatchRule[] {
  let sawNegotiate = false;
  for (const item of items) {
    if (!ACCEPTED_TYPES.has(item.type)) {
      throw fail('EINVAL', `MATCH_ADD does not take ${itemTypeName(item.type)} items`);
    }
    validateItem(item as Item);
    if (item.type === ItemType.NEGOTIATE) {
      if (sawNegotiate) throw fail('EINVAL', 'MATCH_ADD takes at most one KDBUS_ITEM_NEGOTIATE item');
      sawNegotiate = true;
    }
  }
  return items.map((item) => ruleOf(item, bloomSize));
}

function ruleOf(item: Pick<Item, 'type' | 'payload'>, bloomSize: number): MatchRule {
  const p = item.payload;
  const type = item.type as ItemType;
  switch (type) {
    case ItemType.BLOOM_MASK: {
      if (p.length < bloomSize || p.length % bloomSize !== 0) {
        throw fail('EDOM', `a bloom mask must be one or more masks of the bus bloom size ${bloomSize} bytes, got ${p.length} bytes`);
      }
      const words = new Int32Array(p.length >>> 2);
      new Uint8Array(words.buffer).set(p);
      return { type: ItemType.BLOOM_MASK, generations: p.length / bloomSize, blockWords: bloomSize >>> 2, words };
    }
    case ItemType.NAME: {
      const name = p.toString('latin1', 0, p.length - 1);
      if (!isValidWellKnownName(name, false)) throw fail('EINVAL', `match rule name "${name}" is not a valid well-known name`);
      return { type: ItemType.NAME, name };
    }
    case ItemType.ID:
    case ItemType.DST_ID:
    case ItemType.ID_ADD:
    case ItemType.ID_REMOVE:
      // kdbus_notify_id_change starts with the id; its flags are not part of the rule.
      return { type, id: p.readBigUInt64LE(0) };
    case ItemType.NAME_ADD:
    case ItemType.NAME_REMOVE:
    case ItemType.NAME_CHANGE:
      // old_id.id and new_id.id of kdbus_notify_name_change; the flags are not part of the rule.
      return {
        type,
        oldId: p.readBigUInt64LE(0),
        newId: p.readBigUInt64LE(16),
        // Past the fixed struct validation guarantees a NUL-terminated string (possibly empty).
        name: p.length > NAME_CHANGE_NAME_OFFSET ? p.toString('latin1', NAME_CHANGE_NAME_OFFSET, p.length - 1) : undefined,
      };
    default:
      return { type: ItemType.NEGOTIATE };
  }
}

/** A message's bloom filter as words, plus its generation clamped to a plain number. */
export interface PreparedFilter {
  readonly words: Int32Array;
  readonly generation: number;
}

/** Masks carry at most 4096 generations (command size limit), so any larger value acts alike. */
const GENERATION_CAP = 0xffff_ffffn;

/** Prepares a message's filter once so that every entry compares plain words. */
export function prepareFilter(bloom: UserMessageView['bloom']): PreparedFilter | undefined {
  if (bloom === undefined) return undefined;
  const data = bloom.data;
  const n = data.length >>> 2;
  let words: Int32Array;
  if ((data.byteOffset & 3) === 0) {
    words = new Int32Array(data.buffer, data.byteOffset, n);
  } else {
    words = new Int32Array(n);
    new Uint8Array(words.buffer).set(data.subarray(0, n << 2));
  }
  const g = bloom.generation;
  return { words, generation: Number(g > GENERATION_CAP ? GENERATION_CAP : g) };
}

/** Index of the mask a filter of `generation` is compared to: the newest one not above it. */
function maskBlock(rule: BloomMaskRule, generation: number): number {
  return generation < rule.generations ? generation : rule.generations - 1;
}

/** Every bit set in the selected mask is also set in the filter. */
function bloomMatches(rule: BloomMaskRule, filter: PreparedFilter): boolean {
  const n = rule.blockWords;
  const m = rule.words;
  const f = filter.words;
  let o = maskBlock(rule, filter.generation) * n;
  for (let i = 0; i < n; i++, o++) {
    if ((m[o] & ~f[i]) !== 0) return false;
  }
  return true;
}

/** What an entry can match at all, decided once from the kinds of its rules. */
export const enum MatchScope {
  /** Mixed user and notification rules, several notification types, or a NEGOTIATE rule. */
  Nothing,
  User,
  Notification,
  /** No rules. */
  Everything,
}

const isUserRule = (t: number): boolean =>
  t === ItemType.BLOOM_MASK || t === ItemType.NAME || t === ItemType.ID || t === ItemType.DST_ID;

const isNotificationRule = (t: number): boolean => t >= ItemType.NAME_ADD && t <= ItemType.ID_REMOVE;

/** Cheap id comparisons first, bloom words next, the name registry lookup last. */
const userRuleCost = (t: number): number => (t === ItemType.NAME ? 2 : t === ItemType.BLOOM_MASK ? 1 : 0);

export class MatchEntry {
  readonly scope: MatchScope;
  /** For Notification scope: the one notification item type the entry can match. */
  readonly notificationType: number;
  /** For User scope: the rules, ordered for an early and cheap mismatch. */
  private readonly userChecks: readonly MatchRule[];

  /** What the entry costs the daemon (matchEntryCost). */
  readonly cost: number;

  constructor(
    readonly cookie: bigint,
    readonly rules: readonly MatchRule[],
  ) {
    this.cost = matchEntryCost(rules);
    let user = 0;
    let notification = 0;
    let type = -1;
    let sameType = true;
    for (const r of rules) {
      if (isUserRule(r.type)) user++;
      else if (isNotificationRule(r.type)) {
        notification++;
        if (type !== -1 && type !== r.type) sameType = false;
        type = r.type;
      }
    }
    if (rules.length === 0) this.scope = MatchScope.Everything;
    else if (user === rules.length) this.scope = MatchScope.User;
    else if (notification === rules.length && sameType) this.scope = MatchScope.Notification;
    else this.scope = MatchScope.Nothing;
    this.notificationType = this.scope === MatchScope.Notification ? type : -1;
    this.userChecks =
      this.scope === MatchScope.User ? [...rules].sort((a, b) => userRuleCost(a.type) - userRuleCost(b.type)) : rules;
  }

  /** `filter` must be prepareFilter(m.bloom). */
  matchesMessage(m: UserMessageView, filter: PreparedFilter | undefined): boolean {
    if (this.scope !== MatchScope.User) return this.scope === MatchScope.Everything;
    for (const r of this.userChecks) {
      switch (r.type) {
        case ItemType.ID:
          if (r.id !== KDBUS_MATCH_ID_ANY && r.id !== m.srcId) return false;
          break;
        case ItemType.DST_ID:
          if (r.id !== KDBUS_MATCH_ID_ANY && r.id !== m.dstId) return false;
          break;
        case ItemType.BLOOM_MASK:
          if (filter === undefined || !bloomMatches(r, filter)) return false;
          break;
        case ItemType.NAME:
          if (!m.senderHoldsName(r.name)) return false;
          break;
      }
    }
    return true;
  }

  matchesNotification(n: NotificationView): boolean {
    if (this.scope !== MatchScope.Notification) return this.scope === MatchScope.Everything;
    if (n.type !== this.notificationType) return false;
    for (const r of this.rules) {
      switch (r.type) {
        case ItemType.ID_ADD:
        case ItemType.ID_REMOVE:
          if (r.id !== KDBUS_MATCH_ID_ANY && r.id !== n.id) return false;
          break;
        case ItemType.NAME_ADD:
        case ItemType.NAME_REMOVE:
        case ItemType.NAME_CHANGE:
          if (r.oldId !== KDBUS_MATCH_ID_ANY && r.oldId !== n.oldId) return false;
          if (r.newId !== KDBUS_MATCH_ID_ANY && r.newId !== n.newId) return false;
          if (r.name !== undefined && r.name !== n.name) return false;
          break;
      }
    }
    return true;
  }
}

function takesMessages(e: MatchEntry): boolean {
  return e.scope === MatchScope.User || e.scope === MatchScope.Everything;
}

/** Told about every entry that enters or leaves a database (how MatchIndex follows them). */
export interface MatchDbObserver {
  entryAdded(entry: MatchEntry): void;
  entryRemoved(entry: MatchEntry): void;
}

/**
 * What an entry costs the daemon, roughly, in bytes: the entry, each rule with what it
 * carries, and for a bloom mask the index's place for each of its generations (about 250
 * bytes each, measured: a mask of 511 generations cost 130 KB). kdbus bounded entries by
 * count only (KDBUS_MATCH_MAX); the daemon's memory needs a bound in bytes too.
 */
export function matchEntryCost(rules: readonly MatchRule[]): number {
  let n = 256;
  for (const r of rules) {
    n += 64;
    if (r.type === ItemType.BLOOM_MASK) n += r.words.byteLength + 256 * r.generations;
    else if (r.type === ItemType.NAME) n += 2 * r.name.length;
  }
  return n;
}

/** The match entries of one connection. */
export class MatchDb {
  private readonly byCookie = new Map<bigint, MatchEntry[]>();
  private entryCount = 0;
  private messageEntryCount = 0;
  private cost = 0;

  constructor(private readonly observer?: MatchDbObserver) {}

  get count(): number {
    return this.entryCount;
  }

  /** What the entries cost the daemon (matchEntryCost). */
  get bytes(): number {
    return this.cost;
  }

  /** Entries that can take messages (not only notifications): what a bridge subscribes upstream for. */
  get messageEntries(): number {
    return this.messageEntryCount;
  }

  /**
   * Adds one entry. With `replace`, the entries carrying the same cookie go first, but only
   * if the new one then fits: more than KDBUS_MATCH_MAX entries is EMFILE and changes nothing.
   */
  add(cookie: bigint, rules: readonly MatchRule[], replace: boolean, afford?: (bytesAfter: number) => void): void {
    const replaced = replace ? this.byCookie.get(cookie) : undefined;
    const after = this.entryCount - (replaced?.length ?? 0) + 1;
    if (after > Limits.MATCH_MAX) {
      throw fail('EMFILE', `a connection can hold at most ${Limits.MATCH_MAX} match entries; remove some before adding more`);
    }
    const entry = new MatchEntry(cookie, rules);
    let freed = 0;
    for (const e of replaced ?? []) freed += e.cost;
    afford?.(this.cost - freed + entry.cost);
    if (replaced !== undefined) this.drop(cookie, replaced);
    const list = this.byCookie.get(cookie);
    if (list === undefined) this.byCookie.set(cookie, [entry]);
    else list.push(entry);
    this.entryCount++;
    this.cost += entry.cost;
    if (takesMessages(entry)) this.messageEntryCount++;
    this.observer?.entryAdded(entry);
  }

  /** Removes every entry with this cookie; EBADSLT if there is none. */
  remove(cookie: bigint): void {
    const list = this.byCookie.get(cookie);
    if (list === undefined) throw fail('EBADSLT', `no match entry with cookie 0x${cookie.toString(16)}`);
    this.drop(cookie, list);
  }

  clear(): void {
    for (const [cookie, list] of [...this.byCookie]) this.drop(cookie, list);
  }

  matchMessage(m: UserMessageView): boolean {
    const filter = prepareFilter(m.bloom);
    for (const list of this.byCookie.values()) {
      for (const e of list) if (e.matchesMessage(m, filter)) return true;
    }
    return false;
  }

  matchNotification(n: NotificationView): boolean {
    for (const list of this.byCookie.values()) {
      for (const e of list) if (e.matchesNotification(n)) return true;
    }
    return false;
  }

  private drop(cookie: bigint, list: MatchEntry[]): void {
    this.byCookie.delete(cookie);
    this.entryCount -= list.length;
    for (const e of list) this.cost -= e.cost;
    for (const e of list) if (takesMessages(e)) this.messageEntryCount--;
    if (this.observer !== undefined) for (const e of list) this.observer.entryRemoved(e);
  }
}
