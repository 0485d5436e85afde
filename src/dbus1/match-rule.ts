/**
 * D-Bus match rules (AddMatch / RemoveMatch on the legacy side): the rule string grammar of
 * the specification as dbus-daemon reads it, the rule's canonical text, equality, and
 * evaluation against a message with dbus-daemon's semantics. Also the part of a rule a
 * kdbus match can express, as sd-bus derives it (bus_add_match_internal_kernel), so a legacy
 * client's rules can narrow what the bus queues for it before the exact check here.
 */
import {
  isValidBusName, isValidBusNamespace, isValidInterfaceName, isValidMemberName, isValidObjectPath,
} from './names';

export type MessageType = 'method_call' | 'method_return' | 'error' | 'signal';

/** What a match rule (and a bloom filter) looks at in a message. */
export interface MatchMessage {
  type: MessageType;
  /** Unique name of the sender; the bus driver's messages carry "org.freedesktop.DBus" (or none). */
  sender?: string;
  destination?: string;
  path?: string;
  interface?: string;
  member?: string;
  /** The body's values; "s", "o" and "g" values are strings, arrays of them string arrays. */
  args: ReadonlyArray<unknown>;
  /** The complete type of each body value ("s", "o", "as", "a{sv}", ...), parallel to args. */
  argTypes: ReadonlyArray<string>;
}

/** Who owns a bus name now, for rules naming a well-known sender or destination. */
export interface NameOwners {
  /** The unique name of the primary owner of `name` (a unique name owns itself), if any. */
  primaryOwner(name: string): string | undefined;
}

export const DRIVER_NAME = 'org.freedesktop.DBus';
export const MAX_MATCH_RULE_LENGTH = 1024;
export const MAX_MATCH_RULE_ARG = 63;

const ERROR_MATCH_RULE_INVALID = 'org.freedesktop.DBus.Error.MatchRuleInvalid';
const ERROR_LIMITS_EXCEEDED = 'org.freedesktop.DBus.Error.LimitsExceeded';

/** A match rule string that cannot be parsed; `errorName` is the D-Bus error to reply with. */
export class MatchRuleInvalid extends Error {
  override readonly name = 'MatchRuleInvalid';

  constructor(
    message: string,
    /** MatchRuleInvalid, or LimitsExceeded for an over-long rule (as dbus-daemon answers). */
    readonly errorName: string = ERROR_MATCH_RULE_INVALID,
  ) {
    super(message);
  }
}

/**
 * argN='v': the string arg N equals v. argNpath='v': the string or object path arg N equals
 * v, or one of the two ends in '/' and is a prefix of the other. arg0namespace='v': the
 * string arg 0 is the bus name v or lies below it ("v." prefix).
 */
export interface ArgMatch {
  readonly index: number;
  readonly kind: 'string' | 'path' | 'namespace';
  readonly value: string;
}

const MESSAGE_TYPES: ReadonlySet<string> = new Set(['method_call', 'method_return', 'error', 'signal']);

export class MatchRule {
  private canonical: string | undefined;

  readonly interface: string | undefined;

  private constructor(
    readonly type: MessageType | undefined,
    readonly sender: string | undefined,
    iface: string | undefined,
    readonly member: string | undefined,
    readonly path: string | undefined,
    readonly pathNamespace: string | undefined,
    readonly destination: string | undefined,
    /** eavesdrop='true': also see messages addressed to other connections. */
    readonly eavesdrop: boolean,
    /** By ascending index, at most one per index. */
    readonly args: readonly ArgMatch[],
  ) {
    this.interface = iface;
  }

