import { createHash, randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AppError } from "../src/domain/errors.js";
import { openServices, type Services } from "../src/services.js";
import { hashSecret, newId } from "../src/domain/secrets.js";
import { wholeSeconds } from "../src/domain/clock.js";
import { manualClock } from "./helpers/clock.js";
import { createInput } from "./helpers/sessions.js";
import { dropDatabase, testConfig } from "./helpers/db.js";

const clock = manualClock();
const config = testConfig();
let services: Services;
const tenantA = newId("tnt");
const tenantB = newId("tnt");


async function expectAppError(promise: Promise<unknown>, code: string, field?: string) {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AppError);
  expect((err as AppError).code).toBe(code);
  if (field !== undefined) expect((err as AppError).field).toBe(field);
}

/** An instance that gives new sessions legacy refresh tokens (REFRESH_TOKENS=legacy), on the same database. */
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

describe("create", () => {
  it("stores the session, derives the device type and returns a verifiable token pair", async () => {
    const pair = await services.sessionService.create(tenantA, createInput());
    expect(pair.session.id).toMatch(/^ses_[0-9A-Z]{26}$/);
    expect(pair.session).toMatchObject({ deviceType: "desktop", country: "US", role: "member", orgId: null });
    expect(pair.refreshToken).toMatch(/^rt_[A-Za-z0-9_-]{83}$/);
    expect(pair.accessTokenExpiresAt.getTime() - clock.now().getTime()).toBe(15 * 60 * 1000);
    expect(pair.refreshTokenExpiresAt.getTime() - clock.now().getTime()).toBe(30 * 24 * 3600 * 1000);
    const stored = await services.sessionService.get(tenantA, pair.session.id);
    expect(stored).toEqual(pair.session);
    const verified = await services.sessionService.verify(tenantA, pair.accessToken);
    expect(verified).toMatchObject({ valid: true, sessionId: pair.session.id, userId: "usr_1", tenantId: tenantA, role: "member" });
  });

  it("defaults the role, reads an empty org id as none, upper-cases the country and cuts the user agent at 1024 characters", async () => {
    // What the request's rules allow (test/validation.test.ts) is checked before the service is called.
    const { session } = await services.sessionService.create(tenantA, createInput({ role: "", orgId: "", country: "de", userAgent: "😀".repeat(1030) }));
    expect(session).toMatchObject({ role: "member", orgId: null, country: "DE", userAgent: "😀".repeat(1024) });
  });
});

describe("get and tenancy", () => {
  it("treats another tenant's session and malformed ids exactly like missing ones", async () => {
    const { session } = await services.sessionService.create(tenantA, createInput());
    await expectAppError(services.sessionService.get(tenantB, session.id), "session_not_found");
    await expectAppError(services.sessionService.get(tenantA, "ses_nope"), "session_not_found");
    await expectAppError(services.sessionService.revoke(tenantB, session.id, null), "session_not_found");
    expect((await services.sessionService.get(tenantA, session.id)).recordedEnd).toBeNull();
  });

  it("reports another tenant's token as tenant_mismatch without looking at the session", async () => {
    const { accessToken } = await services.sessionService.create(tenantA, createInput());
    expect(await services.sessionService.verify(tenantB, accessToken)).toMatchObject({ valid: false, code: "tenant_mismatch" });
  });
});

