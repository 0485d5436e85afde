/**
 * A handle is one open file of a kdbus node, whichever transport carries it. It starts
 * with no role; exactly one setup ioctl gives it one for good (bus owner, endpoint owner,
 * or connection), and the role decides which ioctls are valid. Release (the last close)
 * tears down what the role owns.
 *
 * This is the single entry point of the bus for transports: CUSE and the socket transport
 * both call ioctl(), poll() and release() here and share every line of command code.
 */
import { Cmd } from '../abi/constants';
import { fail } from '../abi/errno';
import type { Bus } from './bus';
import type { CallContext, Opener } from './caller';
import type { Connection } from './connection';
import type { Domain } from './domain';
import type { Endpoint } from './endpoint';
import { cmdBusMake, cmdEndpointMake, cmdEndpointUpdate } from './cmd-make';
import { cmdHello } from './hello';
import { cmdSend } from './send';
import { cmdRecv } from './recv';
import { cmdByebye, cmdFree, cmdMatchAdd, cmdMatchRemove, cmdUpdate } from './cmd-conn';
import { cmdList, cmdNameAcquire, cmdNameRelease } from './cmd-names';
import { cmdBusCreatorInfo, cmdConnInfo } from './cmd-info';

export type KdbusNode = { kind: 'control'; domain: Domain } | { kind: 'endpoint'; ep: Endpoint };

export const Poll = { IN: 0x1, OUT: 0x4, ERR: 0x8, HUP: 0x10, RDNORM: 0x40, WRNORM: 0x100 } as const;

type Role =
  | { kind: 'none' }
  | { kind: 'bus-owner'; bus: Bus }
  | { kind: 'ep-owner'; ep: Endpoint }
  | { kind: 'connected'; conn: Connection };

/** Opening a node that is being torn down fails as it did on kdbusfs. */
export function openHandle(node: KdbusNode, opener: Opener): Handle {
  if (node.kind === 'endpoint' && (!node.ep.active || !node.ep.bus.active)) {
    throw fail('ESHUTDOWN', `${node.ep.path} is going away`);
  }
  return new Handle(node, opener);
}

export class Handle {
  private role: Role = { kind: 'none' };
  /** A setup ioctl still running (BUS_MAKE and ENDPOINT_MAKE wait for their node). */
  private setup: Promise<unknown> | undefined;
  private released = false;

  constructor(
    readonly node: KdbusNode,
    readonly opener: Opener,
  ) {}

  get connection(): Connection | undefined {
    return this.role.kind === 'connected' ? this.role.conn : undefined;
  }

  get roleName(): Role['kind'] {
    return this.role.kind;
  }

  ioctl(cmd: number, arg: bigint, ctx: CallContext): void | Promise<void> {
    if (this.released) throw fail('EBADFD', 'the handle was released');
    switch (cmd) {
      case Cmd.BUS_MAKE:
      case Cmd.ENDPOINT_MAKE:
      case Cmd.HELLO:
        if (this.setup) return this.setup.then(() => undefined, () => undefined).then(() => this.ioctl(cmd, arg, ctx));
        return this.runSetup(cmd, arg, ctx);
      case Cmd.ENDPOINT_UPDATE:
      case Cmd.BYEBYE:
      case Cmd.NAME_ACQUIRE:
      case Cmd.NAME_RELEASE:
      case Cmd.LIST:
      case Cmd.CONN_INFO:
      case Cmd.BUS_CREATOR_INFO:
      case Cmd.UPDATE:
      case Cmd.MATCH_ADD:
      case Cmd.MATCH_REMOVE:
      case Cmd.SEND:
      case Cmd.RECV:
      case Cmd.FREE:
        return this.dispatch(cmd, arg, ctx);
      default:
        throw fail('ENOTTY', `unknown kdbus ioctl 0x${(cmd >>> 0).toString(16)}`);
    }
  }

