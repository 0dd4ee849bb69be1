import { scheduledEndOf } from "./model.js";
import type { PurgeCounts, SweepStore } from "./ports.js";

/**
 * Retention: a session is deleted, with every refresh token it had, once it has been over for
 * `retentionDays`; a refresh token rotated away that long ago is deleted too (presenting it
 * afterwards is then an unknown token, refused without revoking the session). Until then ended
 * sessions stay listable (status expired or revoked) and a rotated token's reuse is detected.
 */
export function retentionCutoff(now: Date, retentionDays: number): Date {
  return new Date(now.getTime() - retentionDays * 24 * 60 * 60 * 1000);
}

/** Rows one sweep statement touches at most: small enough that no lock is held for long. */
export const purgeBatchSize = 500;

/**
 * Records the end of every session whose scheduled end (absolute expiry or idle deadline) has come
 * but that has no recorded end yet, tenant by tenant, in batches. A session's status never waits
 * for this (it is derived at read time); recording the end keeps the sessions still open a small
 * set that lists read by index, and is when the service learns of the end. Returns how many.
 */
export async function recordTimeEnds(store: SweepStore, now: Date, beforeBatch: () => Promise<boolean> = async () => true): Promise<number> {
  let recorded = 0;
  for (let tenantId = await store.nextTenantWithSessions(null); tenantId !== null; tenantId = await store.nextTenantWithSessions(tenantId)) {
    for (let isDone = false; !isDone; ) {
      if (!(await beforeBatch())) return recorded;
      const due = await store.sessionsDueToEnd(tenantId, now, purgeBatchSize);
      recorded += await store.recordEnds(tenantId, now, due.map((s) => ({ id: s.id, reason: scheduledEndOf(s).reason })));
      isDone = due.length < purgeBatchSize;
    }
  }
  return recorded;
}

export interface PurgeReport {
  cutoff: Date;
  tenants: ({ tenantId: string } & PurgeCounts)[];
  total: PurgeCounts;
}

/**
 * Walks every tenant that has sessions and deletes (or, with `dryRun`, counts) what retention lets
 * go, batch by batch. `beforeBatch` runs before each batch and may stop the walk by returning false
 * (a lease lost, a shutdown).
 */
export async function purge(
  store: SweepStore,
  cutoff: Date,
  { dryRun = false, beforeBatch = async () => true }: { dryRun?: boolean; beforeBatch?: () => Promise<boolean> } = {},
): Promise<PurgeReport> {
  const report: PurgeReport = { cutoff, tenants: [], total: { sessions: 0, refreshTokens: 0 } };
  for (let tenantId = await store.nextTenantWithSessions(null); tenantId !== null; tenantId = await store.nextTenantWithSessions(tenantId)) {
    const counts = dryRun ? await store.countPurgeable(tenantId, cutoff) : await purgeTenant(store, tenantId, cutoff, beforeBatch);
    if (counts === undefined) break;
    if (counts.sessions + counts.refreshTokens > 0) report.tenants.push({ tenantId, ...counts });
    report.total.sessions += counts.sessions;
    report.total.refreshTokens += counts.refreshTokens;
  }
  return report;
}

/** Purges one tenant; undefined when `beforeBatch` stopped it part-way (what was deleted stays deleted). */
async function purgeTenant(store: SweepStore, tenantId: string, cutoff: Date, beforeBatch: () => Promise<boolean>) {
  const counts: PurgeCounts = { sessions: 0, refreshTokens: 0 };
  for (let isDone = false; !isDone; ) {
    if (!(await beforeBatch())) return undefined;
    const batch = await store.purgeEndedSessions(tenantId, cutoff, purgeBatchSize);
    counts.sessions += batch.sessions;
    counts.refreshTokens += batch.refreshTokens;
    isDone = batch.sessions < purgeBatchSize;
  }
  for (let isDone = false; !isDone; ) {
    if (!(await beforeBatch())) return undefined;
    const deleted = await store.purgeRotatedTokens(tenantId, cutoff, purgeBatchSize);
    counts.refreshTokens += deleted;
    isDone = deleted < purgeBatchSize;
  }
  return counts;
}
