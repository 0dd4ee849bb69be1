import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startChildServer, type ChildServer } from "./helpers/child-server.js";
import { rotationStatement, whileRowLocked } from "./helpers/row-lock.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * Refresh across instances that share nothing but the database: this process's server and the real
 * service in a process of its own. A refresh reads, decides and writes with one guarded statement; a
 * write that finds the row moved on (another instance rotated it) must read again and answer as a
 * grace retry, so every holder ends up with the one live token.
 */

let server: TestServer;
let other: ChildServer;

beforeAll(async () => {
  server = await startTestServer();
  other = await startChildServer({ DATABASE_URL: server.config.databaseUrl, KEY_ENCRYPTION_KEY: server.config.keyEncryptionKey.toString("base64url") });
}, 90_000);
afterAll(async () => {
  await other?.stop();
  await server?.close();
});

type Answer = { status: number; json: Record<string, any> };

async function refresh(baseUrl: string, token: string): Promise<Answer> {
  const res = await fetch(`${baseUrl}/v1/auth/token/refresh`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-tenant-id": server.tenant.id },
    body: JSON.stringify({ refresh_token: token }),
  });
  return { status: res.status, json: (await res.json()) as Record<string, any> };
}

async function create(userId: string) {
  const res = await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { ...server.tenant.headers, "content-type": "application/json" }, body: JSON.stringify({ user_id: userId }) });
  expect(res.status).toBe(201);
  return (await res.json()) as { session: { id: string }; refresh_token: string };
}

const status = async (id: string) => ((await (await fetch(`${server.url}/v1/sessions/${id}`, { headers: server.tenant.headers })).json()) as { status: string }).status;

describe("refresh across two processes", () => {
  it("both instances blocked in the rotating write of one token: the one that finds it rotated reads again and hands out the same successor", async () => {
    const { session, refresh_token: t0 } = await create("usr_two_processes");
    const answers = await whileRowLocked(server.services.pool, { tenantId: server.tenant.id, sessionId: session.id }, {
      writers: 2,
      blockedStatement: rotationStatement,
      start: () => [refresh(server.url, t0), refresh(other.url, t0)],
    });
    expect(answers.map((a) => a.status)).toEqual([200, 200]);
    expect(answers[0]!.json.refresh_token).toBe(answers[1]!.json.refresh_token);
    expect((await refresh(other.url, answers[0]!.json.refresh_token)).status).toBe(200);
    expect(await status(session.id)).toBe("active");
  });

  it("rounds of 8 concurrent refreshes split across the processes: one successor each round, the session never revoked", async () => {
    const { session, refresh_token: first } = await create("usr_rounds");
    let token = first;
    for (let round = 0; round < 20; round++) {
      const answers = await Promise.all(Array.from({ length: 8 }, (_, i) => refresh(i % 2 === 0 ? server.url : other.url, token)));
      expect(answers.map((a) => a.status)).toEqual(Array(8).fill(200));
      const successors = new Set(answers.map((a) => a.json.refresh_token as string));
      expect(successors.size).toBe(1);
      token = [...successors][0]!;
    }
    expect(await status(session.id)).toBe("active");
  });
});