describe("list", () => {
  it("pages newest first with keyset cursors bound to the filters", async () => {
    const user = `usr_${Date.now()}`;
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      ids.push((await services.sessionService.create(tenantA, createInput({ userId: user }))).session.id);
      clock.advance(i % 2 === 0 ? 0 : 1); // some share a timestamp: the id breaks the tie
    }
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await services.sessionService.list(tenantA, { userId: user, status: undefined, limit: 2, cursor });
      seen.push(...page.sessions.map((s) => s.id));
      expect(page.limit).toBe(2);
      cursor = page.nextCursor;
      expect(page.hasMore).toBe(cursor !== undefined);
      pages++;
    } while (cursor !== undefined);
    expect(pages).toBe(3);
    expect(seen).toEqual([...ids].reverse());

    const first = await services.sessionService.list(tenantA, { userId: user, status: undefined, limit: 2, cursor: undefined });
    const next = first.nextCursor as string;
    await expectAppError(services.sessionService.list(tenantA, { userId: "other", status: undefined, limit: 2, cursor: next }), "invalid_cursor", "cursor");
    await expectAppError(services.sessionService.list(tenantB, { userId: user, status: undefined, limit: 2, cursor: next }), "invalid_cursor");
    await expectAppError(services.sessionService.list(tenantA, { userId: user, status: "revoked", limit: 2, cursor: next }), "invalid_cursor");
    const forged = next.replace(/^cur_./, (m) => (m.endsWith("A") ? "cur_B" : "cur_A"));
    await expectAppError(services.sessionService.list(tenantA, { userId: user, status: undefined, limit: 2, cursor: forged }), "invalid_cursor");
    await expectAppError(services.sessionService.list(tenantA, { userId: user, status: undefined, limit: 2, cursor: "garbage" }), "invalid_cursor");
  });

  it("filters by derived status", async () => {
    const user = `usr_status_${Date.now()}`;
    const a = await services.sessionService.create(tenantA, createInput({ userId: user }));
    const b = await services.sessionService.create(tenantA, createInput({ userId: user }));
    await services.sessionService.revoke(tenantA, b.session.id, null);
    const list = async (status: "active" | "revoked" | "expired" | undefined) =>
      (await services.sessionService.list(tenantA, { userId: user, status, limit: 10, cursor: undefined })).sessions.map((s) => s.id);
    expect(await list(undefined)).toEqual([a.session.id]);
    expect(await list("revoked")).toEqual([b.session.id]);
    expect(await list("expired")).toEqual([]);
    clock.advance(31 * 24 * 3600 * 1000);
    expect(await list("expired")).toEqual([a.session.id]);
    expect(await list("active")).toEqual([]);
    clock.advance(-31 * 24 * 3600 * 1000);
  });
});

describe("revoke", () => {
  it("revokes one session; its tokens stop working at once; revoking again is a no-op", async () => {
    const pair = await services.sessionService.create(tenantA, createInput());
    await services.sessionService.revoke(tenantA, pair.session.id, null);
    const session = await services.sessionService.get(tenantA, pair.session.id);
    expect(session).toMatchObject({ recordedEnd: { reason: "revoked" } });
    expect(await services.sessionService.verify(tenantA, pair.accessToken)).toMatchObject({ valid: false, code: "session_revoked" });
    await expectAppError(services.sessionService.refresh(tenantA, pair.refreshToken), "session_revoked");
    await services.sessionService.revoke(tenantA, pair.session.id, null);
    expect((await services.sessionService.get(tenantA, pair.session.id)).recordedEnd).toEqual(session.recordedEnd);
  });

  it("revokes all of a user's sessions, optionally all but one, and counts them", async () => {
    const user = `usr_all_${Date.now()}`;
    const pairs = await Promise.all([1, 2, 3].map(() => services.sessionService.create(tenantA, createInput({ userId: user }))));
    const other = await services.sessionService.create(tenantA, createInput({ userId: `${user}_other` }));
    const keep = pairs[0]!.session.id;
    expect(await services.sessionService.revokeAll(tenantA, { userId: user, exceptSessionId: keep }, null)).toBe(2);
    expect(await services.sessionService.revokeAll(tenantA, { userId: user, exceptSessionId: keep }, null)).toBe(0);
    expect((await services.sessionService.get(tenantA, keep)).recordedEnd).toBeNull();
    expect((await services.sessionService.get(tenantA, other.session.id)).recordedEnd).toBeNull();
    expect((await services.sessionService.get(tenantA, pairs[1]!.session.id)).recordedEnd?.reason).toBe("revoked_all");
    expect(await services.sessionService.revokeAll(tenantA, { userId: user, exceptSessionId: undefined }, null)).toBe(1);
  });

  it("revokes thousands in batches, counting exactly, leaving others' sessions and later creates alone", async () => {
    const tenant = newId("tnt");
    const now = wholeSeconds(clock.now()); // as the service records every instant
    const later = new Date(now.getTime() + 30 * 24 * 3600 * 1000);
    const row = (i: number, user: string) => [
      tenant, `ses_${String(i).padStart(26, "0")}`, user, "", "", "", "unknown", "member", null, 0, now, now, later, null, 0, later, createHash("sha256").update(`token ${i}`).digest(),
    ];
    const rows = [...Array.from({ length: 1_234 }, (_, i) => row(i, "usr_bulk")), ...Array.from({ length: 10 }, (_, i) => row(5_000 + i, "usr_bystander"))];
    await services.pool.query(
      `INSERT INTO sessions (tenant_id, id, user_id, user_agent, ip_address, country, device_type, role, org_id, mfa_verified,
                             created_at, last_active_at, expires_at, idle_expires_at, state, ends_at, refresh_token_hash) VALUES ?`,
      [rows],
    );
    expect(await services.sessionService.revokeAll(tenant, { userId: "usr_bulk" }, null)).toBe(1_234);
    expect(await services.sessionService.revokeAll(tenant, { userId: "usr_bulk" }, null)).toBe(0);
    const bystanders = await services.sessionService.list(tenant, { userId: "usr_bystander", limit: 100 });
    expect(bystanders.sessions).toHaveLength(10);
    // A session created after the call's instant is not the call's to revoke.
    clock.advance(2_000);
    const fresh = await services.sessionService.create(tenant, createInput({ userId: "usr_bulk" }));
    clock.advance(-2_000);
    expect(await services.sessionService.revokeAll(tenant, { isAllUsers: true }, null)).toBe(10);
    clock.advance(2_000);
    expect((await services.sessionService.get(tenant, fresh.session.id)).recordedEnd).toBeNull();
  });

  it("revoke-all catches a session created in the same millisecond", async () => {
    const tenant = newId("tnt");
    const before = await services.sessionService.create(tenant, createInput());
    const racing = services.sessionService.create(tenant, createInput());
    const revoked = await services.sessionService.revokeAll(tenant, { isAllUsers: true }, null);
    const created = await racing;
    const states = await Promise.all([before, created].map((p) => services.sessionService.verify(tenant, p.accessToken)));
    // Whichever order the two statements ran in, the count matches what was revoked.
    expect(states.filter((s) => !s.valid).length).toBe(revoked);
    expect(states[0]).toMatchObject({ valid: false, code: "session_revoked" });
  });
});

