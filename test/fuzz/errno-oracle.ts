/**
 * Which errnos an ioctl may fail with, by handle role and command (kdbus-abi.md §1.5 for the
 * dispatcher, §3.19 for the commands, checked against the kernel's handle.c): anything
 * else coming out of the bus is a bug, however the input was mangled.
 */
import { Cmd, type CmdName } from '../../src/abi/constants';
import { Errno, type ErrnoName } from '../../src/abi/errno';

/** The role a handle has when the ioctl arrives. */
export type HandleRole = 'control' | 'bus-owner' | 'endpoint' | 'ep-owner' | 'connected';

/**
 * What every command can hit while its struct is copied and parsed (alignment, size, flags,
 * items, per-item validation), plus allocation failure and a node that went away.
 */
const PARSE: ErrnoName[] = ['EFAULT', 'EINVAL', 'EMSGSIZE', 'ENAMETOOLONG', 'EBADF', 'ENOMEM', 'ESHUTDOWN'];

const SPECIFIC: Record<CmdName, ErrnoName[]> = {
  BUS_MAKE: ['EEXIST', 'EMFILE'],
  ENDPOINT_MAKE: ['EPERM', 'EEXIST'],
  ENDPOINT_UPDATE: ['EEXIST'],
  HELLO: ['EPERM', 'EOPNOTSUPP', 'EMFILE', 'EEXIST', 'E2BIG', 'EXFULL'],
  UPDATE: ['EOPNOTSUPP', 'E2BIG', 'EEXIST'],
  BYEBYE: ['EOPNOTSUPP', 'EBUSY'],
  FREE: ['ENXIO', 'EOPNOTSUPP'],
  CONN_INFO: ['ESRCH', 'ENXIO', 'EXFULL'],
  BUS_CREATOR_INFO: ['EXFULL'],
  LIST: ['EXFULL'],
  SEND: [
    'EOPNOTSUPP', 'EBADMSG', 'ENOTUNIQ', 'EDESTADDRREQ', 'E2BIG', 'EMFILE', 'EDOM', 'EMEDIUMTYPE', 'ETXTBSY', 'ENXIO',
    'ESRCH', 'EREMCHG', 'EADDRNOTAVAIL', 'EPERM', 'EBADSLT', 'EMLINK', 'ECOMM', 'ENOBUFS', 'EXFULL',
    // Only a synchronous call waits, and can end in these.
    'ETIMEDOUT', 'ECANCELED', 'EPIPE', 'EREMOTEIO', 'EINTR',
  ],
  RECV: ['EOPNOTSUPP', 'EAGAIN'],
  NAME_ACQUIRE: ['EOPNOTSUPP', 'EPERM', 'E2BIG', 'EEXIST'],
  NAME_RELEASE: ['EOPNOTSUPP', 'ESRCH', 'EADDRINUSE'],
  MATCH_ADD: ['EOPNOTSUPP', 'EDOM', 'EMFILE'],
  MATCH_REMOVE: ['EOPNOTSUPP', 'EBADSLT'],
};

const CONNECTION_COMMANDS = new Set<CmdName>([
  'UPDATE', 'BYEBYE', 'FREE', 'CONN_INFO', 'BUS_CREATOR_INFO', 'LIST', 'SEND', 'RECV', 'NAME_ACQUIRE', 'NAME_RELEASE',
  'MATCH_ADD', 'MATCH_REMOVE',
]);

const byNumber = new Map<number, CmdName>((Object.entries(Cmd) as [CmdName, number][]).map(([k, v]) => [v, k]));

export function commandName(cmd: number): CmdName | undefined {
  return byNumber.get(cmd >>> 0);
}

/** Whether the command does its work on a handle of this role (rather than being refused). */
function runsOn(role: HandleRole, cmd: CmdName): boolean {
  switch (role) {
    case 'control':
      return cmd === 'BUS_MAKE';
    case 'endpoint':
      return cmd === 'HELLO' || cmd === 'ENDPOINT_MAKE';
    case 'ep-owner':
      return cmd === 'ENDPOINT_UPDATE';
    case 'connected':
      return CONNECTION_COMMANDS.has(cmd);
    case 'bus-owner':
      return false;
  }
}

const SETUP_COMMANDS = new Set<CmdName>(['BUS_MAKE', 'ENDPOINT_MAKE', 'HELLO']);

/**
 * The kernel pins the handle's node before it looks at the command: a setup ioctl on a fresh
 * endpoint handle, and a non-setup ioctl on an endpoint-owner or connected handle, fail with
 * ESHUTDOWN rather than EBADFD once that node is gone.
 */
function mayFindNodeGone(role: HandleRole, cmd: CmdName): boolean {
  if (role === 'endpoint') return SETUP_COMMANDS.has(cmd);
  return (role === 'ep-owner' || role === 'connected') && !SETUP_COMMANDS.has(cmd);
}

const cache = new Map<string, ReadonlySet<number>>();

/** The errnos `cmd` may fail with on a handle of `role`. */
export function allowedErrnos(role: HandleRole, cmd: number): ReadonlySet<number> {
  const name = commandName(cmd);
  const key = `${role}/${name ?? 'unknown'}`;
  let set = cache.get(key);
  if (!set) {
    let names: ErrnoName[];
    if (!name) names = ['ENOTTY'];
    else if (!runsOn(role, name)) names = mayFindNodeGone(role, name) ? ['EBADFD', 'ESHUTDOWN'] : ['EBADFD'];
    else names = [...PARSE, ...SPECIFIC[name]];
    set = new Set(names.map((n) => Errno[n]));
    cache.set(key, set);
  }
  return set;
}