  private runSetup(cmd: number, arg: bigint, ctx: CallContext): void | Promise<void> {
    if (this.role.kind !== 'none') throw fail('EBADFD', `the handle already is a ${this.role.kind}`);
    const node = this.node;
    if (node.kind === 'control') {
      if (cmd !== Cmd.BUS_MAKE) throw fail('EBADFD', 'only BUS_MAKE is valid on the control node');
      const p = cmdBusMake(node.domain, ctx, arg).then((bus) => {
        if (bus) this.role = { kind: 'bus-owner', bus };
      });
      return this.track(p);
    }
    const ep = node.ep;
    if (!ep.active) throw fail('ESHUTDOWN', `endpoint ${ep.path} is gone`);
    if (cmd === Cmd.ENDPOINT_MAKE) {
      const p = cmdEndpointMake(ep, this.opener, ctx, arg).then((custom) => {
        if (custom) this.role = { kind: 'ep-owner', ep: custom };
      });
      return this.track(p);
    }
    if (cmd === Cmd.HELLO) {
      const conn = cmdHello(ep, this.opener, ctx, arg);
      if (conn) this.role = { kind: 'connected', conn };
      return;
    }
    throw fail('EBADFD', 'BUS_MAKE is only valid on the control node');
  }

  private track(p: Promise<void>): Promise<void> {
    this.setup = p;
    return p.finally(() => {
      if (this.setup === p) this.setup = undefined;
      if (this.released) this.teardown();
    });
  }

  /**
   * Non-setup ioctls. As in kdbus, the object the handle owns must still be alive
   * (ESHUTDOWN) before the command is even looked at (EBADFD if it is not one of its own).
   */
  private dispatch(cmd: number, arg: bigint, ctx: CallContext): void | Promise<void> {
    const role = this.role;
    if (role.kind === 'ep-owner') {
      if (!role.ep.active) throw fail('ESHUTDOWN', `endpoint ${role.ep.path} is gone`);
      if (cmd !== Cmd.ENDPOINT_UPDATE) throw fail('EBADFD', 'an endpoint owner handle only takes ENDPOINT_UPDATE');
      return cmdEndpointUpdate(role.ep, ctx, arg);
    }
    if (role.kind !== 'connected') throw fail('EBADFD', `this ioctl is not valid on a ${role.kind === 'none' ? 'handle before its setup ioctl (HELLO first)' : 'bus owner handle'}`);
    const conn = role.conn;
    if (!conn.active) throw fail('ESHUTDOWN', `connection ${conn.id} is shut down`);
    switch (cmd) {
      case Cmd.ENDPOINT_UPDATE:
        throw fail('EBADFD', 'ENDPOINT_UPDATE needs the handle that made the endpoint');
      case Cmd.SEND:
        return cmdSend(conn, ctx, arg);
      case Cmd.RECV:
        return cmdRecv(conn, ctx, arg);
      case Cmd.FREE:
        return cmdFree(conn, ctx, arg);
      case Cmd.BYEBYE:
        return cmdByebye(conn, ctx, arg);
      case Cmd.NAME_ACQUIRE:
        return cmdNameAcquire(conn, ctx, arg);
      case Cmd.NAME_RELEASE:
        return cmdNameRelease(conn, ctx, arg);
      case Cmd.LIST:
        return cmdList(conn, ctx, arg);
      case Cmd.CONN_INFO:
        return cmdConnInfo(conn, ctx, arg);
      case Cmd.BUS_CREATOR_INFO:
        return cmdBusCreatorInfo(conn, ctx, arg);
      case Cmd.UPDATE:
        return cmdUpdate(conn, ctx, arg);
      case Cmd.MATCH_ADD:
        return cmdMatchAdd(conn, ctx, arg);
      default:
        return cmdMatchRemove(conn, ctx, arg);
    }
  }

  /** poll(2) mask, as kdbus_handle_poll computed it. */
  poll(): number {
    const conn = this.connection;
    if (!conn || !conn.active) return Poll.ERR | Poll.HUP;
    let mask = Poll.OUT | Poll.WRNORM;
    if (conn.readable) mask |= Poll.IN | Poll.RDNORM;
    return mask;
  }

  /** Registers for wake-ups of a connected handle (poll notification, blocked readers). */
  onWake(listener: () => void): () => void {
    const conn = this.connection;
    return conn ? conn.onWake(listener) : () => undefined;
  }

  /** The last close of the file. Synchronous: notifications are queued before it returns. */
  release(): void {
    if (this.released) return;
    this.released = true;
    if (!this.setup) this.teardown();
  }

  private teardown(): void {
    const role = this.role;
    this.role = { kind: 'none' };
    switch (role.kind) {
      case 'bus-owner':
        role.bus.destroy();
        break;
      case 'ep-owner':
        role.ep.bus.removeEndpoint(role.ep);
        break;
      case 'connected':
        role.conn.disconnect(false);
        role.conn.pool.close();
        break;
    }
  }
}
