/**
 * Name validity as the kdbus kernel decides it: well-known names (names.c), sysnames of
 * buses, endpoints and connection descriptions (item.c), and the "<euid>-" prefix that
 * bus and endpoint names must carry (util.c).
 *
 * kdbus names are byte strings. Throughout this project they travel as JS strings holding
 * one character per byte (latin1), so every check here looks at char codes 0..255.
 */
import { Limits } from './constants';
import { fail } from './errno';

/**
 * The kernel classifies characters with its own ctype table, which (unlike the C locale)
 * counts the Latin-1 letters 0xC0-0xFF except 0xD7 and 0xF7 as alphabetic. Names with those
 * bytes therefore pass the kernel's checks, and so they pass here.
 */
const ALPHA = new Uint8Array(256);
for (let c = 0x41; c <= 0x5a; c++) ALPHA[c] = 1;
for (let c = 0x61; c <= 0x7a; c++) ALPHA[c] = 1;
for (let c = 0xc0; c <= 0xff; c++) ALPHA[c] = c === 0xd7 || c === 0xf7 ? 0 : 1;

const isAlpha = (c: number): boolean => c < 256 && ALPHA[c] === 1;
const isDigit = (c: number): boolean => c >= 0x30 && c <= 0x39;

const DOT = 0x2e;
const DASH = 0x2d;
const UNDERSCORE = 0x5f;
const STAR = 0x2a;

/**
 * A D-Bus well-known name: at least two non-empty dot-separated elements of letters, '_'
 * and '-', with digits allowed except as an element's first character, at most 255 chars.
 * With allowWildcard (policy entries) the last element may be exactly "*".
 */
export function isValidWellKnownName(name: string, allowWildcard: boolean): boolean {
  const len = name.length;
  if (len > Limits.NAME_MAX_LEN) return false;
  let atElementStart = true;
  let sawDot = false;
  for (let i = 0; i < len; i++) {
    const c = name.charCodeAt(i);
    if (c === DOT) {
      if (atElementStart) return false;
      sawDot = true;
      atElementStart = true;
      continue;
    }
    const ok =
      isAlpha(c) ||
      (!atElementStart && isDigit(c)) ||
      c === UNDERSCORE ||
      c === DASH ||
      (allowWildcard && atElementStart && c === STAR && i === len - 1);
    if (!ok) return false;
    atElementStart = false;
  }
  return !atElementStart && sawDot;
}

/** Sysname characters: letters, digits, '_'; '-' and '.' only between other characters. */
function sysnameCharsValid(codeAt: (i: number) => number, len: number): boolean {
  if (len === 0) return false;
  for (let i = 0; i < len; i++) {
    const c = codeAt(i);
    if (isAlpha(c) || isDigit(c) || c === UNDERSCORE) continue;
    if (i > 0 && i + 1 < len && (c === DASH || c === DOT)) continue;
    return false;
  }
  return true;
}

/** The name of a bus, endpoint or connection description: 1..63 sysname characters. */
export function isValidSysname(name: string): boolean {
  return name.length <= Limits.SYSNAME_MAX_LEN && sysnameCharsValid((i) => name.charCodeAt(i), name.length);
}

/**
 * Validates the payload of a MAKE_NAME or CONN_DESCRIPTION item, with the kernel's order of
 * checks and errnos: too short for one character plus NUL → EINVAL, longer than 63
 * characters → ENAMETOOLONG (before the NUL is even looked at), NUL not exactly at the end
 * → EINVAL, bad characters → EINVAL.
 */
export function validateSysnamePayload(payload: Buffer, what: string): void {
  const len = payload.length;
  if (len < 2) throw fail('EINVAL', `${what} must hold at least one character and a terminating NUL (payload is ${len} bytes)`);
  if (len > Limits.SYSNAME_MAX_LEN + 1) {
    throw fail('ENAMETOOLONG', `${what} is longer than ${Limits.SYSNAME_MAX_LEN} characters (payload is ${len} bytes including NUL)`);
  }
  if (payload.indexOf(0) !== len - 1) throw fail('EINVAL', `${what} must be NUL-terminated with no NUL before the end`);
  if (!sysnameCharsValid((i) => payload[i], len - 1)) {
    throw fail('EINVAL', `${what} "${payload.toString('latin1', 0, len - 1)}" may contain only letters, digits and '_', plus '-' or '.' between them`);
  }
}

/**
 * Bus and custom endpoint names must start with "<euid>-", the creator's effective uid as
 * the domain's user namespace sees it; uid null means the creator has no mapping there,
 * which the kernel refuses as well.
 */
export function verifyUidPrefix(name: string, uid: number | null, what: string): void {
  if (uid === null) throw fail('EINVAL', `${what} "${name}" cannot be created: the caller's euid has no mapping in the domain's user namespace`);
  const prefix = `${uid >>> 0}-`;
  if (!name.startsWith(prefix)) throw fail('EINVAL', `${what} "${name}" must start with "${prefix}" (the caller's effective uid)`);
}