  /** Parses a rule as dbus-daemon does; throws MatchRuleInvalid. */
  static parse(text: string): MatchRule {
    const bytes = Buffer.byteLength(text, 'utf8');
    if (bytes > MAX_MATCH_RULE_LENGTH) {
      throw new MatchRuleInvalid(`match rule is ${bytes} bytes long, the maximum is ${MAX_MATCH_RULE_LENGTH}`, ERROR_LIMITS_EXCEEDED);
    }
    const b = new RuleBuilder();
    let pos = 0;
    while (pos < text.length) {
      pos = skipWhite(text, pos);
      const keyStart = pos;
      while (pos < text.length && text.charCodeAt(pos) !== EQUALS && !isWhite(text.charCodeAt(pos))) pos++;
      const key = text.slice(keyStart, pos);
      pos = skipWhite(text, pos);
      if (key.length === 0) {
        if (pos === text.length) break;
        // dbus-daemon silently drops everything from a key-less '=' on, widening the rule.
        throw new MatchRuleInvalid(`match rule has '=' without a key at offset ${pos}`);
      }
      if (text.charCodeAt(pos) !== EQUALS) throw new MatchRuleInvalid(`match rule key "${key}" is not followed by '='`);
      const value = readValue(text, pos + 1);
      pos = value.end;
      b.set(key, value.text);
    }
    b.args.sort((x, y) => x.index - y.index);
    return new MatchRule(b.type, b.sender, b.iface, b.member, b.path, b.pathNamespace, b.destination, b.eavesdrop, b.args);
  }

  /**
   * The rule as dbus-daemon writes it back (type, interface, member, path, path_namespace,
   * sender, destination, eavesdrop, args by index; values quoted): equal rules have equal
   * text, and parsing the text gives an equal rule.
   */
  toString(): string {
    if (this.canonical !== undefined) return this.canonical;
    const parts: string[] = [];
    const add = (key: string, value: string | undefined): void => {
      if (value !== undefined) parts.push(`${key}=${quote(value)}`);
    };
    add('type', this.type);
    add('interface', this.interface);
    add('member', this.member);
    add('path', this.path);
    add('path_namespace', this.pathNamespace);
    add('sender', this.sender);
    add('destination', this.destination);
    if (this.eavesdrop) add('eavesdrop', 'true');
    for (const a of this.args) add(`arg${a.index}${a.kind === 'string' ? '' : a.kind}`, a.value);
    this.canonical = parts.join(',');
    return this.canonical;
  }

  /** The rule as a monitor applies it (BecomeMonitor): addressed messages match too. */
  eavesdropping(): MatchRule {
    if (this.eavesdrop) return this;
    return new MatchRule(this.type, this.sender, this.interface, this.member, this.path, this.pathNamespace, this.destination, true, this.args);
  }

  /** Same conditions (RemoveMatch removes one rule equal to the one it is given). */
  equals(other: MatchRule): boolean {
    return this === other || this.toString() === other.toString();
  }

  /**
   * Whether the rule selects `m` for its owner, as dbus-daemon decides it: without
   * eavesdrop='true' only messages without a destination (broadcasts) match, since
   * addressed messages reach their recipient without any rule. Names of senders and
   * destinations compare by current primary ownership.
   */
  matches(m: MatchMessage, owners: NameOwners): boolean {
    if (this.type !== undefined && this.type !== m.type) return false;
    if (this.interface !== undefined && this.interface !== m.interface) return false;
    if (this.member !== undefined && this.member !== m.member) return false;
    if (this.sender !== undefined && !senderMatches(this.sender, m.sender, owners)) return false;
    if (this.destination !== undefined) {
      if (m.destination === undefined || !this.eavesdrop) return false;
      const recipient = owners.primaryOwner(m.destination);
      // An addressed recipient that is the driver or not yet there: compare the names.
      if (recipient === undefined ? this.destination !== m.destination : owners.primaryOwner(this.destination) !== recipient) return false;
    } else if (!this.eavesdrop && m.destination !== undefined) {
      return false;
    }
    if (this.path !== undefined && this.path !== m.path) return false;
    if (this.pathNamespace !== undefined && !inPathNamespace(m.path, this.pathNamespace)) return false;
    for (const a of this.args) if (!argMatches(a, m)) return false;
    return true;
  }
}

