import { describe, expect, it } from "vitest";
import { wholeSeconds } from "../../src/domain/clock.js";
import { endOf, scheduledEndOf, statusOf, type RecordedEnd, type SessionEndState } from "../../src/domain/model.js";
import { defaultPolicy, validatePolicy } from "../../src/domain/policy.js";
import { decideRefresh } from "../../src/domain/session-service.js";
import { retentionCutoff } from "../../src/domain/sweep.js";
import type { Session } from "../../src/domain/model.js";

/** The pure rules of a session's life: status and end, the refresh decision, time precision, retention. */

const t = (iso: string) => new Date(iso);
const now = t("2026-01-15T12:00:00.500Z");

function state(over: Partial<SessionEndState> = {}): SessionEndState {
  return { expiresAt: t("2026-02-01T00:00:00Z"), idleExpiresAt: null, recordedEnd: null, ...over };
}
const ended = (reason: RecordedEnd["reason"], at = "2026-01-10T00:00:00Z"): RecordedEnd => ({ at: t(at), reason, by: null });

describe("status and end", () => {
  it.each<[string, Partial<SessionEndState>, string, { at: string; reason: string } | null]>([
    ["open, before any deadline", {}, "active", null],
    ["past its absolute expiry", { expiresAt: t("2026-01-15T12:00:00Z") }, "expired", { at: "2026-01-15T12:00:00.000Z", reason: "expired" }],
    ["exactly at its absolute expiry", { expiresAt: now }, "expired", { at: now.toISOString(), reason: "expired" }],
    ["past its idle deadline", { idleExpiresAt: t("2026-01-15T11:00:00Z") }, "expired", { at: "2026-01-15T11:00:00.000Z", reason: "idle_timeout" }],
    ["idle deadline after the absolute expiry: the expiry comes first", { expiresAt: t("2026-01-14T00:00:00Z"), idleExpiresAt: t("2026-01-14T06:00:00Z") }, "expired", { at: "2026-01-14T00:00:00.000Z", reason: "expired" }],
    ["idle deadline not yet come", { idleExpiresAt: t("2026-01-15T13:00:00Z") }, "active", null],
    ["revoked", { recordedEnd: ended("revoked") }, "revoked", { at: "2026-01-10T00:00:00.000Z", reason: "revoked" }],
    ["revoked by reuse detection", { recordedEnd: ended("refresh_token_reuse") }, "revoked", { at: "2026-01-10T00:00:00.000Z", reason: "refresh_token_reuse" }],
    ["revoked by the per-user cap", { recordedEnd: ended("session_limit") }, "revoked", { at: "2026-01-10T00:00:00.000Z", reason: "session_limit" }],
    ["its expiry recorded by the sweep", { recordedEnd: ended("expired") }, "expired", { at: "2026-01-10T00:00:00.000Z", reason: "expired" }],
    ["its idle end recorded", { recordedEnd: ended("idle_timeout") }, "expired", { at: "2026-01-10T00:00:00.000Z", reason: "idle_timeout" }],
    ["revoked with a time a little ahead of this clock (another instance's)", { recordedEnd: ended("revoked", "2026-01-15T12:00:01Z") }, "revoked", { at: "2026-01-15T12:00:01.000Z", reason: "revoked" }],
  ])("%s", (_name, over, status, end) => {
    const s = state(over);
    expect(statusOf(s, now)).toBe(status);
    const got = endOf(s, now);
    expect(got === null ? null : { at: got.at.toISOString(), reason: got.reason }).toEqual(end);
  });

  it("the scheduled end is the earlier of the absolute expiry and the idle deadline", () => {
    expect(scheduledEndOf({ expiresAt: t("2026-02-01T00:00:00Z"), idleExpiresAt: null })).toEqual({ at: t("2026-02-01T00:00:00Z"), reason: "expired" });
    expect(scheduledEndOf({ expiresAt: t("2026-02-01T00:00:00Z"), idleExpiresAt: t("2026-01-20T00:00:00Z") })).toEqual({ at: t("2026-01-20T00:00:00Z"), reason: "idle_timeout" });
    expect(scheduledEndOf({ expiresAt: t("2026-02-01T00:00:00Z"), idleExpiresAt: t("2026-02-01T00:00:00Z") })).toEqual({ at: t("2026-02-01T00:00:00Z"), reason: "expired" });
  });
});

