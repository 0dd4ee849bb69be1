import { decodeProtectedHeader } from "jose";
import { parseNumberedRefreshToken } from "../src/domain/refresh-tokens.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { endOf, statusOf, type SessionPolicy } from "../src/domain/model.js";
import { defaultPolicy } from "../src/domain/policy.js";
import { newId } from "../src/domain/secrets.js";
import { maxAccessTokenTtlSeconds, revokeSigningKey, rotateSigningKey, rotationLeadSeconds } from "../src/domain/signing-keys.js";
import { openServices, type Services } from "../src/services.js";
import { createPolicyStore } from "../src/store/policy-store.js";
import { createSigningKeyStore } from "../src/store/signing-key-store.js";
import { manualClock } from "./helpers/clock.js";
import { createInput } from "./helpers/sessions.js";
import { dropDatabase, testConfig } from "./helpers/db.js";

/** Session lifecycle against the real database, with an injected clock instead of sleeps. */

const clock = manualClock();
// Policies are read fresh on every call so each test's change applies at once.
const config = testConfig({ API_KEY_CACHE_SECONDS: "0" });
let services: Services;

const input = (userId: string) => createInput({ userId });

async function tenantWith(policy: Partial<SessionPolicy>): Promise<string> {
  const tenantId = newId("tnt");
  await createPolicyStore(services.pool).putPolicy(tenantId, { ...defaultPolicy, ...policy }, clock.now());
  return tenantId;
}

beforeAll(async () => {
  services = await openServices(config, { clock });
});
afterAll(async () => {
  await services.close();
  await dropDatabase(config.databaseUrl);
});

