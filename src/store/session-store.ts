import { createHash } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import DataLoader from "dataloader";
import type { ResultSetHeader, RowDataPacket } from "mysql2/promise";
import { cancellationCheck, throwIfCancelled, withoutCall } from "../domain/call-context.js";
import { AppError } from "../domain/errors.js";
import {
  isRevokeReason,
  scheduledEndOf,
  type DeviceType,
  type EndReason,
  type RecordedEnd,
  type Session,
  type SessionEndState,
} from "../domain/model.js";
import type {
  ListQuery,
  NumberedRefreshDecider,
  NumberedRefreshResult,
  RefreshDecider,
  RefreshDecision,
  RefreshError,
  RefreshResult,
  RevokeFilter,
  Revocation,
  SessionStore,
} from "../domain/ports.js";
import type { RefreshChain } from "../domain/refresh-tokens.js";
import {
  callersGone,
  inTransaction,
  isDuplicateKey,
  oneAtATimeOn,
  query,
  text,
  withPooledConnection,
  type Pool,
  type Statement,
  type WaitingCaller,
} from "./db.js";

/**
 * How a session's end is stored (migration 0003): `state` says whether an end is recorded and of
 * which kind, `ends_at` when the session ends or ended. The rule itself (endOf, scheduledEndOf)
 * lives in the domain; the SQL conditions below are its mirror for queries, and the storage
 * contract test checks that the two agree.
 */
const state = { open: 0, endedByTime: 1, revoked: 2 } as const;

const stateOf = (reason: EndReason) => (isRevokeReason(reason) ? state.revoked : state.endedByTime);

/** SQL for each status at `?` = now. */
const statusCondition = {
  active: `state = ${state.open} AND ends_at > ?`,
  expired: `(state = ${state.endedByTime} OR (state = ${state.open} AND ends_at <= ?))`,
  revoked: `state = ${state.revoked}`,
} as const;
const usesNow = (status: keyof typeof statusCondition) => status !== "revoked";

const columnNames = [
  "tenant_id", "id", "user_id", "user_agent", "ip_address", "country", "device_type", "role", "org_id",
  "mfa_verified", "created_at", "last_active_at", "expires_at", "idle_expires_at", "state", "ends_at",
  "end_reason", "ended_by",
] as const;
const columns = columnNames.join(", ");
const sessionColumnsOf = (alias: string) => columnNames.map((c) => `${alias}.${c}`).join(", ");

interface EndRow extends RowDataPacket {
  expires_at: Date;
  idle_expires_at: Date | null;
  state: number;
  ends_at: Date;
  end_reason: string | null;
  ended_by: string | null;
}

interface SessionRow extends EndRow {
  tenant_id: Buffer;
  id: Buffer;
  user_id: Buffer;
  user_agent: string;
  ip_address: string;
  country: string;
  device_type: string;
  role: string;
  org_id: string | null;
  mfa_verified: number;
  created_at: Date;
  last_active_at: Date;
}

/** A presented refresh token, as found: the session's live token, or a token it rotated away. */
interface RefreshRow extends SessionRow {
  presented_hash: Buffer;
  /** When it was rotated away; null for the live token. */
  t_rotated_at: Date | null;
  /** Its successor; null for the live token. */
  t_successor_hash: Buffer | null;
  live_hash: Buffer;
}

/** A session with the chain of its numbered refresh tokens (null generation: a legacy session). */
interface ChainRow extends SessionRow {
  refresh_generation: number | null;
  refresh_nonce: Buffer | null;
  refresh_rotated_at: Date | null;
}

function toEndState(row: EndRow): SessionEndState {
  const recordedEnd: RecordedEnd | null =
    row.state === state.open ? null : { at: row.ends_at, reason: (row.end_reason ?? "revoked") as EndReason, by: row.ended_by };
  return { expiresAt: row.expires_at, idleExpiresAt: row.idle_expires_at, recordedEnd };
}

function toSession(row: SessionRow): Session {
  return {
    tenantId: text(row.tenant_id),
    id: text(row.id),
    userId: text(row.user_id),
    userAgent: row.user_agent,
    ipAddress: row.ip_address,
    country: row.country,
    deviceType: row.device_type as DeviceType,
    role: row.role,
    orgId: row.org_id,
    isMfaVerified: row.mfa_verified === 1,
    createdAt: row.created_at,
    lastActiveAt: row.last_active_at,
    ...toEndState(row),
  };
}