describe("decideRefresh", () => {
  const session = (over: Partial<SessionEndState> = {}) => ({ ...state(over) }) as unknown as Session;
  const live = { rotatedAt: null, isSuccessorLive: false, isSuccessorDerived: false };
  const rotated = (msAgo: number, isSuccessorLive = true, isSuccessorDerived = true) => ({
    rotatedAt: new Date(now.getTime() - msAgo),
    isSuccessorLive,
    isSuccessorDerived,
  });
  const policy = { ...defaultPolicy, refreshGraceSeconds: 10 };
  const decide = (token: Parameters<ReturnType<typeof decideRefresh>>[0], s = session(), p = policy) => decideRefresh(now, p)(token, s);

  it.each<[string, Parameters<ReturnType<typeof decideRefresh>>[0], Partial<SessionEndState>, Record<string, unknown>]>([
    ["the live token rotates", live, {}, { action: "rotate" }],
    ["a retry within grace, successor unused, gets the same successor", rotated(9_999), {}, { action: "retry" }],
    ["a retry exactly at the end of grace is still a retry", rotated(10_000), {}, { action: "retry" }],
    ["just past grace it is reuse", rotated(10_001), {}, { action: "revoke", reason: "refresh_token_reuse", error: "refresh_token_invalid" }],
    ["within grace but the successor was used: reuse", rotated(1_000, false), {}, { action: "revoke", reason: "refresh_token_reuse", error: "refresh_token_invalid" }],
    ["within grace, successor on record not derivable (key changed): refused, nothing revoked", rotated(1_000, true, false), {}, { action: "reject", error: "refresh_token_invalid" }],
    ["a revoked session refuses any token", live, { recordedEnd: ended("revoked") }, { action: "reject", error: "session_revoked" }],
    ["a revoked session refuses a reused token without revoking again", rotated(60_000, false), { recordedEnd: ended("revoked") }, { action: "reject", error: "session_revoked" }],
    ["an expired session refuses", live, { expiresAt: t("2026-01-15T11:00:00Z") }, { action: "reject", error: "refresh_token_expired" }],
    ["an idle session refuses", rotated(1_000), { idleExpiresAt: t("2026-01-15T11:00:00Z") }, { action: "reject", error: "refresh_token_expired" }],
  ])("%s", (_name, token, over, expected) => {
    expect(decide(token, session(over))).toMatchObject(expected);
  });

  it("with the shortest grace window (1 s), a second presentation after it is reuse, revoked at a whole second", () => {
    expect(decide(rotated(1_000), session(), { ...policy, refreshGraceSeconds: 1 })).toMatchObject({ action: "retry" });
    expect(decide(rotated(1_001), session(), { ...policy, refreshGraceSeconds: 1 })).toMatchObject({ action: "revoke", at: t("2026-01-15T12:00:00Z") });
  });

  it("a policy may not turn the grace window off: two tabs refresh within milliseconds", () => {
    expect(() => validatePolicy({ ...defaultPolicy, refreshGraceSeconds: 0 })).toThrow(expect.objectContaining({ field: "refreshGraceSeconds" }));
    expect(validatePolicy({ ...defaultPolicy, refreshGraceSeconds: 1 }).refreshGraceSeconds).toBe(1);
  });

  it("records activity at the whole second and moves the idle deadline from there", () => {
    const idle = { ...policy, idleTimeoutSeconds: 3600 };
    for (const token of [live, rotated(1_000)]) {
      const d = decide(token, session(), idle);
      expect(d).toMatchObject({ activeAt: t("2026-01-15T12:00:00Z"), idleExpiresAt: t("2026-01-15T13:00:00Z") });
    }
    expect(decide(live)).toMatchObject({ idleExpiresAt: null });
  });
});

describe("time", () => {
  it("wholeSeconds truncates to the second, before and after the epoch", () => {
    expect(wholeSeconds(t("2026-01-15T12:00:00.999Z"))).toEqual(t("2026-01-15T12:00:00Z"));
    expect(wholeSeconds(t("2026-01-15T12:00:00Z"))).toEqual(t("2026-01-15T12:00:00Z"));
    expect(wholeSeconds(new Date(-1))).toEqual(new Date(-1000));
  });

  it("retention counts whole days back from now", () => {
    expect(retentionCutoff(now, 30)).toEqual(t("2025-12-16T12:00:00.500Z"));
    expect(retentionCutoff(now, 1)).toEqual(t("2026-01-14T12:00:00.500Z"));
  });
});
