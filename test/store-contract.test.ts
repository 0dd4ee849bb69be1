import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sessionStatuses, statusOf, type Session } from "../src/domain/model.js";
import { newId } from "../src/domain/secrets.js";
import { openServices, type Services } from "../src/services.js";
import { createSessionStore } from "../src/store/session-store.js";
import { dropDatabase, testConfig } from "./helpers/db.js";

/**
 * A session's status is one rule in the domain (statusOf) and, for queries, its mirror in SQL
 * (session-store.ts). This checks that the two agree on sessions in every shape, at many instants.
 */

const config = testConfig();
let services: Services;

beforeAll(async () => {
  services = await openServices(config);
});
afterAll(async () => {
  await services.close();
  await dropDatabase(config.databaseUrl);
});

/** A small deterministic generator, so a failure can be replayed. */
function random(seed: number) {
  let s = seed;
  return () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
}

describe("status: the SQL mirror agrees with the domain rule", () => {
  it("on 80 sessions of every shape, at 12 instants around their deadlines", async () => {
    const store = createSessionStore(services.pool);
    const tenantId = newId("tnt");
    const rnd = random(7);
    const base = Date.parse("2026-01-01T00:00:00Z");
    const at = (hours: number) => new Date(base + Math.round(hours) * 3_600_000);
    const sessions: Session[] = [];
    for (let i = 0; i < 80; i++) {
      const createdAt = at(rnd() * 10);
      const expiresAt = at(10 + rnd() * 20);
      const idleExpiresAt = rnd() < 0.5 ? null : at(10 + rnd() * 20);
      const session: Session = {
        tenantId, id: newId("ses"), userId: `u${i % 3}`, userAgent: "", ipAddress: "", country: "", deviceType: "unknown",
        role: "member", orgId: null, isMfaVerified: false, createdAt, lastActiveAt: createdAt, expiresAt, idleExpiresAt, recordedEnd: null,
      };
      await store.insertSession(session, { nonce: Buffer.alloc(32, i) }, null);
      const fate = rnd();
      if (fate < 0.3) {
        // Revoked at some instant, possibly after it had already ended (then nothing changes).
        await store.revokeSession(tenantId, session.id, { now: at(12 + rnd() * 20), reason: "revoked", by: null });
      } else if (fate < 0.45) {
        // Its end by time, as the expiry sweep records it.
        await services.pool.query(
          "UPDATE sessions SET state = 1, end_reason = IF(idle_expires_at < expires_at, 'idle_timeout', 'expired') WHERE tenant_id = ? AND id = ?",
          [tenantId, session.id],
        );
      }
      sessions.push(session);
    }
    const stored = await Promise.all(sessions.map(async (s) => (await store.getSession(tenantId, s.id))!));
    for (let k = 0; k < 12; k++) {
      const now = at(8 + k * 2.5);
      for (const status of sessionStatuses) {
        const listed = await store.listSessions(tenantId, { status, now, limit: 1000 });
        const expected = stored.filter((s) => statusOf(s, now) === status).map((s) => s.id).sort();
        expect(listed.map((s) => s.id).sort(), `${status} at ${now.toISOString()}`).toEqual(expected);
      }
    }
  });
});

describe("creates share one INSERT", () => {
  const sessionOf = (tenantId: string, id = newId("ses")): Session => {
    const now = new Date(Math.floor(Date.now() / 1000) * 1000);
    return {
      tenantId, id, userId: "u", userAgent: "", ipAddress: "", country: "", deviceType: "unknown", role: "member", orgId: null,
      isMfaVerified: false, createdAt: now, lastActiveAt: now, expiresAt: new Date(now.getTime() + 3_600_000), idleExpiresAt: null, recordedEnd: null,
    };
  };

  it("each of 200 creates asked at once is stored, with its own row and its created event", async () => {
    const store = createSessionStore(services.pool);
    const tenantId = newId("tnt");
    const sessions = Array.from({ length: 200 }, () => sessionOf(tenantId));
    await Promise.all(sessions.map((s, i) => store.insertSession(s, { nonce: Buffer.alloc(32, i + 1) }, null)));
    const [rows] = await services.pool.query<import("mysql2").RowDataPacket[]>("SELECT id FROM sessions WHERE tenant_id = ?", [tenantId]);
    expect(rows.map((r) => String(r.id)).sort()).toEqual(sessions.map((s) => s.id).sort());
    const [events] = await services.pool.query<import("mysql2").RowDataPacket[]>(
      "SELECT COUNT(*) AS n FROM session_events WHERE tenant_id = ? AND type = 'session.created'",
      [tenantId],
    );
    expect(Number(events[0]!.n)).toBe(200);
  });

  it("a row whose key is taken fails its own call only; the rest of its batch is stored", async () => {
    const store = createSessionStore(services.pool);
    const tenantId = newId("tnt");
    const taken = sessionOf(tenantId);
    await store.insertSession(taken, { nonce: Buffer.alloc(32, 1) }, null);
    // Asked in one turn: they share a batch, which holds one duplicate id and one duplicate refresh token.
    const fresh = Array.from({ length: 6 }, () => sessionOf(tenantId));
    const results = await Promise.allSettled([
      ...fresh.map((s, i) => store.insertSession(s, { nonce: Buffer.alloc(32, i + 10) }, null)),
      store.insertSession(sessionOf(tenantId, taken.id), { nonce: Buffer.alloc(32, 2) }, null),
      store.insertSession(sessionOf(tenantId), { nonce: Buffer.alloc(32, 1) }, null),
    ]);
    expect(results.map((r) => r.status)).toEqual([...fresh.map(() => "fulfilled"), "rejected", "rejected"]);
    const [rows] = await services.pool.query<import("mysql2").RowDataPacket[]>("SELECT id FROM sessions WHERE tenant_id = ?", [tenantId]);
    expect(rows.map((r) => String(r.id)).sort()).toEqual([taken, ...fresh].map((s) => s.id).sort());
  });
});
