import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { operationTimeoutMs } from "../src/store/db.js";
import { whileRowLocked } from "./helpers/row-lock.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * A bulk revoke (DELETE /v1/sessions?user_id=) runs in batches; once the first batch has
 * committed, it runs to the end: a client that leaves, or a batch that fails for a passing reason
 * (a row locked for longer than a statement may wait), does not leave it half done.
 */

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server?.close();
});

/** 1,200 sessions of one user: three batches of 500. Returns them oldest first, as batches take them. */
async function userWithSessions(userId: string, count = 1_200): Promise<string[]> {
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      for (let i = next++; i < count; i = next++) {
        const res = await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { ...server.tenant.headers, "content-type": "application/json" }, body: JSON.stringify({ user_id: userId }) });
        expect(res.status).toBe(201);
      }
    }),
  );
  const [rows] = (await server.services.pool.query("SELECT id FROM sessions WHERE tenant_id = ? AND user_id = ? ORDER BY created_at, id", [server.tenant.id, userId])) as unknown as [{ id: Buffer }[]];
  return rows.map((r) => r.id.toString());
}

async function activeCount(userId: string): Promise<number> {
  const [[row]] = (await server.services.pool.query("SELECT COUNT(*) AS n FROM sessions WHERE tenant_id = ? AND user_id = ? AND state = 0", [server.tenant.id, userId])) as unknown as [[{ n: number }]];
  return Number(row.n);
}

const revokeStatement = "UPDATE sessions SET state = 2%";
const bulkRevoke = (userId: string, signal?: AbortSignal) =>
  fetch(`${server.url}/v1/sessions?user_id=${userId}`, { method: "DELETE", headers: server.tenant.headers, signal });

describe("a bulk revoke that has begun", () => {
  it("finishes when the client leaves after its first batch committed", async () => {
    const ids = await userWithSessions("usr_bulk_gone");
    const abort = new AbortController();
    let answer: Promise<unknown> = Promise.resolve();
    // A row of the second batch is locked: the first batch commits, the second waits; the client leaves.
    await whileRowLocked(server.services.pool, { tenantId: server.tenant.id, sessionId: ids[700]! }, {
      writers: 1,
      blockedStatement: revokeStatement,
      start: () => {
        answer = bulkRevoke("usr_bulk_gone", abort.signal).catch((err: unknown) => err);
        return [];
      },
      during: async () => {
        abort.abort();
        await answer;
      },
    });
    await vi.waitFor(async () => expect(await activeCount("usr_bulk_gone")).toBe(0), { timeout: 20_000, interval: 50 });
  });

  it("retries a batch that failed for a passing reason, and answers the exact count", async () => {
    const ids = await userWithSessions("usr_bulk_locked");
    const responses = await whileRowLocked(server.services.pool, { tenantId: server.tenant.id, sessionId: ids[700]! }, {
      writers: 1,
      blockedStatement: revokeStatement,
      start: () => [bulkRevoke("usr_bulk_locked").then(async (r) => ({ status: r.status, body: await r.json() }))],
      // The fault: a row locked for longer than a batch may take (its whole operation budget, its
      // lock waits timing out and retried within it), as a stuck transaction elsewhere would.
      during: () => sleep(operationTimeoutMs + 3_000),
    });
    expect(responses).toEqual([{ status: 200, body: { revoked: 1_200 } }]);
    expect(await activeCount("usr_bulk_locked")).toBe(0);
  });

  it("holds no other tenant's creates while a revoke statement is under way (its events take no table lock)", async () => {
    const ids = await userWithSessions("usr_bulk_neighbours", 600);
    const neighbour = await server.addTenant("neighbour");
    const responses = await whileRowLocked(server.services.pool, { tenantId: server.tenant.id, sessionId: ids[400]! }, {
      writers: 1,
      blockedStatement: revokeStatement,
      start: () => [bulkRevoke("usr_bulk_neighbours").then(async (r) => ({ status: r.status, body: await r.json() }))],
      // The first batch's statement has revoked (and written the events of) the rows before the
      // locked one, and waits on it: another tenant's creates, which write events too, go through.
      during: async () => {
        for (let i = 0; i < 3; i++) {
          const res = await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { ...neighbour.headers, "content-type": "application/json" }, body: '{"user_id":"usr_next_door"}' });
          expect(res.status).toBe(201);
        }
      },
    });
    expect(responses).toEqual([{ status: 200, body: { revoked: 600 } }]);
  });
});
