/**
 * Fan-out of one staged message: monitors first (so they never see a reaction before the
 * message itself), then every ordinary connection whose matches take it and whose policy
 * lets it hear from the sender. Receivers' failures are theirs: they count as lost.
 */
import type { Bus } from './bus';
import type { Connection } from './connection';
import type { Staging } from './message';

/** Gives every monitor of the bus a copy; used for all traffic, delivered or not. */
export function eavesdrop(bus: Bus, staging: Staging): void {
  for (const m of bus.monitors) m.deliverOrLose(staging);
}

export function broadcast(bus: Bus, staging: Staging): void {
  eavesdrop(bus, staging);
  const src = staging.src;
  if (src) {
    const view = userMessageView(bus, staging);
    for (const dst of bus.matches.candidates(view)) {
      if (!dst.isOrdinary || !dst.active) continue;
      if (!dst.canTalkTo(dst.cred, src)) continue;
      dst.deliverOrLose(staging);
    }
  } else {
    for (const dst of bus.matches.notificationTargets(staging.notificationView())) {
      if (!dst.isOrdinary || !dst.active) continue;
      if (!dst.canSeeNotification(staging)) continue;
      dst.deliverOrLose(staging);
    }
  }
}

/** Whether a unicast signal's destination wants it: its matches must take it. */
export function matchesUnicastSignal(bus: Bus, dst: Connection, staging: Staging): boolean {
  return bus.matches.db(dst)?.matchMessage(userMessageView(bus, staging)) ?? false;
}

function userMessageView(bus: Bus, staging: Staging) {
  const src = staging.src!;
  return {
    srcId: src.id,
    dstId: staging.dstId,
    bloom: staging.bloom,
    senderHoldsName: (name: string) => bus.names.primaryOwner(name) === src,
  };
}
