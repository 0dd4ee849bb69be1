import { createHash } from "node:crypto";
import type { Socket } from "node:net";
import mysql from "mysql2/promise";
import type { Pool, PoolConnection, RowDataPacket } from "mysql2/promise";
import { currentDeadline } from "../domain/deadline.js";
import { AppError } from "../domain/errors.js";

export type { Pool, PoolConnection };

/**
 * Time limits, so that no database fault holds a caller longer than a client would wait. A healthy
 * database answers the service's statements in milliseconds; these only bite when it does not.
 *
 * - A TCP connect plus handshake gives up after `connectTimeoutMs` (a black-holed or overloaded
 *   server otherwise holds a new connection for the OS's SYN retries, minutes).
 * - Row-lock waits give up after `lockWaitTimeoutSeconds` instead of InnoDB's 50 s default: locks
 *   are held for one short transaction, so a longer wait means something is stuck.
 * - One statement outside a transaction, or one whole transaction with its retries, gets
 *   `operationTimeoutMs` from the moment it asks for a connection, or less when the calling client's
 *   deadline (src/domain/deadline.ts) comes first: waiting for a pooled connection, connecting and
 *   every round trip count. At the deadline the connection is destroyed (the server rolls back
 *   whatever it held) and the caller gets `unavailable`.
 * - Deadlocks and lock-wait timeouts retry the whole transaction, at most `maxAttempts` times in
 *   all, and only while a full lock wait still fits in the budget: a held lock gives 503 after two
 *   waits (~4 s), never 3 × 50 s.
 */
const connectTimeoutMs = 2_000;
const lockWaitTimeoutSeconds = 2;
export const operationTimeoutMs = 5_000;
const maxAttempts = 3;

export interface DatabaseOptions {
  url: string;
  poolSize: number;
}

/**
 * Identifier columns are VARBINARY (exact, byte-for-byte comparison on every engine; migration 0002),
 * which the driver returns as bytes: this reads them back as the UTF-8 text they were written from.
 */
export function text(value: Buffer | string): string {
  return typeof value === "string" ? value : value.toString("utf8");
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
    connectTimeout: connectTimeoutMs,
    supportBigNumbers: true,
  } as const;
  try {
    const admin = await mysql.createConnection(common);
    try {
      await admin.query({
        sql: `CREATE DATABASE IF NOT EXISTS \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`,
        timeout: operationTimeoutMs,
      });
    } finally {
      admin.destroy();
    }
  } catch (err) {
    throw translateDriverError(err);
  }
  const pool = mysql.createPool({
    ...common,
    database,
    connectionLimit: poolSize,
    // A bounded wait queue: past it callers get a fast 503 instead of piling up.
    queueLimit: poolSize * 16,
    enableKeepAlive: true,
  });
  const open = new Set<{ stream: Socket }>();
  openConnections.set(pool, open);
  pool.pool.on("connection", (conn) => {
    const tracked = conn as unknown as { stream: Socket };
    open.add(tracked);
    tracked.stream.once("close", () => open.delete(tracked));
    // Queued ahead of the caller's first statement on this connection. With a callback, a failure
    // (the server went away mid-setup) cannot surface as an unhandled 'error' event; the connection
    // is then broken and the caller's own statement fails and is translated.
    conn.query(
      `SET SESSION time_zone = '+00:00', SESSION innodb_lock_wait_timeout = ${lockWaitTimeoutSeconds}`,
      () => undefined,
    );
  });
  return pool;
}

/** How many pooled connections are busy and how many callers wait for one (metrics, tests). */
export function poolStats(pool: Pool): { inUse: number; idle: number; waiting: number } {
  // mysql2 exposes these only as internal queues; read them in one place.
  const inner = pool.pool as unknown as { _allConnections: { length: number }; _freeConnections: { length: number }; _connectionQueue: { length: number } };
  const idle = inner._freeConnections.length;
  return { inUse: inner._allConnections.length - idle, idle, waiting: inner._connectionQueue.length };
}

/** Each pool's connected sockets, for `closePool` to destroy what a graceful end cannot close. */
const openConnections = new WeakMap<Pool, Set<{ stream: Socket }>>();

/**
 * Ends the pool: each connection says goodbye to the server. One that cannot (a server that stopped
 * answering) would hold the close forever, so after `timeoutMs` the remaining sockets are destroyed.
 */
export async function closePool(pool: Pool, timeoutMs = 1_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      for (const conn of openConnections.get(pool) ?? []) conn.stream.destroy();
      resolve();
    }, timeoutMs);
  });
  await Promise.race([pool.end().catch(() => undefined), late]);
  clearTimeout(timer);
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
  "EHOSTUNREACH",
  "ENETUNREACH",
  "PROTOCOL_CONNECTION_LOST",
  "PROTOCOL_SEQUENCE_TIMEOUT",
  "POOL_CLOSED",
  "ER_CON_COUNT_ERROR",
  "ER_SERVER_SHUTDOWN",
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

const unavailable = (cause?: unknown) =>
  new AppError("unavailable", "the database is unavailable, try again", undefined, { cause });

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
    /queue limit reached|pool is closed|closed state/i.test(e?.message ?? "")
  ) {
    return unavailable(err);
  }
  return err;
}

