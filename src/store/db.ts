import mysql from "mysql2/promise";
import type { Pool, PoolConnection } from "mysql2/promise";
import { AppError } from "../domain/errors.js";

export type { Pool, PoolConnection };

/**
 * Row-lock waits give up after this many seconds instead of InnoDB's 50 s default, so a stuck
 * transaction turns into a retry or a 503 while the caller is still waiting.
 */
const lockWaitTimeoutSeconds = 5;

export interface DatabaseOptions {
  url: string;
  poolSize: number;
}

/** Creates the database named in the URL if it is missing, then opens a pool on it. */
export async function openDatabase({ url, poolSize }: DatabaseOptions): Promise<Pool> {
  const parsed = new URL(url);
  const database = decodeURIComponent(parsed.pathname.replace(/^\//, ""));
  if (!/^[A-Za-z0-9_$]{1,64}$/.test(database)) {
    throw new Error("DATABASE_URL must name a database of letters, digits, _ or $");
  }
  const common = {
    host: parsed.hostname,
    port: parsed.port ? Number(parsed.port) : 3306,
    user: decodeURIComponent(parsed.username || "root"),
    password: decodeURIComponent(parsed.password),
    timezone: "Z",
    connectTimeout: 5_000,
    supportBigNumbers: true,
  } as const;
  const admin = await mysql.createConnection(common);
  try {
    await admin.query(
      `CREATE DATABASE IF NOT EXISTS \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`,
    );
  } finally {
    await admin.end();
  }
  const pool = mysql.createPool({
    ...common,
    database,
    connectionLimit: poolSize,
    // A bounded wait queue: past it callers get a fast 503 instead of piling up.
    queueLimit: poolSize * 16,
    enableKeepAlive: true,
  });
  pool.pool.on("connection", (conn) => {
    conn.query(`SET SESSION time_zone = '+00:00', SESSION innodb_lock_wait_timeout = ${lockWaitTimeoutSeconds}`);
  });
  return pool;
}

const retryableErrnos = new Set([
  1213, // ER_LOCK_DEADLOCK
  1205, // ER_LOCK_WAIT_TIMEOUT
]);

const unavailableCodes = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "PROTOCOL_CONNECTION_LOST",
  "PROTOCOL_SEQUENCE_TIMEOUT",
  "POOL_CLOSED",
  "ER_CON_COUNT_ERROR",
]);

interface DriverError {
  code?: string;
  errno?: number;
  fatal?: boolean;
  message?: string;
}

/** True for errors a whole-transaction retry can cure (deadlocks and lock-wait timeouts). */
export function isRetryable(err: unknown): boolean {
  return retryableErrnos.has((err as DriverError)?.errno ?? -1);
}

/**
 * Translates a driver error at the storage edge: connectivity, pool and lock failures become
 * `unavailable`; anything else stays an internal error whose text only reaches the log.
 */
export function translateDriverError(err: unknown): unknown {
  if (err instanceof AppError) return err;
  const e = err as DriverError;
  if (
    isRetryable(err) ||
    unavailableCodes.has(e?.code ?? "") ||
    e?.fatal === true ||
    /queue limit reached|pool is closed/i.test(e?.message ?? "")
  ) {
    return new AppError("unavailable", "the database is unavailable, try again", undefined, { cause: err });
  }
  return err;
}

const maxAttempts = 3;

/**
 * Runs `work` in a transaction, retrying the whole transaction on deadlock or lock-wait timeout a
 * bounded number of times; then `unavailable`.
 */
export async function inTransaction<T>(pool: Pool, work: (conn: PoolConnection) => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    let conn: PoolConnection | undefined;
    try {
      conn = await pool.getConnection();
      await conn.beginTransaction();
      const result = await work(conn);
      await conn.commit();
      return result;
    } catch (err) {
      await conn?.rollback().catch(() => undefined);
      if (isRetryable(err) && attempt < maxAttempts) continue;
      throw translateDriverError(err);
    } finally {
      conn?.release();
    }
  }
}

/** Runs one statement outside a transaction, translating driver errors. */
export async function query<T>(pool: Pool, sql: string, params: unknown[] = []): Promise<T> {
  try {
    const [rows] = await pool.query(sql, params);
    return rows as T;
  } catch (err) {
    throw translateDriverError(err);
  }
}
