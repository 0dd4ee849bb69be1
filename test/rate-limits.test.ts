import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { SessionService } from "../gen/sessions/v1/sessions_pb.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/** Per-tenant and per-IP limits, the same over REST and Connect. */

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer({
    env: { RATE_LIMIT_WRITE_PER_MINUTE: "3", RATE_LIMIT_READ_PER_MINUTE: "4", RATE_LIMIT_REFRESH_PER_MINUTE: "2", RATE_LIMIT_IP_PER_MINUTE: "1000" },
  });
});
afterAll(async () => {
  await server?.close();
});

const post = (path: string, headers: Record<string, string>, body: unknown) =>
  fetch(server.url + path, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: JSON.stringify(body) });

describe("per-tenant limits", () => {
  it("report the budget on every response and answer 429 with Retry-After past it, per tenant and tier", async () => {
    const tenant = await server.addTenant("limited");
    const first = await post("/v1/sessions", tenant.headers, { user_id: "u" });
    expect(first.status).toBe(201);
    expect(first.headers.get("x-ratelimit-limit")).toBe("3");
    expect(first.headers.get("x-ratelimit-remaining")).toBe("2");
    expect(Number(first.headers.get("x-ratelimit-reset"))).toBeGreaterThan(Date.now() / 1000);
    const { refresh_token: refreshToken } = (await first.json()) as { refresh_token: string };
    await post("/v1/sessions", tenant.headers, { user_id: "u" });
    await post("/v1/sessions", tenant.headers, { user_id: "u" });
    const limited = await post("/v1/sessions", tenant.headers, { user_id: "u" });
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(limited.headers.get("x-ratelimit-remaining")).toBe("0");
    expect(((await limited.json()) as { error: { code: string } }).error.code).toBe("rate_limit_exceeded");

    // Reads have their own budget; another tenant has its own budgets.
    const read = await fetch(`${server.url}/v1/sessions`, { headers: tenant.headers });
    expect(read.status).toBe(200);
    expect(read.headers.get("x-ratelimit-limit")).toBe("4");
    const other = await server.addTenant("other");
    expect((await post("/v1/sessions", other.headers, { user_id: "u" })).status).toBe(201);

    // Connect callers get RESOURCE_EXHAUSTED with the same code.
    const client = createClient(SessionService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const err = await client.createSession({ userId: "u" }, { headers: tenant.headers }).catch((e: unknown) => ConnectError.from(e));
    expect((err as ConnectError).code).toBe(Code.ResourceExhausted);
    expect((err as ConnectError).findDetails(ErrorInfoSchema)[0]?.reason).toBe("rate_limit_exceeded");

    // Refresh is limited per tenant and client address.
    const refreshHeaders = { "x-tenant-id": tenant.id };
    let token = refreshToken;
    for (let i = 0; i < 2; i++) {
      const res = await post("/v1/auth/token/refresh", refreshHeaders, { refresh_token: token });
      expect(res.status).toBe(200);
      token = ((await res.json()) as { refresh_token: string }).refresh_token;
    }
    expect((await post("/v1/auth/token/refresh", refreshHeaders, { refresh_token: token })).status).toBe(429);
  });
});

describe("per-IP limit", () => {
  it("stops a flood of bad keys before it reaches the database", async () => {
    const flooded = await startTestServer({ env: { RATE_LIMIT_IP_PER_MINUTE: "5" } });
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 8; i++) {
        const res = await fetch(`${flooded.url}/v1/sessions`, {
          headers: { authorization: `Bearer sk_live_${String(i).padStart(43, "x")}`, "x-tenant-id": flooded.tenant.id },
        });
        statuses.push(res.status);
      }
      expect(statuses).toEqual([401, 401, 401, 401, 401, 429, 429, 429]);
    } finally {
      await flooded.close();
    }
  });
});
