import { setTimeout as sleep } from "node:timers/promises";
import type { Pool, PoolConnection } from "mysql2/promise";

/**
 * Locks a session's row on a side connection, starts `start()`, waits until `writers` statements
 * matching `blockedStatement` (a LIKE pattern) are blocked on it in the database, runs `during` in the
 * side transaction, commits it, and returns what `start()` started once it has all settled.
 */
export async function whileRowLocked<T>(
  pool: Pool,
  row: { tenantId: string; sessionId: string },
  { writers, blockedStatement, start, during = async () => undefined }: {
    writers: number;
    blockedStatement: string;
    start: () => Promise<T>[];
    during?: (side: PoolConnection) => Promise<void>;
  },
): Promise<T[]> {
  const side = await pool.getConnection();
  let started: Promise<T>[] = [];
  try {
    await side.beginTransaction();
    await side.query("SELECT id FROM sessions WHERE tenant_id = ? AND id = ? FOR UPDATE", [row.tenantId, row.sessionId]);
    started = start();
    for (;;) {
      const [rows] = (await side.query(
        "SELECT COUNT(*) AS n FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID() AND info LIKE ?",
        [blockedStatement],
      )) as unknown as [{ n: number }[]];
      if (Number(rows[0]!.n) >= writers) break;
      await sleep(10);
    }
    await during(side);
    await side.commit();
  } finally {
    await side.rollback().catch(() => undefined);
    side.release();
  }
  return Promise.all(started);
}

/**
 * The refresh's guarded write: rotation of the presented (numbered) token, alone or within a batch
 * of statements (src/store/db.ts).
 */
export const rotationStatement = "%UPDATE sessions SET last_active_at = %, refresh_generation = %";
