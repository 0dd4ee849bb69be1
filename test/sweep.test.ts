import { createHash } from "node:crypto";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { SessionPolicy } from "../src/domain/model.js";
import { defaultPolicy } from "../src/domain/policy.js";
import { purgeBatchSize } from "../src/domain/sweep.js";
import { newId } from "../src/domain/secrets.js";
import { openServices, type Services } from "../src/services.js";
import { createPolicyStore } from "../src/store/policy-store.js";
import { manualClock } from "./helpers/clock.js";
import { dropDatabase, testConfig } from "./helpers/db.js";
import { createInput } from "./helpers/sessions.js";

/** The session sweep against the real database: ends recorded, what retention deletes, what stays, one instance at a time. */

const run = promisify(execFile);
const day = 24 * 60 * 60 * 1000;
const clock = manualClock();
const config = testConfig({ API_KEY_CACHE_SECONDS: "0", RETENTION_DAYS: "30" });
let services: Services;
/** An instance that gives new sessions legacy refresh tokens, whose rotated tokens are kept (migration 0009). */
let legacy: Services;

beforeAll(async () => {
  services = await openServices(config, { clock });
  legacy = await openServices({ ...config, refreshTokens: "legacy" }, { clock });
});
afterAll(async () => {
  await legacy.close();
  await services.close();
  await dropDatabase(config.databaseUrl);
});

async function tenantWith(policy: Partial<SessionPolicy>): Promise<string> {
  const tenantId = newId("tnt");
  await createPolicyStore(services.pool).putPolicy(tenantId, { ...defaultPolicy, ...policy }, clock.now());
  return tenantId;
}

async function count(sql: string, params: unknown[]): Promise<number> {
  const [rows] = (await services.pool.query(sql, params)) as unknown as [{ n: number }[]];
  return Number(rows[0]!.n);
}
const sessionsOf = (tenantId: string) => count("SELECT COUNT(*) AS n FROM sessions WHERE tenant_id = ?", [tenantId]);
const tokensOf = (tenantId: string) => count("SELECT COUNT(*) AS n FROM refresh_tokens WHERE tenant_id = ?", [tenantId]);

describe("recording ends by time", () => {
  it("records the end of sessions past their expiry or idle deadline, with the domain's reason, and nothing else", async () => {
    const tenant = await tenantWith({ sessionLifetimeSeconds: 3_600, idleTimeoutSeconds: 600 });
    const svc = services.sessionService;
    const idle = await svc.create(tenant, createInput({ userId: "idle" }));
    const kept = await svc.create(tenant, createInput({ userId: "kept" }));
    const revoked = await svc.create(tenant, createInput({ userId: "revoked" }));
    await svc.revoke(tenant, revoked.session.id, null);
    clock.advance(500_000);
    await svc.refresh(tenant, kept.refreshToken);
    clock.advance(200_000); // idle is past its 600 s idle deadline; kept was refreshed 200 s ago
    const before = await svc.get(tenant, idle.session.id);
    const report = await services.sessionSweep.sweepOnce();
    expect(report?.endsRecorded).toBeGreaterThanOrEqual(1);
    const [rows] = (await services.pool.query("SELECT CAST(id AS CHAR) AS id, state, end_reason FROM sessions WHERE tenant_id = ? ORDER BY id", [tenant])) as unknown as [
      { id: string; state: number; end_reason: string | null }[],
    ];
    expect(Object.fromEntries(rows.map((r) => [r.id, [r.state, r.end_reason]]))).toEqual({
      [idle.session.id]: [1, "idle_timeout"],
      [kept.session.id]: [0, null],
      [revoked.session.id]: [2, "revoked"],
    });
    // What the API says of it does not change by being recorded.
    expect(await svc.get(tenant, idle.session.id)).toMatchObject({ recordedEnd: { at: before.idleExpiresAt, reason: "idle_timeout" } });
    const expired = await svc.list(tenant, { status: "expired", limit: 10 });
    expect(expired.sessions.map((s) => s.id)).toEqual([idle.session.id]);
    // The absolute expiry too, where no idle deadline comes first.
    const noIdle = await tenantWith({ sessionLifetimeSeconds: 3_600 });
    const lasting = await svc.create(noIdle, createInput({ userId: "lasting" }));
    clock.advance(3_600_000);
    await services.sessionSweep.sweepOnce();
    expect((await svc.get(noIdle, lasting.session.id)).recordedEnd).toMatchObject({ at: lasting.session.expiresAt, reason: "expired" });
    expect((await svc.get(tenant, kept.session.id)).recordedEnd).toMatchObject({ reason: "idle_timeout" });
    expect(await services.metricsRegistry.metrics()).toMatch(/sessions_ended_recorded_total [1-9]/);
  });
});

