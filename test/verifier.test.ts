import net from "node:net";
import { spawn } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import Fastify from "fastify";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { createSessionVerifier, sessionHook, sessionMiddleware, type SessionVerifier, type VerifyResult } from "../src/client/verifier.js";
import { revokeSigningKey } from "../src/domain/signing-keys.js";
import { createSigningKeyStore } from "../src/store/signing-key-store.js";
import { startFaultProxy } from "./faults/helpers/fault-proxy.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * The local verifier (src/client/verifier.ts), against two real instances on one database: it
 * follows instance B's feed while every change is made through instance A; it hears every way a
 * session ends, catches up on what happened before it started, resumes after a cut connection,
 * follows signing keys, keeps tenants apart, and fails closed when the service goes quiet.
 */

let a: TestServer;
let b: TestServer;
const verifiers: SessionVerifier[] = [];

beforeAll(async () => {
  const env = { EVENT_POLL_INTERVAL_MS: "10", EVENT_HEARTBEAT_SECONDS: "1", API_KEY_CACHE_SECONDS: "0" };
  a = await startTestServer({ env });
  b = await startTestServer({ sharedWith: a, env });
  a.services.eventSequencer.start();
});
afterAll(async () => {
  for (const v of verifiers) v.close();
  await b?.close();
  await a?.close();
});

function verifierOn(target: TestServer, tenant = target.tenant, options: { maxStalenessMs?: number; onStale?: "fail" | "verify"; baseUrl?: string } = {}) {
  const v = createSessionVerifier({ baseUrl: target.url, tenantId: tenant.id, secretKey: tenant.secretKey, issuer: target.config.issuer, ...options });
  verifiers.push(v);
  return v;
}

