import { spawn, type ChildProcess } from "node:child_process";
import type { RowDataPacket } from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  call, createSession, directConnection, eventually, faultDatabase, hashSecret, refreshSession, startFaultApp,
} from "./helpers/app.js";
import { startFaultProxy, type FaultProxy } from "./helpers/fault-proxy.js";
import { freePort, startPrivateMariaDb, type PrivateMariaDb } from "./helpers/private-mariadb.js";

/** SIGTERM to the real server process (src/main.ts) while refreshes are in flight. */

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
    for (let i = 0; i < 8; i++) tokens.push((await createSession(seed, `usr_shutdown_${i}`)).json!.refresh_token);
    await seed.close();

    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
      env: {
        ...process.env,
        NODE_ENV: "test",
        PORT: String(port),
        HOST: "127.0.0.1",
        LOG_LEVEL: "silent",
        DATABASE_URL: `mysql://root@127.0.0.1:${proxy.port}/${faultDatabase}`,
        RATE_LIMIT_REFRESH_PER_MINUTE: "0",
        SHUTDOWN_DRAIN_DELAY_MS: "1000",
        SHUTDOWN_TIMEOUT_MS: "10000",
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<number | null>((resolve) => child!.once("exit", (code) => resolve(code)));
    await eventually(async () => (await call(url, "GET", "/readyz", { timeoutMs: 1_000 })).status === 200, 20_000);

    // Every database round trip now takes ~300 ms: a refresh takes a couple of seconds.
    proxy.setLatency(150);
    let pending = 0;
    const inFlight = tokens.map(async (token) => {
      pending++;
      const res = await refreshSession({ url, ...tenant }, token);
      pending--;
      return res;
    });
    await new Promise((r) => setTimeout(r, 300));
    const signalledAt = performance.now();
    child.kill("SIGTERM");

    // During the drain delay the port still answers, but not ready (once the signal is handled).
    await new Promise((r) => setTimeout(r, 100));
    const ready = await call(url, "GET", "/readyz", { timeoutMs: 1_000 });
    expect(ready.ms).toBeLessThan(200); // answered from the flag, not by probing the (slow) database
    expect(ready.status, `${ready.error} after ${ready.ms} ms; ${stderr}`).toBe(503);
    expect(pending).toBeGreaterThan(0);
    // Then it stops accepting, while the in-flight refreshes are still running.
    await eventually(async () => (await call(url, "GET", "/healthz", { timeoutMs: 500 })).status === 0, 5_000, 50);
    expect(performance.now() - signalledAt).toBeGreaterThanOrEqual(900);
    expect(pending).toBeGreaterThan(0);

    const results = await Promise.all(inFlight);
    expect(await exited, stderr).toBe(0);
    proxy.setLatency(0);
    for (const res of results) expect(res.status).toBe(200); // all of them finished within the grace period

    // Each refresh either committed and was answered (its new token is the live one) or did not commit.
    const conn = await directConnection(db.port);
    try {
      for (const [i, res] of results.entries()) {
        const [[row]] = await conn.query<RowDataPacket[]>(
          `SELECT s.refresh_token_hash AS live FROM refresh_tokens t JOIN sessions s ON s.tenant_id = t.tenant_id AND s.id = t.session_id
            WHERE t.tenant_id = ? AND t.token_hash = ?`,
          [tenant.tenantId, hashSecret(tokens[i]!)],
        );
        const expected = res.status === 200 ? (res.json!.refresh_token as string) : tokens[i]!;
        expect(Buffer.compare(row!.live as Buffer, hashSecret(expected))).toBe(0);
      }
    } finally {
      await conn.end();
    }
  });
});
