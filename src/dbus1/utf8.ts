/**
 * Strings as both wire formats carry them: UTF-8 without NUL. Most D-Bus strings are short
 * ASCII names, so those are checked and decoded without going through the UTF-8 validator.
 */
import { isUtf8 } from 'node:buffer';

/** The text of buf[start, end), or undefined if it holds a NUL or is not valid UTF-8. */
export function decodeWireString(buf: Buffer, start: number, end: number): string | undefined {
  let ascii = true;
  for (let i = start; i < end; i++) {
    const c = buf[i]!;
    if (c === 0) return undefined;
    if (c >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return buf.toString('latin1', start, end);
  const bytes = buf.subarray(start, end);
  if (!isUtf8(bytes) || bytes.includes(0)) return undefined;
  return buf.toString('utf8', start, end);
}