/** Ends sessions: the revoke statement every revoking path uses, for the WHERE it is given. */
const revokeSql = (where: string) =>
  `UPDATE sessions SET state = ${state.revoked}, ends_at = ?, end_reason = ?, ended_by = ? WHERE ${where}`;
const revokeParams = ({ now, reason, by }: Revocation) => [now, reason, by];

interface StateRow extends EndRow {
  id: Buffer;
}

const insertSessionsSql = `INSERT INTO sessions (tenant_id, id, user_id, user_agent, ip_address, country, device_type, role, org_id,
                      mfa_verified, created_at, last_active_at, expires_at, idle_expires_at, state, ends_at, refresh_token_hash,
                      refresh_generation, refresh_nonce)
VALUES ?`;

/** Most sessions one INSERT carries. */
const maxInsertBatch = 64;

/** One create's row. */
interface InsertRequest extends WaitingCaller {
  row: unknown[];
}

/**
 * Session inserts, batched: the creates asked for in the same event-loop turn share one multi-row
 * INSERT, one statement and one commit for all (a third of the database's work per session). Each
 * call is answered once the statement has committed. A call whose client went away while the batch
 * waited for a connection is left out of it. Should the statement fail on one row's duplicate key,
 * every row is tried again on its own, so that row's call alone fails.
 */
function batchedInserts(pool: Pool): DataLoader<InsertRequest, true> {
  return new DataLoader<InsertRequest, true>(
    (requests) =>
      withoutCall(() =>
        withPooledConnection(pool, async (conn) => {
          const outcomes = callersGone(requests).map((gone): true | Error => gone ?? true);
          const rows = requests.filter((_, i) => outcomes[i] === true).map((r) => r.row);
          if (rows.length === 0) return outcomes;
          try {
            await conn.query(insertSessionsSql, [rows]);
            return outcomes;
          } catch (err) {
            if (rows.length === 1 || !isDuplicateKey(err)) throw err;
          }
          for (const [i, r] of requests.entries()) {
            if (outcomes[i] !== true) continue;
            outcomes[i] = await conn.query(insertSessionsSql, [[r.row]]).then(
              () => true as const,
              (err: unknown) => (err instanceof Error ? err : new Error(String(err))),
            );
          }
          return outcomes;
        }),
      ),
    { cache: false, maxBatchSize: maxInsertBatch, batchScheduleFn: (run) => setImmediate(run) },
  );
}

/** Sessions one revoke-all statement touches at most: a short transaction that locks only them. */
const revokeBatchSize = 500;
/** How long a bulk revoke that has begun keeps retrying a batch that fails for a passing reason. */
const bulkRetryBudgetMs = 30_000;

/** Most single-session reads one query may carry; bounds the IN list. */
const maxStateBatch = 100;

/** A batch's keys, grouped by tenant: one query per tenant serves them. */
function groupByTenant<K>(keys: readonly (readonly [string, K])[]): Map<string, K[]> {
  const byTenant = new Map<string, K[]>();
  for (const [tenantId, key] of keys) {
    const group = byTenant.get(tenantId);
    if (group) group.push(key);
    else byTenant.set(tenantId, [key]);
  }
  return byTenant;
}

/**
 * Reads of single sessions by primary key, batched: the reads asked for in the same event-loop turn
 * share one query per tenant. Nothing is cached: every read is answered by a query sent after it was
 * asked, so it sees every write committed before the call began.
 */
function batchedReads<Row extends { id: Buffer }, T>(pool: Pool, columns: string, convert: (row: Row) => T): DataLoader<readonly [string, string], T | null, string> {
  return new DataLoader<readonly [string, string], T | null, string>(
    async (keys) => {
      const found = new Map<string, T>();
      await Promise.all(
        [...groupByTenant(keys)].map(async ([tenantId, ids]) => {
          // The batch serves many calls: no one caller's deadline may cut it short.
          const rows = await withoutCall(() => query<Row[]>(pool, `SELECT ${columns} FROM sessions WHERE tenant_id = ? AND id IN (?)`, [tenantId, ids]));
          for (const r of rows) found.set(`${tenantId}\0${text(r.id)}`, convert(r));
        }),
      );
      return keys.map(([tenantId, id]) => found.get(`${tenantId}\0${id}`) ?? null);
    },
    // setImmediate gathers every call parsed in the same event-loop turn into one batch.
    { cache: false, maxBatchSize: maxStateBatch, batchScheduleFn: (run) => setImmediate(run) },
  );
}

