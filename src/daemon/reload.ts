/**
 * Reloading the configuration of a running daemon (SIGHUP). What can change without
 * touching a connected client changes: the log level, and new buses are created. What
 * cannot stays as it is until the next restart, with a warning naming the key:
 * - a bus taken out of the configuration keeps running, because removing it would
 *   disconnect its clients (kdbus has no way to move them); an operator who wants it gone
 *   restarts the daemon;
 * - the transport, the kdbus root, the sockets, the legacy addresses, the upstream and the
 *   first bus (which the legacy endpoint and the upstream bridge serve) are where clients
 *   already are; moving them live would strand those clients. The control socket, its
 *   group and the activation directories are read once at start.
 */
import { listenAddresses, type Config } from '../config/config';
import { logger, setLogLevel } from '../log/logger';
import type { Daemon } from './daemon';

export interface ReloadPlan {
  /** The new log level, when it changed. */
  logLevel: string | undefined;
  /** Buses to create, in configuration order. */
  addBuses: string[];
  /** Buses no longer configured that keep running. */
  keptBuses: string[];
  /** Configuration keys whose change waits for a restart. */
  restartNeeded: string[];
}

/** Compares the running configuration with a freshly read one. */
export function planReload(current: Config, next: Config): ReloadPlan {
  const restartNeeded: string[] = [];
  const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);
  if (current.transport !== next.transport) restartNeeded.push('transport');
  if (current.kdbusRoot !== next.kdbusRoot) restartNeeded.push('kdbusRoot');
  if (current.socket !== next.socket) restartNeeded.push('socket');
  if (!same(listenAddresses(current), listenAddresses(next))) restartNeeded.push('listen');
  if (current.upstream !== next.upstream) restartNeeded.push('upstream');
  if (current.control !== next.control) restartNeeded.push('control');
  if (current.controlGroup !== next.controlGroup) restartNeeded.push('controlGroup');
  if (!same(current.serviceDirs, next.serviceDirs)) restartNeeded.push('serviceDirs');
  if (current.systemdActivation !== next.systemdActivation) restartNeeded.push('systemdActivation');
  if (current.buses[0] !== next.buses[0]) restartNeeded.push('buses[0]');
  return {
    logLevel: current.logLevel !== next.logLevel ? next.logLevel : undefined,
    addBuses: next.buses.filter((b) => !current.buses.includes(b)),
    keptBuses: current.buses.filter((b) => !next.buses.includes(b)),
    restartNeeded,
  };
}

export interface ReloadOutcome {
  /** Keys that keep their old values until a restart, and buses that could not be made. */
  pending: string[];
}

/**
 * Applies what can change live to a running daemon. `daemon.config` is updated to what is
 * actually in effect: the old values of keys that wait for a restart, and the buses that
 * exist (kept ones included).
 */
export async function applyReload(daemon: Daemon, next: Config): Promise<ReloadOutcome> {
  const current = daemon.config;
  const plan = planReload(current, next);
  const pending: string[] = [];
  if (plan.logLevel !== undefined) {
    setLogLevel(plan.logLevel);
    current.logLevel = plan.logLevel;
    logger.info(`reload: log level ${plan.logLevel}`);
  }
  for (const name of plan.addBuses) {
    try {
      await daemon.createBus(name);
      current.buses.push(name);
      logger.info(`reload: bus ${name} created`);
    } catch (e) {
      pending.push(`bus ${name}`);
      logger.error(`reload: bus ${name} could not be created: ${(e as Error).message}`);
    }
  }
  for (const name of plan.keptBuses) {
    logger.warn(`reload: bus ${name} is no longer configured but keeps running until the daemon restarts (removing it would disconnect its clients)`);
  }
  for (const key of plan.restartNeeded) {
    pending.push(key);
    logger.warn(`reload: ${key} changed; the change takes effect when the daemon restarts`);
  }
  daemon.reloadServices();
  return { pending };
}
