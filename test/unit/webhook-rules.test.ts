import { describe, expect, it } from "vitest";
import { AppError } from "../../src/domain/errors.js";
import { seal, unseal } from "../../src/domain/secrets.js";
import { checkWebhookUrl, isBlockedAddress, newWebhookSecret, nextAttemptAt, parseEventTypes, retryDelaysSeconds, wantsEvent } from "../../src/domain/webhooks.js";

describe("webhook rules", () => {
  it("block loopback, private, link-local, CGNAT, reserved and mapped forms; allow public addresses", () => {
    const blocked = ["127.0.0.1", "127.255.0.9", "10.0.0.1", "172.16.5.4", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "198.18.0.1",
      "::", "::1", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:10.0.0.1", "::127.0.0.1", "::7f00:1", "64:ff9b::7f00:1", "64:ff9b::10.1.2.3", "2002:7f00:1::", "2002:a9fe:a9fe::1", "2001:db8::1", "not-an-ip"];
    for (const a of blocked) expect(isBlockedAddress(a), a).toBe(true);
    for (const a of ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "2a00:1450:4001:80e::200e"]) expect(isBlockedAddress(a), a).toBe(false);
  });

  it("accept http(s) URLs only, without credentials or fragments", () => {
    expect(checkWebhookUrl("https://hooks.example.com/sessions?x=1").href).toBe("https://hooks.example.com/sessions?x=1");
    for (const url of ["ftp://x.example/", "https://u:p@x.example/", "https://x.example/#frag", "/relative", "javascript:alert(1)", `https://x.example/${"a".repeat(2048)}`]) {
      expect(() => checkWebhookUrl(url), url).toThrow(AppError);
    }
  });

  it("parse event filters: none given is every type, empty and unknown names refused, repeats folded", () => {
    expect(parseEventTypes(undefined)).toEqual([]);
    expect(() => parseEventTypes(" ")).toThrow(/at least one event type/);
    expect(parseEventTypes("session.revoked, session.ended,session.revoked")).toEqual(["session.revoked", "session.ended"]);
    expect(() => parseEventTypes("session.revoked,")).toThrow(/unknown event type ""/);
    expect(() => parseEventTypes("Session.Revoked")).toThrow(/unknown event type/);
    expect(wantsEvent({ eventTypes: [] }, "signing_key.revoked")).toBe(true);
    expect(wantsEvent({ eventTypes: ["session.revoked"] }, "session.created")).toBe(false);
  });

  it("retry for more than 24 hours, then stop", () => {
    const t0 = new Date("2026-01-01T00:00:00Z");
    let at = t0;
    let attempts = 1;
    for (let next = nextAttemptAt(attempts, at); next !== null; next = nextAttemptAt(++attempts, at)) at = next;
    expect(attempts).toBe(retryDelaysSeconds.length + 1);
    expect(at.getTime() - t0.getTime()).toBeGreaterThan(24 * 3600 * 1000);
  });

  it("make whsec_ secrets of 24 random bytes, sealed so that only their endpoint's row opens them", () => {
    const secret = newWebhookSecret();
    expect(secret).toMatch(/^whsec_[A-Za-z0-9+/]{32}$/);
    const kek = Buffer.alloc(32, 3);
    const sealed = seal(kek, "whk_A", Buffer.from(secret));
    expect(unseal(kek, "whk_A", sealed).toString()).toBe(secret);
    expect(() => unseal(kek, "whk_B", sealed)).toThrow();
    expect(() => unseal(Buffer.alloc(32, 4), "whk_A", sealed)).toThrow();
  });
});
