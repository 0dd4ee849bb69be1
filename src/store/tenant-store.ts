import type { RowDataPacket } from "mysql2/promise";
import type { ApiKey, Tenant } from "../domain/model.js";
import type { TenantStore } from "../domain/ports.js";
import { query, text, type Pool } from "./db.js";

interface TenantRow extends RowDataPacket {
  id: Buffer;
  name: string;
  created_at: Date;
}

interface ApiKeyRow extends RowDataPacket {
  tenant_id: Buffer;
  id: Buffer;
  key_hint: string;
  created_at: Date;
  revoked_at: Date | null;
}

const toTenant = (r: TenantRow): Tenant => ({ id: text(r.id), name: r.name, createdAt: r.created_at });

const toApiKey = (r: ApiKeyRow): ApiKey => ({
  tenantId: text(r.tenant_id),
  id: text(r.id),
  hint: r.key_hint,
  createdAt: r.created_at,
  revokedAt: r.revoked_at,
});

const keyColumns = "tenant_id, id, key_hint, created_at, revoked_at";

export function createTenantStore(pool: Pool): TenantStore {
  return {
    async createTenant(t) {
      await query(pool, "INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)", [t.id, t.name, t.createdAt]);
    },
    async listTenants() {
      const rows = await query<TenantRow[]>(pool, "SELECT id, name, created_at FROM tenants ORDER BY created_at, id");
      return rows.map(toTenant);
    },
    async getTenant(id) {
      const rows = await query<TenantRow[]>(pool, "SELECT id, name, created_at FROM tenants WHERE id = ?", [id]);
      return rows[0] ? toTenant(rows[0]) : null;
    },
    async createApiKey(k, hash) {
      await query(
        pool,
        "INSERT INTO api_keys (tenant_id, id, key_hash, key_hint, created_at) VALUES (?, ?, ?, ?, ?)",
        [k.tenantId, k.id, hash, k.hint, k.createdAt],
      );
    },
    async listApiKeys(tenantId) {
      const rows = await query<ApiKeyRow[]>(
        pool,
        `SELECT ${keyColumns} FROM api_keys WHERE tenant_id = ? ORDER BY created_at, id`,
        [tenantId],
      );
      return rows.map(toApiKey);
    },
    async revokeApiKey(tenantId, id, now) {
      const result = await query<{ affectedRows: number }>(
        pool,
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE tenant_id = ? AND id = ?",
        [now, tenantId, id],
      );
      return result.affectedRows > 0;
    },
    async findApiKey(tenantId, hash) {
      const rows = await query<ApiKeyRow[]>(
        pool,
        `SELECT ${keyColumns} FROM api_keys WHERE tenant_id = ? AND key_hash = ?`,
        [tenantId, hash],
      );
      return rows[0] ? toApiKey(rows[0]) : null;
    },
  };
}
