/**
 * Shared helpers of the bus-*.test.ts behaviour tests: identities, policy uploads, custom
 * endpoints and notification draining, built on the in-process kdbus client. Everything
 * goes through ioctl(); nothing here reaches into the bus.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { HelloFlags, ItemType, Off, PolicyAccess, PolicyAccessType } from '../../src/abi/constants';
import { Errno, errnoName, type ErrnoName } from '../../src/abi/errno';
import type { ItemWriter } from '../../src/abi/items';
import type { Opener } from '../../src/bus/caller';
import type { Endpoint } from '../../src/bus/endpoint';
import { credsOf, expectOk, type IoctlResult, type ReceivedMessage, TestBus, TestClient } from '../helpers/kdbus-client';

/** The selftests' unprivileged identity: any uid that is neither ours nor root. */
export const UNPRIV_UID = process.getuid!() === 1000 ? 1001 : 1000;
/** A second unprivileged user, for "two different users" cases. */
export const OTHER_UID = UNPRIV_UID + 1;

export function unprivileged(uid = UNPRIV_UID, gid = uid): Partial<Opener> {
  return { creds: credsOf(uid, gid), privileged: false };
}

/** type and access are plain numbers so that tests can pass values kdbus refuses. */
export interface Access {
  type: number;
  access: number;
  id?: number | bigint;
}

export const world = (access: PolicyAccess): Access => ({ type: PolicyAccessType.WORLD, access });
export const user = (id: number, access: PolicyAccess): Access => ({ type: PolicyAccessType.USER, access, id });
export const group = (id: number, access: PolicyAccess): Access => ({ type: PolicyAccessType.GROUP, access, id });

/** NAME followed by its POLICY_ACCESS items, as kdbus_conn_update_policy() writes them. */
export function policyGroup(w: ItemWriter, name: string, access: readonly Access[]): void {
  w.string(ItemType.NAME, name);
  for (const a of access) w.itemU64(ItemType.POLICY_ACCESS, BigInt(a.type), BigInt(a.access), BigInt(a.id ?? 0));
}

export function updatePolicy(c: TestClient, name: string, access: readonly Access[]): Promise<IoctlResult> {
  return c.update((w) => policyGroup(w, name, access));
}

/** kdbus_hello_registrar(): a policy holder (or activator) for `name` with its policy. */
export async function registrar(
  tb: TestBus, name: string, access: readonly Access[], flags = HelloFlags.POLICY_HOLDER, opener?: Partial<Opener>,
): Promise<{ errno: number; client: TestClient }> {
  const client = tb.client(opener);
  const r = await client.hello({ flags, items: (w) => policyGroup(w, name, access) });
  if (r.errno === 0 && !(flags & HelloFlags.POLICY_HOLDER)) await expectOk(client.free(r.out.readBigUInt64LE(Off.hello.offset)));
  return { errno: r.errno, client };
}

/** ENDPOINT_MAKE on a fresh handle of the default endpoint; the handle becomes its owner. */
export async function makeEndpoint(tb: TestBus, name: string, flags = 0n, opener?: Partial<Opener>): Promise<{ errno: number; owner: TestClient; ep?: Endpoint }> {
  const owner = tb.client(opener);
  const r = await owner.cmd('ENDPOINT_MAKE', flags, (w) => w.string(ItemType.MAKE_NAME, name));
  return r.errno ? { errno: r.errno, owner } : { errno: 0, owner, ep: tb.bus.endpoints.get(name)! };
}

export function endpointClient(ep: Endpoint, opener?: Partial<Opener>): TestClient {
  return new TestClient({ kind: 'endpoint', ep }, opener);
}

/** Receives everything queued (freeing each slice); EAGAIN ends it. */
export async function drain(c: TestClient): Promise<ReceivedMessage[]> {
  const out: ReceivedMessage[] = [];
  for (;;) {
    const r = await c.recv();
    if (r.errno === Errno.EAGAIN) return out;
    if (r.errno) throw new Error(`RECV failed with ${errnoName(r.errno)}`);
    if (r.msg) {
      out.push(r.msg);
      await expectOk(c.free(BigInt(r.msg.offset)));
    }
  }
}

/** The kernel item type of each queued notification (user messages give 0). */
export async function drainTypes(c: TestClient): Promise<number[]> {
  return (await drain(c)).map((m) => (m.srcId === 0n ? m.items[0]!.type : 0));
}

export async function expectErrno(p: Promise<{ errno: number }> | { errno: number }, code: ErrnoName | 0): Promise<void> {
  const r = await p;
  const want = code === 0 ? 0 : Errno[code];
  assert.equal(errnoName(r.errno) + ` (${r.errno})`, errnoName(want) + ` (${want})`);
}

/** Asserts the ioctl throws the errno synchronously or asynchronously (for direct handle calls). */
export async function expectThrows(fn: () => unknown, code: ErrnoName): Promise<void> {
  let errno = 0;
  try {
    await fn();
  } catch (e) {
    errno = (e as { errno?: number }).errno ?? -1;
  }
  assert.equal(errnoName(errno), code);
}

export function itemTypes(m: { items: Array<{ type: number }> }): number[] {
  return m.items.map((i) => i.type);
}

/** A plain unicast with a payload and no reply expected. */
export function sendTo(c: TestClient, dst: bigint, cookie = 0x1234n): Promise<IoctlResult> {
  return c.send({ dst, cookie, payload: [Buffer.from('x')] });
}

/** A broadcast signal as the selftests send it (zeroed bloom of the bus's size). */
export function broadcastFrom(c: TestClient, cookie: bigint, bloomSize = 64): Promise<IoctlResult> {
  return c.send({ cookie, bloom: { data: Buffer.alloc(bloomSize) }, payload: [Buffer.from('sig')] });
}

/**
 * A process to stand for a client: `sleep` as uid 65534 — with `namespaced`, root in a user
 * namespace of its own (uid_map and gid_map "0 65534 1", made by uid 65534, so owned by it)
 * and pid 1 of a pid namespace of its own, as the metadata-ns selftest sets up.
 */
export async function standIn(namespaced: boolean): Promise<{ pid: number; parent: number; stop(): void }> {
  const args = namespaced ? ['unshare', '-r', '-p', '--fork', '--kill-child', 'sleep', '60'] : ['sleep', '60'];
  const p = spawn(args[0]!, args.slice(1), { uid: 65534, gid: 65534, stdio: 'ignore' });
  const stop = (): void => void p.kill('SIGKILL');
  for (let i = 0; i < 500; i++) {
    let pid = p.pid!;
    if (namespaced) {
      const children = fs.readFileSync(`/proc/${p.pid}/task/${p.pid}/children`, 'latin1').trim();
      pid = children === '' ? 0 : Number(children.split(' ')[0]);
    }
    if (pid > 0 && fs.readFileSync(`/proc/${pid}/comm`, 'latin1') === 'sleep\n') return { pid, parent: p.pid!, stop };
    await new Promise((res) => setTimeout(res, 10));
  }
  stop();
  throw new Error('the stand-in process did not start');
}

/** Whether this machine lets uid 65534 make user and pid namespaces (and we may switch to it). */
export function namespacesUsable(): boolean {
  if (process.getuid!() !== 0) return false;
  return spawnSync('unshare', ['-r', '-p', '--fork', 'true'], { uid: 65534, gid: 65534 }).status === 0;
}
