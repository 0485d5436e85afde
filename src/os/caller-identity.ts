/**
 * Who a calling process is, from /proc: its process id, current credentials and whether it
 * holds kdbus's privilege. The transports ask this of every new caller (a CUSE opener, a
 * legacy D-Bus client).
 */
import { Attach } from '../abi/constants';
import { fail } from '../abi/errno';
import type { Credentials } from '../bus/caller';
import { inDaemonUserNamespace } from './namespaces';
import { readTask } from './proc';

export interface CallerIdentity {
  tgid: number;
  creds: Credentials;
  privileged: boolean;
}

const CAP_IPC_OWNER = 15n;

/**
 * Who is calling: CUSE tells the thread; /proc tells its process and current credentials.
 * kdbus's privilege is CAP_IPC_OWNER in the domain's user namespace (the daemon's): a
 * process that is root only in a user namespace of its own shows the bit but is not
 * privileged here.
 */
export function callerIdentity(tid: number): CallerIdentity {
  const st = readTask(tid, tid, Attach.CREDS).status;
  if (!st) throw fail('ESRCH', `calling thread ${tid} is gone`);
  const capable = ((st.caps.effective >> CAP_IPC_OWNER) & 1n) === 1n;
  return { tgid: st.tgid, creds: st.creds, privileged: capable && inDaemonUserNamespace(st.tgid) };
}