describe("per-tenant policy", () => {
  it("applies the tenant's access-token TTL and session lifetime; tokens never outlive the session", async () => {
    const tenant = await tenantWith({ accessTokenTtlSeconds: 600, sessionLifetimeSeconds: 900 });
    const pair = await services.sessionService.create(tenant, input("u"));
    expect(pair.accessTokenExpiresAt.getTime() - clock.now().getTime()).toBe(600_000);
    expect(pair.session.expiresAt.getTime() - clock.now().getTime()).toBe(900_000);
    clock.advance(500_000);
    const refreshed = await services.sessionService.refresh(tenant, pair.refreshToken);
    // 600 s would pass the session's end at 900 s: the token stops there.
    expect(refreshed.accessTokenExpiresAt).toEqual(pair.session.expiresAt);
    expect(refreshed.expiresInSeconds).toBe(400);
    expect(refreshed.refreshTokenExpiresAt).toEqual(pair.session.expiresAt);
  });

  it("ends an idle session: status expired, reason idle_timeout, verify session_expired, refresh refused", async () => {
    const tenant = await tenantWith({ idleTimeoutSeconds: 3600 });
    const pair = await services.sessionService.create(tenant, input("idle"));
    clock.advance(3000_000);
    const next = await services.sessionService.refresh(tenant, pair.refreshToken); // activity moves the idle deadline
    clock.advance(3000_000);
    expect(await services.sessionService.verify(tenant, next.accessToken)).toMatchObject({ valid: false, code: "token_expired" });
    const active = await services.sessionService.get(tenant, pair.session.id);
    expect(statusOf(active, clock.now())).toBe("active");
    clock.advance(700_000);
    const idle = await services.sessionService.get(tenant, pair.session.id);
    expect(statusOf(idle, clock.now())).toBe("expired");
    expect(endOf(idle, clock.now())).toEqual({ at: idle.idleExpiresAt, reason: "idle_timeout" });
    await expect(services.sessionService.refresh(tenant, next.refreshToken)).rejects.toMatchObject({ code: "refresh_token_expired" });
    const listed = await services.sessionService.list(tenant, { userId: "idle", status: "expired", limit: 10, cursor: undefined });
    expect(listed.sessions.map((s) => s.id)).toEqual([pair.session.id]);
    expect((await services.sessionService.list(tenant, { userId: "idle", status: "active", limit: 10, cursor: undefined })).sessions).toEqual([]);
  });

  it("the refresh token's expiry is the idle deadline while that comes first, then the session's expiry", async () => {
    const tenant = await tenantWith({ idleTimeoutSeconds: 3600, sessionLifetimeSeconds: 7200 });
    const pair = await services.sessionService.create(tenant, input("idle-expiry"));
    expect(pair.refreshTokenExpiresAt).toEqual(pair.session.idleExpiresAt);
    expect(pair.refreshTokenExpiresAt.getTime() - clock.now().getTime()).toBe(3_600_000);
    clock.advance(3_000_000);
    const next = await services.sessionService.refresh(tenant, pair.refreshToken);
    expect(next.refreshTokenExpiresAt.getTime() - clock.now().getTime()).toBe(3_600_000);
    // A retry within grace moves the idle deadline too, and says so.
    clock.advance(1_000);
    const retried = await services.sessionService.refresh(tenant, pair.refreshToken);
    expect(retried.refreshToken).toBe(next.refreshToken);
    expect(retried.refreshTokenExpiresAt.getTime() - clock.now().getTime()).toBe(3_600_000);
    // Past the point where the idle deadline would outrun the absolute expiry, the expiry is the answer.
    clock.advance(3_000_000);
    const last = await services.sessionService.refresh(tenant, next.refreshToken);
    expect(last.refreshTokenExpiresAt).toEqual(pair.session.expiresAt);
    // The promise holds: unused until just past it, the token is refused.
    clock.advance(last.refreshTokenExpiresAt.getTime() - clock.now().getTime());
    await expect(services.sessionService.refresh(tenant, last.refreshToken)).rejects.toMatchObject({ code: "refresh_token_expired" });
  });

  it("verify reports session_expired for a live token of an idle session", async () => {
    const tenant = await tenantWith({ idleTimeoutSeconds: 60, accessTokenTtlSeconds: 600 });
    const pair = await services.sessionService.create(tenant, input("idle2"));
    clock.advance(61_000);
    expect(await services.sessionService.verify(tenant, pair.accessToken)).toMatchObject({ valid: false, code: "session_expired" });
  });

  it("the absolute lifetime ends a session with reason expired", async () => {
    const tenant = await tenantWith({ sessionLifetimeSeconds: 300 });
    const pair = await services.sessionService.create(tenant, input("abs"));
    clock.advance(300_000);
    const s = await services.sessionService.get(tenant, pair.session.id);
    expect(endOf(s, clock.now())).toEqual({ at: s.expiresAt, reason: "expired" });
  });

  it("caps active sessions per user by revoking the oldest with reason session_limit", async () => {
    const tenant = await tenantWith({ maxSessionsPerUser: 2 });
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) {
      ids.push((await services.sessionService.create(tenant, input("capped"))).session.id);
      clock.advance(1);
    }
    const active = await services.sessionService.list(tenant, { userId: "capped", status: "active", limit: 10, cursor: undefined });
    expect(active.sessions.map((s) => s.id)).toEqual([ids[3], ids[2]]);
    const oldest = await services.sessionService.get(tenant, ids[0]!);
    expect(oldest).toMatchObject({ recordedEnd: { reason: "session_limit", by: null } });
    // Another user is not affected.
    await services.sessionService.create(tenant, input("someone else"));
    expect((await services.sessionService.list(tenant, { userId: "capped", status: "active", limit: 10, cursor: undefined })).sessions.length).toBe(2);
  });

  it("keeps the cap under concurrent creates for one user", async () => {
    const tenant = await tenantWith({ maxSessionsPerUser: 3 });
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => services.sessionService.create(tenant, input("burst"))));
    expect(results.filter((r) => r.status === "rejected")).toEqual([]);
    const active = await services.sessionService.list(tenant, { userId: "burst", status: "active", limit: 100, cursor: undefined });
    expect(active.sessions.length).toBe(3);
  });
});

describe("refresh across instances", () => {
  it("a retry within grace on another instance succeeds; concurrent refreshes on two instances leave one live token", async () => {
    const peer = await openServices({ ...config }, { clock });
    try {
      const tenant = newId("tnt");
      const pair = await services.sessionService.create(tenant, input("two"));
      await services.sessionService.refresh(tenant, pair.refreshToken);
      clock.advance(3_000);
      const retried = await peer.sessionService.refresh(tenant, pair.refreshToken);
      expect(retried.session.id).toBe(pair.session.id);

      const results = await Promise.allSettled(
        Array.from({ length: 10 }, (_, i) => (i % 2 ? peer : services).sessionService.refresh(tenant, retried.refreshToken)),
      );
      expect(results.filter((r) => r.status === "rejected")).toEqual([]);
      // One successor for all ten, and it is the session's live token.
      const handedOut = new Set(results.map((r) => (r.status === "fulfilled" ? r.value.refreshToken : "")));
      expect(handedOut.size).toBe(1);
      const [rows] = (await services.pool.query("SELECT refresh_generation FROM sessions WHERE tenant_id = ? AND id = ?", [
        tenant,
        pair.session.id,
      ])) as unknown as [{ refresh_generation: number }[]];
      expect(rows[0]!.refresh_generation).toBe(parseNumberedRefreshToken([...handedOut][0]!)!.generation);
      expect((await services.sessionService.get(tenant, pair.session.id)).recordedEnd).toBeNull();
    } finally {
      await peer.close();
    }
  });
});

