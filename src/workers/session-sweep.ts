import { Counter, Gauge, type Registry } from "prom-client";
import type { Clock } from "../domain/clock.js";
import type { EventStore, LeaseStore, SweepStore, WebhookStore } from "../domain/ports.js";
import { purge, purgeBatchSize, recordTimeEnds, retentionCutoff, type PurgeReport } from "../domain/sweep.js";
import { createLease } from "./lease.js";

export interface SessionSweepOptions {
  store: SweepStore;
  leases: LeaseStore;
  events: EventStore;
  /** Finished webhook deliveries go with the events (EVENT_RETENTION_DAYS). */
  webhooks: WebhookStore;
  clock: Clock;
  retentionDays: number;
  eventRetentionDays: number;
  /** How often an instance tries to sweep; 0 turns the sweep off. */
  intervalMs: number;
  registry: Registry;
  /** Told about a sweep that failed (the next interval tries again). */
  onError: (err: unknown) => void;
}

export interface SessionSweep {
  start(): void;
  /** Stops scheduling, waits for a sweep in progress to stop at its next batch, and gives the lease up. */
  stop(): Promise<void>;
  /** One sweep now, if this instance holds (or can take) the lease; undefined when another holds it. */
  sweepOnce(): Promise<SweepReport | undefined>;
}

export interface SweepReport {
  /** Sessions whose end by time this sweep recorded. */
  endsRecorded: number;
  purged: PurgeReport;
  /** Session events deleted for being older than the event retention. */
  eventsPurged: number;
  /** Finished webhook deliveries deleted with them. */
  deliveriesPurged: number;
}

const leaseName = "session-sweep";
const firstRunDelayMs = 2_000;

/**
 * The session sweep (domain/sweep.ts), on one instance at a time: it records the ends of sessions
 * whose time has come, then deletes what retention lets go. Each run takes a lease row first and
 * renews it between batches, so a second instance skips its run and one that died hands over once
 * the lease runs out. The first run comes soon after start, the next every interval.
 */
export function createSessionSweep(opts: SessionSweepOptions): SessionSweep {
  const { store, leases, events, webhooks, clock, retentionDays, eventRetentionDays, intervalMs, registry } = opts;
  // Long enough to cover a run between renewals, short enough for another instance to take over soon.
  const lease = createLease(leases, leaseName, clock, Math.max(2 * intervalMs, 60_000), opts.onError);
  const endsRecorded = new Counter({
    name: "sessions_ended_recorded_total",
    help: "Sessions whose end by time (expiry or idle timeout) the sweep recorded.",
    registers: [registry],
  });
  const purged = new Counter({
    name: "sessions_retention_purged_total",
    help: "Rows deleted by the session sweep's retention, by kind (session, refresh_token, event, webhook_delivery).",
    labelNames: ["kind"] as const,
    registers: [registry],
  });
  const lastSweep = new Gauge({
    name: "sessions_retention_last_sweep_timestamp_seconds",
    help: "When this instance last completed a session sweep (Unix seconds).",
    registers: [registry],
  });
  let first: NodeJS.Timeout | undefined;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> | undefined;
  const holdLease = () => lease.hold();

  /** Deletes batch after batch while batches come back full and the lease holds; how many in all. */
  async function inBatches(deleteBatch: (limit: number) => Promise<number>): Promise<number> {
    let total = 0;
    for (let n = purgeBatchSize; n === purgeBatchSize && (await holdLease()); total += n) n = await deleteBatch(purgeBatchSize);
    return total;
  }

  async function sweepOnce(): Promise<SweepReport | undefined> {
    if (!(await holdLease())) return undefined;
    const ends = await recordTimeEnds(store, clock.now(), holdLease);
    endsRecorded.inc(ends);
    const report = await purge(store, retentionCutoff(clock.now(), retentionDays), { beforeBatch: holdLease });
    purged.inc({ kind: "session" }, report.total.sessions);
    purged.inc({ kind: "refresh_token" }, report.total.refreshTokens);
    // Events, oldest first, then finished webhook deliveries, in small batches like everything else here.
    const eventCutoff = retentionCutoff(clock.now(), eventRetentionDays);
    const eventsPurged = await inBatches((limit) => events.purgeBefore(eventCutoff, limit));
    purged.inc({ kind: "event" }, eventsPurged);
    const deliveriesPurged = await inBatches((limit) => webhooks.purgeFinished(eventCutoff, limit));
    purged.inc({ kind: "webhook_delivery" }, deliveriesPurged);
    lastSweep.set(Date.now() / 1000);
    return { endsRecorded: ends, purged: report, eventsPurged, deliveriesPurged };
  }

  return {
    start() {
      if (intervalMs <= 0 || timer !== undefined) return;
      const run = () => {
        if (running !== undefined) return;
        running = sweepOnce()
          .catch(opts.onError)
          .finally(() => (running = undefined));
      };
      // Soon after start (so a fresh instance does not wait a whole interval), then every interval.
      first = setTimeout(run, Math.min(intervalMs, firstRunDelayMs)).unref();
      timer = setInterval(run, intervalMs).unref();
    },
    async stop() {
      clearTimeout(first);
      clearInterval(timer);
      // No new batch starts; the one in progress ends; then another instance may take the next sweep at once.
      lease.stop();
      await running;
      await lease.release();
    },
    sweepOnce,
  };
}
