import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { Counter, Gauge, type Registry } from "prom-client";
import type { Clock } from "../domain/clock.js";
import type { EventStore, LeaseStore, SweepStore } from "../domain/ports.js";
import { purge, purgeBatchSize, recordTimeEnds, retentionCutoff, type PurgeReport } from "../domain/sweep.js";

export interface SessionSweepOptions {
  store: SweepStore;
  leases: LeaseStore;
  events: EventStore;
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
  const { store, leases, events, clock, retentionDays, eventRetentionDays, intervalMs, registry } = opts;
  const holder = `${hostname()}:${process.pid}:${randomBytes(4).toString("hex")}`;
  // Long enough to cover a run between renewals, short enough for another instance to take over soon.
  const leaseMs = Math.max(2 * intervalMs, 60_000);
  const endsRecorded = new Counter({
    name: "sessions_ended_recorded_total",
    help: "Sessions whose end by time (expiry or idle timeout) the sweep recorded.",
    registers: [registry],
  });
  const purged = new Counter({
    name: "sessions_retention_purged_total",
    help: "Rows deleted by the session sweep's retention, by kind (session, refresh_token, event).",
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
  let isStopping = false;
  let hasHeld = false;

  const holdLease = async () => {
    const now = clock.now();
    return !isStopping && (await leases.tryAcquire(leaseName, holder, now, new Date(now.getTime() + leaseMs)));
  };

  async function sweepOnce(): Promise<SweepReport | undefined> {
    if (!(await holdLease())) return undefined;
    hasHeld = true;
    const ends = await recordTimeEnds(store, clock.now(), holdLease);
    endsRecorded.inc(ends);
    const report = await purge(store, retentionCutoff(clock.now(), retentionDays), { beforeBatch: holdLease });
    purged.inc({ kind: "session" }, report.total.sessions);
    purged.inc({ kind: "refresh_token" }, report.total.refreshTokens);
    // Events, oldest first, in small batches like everything else here.
    let eventsPurged = 0;
    const eventCutoff = retentionCutoff(clock.now(), eventRetentionDays);
    for (let n = purgeBatchSize; n === purgeBatchSize && (await holdLease()); eventsPurged += n) n = await events.purgeBefore(eventCutoff, purgeBatchSize);
    purged.inc({ kind: "event" }, eventsPurged);
    lastSweep.set(Date.now() / 1000);
    return { endsRecorded: ends, purged: report, eventsPurged };
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
      isStopping = true;
      clearTimeout(first);
      clearInterval(timer);
      await running;
      // Hand over at once: another instance takes the next sweep without waiting the lease out.
      if (hasHeld) await leases.release(leaseName, holder, clock.now()).catch(opts.onError);
    },
    sweepOnce,
  };
}