async function call(method: string, path: string, body?: unknown, headers = a.tenant.headers) {
  const res = await fetch(a.url + path, {
    method,
    headers: { ...headers, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: (text ? JSON.parse(text) : undefined) as Record<string, any> | undefined };
}

async function create(userId: string, headers = a.tenant.headers) {
  const res = await call("POST", "/v1/sessions", { user_id: userId }, headers);
  expect(res.status).toBe(201);
  return res.json as { session: { id: string }; access_token: string; refresh_token: string };
}

/** The verifier's answer once it settles on `code` (the feed delivers within a poll interval or so). */
async function settlesOn(v: SessionVerifier, token: string, code: string): Promise<VerifyResult> {
  return vi.waitFor(
    async () => {
      const result = await v.verify(token);
      expect(result.valid ? "valid" : result.error.code).toBe(code);
      return result;
    },
    { timeout: 10_000, interval: 20 },
  );
}

describe("the local verifier", () => {
  it("accepts a live session's token and hears every way a session ends, made on the other instance", async () => {
    const v = verifierOn(b);
    await v.ready;
    const live = await create("usr_sdk_live");
    const ok = await v.verify(live.access_token);
    expect(ok).toMatchObject({ valid: true, sessionId: live.session.id, userId: "usr_sdk_live", tenantId: a.tenant.id, mfaVerified: false });

    const single = await create("usr_sdk_single");
    const all = [await create("usr_sdk_all"), await create("usr_sdk_all")];
    const reused = await create("usr_sdk_reuse");
    for (const s of [single, ...all, reused]) expect((await v.verify(s.access_token)).valid).toBe(true);

    expect((await call("DELETE", `/v1/sessions/${single.session.id}`)).status).toBe(204);
    expect((await call("DELETE", "/v1/sessions?user_id=usr_sdk_all")).json).toEqual({ revoked: 2 });
    // A refresh token used twice outside the grace window revokes the session: rotate twice, then replay the first.
    const first = await call("POST", "/v1/auth/token/refresh", { refresh_token: reused.refresh_token }, { "x-tenant-id": a.tenant.id });
    await call("POST", "/v1/auth/token/refresh", { refresh_token: first.json!.refresh_token }, { "x-tenant-id": a.tenant.id });
    await call("POST", "/v1/auth/token/refresh", { refresh_token: reused.refresh_token }, { "x-tenant-id": a.tenant.id });
    expect((await call("GET", `/v1/sessions/${reused.session.id}`)).json?.status).toBe("revoked");

    for (const s of [single, ...all, reused]) {
      expect(await settlesOn(v, s.access_token, "session_revoked")).toMatchObject({ error: { message: "the session has been revoked" } });
    }
    // The others are untouched.
    expect((await v.verify(live.access_token)).valid).toBe(true);
    expect(v.deniedSessions).toBeGreaterThanOrEqual(4);
  });

  it("refuses, once ready, the sessions revoked before it started", async () => {
    const earlier = await create("usr_sdk_earlier");
    expect((await call("DELETE", `/v1/sessions/${earlier.session.id}`)).status).toBe(204);
    // The sequencer numbers the revoke within a poll; a verifier started after it reads the last day.
    const watcher = verifierOn(b);
    await watcher.ready;
    await settlesOn(watcher, earlier.access_token, "session_revoked");
    const v = verifierOn(b);
    await v.ready;
    expect(await v.verify(earlier.access_token)).toMatchObject({ valid: false, error: { code: "session_revoked" } });
  });

  it("keeps tenants apart: another tenant's token is tenant_mismatch, its revocations are not heard", async () => {
    const other = await a.addTenant("Other");
    const v = verifierOn(b);
    await v.ready;
    const theirs = await create("usr_sdk_other", other.headers);
    expect(await v.verify(theirs.access_token)).toMatchObject({ valid: false, error: { code: "tenant_mismatch" } });
    const theirVerifier = verifierOn(b, other);
    await theirVerifier.ready;
    expect((await theirVerifier.verify(theirs.access_token)).valid).toBe(true);
    const before = v.deniedSessions;
    expect((await call("DELETE", `/v1/sessions/${theirs.session.id}`, undefined, other.headers)).status).toBe(204);
    await settlesOn(theirVerifier, theirs.access_token, "session_revoked");
    expect(v.deniedSessions).toBe(before);
  });

  it("answers invalid_token for garbage, a forged signature, another issuer; token_expired is the server's too", async () => {
    const v = verifierOn(b);
    await v.ready;
    const s = await create("usr_sdk_garbage");
    // (A changed signature character in the middle: the last one carries spare bits a decoder drops.)
    const forged = s.access_token.slice(0, -10) + (s.access_token.at(-10) === "A" ? "B" : "A") + s.access_token.slice(-9);
    for (const token of ["", "x", "a.b.c", `${s.access_token}x`, forged]) {
      expect(await v.verify(token)).toMatchObject({ valid: false, error: { code: "invalid_token" } });
    }
    const wrongIssuer = createSessionVerifier({ baseUrl: b.url, tenantId: a.tenant.id, secretKey: a.tenant.secretKey, issuer: "https://elsewhere.example" });
    verifiers.push(wrongIssuer);
    await wrongIssuer.ready;
    expect(await wrongIssuer.verify(s.access_token)).toMatchObject({ valid: false, error: { code: "invalid_token" } });
  });

  it("follows signing keys: an emergency-revoked key's tokens are refused at once, its replacement's accepted once published", async () => {
    const v = verifierOn(b);
    await v.ready;
    const before = await create("usr_sdk_keys");
    expect((await v.verify(before.access_token)).valid).toBe(true);
    const kidOf = (t: string) => (JSON.parse(Buffer.from(t.split(".")[0]!, "base64url").toString()) as { kid: string }).kid;
    // Revoking the only signing key makes a replacement that signs at once.
    await revokeSigningKey(createSigningKeyStore(a.services.pool), a.config.keyEncryptionKey, kidOf(before.access_token), new Date());
    await settlesOn(v, before.access_token, "invalid_token");
    await a.services.keyRing.reload();
    const after = await create("usr_sdk_keys");
    expect(kidOf(after.access_token)).not.toBe(kidOf(before.access_token));
    // Instance B publishes it at its next key reload (every 5 s); the verifier fetches until it has it.
    await settlesOn(v, after.access_token, "valid");
  });

  it("resumes after its connection is cut, losing no revocation made meanwhile", async () => {
    const proxy = await startFaultProxy(b.port);
    try {
      const v = createSessionVerifier({ baseUrl: `http://127.0.0.1:${proxy.port}`, tenantId: a.tenant.id, secretKey: a.tenant.secretKey, issuer: b.config.issuer, maxStalenessMs: 60_000 });
      verifiers.push(v);
      await v.ready;
      const s = await create("usr_sdk_cut");
      expect((await v.verify(s.access_token)).valid).toBe(true);
      proxy.setMode("refuse");
      expect((await call("DELETE", `/v1/sessions/${s.session.id}`)).status).toBe(204);
      // Cut off, it still vouches for the session (within maxStalenessMs); back, it hears the revoke.
      proxy.setMode("pass");
      await settlesOn(v, s.access_token, "session_revoked");
    } finally {
      await proxy.close();
    }
  });

  it("fails closed when the service goes quiet, and with onStale: verify asks the service (unavailable when it is gone too)", async () => {
    const proxy = await startFaultProxy(b.port);
    try {
      const baseUrl = `http://127.0.0.1:${proxy.port}`;
      const closed = verifierOn(b, a.tenant, { baseUrl, maxStalenessMs: 1_500 });
      const asking = verifierOn(b, a.tenant, { baseUrl, maxStalenessMs: 1_500, onStale: "verify" });
      await closed.ready;
      await asking.ready;
      const s = await create("usr_sdk_quiet");
      expect((await closed.verify(s.access_token)).valid).toBe(true);
      // The feed stalls: no event, no heartbeat.
      proxy.setMode("blackhole");
      await settlesOn(closed, s.access_token, "unavailable");
      expect(closed.isFresh()).toBe(false);
      // (Each verifier goes stale on its own clock: the asking one may have heard last a moment later.)
      await vi.waitFor(() => expect(asking.isFresh()).toBe(false), { timeout: 10_000, interval: 20 });
      expect(await asking.verify(s.access_token)).toMatchObject({ valid: false, error: { code: "unavailable" } });
      // The service reachable again: the asking verifier gets the service's answer before its feed has caught up.
      proxy.setMode("pass");
      await settlesOn(asking, s.access_token, "valid");
      await settlesOn(closed, s.access_token, "valid");
    } finally {
      await proxy.close();
    }
  });
});

describe("the local verifier's start", () => {
  it("keeps a program that awaits ready alive through connection failures, and says when its key is refused", async () => {
    const proxy = await startFaultProxy(b.port);
    proxy.setMode("refuse");
    const script = new URL(`./.verifier-start-${process.pid}.mjs`, import.meta.url);
    writeFileSync(
      script,
      `import { createSessionVerifier } from "../src/client/verifier.ts";
       const v = createSessionVerifier({ baseUrl: process.env.BASE, tenantId: process.env.TNT, secretKey: process.env.SK, issuer: process.env.ISS, onError: (e) => console.log("error", e.message) });
       await v.ready;
       console.log("ready", v.isFresh());
       v.close();
       console.log("closed", v.isFresh());`,
    );
    try {
      const child = spawn(process.execPath, ["--import", "tsx", script.pathname], {
        env: { ...process.env, BASE: `http://127.0.0.1:${proxy.port}`, TNT: a.tenant.id, SK: a.tenant.secretKey, ISS: b.config.issuer },
      });
      let out = "";
      const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
      child.stdout.on("data", (d: Buffer) => (out += d.toString()));
      // Two failed connections (a backoff between them), then the service is reachable again.
      await vi.waitFor(() => expect(out.match(/^error/gm)?.length ?? 0).toBeGreaterThanOrEqual(2), { timeout: 20_000, interval: 20 });
      proxy.setMode("pass");
      expect(await exited).toBe(0);
      expect(out).toContain("ready true");
      expect(out).toContain("closed false");

      const wrongKey = createSessionVerifier({ baseUrl: b.url, tenantId: a.tenant.id, secretKey: "sk_live_not_a_key", issuer: b.config.issuer });
      verifiers.push(wrongKey);
      await expect(wrongKey.ready).rejects.toThrow(/refused the secret key/);
    } finally {
      rmSync(script, { force: true });
      await proxy.close();
    }
  });
});

describe("the middlewares", () => {
  it("node:http (framework-neutral) and fastify: 200 with the session, 401 with the error shape, 503 when stale", async () => {
    const v = verifierOn(b);
    await v.ready;
    const s = await create("usr_sdk_mw");
    const middleware = sessionMiddleware(v);
    const plain = http.createServer((req, res) =>
      middleware(req as typeof req & { session?: VerifyResult }, res, () => {
        const session = (req as typeof req & { session?: VerifyResult }).session;
        res.end(JSON.stringify({ user: session?.valid ? session.userId : null }));
      }),
    );
    await new Promise<void>((resolve) => plain.listen(0, "127.0.0.1", resolve));
    const fastify = Fastify();
    fastify.addHook("onRequest", sessionHook(v));
    fastify.get("/me", async (request) => {
      const session = (request as unknown as { session: VerifyResult }).session;
      return { user: session.valid ? session.userId : null };
    });
    await fastify.listen({ port: 0, host: "127.0.0.1" });
    try {
      for (const url of [`http://127.0.0.1:${(plain.address() as { port: number }).port}/me`, `http://127.0.0.1:${(fastify.server.address() as { port: number }).port}/me`]) {
        const ok = await fetch(url, { headers: { authorization: `Bearer ${s.access_token}` } });
        expect([ok.status, await ok.json()]).toEqual([200, { user: "usr_sdk_mw" }]);
        // The scheme is case-insensitive.
        expect((await fetch(url, { headers: { authorization: `bearer ${s.access_token}` } })).status).toBe(200);
        // Two Authorization headers (Node keeps the first in req.headers): ambiguous, refused.
        const { port } = new URL(url);
        for (const pair of [[s.access_token, "junk"], ["junk", s.access_token], [s.access_token, s.access_token]]) {
          const answer = await new Promise<string>((resolve, reject) => {
            const socket = net.connect(Number(port), "127.0.0.1", () =>
              socket.end(`GET /me HTTP/1.1\r\nHost: x\r\n${pair.map((t) => `Authorization: Bearer ${t}\r\n`).join("")}Connection: close\r\n\r\n`),
            );
            let data = "";
            socket.on("data", (chunk) => (data += chunk));
            socket.on("end", () => resolve(data));
            socket.on("error", reject);
          });
          expect(answer, pair.join(" + ")).toMatch(/^HTTP\/1.1 401 /);
        }
        const missing = await fetch(url);
        expect(missing.status).toBe(401);
        expect(missing.headers.get("www-authenticate")).toBe('Bearer error="invalid_token"');
        expect(((await missing.json()) as { error: { code: string } }).error.code).toBe("invalid_token");
      }
      expect((await call("DELETE", `/v1/sessions/${s.session.id}`)).status).toBe(204);
      await settlesOn(v, s.access_token, "session_revoked");
      const revoked = await fetch(`http://127.0.0.1:${(fastify.server.address() as { port: number }).port}/me`, { headers: { authorization: `Bearer ${s.access_token}` } });
      expect([revoked.status, ((await revoked.json()) as { error: { code: string } }).error.code]).toEqual([401, "session_revoked"]);
      v.close();
      const stale = await fetch(`http://127.0.0.1:${(plain.address() as { port: number }).port}/me`, { headers: { authorization: `Bearer ${s.access_token}` } });
      expect(stale.status).toBe(503);
    } finally {
      await fastify.close();
      await new Promise((resolve) => plain.close(resolve));
    }
  });
});
