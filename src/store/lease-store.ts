import type { ResultSetHeader } from "mysql2/promise";
import type { LeaseStore } from "../domain/ports.js";
import { query, type Pool } from "./db.js";

/**
 * Leases are rows (migration 0003), so they hold across instances on any server, including a
 * Galera cluster, where GET_LOCK is local to one node. Two statements, because the one-statement
 * upsert that tests who holds the row spells differently on MySQL 8 (VALUES() is deprecated there)
 * and MariaDB: insert the lease if nobody ever held it, else take it over if it has run out or is ours.
 */
export function createLeaseStore(pool: Pool): LeaseStore {
  return {
    async tryAcquire(name, holder, now, until) {
      const inserted = await query<ResultSetHeader>(pool, "INSERT IGNORE INTO leases (name, holder, expires_at) VALUES (?, ?, ?)", [name, holder, until]);
      if (inserted.affectedRows === 1) return true;
      const updated = await query<ResultSetHeader>(
        pool,
        "UPDATE leases SET holder = ?, expires_at = ? WHERE name = ? AND (holder = ? OR expires_at <= ?)",
        [holder, until, name, holder, now],
      );
      return updated.affectedRows === 1;
    },
    async release(name, holder, now) {
      await query(pool, "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND expires_at > ?", [now, name, holder, now]);
    },
  };
}