function senderMatches(ruleSender: string, sender: string | undefined, owners: NameOwners): boolean {
  if (sender === undefined || sender === DRIVER_NAME) return ruleSender === DRIVER_NAME;
  if (ruleSender.charCodeAt(0) === COLON) return ruleSender === sender;
  return owners.primaryOwner(ruleSender) === sender;
}

/** "/" holds every path; any other namespace holds itself and what lies below it. */
function inPathNamespace(path: string | undefined, ns: string): boolean {
  if (path === undefined || !path.startsWith(ns)) return false;
  return ns.length === 1 || path.length === ns.length || path.charCodeAt(ns.length) === SLASH;
}

function argMatches(a: ArgMatch, m: MatchMessage): boolean {
  const t = m.argTypes[a.index];
  if (t !== 's' && !(a.kind === 'path' && t === 'o')) return false;
  const actual = m.args[a.index];
  if (typeof actual !== 'string') return false;
  const expected = a.value;
  switch (a.kind) {
    case 'string':
      return actual === expected;
    case 'path':
      return actual === expected
        || (expected.endsWith('/') && actual.startsWith(expected))
        || (actual.endsWith('/') && expected.startsWith(actual));
    case 'namespace':
      return actual.startsWith(expected) && (actual.length === expected.length || actual.charCodeAt(expected.length) === DOT);
  }
}

/** Collects keys in any order, rejecting what dbus-daemon rejects. */
class RuleBuilder {
  type: MessageType | undefined;
  sender: string | undefined;
  iface: string | undefined;
  member: string | undefined;
  path: string | undefined;
  pathNamespace: string | undefined;
  destination: string | undefined;
  eavesdrop = false;
  readonly args: ArgMatch[] = [];

  set(key: string, value: string): void {
    switch (key) {
      case 'type':
        this.once(key, this.type);
        if (!MESSAGE_TYPES.has(value)) {
          throw new MatchRuleInvalid(`match rule type '${value}' is not one of signal, method_call, method_return, error`);
        }
        this.type = value as MessageType;
        return;
      case 'sender':
        this.once(key, this.sender);
        this.sender = checked(value, isValidBusName, 'sender', 'a bus name');
        return;
      case 'interface':
        this.once(key, this.iface);
        this.iface = checked(value, isValidInterfaceName, 'interface', 'an interface name');
        return;
      case 'member':
        this.once(key, this.member);
        this.member = checked(value, isValidMemberName, 'member', 'a member name');
        return;
      case 'path':
      case 'path_namespace':
        if (this.path !== undefined || this.pathNamespace !== undefined) {
          throw new MatchRuleInvalid('match rule has more than one of path and path_namespace');
        }
        checked(value, isValidObjectPath, key, 'an object path');
        if (key === 'path') this.path = value;
        else this.pathNamespace = value;
        return;
      case 'destination':
        this.once(key, this.destination);
        this.destination = checked(value, isValidBusName, 'destination', 'a bus name');
        return;
      case 'eavesdrop':
        // Repeating it is allowed; the last one counts (dbus-monitor adds its own).
        if (value !== 'true' && value !== 'false') throw new MatchRuleInvalid(`match rule eavesdrop='${value}' is neither 'true' nor 'false'`);
        this.eavesdrop = value === 'true';
        return;
      default:
        if (key.startsWith('arg')) {
          this.setArg(key, value);
          return;
        }
        throw new MatchRuleInvalid(`match rule has an unknown key "${key}"`);
    }
  }

  private setArg(key: string, value: string): void {
    const m = /^arg(0|[1-9][0-9]*)(.*)$/.exec(key);
    if (m === null) throw new MatchRuleInvalid(`match rule key "${key}" lacks an argument number, as in arg0 or arg7`);
    const index = Number(m[1]);
    const suffix = m[2]!;
    let kind: ArgMatch['kind'];
    if (suffix === '') kind = 'string';
    else if (suffix === 'path') kind = 'path';
    else if (suffix === 'namespace' && index === 0) kind = 'namespace';
    else throw new MatchRuleInvalid(`match rule key "${key}" is none of argN, argNpath (N 0-63) and arg0namespace`);
    if (index > MAX_MATCH_RULE_ARG) throw new MatchRuleInvalid(`match rule key "${key}" names argument ${index}, the highest is ${MAX_MATCH_RULE_ARG}`);
    if (kind === 'namespace') checked(value, isValidBusNamespace, key, 'a bus name or a prefix of one');
    if (this.args.some((a) => a.index === index)) throw new MatchRuleInvalid(`match rule sets argument ${index} more than once`);
    this.args.push({ index, kind, value });
  }

