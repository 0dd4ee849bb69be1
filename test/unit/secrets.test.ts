import { describe, expect, it } from "vitest";
import { newId, newSecret } from "../../src/domain/secrets.js";

/** Secrets and ids draw from one pool of random bytes (src/domain/secrets.ts): no byte is handed out twice. */
describe("pooled randomness", () => {
  it("gives every secret and id its own bytes, across many refills of the pool", () => {
    const secrets = new Set<string>();
    const ids = new Set<string>();
    // 32 bytes a secret and 16 an id: about 35 refills of the 4 KiB pool, at every offset.
    for (let i = 0; i < 3_000; i++) {
      secrets.add(newSecret("rt_"));
      ids.add(newId("ses"));
    }
    expect(secrets.size).toBe(3_000);
    expect(ids.size).toBe(3_000);
    for (const s of secrets) expect(s).toMatch(/^rt_[A-Za-z0-9_-]{43}$/);
    // No secret shares its bytes with the one before it (a view reused before it was read would).
    const bodies = [...secrets].map((s) => Buffer.from(s.slice(3), "base64url"));
    for (let i = 1; i < bodies.length; i++) expect(bodies[i]?.subarray(0, 16).equals(bodies[i - 1]?.subarray(16) as Buffer)).toBe(false);
  });
});
