import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { SessionService } from "../gen/sessions/v1/sessions_pb.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/** Per-tenant and per-IP limits, the same over REST and Connect. */

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer({
    env: { RATE_LIMIT_WRITE_PER_MINUTE: "3", RATE_LIMIT_READ_PER_MINUTE: "4", RATE_LIMIT_REFRESH_PER_MINUTE: "2" },
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

describe("per-IP limits", () => {
  it("stop a flood of bad keys before it reaches the database, while the address's working key keeps working", async () => {
    const flooded = await startTestServer({ env: { RATE_LIMIT_AUTH_FAILURES_PER_MINUTE: "5" } });
    try {
      const lookups = vi.spyOn(flooded.services.tenantStore, "findApiKey");
      expect((await fetch(`${flooded.url}/v1/sessions`, { headers: flooded.tenant.headers })).status).toBe(200);
      const statuses: number[] = [];
      for (let i = 0; i < 8; i++) {
        const res = await fetch(`${flooded.url}/v1/sessions`, {
          headers: { authorization: `Bearer sk_live_${String(i).padStart(43, "x")}`, "x-tenant-id": flooded.tenant.id },
        });
        statuses.push(res.status);
      }
      expect(statuses).toEqual([401, 401, 401, 401, 401, 429, 429, 429]);
      // One lookup for the good key, five for the bad ones; the refused three never reached the store.
      expect(lookups).toHaveBeenCalledTimes(6);
      expect((await fetch(`${flooded.url}/v1/sessions`, { headers: flooded.tenant.headers })).status).toBe(200);
    } finally {
      await flooded.close();
    }
  });

  it("spare a working key after its cache entry expired, while keys never seen from a flooding address wait", async () => {
    // No cache at all: every call looks its key up, as after any cache entry expires.
    const flooded = await startTestServer({ env: { RATE_LIMIT_AUTH_FAILURES_PER_MINUTE: "5", API_KEY_CACHE_SECONDS: "0" } });
    try {
      const other = await flooded.addTenant("neighbour");
      const list = (headers: Record<string, string>) => fetch(`${flooded.url}/v1/sessions`, { headers }).then((r) => r.status);
      expect(await list(flooded.tenant.headers)).toBe(200);
      for (let i = 0; i < 8; i++) await list({ authorization: `Bearer sk_live_${String(i).padStart(43, "y")}`, "x-tenant-id": flooded.tenant.id });
      for (let i = 0; i < 3; i++) expect(await list(flooded.tenant.headers)).toBe(200);
      // A key this instance has not seen work is not looked up for this address until the window ends.
      expect(await list(other.headers)).toBe(429);
    } finally {
      await flooded.close();
    }
  });

  it("limit the public refresh per client address, as X-Forwarded-For says only with TRUST_PROXY", async () => {
    for (const [trustProxy, expected] of [
      ["", [200, 200, 429, 429]],
      ["127.0.0.1", [200, 200, 200, 200]],
      ["1", [200, 200, 200, 200]],
    ] as const) {
      const proxied = await startTestServer({ env: { RATE_LIMIT_IP_PER_MINUTE: "2", TRUST_PROXY: trustProxy } });
      try {
        const created = (await (await post2(proxied, "/v1/sessions", proxied.tenant.headers, { user_id: "u" })).json()) as { refresh_token: string };
        let token = created.refresh_token;
        const statuses: number[] = [];
        // Two clients behind one proxy, two refreshes each.
        for (const client of ["198.51.100.1", "198.51.100.2", "198.51.100.1", "198.51.100.2"]) {
          const res = await post2(proxied, "/v1/auth/token/refresh", { "x-tenant-id": proxied.tenant.id, "x-forwarded-for": client }, { refresh_token: token });
          statuses.push(res.status);
          if (res.status === 200) token = ((await res.json()) as { refresh_token: string }).refresh_token;
        }
        expect(statuses, `TRUST_PROXY=${trustProxy}`).toEqual(expected);
      } finally {
        await proxied.close();
      }
    }
  });
});

describe("defaults", () => {
  it("never throttle a healthy tenant's verify, list and get traffic", async () => {
    const open = await startTestServer();
    try {
      const created = (await (await post2(open, "/v1/sessions", open.tenant.headers, { user_id: "u" })).json()) as {
        access_token: string;
        session: { id: string };
      };
      const calls = [
        () => post2(open, "/v1/sessions/verify", open.tenant.headers, { token: created.access_token }),
        () => fetch(`${open.url}/v1/sessions?user_id=u`, { headers: open.tenant.headers }),
        () => fetch(`${open.url}/v1/sessions/${created.session.id}`, { headers: open.tenant.headers }),
      ];
      const statuses = new Map<number, number>();
      // 2,000 calls from one tenant and one address, 32 at a time (the old defaults refused half of them).
      const queue = Array.from({ length: 2_000 }, (_, i) => calls[i % calls.length]!);
      await Promise.all(
        Array.from({ length: 32 }, async () => {
          for (let next = queue.pop(); next; next = queue.pop()) {
            const res = await next();
            await res.arrayBuffer();
            statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
          }
        }),
      );
      expect(Object.fromEntries(statuses)).toEqual({ 200: 2_000 });
    } finally {
      await open.close();
    }
  });
});

const post2 = (target: TestServer, path: string, headers: Record<string, string>, body: unknown) =>
  fetch(target.url + path, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: JSON.stringify(body) });
