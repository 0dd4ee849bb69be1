import { describe, expect, it } from "vitest";
import { file_sessions_v1_sessions } from "../../gen/sessions/v1/sessions_pb.js";
import { newSecret } from "../../src/domain/secrets.js";
import { newWebhookSecret } from "../../src/domain/webhooks.js";
import { isFieldLike, isFieldPath, withoutUnsafeNames } from "../../src/transport/field-names.js";

/** The bound in src/transport/field-names.ts between names an error may repeat and secrets it must not. */
describe("isFieldLike", () => {
  it("takes every field name of the API, as proto and JSON spell them, and paths of them", () => {
    const names = file_sessions_v1_sessions.messages.flatMap((m) => m.fields.flatMap((f) => [f.name, f.jsonName]));
    expect(names.length).toBeGreaterThan(20);
    for (const name of names) expect(isFieldLike(name), name).toBe(true);
    expect(isFieldPath("session.created_at")).toBe(true);
    expect(isFieldPath("data[1].status")).toBe(true);
  });

  it("refuses every kind of secret the service issues, including the ones that are base64url letters and digits only", () => {
    for (let i = 0; i < 2_000; i++) {
      for (const secret of [newSecret("rt_"), newSecret("sk_live_"), newSecret("sk_test_"), newWebhookSecret()]) {
        expect(isFieldLike(secret), secret).toBe(false);
        expect(isFieldLike(secret.replace(/[-+/=]/g, "A")), secret).toBe(false);
      }
    }
    // A name is one name: a short JWT's segments are field-like, the whole is not.
    expect(isFieldLike("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0.c2ln")).toBe(false);
    expect(isFieldPath(`eyJhbGciOiJFZERTQSIsImtpZCI6ImtleV8xIiwidHlwIjoiYXQrand0In0.${"eyJzdWIiOiJ1In0".repeat(4)}.sig`)).toBe(false);
    expect(isFieldLike("")).toBe(false);
    expect(isFieldLike("1abc")).toBe(false);
  });
});

describe("withoutUnsafeNames", () => {
  it("keeps a field-like key and hides any other, quotes inside it included", () => {
    expect(withoutUnsafeNames('cannot decode message X from JSON: key "bogus" is unknown')).toBe('cannot decode message X from JSON: key "bogus" is unknown');
    const secret = `rt_${"A".repeat(43)}`;
    expect(withoutUnsafeNames(`cannot decode message X from JSON: key "${secret}" is unknown`)).toBe('cannot decode message X from JSON: key "…" is unknown');
    expect(withoutUnsafeNames('key "a" is unknown, key "sk_live_x" is unknown')).toBe('key "…" is unknown');
    expect(withoutUnsafeNames(`cannot decode message X from JSON: duplicate object key "${secret}"`)).toBe('cannot decode message X from JSON: duplicate object key "…"');
  });
});
