import type { RowDataPacket } from "mysql2/promise";
import type { DeviceType, RevokeReason, Session } from "../domain/model.js";
import type { ListQuery, RefreshDecider, RefreshResult, RevokeFilter, SessionStore } from "../domain/ports.js";
import { inTransaction, query, type Pool } from "./db.js";

const columns =
  "tenant_id, id, user_id, user_agent, ip_address, country, device_type, role, org_id, mfa_verified, " +
  "created_at, last_active_at, expires_at, revoked_at, revoke_reason";

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
  revoked_at: Date | null;
  revoke_reason: string | null;
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
    revokedAt: row.revoked_at,
    revokeReason: row.revoke_reason as RevokeReason | null,
  };
}

/** SQL for each status; the status itself is derived, never stored. */
const statusCondition = {
  active: "revoked_at IS NULL AND expires_at > ?",
  expired: "revoked_at IS NULL AND expires_at <= ?",
  revoked: "revoked_at IS NOT NULL",
} as const;

export function createSessionStore(pool: Pool): SessionStore {
  return {
    async insertSession(s, refreshTokenHash) {
      await inTransaction(pool, async (conn) => {
        await conn.query(
          `INSERT INTO sessions (${columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
          [s.tenantId, s.id, s.userId, s.userAgent, s.ipAddress, s.country, s.deviceType, s.role, s.orgId,
            s.isMfaVerified, s.createdAt, s.lastActiveAt, s.expiresAt, s.revokedAt, s.revokeReason],
        );
        await conn.query(
          "INSERT INTO refresh_tokens (tenant_id, token_hash, session_id, created_at) VALUES (?, ?, ?, ?)",
          [s.tenantId, refreshTokenHash, s.id, s.createdAt],
        );
      });
    },

    async getSession(tenantId, id) {
      const rows = await query<SessionRow[]>(
        pool,
        `SELECT ${columns} FROM sessions WHERE tenant_id = ? AND id = ?`,
        [tenantId, id],
      );
      return rows[0] ? toSession(rows[0]) : null;
    },

    async listSessions(tenantId, q: ListQuery) {
      const where = ["tenant_id = ?"];
      const params: unknown[] = [tenantId];
      if (q.userId !== undefined) {
        where.push("user_id = ?");
        params.push(q.userId);
      }
      where.push(statusCondition[q.status]);
      if (q.status !== "revoked") params.push(q.now);
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

    async revokeSession(tenantId, id, now, reason) {
      return inTransaction(pool, async (conn) => {
        const [rows] = await conn.query<SessionRow[]>(
          `SELECT ${columns} FROM sessions WHERE tenant_id = ? AND id = ? FOR UPDATE`,
          [tenantId, id],
        );
        const row = rows[0];
        if (!row) return null;
        const session = toSession(row);
        if (session.revokedAt !== null) return session;
        await conn.query(
          "UPDATE sessions SET revoked_at = ?, revoke_reason = ? WHERE tenant_id = ? AND id = ?",
          [now, reason, tenantId, id],
        );
        return { ...session, revokedAt: now, revokeReason: reason };
      });
    },

    async revokeSessions(tenantId, filter: RevokeFilter, now, reason) {
      const where = ["tenant_id = ?", "revoked_at IS NULL", "expires_at > ?"];
      const params: unknown[] = [now, reason, tenantId, now];
      if (filter.userId !== undefined) {
        where.push("user_id = ?");
        params.push(filter.userId);
      }
      if (filter.exceptSessionId !== undefined) {
        where.push("id <> ?");
        params.push(filter.exceptSessionId);
      }
      const result = await query<{ affectedRows: number }>(
        pool,
        `UPDATE sessions SET revoked_at = ?, revoke_reason = ? WHERE ${where.join(" AND ")}`,
        params,
      );
      return result.affectedRows;
    },

    async refresh(tenantId, presentedHash, newHash, now, decide: RefreshDecider): Promise<RefreshResult> {
      return inTransaction(pool, async (conn) => {
        // Lock order everywhere: refresh token row, then session row.
        const [tokens] = await conn.query<RowDataPacket[]>(
          `SELECT t.session_id, t.created_at, t.rotated_at,
                  (s.token_hash IS NOT NULL AND s.rotated_at IS NULL) AS successor_live
             FROM refresh_tokens t
             LEFT JOIN refresh_tokens s ON s.tenant_id = t.tenant_id AND s.token_hash = t.successor_hash
            WHERE t.tenant_id = ? AND t.token_hash = ?
            FOR UPDATE`,
          [tenantId, presentedHash],
        );
        const token = tokens[0];
        if (!token) return { ok: false, error: "refresh_token_invalid" };
        const [sessions] = await conn.query<SessionRow[]>(
          `SELECT ${columns} FROM sessions WHERE tenant_id = ? AND id = ? FOR UPDATE`,
          [tenantId, token.session_id],
        );
        if (!sessions[0]) return { ok: false, error: "refresh_token_invalid" };
        const session = toSession(sessions[0]);
        const decision = decide(
          {
            sessionId: token.session_id,
            createdAt: token.created_at,
            rotatedAt: token.rotated_at,
            isSuccessorLive: token.successor_live === 1,
          },
          session,
        );
        if (decision.action === "reject") return { ok: false, error: decision.error };
        if (decision.action === "revoke") {
          await conn.query(
            "UPDATE sessions SET revoked_at = ?, revoke_reason = ? WHERE tenant_id = ? AND id = ? AND revoked_at IS NULL",
            [now, decision.reason, tenantId, session.id],
          );
          return { ok: false, error: decision.error };
        }
        // Rotate: every live token of the session (the presented one, or on a retry within grace,
        // its successor) is retired, so exactly one live token remains: the new one.
        await conn.query(
          `UPDATE refresh_tokens SET rotated_at = ?, successor_hash = ?
            WHERE tenant_id = ? AND session_id = ? AND rotated_at IS NULL`,
          [now, newHash, tenantId, session.id],
        );
        if (token.rotated_at !== null) {
          await conn.query(
            "UPDATE refresh_tokens SET successor_hash = ? WHERE tenant_id = ? AND token_hash = ?",
            [newHash, tenantId, presentedHash],
          );
        }
        await conn.query(
          "INSERT INTO refresh_tokens (tenant_id, token_hash, session_id, created_at) VALUES (?, ?, ?, ?)",
          [tenantId, newHash, session.id, now],
        );
        await conn.query(
          "UPDATE sessions SET last_active_at = ? WHERE tenant_id = ? AND id = ?",
          [now, tenantId, session.id],
        );
        return { ok: true, session: { ...session, lastActiveAt: now } };
      });
    },
  };
}
