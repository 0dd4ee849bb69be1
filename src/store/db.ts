import { createHash } from "node:crypto";
import type { Socket } from "node:net";
import DataLoader from "dataloader";
import mysql from "mysql2/promise";
import type { Pool, PoolConnection, RowDataPacket } from "mysql2/promise";
import { cancellationCheck, currentDeadline, throwIfCancelled, withoutCall } from "../domain/call-context.js";
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
 *   whatever it held) and the caller gets `unavailable`, or `deadline_exceeded` when it was the
 *   client's deadline (src/domain/call-context.ts).
 * - Deadlocks and lock-wait timeouts retry the whole transaction, at most `maxAttempts` times in
 *   all, and only while a full lock wait still fits in the budget: a held lock gives 503 after two
 *   waits (~4 s), never 3 × 50 s.
 */
const connectTimeoutMs = 2_000;

/**
 * The SQL mode every pooled connection runs with, whatever the server's default. Statements are
 * built on the client with mysql2's escaping, which relies on backslash escapes: a server whose
 * sql_mode has NO_BACKSLASH_ESCAPES would read `\'` as a backslash and the end of a string, so a
 * user id could close its quotes. Modes that change how SQL reads (ANSI_QUOTES, PIPES_AS_CONCAT,
 * PAD_CHAR_TO_FULL_LENGTH, …) are left out for the same reason. Every mode named here exists on
 * MySQL 8.0 and MariaDB 10.6+ (NO_AUTO_CREATE_USER, which MySQL 8 removed, is not named).
 */
export const pinnedSqlMode = "ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION";

/**
 * The character set of everything a connection sends and receives, whatever the server's default.
 * mysql2 sends strings as UTF-8 and escapes them byte-wise for an ASCII-compatible charset: a
 * connection the server reads as GBK, Big5 or SJIS (possible whatever the client asks for in its
 * handshake, with --skip-character-set-client-handshake) takes 0xBF 0x5C as one character and lets
 * the quote after it close the string.
 */
export const pinnedCharset = "utf8mb4";
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

/**
 * The database a mysql:// URL names, or undefined unless it is one the service can create and use
 * unquoted: 1 to 64 letters, digits, _ or $ (config.ts reports the problem at start).
 */