/**
 * Refresh-token lookups, batched like batchedReads: the tokens presented in the same event-loop turn
 * are found by one query per tenant (two when some are not live). The live token is the session's own (found by
 * sessions_by_refresh_token); a rotated one has its row in refresh_tokens. A token that is both (a
 * row from before migration 0004 that no rotation has completed) is the live one.
 */
function batchedRefreshReads(pool: Pool): DataLoader<readonly [string, Buffer], RefreshRow | null, string> {
  return new DataLoader<readonly [string, Buffer], RefreshRow | null, string>(
    async (keys) => {
      const found = new Map<string, RefreshRow>();
      await Promise.all(
        [...groupByTenant(keys)].map(async ([tenantId, hashes]) => {
          // Live tokens first (the common case: one index probe each); only the tokens not found
          // there are looked for among rotated ones.
          const live = await withoutCall(() =>
            query<RefreshRow[]>(
              pool,
              `SELECT ${sessionColumnsOf("s")}, s.refresh_token_hash AS presented_hash, NULL AS t_rotated_at, NULL AS t_successor_hash, s.refresh_token_hash AS live_hash
                 FROM sessions s
                WHERE s.tenant_id = ? AND s.refresh_token_hash IN (?)`,
              [tenantId, hashes],
            ),
          );
          const keyOf = (hash: Buffer) => `${tenantId}\0${hash.toString("hex")}`;
          for (const r of live) found.set(keyOf(r.presented_hash), r);
          const rest = hashes.filter((hash) => !found.has(keyOf(hash)));
          if (rest.length === 0) return;
          const rotated = await withoutCall(() =>
            query<RefreshRow[]>(
              pool,
              `SELECT ${sessionColumnsOf("s")}, t.token_hash AS presented_hash, t.rotated_at AS t_rotated_at, t.successor_hash AS t_successor_hash, s.refresh_token_hash AS live_hash
                 FROM refresh_tokens t
                 JOIN sessions s ON s.tenant_id = t.tenant_id AND s.id = t.session_id
                WHERE t.tenant_id = ? AND t.token_hash IN (?) AND t.rotated_at IS NOT NULL`,
              [tenantId, rest],
            ),
          );
          for (const r of rotated) found.set(keyOf(r.presented_hash), r);
        }),
      );
      return keys.map(([tenantId, hash]) => found.get(`${tenantId}\0${hash.toString("hex")}`) ?? null);
    },
    { cache: false, maxBatchSize: maxStateBatch, batchScheduleFn: (run) => setImmediate(run) },
  );
}

