/**
 * D-Bus addresses ("unix:path=/run/dbus/system_bus_socket;unix:abstract=..."), as the
 * D-Bus specification defines them: a list of transports separated by ';', each with
 * comma-separated key=value pairs whose values escape bytes outside [-0-9A-Za-z_/.\*] as %XX.
 * Only the unix transport exists here; it names one socket by path or in the abstract
 * namespace, or (for listening) a directory to make a socket in. For listening there is
 * also dbus-daemon's "systemd:": the sockets systemd passed (socket activation).
 */

export class AddressError extends Error {
  constructor(readonly address: string, problem: string) {
    super(`D-Bus address "${address}": ${problem}`);
    this.name = 'AddressError';
  }
}

export type UnixAddress =
  | { kind: 'path'; path: string; guid?: string }
  | { kind: 'abstract'; name: string; guid?: string }
  /** Listening only: a fresh socket in this directory (dir=, tmpdir=). */
  | { kind: 'dir'; dir: string; guid?: string }
  /** Listening only: the sockets systemd passed (systemd:). */
  | { kind: 'systemd' };

const OPTIONALLY_ESCAPED = /^[-0-9A-Za-z_/.\\*]$/;

function unescapeValue(address: string, v: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < v.length; i++) {
    const c = v[i]!;
    if (c === '%') {
      const hex = v.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) throw new AddressError(address, `"%${hex}" is not a %XX escape`);
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else {
      bytes.push(...Buffer.from(c, 'utf8'));
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

/** Escapes a value for an address string (what a server prints for its clients). */
export function escapeValue(v: string): string {
  let out = '';
  for (const byte of Buffer.from(v, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += OPTIONALLY_ESCAPED.test(c) ? c : `%${byte.toString(16).padStart(2, '0')}`;
  }
  return out;
}

/** Every unix entry of an address list, in order; other transports are an error. */
export function parseAddress(address: string): UnixAddress[] {
  const out: UnixAddress[] = [];
  for (const entry of address.split(';')) {
    if (entry === '') continue;
    const colon = entry.indexOf(':');
    if (colon <= 0) throw new AddressError(address, `"${entry}" has no transport name before ':'`);
    const transport = entry.slice(0, colon);
    if (transport === 'systemd') {
      if (entry.length > colon + 1) throw new AddressError(address, 'systemd: takes no keys');
      out.push({ kind: 'systemd' });
      continue;
    }
    if (transport !== 'unix') throw new AddressError(address, `transport "${transport}" is not supported (only unix:, and systemd: to listen)`);
    const keys = new Map<string, string>();
    const rest = entry.slice(colon + 1);
    for (const pair of rest === '' ? [] : rest.split(',')) {
      const eq = pair.indexOf('=');
      if (eq <= 0) throw new AddressError(address, `"${pair}" is not key=value`);
      const key = pair.slice(0, eq);
      if (keys.has(key)) throw new AddressError(address, `key "${key}" given twice`);
      keys.set(key, unescapeValue(address, pair.slice(eq + 1)));
    }
    const guid = keys.get('guid');
    if (guid !== undefined && !/^[0-9a-fA-F]{32}$/.test(guid)) throw new AddressError(address, 'guid must be 32 hex digits');
    const where = ['path', 'abstract', 'dir', 'tmpdir'].filter((k) => keys.has(k));
    if (where.length !== 1) throw new AddressError(address, 'a unix address needs exactly one of path=, abstract=, dir=, tmpdir=');
    for (const k of keys.keys()) {
      if (!['path', 'abstract', 'dir', 'tmpdir', 'guid'].includes(k)) throw new AddressError(address, `unknown key "${k}" for unix:`);
    }
    const value = keys.get(where[0]!)!;
    if (value === '') throw new AddressError(address, `${where[0]}= is empty`);
    const g = guid === undefined ? {} : { guid };
    if (where[0] === 'path') out.push({ kind: 'path', path: value, ...g });
    else if (where[0] === 'abstract') out.push({ kind: 'abstract', name: value, ...g });
    else out.push({ kind: 'dir', dir: value, ...g });
  }
  if (out.length === 0) throw new AddressError(address, 'no address in it');
  return out;
}

/** The address a client uses to reach a socket this daemon listens on. */
export function formatAddress(a: { kind: 'path'; path: string } | { kind: 'abstract'; name: string }, guid?: string): string {
  const where = a.kind === 'path' ? `path=${escapeValue(a.path)}` : `abstract=${escapeValue(a.name)}`;
  return `unix:${where}${guid ? `,guid=${guid}` : ''}`;
}
