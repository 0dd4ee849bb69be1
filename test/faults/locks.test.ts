import type { Connection } from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AppError } from "../../src/domain/errors.js";
import { inTransaction } from "../../src/store/db.js";
import { createSession, directConnection, refreshSession, revokeSession, startFaultApp, type FaultApp } from "./helpers/app.js";
import { startPrivateMariaDb, type PrivateMariaDb } from "./helpers/private-mariadb.js";

/**
 * Row-lock waits and deadlocks. Lock waits give up after 2 s and are retried while another full
 * wait fits in the 5 s operation budget: a lock held for good gives 503 after ~4 s, not 3 × 50 s.
 */

let db: PrivateMariaDb;
let svc: FaultApp;
let side: Connection;

beforeAll(async () => {
  db = await startPrivateMariaDb();
  svc = await startFaultApp(db.port);
  side = await directConnection(db.port);
});
afterAll(async () => {
  await side?.end();
  await svc?.close();
  await db?.destroy();
});

/** Holds the session's row lock from another connection, as a stuck transaction would. */
async function holdRowLock(sessionId: string): Promise<() => Promise<void>> {
  await side.beginTransaction();
  await side.query("SELECT id FROM sessions WHERE tenant_id = ? AND id = ? FOR UPDATE", [svc.tenantId, sessionId]);
  return () => side.rollback();
}

describe("a row lock held by someone else", () => {
  it("refresh and revoke of that session end with 503 unavailable in about two lock waits", async () => {
    const created = (await createSession(svc, "usr_locked")).json!;
    const release = await holdRowLock(created.session.id);
    try {
      const [refresh, revoke] = await Promise.all([
        refreshSession(svc, created.refresh_token),
        revokeSession(svc, created.session.id),
      ]);
      for (const res of [refresh, revoke]) {
        expect(res.status).toBe(503);
        expect(res.json?.error.code).toBe("unavailable");
        expect(res.ms).toBeGreaterThan(3_500); // two 2 s waits...
        expect(res.ms).toBeLessThan(5_500); // ...and not a third, nor InnoDB's 50 s
      }
    } finally {
      await release();
    }
    // Nothing happened to the session, and it works again once the lock is gone.
    const refreshed = await refreshSession(svc, created.refresh_token);
    expect(refreshed.status).toBe(200);
    expect((await revokeSession(svc, created.session.id)).status).toBe(204);
  });

  it("a lock released during the wait lets the call through", async () => {
    const created = (await createSession(svc, "usr_briefly_locked")).json!;
    const release = await holdRowLock(created.session.id);
    setTimeout(() => void release(), 500);
    const res = await refreshSession(svc, created.refresh_token);
    expect(res.status).toBe(200);
    expect(res.ms).toBeLessThan(2_000);
  });
});

describe("deadlocks", () => {
  it("a real deadlock is retried and the retry commits", async () => {
    const { pool } = svc.services;
    await side.query("CREATE TABLE IF NOT EXISTS deadlock_probe (id INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB");
    await side.query("REPLACE INTO deadlock_probe VALUES (1, 0), (2, 0)");
    let attempts = 0;
    let isSideVictim = false;
    const started = performance.now();
    const done = inTransaction(pool, async (conn) => {
      attempts++;
      await conn.query("UPDATE deadlock_probe SET n = n + 1 WHERE id = 1");
      if (attempts === 1) {
        // The side transaction takes row 2, then waits for row 1; we then ask for row 2: a cycle.
        await side.beginTransaction();
        await side.query("UPDATE deadlock_probe SET n = n + 10 WHERE id = 2");
        const sideWaits = side.query("UPDATE deadlock_probe SET n = n + 10 WHERE id = 1").then(() => side.commit());
        await new Promise((r) => setTimeout(r, 200));
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
    expect(performance.now() - started).toBeLessThan(3_000);
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
