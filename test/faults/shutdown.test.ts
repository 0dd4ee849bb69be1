import { spawn, type ChildProcess } from "node:child_process";
import type { RowDataPacket } from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseNumberedRefreshToken } from "../../src/domain/refresh-tokens.js";
import {
  call, createSession, directConnection, eventually, faultDatabase, globalStatus, refreshSession, startFaultApp,
} from "./helpers/app.js";
import { startFaultProxy, type FaultProxy } from "./helpers/fault-proxy.js";
import { freePort, startPrivateMariaDb, type PrivateMariaDb } from "./helpers/private-mariadb.js";

/**
 * SIGTERM to the real server process (src/main.ts) while refreshes are in flight. They are held in
 * flight by row locks the test holds (not by timing), until the server has stopped accepting.
 */

let db: PrivateMariaDb;
let proxy: FaultProxy;
let child: ChildProcess | undefined;

beforeAll(async () => {
  db = await startPrivateMariaDb();
  proxy = await startFaultProxy(db.port);
});
afterAll(async () => {
  child?.kill("SIGKILL");
  await proxy?.close();
  await db?.destroy();
});

describe("graceful shutdown", () => {
  it("goes not-ready, stops accepting, finishes in-flight refreshes, exits 0; nothing half-done", async () => {
    // Sessions to refresh, made by an in-process instance on the same database.
    const seed = await startFaultApp(proxy.port);
    const tenant = { tenantId: seed.tenantId };
    const tokens: string[] = [];
    const sessionIds: string[] = [];
    for (let i = 0; i < 8; i++) {
      const created = (await createSession(seed, `usr_shutdown_${i}`)).json!;
      tokens.push(created.refresh_token);
      sessionIds.push(created.session.id);
    }
    await seed.close();

    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const drainDelayMs = 1_000;
    child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
      env: {
        ...process.env,
        NODE_ENV: "test",
        PORT: String(port),
        HOST: "127.0.0.1",
        LOG_LEVEL: "silent",
        DATABASE_URL: `mysql://root@127.0.0.1:${proxy.port}/${faultDatabase}`,
        RATE_LIMIT_REFRESH_PER_MINUTE: "0",
        SHUTDOWN_DRAIN_DELAY_MS: String(drainDelayMs),
        SHUTDOWN_TIMEOUT_MS: "10000",
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<number | null>((resolve) => child!.once("exit", (code) => resolve(code)));
    await eventually(async () => (await call(url, "GET", "/readyz", { timeoutMs: 1_000 })).status === 200, 20_000);

    // What the readiness probe sends to the database: the statements every one of a few ready
    // answers sent (anything else running meanwhile, such as a key reload, is not in all of them).
    const probeTexts = await probeStatements(url);
    expect(probeTexts.size, "the readiness probe was seen").toBeGreaterThan(0);

    // The sessions' rows are held by another transaction: each refresh gets as far as the database
    // and waits there, in flight, until they are released (well within one 2 s lock wait and retry).
    const db1 = await directConnection(db.port);
    const db2 = await directConnection(db.port);
    try {
      await db1.beginTransaction();
      await db1.query("SELECT id FROM sessions WHERE tenant_id = ? AND id IN (?) FOR UPDATE", [tenant.tenantId, sessionIds]);
      let pending = 0;
      const sending = proxy.recordQueries();
      const inFlight = tokens.map(async (token) => {
        pending++;
        const res = await refreshSession({ url, ...tenant }, token);
        pending--;
        return res;
      });
      // Every rotation has been sent (refreshes of one moment share a statement batch, whose
      // rotations wait on the locks one after another), and the database is holding one back.
      const rotationsSent = () => sending.texts.join("\n").split("UPDATE sessions SET last_active_at").length - 1;
      await eventually(async () => rotationsSent() === tokens.length && (await globalStatus(db2, "Innodb_row_lock_current_waits")) >= 1, 10_000, 10);
      sending.stop();
      const signalledAt = performance.now();
      child.kill("SIGTERM");

      // During the drain delay the port still answers, but not ready (once the signal is handled)...
      await eventually(async () => (await call(url, "GET", "/readyz", { timeoutMs: 1_000 })).status === 503, 10_000, 10);
      const recording = proxy.recordQueries();
      const ready = await call(url, "GET", "/readyz", { timeoutMs: 1_000 });
      const sent = recording.stop();
      expect(ready.status, `${ready.error} after ${ready.ms} ms; ${stderr}`).toBe(503);
      // ...answered from the drain flag, without probing the database (which would say ready).
      expect(sent.filter((sql) => probeTexts.has(sql))).toEqual([]);
      expect(pending).toBe(tokens.length);
      // Then it stops accepting, while the in-flight refreshes are still running.
      await eventually(async () => (await call(url, "GET", "/healthz", { timeoutMs: 500 })).status === 0, 10_000, 10);
      // Not before the drain delay (a sleep in the server: this cannot fail for being slow).
      expect(performance.now() - signalledAt).toBeGreaterThanOrEqual(drainDelayMs - 100);
      expect(pending).toBe(tokens.length);
      await db1.rollback();

      const results = await Promise.all(inFlight);
      expect(await exited, stderr).toBe(0);
      for (const res of results) expect(res.status, JSON.stringify(res.json)).toBe(200); // all of them finished within the grace period
      expect(pending).toBe(0);

      // Each refresh either committed and was answered (its new token is the live one) or did not commit.
      for (const [i, res] of results.entries()) {
        const [[row]] = await db2.query<RowDataPacket[]>("SELECT refresh_generation AS live FROM sessions WHERE tenant_id = ? AND id = ?", [
          tenant.tenantId,
          sessionIds[i],
        ]);
        const expected = res.status === 200 ? (res.json!.refresh_token as string) : tokens[i]!;
        expect(row!.live).toBe(parseNumberedRefreshToken(expected)!.generation);
      }
    } finally {
      await db1.end();
      await db2.end();
    }
  });
});

/** The statements sent to the database by each of three ready answers, that all three sent. */
async function probeStatements(url: string): Promise<Set<string>> {
  let common: Set<string> | undefined;
  for (let i = 0; i < 3; i++) {
    const recording = proxy.recordQueries();
    const ready = await call(url, "GET", "/readyz", { timeoutMs: 5_000 });
    const sent = new Set(recording.stop());
    expect(ready.status).toBe(200);
    common = common === undefined ? sent : new Set([...common].filter((sql) => sent.has(sql)));
  }
  return common!;
}