/**
 * Kills a connection whose statement is still pending. `conn.destroy()` only half-closes the socket
 * and silences the driver, so a statement waiting on a black-holed server would never settle;
 * destroying the socket makes the driver fail it (PROTOCOL_CONNECTION_LOST) and drop the connection.
 */
function kill(conn: PoolConnection): void {
  (conn.connection as unknown as { stream: Socket }).stream.destroy();
}

/** Drops an idle connection in an unknown state from the pool, so no later caller gets it. */
function discard(conn: PoolConnection): void {
  conn.destroy();
  kill(conn);
}

/**
 * A pooled connection, or `unavailable` once `deadline` passes. mysql2 pools have no acquire
 * timeout: a waiter stays queued until a connection frees, and one that gave up hands it straight back.
 */
function acquire(pool: Pool, deadline: number): Promise<PoolConnection> {
  return new Promise((resolve, reject) => {
    let isLate = false;
    const timer = setTimeout(() => {
      isLate = true;
      reject(unavailable(new Error("timed out waiting for a database connection")));
    }, Math.max(0, deadline - Date.now()));
    pool.getConnection().then(
      (conn) => {
        clearTimeout(timer);
        if (isLate) conn.release();
        else resolve(conn);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(translateDriverError(err));
      },
    );
  });
}

/** Runs `work` on a pooled connection that is killed if it is still busy at `deadline`. */
async function withConnection<T>(pool: Pool, deadline: number, work: (conn: PoolConnection) => Promise<T>): Promise<T> {
  const conn = await acquire(pool, deadline);
  const timer = setTimeout(() => kill(conn), Math.max(0, deadline - Date.now()));
  try {
    return await work(conn);
  } finally {
    clearTimeout(timer);
    conn.release(); // a no-op for a connection the driver already dropped
  }
}

/** An operation's own budget, or the calling client's deadline when that comes first. */
function operationDeadline(): number {
  return Math.min(Date.now() + operationTimeoutMs, currentDeadline() ?? Infinity);
}

/**
 * Runs `work` in a transaction, retrying the whole transaction on deadlock or lock-wait timeout a
 * bounded number of times within one operation budget; then `unavailable`. A failure after COMMIT
 * was sent is never retried: the commit may have happened. `serializeOn` queues transactions on a
 * named lock first; `isolation` lowers the isolation level for this transaction.
 */
export async function inTransaction<T>(
  pool: Pool,
  work: (conn: PoolConnection) => Promise<T>,
  { serializeOn, isolation }: { serializeOn?: string; isolation?: "READ COMMITTED" } = {},
): Promise<T> {
  const deadline = operationDeadline();
  for (let attempt = 1; ; attempt++) {
    try {
      return await withConnection(pool, deadline, async (conn) => {
        if (serializeOn !== undefined) await takeNamedLock(conn, serializeOn, deadline);
        try {
          // For the next transaction only; READ COMMITTED takes no gap locks on what it scans.
          if (isolation !== undefined) await conn.query(`SET TRANSACTION ISOLATION LEVEL ${isolation}`);
          await conn.beginTransaction();
          try {
            const result = await work(conn);
            await conn.commit();
            return result;
          } catch (err) {
            // A connection that cannot roll back is in an unknown state: never hand it to the next caller.
            await conn.rollback().catch(() => discard(conn));
            throw err;
          }
        } finally {
          if (serializeOn !== undefined) await conn.query("SELECT RELEASE_LOCK(?)", [namedLock(serializeOn)]).catch(() => discard(conn));
        }
      });
    } catch (err) {
      const fitsAnotherWait = deadline - Date.now() > lockWaitTimeoutSeconds * 1000;
      if (isRetryable(err) && attempt < maxAttempts && fitsAnotherWait) continue;
      throw translateDriverError(err);
    }
  }
}

/** Named locks are at most 64 characters: a digest of the key keeps any key within that. */
function namedLock(key: string): string {
  return `sessions_${createHash("sha256").update(key).digest("hex").slice(0, 40)}`;
}

/**
 * Takes a named lock (GET_LOCK) for the connection, held until released after COMMIT. Transactions
 * that would otherwise lock the same index range and insert into it (and so deadlock on each
 * other's gap locks) queue on it instead. Not getting it within a lock wait is `unavailable`.
 */
async function takeNamedLock(conn: PoolConnection, key: string, deadline: number): Promise<void> {
  const waitSeconds = Math.max(0, Math.min(lockWaitTimeoutSeconds, Math.floor((deadline - Date.now()) / 1000)));
  const [rows] = await conn.query<RowDataPacket[]>("SELECT GET_LOCK(?, ?) AS got", [namedLock(key), waitSeconds]);
  if (rows[0]?.got !== 1) throw unavailable(new Error("timed out waiting for a named lock"));
}

/** Runs one statement outside a transaction, translating driver errors. */
export async function query<T>(pool: Pool, sql: string, params: unknown[] = []): Promise<T> {
  try {
    return await withConnection(pool, operationDeadline(), async (conn) => {
      const [rows] = await conn.query(sql, params);
      return rows as T;
    });
  } catch (err) {
    throw translateDriverError(err);
  }
}

/** True when the database answers a trivial statement within `timeoutMs` (readiness probes). */
export async function isReachable(pool: Pool, timeoutMs: number): Promise<boolean> {
  try {
    await withConnection(pool, Date.now() + timeoutMs, (conn) => conn.query("SELECT 1"));
    return true;
  } catch {
    return false;
  }
}