describe("retention sweep", () => {
  it("deletes sessions 30 days after they ended, with their tokens, and rotated tokens 30 days after rotation; keeps the rest", async () => {
    const tenant = await tenantWith({ sessionLifetimeSeconds: 10 * 24 * 3600, idleTimeoutSeconds: 24 * 3600 });
    const svc = services.sessionService;
    const revoked = await svc.create(tenant, createInput({ userId: "revoked" }));
    await svc.revoke(tenant, revoked.session.id, null);
    const idle = await svc.create(tenant, createInput({ userId: "idle" }));
    // Rotated tokens are kept for sessions with legacy refresh tokens only (migration 0009).
    const expiring = await legacy.sessionService.create(tenant, createInput({ userId: "expiring" }));
    const living = await legacy.sessionService.create(tenant, createInput({ userId: "living" }));
    // Refreshed daily: it lives on (its first tokens are rotated away), while the others end.
    let token = (await svc.refresh(tenant, expiring.refreshToken)).refreshToken;
    let living_token = living.refreshToken;
    for (let d = 0; d < 9; d++) {
      clock.advance(day - 60_000);
      living_token = (await svc.refresh(tenant, living_token)).refreshToken;
      token = (await svc.refresh(tenant, token)).refreshToken;
    }
    // Day 9: revoked (day 0), idle (day 1) have ended; expiring ends at day 10, living too (lifetime).
    expect(await sessionsOf(tenant)).toBe(4);

    // Over 30 days after the revoke and the idle end, not yet after the absolute expiry of the others.
    clock.advance(22 * day + 3_600_000);
    const plan = await services.sessionSweep.sweepOnce();
    // The two ended sessions were never refreshed (no rotated tokens); of the others, the tokens
    // rotated away on day 0 (one) and day 1 (two).
    expect(plan?.purged.tenants.find((t) => t.tenantId === tenant)).toMatchObject({ sessions: 2, refreshTokens: 1 + 2 });
    const remaining = (await svc.list(tenant, { status: "expired", limit: 10 })).sessions.map((s) => s.id).sort();
    expect(remaining).toEqual([expiring.session.id, living.session.id].sort());
    await expect(svc.get(tenant, revoked.session.id)).rejects.toMatchObject({ code: "session_not_found" });
    await expect(svc.get(tenant, idle.session.id)).rejects.toMatchObject({ code: "session_not_found" });
    // The two remaining sessions' tokens rotated over 30 days ago are gone; later ones stay (rotated
    // tokens only: 10 rotations of one, 9 of the other, less those 3).
    expect(await tokensOf(tenant)).toBe(10 + 9 - 3);

    // A token deleted by retention is unknown: refused, without revoking its session (whose end by
    // time the sweep has recorded).
    await expect(svc.refresh(tenant, living.refreshToken)).rejects.toMatchObject({ code: "refresh_token_invalid" });
    expect((await svc.get(tenant, living.session.id)).recordedEnd?.reason).toBe("idle_timeout");

    clock.advance(30 * day);
    await services.sessionSweep.sweepOnce();
    expect(await sessionsOf(tenant)).toBe(0);
    expect(await tokensOf(tenant)).toBe(0);
  });

  it("works in batches until a tenant is done, and leaves other tenants' live sessions alone", async () => {
    const tenant = newId("tnt");
    const other = await tenantWith({});
    const kept = await services.sessionService.create(other, createInput());
    const ended = new Date(clock.now().getTime() - 40 * day);
    // More than two batches of long-ended sessions, written directly.
    const rows = Array.from({ length: 2 * purgeBatchSize + 7 }, (_, i) => [
      tenant, `ses_${String(i).padStart(26, "0")}`, "u", "", "", "", "unknown", "member", null, 0,
      ended, ended, ended, null, 2, ended, "revoked", createHash("sha256").update(`token ${i}`).digest(),
    ]);
    await services.pool.query(
      `INSERT INTO sessions (tenant_id, id, user_id, user_agent, ip_address, country, device_type, role, org_id, mfa_verified,
                             created_at, last_active_at, expires_at, idle_expires_at, state, ends_at, end_reason, refresh_token_hash)
       VALUES ?`,
      [rows],
    );
    const report = await services.sessionSweep.sweepOnce();
    expect(report?.purged.tenants.find((t) => t.tenantId === tenant)?.sessions).toBe(2 * purgeBatchSize + 7);
    expect(await sessionsOf(tenant)).toBe(0);
    expect((await services.sessionService.get(other, kept.session.id)).id).toBe(kept.session.id);
  });

  it("runs on one instance at a time: a second instance skips while the first holds the lease", async () => {
    const peer = await openServices({ ...config }, { clock });
    try {
      const results = await Promise.all([services.sessionSweep.sweepOnce(), peer.sessionSweep.sweepOnce()]);
      expect(results.filter((r) => r !== undefined)).toHaveLength(1);
      // The holder renews; the other keeps skipping until the lease runs out.
      const holder = results[0] !== undefined ? services : peer;
      const waiter = holder === services ? peer : services;
      expect(await holder.sessionSweep.sweepOnce()).toBeDefined();
      expect(await waiter.sessionSweep.sweepOnce()).toBeUndefined();
      clock.advance(61 * 60_000);
      expect(await waiter.sessionSweep.sweepOnce()).toBeDefined();
      // A holder that shuts down hands the lease over at once.
      const third = await openServices({ ...config }, { clock });
      try {
        expect(await third.sessionSweep.sweepOnce()).toBeUndefined();
        await waiter.sessionSweep.stop();
        expect(await third.sessionSweep.sweepOnce()).toBeDefined();
      } finally {
        await third.close();
      }
    } finally {
      await peer.close();
    }
  });

  it("counts what it deleted in a metric", async () => {
    const metrics = await services.metricsRegistry.metrics();
    expect(metrics).toMatch(/sessions_retention_purged_total\{kind="session"\} [1-9]/);
    expect(metrics).toMatch(/sessions_retention_last_sweep_timestamp_seconds \d/);
  });
});

