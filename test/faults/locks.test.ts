import type { Connection } from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AppError } from "../../src/domain/errors.js";
import { inTransaction } from "../../src/store/db.js";
import {
  createSession, directConnection, eventually, globalStatus, refreshSession, revokeSession, startFaultApp, type FaultApp,
} from "./helpers/app.js";
import { startPrivateMariaDb, type PrivateMariaDb } from "./helpers/private-mariadb.js";

/**
 * Row-lock waits and deadlocks. Lock waits give up after 2 s and are retried while another full
 * wait fits in the 5 s operation budget: a lock held for good gives 503 after two waits, not 3 × 50 s.
 *
 * What happened is counted on the server (SHOW GLOBAL STATUS of this test's own MariaDB, where
 * nothing else runs), not timed: transactions begun (Com_begin: one per transaction attempt), row-lock waits
 * begun (Innodb_row_lock_waits), waits in progress (Innodb_row_lock_current_waits), deadlocks.
 */

let db: PrivateMariaDb;
let svc: FaultApp;
/** Holds locks, as a stuck transaction would. */
let side: Connection;
/** Reads the server's counters, never blocked behind `side`. */
let observer: Connection;

beforeAll(async () => {
  db = await startPrivateMariaDb();
  svc = await startFaultApp(db.port);
  side = await directConnection(db.port);
  observer = await directConnection(db.port);
});
afterAll(async () => {
  await side?.end();
  await observer?.end();
  await svc?.close();
  await db?.destroy();
});

const counter = (name: string) => () => globalStatus(observer, name);
const transactionsBegun = counter("Com_begin");
const lockWaitsBegun = counter("Innodb_row_lock_waits");
const lockWaitsNow = counter("Innodb_row_lock_current_waits");
const deadlocks = counter("Innodb_deadlocks");

/** Holds the session's row lock from another connection, as a stuck transaction would. */
async function holdRowLock(sessionId: string): Promise<() => Promise<void>> {
  await side.beginTransaction();
  await side.query("SELECT id FROM sessions WHERE tenant_id = ? AND id = ? FOR UPDATE", [svc.tenantId, sessionId]);
  return () => side.rollback();
}

describe("a row lock held by someone else", () => {
  it("refresh and revoke of that session end with 503 unavailable after two lock waits each", async () => {
    const created = (await createSession(svc, "usr_locked")).json!;
    const release = await holdRowLock(created.session.id);
    try {
      // One call at a time, so each one's waits are its own.
      for (const [call, isTransaction] of [
        [() => refreshSession(svc, created.refresh_token), false],
        [() => revokeSession(svc, created.session.id), true],
      ] as const) {
        const [beginsBefore, waitsBefore] = [await transactionsBegun(), await lockWaitsBegun()];
        const res = await call();
        // It answered while the lock is still held (it is released below): it gave up on it.
        expect(res.status, `${res.error ?? ""} ${JSON.stringify(res.json)}`).toBe(503);
        expect(res.json?.error.code).toBe("unavailable");
        // An attempt that waited for the lock until the lock-wait timeout, one retry that did the
        // same, and no third (it would not fit in the budget); InnoDB's 50 s wait would have been one
        // wait, cut short by the budget. The revoke is a transaction (begun twice); the refresh is
        // guarded single statements, no transaction.
        expect(await lockWaitsBegun() - waitsBefore, "lock waits").toBe(2);
        expect(await transactionsBegun() - beginsBefore, "transactions begun").toBe(isTransaction ? 2 : 0);
      }
    } finally {
      await release();
    }
    // Nothing happened to the session, and it works again once the lock is gone.
    const refreshed = await refreshSession(svc, created.refresh_token);
    expect(refreshed.status).toBe(200);
    expect((await revokeSession(svc, created.session.id)).status).toBe(204);
  });

  it("a lock released during the wait lets the call through on its first attempt", async () => {
    const created = (await createSession(svc, "usr_briefly_locked")).json!;
    const release = await holdRowLock(created.session.id);
    const waitsBefore = await lockWaitsBegun();
    const refreshing = refreshSession(svc, created.refresh_token);
    try {
      // The refresh is waiting for the lock: release it then (well within the 2 s lock wait).
      await eventually(async () => (await lockWaitsNow()) === 1, 10_000, 10);
    } finally {
      await release();
    }
    const res = await refreshing;
    expect(res.status).toBe(200);
    // One lock wait: it ended with the lock granted, not with a timeout and a retry.
    expect(await lockWaitsBegun() - waitsBefore).toBe(1);
  });
});

describe("deadlocks", () => {
  it("a real deadlock is detected at once, retried, and the retry commits", async () => {
    const { pool } = svc.services;
    await side.query("CREATE TABLE IF NOT EXISTS deadlock_probe (id INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB");
    await side.query("REPLACE INTO deadlock_probe VALUES (1, 0), (2, 0)");
    const deadlocksBefore = await deadlocks();
    let attempts = 0;
    let isSideVictim = false;
    const done = inTransaction(pool, async (conn) => {
      attempts++;
      await conn.query("UPDATE deadlock_probe SET n = n + 1 WHERE id = 1");
      if (attempts === 1) {
        // The side transaction takes row 2, then waits for row 1; we then ask for row 2: a cycle.
        await side.beginTransaction();
        await side.query("UPDATE deadlock_probe SET n = n + 10 WHERE id = 2");
        const sideWaits = side.query("UPDATE deadlock_probe SET n = n + 10 WHERE id = 1").then(() => side.commit());
        await eventually(async () => (await lockWaitsNow()) === 1, 10_000, 10);
        try {
          await conn.query("UPDATE deadlock_probe SET n = n + 1 WHERE id = 2");
        } finally {
          void sideWaits.catch(() => {
            isSideVictim = true;
            return side.rollback();
          });
        }
      } else {
        await conn.query("UPDATE deadlock_probe SET n = n + 1 WHERE id = 2");
      }
      return attempts;
    });
    // InnoDB rolls back one of the two; whichever it is, the other commits and the retry (if ours) succeeds.
    await expect(done).resolves.toBeGreaterThanOrEqual(1);
    // Found as a deadlock (at once), not ended by a lock-wait timeout.
    expect(await deadlocks() - deadlocksBefore).toBe(1);
    expect(attempts === 2 || isSideVictim).toBe(true);
    const [rows] = await side.query("SELECT id, n FROM deadlock_probe ORDER BY id");
    expect((rows as { n: number }[]).every((r) => r.n >= 1)).toBe(true);
  });

  it("retries stop after three attempts with unavailable", async () => {
    let attempts = 0;
    const err = await inTransaction(svc.services.pool, async () => {
      attempts++;
      throw Object.assign(new Error("Deadlock found when trying to get lock"), { errno: 1213, code: "ER_LOCK_DEADLOCK" });
    }).catch((e: unknown) => e);
    expect(attempts).toBe(3);
    expect(err).toBeInstanceOf(AppError);
    expect((err as AppError).code).toBe("unavailable");
  });
});
