import type { ResultSetHeader, RowDataPacket } from "mysql2/promise";
import type { EndReason } from "../domain/model.js";
import type { SweepStore } from "../domain/ports.js";
import { inTransaction, query, text, type Pool } from "./db.js";

/**
 * Deletes in small batches: candidates are found by index with a plain (non-locking) read, then
 * deleted by primary key with the condition checked again, in a READ COMMITTED transaction, so only
 * the rows deleted are locked (no gap locks that would hold up creates and refreshes next to them)
 * and only for one short transaction.
 */
export function createSweepStore(pool: Pool): SweepStore {
  const readCommitted = { isolation: "READ COMMITTED" } as const;

  async function endedSessionIds(tenantId: string, cutoff: Date, limit: number): Promise<string[]> {
    // Every state: an open session whose ends_at passed long ago has ended too, recorded or not.
    const rows = await query<RowDataPacket[]>(
      pool,
      "SELECT id FROM sessions WHERE tenant_id = ? AND state IN (0, 1, 2) AND ends_at < ? LIMIT ?",
      [tenantId, cutoff, limit],
    );
    return rows.map((r) => text(r.id as Buffer));
  }

  return {
    async sessionsDueToEnd(tenantId, now, limit) {
      const rows = await query<RowDataPacket[]>(
        pool,
        "SELECT id, expires_at, idle_expires_at FROM sessions WHERE tenant_id = ? AND state = 0 AND ends_at <= ? LIMIT ?",
        [tenantId, now, limit],
      );
      return rows.map((r) => ({ id: text(r.id as Buffer), expiresAt: r.expires_at as Date, idleExpiresAt: r.idle_expires_at as Date | null, recordedEnd: null }));
    },

    async recordEnds(tenantId, now, ends) {
      if (ends.length === 0) return 0;
      const byReason = new Map<EndReason, string[]>();
      for (const end of ends) byReason.set(end.reason, [...(byReason.get(end.reason) ?? []), end.id]);
      return inTransaction(
        pool,
        async (conn) => {
          let recorded = 0;
          for (const [reason, ids] of byReason) {
            // ends_at already holds the scheduled end (now the recorded one); a revoke since the
            // read set the state, which keeps its row out.
            const [updated] = await conn.query<ResultSetHeader>(
              "UPDATE sessions SET state = 1, end_reason = ? WHERE tenant_id = ? AND id IN (?) AND state = 0 AND ends_at <= ?",
              [reason, tenantId, ids, now],
            );
            recorded += updated.affectedRows;
          }
          return recorded;
        },
        readCommitted,
      );
    },

    async nextTenantWithSessions(after) {
      const rows = await query<RowDataPacket[]>(
        pool,
        after === null
          ? "SELECT tenant_id FROM sessions ORDER BY tenant_id LIMIT 1"
          : "SELECT tenant_id FROM sessions WHERE tenant_id > ? ORDER BY tenant_id LIMIT 1",
        after === null ? [] : [after],
      );
      return rows[0] ? text(rows[0].tenant_id as Buffer) : null;
    },

    async purgeEndedSessions(tenantId, cutoff, limit) {
      const ids = await endedSessionIds(tenantId, cutoff, limit);
      if (ids.length === 0) return { sessions: 0, refreshTokens: 0 };
      return inTransaction(
        pool,
        async (conn) => {
          const [tokens] = await conn.query<RowDataPacket[]>(
            "SELECT token_hash FROM refresh_tokens WHERE tenant_id = ? AND session_id IN (?)",
            [tenantId, ids],
          );
          let refreshTokens = 0;
          if (tokens.length > 0) {
            const [deleted] = await conn.query<ResultSetHeader>("DELETE FROM refresh_tokens WHERE tenant_id = ? AND token_hash IN (?)", [
              tenantId,
              tokens.map((t) => t.token_hash as Buffer),
            ]);
            refreshTokens = deleted.affectedRows;
          }
          const [deleted] = await conn.query<ResultSetHeader>("DELETE FROM sessions WHERE tenant_id = ? AND id IN (?) AND ends_at < ?", [
            tenantId,
            ids,
            cutoff,
          ]);
          return { sessions: deleted.affectedRows, refreshTokens };
        },
        readCommitted,
      );
    },

    async purgeRotatedTokens(tenantId, cutoff, limit) {
      const rows = await query<RowDataPacket[]>(
        pool,
        "SELECT token_hash FROM refresh_tokens WHERE tenant_id = ? AND rotated_at < ? LIMIT ?",
        [tenantId, cutoff, limit],
      );
      if (rows.length === 0) return 0;
      return inTransaction(
        pool,
        async (conn) => {
          const [deleted] = await conn.query<ResultSetHeader>(
            "DELETE FROM refresh_tokens WHERE tenant_id = ? AND token_hash IN (?) AND rotated_at < ?",
            [tenantId, rows.map((r) => r.token_hash as Buffer), cutoff],
          );
          return deleted.affectedRows;
        },
        readCommitted,
      );
    },

    async countPurgeable(tenantId, cutoff) {
      const rows = await query<RowDataPacket[]>(
        pool,
        `SELECT (SELECT COUNT(*) FROM sessions WHERE tenant_id = ? AND state IN (0, 1, 2) AND ends_at < ?) AS sessions,
                (SELECT COUNT(*) FROM refresh_tokens t JOIN sessions s ON s.tenant_id = t.tenant_id AND s.id = t.session_id
                  WHERE s.tenant_id = ? AND s.state IN (0, 1, 2) AND s.ends_at < ? AND t.tenant_id = ?) AS session_tokens,
                (SELECT COUNT(*) FROM refresh_tokens t JOIN sessions s ON s.tenant_id = t.tenant_id AND s.id = t.session_id
                  WHERE t.tenant_id = ? AND t.rotated_at < ? AND s.tenant_id = ? AND s.ends_at >= ?) AS rotated_tokens`,
        [tenantId, cutoff, tenantId, cutoff, tenantId, tenantId, cutoff, tenantId, cutoff],
      );
      const r = rows[0] as { sessions: number; session_tokens: number; rotated_tokens: number };
      return { sessions: Number(r.sessions), refreshTokens: Number(r.session_tokens) + Number(r.rotated_tokens) };
    },
  };
}
