/**
 * Validity of the names of the D-Bus specification ("Valid Names"): bus names (unique and
 * well-known), bus name namespaces (arg0namespace), interface, member and error names, and
 * object paths. All of them are ASCII, so checking UTF-16 code units is checking bytes.
 *
 * Where dbus-daemon's validator is laxer than the specification for unique names (it takes
 * ":" or ":1" without a second element), these functions follow the specification, as
 * dbus-broker does: no bus assigns such names, so no real peer can be matched by them.
 */

const MAX_NAME_LENGTH = 255;

const DOT = 0x2e;
const SLASH = 0x2f;
const COLON = 0x3a;

const isLetter = (c: number): boolean => (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
const isDigit = (c: number): boolean => c >= 0x30 && c <= 0x39;
/** [A-Za-z0-9_], the characters of interface and member names and path elements. */
const isNameChar = (c: number): boolean => isLetter(c) || isDigit(c) || c === 0x5f;
/** Bus names also allow '-'. */
const isBusNameChar = (c: number): boolean => isNameChar(c) || c === 0x2d;

/**
 * Dot-separated elements from `from` on: each non-empty, made of `charOk` characters, not
 * starting with a digit unless `digitFirst`; at least `minElements` of them.
 */
function elementsValid(s: string, from: number, charOk: (c: number) => boolean, digitFirst: boolean, minElements: number): boolean {
  let elements = 1;
  let atStart = true;
  for (let i = from; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === DOT) {
      if (atStart) return false;
      elements++;
      atStart = true;
    } else {
      if (!charOk(c) || (atStart && !digitFirst && isDigit(c))) return false;
      atStart = false;
    }
  }
  return !atStart && elements >= minElements;
}

/** A unique connection name: ':' then at least two elements, digits allowed anywhere. */
export function isValidUniqueName(s: string): boolean {
  return s.length <= MAX_NAME_LENGTH && s.charCodeAt(0) === COLON && elementsValid(s, 1, isBusNameChar, true, 2);
}

/** A well-known bus name: at least two elements, none starting with a digit. */
export function isValidWellKnownName(s: string): boolean {
  return s.length <= MAX_NAME_LENGTH && s.charCodeAt(0) !== COLON && elementsValid(s, 0, isBusNameChar, false, 2);
}

const REMEMBERED_NAMES = 1024;

/**
 * A validator that remembers the strings it accepted: every message names the same few
 * paths, interfaces, members and bus names, and is checked on its way in and out. Bounded,
 * as the names come from clients.
 */
function remembering(check: (s: string) => boolean): (s: string) => boolean {
  const valid = new Set<string>();
  return (s) => {
    if (valid.has(s)) return true;
    if (!check(s)) return false;
    if (valid.size >= REMEMBERED_NAMES) valid.clear();
    valid.add(s);
    return true;
  };
}

/** A unique or well-known bus name. */
export const isValidBusName = remembering((s) => (s.charCodeAt(0) === COLON ? isValidUniqueName(s) : isValidWellKnownName(s)));

/**
 * A bus name namespace (arg0namespace): a bus name or a prefix of one made of whole
 * elements, so a single element is enough ("com" matches "com.example.Foo").
 */
export function isValidBusNamespace(s: string): boolean {
  if (s.length > MAX_NAME_LENGTH) return false;
  return s.charCodeAt(0) === COLON
    ? elementsValid(s, 1, isBusNameChar, true, 1)
    : elementsValid(s, 0, isBusNameChar, false, 1);
}

/** An interface name: at least two elements of [A-Za-z0-9_], none starting with a digit. */
export const isValidInterfaceName = remembering((s) => s.length <= MAX_NAME_LENGTH && elementsValid(s, 0, isNameChar, false, 2));

/** An error name has the form of an interface name. */
export const isValidErrorName = isValidInterfaceName;

/** A member name: 1-255 characters of [A-Za-z0-9_], not starting with a digit. */
export const isValidMemberName = remembering((s) => {
  if (s.length === 0 || s.length > MAX_NAME_LENGTH || isDigit(s.charCodeAt(0))) return false;
  for (let i = 0; i < s.length; i++) if (!isNameChar(s.charCodeAt(i))) return false;
  return true;
});

/** An object path: "/" or "/" followed by non-empty [A-Za-z0-9_] elements separated by "/". */
export const isValidObjectPath = remembering(objectPathValid);

function objectPathValid(s: string): boolean {
  if (s.charCodeAt(0) !== SLASH) return false;
  if (s.length === 1) return true;
  let atStart = true;
  for (let i = 1; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === SLASH) {
      if (atStart) return false;
      atStart = true;
    } else {
      if (!isNameChar(c)) return false;
      atStart = false;
    }
  }
  return !atStart;
}