export function createSessionStore(pool: Pool): SessionStore {
  // Verify reads only what decides a session's status; GetSession the whole row.
  const stateLoader = batchedReads<StateRow, SessionEndState>(pool, "id, expires_at, idle_expires_at, state, ends_at, end_reason, ended_by", toEndState);
  const sessionLoader = batchedReads<SessionRow, Session>(pool, columns, toSession);
  const inserts = batchedInserts(pool);
  const refreshReads = batchedRefreshReads(pool);
  const chainLoader = batchedReads<ChainRow, ChainRow>(pool, `${columns}, refresh_generation, refresh_nonce, refresh_rotated_at`, (row) => row);

  return {
    async insertSession(s, firstToken, cap) {
      // refresh_token_hash (unique, not null) serves legacy tokens only: a numbered session's holds
      // the SHA-256 of its nonce, which is unique and which no token hashes to.
      const refresh = "nonce" in firstToken ? [createHash("sha256").update(firstToken.nonce).digest(), 0, firstToken.nonce] : [firstToken.legacyHash, null, null];
      const row = [s.tenantId, s.id, s.userId, s.userAgent, s.ipAddress, s.country, s.deviceType, s.role, s.orgId,
        s.isMfaVerified, s.createdAt, s.lastActiveAt, s.expiresAt, s.idleExpiresAt, state.open, scheduledEndOf(s).at, ...refresh];
      // One row: the session holds its live refresh token (refresh_tokens keeps a legacy session's rotated ones).
      if (cap === null) {
        throwIfCancelled();
        await inserts.load({ row, checkCaller: cancellationCheck() });
        return;
      }
      await inTransaction(pool, async (conn) => {
        // Under the user's named lock (below), so concurrent creates for one user queue instead of
        // deadlocking on each other's gap locks; FOR UPDATE keeps revokes of these rows out.
        const [active] = await conn.query<RowDataPacket[]>(
          `SELECT id FROM sessions WHERE tenant_id = ? AND user_id = ? AND ${statusCondition.active}
            ORDER BY created_at, id FOR UPDATE`,
          [s.tenantId, s.userId, s.createdAt],
        );
        const excess = active.slice(0, Math.max(0, active.length - cap + 1)).map((r) => text(r.id as Buffer));
        if (excess.length > 0) {
          await conn.query(revokeSql("tenant_id = ? AND id IN (?)"), [
            ...revokeParams({ now: s.createdAt, reason: "session_limit", by: null }),
            s.tenantId,
            excess,
          ]);
        }
        await conn.query(insertSessionsSql, [[row]]);
      }, { serializeOn: `user-cap\0${s.tenantId}\0${s.userId}` });
    },

    getSession(tenantId, id) {
      return sessionLoader.load([tenantId, id]);
    },

    getSessionEndState(tenantId, id) {
      return stateLoader.load([tenantId, id]);
    },

    /**
     * One keyset page, newest first. Each status is read as index ranges that hold only what it
     * returns: active is state 0 (less the few whose end the sweep has yet to record), revoked is
     * state 2, and expired is two ranges merged, ends recorded (state 1) and ends not yet recorded
     * (state 0 past ends_at, few while the sweep runs, found by sessions_by_end).
     */
    async listSessions(tenantId, q: ListQuery) {
      const page = (condition: string, conditionParams: unknown[]) => {
        const where = ["tenant_id = ?", condition];
        const params: unknown[] = [tenantId, ...conditionParams];
        if (q.userId !== undefined) {
          where.push("user_id = ?");
          params.push(q.userId);
        }
        if (q.after !== undefined) {
          where.push("(created_at < ? OR (created_at = ? AND id < ?))");
          params.push(q.after.createdAt, q.after.createdAt, q.after.id);
        }
        params.push(q.limit);
        return { sql: `SELECT ${columns} FROM sessions WHERE ${where.join(" AND ")} ORDER BY created_at DESC, id DESC LIMIT ?`, params };
      };
      let statement: { sql: string; params: unknown[] };
      if (q.status === "expired") {
        const recorded = page(`state = ${state.endedByTime}`, []);
        const unrecorded = page(`state = ${state.open} AND ends_at <= ?`, [q.now]);
        statement = {
          sql: `(${recorded.sql}) UNION ALL (${unrecorded.sql}) ORDER BY created_at DESC, id DESC LIMIT ?`,
          params: [...recorded.params, ...unrecorded.params, q.limit],
        };
      } else {
        statement = page(statusCondition[q.status], usesNow(q.status) ? [q.now] : []);
      }
      const rows = await query<SessionRow[]>(pool, statement.sql, statement.params);
      return rows.map(toSession);
    },

    async revokeSession(tenantId, id, revocation) {
      // A transaction of one statement, for the lock-wait and deadlock retries inTransaction gives.
      const isRevoked = await inTransaction(
        pool,
        async (conn) => {
          const [result] = await conn.query<ResultSetHeader>(
            revokeSql(`tenant_id = ? AND id = ? AND ${statusCondition.active}`),
            [...revokeParams(revocation), tenantId, id, revocation.now],
          );
          return result.affectedRows > 0;
        },
        { rowKey: `session\0${tenantId}\0${id}` },
      );
      if (isRevoked) return true;
      // Nothing changed: already ended (keeping its end as it was), or no such session.
      const rows = await query<RowDataPacket[]>(pool, "SELECT 1 FROM sessions WHERE tenant_id = ? AND id = ?", [tenantId, id]);
      return rows.length > 0;
    },

    /**
     * In batches of primary keys: a plain read finds the next active sessions by index (the
     * user's, or the tenant's by state), an UPDATE by primary key revokes them with the condition
     * checked again, and commits. Each batch is durable and locks only its own rows (no range, so
     * no gap locks holding up creates of this tenant or the next); the count is exactly the
     * sessions this call revoked. Sessions created during the call, after its `now`, are left
     * alone, so the call ends however fast others create.
     *
     * All or, as far as the database allows, all: the client's deadline and cancellation apply
     * until the first batch commits; from then on the call runs to its end even if the client has
     * gone, retrying a batch that fails for a passing reason (a lock wait, a deadlock, a lost
     * connection) for up to `bulkRetryBudgetMs`. Only a database down for longer leaves a revoke
     * half done, and its error says how many were revoked (a retry revokes the rest).
     */
    async revokeSessions(tenantId, filter: RevokeFilter, revocation) {
      const where = ["tenant_id = ?", statusCondition.active, "created_at <= ?"];
      const params: unknown[] = [tenantId, revocation.now, revocation.now];
      if (filter.userId !== undefined) {
        where.push("user_id = ?");
        params.push(filter.userId);
      }
      if (filter.exceptSessionId !== undefined) {
        where.push("id <> ?");
        params.push(filter.exceptSessionId);
      }
      let revoked = 0;
      let after: { createdAt: Date; id: string } | undefined;
      /** One batch: the next ids by index, then their revoke; whether it was the last. */
      const batch = async (): Promise<boolean> => {
        const keyset = after === undefined ? "" : " AND (created_at > ? OR (created_at = ? AND id > ?))";
        const rows = await query<RowDataPacket[]>(
          pool,
          `SELECT created_at, id FROM sessions WHERE ${where.join(" AND ")}${keyset} ORDER BY created_at, id LIMIT ${revokeBatchSize}`,
          after === undefined ? params : [...params, after.createdAt, after.createdAt, after.id],
        );
        if (rows.length === 0) return true;
        const ids = rows.map((r) => text(r.id as Buffer));
        const result = await inTransaction(pool, async (conn) => {
          const [updated] = await conn.query<ResultSetHeader>(revokeSql(`tenant_id = ? AND id IN (?) AND ${statusCondition.active}`), [
            ...revokeParams(revocation),
            tenantId,
            ids,
            revocation.now,
          ]);
          return updated.affectedRows;
        });
        // Moved on only once committed: a batch retried after a failure reads the same ids again.
        const last = rows[rows.length - 1] as RowDataPacket;
        after = { createdAt: last.created_at as Date, id: text(last.id as Buffer) };
        revoked += result;
        return rows.length < revokeBatchSize;
      };
      // Until something is committed, the client may still call it off.
      for (let isDone = false; !isDone && revoked === 0; ) {
        throwIfCancelled();
        isDone = await batch();
        if (isDone) return revoked;
      }
      // From here on, to the end, whatever the client does.
      return withoutCall(async () => {
        const giveUpAt = Date.now() + bulkRetryBudgetMs;
        for (let delayMs = 100; ; ) {
          try {
            if (await batch()) return revoked;
          } catch (err) {
            if (!(err instanceof AppError && err.code === "unavailable") || Date.now() + delayMs > giveUpAt) {
              throw new AppError("unavailable", `the database failed part-way: ${revoked} sessions were revoked and the rest were not; call again to revoke the rest`, undefined, { cause: err });
            }
            await sleep(delayMs);
            delayMs = Math.min(delayMs * 2, 2_000);
          }
        }
      });
    },

    async refresh(tenantId, presentedHash, successorHash, now, decide: RefreshDecider): Promise<RefreshResult> {
      // Refreshes of one token (a storm of tabs or retries) wait their turn in memory, not on connections.
      const rowKey = `refresh\0${tenantId}\0${presentedHash.toString("hex")}`;
      return refreshLoop(pool, rowKey, async (run) => {
        const row = await refreshReads.load([tenantId, presentedHash]);
        if (!row) return { ok: false, error: "refresh_token_invalid" };
        const session = toSession(row);
        const successor = row.t_successor_hash;
        const decision = decide(
          { rotatedAt: row.t_rotated_at, isSuccessorLive: successor !== null && successor.equals(row.live_hash), isSuccessorDerived: successor !== null && successor.equals(successorHash) },
          session,
        );
        // The live token is the presented one (rotate) or its successor (retry); a rotation makes the
        // successor live and records the presented one as rotated, with this rotation's time and
        // successor (trigger refresh_tokens_on_rotate, migration 0007).
        const live = decision.action === "rotate" ? presentedHash : successorHash;
        return applyRefresh(run, tenantId, session, decision, { guard: ["refresh_token_hash = ?", live], rotate: ["refresh_token_hash = ?, refresh_rotated_at = ?", successorHash, now] });
      });
    },

    async refreshNumbered(tenantId, token, now, decide: NumberedRefreshDecider): Promise<NumberedRefreshResult> {
      // Keyed by the token as presented, MAC included, as the legacy path is by its hash: a storm of
      // forged tokens naming a session queues apart from that session's genuine refreshes.
      const rowKey = `refresh\0${tenantId}\0${token.sessionId}\0${token.generation}\0${token.mac.toString("hex")}`;
      return refreshLoop(pool, rowKey, async (run) => {
        const row = await chainLoader.load([tenantId, token.sessionId]);
        if (!row || row.refresh_generation === null || row.refresh_nonce === null) return { ok: false, error: "refresh_token_invalid" };
        const chain: RefreshChain = { generation: row.refresh_generation, nonce: row.refresh_nonce, rotatedAt: row.refresh_rotated_at };
        const session = toSession(row);
        const decision = decide(chain, session);
        const outcome = await applyRefresh(run, tenantId, session, decision, {
          guard: ["refresh_generation = ?", chain.generation],
          rotate: ["refresh_generation = ?, refresh_rotated_at = ?", chain.generation + 1, now],
        });
        if (outcome === "changed" || !outcome.ok) return outcome;
        const after = decision.action === "rotate" ? { generation: chain.generation + 1, nonce: chain.nonce, rotatedAt: now } : chain;
        return { ok: true, session: outcome.session, chain: after };
      });
    },
  };
}

