/**
 * Strings as both wire formats carry them: UTF-8 without NUL. Most D-Bus strings are short
 * ASCII names, so those are checked and decoded without going through the UTF-8 validator.
 *
 * The same few names (paths, interfaces, members, bus names) arrive in message after
 * message: short ASCII strings are kept in a small table by a hash of their bytes, and a
 * string whose bytes equal a kept one is that one, without creating a new string.
 */
import { isUtf8 } from 'node:buffer';

/** Longer strings are rarely repeated names; comparing them would cost what creating them does. */
const MAX_KEPT_LENGTH = 64;
const TABLE_BITS = 9;
const kept: string[] = new Array<string>(1 << TABLE_BITS).fill('');

/** The text of buf[start, end) if it is ASCII without NUL, else undefined. */
export function decodeAsciiString(buf: Buffer, start: number, end: number): string | undefined {
  let hash = end - start;
  for (let i = start; i < end; i++) {
    const c = buf[i]!;
    if (c === 0 || c >= 0x80) return undefined;
    hash = (Math.imul(hash, 31) + c) | 0;
  }
  const n = end - start;
  if (n > MAX_KEPT_LENGTH) return buf.toString('latin1', start, end);
  const slot = (hash ^ (hash >>> TABLE_BITS)) & ((1 << TABLE_BITS) - 1);
  const candidate = kept[slot]!;
  if (candidate.length === n) {
    let i = 0;
    while (i < n && candidate.charCodeAt(i) === buf[start + i]) i++;
    if (i === n) return candidate;
  }
  const s = buf.toString('latin1', start, end);
  kept[slot] = s;
  return s;
}

/** The text of buf[start, end), or undefined if it holds a NUL or is not valid UTF-8. */
export function decodeWireString(buf: Buffer, start: number, end: number): string | undefined {
  const ascii = decodeAsciiString(buf, start, end);
  if (ascii !== undefined) return ascii;
  const bytes = buf.subarray(start, end);
  if (!isUtf8(bytes) || bytes.includes(0)) return undefined;
  return buf.toString('utf8', start, end);
}