describe("end reasons and actors", () => {
  it("records who revoked a session", async () => {
    const tenant = newId("tnt");
    const a = await services.sessionService.create(tenant, input("actor"));
    const b = await services.sessionService.create(tenant, input("actor"));
    await services.sessionService.revoke(tenant, a.session.id, "key_ABC");
    await services.sessionService.revokeAll(tenant, { userId: "actor" }, "key_DEF");
    expect(await services.sessionService.get(tenant, a.session.id)).toMatchObject({ recordedEnd: { reason: "revoked", by: "key_ABC" } });
    expect(await services.sessionService.get(tenant, b.session.id)).toMatchObject({ recordedEnd: { reason: "revoked_all", by: "key_DEF" } });
  });
});

describe("signing-key rotation", () => {
  it("publishes the next key ahead, switches signing at the handover, keeps the old key until its tokens expired", async () => {
    const peerClock = manualClock(clock.now());
    const peer = await openServices({ ...config }, { clock: peerClock });
    try {
      const tenant = newId("tnt");
      const before = await services.sessionService.create(tenant, input("rot"));
      const oldKid = decodeProtectedHeader(before.accessToken).kid;

      // Two instances rotating at the same moment produce one key.
      const store = createSigningKeyStore(services.pool);
      const [r1, r2] = await Promise.all([
        rotateSigningKey(store, config.keyEncryptionKey, clock.now()),
        rotateSigningKey(createSigningKeyStore(peer.pool), config.keyEncryptionKey, clock.now()),
      ]);
      expect(r1.key.id).toBe(r2.key.id);
      expect([r1.isNew, r2.isNew].sort()).toEqual([false, true]);
      const newKid = r1.key.id;

      // Published at once on both instances, but not yet signing.
      await Promise.all([services.keyRing.reload(), peer.keyRing.reload()]);
      for (const s of [services, peer]) expect(s.keyRing.jwks().keys.map((k) => k.kid)).toEqual(expect.arrayContaining([oldKid, newKid]));
      const during = await services.sessionService.create(tenant, input("rot"));
      expect(decodeProtectedHeader(during.accessToken).kid).toBe(oldKid);

      // After the lead time both instances sign with the new key; the old key's tokens still verify.
      clock.advance(rotationLeadSeconds * 1000);
      peerClock.advance(rotationLeadSeconds * 1000);
      const after = await peer.sessionService.create(tenant, input("rot"));
      expect(decodeProtectedHeader(after.accessToken).kid).toBe(newKid);
      expect(await services.sessionService.verify(tenant, after.accessToken)).toMatchObject({ valid: true });
      expect(await peer.sessionService.verify(tenant, during.accessToken)).toMatchObject({ valid: true });

      // Once every token the old key signed has expired, it leaves JWKS.
      clock.advance(maxAccessTokenTtlSeconds * 1000);
      await services.keyRing.reload();
      expect(services.keyRing.jwks().keys.map((k) => k.kid)).toEqual([newKid]);
    } finally {
      await peer.close();
    }
  });

  it("an emergency revoke withdraws a key at once and a fresh key takes over", async () => {
    const tenant = newId("tnt");
    const pair = await services.sessionService.create(tenant, input("emergency"));
    const kid = decodeProtectedHeader(pair.accessToken).kid as string;
    expect(await revokeSigningKey(createSigningKeyStore(services.pool), config.keyEncryptionKey, kid, clock.now())).toBe(true);
    await services.keyRing.reload();
    expect(services.keyRing.jwks().keys.map((k) => k.kid)).not.toContain(kid);
    expect(await services.sessionService.verify(tenant, pair.accessToken)).toMatchObject({ valid: false, code: "invalid_token" });
    const fresh = await services.sessionService.create(tenant, input("emergency"));
    expect(decodeProtectedHeader(fresh.accessToken).kid).not.toBe(kid);
    expect(await services.sessionService.verify(tenant, fresh.accessToken)).toMatchObject({ valid: true });
  });
});