/** Reads, decides and writes again after a guarded write found its rows changed; past this, 503. */
const maxRefreshAttempts = 4;

/**
 * Read, decide, then write with one statement guarded by what was read: a write that finds the row
 * changed (another instance rotated or revoked in between) changes nothing, and the call reads and
 * decides again. A batched read and one batched statement, and no lock held while the service decides.
 */
async function refreshLoop<R extends { ok: boolean }>(pool: Pool, rowKey: string, attempt: (run: Statement) => Promise<R | "changed">): Promise<R> {
  return oneAtATimeOn(pool, rowKey, async (run) => {
    for (let i = 1; i <= maxRefreshAttempts; i++) {
      const outcome = await attempt(run);
      if (outcome !== "changed") return outcome;
    }
    throw new AppError("unavailable", "the session changed repeatedly during the refresh; retry shortly");
  });
}

/** How a refresh statement tells the live token, and moves it on: SQL with its values. */
interface TokenColumns {
  guard: [sql: string, ...values: unknown[]];
  rotate: [sql: string, ...values: unknown[]];
}

/**
 * Applies the domain's refresh decision with a single statement whose WHERE holds what the decision
 * rests on: the session open, and its live token the one the decision saw. "changed": that
 * statement matched nothing, so the row moved on since the read.
 */
