import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { call, createSession, eventually, healthCheck, ServingStatus, startFaultApp, type FaultApp } from "./helpers/app.js";
import { startFaultProxy, type FaultProxy } from "./helpers/fault-proxy.js";
import { startPrivateMariaDb, type PrivateMariaDb } from "./helpers/private-mariadb.js";

/** The database goes away under a running service, then comes back. */

let db: PrivateMariaDb;
let proxy: FaultProxy;
let svc: FaultApp;

beforeAll(async () => {
  db = await startPrivateMariaDb();
  proxy = await startFaultProxy(db.port);
  svc = await startFaultApp(proxy.port);
});
afterAll(async () => {
  await svc?.close();
  await proxy?.close();
  await db?.destroy();
});

async function expectDown() {
  const calls = [
    await createSession(svc, "usr_down"),
    await call(svc.url, "GET", "/v1/sessions?user_id=usr_down", { headers: svc.headers }),
    await call(svc.url, "POST", "/v1/auth/token/refresh", { headers: { "x-tenant-id": svc.tenantId }, body: { refresh_token: `rt_${"a".repeat(43)}` } }),
  ];
  for (const res of calls) {
    expect(res.status).toBe(503);
    expect(res.json?.error).toMatchObject({ code: "unavailable", status: 503 });
    expect(res.ms).toBeLessThan(2_000);
  }
  expect((await call(svc.url, "GET", "/readyz")).status).toBe(503);
  expect(await healthCheck(svc.url)).toBe(ServingStatus.NOT_SERVING);
  // The process itself is fine: liveness and the JWKS (served from memory) still answer.
  expect((await call(svc.url, "GET", "/healthz")).status).toBe(200);
  expect((await call(svc.url, "GET", "/.well-known/jwks.json")).status).toBe(200);
}

async function expectRecovered() {
  // No restart of the app: the pool reconnects by itself once the database answers.
  await eventually(async () => (await createSession(svc, "usr_back")).status === 201, 15_000);
  expect((await call(svc.url, "GET", "/readyz")).status).toBe(200);
  expect(await healthCheck(svc.url)).toBe(ServingStatus.SERVING);
}

describe("database down", () => {
  it("serves normally first", async () => {
    expect((await createSession(svc, "usr_up")).status).toBe(201);
    expect(await healthCheck(svc.url)).toBe(ServingStatus.SERVING);
  });

  it("connections refused: fast 503 unavailable, not ready, NOT_SERVING; recovers by itself", async () => {
    proxy.setMode("refuse");
    await expectDown();
    proxy.setMode("pass");
    await expectRecovered();
  });

  it("the server stopped: the same, and recovers once it is started again", async () => {
    await db.stop();
    await expectDown();
    await db.start();
    await expectRecovered();
  });
});
