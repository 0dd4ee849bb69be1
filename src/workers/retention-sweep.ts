import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { Counter, Gauge, type Registry } from "prom-client";
import type { Clock } from "../domain/clock.js";
import type { LeaseStore, RetentionStore } from "../domain/ports.js";
import { purge, retentionCutoff, type PurgeReport } from "../domain/retention.js";

export interface RetentionSweepOptions {
  store: RetentionStore;
  leases: LeaseStore;
  clock: Clock;
  retentionDays: number;
  /** How often an instance tries to sweep; 0 turns the sweep off. */
  intervalMs: number;
  registry: Registry;
  /** Told about a sweep that failed (the next interval tries again). */
  onError: (err: unknown) => void;
}

export interface RetentionSweep {
  start(): void;
  /** Stops scheduling, waits for a sweep in progress to stop at its next batch, and gives the lease up. */
  stop(): Promise<void>;
  /** One sweep now, if this instance holds (or can take) the lease; undefined when another holds it. */
  sweepOnce(): Promise<PurgeReport | undefined>;
}

const leaseName = "retention-sweep";

/**
 * Deletes what retention lets go (domain/retention.ts), on one instance at a time: each run takes a
 * lease row first and renews it between batches, so a second instance skips its run and one that
 * died hands over once the lease runs out.
 */
export function createRetentionSweep(opts: RetentionSweepOptions): RetentionSweep {
  const { store, leases, clock, retentionDays, intervalMs, registry } = opts;
  const holder = `${hostname()}:${process.pid}:${randomBytes(4).toString("hex")}`;
  // Long enough to cover a run between renewals, short enough for another instance to take over soon.
  const leaseMs = Math.max(2 * intervalMs, 60_000);
  const purged = new Counter({
    name: "sessions_retention_purged_total",
    help: "Rows deleted by the retention sweep, by kind (session, refresh_token).",
    labelNames: ["kind"] as const,
    registers: [registry],
  });
  const lastSweep = new Gauge({
    name: "sessions_retention_last_sweep_timestamp_seconds",
    help: "When this instance last completed a retention sweep (Unix seconds).",
    registers: [registry],
  });
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> | undefined;
  let isStopping = false;
  let hasHeld = false;

  const holdLease = async () => {
    const now = clock.now();
    return !isStopping && (await leases.tryAcquire(leaseName, holder, now, new Date(now.getTime() + leaseMs)));
  };

  async function sweepOnce(): Promise<PurgeReport | undefined> {
    if (!(await holdLease())) return undefined;
    hasHeld = true;
    const report = await purge(store, retentionCutoff(clock.now(), retentionDays), { beforeBatch: holdLease });
    purged.inc({ kind: "session" }, report.total.sessions);
    purged.inc({ kind: "refresh_token" }, report.total.refreshTokens);
    lastSweep.set(Date.now() / 1000);
    return report;
  }

  return {
    start() {
      if (intervalMs <= 0 || timer !== undefined) return;
      timer = setInterval(() => {
        if (running !== undefined) return;
        running = sweepOnce()
          .catch(opts.onError)
          .finally(() => (running = undefined));
      }, intervalMs);
      timer.unref();
    },
    async stop() {
      isStopping = true;
      clearInterval(timer);
      await running;
      // Hand over at once: another instance takes the next sweep without waiting the lease out.
      if (hasHeld) await leases.release(leaseName, holder, clock.now()).catch(opts.onError);
    },
    sweepOnce,
  };
}
