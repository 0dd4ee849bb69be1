import { createLocalJWKSet, jwtVerify } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./helpers/server.js";

/** The seed's curl calls, as plain HTTP against the real server on a free port. */

let server: TestServer;
let headers: Record<string, string>;

const seedSessionKeys = [
  "id", "user_id", "tenant_id", "status", "user_agent", "ip_address", "country", "device_type",
  "created_at", "last_active_at", "expires_at",
];

async function call(method: string, path: string, init: { body?: unknown; headers?: Record<string, string>; rawBody?: string } = {}) {
  const res = await fetch(server.url + path, {
    method,
    headers: {
      ...headers,
      ...(init.body !== undefined || init.rawBody !== undefined ? { "content-type": "application/json" } : {}),
      ...init.headers,
    },
    body: init.rawBody ?? (init.body !== undefined ? JSON.stringify(init.body) : undefined),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: text ? (JSON.parse(text) as Record<string, any>) : undefined };
}

async function createSession(userId: string, extra: Record<string, unknown> = {}) {
  const res = await call("POST", "/v1/sessions", {
    body: { user_id: userId, user_agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)...", ip_address: "203.0.113.42", country: "US", ...extra },
  });
  expect(res.status).toBe(201);
  return res.json as { session: Record<string, any>; access_token: string; refresh_token: string };
}

function expectError(res: Awaited<ReturnType<typeof call>>, status: number, code: string) {
  expect(res.status).toBe(status);
  expect(res.json?.error).toMatchObject({ code, status });
  expect(res.json?.error.request_id).toMatch(/^req_/);
  expect(res.headers.get("x-request-id")).toBe(res.json?.error.request_id);
  expect(typeof res.json?.error.message).toBe("string");
}

beforeAll(async () => {
  server = await startTestServer();
  headers = server.tenant.headers;
});
afterAll(async () => {
  await server?.close();
});

describe("the seed's calls", () => {
  it("POST /v1/sessions creates a session (201) with the seed's Session object and a token pair", async () => {
    const res = await createSession("usr_01HABCDEF123456", { org_id: "org_01HABCDEF777666", role: "member", mfa_verified: true });
    for (const key of seedSessionKeys) expect(res.session).toHaveProperty(key);
    expect(res.session).toMatchObject({ user_id: "usr_01HABCDEF123456", tenant_id: server.tenant.id, status: "active", device_type: "desktop", country: "US" });
    expect(res.session.created_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
    expect(res.refresh_token).toMatch(/^rt_/);
    expect(res).toHaveProperty("access_token_expires_at");
    expect(res).toHaveProperty("refresh_token_expires_at");
  });

  it("GET /v1/sessions?user_id= lists active sessions in the {data, pagination} envelope", async () => {
    const user = "usr_list_1";
    const a = await createSession(user);
    const b = await createSession(user);
    const res = await call("GET", `/v1/sessions?user_id=${user}`);
    expect(res.status).toBe(200);
    expect(res.json?.data.map((s: { id: string }) => s.id)).toEqual([b.session.id, a.session.id]);
    expect(res.json?.pagination).toEqual({ limit: 20, has_more: false, next_cursor: null });
    const paged = await call("GET", `/v1/sessions?user_id=${user}&limit=1`);
    expect(paged.json?.pagination).toMatchObject({ limit: 1, has_more: true });
    const next = await call("GET", `/v1/sessions?user_id=${user}&limit=1&cursor=${encodeURIComponent(paged.json?.pagination.next_cursor)}`);
    expect(next.json?.data[0].id).toBe(a.session.id);
    const revokedOnly = await call("GET", `/v1/sessions?user_id=${user}&status=revoked`);
    expect(revokedOnly.json?.data).toEqual([]);
  });

  it("GET /v1/sessions/:id fetches one session", async () => {
    const { session } = await createSession("usr_get");
    const res = await call("GET", `/v1/sessions/${session.id}`);
    expect(res.status).toBe(200);
    expect(res.json).toEqual(session);
  });

  it("POST /v1/sessions/verify returns the seed's payload, and any verifier can check the token from JWKS", async () => {
    const created = await createSession("usr_verify", { org_id: "org_1", role: "admin", mfa_verified: true });
    const res = await call("POST", "/v1/sessions/verify", { body: { token: created.access_token } });
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({
      valid: true,
      session_id: created.session.id,
      user_id: "usr_verify",
      tenant_id: server.tenant.id,
      role: "admin",
      org_id: "org_1",
      mfa_verified: true,
    });
    expect(res.json?.expires_at).toMatch(/Z$/);
    expect(res.json?.error).toBeNull();

    const jwks = await fetch(`${server.url}/.well-known/jwks.json`);
    expect(jwks.headers.get("cache-control")).toMatch(/max-age=\d+/);
    const body = (await jwks.json()) as { keys: Record<string, string>[] };
    expect(body.keys[0]).toMatchObject({ kty: "OKP", crv: "Ed25519", alg: "EdDSA", use: "sig" });
    const { payload, protectedHeader } = await jwtVerify(created.access_token, createLocalJWKSet(body as never), { algorithms: ["EdDSA"] });
    expect(protectedHeader).toMatchObject({ alg: "EdDSA", typ: "at+jwt" });
    expect(payload).toMatchObject({ sid: created.session.id, tenant_id: server.tenant.id, sub: "usr_verify", aud: server.tenant.id, role: "admin", org_id: "org_1", mfa_verified: true, iss: server.config.issuer });
  });

  it("DELETE /v1/sessions/:id revokes (204, empty body); the token is then invalid", async () => {
    const created = await createSession("usr_revoke");
    const res = await call("DELETE", `/v1/sessions/${created.session.id}`);
    expect(res.status).toBe(204);
    expect(res.text).toBe("");
    const verify = await call("POST", "/v1/sessions/verify", { body: { token: created.access_token } });
    expect(verify.json).toMatchObject({ valid: false, error: { code: "session_revoked" } });
    const fetched = await call("GET", `/v1/sessions/${created.session.id}`);
    expect(fetched.json).toMatchObject({ status: "revoked", revoke_reason: "revoked" });
  });

  it("DELETE /v1/sessions?user_id= revokes all of a user's sessions and counts them", async () => {
    for (let i = 0; i < 3; i++) await createSession("usr_01HABCDEF123456_all");
    const res = await call("DELETE", "/v1/sessions?user_id=usr_01HABCDEF123456_all");
    expect(res.status).toBe(200);
    expect(res.json).toEqual({ revoked: 3 });
  });

  it("POST /v1/auth/token/refresh rotates with only the tenant header", async () => {
    const created = await createSession("usr_refresh");
    const res = await call("POST", "/v1/auth/token/refresh", {
      headers: { authorization: "", "x-tenant-id": server.tenant.id },
      body: { refresh_token: created.refresh_token },
    });
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({ session_id: created.session.id, token_type: "Bearer", expires_in: 900 });
    expect(res.json?.refresh_token).not.toBe(created.refresh_token);
    const bad = await call("POST", "/v1/auth/token/refresh", { body: { refresh_token: "rt_unknown" } });
    expectError(bad, 401, "refresh_token_invalid");
  });
});

describe("errors", () => {
  it("401 missing_token without Authorization; 401 invalid_api_key for unknown and wrong-tenant keys, identical bodies", async () => {
    expectError(await call("GET", "/v1/sessions", { headers: { authorization: "" } }), 401, "missing_token");
    const unknown = await call("GET", "/v1/sessions", { headers: { authorization: `Bearer sk_live_${"A".repeat(43)}` } });
    expectError(unknown, 401, "invalid_api_key");
    const other = await server.addTenant("Other");
    const wrongTenant = await call("GET", "/v1/sessions", { headers: { authorization: `Bearer ${other.secretKey}` } });
    expectError(wrongTenant, 401, "invalid_api_key");
    const strip = (r: typeof unknown) => ({ ...r.json?.error, request_id: undefined });
    expect(strip(wrongTenant)).toEqual(strip(unknown));
    expectError(await call("GET", "/v1/sessions", { headers: { authorization: "Basic abc" } }), 401, "invalid_api_key");
    expectError(await call("GET", "/v1/sessions", { headers: { "x-tenant-id": "" } }), 400, "invalid_request");
  });

  it("404 session_not_found for unknown ids and for another tenant's session", async () => {
    expectError(await call("GET", "/v1/sessions/ses_01HABCDEF999888"), 404, "session_not_found");
    const other = await server.addTenant("Other2");
    const theirs = await fetch(`${server.url}/v1/sessions`, {
      method: "POST",
      headers: { ...other.headers, "content-type": "application/json" },
      body: JSON.stringify({ user_id: "u" }),
    }).then((r) => r.json() as Promise<{ session: { id: string } }>);
    expectError(await call("GET", `/v1/sessions/${theirs.session.id}`), 404, "session_not_found");
    expectError(await call("DELETE", `/v1/sessions/${theirs.session.id}`), 404, "session_not_found");
  });

  it.each(["0", "101", "abc", "1.5", "-1"])("400 invalid_request for limit=%s", async (limit) => {
    expectError(await call("GET", `/v1/sessions?limit=${limit}`), 400, "invalid_request");
  });

  it("400 invalid_cursor for forged cursors and 400 for unknown statuses", async () => {
    expectError(await call("GET", "/v1/sessions?cursor=cur_forged.abc"), 400, "invalid_cursor");
    expectError(await call("GET", "/v1/sessions?status=sleeping"), 400, "invalid_request");
  });

  it("malformed JSON, wrong types and unknown fields are 400; oversized bodies 413; nothing is created", async () => {
    const user = "usr_bad_input";
    expectError(await call("POST", "/v1/sessions", { rawBody: "{not json" }), 400, "invalid_request");
    expectError(await call("POST", "/v1/sessions", { body: { user_id: 42 } }), 400, "invalid_request");
    expectError(await call("POST", "/v1/sessions", { body: { user_id: user, mfa_verified: "yes" } }), 400, "invalid_request");
    expectError(await call("POST", "/v1/sessions", { body: { user_id: user, session_id: "ses_mine" } }), 400, "invalid_request");
    expectError(await call("POST", "/v1/sessions", { body: { user_id: user, user_agent: "x".repeat(server.config.bodyLimitBytes) } }), 413, "payload_too_large");
    const listed = await call("GET", `/v1/sessions?user_id=${user}&status=active`);
    expect(listed.json?.data).toEqual([]);
  });

  it("garbage tokens are 200 valid:false invalid_token; a missing token is 400", async () => {
    for (const token of ["garbage", "eyJhbGciOiJFZERTQSJ9...", "a.b.c"]) {
      const res = await call("POST", "/v1/sessions/verify", { body: { token } });
      expect(res.status).toBe(200);
      expect(res.json).toMatchObject({ valid: false, session_id: null, error: { code: "invalid_token" } });
    }
    expectError(await call("POST", "/v1/sessions/verify", { body: {} }), 400, "invalid_request");
  });

  it("unknown paths are 404 in the envelope", async () => {
    expectError(await call("GET", "/v1/nothing"), 404, "not_found");
  });
});

describe("operations", () => {
  it("serves /healthz, /readyz and Prometheus /metrics", async () => {
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
    expect((await fetch(`${server.url}/readyz`)).status).toBe(200);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toContain("sessions_rpc_duration_seconds_bucket");
    expect(metrics).toContain('method="CreateSession",protocol="rest"');
    expect(metrics).toMatch(/sessions_db_pool_connections\{state="in_use"\} \d+/);
    expect(metrics).toMatch(/sessions_db_pool_connections\{state="waiting"\} \d+/);
  });

  it("counts what operators watch: sessions created and ended by reason, verify results", async () => {
    const read = async () => (await (await fetch(`${server.url}/metrics`)).text()).split("\n");
    const value = (lines: string[], series: string) => Number(lines.find((l) => l.startsWith(`${series} `))?.split(" ")[1] ?? 0);
    const before = await read();
    const s = await createSession("usr_metrics");
    await call("POST", "/v1/sessions/verify", { body: { token: s.access_token } });
    await call("POST", "/v1/sessions/verify", { body: { token: "not.a.token" } });
    expect((await call("DELETE", `/v1/sessions/${s.session.id}`)).status).toBe(204);
    await call("POST", "/v1/sessions/verify", { body: { token: s.access_token } });
    // Events are counted where they are numbered (one instance at a time).
    while (((await server.services.eventSequencer.sequenceOnce()) ?? 0) > 0);
    const after = await read();
    const delta = (series: string) => value(after, series) - value(before, series);
    expect(delta('sessions_events_total{type="session.created",reason=""}')).toBeGreaterThanOrEqual(1);
    expect(delta('sessions_events_total{type="session.revoked",reason="revoked"}')).toBeGreaterThanOrEqual(1);
    expect(delta('sessions_verify_total{result="valid"}')).toBe(1);
    expect(delta('sessions_verify_total{result="invalid_token"}')).toBe(1);
    expect(delta('sessions_verify_total{result="session_revoked"}')).toBe(1);
  });

  it("a revoke acknowledged by one instance is seen by the next verify on another", async () => {
    const second = await startTestServer({ sharedWith: server });
    try {
      const created = await createSession("usr_two_instances");
      const revoked = await call("DELETE", `/v1/sessions/${created.session.id}`);
      expect(revoked.status).toBe(204);
      const res = await fetch(`${second.url}/v1/sessions/verify`, {
        method: "POST",
        headers: { ...headers, "content-type": "application/json" },
        body: JSON.stringify({ token: created.access_token }),
      });
      expect(await res.json()).toMatchObject({ valid: false, error: { code: "session_revoked" } });
    } finally {
      await second.close();
    }
  });
});
