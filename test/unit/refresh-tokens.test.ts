import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  isGenuine,
  lastGeneration,
  legacyRefreshTokenPattern,
  numberedRefreshToken,
  parseNumberedRefreshToken,
  recordOfGeneration,
} from "../../src/domain/refresh-tokens.js";
import { newId } from "../../src/domain/secrets.js";

/** Numbered refresh tokens as a codec, and how a generation reads against the live one (src/domain/refresh-tokens.ts). */
const key = randomBytes(32);
const nonce = randomBytes(32);
const tenant = newId("tnt");
const session = newId("ses");
const base64url = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

describe("numbered refresh tokens", () => {
  it.each([0, 1, 255, 65_536, lastGeneration])("generation %d: made, read back, and genuine only under its key, tenant and nonce", (generation) => {
    const token = numberedRefreshToken(key, tenant, session, generation, nonce);
    expect(token).toMatch(/^rt_[A-Za-z0-9_-]{83}$/);
    expect(legacyRefreshTokenPattern.test(token)).toBe(false);
    const read = parseNumberedRefreshToken(token);
    expect(read).toMatchObject({ sessionId: session, generation });
    expect(isGenuine(key, tenant, read!, nonce)).toBe(true);
    expect(isGenuine(randomBytes(32), tenant, read!, nonce)).toBe(false);
    expect(isGenuine(key, newId("tnt"), read!, nonce)).toBe(false);
    expect(isGenuine(key, tenant, read!, randomBytes(32))).toBe(false);
  });

  it("gives each generation and session its own token", () => {
    const tokens = new Set([0, 1, 2].flatMap((g) => [session, newId("ses")].map((s) => numberedRefreshToken(key, tenant, s, g, nonce))));
    expect(tokens.size).toBe(6);
  });

  it("reads nothing else as a numbered token", () => {
    const token = numberedRefreshToken(key, tenant, session, 7, nonce);
    // The same bytes spelled another way: the last character's 4 spare bits changed.
    const respelled = token.slice(0, -1) + base64url[base64url.indexOf(token.at(-1) as string) ^ 1];
    expect(Buffer.from(respelled.slice(3), "base64url")).toEqual(Buffer.from(token.slice(3), "base64url"));
    for (const other of [
      `rt_${randomBytes(32).toString("base64url")}`, // legacy
      token.slice(0, -1), // short
      `${token}A`, // long
      `xx_${token.slice(3)}`,
      respelled,
      `rt_${Buffer.alloc(62, 0x75).toString("base64url")}`, // lower-case "ulid"
      `rt_${"!".repeat(83)}`,
    ]) {
      expect(parseNumberedRefreshToken(other), other).toBeUndefined();
    }
  });
});

describe("a generation against the live one", () => {
  const rotatedAt = new Date("2026-11-30T12:00:00Z");
  it.each([
    ["the live token", 5, { generation: 5, rotatedAt }, { rotatedAt: null, isSuccessorLive: false, isSuccessorDerived: true }],
    ["the first token, live", 0, { generation: 0, rotatedAt: null }, { rotatedAt: null, isSuccessorLive: false, isSuccessorDerived: true }],
    ["the one just rotated away", 4, { generation: 5, rotatedAt }, { rotatedAt, isSuccessorLive: true, isSuccessorDerived: true }],
    ["an older one", 3, { generation: 5, rotatedAt }, { rotatedAt, isSuccessorLive: false, isSuccessorDerived: true }],
    ["the first, long rotated", 0, { generation: 5, rotatedAt }, { rotatedAt, isSuccessorLive: false, isSuccessorDerived: true }],
    ["one past the live token (never issued)", 6, { generation: 5, rotatedAt }, undefined],
  ])("%s", (_name, presented, chain, expected) => {
    expect(recordOfGeneration(presented, { ...chain, nonce })).toEqual(expected);
  });
});
