import { setTimeout as sleep } from "node:timers/promises";
import { Counter, type Registry } from "prom-client";
import type { Clock } from "../domain/clock.js";
import type { EventStore, LeaseStore } from "../domain/ports.js";
import { createLease } from "./lease.js";

export interface EventSequencerOptions {
  store: EventStore;
  leases: LeaseStore;
  clock: Clock;
  registry: Registry;
  /** How long to wait before looking again when there was nothing to number. */
  idleIntervalMs: number;
  onError: (err: unknown) => void;
}

export interface EventSequencer {
  start(): void;
  /** Stops the loop and gives the lease up, so another instance takes over at once. */
  stop(): Promise<void>;
  /** Numbers what is committed now, if this instance holds (or can take) the lease; the count, or undefined. */
  sequenceOnce(): Promise<number | undefined>;
}

const leaseName = "event-sequencer";
/** Another instance takes over this long after the holder stopped renewing (a crash). */
const leaseMs = 5_000;
/** Events numbered per statement. */
const batchSize = 1_000;

/**
 * Gives committed events their place in delivery order (seq), on one instance at a time: events
 * become visible to readers only once numbered, and only committed events are numbered, so a
 * transaction that commits late is delivered late, never skipped. Runs continuously while this
 * instance holds the lease: at once again after a full batch, after `idleIntervalMs` otherwise.
 */
export function createEventSequencer(opts: EventSequencerOptions): EventSequencer {
  const { store, leases, clock, idleIntervalMs } = opts;
  // Each event is numbered once, by whichever instance holds the lease: summed over instances,
  // sessions created, and ended by how (type session.revoked / session.ended, and reason).
  const sequenced = new Counter({
    name: "sessions_events_total",
    help: "Session events numbered for delivery by this instance, by type and reason: sessions created, revoked (by reason) and ended by time (by reason), signing keys.",
    labelNames: ["type", "reason"] as const,
    registers: [opts.registry],
  });
  let isStopping = false;
  const stopping = new AbortController();
  let loop: Promise<void> | undefined;
  const lease = createLease(leases, leaseName, clock, leaseMs, opts.onError);

  async function sequenceOnce(): Promise<number | undefined> {
    if (!(await lease.hold())) return undefined;
    const kinds = await store.sequence(batchSize, clock.now());
    for (const { type, reason } of kinds) sequenced.inc({ type, reason: reason ?? "" });
    return kinds.length;
  }

  return {
    start() {
      if (loop !== undefined) return;
      loop = (async () => {
        while (!isStopping) {
          let n: number | undefined;
          try {
            n = await sequenceOnce();
          } catch (err) {
            opts.onError(err);
          }
          // Not the holder: look again once the holder's lease could have run out.
          if (n === batchSize) continue;
          await sleep(n === undefined ? leaseMs / 5 : idleIntervalMs, undefined, { signal: stopping.signal }).catch(() => undefined);
        }
      })();
    },
    async stop() {
      isStopping = true;
      stopping.abort();
      await loop;
      await lease.release();
    },
    sequenceOnce,
  };
}
