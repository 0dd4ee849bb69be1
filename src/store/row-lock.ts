import { randomBytes } from "node:crypto";
import type { ResultSetHeader } from "mysql2/promise";
import { isRetryable, withPooledConnection, type Pool } from "./db.js";

/**
 * How long a claim lasts unless its holder renews it, and how often the holder does. A holder that
 * dies keeps others waiting at most this long. On Galera a DDL statement (total order isolation)
 * holds every node's commits until it is done, the holder's renewal included; a waiter's takeover
 * queued behind it loses certification to a renewal replicated before it, so a renewal every few
 * seconds keeps the claim through a long statement. Pick from: the slowest start a waiter should
 * sit out after a crash (15 s) against the gap between renewals (3 s).
 */
const claimTtlSeconds = 15;
const renewEveryMs = 3_000;
/** How often a waiter tries again; a start or a key rotation takes a second or so. */
const retryEveryMs = 200;

export interface RowLockOptions {
  /** A table with columns (name, holder, expires_at) and name as the primary key. */
  table: "leases" | "schema_migrations_lock";
  name: string;
  /** How long to wait for another holder before giving up with "could not take the … lock". */
  waitSeconds: number;
}

/**
 * Runs `work` holding a lock that every server of a deployment sees, a Galera cluster's nodes
 * included: a row claimed by a committed write. GET_LOCK is local to the server it runs on, and
 * Galera does not replicate it, so instances on different nodes would both get it. Two nodes
 * claiming at once both write the same primary key; certification lets the first through and aborts
 * the other (a deadlock error, 1213) or, with wsrep_retry_autocommit, reruns its statement, which then
 * finds the row taken: either way one claim wins. On a single server the row serialises the same way.
 * The holder renews the claim while `work` runs and deletes the row afterwards; a holder that died
 * leaves a row that expires after `claimTtlSeconds`.
 */
export async function withRowLock<T>(pool: Pool, { table, name, waitSeconds }: RowLockOptions, work: () => Promise<T>): Promise<T> {
  const holder = randomBytes(16).toString("hex");
  const write = (sql: string, params: unknown[]) =>
    withPooledConnection(pool, async (conn) => {
      try {
        const [result] = await conn.query<ResultSetHeader>(sql, params);
        return result.affectedRows;
      } catch (err) {
        // Lost a certification conflict (or a deadlock) to another claimant: not ours this time.
        if (isRetryable(err)) return 0;
        throw err;
      }
    });
  const claim = async () =>
    (await write(`INSERT IGNORE INTO ${table} (name, holder, expires_at) VALUES (?, ?, NOW(6) + INTERVAL ${claimTtlSeconds} SECOND)`, [name, holder])) === 1 ||
    (await write(`UPDATE ${table} SET holder = ?, expires_at = NOW(6) + INTERVAL ${claimTtlSeconds} SECOND WHERE name = ? AND expires_at <= NOW(6)`, [holder, name])) === 1;

  const deadline = Date.now() + waitSeconds * 1000;
  while (!(await claim())) {
    if (Date.now() + retryEveryMs > deadline) throw new Error(`could not take the ${name} lock within ${waitSeconds} s`);
    await new Promise((resolve) => setTimeout(resolve, retryEveryMs));
  }
  let renewing: Promise<unknown> = Promise.resolve();
  const timer = setInterval(() => {
    // One renewal in flight at a time; a failed one is tried again at the next tick.
    renewing = renewing.then(() =>
      write(`UPDATE ${table} SET expires_at = NOW(6) + INTERVAL ${claimTtlSeconds} SECOND WHERE name = ? AND holder = ?`, [name, holder]).catch(() => 0),
    );
  }, renewEveryMs);
  timer.unref();
  try {
    return await work();
  } finally {
    clearInterval(timer);
    await renewing;
    // Should this fail, the row expires on its own.
    await write(`DELETE FROM ${table} WHERE name = ? AND holder = ?`, [name, holder]).catch(() => 0);
  }
}