describe("verify", () => {
  it("rejects expired tokens and garbage", async () => {
    const pair = await services.sessionService.create(tenantA, createInput());
    expect(await services.sessionService.verify(tenantA, "garbage")).toMatchObject({ valid: false, code: "invalid_token" });
    expect(await services.sessionService.verify(tenantA, `${pair.accessToken}x`)).toMatchObject({ valid: false, code: "invalid_token" });
    expect(await services.sessionService.verify(tenantA, "a".repeat(5000))).toMatchObject({ valid: false, code: "invalid_token" });
    clock.advance(16 * 60 * 1000);
    expect(await services.sessionService.verify(tenantA, pair.accessToken)).toMatchObject({ valid: false, code: "token_expired" });
    clock.advance(-16 * 60 * 1000);
  });
});

// Sessions created since migration 0009 hold numbered refresh tokens; older ones legacy tokens
// (src/domain/refresh-tokens.ts). Both follow the same rules.
describe.each(["numbered", "legacy"] as const)("refresh (%s tokens)", (format) => {
  /**
   * A new session of tenant A and its refresh token, in this format: a legacy one as an instance
   * configured for them (or an earlier version) gives it; every refresh then goes to an instance
   * that gives numbered tokens to new sessions, as during and after an upgrade.
   */
  async function start(tenantId = tenantA) {
    const pair = await (format === "legacy" ? legacy : services).sessionService.create(tenantId, createInput());
    expect(pair.refreshToken).toMatch(format === "legacy" ? /^rt_[A-Za-z0-9_-]{43}$/ : /^rt_[A-Za-z0-9_-]{83}$/);
    return pair;
  }

  it("rotates: the new token works, the session's last_active_at moves", async () => {
    const pair = await start();
    clock.advance(60_000);
    const next = await services.sessionService.refresh(tenantA, pair.refreshToken);
    expect(next.refreshToken).not.toBe(pair.refreshToken);
    expect(next.session.id).toBe(pair.session.id);
    expect(next.expiresInSeconds).toBe(900);
    expect(next.refreshTokenExpiresAt).toEqual(pair.session.expiresAt);
    // Recorded instants are whole seconds (the clock here is some milliseconds past one).
    expect((await services.sessionService.get(tenantA, pair.session.id)).lastActiveAt).toEqual(wholeSeconds(clock.now()));
    expect(await services.sessionService.verify(tenantA, next.accessToken)).toMatchObject({ valid: true });
    const third = await services.sessionService.refresh(tenantA, next.refreshToken);
    expect(third.session.id).toBe(pair.session.id);
  });

  it("answers a retry within the grace window with the same successor, and treats reuse after it as theft", async () => {
    const pair = await start();
    const first = await services.sessionService.refresh(tenantA, pair.refreshToken);
    clock.advance(5_000);
    const retry = await services.sessionService.refresh(tenantA, pair.refreshToken);
    expect(retry.session.id).toBe(pair.session.id);
    expect(retry.refreshToken).toBe(first.refreshToken);
    expect(retry.accessToken).not.toBe(first.accessToken);
    // After the window, the original token is reuse: the session is revoked, every token dies.
    clock.advance(11_000);
    await expectAppError(services.sessionService.refresh(tenantA, pair.refreshToken), "refresh_token_invalid");
    const session = await services.sessionService.get(tenantA, pair.session.id);
    expect(session.recordedEnd?.reason).toBe("refresh_token_reuse");
    await expectAppError(services.sessionService.refresh(tenantA, first.refreshToken), "session_revoked");
    expect(await services.sessionService.verify(tenantA, retry.accessToken)).toMatchObject({ valid: false, code: "session_revoked" });
  });

  it("treats a retry as reuse once its successor has been used, even within the grace window", async () => {
    const pair = await start();
    const first = await services.sessionService.refresh(tenantA, pair.refreshToken);
    await services.sessionService.refresh(tenantA, first.refreshToken);
    clock.advance(1_000);
    await expectAppError(services.sessionService.refresh(tenantA, pair.refreshToken), "refresh_token_invalid");
    expect((await services.sessionService.get(tenantA, pair.session.id)).recordedEnd?.reason).toBe("refresh_token_reuse");
  });

  it("rejects unknown, malformed and other tenants' refresh tokens without touching the session", async () => {
    const pair = await start();
    await expectAppError(services.sessionService.refresh(tenantB, pair.refreshToken), "refresh_token_invalid");
    await expectAppError(services.sessionService.refresh(tenantA, "rt_nope"), "refresh_token_invalid");
    expect((await services.sessionService.get(tenantA, pair.session.id)).recordedEnd).toBeNull();
    await services.sessionService.refresh(tenantA, pair.refreshToken);
  });

  it("refuses after the session's absolute expiry", async () => {
    const pair = await start();
    clock.advance(30 * 24 * 3600 * 1000 + 1);
    await expectAppError(services.sessionService.refresh(tenantA, pair.refreshToken), "refresh_token_expired");
    clock.advance(-(30 * 24 * 3600 * 1000 + 1));
  });

  it.each([2, 5, 20])("%d concurrent refreshes of one token all get the one live successor", async (n) => {
    const pair = await start();
    const results = await Promise.allSettled(Array.from({ length: n }, () => services.sessionService.refresh(tenantA, pair.refreshToken)));
    const successes = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    // Every concurrent call is within the grace window: all succeed, none is a 5xx.
    expect(results.filter((r) => r.status === "rejected")).toEqual([]);
    expect(successes.length).toBe(n);
    expect(new Set(successes.map((s) => s.refreshToken)).size).toBe(1);
    const live = successes[0];
    if (format === "numbered") {
      // One rotation: the session's live token is generation 1.
      const [rows] = (await services.pool.query("SELECT refresh_generation FROM sessions WHERE tenant_id = ? AND id = ?", [tenantA, pair.session.id])) as unknown as [
        { refresh_generation: number }[],
      ];
      expect(rows[0]?.refresh_generation).toBe(1);
    } else {
      // The session's live token is the one handed out, and the presented one is on record as rotated.
      const [rows] = (await services.pool.query("SELECT refresh_token_hash FROM sessions WHERE tenant_id = ? AND id = ?", [
        tenantA,
        pair.session.id,
      ])) as unknown as [{ refresh_token_hash: Buffer }[]];
      expect(hashSecret(live!.refreshToken)).toEqual(rows[0]!.refresh_token_hash);
      const [rotated] = (await services.pool.query("SELECT successor_hash FROM refresh_tokens WHERE tenant_id = ? AND token_hash = ? AND rotated_at IS NOT NULL", [
        tenantA,
        hashSecret(pair.refreshToken),
      ])) as unknown as [{ successor_hash: Buffer }[]];
      expect(rotated[0]?.successor_hash).toEqual(rows[0]!.refresh_token_hash);
    }
    clock.advance(11_000);
    await services.sessionService.refresh(tenantA, live!.refreshToken);
    expect((await services.sessionService.get(tenantA, pair.session.id)).recordedEnd).toBeNull();
  });

  it("a refresh racing a revoke leaves nothing usable", async () => {
    const pair = await start();
    const [refreshed] = await Promise.allSettled([
      services.sessionService.refresh(tenantA, pair.refreshToken),
      services.sessionService.revoke(tenantA, pair.session.id, null),
    ]);
    if (refreshed.status === "fulfilled") {
      expect(await services.sessionService.verify(tenantA, refreshed.value.accessToken)).toMatchObject({ valid: false, code: "session_revoked" });
      await expectAppError(services.sessionService.refresh(tenantA, refreshed.value.refreshToken), "session_revoked");
    } else {
      expect((refreshed.reason as AppError).code).toBe("session_revoked");
    }
  });
});
describe("numbered refresh tokens", () => {
  const base64url = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  /** `token` with its decoded bytes changed by `edit`, spelled canonically. */
  const edited = (token: string, edit: (body: Buffer) => void) => {
    const body = Buffer.from(token.slice(3), "base64url");
    edit(body);
    return `rt_${body.toString("base64url")}`;
  };

  it("refuses forged, altered and future tokens as invalid, leaving the session and its live token as they were", async () => {
    const pair = await services.sessionService.create(tenantA, createInput());
    const other = await services.sessionService.create(tenantA, createInput());
    const forged = [
      edited(pair.refreshToken, (b) => void (b[40] = (b[40] as number) ^ 1)), // a MAC bit
      edited(pair.refreshToken, (b) => b.writeUInt32BE(1, 26)), // the next generation, with generation 0's MAC
      edited(pair.refreshToken, (b) => b.write(other.session.id.slice(4), 0, "latin1")), // another session's id
      edited(pair.refreshToken, (b) => b.write("0".repeat(26), 0, "latin1")), // no such session
      edited(pair.refreshToken, (b) => b.write("u".repeat(26), 0, "latin1")), // not a ULID
      // The same bytes spelled another way (base64url's spare bits in the last character).
      pair.refreshToken.slice(0, -1) + base64url[base64url.indexOf(pair.refreshToken.at(-1) as string) ^ 1],
    ];
    for (const token of forged) await expectAppError(services.sessionService.refresh(tenantA, token), "refresh_token_invalid");
    for (const session of [pair.session, other.session]) expect((await services.sessionService.get(tenantA, session.id)).recordedEnd).toBeNull();
    const next = await services.sessionService.refresh(tenantA, pair.refreshToken);
    expect(next.session.id).toBe(pair.session.id);
  });

  it("answers a storm of forged tokens naming a session 401, without crowding out that session's genuine refresh", async () => {
    const pair = await services.sessionService.create(tenantA, createInput());
    // More forgeries than one token's in-memory queue holds (32), each with the session's id and a random MAC.
    const forged = Array.from({ length: 48 }, () => edited(pair.refreshToken, (b) => randomBytes(32).copy(b, 30)));
    const answers = await Promise.allSettled([...forged.map((token) => services.sessionService.refresh(tenantA, token)), services.sessionService.refresh(tenantA, pair.refreshToken)]);
    const genuine = answers.pop();
    expect(genuine).toMatchObject({ status: "fulfilled", value: { session: { id: pair.session.id } } });
    expect(new Set(answers.map((a) => (a.status === "rejected" ? (a.reason as AppError).code : "fulfilled")))).toEqual(new Set(["refresh_token_invalid"]));
  });

  it("ends the session when a token two or more generations old comes back, whatever the grace window", async () => {
    const pair = await services.sessionService.create(tenantA, createInput());
    const first = await services.sessionService.refresh(tenantA, pair.refreshToken);
    const second = await services.sessionService.refresh(tenantA, first.refreshToken);
    await services.sessionService.refresh(tenantA, second.refreshToken);
    await expectAppError(services.sessionService.refresh(tenantA, first.refreshToken), "refresh_token_invalid");
    expect((await services.sessionService.get(tenantA, pair.session.id)).recordedEnd?.reason).toBe("refresh_token_reuse");
  });

  it("keeps no rotated token anywhere: rotations leave refresh_tokens empty", async () => {
    const tenant = newId("tnt");
    let { refreshToken } = await services.sessionService.create(tenant, createInput());
    for (let i = 0; i < 5; i++) ({ refreshToken } = await services.sessionService.refresh(tenant, refreshToken));
    const [rows] = (await services.pool.query("SELECT COUNT(*) AS n FROM refresh_tokens WHERE tenant_id = ?", [tenant])) as unknown as [{ n: number }[]];
    expect(Number(rows[0]?.n)).toBe(0);
  });
});

