import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { startPrivateRedis, type PrivateRedis } from "./helpers/private-redis.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * With REDIS_URL, instances share one budget per limit; when Redis goes away each instance counts
 * alone (calls never fail for it), says so in a metric, and shares again once Redis is back.
 */

let redis: PrivateRedis;
let a: TestServer;
let b: TestServer;

beforeAll(async () => {
  redis = await startPrivateRedis();
  const env = { REDIS_URL: redis.url, RATE_LIMIT_WRITE_PER_MINUTE: "6" };
  a = await startTestServer({ env });
  b = await startTestServer({ env, sharedWith: a });
});
afterAll(async () => {
  await b?.close();
  await a?.close();
  await redis?.stop();
});

const create = (server: TestServer, headers: Record<string, string>) =>
  fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: '{"user_id":"usr_limited"}' });
const storeUp = async (server: TestServer) => Number(/^sessions_rate_limit_store_up (\d)$/m.exec(await (await fetch(`${server.url}/metrics`)).text())?.[1]);

describe("rate limits shared through Redis", () => {
  it("two instances share one budget: six creates in all, then 429 on both", async () => {
    const tenant = await a.addTenant("shared budget");
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await create(i % 2 === 0 ? a : b, tenant.headers)).status);
    expect(statuses).toEqual([201, 201, 201, 201, 201, 201]);
    const [onA, onB] = [await create(a, tenant.headers), await create(b, tenant.headers)];
    expect([onA.status, onB.status]).toEqual([429, 429]);
    expect(onB.headers.get("x-ratelimit-remaining")).toBe("0");
    expect(Number(onB.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(await storeUp(a)).toBe(1);
  });

  it("without Redis each instance counts alone and keeps serving; with Redis back, they share again", async () => {
    await redis.kill();
    try {
      await vi.waitFor(async () => expect(await storeUp(a)).toBe(0), { timeout: 10_000, interval: 25 });
      const tenant = await a.addTenant("redis down");
      // Each instance's own memory: six on A and six more on B, where a shared budget allows six in all.
      for (const server of [a, b]) {
        for (let i = 0; i < 6; i++) expect((await create(server, tenant.headers)).status).toBe(201);
        expect((await create(server, tenant.headers)).status).toBe(429);
      }
    } finally {
      await redis.start();
    }
    await vi.waitFor(async () => expect([await storeUp(a), await storeUp(b)]).toEqual([1, 1]), { timeout: 10_000, interval: 25 });
    const tenant = await a.addTenant("redis back");
    const statuses: number[] = [];
    for (let i = 0; i < 7; i++) statuses.push((await create(i % 2 === 0 ? a : b, tenant.headers)).status);
    expect(statuses).toEqual([201, 201, 201, 201, 201, 201, 429]);
  });

  it("a Redis that hangs is noticed by the probe: each instance counts alone, and shares again once it answers", async () => {
    redis.pause();
    try {
      await vi.waitFor(async () => expect([await storeUp(a), await storeUp(b)]).toEqual([0, 0]), { timeout: 10_000, interval: 25 });
      const tenant = await a.addTenant("redis hung");
      for (const server of [a, b]) {
        for (let i = 0; i < 6; i++) expect((await create(server, tenant.headers)).status).toBe(201);
        expect((await create(server, tenant.headers)).status).toBe(429);
      }
    } finally {
      redis.resume();
    }
    await vi.waitFor(async () => expect([await storeUp(a), await storeUp(b)]).toEqual([1, 1]), { timeout: 10_000, interval: 25 });
  });

  it("a read-only replica given as REDIS_URL is reported down (it refuses the counters' writes), not silently per instance", async () => {
    const replica = await startPrivateRedis({ replicaOf: redis });
    const onReplica = await startTestServer({ env: { REDIS_URL: replica.url, RATE_LIMIT_WRITE_PER_MINUTE: "6" }, sharedWith: a });
    try {
      await vi.waitFor(async () => expect(await storeUp(onReplica)).toBe(0), { timeout: 10_000, interval: 25 });
    } finally {
      await onReplica.close();
      await replica.stop();
    }
  });

  it("a REDIS_URL that is not redis:// is a clear configuration error", async () => {
    await expect(startTestServer({ env: { REDIS_URL: "http://127.0.0.1:6379" } })).rejects.toThrow(/REDIS_URL.*redis:\/\/ or rediss:\/\//);
    await expect(startTestServer({ env: { REDIS_URL: "redis://127.0.0.1:6379/abc" } })).rejects.toThrow(/REDIS_URL: its path must be a database number/);
  });
});