  private once(key: string, current: string | undefined): void {
    if (current !== undefined) throw new MatchRuleInvalid(`match rule has the key ${key} more than once`);
  }
}

function checked(value: string, valid: (s: string) => boolean, key: string, what: string): string {
  if (!valid(value)) throw new MatchRuleInvalid(`match rule ${key}='${value}' is not ${what}`);
  return value;
}

const EQUALS = 0x3d;
const COMMA = 0x2c;
const APOSTROPHE = 0x27;
const BACKSLASH = 0x5c;
const COLON = 0x3a;
const DOT = 0x2e;
const SLASH = 0x2f;

const isWhite = (c: number): boolean => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;

function skipWhite(s: string, pos: number): number {
  while (pos < s.length && isWhite(s.charCodeAt(pos))) pos++;
  return pos;
}

/**
 * A value runs to the next comma outside apostrophes or to the end. Inside apostrophes
 * every character stands for itself; outside, a backslash takes the next character as it
 * is: \' is an apostrophe, any other pair is kept whole (so \, does not end the value).
 * Whitespace is kept. An apostrophe left open is an error.
 */
function readValue(s: string, pos: number): { text: string; end: number } {
  let out = '';
  let quoted = false;
  while (pos < s.length) {
    const c = s.charCodeAt(pos);
    if (quoted) {
      if (c === APOSTROPHE) quoted = false;
      else out += s[pos];
      pos++;
    } else if (c === APOSTROPHE) {
      quoted = true;
      pos++;
    } else if (c === COMMA) {
      return { text: out, end: pos + 1 };
    } else if (c === BACKSLASH) {
      out += s.charCodeAt(pos + 1) === APOSTROPHE ? "'" : s.slice(pos, pos + 2);
      pos += 2;
    } else {
      out += s[pos];
      pos++;
    }
  }
  if (quoted) throw new MatchRuleInvalid('match rule has an apostrophe without its closing one');
  return { text: out, end: pos };
}

/** 'value' with each apostrophe written as '\'' (close, escaped apostrophe, reopen). */
function quote(value: string): string {
  return `'${value.replace(/'/g, "'\\''")}'`;
}

// --- kdbus side ----------------------------------------------------------------------------

/**
 * The part of a rule a kdbus match can carry (KDBUS_CMD_MATCH_ADD items), as sd-bus's
 * bus_add_match_internal_kernel derives it. Everything here is a necessary condition of the
 * rule, never a sufficient one: what passes still needs MatchRule.matches().
 */
export interface KdbusMatchParts {
  /** KDBUS_ITEM_ID: the rule's sender is the unique name ":1.<id>". */
  senderId?: bigint;
  /** KDBUS_ITEM_NAME: the rule's sender is a well-known name (kdbus checks current ownership). */
  senderName?: string;
  /** KDBUS_ITEM_DST_ID: the rule's destination is the unique name ":1.<id>". */
  destinationId?: bigint;
  /** The "key:value" strings whose bloom bits make the KDBUS_ITEM_BLOOM_MASK; none: no mask. */
  bloomKeys: string[];
  /**
   * Present when the rule could match the driver's NameOwnerChanged signal, which kdbus
   * delivers as NAME_ and ID_ notifications: the rule's plain arg0..arg2 values (name, old
   * owner, new owner) from which sd-bus derives those notification matches.
   */
  nameOwnerChanged?: { arg0?: string; arg1?: string; arg2?: string };
}

