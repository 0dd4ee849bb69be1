import type { ResultSetHeader, RowDataPacket } from "mysql2/promise";
import type { SessionEventType } from "../domain/events.js";
import type { WebhookStore } from "../domain/ports.js";
import type { WebhookEndpoint } from "../domain/webhooks.js";
import { inTransaction, query, text, type Pool } from "./db.js";

interface EndpointRow extends RowDataPacket {
  id: Buffer;
  tenant_id: Buffer;
  url: Buffer;
  event_types: string;
  is_enabled: number;
  disabled_reason: string | null;
  position: number | string;
  created_at: Date;
}

const endpointColumns = "id, tenant_id, url, event_types, is_enabled, disabled_reason, position, created_at";

function toEndpoint(r: EndpointRow): WebhookEndpoint {
  return {
    id: text(r.id),
    tenantId: text(r.tenant_id),
    url: text(r.url),
    eventTypes: r.event_types === "" ? [] : (r.event_types.split(",") as SessionEventType[]),
    isEnabled: r.is_enabled === 1,
    disabledReason: r.disabled_reason,
    position: Number(r.position),
    createdAt: r.created_at,
  };
}

const pending = 0;
const delivered = 1;
const failed = 2;

/** Webhook endpoints, deliveries and attempts (migration 0006). */
export function createWebhookStore(pool: Pool): WebhookStore {
  return {
    async createEndpoint(e, secretSealed) {
      await query(
        pool,
        `INSERT INTO webhook_endpoints (id, tenant_id, url, event_types, secret_sealed, is_enabled, disabled_reason, position, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        [e.id, e.tenantId, e.url, e.eventTypes.join(","), secretSealed, e.isEnabled ? 1 : 0, e.disabledReason, e.position, e.createdAt],
      );
    },
    async listEndpoints(tenantId) {
      const endpoints = (await query<EndpointRow[]>(pool, `SELECT ${endpointColumns} FROM webhook_endpoints WHERE tenant_id = ? ORDER BY created_at, id`, [tenantId])).map(toEndpoint);
      if (endpoints.length === 0) return [];
      const counts = await query<RowDataPacket[]>(
        pool,
        "SELECT endpoint_id, state, COUNT(*) AS n FROM webhook_deliveries WHERE endpoint_id IN (?) GROUP BY endpoint_id, state",
        [endpoints.map((e) => e.id)],
      );
      const count = (id: string, state: number) => Number(counts.find((c) => text(c.endpoint_id as Buffer) === id && Number(c.state) === state)?.n ?? 0);
      return endpoints.map((e) => ({ ...e, pending: count(e.id, pending), delivered: count(e.id, delivered), failed: count(e.id, failed) }));
    },
    async deleteEndpoint(tenantId, id) {
      return inTransaction(pool, async (conn) => {
        const [gone] = await conn.query<ResultSetHeader>("DELETE FROM webhook_endpoints WHERE tenant_id = ? AND id = ?", [tenantId, id]);
        if (gone.affectedRows === 0) return false;
        await conn.query("DELETE FROM webhook_deliveries WHERE endpoint_id = ?", [id]);
        await conn.query("DELETE FROM webhook_attempts WHERE endpoint_id = ?", [id]);
        return true;
      });
    },
    async rotateSecret(tenantId, id, secretSealed, previousUntil) {
      const result = await query<ResultSetHeader>(
        pool,
        `UPDATE webhook_endpoints SET previous_secret_sealed = secret_sealed, previous_secret_until = ?, secret_sealed = ?
         WHERE tenant_id = ? AND id = ?`,
        [previousUntil, secretSealed, tenantId, id],
      );
      return result.affectedRows === 1;
    },
    async setEnabled(tenantId, id, isEnabled, reason) {
      const result = await query<ResultSetHeader>(pool, "UPDATE webhook_endpoints SET is_enabled = ?, disabled_reason = ? WHERE tenant_id = ? AND id = ?", [
        isEnabled ? 1 : 0,
        isEnabled ? null : reason,
        tenantId,
        id,
      ]);
      // affectedRows counts matched rows (mysql2 connects with FOUND_ROWS), so an unchanged state is still found.
      return result.affectedRows === 1;
    },
    async enabledEndpoints() {
      const rows = await query<EndpointRow[]>(pool, `SELECT ${endpointColumns} FROM webhook_endpoints WHERE is_enabled = 1 ORDER BY id`);
      return rows.map(toEndpoint);
    },
    async queue(endpointId, from, to, seqs, now) {
      return inTransaction(pool, async (conn) => {
        const [moved] = await conn.query<ResultSetHeader>("UPDATE webhook_endpoints SET position = ? WHERE id = ? AND position = ?", [to, endpointId, from]);
        if (moved.affectedRows === 0) return false;
        if (seqs.length > 0) {
          await conn.query("INSERT IGNORE INTO webhook_deliveries (endpoint_id, seq, state, attempts, next_attempt_at, queued_at) VALUES ?", [
            seqs.map((seq) => [endpointId, seq, 0, 0, now, now]),
          ]);
        }
        return true;
      });
    },
    async dueDeliveries(now, limit, perEndpoint) {
      // The earliest due of each enabled endpoint, at most `perEndpoint` each: one endpoint's
      // backlog cannot fill a round.
      const rows = await query<RowDataPacket[]>(
        pool,
        `SELECT endpoint_id, seq, attempts, tenant_id, url, secret_sealed, previous_secret_sealed, previous_secret_until FROM (
           SELECT d.endpoint_id, d.seq, d.attempts, d.next_attempt_at, e.tenant_id, e.url, e.secret_sealed, e.previous_secret_sealed, e.previous_secret_until,
             ROW_NUMBER() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.seq) AS n
           FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
           WHERE d.state = 0 AND d.next_attempt_at <= ? AND e.is_enabled = 1
         ) due WHERE n <= ? ORDER BY next_attempt_at, seq LIMIT ?`,
        [now, perEndpoint, limit],
      );
      return rows.map((r) => ({
        endpointId: text(r.endpoint_id as Buffer),
        tenantId: text(r.tenant_id as Buffer),
        url: text(r.url as Buffer),
        seq: Number(r.seq),
        attempts: Number(r.attempts),
        secretSealed: r.secret_sealed as Buffer,
        previousSecretSealed: (r.previous_secret_sealed as Buffer | null) ?? null,
        previousSecretUntil: (r.previous_secret_until as Date | null) ?? null,
      }));
    },
    async claim(deliveries, now, until) {
      if (deliveries.length === 0) return [];
      const keys = deliveries.map((d) => [d.endpointId, d.seq]);
      // Due ones only: a delivery another dispatcher claimed meanwhile is not due any more. `until`
      // is this claim's own instant (to the microsecond), so reading it back finds exactly ours.
      await query(pool, "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE state = 0 AND next_attempt_at <= ? AND (endpoint_id, seq) IN (?)", [until, now, keys]);
      const claimed = await query<RowDataPacket[]>(pool, "SELECT endpoint_id, seq FROM webhook_deliveries WHERE state = 0 AND next_attempt_at = ? AND (endpoint_id, seq) IN (?)", [
        until,
        keys,
      ]);
      const ours = new Set(claimed.map((r) => `${text(r.endpoint_id as Buffer)}\0${Number(r.seq)}`));
      return deliveries.filter((d) => ours.has(`${d.endpointId}\0${d.seq}`));
    },
    async recordAttempt({ endpointId, seq }, attempt, outcome) {
      await inTransaction(pool, async (conn) => {
        await conn.query("INSERT INTO webhook_attempts (endpoint_id, seq, attempted_at, status, error, duration_ms) VALUES (?, ?, ?, ?, ?, ?)", [
          endpointId,
          seq,
          attempt.attemptedAt,
          attempt.status,
          attempt.error?.slice(0, 255) ?? null,
          Math.min(Math.round(attempt.durationMs), 4_294_967_295),
        ]);
        if (outcome.state === "retry") {
          await conn.query("UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ? WHERE endpoint_id = ? AND seq = ? AND state = 0", [
            outcome.retryAt,
            endpointId,
            seq,
          ]);
        } else {
          await conn.query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, state = ?, next_attempt_at = NULL, finished_at = ? WHERE endpoint_id = ? AND seq = ? AND state = 0",
            [outcome.state === "delivered" ? delivered : failed, attempt.attemptedAt, endpointId, seq],
          );
        }
      });
    },
    async listAttempts(tenantId, endpointId, limit) {
      const rows = await query<RowDataPacket[]>(
        pool,
        `SELECT a.seq, a.attempted_at, a.status, a.error, a.duration_ms FROM webhook_attempts a
         JOIN webhook_endpoints e ON e.id = a.endpoint_id AND e.tenant_id = ?
         WHERE a.endpoint_id = ? ORDER BY a.id DESC LIMIT ?`,
        [tenantId, endpointId, limit],
      );
      return rows.map((r) => ({
        seq: Number(r.seq),
        attemptedAt: r.attempted_at as Date,
        status: (r.status as number | null) ?? null,
        error: (r.error as string | null) ?? null,
        durationMs: Number(r.duration_ms),
      }));
    },
    async purgeFinished(cutoff, limit) {
      const [gone] = await Promise.all([
        query<ResultSetHeader>(pool, "DELETE FROM webhook_deliveries WHERE finished_at < ? ORDER BY finished_at LIMIT ?", [cutoff, limit]),
        query<ResultSetHeader>(pool, "DELETE FROM webhook_attempts WHERE attempted_at < ? ORDER BY attempted_at LIMIT ?", [cutoff, limit]),
      ]);
      return gone.affectedRows;
    },
  };
}
