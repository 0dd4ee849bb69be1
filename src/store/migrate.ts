import { readdir, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import type { Pool } from "./db.js";
import { withRowLock } from "./row-lock.js";

const migrationsDir = fileURLToPath(new URL("./migrations/", import.meta.url));

/** Long enough for another instance to finish migrating; short enough to fail a stuck start. */
const lockTimeoutSeconds = 60;

/**
 * Applies the forward-only SQL migrations in src/store/migrations in name order, each once.
 * A claimed row (src/store/row-lock.ts) serialises instances that start together, on one server or
 * on different nodes of a Galera cluster, where GET_LOCK would be each node's own and two instances
 * would both apply, say, an ADD COLUMN or a CREATE TRIGGER (the second failing, and its start with
 * it). MySQL commits DDL implicitly, so a file
 * cannot be one transaction: each statement that completes is recorded (`<file>#<n>`), and a start
 * that died half-way resumes after the last recorded statement. (`ADD COLUMN IF NOT EXISTS` would
 * do the same per statement, but MySQL 8 does not have it.)
 */
export async function migrate(pool: Pool): Promise<string[]> {
  const files = (await readdir(migrationsDir)).filter((f) => f.endsWith(".sql")).sort();
  // Nothing to do is found out by reading only, so an instance can start (and serve reads) while
  // the server is read-only, as during a failover.
  if (await isUpToDate(pool, files)) return [];
  // The lock's table, made before the lock can be taken: instances doing this together are safe,
  // since CREATE TABLE IF NOT EXISTS is atomic (and on Galera replicated in total order).
  await pool.query(
    `CREATE TABLE IF NOT EXISTS schema_migrations_lock (
       name VARBINARY(64) NOT NULL PRIMARY KEY,
       holder VARBINARY(64) NOT NULL,
       expires_at DATETIME(6) NOT NULL
     ) ENGINE=InnoDB`,
  );
  return withRowLock(pool, { table: "schema_migrations_lock", name: "migrate", waitSeconds: lockTimeoutSeconds }, async () => {
    const conn = await pool.getConnection();
    try {
      await conn.query(
        `CREATE TABLE IF NOT EXISTS schema_migrations (
           version VARCHAR(255) NOT NULL PRIMARY KEY,
           applied_at DATETIME(6) NOT NULL
         ) ENGINE=InnoDB`,
      );
      // Read after taking the lock: what the previous holder recorded, on whichever server it ran.
      const [rows] = (await conn.query("SELECT version FROM schema_migrations")) as unknown as [{ version: string }[]];
      const done = new Set(rows.map((r) => r.version));
      const applied: string[] = [];
      const record = (version: string) => conn.query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", [version, new Date()]);
      for (const file of files) {
        if (done.has(file)) continue;
        const statements = splitStatements(await readFile(migrationsDir + file, "utf8"));
        for (const [i, statement] of statements.entries()) {
          const step = `${file}#${i + 1}`;
          if (done.has(step)) continue;
          await conn.query(statement);
          await record(step);
        }
        await record(file);
        await conn.query("DELETE FROM schema_migrations WHERE version LIKE ?", [`${file}#%`]);
        applied.push(file);
      }
      return applied;
    } finally {
      conn.release();
    }
  });
}

/** True when every migration file is recorded as applied (false too when there is no record yet). */
async function isUpToDate(pool: Pool, files: string[]): Promise<boolean> {
  try {
    const [rows] = (await pool.query("SELECT version FROM schema_migrations")) as unknown as [{ version: string }[]];
    const done = new Set(rows.map((r) => r.version));
    return files.every((f) => done.has(f));
  } catch {
    return false;
  }
}

function splitStatements(sql: string): string[] {
  return sql
    .split(/;\s*$/m)
    .map((s) => s.replace(/^\s*--.*$/gm, "").trim())
    .filter((s) => s.length > 0);
}
