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
      await store.insertSession(session, Buffer.alloc(32, i), null);
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
