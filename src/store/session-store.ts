import DataLoader from "dataloader";
import type { ResultSetHeader, RowDataPacket } from "mysql2/promise";
import { withoutDeadline } from "../domain/deadline.js";
import type { DeviceType, RevokeReason, Session } from "../domain/model.js";
import type { ListQuery, RefreshDecider, RefreshResult, RevokeFilter, SessionState, SessionStore } from "../domain/ports.js";
import { inTransaction, query, type Pool } from "./db.js";

const columnNames = [
  "tenant_id", "id", "user_id", "user_agent", "ip_address", "country", "device_type", "role", "org_id",
  "mfa_verified", "created_at", "last_active_at", "expires_at", "idle_expires_at", "revoked_at",
  "revoke_reason", "revoked_by",
] as const;
const columns = columnNames.join(", ");
const sessionColumnsOf = (alias: string) => columnNames.map((c) => `${alias}.${c}`).join(", ");

interface SessionRow extends RowDataPacket {
  tenant_id: string;
  id: string;
  user_id: string;
  user_agent: string;
  ip_address: string;
  country: string;
  device_type: string;
  role: string;
  org_id: string | null;
  mfa_verified: number;
  created_at: Date;
  last_active_at: Date;
  expires_at: Date;
  idle_expires_at: Date | null;
  revoked_at: Date | null;
  revoke_reason: string | null;
  revoked_by: string | null;
}

interface RefreshRow extends SessionRow {
  live_hash: Buffer;
  t_rotated_at: Date | null;
  successor_live: number;
}

function toSession(row: SessionRow): Session {
  return {
    tenantId: row.tenant_id,
    id: row.id,
    userId: row.user_id,
    userAgent: row.user_agent,
    ipAddress: row.ip_address,
    country: row.country,
    deviceType: row.device_type as DeviceType,
    role: row.role,
    orgId: row.org_id,
    isMfaVerified: row.mfa_verified === 1,
    createdAt: row.created_at,
    lastActiveAt: row.last_active_at,
    expiresAt: row.expires_at,
    idleExpiresAt: row.idle_expires_at,
    revokedAt: row.revoked_at,
    revokeReason: row.revoke_reason as RevokeReason | null,
    revokedBy: row.revoked_by,
  };
}

/** SQL for each status (the status itself is derived, never stored), and how many `now`s it takes. */
const statusCondition = {
  active: ["revoked_at IS NULL AND expires_at > ? AND (idle_expires_at IS NULL OR idle_expires_at > ?)", 2],
  expired: ["revoked_at IS NULL AND (expires_at <= ? OR idle_expires_at <= ?)", 2],
  revoked: ["revoked_at IS NOT NULL", 0],
} as const;

const activeCondition = statusCondition.active[0];

const revokeSql = (where: string) =>
  `UPDATE sessions SET revoked_at = ?, revoke_reason = ?, revoked_by = ? WHERE ${where}`;

interface StateRow extends RowDataPacket {
  tenant_id: string;
  id: string;
  expires_at: Date;
  idle_expires_at: Date | null;
  revoked_at: Date | null;
  revoke_reason: string | null;
}

/** Most session-state reads one query may carry; bounds the IN list. */
const maxStateBatch = 100;

