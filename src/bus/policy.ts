/**
 * kdbus policy databases: one per bus (entries owned by policy holders and activators) and
 * one per custom endpoint (owned by the endpoint). An entry names a well-known name and
 * lists who may SEE, TALK to or OWN it.
 *
 * Wildcards: the documentation describes "prefix.*" entries matching the names one element
 * below the prefix, but the final kernel's suffix test looks at the wrong two characters
 * (the ones before the final '*') and never recognises a name ending in ".*". Such a name
 * therefore passes validation and is stored as an ordinary entry under its literal text:
 * it coexists with the entry for its prefix, conflicts only with the same literal text,
 * matches no real name, and is not refused for activators. We reproduce that.
 *
 * Pure logic: which database applies, and the owner/same-user shortcuts of the TALK and OWN
 * checks, are the bus's business.
 */
import { PolicyAccess, PolicyAccessType } from '../abi/constants';
import { fail } from '../abi/errno';
import { isValidWellKnownName } from '../abi/names';
import type { Credentials } from './caller';

/** A NAME or POLICY_ACCESS item of an upload, in the order they appeared. */
export type PolicyItem =
  | { readonly kind: 'name'; readonly name: string }
  /** type and access are u64 on the wire; Number() of any u64 keeps out-of-range values out of range. */
  | { readonly kind: 'access'; readonly type: number; readonly access: number; readonly id: bigint };

export interface PolicyRule {
  readonly type: PolicyAccessType;
  readonly access: PolicyAccess;
  /** uid (USER) or gid (GROUP); unused for WORLD. */
  readonly id: number;
}

export interface PolicyEntry {
  readonly name: string;
  readonly rules: readonly PolicyRule[];
}

export interface PolicyUploadOptions {
  /** At most this many NAME groups (1 for holders and activators); absent or 0: no limit. */
  readonly maxNames?: number;
}

/** (uid_t)-1 / (gid_t)-1: never a valid id. */
const INVALID_ID = 0xffff_ffff;

/**
 * Checks and converts an upload (HELLO of a holder or activator, UPDATE of a holder,
 * ENDPOINT_UPDATE) with the kernel's order of checks: items are walked in order, and the
 * first problem wins. A NAME beyond maxNames → E2BIG; an invalid name (a final ".*"
 * element is valid syntax) → EINVAL; a POLICY_ACCESS before any NAME, an access level
 * outside SEE..OWN or a type outside USER..WORLD → EINVAL.
 *
 * USER/GROUP ids are taken in the daemon's (initial) user namespace: like the kernel's
 * uid_t conversion, only the low 32 bits count, and (uid_t)-1 is refused with EINVAL.
 */
export function parsePolicyUpload(items: Iterable<PolicyItem>, opts: PolicyUploadOptions = {}): PolicyEntry[] {
  const entries: PolicyEntry[] = [];
  let rules: PolicyRule[] | undefined;
  for (const item of items) {
    if (item.kind === 'name') {
      if (opts.maxNames && entries.length >= opts.maxNames) {
        throw fail('E2BIG', `this policy upload may name at most ${opts.maxNames} name(s)`);
      }
      if (!isValidWellKnownName(item.name, true)) {
        throw fail('EINVAL', `policy name "${item.name}" is not a valid well-known name`);
      }
      rules = [];
      entries.push({ name: item.name, rules });
      continue;
    }
    if (!rules) throw fail('EINVAL', 'a POLICY_ACCESS item must follow the NAME item it applies to');
    rules.push(parseRule(item.type, item.access, item.id));
  }
  return entries;
}

function parseRule(type: number, access: number, rawId: bigint): PolicyRule {
  if (access !== PolicyAccess.SEE && access !== PolicyAccess.TALK && access !== PolicyAccess.OWN) {
    throw fail('EINVAL', `policy access level ${access} is not SEE (0), TALK (1) or OWN (2)`);
  }
  switch (type) {
    case PolicyAccessType.USER:
    case PolicyAccessType.GROUP: {
      const id = Number(rawId & 0xffff_ffffn);
      if (id === INVALID_ID) {
        throw fail('EINVAL', `policy ${type === PolicyAccessType.USER ? 'uid' : 'gid'} ${rawId} is not a valid id`);
      }
      return { type, access, id };
    }
    case PolicyAccessType.WORLD:
      return { type, access, id: 0 };
    default:
      throw fail('EINVAL', `policy access type ${type} is not USER (1), GROUP (2) or WORLD (3)`);
  }
}

interface StoredEntry {
  readonly owner: object;
  readonly rules: readonly PolicyRule[];
}

export class PolicyDb {
  private readonly byName = new Map<string, StoredEntry>();
  private readonly byOwner = new Map<object, readonly PolicyEntry[]>();

  /**
   * Replaces all entries of `owner` with `entries`, atomically: on EEXIST (a name held by
   * another owner, or named twice in `entries`) nothing changes.
   */
  set(owner: object, entries: readonly PolicyEntry[]): void {
    const seen = new Set<string>();
    for (const e of entries) {
      if (seen.has(e.name)) throw fail('EEXIST', `policy name "${e.name}" appears twice in one upload`);
      const present = this.byName.get(e.name);
      if (present && present.owner !== owner) {
        throw fail('EEXIST', `a policy for "${e.name}" is already installed by another connection or endpoint`);
      }
      seen.add(e.name);
    }
    this.removeOwner(owner);
    if (entries.length === 0) return;
    for (const e of entries) this.byName.set(e.name, { owner, rules: e.rules });
    this.byOwner.set(owner, entries);
  }

  removeOwner(owner: object): void {
    const old = this.byOwner.get(owner);
    if (!old) return;
    for (const e of old) this.byName.delete(e.name);
    this.byOwner.delete(owner);
  }

  /**
   * Highest access level granted to `creds` for `name` (a PolicyAccess value), -1 for
   * none. USER rules match the euid, GROUP rules the egid or a supplementary group, WORLD
   * rules everyone; each level implies the lower ones.
   */
  access(creds: Credentials, name: string): number {
    const stored = this.byName.get(name);
    if (!stored) return -1;
    let highest = -1;
    for (const rule of stored.rules) {
      if (rule.access <= highest) continue;
      if (
        rule.type === PolicyAccessType.WORLD ||
        (rule.type === PolicyAccessType.USER && rule.id === creds.euid) ||
        (rule.type === PolicyAccessType.GROUP && (rule.id === creds.egid || creds.groups.includes(rule.id)))
      ) {
        highest = rule.access;
        if (highest === PolicyAccess.OWN) break;
      }
    }
    return highest;
  }

  canOwn(creds: Credentials, name: string): boolean {
    return this.access(creds, name) >= PolicyAccess.OWN;
  }

  canSee(creds: Credentials, name: string): boolean {
    return this.access(creds, name) >= PolicyAccess.SEE;
  }

  /** TALK towards a connection: granted if any of the names it holds grants TALK. */
  canTalkToAny(creds: Credentials, names: Iterable<string>): boolean {
    for (const name of names) if (this.access(creds, name) >= PolicyAccess.TALK) return true;
    return false;
  }

  /** SEE on a connection (custom endpoints, CONN_INFO by id): any of its held names visible. */
  canSeeAny(creds: Credentials, names: Iterable<string>): boolean {
    for (const name of names) if (this.access(creds, name) >= PolicyAccess.SEE) return true;
    return false;
  }
}