async function applyRefresh(
  run: Statement,
  tenantId: string,
  session: Session,
  decision: RefreshDecision,
  { guard: [guardSql, ...guardValues], rotate: [rotateSql, ...rotateValues] }: TokenColumns,
): Promise<{ ok: true; session: Session } | { ok: false; error: RefreshError } | "changed"> {
  if (decision.action === "reject") return { ok: false, error: decision.error };
  if (decision.action === "revoke") {
    // A session that ended meanwhile stays as it ended; the answer is the same.
    await run(revokeSql("tenant_id = ? AND id = ? AND state = ?"), [
      ...revokeParams({ now: decision.at, reason: decision.reason, by: null }),
      tenantId,
      session.id,
      state.open,
    ]);
    return { ok: false, error: decision.error };
  }
  const { activeAt, idleExpiresAt } = decision;
  const endsAt = scheduledEndOf({ expiresAt: session.expiresAt, idleExpiresAt }).at;
  // A rotation moves the live token on; a retry leaves it (the successor handed out again) and only
  // the session's activity moves.
  const [moveSql, moveValues] = decision.action === "rotate" ? [`, ${rotateSql}`, rotateValues] : ["", []];
  const changed = await run<ResultSetHeader>(
    `UPDATE sessions SET last_active_at = ?, idle_expires_at = ?, ends_at = ?${moveSql}
      WHERE tenant_id = ? AND id = ? AND state = ? AND ${guardSql}`,
    [activeAt, idleExpiresAt, endsAt, ...moveValues, tenantId, session.id, state.open, ...guardValues],
  );
  // Rows matched, not rows changed (mysql2 connects with CLIENT_FOUND_ROWS).
  if (changed.affectedRows === 0) return "changed";
  return { ok: true, session: { ...session, lastActiveAt: activeAt, idleExpiresAt } };
}
