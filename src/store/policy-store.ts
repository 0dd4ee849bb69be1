import type { RowDataPacket } from "mysql2/promise";
import type { PolicyStore } from "../domain/ports.js";
import { query, type Pool } from "./db.js";

interface PolicyRow extends RowDataPacket {
  access_token_ttl_seconds: number;
  session_lifetime_seconds: number;
  idle_timeout_seconds: number | null;
  refresh_grace_seconds: number;
  max_sessions_per_user: number | null;
}

export function createPolicyStore(pool: Pool): PolicyStore {
  return {
    async getPolicy(tenantId) {
      const rows = await query<PolicyRow[]>(
        pool,
        `SELECT access_token_ttl_seconds, session_lifetime_seconds, idle_timeout_seconds, refresh_grace_seconds,
                max_sessions_per_user
           FROM tenant_policies WHERE tenant_id = ?`,
        [tenantId],
      );
      const r = rows[0];
      return r
        ? {
            accessTokenTtlSeconds: r.access_token_ttl_seconds,
            sessionLifetimeSeconds: r.session_lifetime_seconds,
            idleTimeoutSeconds: r.idle_timeout_seconds,
            refreshGraceSeconds: r.refresh_grace_seconds,
            maxSessionsPerUser: r.max_sessions_per_user,
          }
        : null;
    },
    async putPolicy(tenantId, p, now) {
      // DELETE + INSERT in one transaction would do too; REPLACE is the one upsert MySQL 8 and
      // MariaDB spell alike, and the row has no dependants.
      await query(
        pool,
        `REPLACE INTO tenant_policies (tenant_id, access_token_ttl_seconds, session_lifetime_seconds, idle_timeout_seconds,
                                       refresh_grace_seconds, max_sessions_per_user, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
        [tenantId, p.accessTokenTtlSeconds, p.sessionLifetimeSeconds, p.idleTimeoutSeconds, p.refreshGraceSeconds, p.maxSessionsPerUser, now],
      );
    },
  };
}