describe("sessionctl purge", () => {
  it("--dry-run prints what would go and deletes nothing; without it, deletes", async () => {
    const tenant = newId("tnt");
    const old = new Date(Date.now() - 45 * day);
    await services.pool.query(
      `INSERT INTO sessions (tenant_id, id, user_id, user_agent, ip_address, country, device_type, role, org_id, mfa_verified,
                             created_at, last_active_at, expires_at, idle_expires_at, state, ends_at, end_reason, refresh_token_hash)
       VALUES (?, 'ses_00000000000000000000000001', 'u', '', '', '', 'unknown', 'member', NULL, 0, ?, ?, ?, NULL, 0, ?, NULL, UNHEX(SHA2('x', 256)))`,
      [tenant, old, old, old, old],
    );
    await services.pool.query("INSERT INTO refresh_tokens (tenant_id, token_hash, session_id, created_at) VALUES (?, UNHEX(SHA2('x', 256)), 'ses_00000000000000000000000001', ?)", [tenant, old]);
    const env = { ...process.env, DATABASE_URL: config.databaseUrl };
    const dry = JSON.parse((await run("node", ["bin/sessionctl.js", "purge", "--dry-run", "--json"], { env })).stdout);
    expect(dry).toMatchObject({ dry_run: true, tenants: expect.arrayContaining([{ tenant_id: tenant, sessions: 1, refresh_tokens: 1 }]) });
    expect(await sessionsOf(tenant)).toBe(1);
    const done = JSON.parse((await run("node", ["bin/sessionctl.js", "purge", "--json"], { env })).stdout);
    expect(done).toMatchObject({ dry_run: false, tenants: expect.arrayContaining([{ tenant_id: tenant, sessions: 1, refresh_tokens: 1 }]) });
    expect(await sessionsOf(tenant)).toBe(0);
    expect(await tokensOf(tenant)).toBe(0);
  });
});
