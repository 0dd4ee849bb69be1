import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { describe, expect, it } from "vitest";
import { SessionService } from "../../gen/sessions/v1/sessions_pb.js";
import { call, createSession, eventually, useFaultStack } from "./helpers/app.js";

/**
 * A database that accepts but never answers (a network partition, a hung server) or answers slowly.
 * The service's budget per database operation is 5 s (src/store/db.ts), connect included.
 */

const operationBudgetMs = 5_000;
const slackMs = 1_500;

// A small pool, so that exhausting it is cheap: 2 connections, 32 waiters.
const stack = useFaultStack({ DATABASE_POOL_SIZE: "2" });

const rpc = () => createClient(SessionService, createGrpcTransport({ baseUrl: stack.svc.url }));

async function recover() {
  stack.proxy.setLatency(0);
  stack.proxy.setMode("pass");
  await eventually(async () => (await createSession(stack.svc, "usr_recover")).status === 201, 15_000);
}

describe("black-holed database", () => {
  it("REST calls end with 503 unavailable within the server-side budget", async () => {
    expect((await createSession(stack.svc, "usr_bh")).status).toBe(201); // pooled connections exist
    stack.proxy.setMode("blackhole");
    const results = await Promise.all([createSession(stack.svc, "usr_bh"), call(stack.svc.url, "GET", "/v1/sessions", { headers: stack.svc.headers })]);
    for (const res of results) {
      expect(res.status).toBe(503);
      expect(res.json?.error.code).toBe("unavailable");
      expect(res.ms).toBeLessThan(operationBudgetMs + slackMs);
    }
    // New connections hang too (the handshake never comes): same bound.
    const fresh = await createSession(stack.svc, "usr_bh");
    expect(fresh.status).toBe(503);
    expect(fresh.ms).toBeLessThan(operationBudgetMs + slackMs);
    const ready = await call(stack.svc.url, "GET", "/readyz");
    expect(ready.status).toBe(503);
    expect(ready.ms).toBeLessThan(operationBudgetMs + slackMs);
    await recover();
  });

  it("an RPC with a deadline ends at about that deadline", async () => {
    stack.proxy.setMode("blackhole");
    const started = performance.now();
    const err = await rpc()
      .listSessions({}, { timeoutMs: 1_000, headers: stack.svc.headers })
      .catch((e: unknown) => e);
    const ms = performance.now() - started;
    expect(ConnectError.from(err).code).toBe(Code.DeadlineExceeded);
    expect(ms).toBeGreaterThan(900);
    expect(ms).toBeLessThan(1_800);
    await recover();
  });

  it("a client's deadline stops the database work done for it, freeing the pool", async () => {
    // Every answer from the database arrives 3 s late; two RPCs that give up after 500 ms hold both
    // pooled connections unless their deadline reaches the database work.
    stack.proxy.setLatency(3_000);
    const results = await Promise.all(
      [1, 2].map(() => rpc().listSessions({}, { timeoutMs: 500, headers: stack.svc.headers }).catch((e: unknown) => ConnectError.from(e))),
    );
    for (const r of results) expect((r as ConnectError).code).toBe(Code.DeadlineExceeded);
    await new Promise((resolve) => setTimeout(resolve, 200));
    stack.proxy.setLatency(0);
    const next = await call(stack.svc.url, "GET", "/v1/sessions", { headers: stack.svc.headers });
    expect(next.status).toBe(200);
    // Without propagation it would wait ~2.3 s more for a connection to come back.
    expect(next.ms).toBeLessThan(1_000);
    await recover();
  });

  it("pool exhaustion: a bounded queue, fast 503s past it, every call ends within the budget", async () => {
    stack.proxy.setMode("blackhole");
    const results = await Promise.all(Array.from({ length: 80 }, (_, i) => createSession(stack.svc, `usr_flood_${i}`)));
    expect(new Set(results.map((r) => r.status))).toEqual(new Set([503]));
    for (const r of results) expect(r.json?.error.code).toBe("unavailable");
    // 2 connections + 32 queued waiters; the rest are refused by the queue limit at once.
    const fast = results.filter((r) => r.ms < 1_000);
    expect(fast.length).toBeGreaterThanOrEqual(80 - 2 - 32 - 5);
    expect(Math.max(...results.map((r) => r.ms))).toBeLessThan(operationBudgetMs + slackMs);
    await recover();
  });
});

describe("slow database", () => {
  it("added latency slows calls but they succeed", async () => {
    stack.proxy.setLatency(50);
    const res = await createSession(stack.svc, "usr_slow");
    expect(res.status).toBe(201);
    await recover();
  });

  it("latency beyond the budget ends in 503 within it, and the pool recovers", async () => {
    // The API key and tenant policy are cached from the call before: only the create's own
    // transaction meets the latency. (Each database operation has its own budget; a request makes
    // at most three in a row: key check, policy, the operation.)
    expect((await createSession(stack.svc, "usr_warm")).status).toBe(201);
    stack.proxy.setLatency(2_000);
    const res = await createSession(stack.svc, "usr_very_slow");
    expect(res.status).toBe(503);
    expect(res.ms).toBeLessThan(operationBudgetMs + slackMs);
    await recover();
  });
});
