import { describe, expect, it } from "vitest";
import { operationTimeoutMs } from "../../src/store/db.js";
import { call, createSession, eventually, healthCheck, ServingStatus, useFaultStack } from "./helpers/app.js";

/**
 * The database goes away under a running service, then comes back. A refused connection is an
 * answer: calls fail at once with 503, rather than waiting out the operation budget (5 s).
 */

const stack = useFaultStack();

async function expectDown() {
  const calls = [
    await createSession(stack.svc, "usr_down"),
    await call(stack.svc.url, "GET", "/v1/sessions?user_id=usr_down", { headers: stack.svc.headers }),
    await call(stack.svc.url, "POST", "/v1/auth/token/refresh", { headers: { "x-tenant-id": stack.svc.tenantId }, body: { refresh_token: `rt_${"a".repeat(43)}` } }),
  ];
  for (const res of calls) {
    expect(res.status).toBe(503);
    expect(res.json?.error).toMatchObject({ code: "unavailable", status: 503 });
    expect(res.ms, "refused at once, not after waiting out the operation budget").toBeLessThan(operationTimeoutMs);
  }
  expect((await call(stack.svc.url, "GET", "/readyz")).status).toBe(503);
  expect(await healthCheck(stack.svc.url)).toBe(ServingStatus.NOT_SERVING);
  // The process itself is fine: liveness and the JWKS (served from memory) still answer.
  expect((await call(stack.svc.url, "GET", "/healthz")).status).toBe(200);
  expect((await call(stack.svc.url, "GET", "/.well-known/jwks.json")).status).toBe(200);
}

async function expectRecovered() {
  // No restart of the app: the pool reconnects by itself once the database answers.
  await eventually(async () => (await createSession(stack.svc, "usr_back")).status === 201, 15_000);
  expect((await call(stack.svc.url, "GET", "/readyz")).status).toBe(200);
  expect(await healthCheck(stack.svc.url)).toBe(ServingStatus.SERVING);
}

describe("database down", () => {
  it("serves normally first", async () => {
    expect((await createSession(stack.svc, "usr_up")).status).toBe(201);
    expect(await healthCheck(stack.svc.url)).toBe(ServingStatus.SERVING);
  });

  it("connections refused: fast 503 unavailable, not ready, NOT_SERVING; recovers by itself", async () => {
    stack.proxy.setMode("refuse");
    await expectDown();
    stack.proxy.setMode("pass");
    await expectRecovered();
  });

  it("the server stopped: the same, and recovers once it is started again", async () => {
    await stack.db.stop();
    await expectDown();
    await stack.db.start();
    await expectRecovered();
  });
});