export function createSessionStore(pool: Pool): SessionStore {
  // Verifies arriving in the same tick share one query per tenant (DataLoader batching). Nothing is
  // cached: every load is answered by a query sent after it was asked, so it sees every revoke
  // committed before the verify began.
  const stateLoader = new DataLoader<readonly [string, string], SessionState | null, string>(
    async (keys) => {
      const byTenant = new Map<string, string[]>();
      for (const [tenantId, id] of keys) {
        const ids = byTenant.get(tenantId);
        if (ids) ids.push(id);
        else byTenant.set(tenantId, [id]);
      }
      const found = new Map<string, SessionState>();
      await Promise.all(
        [...byTenant].map(async ([tenantId, ids]) => {
          // The batch serves many calls: no one caller's deadline may cut it short.
          const rows = await withoutDeadline(() =>
            query<StateRow[]>(
              pool,
              "SELECT tenant_id, id, expires_at, idle_expires_at, revoked_at, revoke_reason FROM sessions WHERE tenant_id = ? AND id IN (?)",
              [tenantId, ids],
            ),
          );
          for (const r of rows) {
            found.set(`${r.tenant_id}\0${r.id}`, {
              expiresAt: r.expires_at,
              idleExpiresAt: r.idle_expires_at,
              revokedAt: r.revoked_at,
              revokeReason: r.revoke_reason as RevokeReason | null,
            });
          }
        }),
      );
      return keys.map(([tenantId, id]) => found.get(`${tenantId}\0${id}`) ?? null);
    },
    // setImmediate gathers every verify parsed in the same event-loop turn into one batch.
    { cache: false, maxBatchSize: maxStateBatch, batchScheduleFn: (run) => setImmediate(run) },
  );

  return {
    async insertSession(s, refreshTokenHash, cap) {
      await inTransaction(pool, async (conn) => {
        if (cap !== null) {
          // Under the user's named lock (below), so concurrent creates for one user queue instead of
          // deadlocking on each other's gap locks; FOR UPDATE keeps revokes of these rows out.
          const [active] = await conn.query<RowDataPacket[]>(
            `SELECT id FROM sessions WHERE tenant_id = ? AND user_id = ? AND ${activeCondition}
              ORDER BY created_at, id FOR UPDATE`,
            [s.tenantId, s.userId, s.createdAt, s.createdAt],
          );
          const excess = active.slice(0, Math.max(0, active.length - cap + 1)).map((r) => r.id as string);
          if (excess.length > 0) {
            await conn.query(revokeSql("tenant_id = ? AND id IN (?)"), [s.createdAt, "session_limit", null, s.tenantId, excess]);
          }
        }
        await conn.query(
          `INSERT INTO sessions (${columns}, refresh_token_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
          [s.tenantId, s.id, s.userId, s.userAgent, s.ipAddress, s.country, s.deviceType, s.role, s.orgId,
            s.isMfaVerified, s.createdAt, s.lastActiveAt, s.expiresAt, s.idleExpiresAt, s.revokedAt, s.revokeReason, s.revokedBy,
            refreshTokenHash],
        );
        await conn.query(
          "INSERT INTO refresh_tokens (tenant_id, token_hash, session_id, created_at) VALUES (?, ?, ?, ?)",
          [s.tenantId, refreshTokenHash, s.id, s.createdAt],
        );
      }, cap === null ? {} : { serializeOn: `user-cap\0${s.tenantId}\0${s.userId}` });
    },

    async getSession(tenantId, id) {
      const rows = await query<SessionRow[]>(
        pool,
        `SELECT ${columns} FROM sessions WHERE tenant_id = ? AND id = ?`,
        [tenantId, id],
      );
      return rows[0] ? toSession(rows[0]) : null;
    },

    getSessionState(tenantId, id) {
      return stateLoader.load([tenantId, id]);
    },

    async listSessions(tenantId, q: ListQuery) {
      const where = ["tenant_id = ?"];
      const params: unknown[] = [tenantId];
      if (q.userId !== undefined) {
        where.push("user_id = ?");
        params.push(q.userId);
      }
      const [condition, nows] = statusCondition[q.status];
      where.push(condition);
      for (let i = 0; i < nows; i++) params.push(q.now);
      if (q.after !== undefined) {
        where.push("(created_at < ? OR (created_at = ? AND id < ?))");
        params.push(q.after.createdAt, q.after.createdAt, q.after.id);
      }
      params.push(q.limit);
      const rows = await query<SessionRow[]>(
        pool,
        `SELECT ${columns} FROM sessions WHERE ${where.join(" AND ")} ORDER BY created_at DESC, id DESC LIMIT ?`,
        params,
      );
      return rows.map(toSession);
    },

    async revokeSession(tenantId, id, { now, reason, by }) {
      // A transaction of one statement, for the lock-wait and deadlock retries inTransaction gives.
      const isRevoked = await inTransaction(pool, async (conn) => {
        const [result] = await conn.query<ResultSetHeader>(
          revokeSql("tenant_id = ? AND id = ? AND revoked_at IS NULL"),
          [now, reason, by, tenantId, id],
        );
        return result.affectedRows > 0;
      });
      if (isRevoked) return true;
      // Nothing changed: already revoked (keeping its first revoked_at), or no such session.
      const rows = await query<RowDataPacket[]>(pool, "SELECT 1 FROM sessions WHERE tenant_id = ? AND id = ?", [tenantId, id]);
      return rows.length > 0;
    },

    async revokeSessions(tenantId, filter: RevokeFilter, { now, reason, by }) {
      const where = ["tenant_id = ?", activeCondition];
      const params: unknown[] = [now, reason, by, tenantId, now, now];
      if (filter.userId !== undefined) {
        where.push("user_id = ?");
        params.push(filter.userId);
      }
      if (filter.exceptSessionId !== undefined) {
        where.push("id <> ?");
        params.push(filter.exceptSessionId);
      }
      const result = await query<{ affectedRows: number }>(pool, revokeSql(where.join(" AND ")), params);
      return result.affectedRows;
    },

    async refresh(tenantId, presentedHash, newHash, now, decide: RefreshDecider): Promise<RefreshResult> {
      return inTransaction(pool, async (conn) => {
        // One statement locks the presented token and its session, both by primary key. Every
        // rotation and revoke of a session writes its row, so they serialise on it; revokes lock
        // nothing else, so no lock cycle is possible.
        const [rows] = await conn.query<RefreshRow[]>(
          `SELECT ${sessionColumnsOf("s")}, s.refresh_token_hash AS live_hash, t.rotated_at AS t_rotated_at,
                  (t.successor_hash = s.refresh_token_hash) AS successor_live
             FROM refresh_tokens t
             JOIN sessions s ON s.tenant_id = t.tenant_id AND s.id = t.session_id
            WHERE t.tenant_id = ? AND t.token_hash = ?
            FOR UPDATE`,
          [tenantId, presentedHash],
        );
        const row = rows[0];
        if (!row) return { ok: false, error: "refresh_token_invalid" };
        const session = toSession(row);
        const decision = decide(
          { rotatedAt: row.t_rotated_at, isSuccessorLive: row.successor_live === 1 },
          session,
        );
        if (decision.action === "reject") return { ok: false, error: decision.error };
        if (decision.action === "revoke") {
          await conn.query(revokeSql("tenant_id = ? AND id = ? AND revoked_at IS NULL"), [now, decision.reason, null, tenantId, session.id]);
          return { ok: false, error: decision.error };
        }
        // Rotate: the live token (the presented one, or on a retry within grace, its successor) is
        // retired and the presented token points at the new one, which becomes the session's one
        // live token. One multi-table UPDATE writes the token rows and the session row.
        await conn.query(
          `UPDATE sessions s JOIN refresh_tokens t ON t.tenant_id = s.tenant_id AND t.token_hash IN (?, ?)
              SET t.rotated_at = COALESCE(t.rotated_at, ?), t.successor_hash = ?,
                  s.last_active_at = ?, s.idle_expires_at = ?, s.refresh_token_hash = ?
            WHERE s.tenant_id = ? AND s.id = ?`,
          [presentedHash, row.live_hash, now, newHash, now, decision.idleExpiresAt, newHash, tenantId, session.id],
        );
        await conn.query(
          "INSERT INTO refresh_tokens (tenant_id, token_hash, session_id, created_at) VALUES (?, ?, ?, ?)",
          [tenantId, newHash, session.id, now],
        );
        return { ok: true, session: { ...session, lastActiveAt: now, idleExpiresAt: decision.idleExpiresAt } };
      });
    },
  };
}
