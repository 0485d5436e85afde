/**
 * A bus: its endpoints, connections, name registry, policy, matches and the notifications
 * waiting to be delivered. Created by BUS_MAKE on a control handle, destroyed when that
 * handle is released; destruction takes every endpoint and connection with it.
 */
import { randomBytes } from 'node:crypto';
import type { BusBridge } from './bridge';
import type { Connection } from './connection';
import type { Domain } from './domain';
import { Endpoint } from './endpoint';
import { MatchIndex } from './match-index';
import type { ProcMetadata } from './metadata';
import { NameRegistry } from './names';
import { PolicyDb } from './policy';
import type { KdbusUser } from './user';
import type { Staging } from './message';
import { logger } from '../log/logger';

export interface BloomParameters {
  size: number;
  nHash: bigint;
}

export class Bus {
  readonly id: bigint;
  /** RFC 4122 version 4 UUID, returned to every HELLO as id128. */
  readonly id128: Buffer;
  readonly endpoints = new Map<string, Endpoint>();
  readonly defaultEndpoint: Endpoint;
  readonly connections = new Map<bigint, Connection>();
  readonly monitors = new Set<Connection>();
  readonly names = new NameRegistry<Connection>();
  readonly policy = new PolicyDb();
  readonly matches = new MatchIndex<Connection>();
  /** Kernel notifications queued by a command, delivered before the command returns. */
  readonly pendingNotifications: Staging[] = [];
  private lastSeqnum = 0n;
  active = true;
  /** Set while the bus is joined to an upstream D-Bus bus. */
  bridge: BusBridge | undefined;

  constructor(
    readonly domain: Domain,
    readonly name: string,
    /** MAKE_ACCESS_* flags: returned to HELLO as bus_flags. */
    readonly flags: bigint,
    readonly bloom: BloomParameters,
    /** Creator metadata connections may see through BUS_CREATOR_INFO. */
    readonly creatorAttachMask: bigint,
    readonly creatorMeta: ProcMetadata,
    readonly uid: number,
    readonly gid: number,
    readonly user: KdbusUser,
  ) {
    this.id = domain.nextId();
    this.id128 = randomBytes(16);
    this.id128[6] = (this.id128[6]! & 0x0f) | 0x40;
    this.id128[8] = (this.id128[8]! & 0x3f) | 0x80;
    this.defaultEndpoint = new Endpoint(this, 'bus', flags, uid, gid, true);
    this.endpoints.set('bus', this.defaultEndpoint);
  }

  /** Sequence number of the next message or notification, shared by all its receivers. */
  nextSeqnum(): bigint {
    return ++this.lastSeqnum;
  }

  connection(id: bigint): Connection | undefined {
    return this.connections.get(id);
  }

  async addEndpointNodes(ep: Endpoint): Promise<void> {
    for (const host of this.domain.hosts) await host.addEndpoint(ep);
  }

  removeEndpoint(ep: Endpoint): void {
    if (!ep.active) return;
    ep.active = false;
    for (const conn of [...ep.connections]) conn.disconnect(false);
    this.endpoints.delete(ep.name);
    for (const host of this.domain.hosts) {
      try {
        host.removeEndpoint(ep);
      } catch (e) {
        logger.warn(`removing node ${ep.path}: ${(e as Error).message}`);
      }
    }
  }

  /** Closing the owner's control handle: every endpoint and connection goes with the bus. */
  destroy(): void {
    if (!this.active) return;
    this.active = false;
    for (const ep of [...this.endpoints.values()].reverse()) this.removeEndpoint(ep);
    this.pendingNotifications.length = 0;
    this.domain.buses.delete(this.name);
    this.user.buses--;
    logger.info(`bus ${this.name} removed`);
  }
}