/**
 * Which senders' bloom filters a mask must be satisfied by:
 * - 'sd-bus': exactly the keys sd-bus puts into its own masks;
 * - 'safe': only keys every filter of a message the rule matches is sure to carry. sd-bus
 *   stops adding argument keys after the first string argument, so its filters hold argN
 *   for N > 0 only when the arguments before N are string arrays; a mask with argN (N > 0)
 *   would then miss signals the rule matches. 'safe' leaves those keys out.
 */
export type BloomMaskFlavour = 'sd-bus' | 'safe';

const UNIQUE_ID = /^:1\.(0|[1-9][0-9]*)$/;
const U64_MAX = (1n << 64n) - 1n;

/** ":1.<u64>" → the kdbus id; any other name → undefined (sd-bus only knows that form). */
export function kdbusIdOfUniqueName(name: string): bigint | undefined {
  // Asked for every message to a unique name: ids below 2^53 are read without the regex
  // and the string-to-BigInt parse.
  const n = name.length;
  if (n > 3 && n <= 18 && name.charCodeAt(0) === 0x3a && name.charCodeAt(1) === 0x31 && name.charCodeAt(2) === 0x2e) {
    if (name.charCodeAt(3) === 0x30) return n === 4 ? 0n : undefined;
    let id = 0;
    for (let i = 3; i < n; i++) {
      const d = name.charCodeAt(i) - 0x30;
      if (d < 0 || d > 9) return undefined;
      id = id * 10 + d;
    }
    return BigInt(id);
  }
  const m = UNIQUE_ID.exec(name);
  if (m === null) return undefined;
  const id = BigInt(m[1]!);
  return id <= U64_MAX ? id : undefined;
}

export function kdbusMatchOf(rule: MatchRule, flavour: BloomMaskFlavour): KdbusMatchParts {
  const parts: KdbusMatchParts = { bloomKeys: [] };
  const keys = parts.bloomKeys;
  let nameChange = true;

  if (rule.sender !== undefined) {
    if (rule.sender !== DRIVER_NAME) nameChange = false;
    const id = kdbusIdOfUniqueName(rule.sender);
    if (id !== undefined) parts.senderId = id;
    // Other unique names cannot be expressed; the exact check filters for them.
    else if (rule.sender.charCodeAt(0) !== COLON) parts.senderName = rule.sender;
  }
  if (rule.type !== undefined) {
    if (rule.type !== 'signal') nameChange = false;
    keys.push(`message-type:${rule.type}`);
  }
  if (rule.interface !== undefined) {
    if (rule.interface !== DRIVER_NAME) nameChange = false;
    keys.push(`interface:${rule.interface}`);
  }
  if (rule.member !== undefined) {
    if (rule.member !== 'NameOwnerChanged') nameChange = false;
    keys.push(`member:${rule.member}`);
  }
  if (rule.path !== undefined) {
    if (rule.path !== '/org/freedesktop/DBus') nameChange = false;
    keys.push(`path:${rule.path}`);
  }
  if (rule.pathNamespace !== undefined) keys.push(`path-slash-prefix:${rule.pathNamespace}`);
  const changeArgs: { arg0?: string; arg1?: string; arg2?: string } = {};
  for (const a of rule.args) {
    if (a.kind === 'string') {
      if (a.index === 0) changeArgs.arg0 = a.value;
      else if (a.index === 1) changeArgs.arg1 = a.value;
      else if (a.index === 2) changeArgs.arg2 = a.value;
      if (a.index === 0 || flavour === 'sd-bus') keys.push(`arg${a.index}:${a.value}`);
    } else if (a.kind === 'namespace') {
      keys.push(`arg${a.index}-dot-prefix:${a.value}`);
    }
    // argNpath would need every prefix in both directions; sd-bus leaves it to userspace.
  }
  if (rule.destination !== undefined) {
    // A broadcast has no destination, so NameOwnerChanged never matches a destination.
    nameChange = false;
    const id = kdbusIdOfUniqueName(rule.destination);
    if (id !== undefined) parts.destinationId = id;
  }
  if (nameChange) parts.nameOwnerChanged = changeArgs;
  return parts;
}