export function databaseNameOf(url: string): string | undefined {
  let database: string;
  try {
    database = decodeURIComponent(new URL(url).pathname.replace(/^\//, ""));
  } catch {
    return undefined;
  }
  return /^[A-Za-z0-9_$]{1,64}$/.test(database) ? database : undefined;
}

/** Creates the database named in the URL if it is missing, then opens a pool on it. */
export async function openDatabase({ url, poolSize }: DatabaseOptions): Promise<Pool> {
  const parsed = new URL(url);
  const database = databaseNameOf(url);
  if (database === undefined) {
    throw new Error("DATABASE_URL must name a database of letters, digits, _ or $");
  }
  const common = {
    // An IPv6 literal is bracketed in a URL ([::1]) and bare in a socket address.
    host: parsed.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: parsed.port ? Number(parsed.port) : 3306,
    user: decodeURIComponent(parsed.username || "root"),
    password: decodeURIComponent(parsed.password),
    timezone: "Z",
    connectTimeout: connectTimeoutMs,
    supportBigNumbers: true,
    // Every statement goes as text with client-side escaping (query, never execute): no prepared
    // statements to cache. mysql2's default reserves room for 16,000 per connection, ~0.5 MiB each.
    maxPreparedStatements: 1,
    // No stack captured at each call site for a driver error's trace (a stack per statement, 1% of
    // a create): the service logs the error, and what failed is named by the statement.
    trace: false,
  } as const;
  let isGalera = false;
  try {
    const admin = await mysql.createConnection(common);
    try {
      isGalera = await detectGalera(admin);
      // Created only when missing: a read-only server (a failover) refuses even CREATE ... IF NOT EXISTS.
      const [found] = await admin.query<RowDataPacket[]>({
        sql: "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
        values: [database],
        timeout: operationTimeoutMs,
      });
      if (found.length === 0) {
        await admin.query({
          sql: `CREATE DATABASE IF NOT EXISTS \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`,
          timeout: operationTimeoutMs,
        });
      }
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
    // One query may carry several statements: batched guarded writes (see batchedStatements) go in
    // one round trip. Every value still reaches SQL through mysql2's escaping, never spliced in.
    multipleStatements: true,
  });
  const open = new Set<{ stream: Socket }>();
  openConnections.set(pool, open);
  if (isGalera) galeraPools.add(pool);
  pool.pool.on("connection", (conn) => {
    const tracked = conn as unknown as { stream: Socket };
    open.add(tracked);
    tracked.stream.once("close", () => open.delete(tracked));
    // Queued ahead of the caller's first statement on this connection. With a callback, a failure
    // cannot surface as an unhandled 'error' event; the connection is then destroyed, so the
    // caller's statement fails (and is translated) rather than run in the server's own sql_mode.
    conn.query(
      `SET NAMES ${pinnedCharset}, SESSION sql_mode = '${pinnedSqlMode}', SESSION time_zone = '+00:00', SESSION innodb_lock_wait_timeout = ${lockWaitTimeoutSeconds}${isGalera ? `, SESSION wsrep_sync_wait = ${galeraSyncWait}` : ""}`,
      (err: unknown) => {
        if (err) tracked.stream.destroy();
      },
    );
  });
  try {
    await checkSession(pool);
  } catch (err) {
    await closePool(pool);
    throw err;
  }
  return pool;
}

/**
 * On a Galera node, reads wait for causality: `wsrep_sync_wait = 1` makes every SELECT (and BEGIN)
 * wait until the node has applied every write set the cluster had committed when the read began.
 * Without it a node answers from what it has applied so far, which may lag behind a commit made
 * through another node by a moment: a session revoked through node 1 would still verify through
 * node 3, and a refresh could read a token another node already rotated. The service reads the state
 * of sessions, tokens, keys and leases with plain SELECTs, so it is set for the whole connection;
 * writes need no wait (bit 2 and 4): each is guarded by what it read, and a write against a row
 * version the cluster has moved past fails certification, which is retried (1213).
 */
const galeraSyncWait = 1;

/** Pools whose server is a Galera node with replication on (found at open). */
const galeraPools = new WeakSet<Pool>();

/** True when the pool's server is a Galera node, where causal reads are on (see galeraSyncWait). */
export function isGaleraPool(pool: Pool): boolean {
  return galeraPools.has(pool);
}

/**
 * Whether the server is a node of a Galera cluster with replication on. SHOW VARIABLES answers on
 * MySQL 8.0 too, where no wsrep_ variable exists: an empty result, not an error.
 */
async function detectGalera(conn: mysql.Connection): Promise<boolean> {
  const [rows] = await conn.query<RowDataPacket[]>({ sql: "SHOW GLOBAL VARIABLES LIKE 'wsrep_on'", timeout: operationTimeoutMs });
  return String(rows[0]?.Value ?? "OFF").toUpperCase() === "ON";
}

/**
 * What checkSession sends and expects back unchanged: every character escaping depends on, and the
 * UTF-8 of "中¿" whose bytes end in 0xBF (GBK's lead byte before a backslash).
 */
const escapingProbe = "a'b\\c\"d`e\u0000f\nz\u4e2d\u00bf'\\'";

/**
 * At start, proves on a pooled connection what correctness relies on: the pinned sql_mode and
 * character set are in force, and a string with quotes, backslashes, NUL and multi-byte characters
 * goes to the server and back unchanged; on Galera, that reads are causal.
 */
async function checkSession(pool: Pool): Promise<void> {
  const isGalera = isGaleraPool(pool);
  const rows = await query<RowDataPacket[]>(
    pool,
    `SELECT @@SESSION.sql_mode AS mode, CONCAT_WS(',', @@character_set_client, @@character_set_connection, @@character_set_results) AS charsets, ? AS probe${isGalera ? ", @@SESSION.wsrep_sync_wait AS syncWait" : ""}`,
    [escapingProbe],
  );
  const { mode, charsets, probe, syncWait } = rows[0] as { mode: string; charsets: string; probe: string; syncWait?: number };
  const modes = (list: string) => list.split(",").sort().join(",");
  if (modes(mode) !== modes(pinnedSqlMode) || charsets !== [pinnedCharset, pinnedCharset, pinnedCharset].join(",") || probe !== escapingProbe) {
    throw new Error(
      `the database session does not run in the SQL mode and character set the service pins (it has "${mode}", ${charsets}): refusing to start`,
    );
  }
  if (isGalera && Number(syncWait) !== galeraSyncWait) {
    throw new Error(`the Galera session does not read causally (wsrep_sync_wait is ${syncWait}, not ${galeraSyncWait}): refusing to start`);
  }
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
  1213, // ER_LOCK_DEADLOCK (also a Galera certification conflict)
  1205, // ER_LOCK_WAIT_TIMEOUT
  1467, // ER_AUTOINC_READ_FAILED: MariaDB's answer when a wait for a table's AUTO-INC lock timed out
]);

/**
 * Server errors that mean "this server cannot serve the statement now" rather than "the statement is
 * wrong": a read-only server (a replica, or a primary during failover), a Galera node not ready, a
 * connection killed or lost mid-statement. They are 503 with Retry-After, never 500.
 */
const unavailableErrnos = new Set([
  1290, // ER_OPTION_PREVENTS_STATEMENT: --read-only (or another option) forbids it
  1836, // ER_READ_ONLY_MODE
  1792, // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
  1047, // ER_UNKNOWN_COM_ERROR: "WSREP has not yet prepared node for application use"
  1053, // ER_SERVER_SHUTDOWN
  1927, // ER_CONNECTION_KILLED (MariaDB)
  2006, // CR_SERVER_GONE_ERROR
  2013, // CR_SERVER_LOST
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
 * When an operation must end: its own budget, or the calling client's deadline when that comes first
 * (then reaching it is the client's DEADLINE_EXCEEDED, not the database's fault).
 */
interface Deadline {
  at: number;
  isClients: boolean;
}

function deadlineError(deadline: Deadline, cause: unknown): AppError {
  return deadline.isClients
    ? new AppError("deadline_exceeded", "the call's deadline passed before the database answered", undefined, { cause })
    : unavailable(cause);
}

/** A statement refused for a row whose unique key is taken (ER_DUP_ENTRY). */
export function isDuplicateKey(err: unknown): boolean {
  return (err as DriverError)?.errno === 1062;
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
    unavailableErrnos.has(e?.errno ?? -1) ||
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
function acquire(pool: Pool, deadline: Deadline): Promise<PoolConnection> {
  return new Promise((resolve, reject) => {
    let isLate = false;
    const timer = setTimeout(() => {
      isLate = true;
      reject(deadlineError(deadline, new Error("timed out waiting for a database connection")));
    }, Math.max(0, deadline.at - Date.now()));
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

/**
 * Runs `work` on a pooled connection that is killed if it is still busy at `deadline`. A call whose
 * client has gone away, before or while it waited for a connection, sends nothing on it.
 */
async function withConnection<T>(pool: Pool, deadline: Deadline, work: (conn: PoolConnection) => Promise<T>): Promise<T> {
  throwIfCancelled();
  const conn = await acquire(pool, deadline);
  try {
    // The client may have gone while this call waited for a connection (the pool is busy).
    throwIfCancelled();
  } catch (err) {
    conn.release();
    throw err;
  }
  let isKilled = false;
  const timer = setTimeout(() => {
    isKilled = true;
    kill(conn);
  }, Math.max(0, deadline.at - Date.now()));
  try {
    return await work(conn);
  } catch (err) {
    throw isKilled ? deadlineError(deadline, err) : err;
  } finally {
    clearTimeout(timer);
    conn.release(); // a no-op for a connection the driver already dropped
  }
}

/** An operation's own budget, or the calling client's deadline when that comes first. */
function operationDeadline(): Deadline {
  const own = Date.now() + operationTimeoutMs;
  const client = currentDeadline() ?? Infinity;
  return client < own ? { at: client, isClients: true } : { at: own, isClients: false };
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
  { serializeOn, isolation, rowKey }: TransactionOptions = {},
): Promise<T> {
  const deadline = operationDeadline();
  const key = rowKey ?? serializeOn;
  if (key === undefined) return runTransaction(pool, deadline, work, serializeOn, isolation);
  return oneAtATime(key, deadline, () => runTransaction(pool, deadline, work, serializeOn, isolation));
}

/** Sends one statement on a pooled connection and gives its result (rows, or the write's header). */
export type Statement = <T>(sql: string, params: unknown[]) => Promise<T>;

/**
 * Runs `work` within one budget, queued behind other work on the same `rowKey` on this instance as
 * inTransaction is, and run again after a deadlock or lock-wait timeout as a transaction would be
 * (so each statement must be safe to repeat). `work` sends single statements with `run`, each
 * committing on its own as far as `work` can tell: for work made of statements each guarded by what
 * it read, that needs no transaction's round trips. Statements that calls send in the same
 * event-loop turn travel together (batchedStatements).
 */
export async function oneAtATimeOn<T>(pool: Pool, rowKey: string, work: (run: Statement) => Promise<T>): Promise<T> {
  const deadline = operationDeadline();
  const statements = statementBatcherOf(pool);
  const run: Statement = async <R>(sql: string, params: unknown[]) => {
    throwIfCancelled();
    return (await statements.load({ sql, params, checkCaller: cancellationCheck() })) as R;
  };
  try {
    return await oneAtATime(rowKey, deadline, () => retryingLocks(deadline, () => work(run)));
  } catch (err) {
    throw translateDriverError(err);
  }
}

/** A batched call's request: how to tell whether its caller is still waiting for it. */
export interface WaitingCaller {
  checkCaller: () => void;
}

/**
 * For each request of a batch, the error of a caller that went away (cancelled, or past its
 * deadline) while the batch waited for a connection, or undefined for one still waiting: a batch
 * leaves the gone out.
 */
export function callersGone(requests: readonly WaitingCaller[]): (Error | undefined)[] {
  return requests.map((r) => {
    try {
      r.checkCaller();
      return undefined;
    } catch (err) {
      return err as Error;
    }
  });
}

/** One call's statement. */
interface BatchedStatement extends WaitingCaller {
  sql: string;
  params: unknown[];
}

const statementBatchers = new WeakMap<Pool, DataLoader<BatchedStatement, unknown>>();

function statementBatcherOf(pool: Pool): DataLoader<BatchedStatement, unknown> {
  let batcher = statementBatchers.get(pool);
  if (batcher === undefined) statementBatchers.set(pool, (batcher = batchedStatements(pool)));
  return batcher;
}

/** Most statements one batch carries. */
const maxStatementBatch = 32;

/**
 * Single statements of different calls, batched: those sent in the same event-loop turn go as one
 * multi-statement query in one transaction, one round trip and one commit for all; each call gets
 * its own statement's result. The batch serves many calls, so it runs on the operation budget, not
 * one caller's deadline; a call whose client went away while the batch waited for a connection is
 * left out. Should the batch fail (a deadlock between two batches, a lock-wait timeout, a lost
 * certification on Galera), it is rolled back and each statement runs again on its own, so that only
 * a statement at fault fails, with its own error. A batch whose connection is lost fails as a whole:
 * whether its commit happened is unknown, as for any single statement. A statement that waits on a
 * row lock holds back the ones after it in its batch: fine for the short, guarded writes this
 * serves (refresh), whose rows are locked for milliseconds, not for statements that may wait long.
 */
function batchedStatements(pool: Pool): DataLoader<BatchedStatement, unknown> {
  return new DataLoader<BatchedStatement, unknown>(
    (requests) =>
      withoutCall(() =>
        withPooledConnection(pool, async (conn) => {
          const outcomes: unknown[] = callersGone(requests);
          const live = requests.flatMap((r, i) => (outcomes[i] === undefined ? [i] : []));
          if (live.length > 1) {
            try {
              const sql = ["START TRANSACTION", ...live.map((i) => requests[i]?.sql), "COMMIT"].join(";\n");
              const [results] = (await conn.query(sql, live.flatMap((i) => requests[i]?.params ?? []))) as unknown as [unknown[]];
              // results[0] is START TRANSACTION's.
              for (const [k, i] of live.entries()) outcomes[i] = results[k + 1];
              return outcomes;
            } catch (err) {
              if ((err as DriverError).fatal === true) throw err;
              // A deadlock has rolled the transaction back; a lock-wait timeout leaves it open.
              await conn.query("ROLLBACK");
            }
          }
          for (const [i, r] of requests.entries()) {
            if (outcomes[i] !== undefined) continue;
            outcomes[i] = await conn.query(r.sql, r.params).then(
              ([result]) => result,
              (err: unknown) => (err instanceof Error ? err : new Error(String(err))),
            );
          }
          return outcomes;
        }),
      ),
    { cache: false, maxBatchSize: maxStatementBatch, batchScheduleFn: (run) => setImmediate(run) },
  );
}

export interface TransactionOptions {
  /** Queues transactions on a named lock (GET_LOCK) first, across instances. */
  serializeOn?: string;
  /** Lowers the isolation level for this transaction. */
  isolation?: "READ COMMITTED";
  /**
   * The row (or rows) the transaction will lock, named by the caller. Transactions with the same key
   * run one at a time on this instance and wait in memory, not on a pooled connection, so callers
   * piling onto one locked row (a refresh storm, a row locked elsewhere) hold one connection, never
   * the pool. `serializeOn` implies its own key.
   */
  rowKey?: string;
}

/**
 * In-process queues, one per key: one transaction runs, at most `maxQueuedPerKey` wait (each until
 * its own deadline), the rest are refused at once with `unavailable`.
 */
const maxQueuedPerKey = 32;
const keyQueues = new Map<string, { start: () => void }[]>();

async function oneAtATime<T>(key: string, deadline: Deadline, work: () => Promise<T>): Promise<T> {
  let waiting = keyQueues.get(key);
  if (waiting === undefined) {
    keyQueues.set(key, (waiting = []));
  } else {
    if (waiting.length >= maxQueuedPerKey) {
      throw new AppError("unavailable", "too many concurrent requests for the same session; retry shortly");
    }
    const queue = waiting;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        queue.splice(queue.indexOf(entry), 1);
        reject(deadlineError(deadline, new Error("timed out waiting for the same row")));
      }, Math.max(0, deadline.at - Date.now()));
      const entry = {
        start: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      queue.push(entry);
    });
  }
  try {
    return await work();
  } finally {
    const next = waiting.shift();
    if (next === undefined) keyQueues.delete(key);
    else next.start();
  }
}

async function runTransaction<T>(
  pool: Pool,
  deadline: Deadline,
  work: (conn: PoolConnection) => Promise<T>,
  serializeOn: string | undefined,
  isolation: TransactionOptions["isolation"],
): Promise<T> {
  return retryingLocks(deadline, () =>
    withConnection(pool, deadline, async (conn) => {
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
    }),
  );
}

/**
 * Runs `attempt` again after a deadlock or a lock-wait timeout, at most `maxAttempts` times in all
 * and only while another full lock wait fits in the deadline; any other error, or the last, is
 * translated and thrown.
 */
async function retryingLocks<T>(deadline: Deadline, attempt: () => Promise<T>): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (err) {
      const fitsAnotherWait = deadline.at - Date.now() > lockWaitTimeoutSeconds * 1000;
      if (isRetryable(err) && n < maxAttempts && fitsAnotherWait) continue;
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
async function takeNamedLock(conn: PoolConnection, key: string, deadline: Deadline): Promise<void> {
  const waitSeconds = Math.max(0, Math.min(lockWaitTimeoutSeconds, Math.floor((deadline.at - Date.now()) / 1000)));
  const [rows] = await conn.query<RowDataPacket[]>("SELECT GET_LOCK(?, ?) AS got", [namedLock(key), waitSeconds]);
  if (rows[0]?.got !== 1) throw unavailable(new Error("timed out waiting for a named lock"));
}

/** Runs `work` on a pooled connection within the current operation's deadline, translating driver errors. */
export async function withPooledConnection<T>(pool: Pool, work: (conn: PoolConnection) => Promise<T>): Promise<T> {
  try {
    return await withConnection(pool, operationDeadline(), work);
  } catch (err) {
    throw translateDriverError(err);
  }
}

/** Runs one statement outside a transaction, translating driver errors. */
export function query<T>(pool: Pool, sql: string, params: unknown[] = []): Promise<T> {
  return withPooledConnection(pool, async (conn) => (await conn.query(sql, params))[0] as T);
}

/**
 * What readiness needs to know of the database, within `timeoutMs`: whether it answers, and whether
 * it takes writes (a read-only server, a replica or a primary during failover, answers reads only).
 */
export async function probeDatabase(pool: Pool, timeoutMs: number): Promise<"writable" | "read_only" | "unreachable"> {
  try {
    const [rows] = await withConnection(pool, { at: Date.now() + timeoutMs, isClients: false }, (conn) =>
      conn.query<RowDataPacket[]>("SELECT @@GLOBAL.read_only AS ro"),
    );
    return Number(rows[0]?.ro) === 0 ? "writable" : "read_only";
  } catch {
    return "unreachable";
  }
}
