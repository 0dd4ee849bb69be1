import http2 from "node:http2";
import { Writable } from "node:stream";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { decodeJwt } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fromBinary } from "@bufbuild/protobuf";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { SessionService, type CreateSessionResponse, type RefreshSessionResponse } from "../gen/sessions/v1/sessions_pb.js";
import { manualClock } from "./helpers/clock.js";
import { rotationStatement, whileRowLocked } from "./helpers/row-lock.js";
import { callUnary, callUnaryWithHeaders, grpcClient } from "./helpers/grpc-client.js";
import { rawHttp as sendRaw } from "./helpers/raw-http.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * Nothing a client does by mistake may log a user out or touch another user's sessions: refresh
 * races and retries, caching, destructive calls without explicit intent, look-alike identifiers,
 * revoking what already ended, and errors raised before any handler. Real servers, real database,
 * an injected clock for the grace window.
 */

const clock = manualClock(new Date("2026-03-01T12:00:00.000Z"));
const logLines: string[] = [];
let server: TestServer;
let peer: TestServer;

beforeAll(async () => {
  const logStream = new Writable({
    write(chunk: Buffer, _enc, done) {
      logLines.push(...chunk.toString("utf8").split("\n").filter((l) => l !== ""));
      done();
    },
  });
  server = await startTestServer({ clock, env: { LOG_LEVEL: "info" }, logStream });
  peer = await startTestServer({ clock, sharedWith: server });
});
afterAll(async () => {
  await peer?.close();
  await server?.close();
});

type Json = Record<string, any>;

async function call(target: TestServer, method: string, path: string, init: { body?: unknown; headers?: Record<string, string> } = {}) {
  const res = await fetch(target.url + path, {
    method,
    headers: { ...target.tenant.headers, ...(init.body !== undefined ? { "content-type": "application/json" } : {}), ...init.headers },
    body: init.body === undefined ? undefined : typeof init.body === "string" ? init.body : JSON.stringify(init.body),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: (text ? JSON.parse(text) : undefined) as Json | undefined };
}

async function create(userId: string, target = server) {
  const res = await call(target, "POST", "/v1/sessions", { body: { user_id: userId } });
  expect(res.status).toBe(201);
  return res.json as { session: Json; access_token: string; refresh_token: string; access_token_expires_at: string };
}

const refresh = (token: string, target = server) =>
  call(target, "POST", "/v1/auth/token/refresh", { body: { refresh_token: token }, headers: { authorization: "" } });

const getSession = async (id: string) => (await call(server, "GET", `/v1/sessions/${id}`)).json as Json;

/** Sends raw bytes on a fresh connection, half-closed, and returns everything the server answered. */
const rawHttp = (request: string) => sendRaw(server.port, request, { halfClose: true });

describe("refresh: a grace retry hands out the same successor", () => {
  it("two tabs refreshing one token both get the one live token, and keep the session alive after the window", async () => {
    const { session, refresh_token: t0 } = await create("usr_tabs");
    const [tabA, tabB] = await Promise.all([refresh(t0), refresh(t0, peer)]);
    expect([tabA.status, tabB.status]).toEqual([200, 200]);
    expect(tabA.json?.refresh_token).toBe(tabB.json?.refresh_token);
    const t1 = tabA.json?.refresh_token as string;

    // After the grace window each tab refreshes with what it holds, one shortly after the other.
    clock.advance(11_000);
    const laterA = await refresh(t1);
    clock.advance(500);
    const laterB = await refresh(t1, peer);
    expect([laterA.status, laterB.status]).toEqual([200, 200]);
    expect(laterB.json?.refresh_token).toBe(laterA.json?.refresh_token);
    clock.advance(11_000);
    expect((await refresh(laterB.json?.refresh_token)).status).toBe(200);
    expect(await getSession(session.id)).toMatchObject({ status: "active", revoke_reason: null });
  });

  it("a client whose response was lost retries and gets what it lost", async () => {
    const { session, refresh_token: t0 } = await create("usr_lost");
    const lost = await refresh(t0);
    clock.advance(4_000);
    const retried = await refresh(t0);
    expect(retried.status).toBe(200);
    expect(retried.json?.refresh_token).toBe(lost.json?.refresh_token);
    expect(retried.json?.access_token).not.toBe(lost.json?.access_token);
    clock.advance(60_000);
    expect((await refresh(retried.json?.refresh_token)).status).toBe(200);
    expect((await getSession(session.id)).status).toBe("active");
  });

  it("8 concurrent refreshes of one token across two instances and three protocols yield exactly one successor", async () => {
    const { session, refresh_token: t0 } = await create("usr_burst");
    const grpcOn = (target: TestServer) => grpcClient(SessionService, `127.0.0.1:${target.port}`);
    const clients = [grpcOn(server), grpcOn(peer)];
    const connect = createClient(SessionService, createConnectTransport({ baseUrl: peer.url, httpVersion: "1.1" }));
    const tenantOnly = { "x-tenant-id": server.tenant.id };
    try {
      const tokens = await Promise.all([
        ...[server, peer, server, peer].map(async (target) => (await refresh(t0, target)).json?.refresh_token as string),
        ...clients.map(async (c) => (await callUnary<RefreshSessionResponse>(c, "refreshSession", { refreshToken: t0 }, tenantOnly)).refreshToken),
        ...[1, 2].map(async () => (await connect.refreshSession({ refreshToken: t0 }, { headers: tenantOnly })).refreshToken),
      ]);
      expect(tokens).toHaveLength(8);
      expect(new Set(tokens).size).toBe(1);
      clock.advance(11_000);
      expect((await refresh(tokens[0]!)).status).toBe(200);
      expect((await getSession(session.id)).status).toBe("active");
    } finally {
      for (const c of clients) c.close();
    }
  });

  it("a revoke that commits between a refresh's read and its write wins: the refresh writes nothing and says so", async () => {
    const { session, refresh_token: t0 } = await create("usr_revoked_midway");
    const [answer] = await whileRowLocked(server.services.pool, { tenantId: server.tenant.id, sessionId: session.id }, {
      writers: 1,
      blockedStatement: rotationStatement,
      start: () => [refresh(t0)],
      during: async (side) => {
        await side.query("UPDATE sessions SET state = 2, ends_at = ?, end_reason = 'revoked' WHERE tenant_id = ? AND id = ?", [
          new Date(Math.floor(clock.now().getTime() / 1000) * 1000),
          server.tenant.id,
          session.id,
        ]);
      },
    });
    expect(answer!.status).toBe(401);
    expect(answer!.json?.error.code).toBe("session_revoked");
    // The session's live token did not move on to a successor: it is still the first generation.
    const [rows] = (await server.services.pool.query("SELECT refresh_generation FROM sessions WHERE tenant_id = ? AND id = ?", [
      server.tenant.id,
      session.id,
    ])) as unknown as [{ refresh_generation: number }[]];
    expect(rows[0]!.refresh_generation).toBe(0);
  });

  it("reuse after the grace window, or after the successor was used, still revokes the session", async () => {
    const late = await create("usr_reuse");
    const t1 = (await refresh(late.refresh_token)).json?.refresh_token as string;
    clock.advance(10_001);
    const reused = await refresh(late.refresh_token);
    expect(reused.status).toBe(401);
    expect(reused.json?.error.code).toBe("refresh_token_invalid");
    expect(await getSession(late.session.id)).toMatchObject({ status: "revoked", revoke_reason: "refresh_token_reuse" });
    expect((await refresh(t1)).json?.error.code).toBe("session_revoked");

    // The end is recorded at a whole second, as every instant the API shows.
    expect((await getSession(late.session.id)).revoked_at).toMatch(/:\d\dZ$/);

    const early = await create("usr_reuse_early");
    const e1 = (await refresh(early.refresh_token)).json?.refresh_token as string;
    expect((await refresh(e1)).status).toBe(200);
    expect((await refresh(early.refresh_token)).status).toBe(401);
    expect((await getSession(early.session.id)).revoke_reason).toBe("refresh_token_reuse");
  });
});

describe("token responses are never cached, and say the truth about expiry", () => {
  const isNoStore = (get: (name: string) => string | null | undefined) => get("cache-control") === "no-store" && get("pragma") === "no-cache";

  it("carry Cache-Control: no-store and Pragma: no-cache on REST, Connect and gRPC", async () => {
    const created = await call(server, "POST", "/v1/sessions", { body: { user_id: "usr_cache" } });
    expect(isNoStore((n) => created.headers.get(n))).toBe(true);
    const refreshed = await refresh((created.json as Json).refresh_token);
    expect(isNoStore((n) => refreshed.headers.get(n))).toBe(true);

    let connectHeaders = new Headers();
    const connect = createClient(SessionService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    await connect.createSession({ userId: "usr_cache" }, { headers: server.tenant.headers, onHeader: (h) => (connectHeaders = h) });
    expect(isNoStore((n) => connectHeaders.get(n))).toBe(true);

    const client = grpcClient(SessionService, `127.0.0.1:${server.port}`);
    try {
      const { headers } = await callUnaryWithHeaders<CreateSessionResponse>(client, "createSession", { userId: "usr_cache" }, server.tenant.headers);
      expect(isNoStore((n) => headers.get(n)[0]?.toString())).toBe(true);
    } finally {
      client.close();
    }
    // Responses without tokens may be cached by the caller's own rules: no blanket no-store.
    const listed = await call(server, "GET", "/v1/sessions?user_id=usr_cache");
    expect(listed.headers.get("cache-control")).toBeNull();
  });

  it("access_token_expires_at is exactly the JWT's exp, and verify's expires_at the same instant; every timestamp is whole seconds", async () => {
    clock.advance(123); // the clock is now part-way through a second
    const created = await create("usr_exp");
    const exp = decodeJwt(created.access_token).exp as number;
    expect(created.access_token_expires_at).toBe(new Date(exp * 1000).toISOString().replace(".000Z", "Z"));
    const verified = await call(server, "POST", "/v1/sessions/verify", { body: { token: created.access_token } });
    expect(verified.json?.expires_at).toBe(created.access_token_expires_at);
    const refreshed = (await refresh(created.refresh_token)).json as Json;
    expect(refreshed.access_token_expires_at).toBe(new Date((decodeJwt(refreshed.access_token).exp as number) * 1000).toISOString().replace(".000Z", "Z"));
    for (const value of [created.session.created_at, created.session.last_active_at, created.session.expires_at, refreshed.refresh_token_expires_at]) {
      expect(value).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    }
  });
});

describe("destructive calls need explicit intent", () => {
  it("DELETE /v1/sessions with a request body is 400 and revokes nothing, whatever the body says", async () => {
    const victim = await create("usr_body_victim");
    for (const init of [
      { body: { user_id: "usr_body_victim" } },
      { body: "{}" },
      { body: "user_id=x", headers: { "content-type": "application/x-www-form-urlencoded" } },
      { body: "x", headers: { "content-type": "text/plain" } },
    ]) {
      const res = await call(server, "DELETE", "/v1/sessions", init);
      expect(res.status).toBe(400);
      expect(res.json?.error).toMatchObject({ code: "invalid_request" });
      expect(res.json?.error.message).toMatch(/query string/);
    }
    // A chunked body without Content-Length, and a body on GET, are refused too.
    const chunked = await rawHttp(
      `DELETE /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: ${server.tenant.headers.authorization}\r\nX-Tenant-ID: ${server.tenant.id}\r\n` +
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    );
    expect(chunked).toMatch(/^HTTP\/1.1 400 /);
    const getWithBody = await rawHttp(
      `GET /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: ${server.tenant.headers.authorization}\r\nX-Tenant-ID: ${server.tenant.id}\r\n` +
        "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    expect(getWithBody).toMatch(/^HTTP\/1.1 400 /);
    expect((await getSession(victim.session.id)).status).toBe("active");
  });

  it.each(["user_id=", "status=", "cursor=", "limit=", "user_id"])("an empty filter (?%s) is 400 on list and on revoke-all, and revokes nothing", async (query) => {
    const victim = await create("usr_empty_victim");
    for (const method of ["GET", "DELETE"]) {
      if (method === "DELETE" && !query.startsWith("user_id")) continue;
      const res = await call(server, method, `/v1/sessions?${query}`);
      expect(res.status).toBe(400);
      expect(res.json?.error.code).toBe("invalid_request");
      expect(res.json?.error.field ?? res.json?.error.message).toBeTruthy();
    }
    expect((await getSession(victim.session.id)).status).toBe("active");
  });

  it.each(["all_users=false", "allUsers=false", "all_users=0", "all_users=", "all_users=false&except_session_id=ses_01HZZZZZZZZZZZZZZZZZZZZZZZ"])(
    "DELETE /v1/sessions?%s (a request that says not everyone, and names no user) is 400 and revokes nothing",
    async (query) => {
      const tenant = { ...server, tenant: await server.addTenant("not everyone") } as TestServer;
      const victim = await create("usr_not_everyone", tenant);
      const res = await call(tenant, "DELETE", `/v1/sessions?${query}`);
      expect(res.status).toBe(400);
      expect(res.json?.error.code).toBe("invalid_request");
      expect((await getSessionOf(tenant, victim.session.id)).status).toBe("active");
      // all_users=true, like no filter at all, is the seed's revoke-all.
      expect((await call(tenant, "DELETE", "/v1/sessions?all_users=true")).json).toEqual({ revoked: 1 });
      expect((await getSessionOf(tenant, victim.session.id)).status).toBe("revoked");
    },
  );

  it("over gRPC and Connect a missing, null or empty user_id is INVALID_ARGUMENT; only all_users revokes every user", async () => {
    const tenant = await server.addTenant("explicit");
    const other = { ...server, tenant } as TestServer;
    const victim = await create("usr_rpc_victim", other);
    const client = grpcClient(SessionService, `127.0.0.1:${server.port}`);
    const connect = createClient(SessionService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const maybeMissing: { id?: string } = {};
    try {
      for (const request of [{ userId: "" }, {}, { userId: maybeMissing.id }, { exceptSessionId: victim.session.id }]) {
        const err = (await callUnary(client, "revokeSessions", request, tenant.headers).catch((e: unknown) => e)) as grpc.ServiceError;
        expect(err.code, JSON.stringify(request)).toBe(grpc.status.INVALID_ARGUMENT);
        const cerr = await connect.revokeSessions(request, { headers: tenant.headers }).catch((e: unknown) => ConnectError.from(e));
        expect((cerr as ConnectError).code).toBe(Code.InvalidArgument);
      }
      for (const body of ['{"user_id": null}', "{}", '{"userId": ""}', '{"allUsers": true, "userId": "u"}']) {
        const res = await fetch(`${server.url}/sessions.v1.SessionService/RevokeSessions`, { method: "POST", headers: { ...tenant.headers, "content-type": "application/json" }, body });
        expect(res.status, body).toBe(400);
      }
      expect((await getSessionOf(other, victim.session.id)).status).toBe("active");
      // Over REST the seed's call still means every user, and all_users may be said there too.
      const restAll = await call(other, "DELETE", "/v1/sessions?all_users=true&user_id=x");
      expect(restAll.status).toBe(400);
      const all = await callUnary<{ revoked: number }>(client, "revokeSessions", { allUsers: true }, tenant.headers);
      expect(all.revoked).toBe(1);
    } finally {
      client.close();
    }
  });

  it("a status filter must name a status: an explicit unspecified is 400, not \"no filter\"", async () => {
    for (const status of ["unspecified", "SESSION_STATUS_UNSPECIFIED", "0"]) {
      const res = await call(server, "GET", `/v1/sessions?status=${status}`);
      expect(res.status, status).toBe(400);
      expect(res.json?.error.field).toBe("status");
    }
    const connect = await fetch(`${server.url}/sessions.v1.SessionService/ListSessions`, {
      method: "POST",
      headers: { ...server.tenant.headers, "content-type": "application/json" },
      body: '{"status": 0}',
    });
    expect(connect.status).toBe(400);
  });

  it("unknown fields are refused on Connect JSON as on REST", async () => {
    const post = (path: string, body: string) =>
      fetch(server.url + path, { method: "POST", headers: { ...server.tenant.headers, "content-type": "application/json" }, body });
    const connect = await post("/sessions.v1.SessionService/RevokeSessions", '{"userID": "usr_x"}');
    expect(connect.status).toBe(400);
    expect(((await connect.json()) as Json).code).toBe("invalid_argument");
    // A body that does not decode names its field in a BadRequest, as REST names it in `field`.
    const fieldOf = async (body: string) => {
      const res = (await (await post("/sessions.v1.SessionService/RevokeSessions", body)).json()) as { code: string; details?: { type: string; value: string }[] };
      expect(res.code, body).toBe("invalid_argument");
      const detail = res.details?.find((d) => d.type === "google.rpc.BadRequest");
      return detail && fromBinary(BadRequestSchema, Buffer.from(detail.value, "base64")).fieldViolations.map((v) => v.field);
    };
    expect(await fieldOf('{"userId": "nobody", "bogus": 1}')).toEqual(["bogus"]);
    expect(await fieldOf('{"allUsers": "true"}')).toEqual(["all_users"]);
    expect(await fieldOf('{"user_id": "x", "userId": "x"}')).toEqual(["user_id"]);
    // A key that is not field-like (a pasted secret) is never named.
    expect(await fieldOf(`{"${"rt_" + "A".repeat(43)}": 1}`)).toBeUndefined();
    const rest = await call(server, "POST", "/v1/sessions", { body: { user_id: "u", userID: "x", bogus: 1 } });
    expect(rest.status).toBe(400);
  });
});

async function getSessionOf(target: TestServer, id: string) {
  return (await call(target, "GET", `/v1/sessions/${id}`)).json as Json;
}

describe("identifiers match byte for byte", () => {
  it("?user_id=alice neither lists nor revokes the sessions of a stored user 'alice '", async () => {
    const alice = await create("alice");
    // A row written before ids were checked on the way in, with a trailing space.
    await server.services.pool.query("UPDATE sessions SET user_id = 'alice ' WHERE tenant_id = ? AND id = ?", [server.tenant.id, alice.session.id]);
    const real = await create("alice");
    const listed = await call(server, "GET", "/v1/sessions?user_id=alice");
    expect((listed.json?.data as Json[]).map((s) => s.id)).toEqual([real.session.id]);
    const revoked = await call(server, "DELETE", "/v1/sessions?user_id=alice");
    expect(revoked.json).toEqual({ revoked: 1 });
    expect((await getSession(alice.session.id)).status).toBe("active");
    expect((await getSession(real.session.id)).status).toBe("revoked");
  });

  it.each([
    ["a trailing space", "alice "],
    ["a leading space", " alice"],
    ["a trailing tab", "alice\t"],
    ["a no-break space at the end", "alice\u00a0"],
    ["a NUL", "ali\u0000ce"],
    ["an ESC", "ali\u001bce"],
    ["a line break", "ali\nce"],
    ["a right-to-left override", "ali\u202ece"],
    ["a lone surrogate", "ali\ud800ce"],
    ["256 characters", "é".repeat(256)],
  ])("refuses a user_id with %s (400, field user_id), on create, list and revoke-all", async (_name, userId) => {
    const created = await call(server, "POST", "/v1/sessions", { body: { user_id: userId } });
    expect(created.status).toBe(400);
    expect(created.json?.error).toMatchObject({ code: "invalid_request", field: "user_id" });
    // A lone surrogate cannot be percent-encoded as UTF-8 at all; the others go in the query string too.
    if (!userId.isWellFormed()) return;
    const q = encodeURIComponent(userId);
    for (const method of ["GET", "DELETE"]) {
      expect((await call(server, method, `/v1/sessions?user_id=${q}`)).json?.error).toMatchObject({ code: "invalid_request", field: "user_id" });
    }
  });

  it("a raw + in the query string is refused: it could mean a plus or a space, and either guess could touch another user", async () => {
    const plus = await create("john+tag@example.com");
    const spaced = await create("john tag@example.com");
    for (const method of ["GET", "DELETE"]) {
      const res = await call(server, method, "/v1/sessions?user_id=john+tag@example.com");
      expect(res.status).toBe(400);
      expect(res.json?.error.message).toMatch(/%2B/);
    }
    const listed = await call(server, "GET", "/v1/sessions?user_id=john%2Btag%40example.com");
    expect((listed.json?.data as Json[]).map((s) => s.id)).toEqual([plus.session.id]);
    expect((await getSession(spaced.session.id)).status).toBe("active");
  });

  it("counts length limits in characters: 255 emoji are a valid user id, stored and found again exactly", async () => {
    const userId = "😀".repeat(255);
    const created = await create(userId);
    expect(created.session.user_id).toBe(userId);
    const listed = await call(server, "GET", `/v1/sessions?user_id=${encodeURIComponent(userId)}`);
    expect((listed.json?.data as Json[]).map((s) => s.user_id)).toEqual([userId]);
    expect((await call(server, "POST", "/v1/sessions", { body: { user_id: "u", role: "r".repeat(64), org_id: "😀".repeat(255) } })).status).toBe(201);
    expect((await call(server, "POST", "/v1/sessions", { body: { user_id: "u", role: "r".repeat(65) } })).json?.error.field).toBe("role");
    expect((await call(server, "POST", "/v1/sessions", { body: { user_id: "u", org_id: "o\u0000" } })).json?.error.field).toBe("org_id");
  });
});

describe("revoking an ended session keeps its history", () => {
  it("an expired session stays expired with its end reason and time; a revoked one keeps its first revoke", async () => {
    // A tenant whose sessions last five minutes (its policy is read on first use, so it applies at once).
    const tenant = await server.addTenant("short-lived");
    await server.services.pool.query("INSERT INTO tenant_policies VALUES (?, 900, 300, NULL, 10, NULL, ?)", [tenant.id, clock.now()]);
    const shortLived = { ...server, tenant } as TestServer;
    const expiring = await create("usr_expire", shortLived);
    const kept = await create("usr_expire", shortLived);
    clock.advance(301_000);
    const revoke = await call(shortLived, "DELETE", `/v1/sessions/${expiring.session.id}`);
    expect(revoke.status).toBe(204);
    expect(await getSessionOf(shortLived, expiring.session.id)).toMatchObject({
      status: "expired",
      revoke_reason: "expired",
      revoked_at: expiring.session.expires_at,
      revoked_by: null,
    });
    expect((await call(shortLived, "DELETE", "/v1/sessions?user_id=usr_expire")).json).toEqual({ revoked: 0 });
    expect((await getSessionOf(shortLived, kept.session.id)).status).toBe("expired");

    const twice = await create("usr_twice");
    expect((await call(server, "DELETE", `/v1/sessions/${twice.session.id}`)).status).toBe(204);
    const first = await getSession(twice.session.id);
    clock.advance(5_000);
    expect((await call(server, "DELETE", `/v1/sessions/${twice.session.id}`)).status).toBe(204);
    expect(await getSession(twice.session.id)).toEqual(first);
  });
});

describe("every error in the envelope", () => {
  function expectEnvelope(raw: string, status: number, code: string) {
    const [head = "", body = ""] = raw.split("\r\n\r\n");
    expect(head).toMatch(new RegExp(`^HTTP/1.1 ${status} `));
    const json = JSON.parse(body) as Json;
    expect(json.error).toMatchObject({ code, status, request_id: expect.stringMatching(/^req_/) });
    expect(head.toLowerCase()).toContain(`x-request-id: ${json.error.request_id.toLowerCase()}`);
    expect(raw).not.toContain("FST_");
    return json.error.request_id as string;
  }
  const get = (path: string, extra = "") => rawHttp(`GET ${path} HTTP/1.1\r\nHost: x\r\n${extra}Connection: close\r\n\r\n`);

  it.each([
    ["an over-long path parameter", () => get(`/v1/sessions/${"a".repeat(200)}`), 414, "uri_too_long"],
    ["bad percent-encoding in the path", () => get("/v1/sessions/%E0%A4%A"), 400, "invalid_request"],
    ["a query escape that is not UTF-8", () => get("/v1/sessions?user_id=%FF%FE"), 400, "invalid_request"],
    ["a malformed query escape", () => get("/v1/sessions?user_id=%zz"), 400, "invalid_request"],
    ["raw bytes in the query", () => get("/v1/sessions?user_id=\u00e9"), 400, "invalid_request"],
    ["oversized headers", () => get("/healthz", `X-Big: ${"a".repeat(20_000)}\r\n`), 431, "headers_too_large"],
    ["a malformed request", () => rawHttp("GET /healthz HTTP/1.1\r\nHost x\r\n\r\n"), 400, "invalid_request"],
    ["an unknown route", () => get("/v2/nothing"), 404, "not_found"],
    ["an HTTP/1.1 request without Host", () => rawHttp("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"), 400, "invalid_request"],
    ["CONNECT (this is no proxy)", () => rawHttp("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"), 405, "method_not_allowed"],
    ["a body on GET, on any route", () => rawHttp("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"), 400, "invalid_request"],
  ])("%s", async (_name, send, status, code) => {
    expectEnvelope(await send(), status, code);
  });

  it("a known path with the wrong method is 405 with Allow, and is logged with its request id", async () => {
    const raw = await rawHttp("PUT /v1/sessions/ses_01HABCDEF999888 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    const id = expectEnvelope(raw, 405, "method_not_allowed");
    expect(raw).toMatch(/\r\nallow: DELETE, GET, HEAD\r\n/i);
    expect(logLines.some((l) => l.includes(id) && l.includes('"status":405'))).toBe(true);
    const refused = expectEnvelope(await get("/healthz", `X-Big: ${"a".repeat(20_000)}\r\n`), 431, "headers_too_large");
    expect(logLines.some((l) => l.includes(refused))).toBe(true);
  });

  it("over HTTP/2: too large a header block is 431 in the envelope (with the client's request id), and an empty DATA frame is no body", async () => {
    const session = http2.connect(server.url);
    session.on("error", () => undefined);
    const h2 = (headers: http2.OutgoingHttpHeaders, end: (s: http2.ClientHttp2Stream) => void) =>
      new Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: string }>((resolve, reject) => {
        const stream = session.request(headers, { endStream: false });
        let response: http2.IncomingHttpHeaders = {};
        const chunks: Buffer[] = [];
        stream.on("response", (h) => (response = h));
        stream.on("data", (d: Buffer) => chunks.push(d));
        stream.on("error", reject);
        stream.on("close", () => resolve({ status: Number(response[":status"]), headers: response, body: Buffer.concat(chunks).toString() }));
        end(stream);
      });
    try {
      const big = await h2({ ":path": "/healthz", "x-big": "b".repeat(17_000), "x-request-id": "trace-431" }, (s) => s.end());
      expect(big.status).toBe(431);
      expect(JSON.parse(big.body).error).toMatchObject({ code: "headers_too_large", status: 431, request_id: "trace-431" });
      const victim = await create("usr_h2_empty_data");
      const emptyData = await h2({ ":method": "DELETE", ":path": "/v1/sessions?user_id=usr_h2_empty_data", ...server.tenant.headers }, (s) => s.end(Buffer.alloc(0)));
      expect(emptyData.status).toBe(200);
      expect(JSON.parse(emptyData.body)).toEqual({ revoked: 1 });
      expect((await getSession(victim.session.id)).status).toBe("revoked");
      const withBody = await h2({ ":method": "DELETE", ":path": "/v1/sessions?user_id=usr_h2_empty_data", ...server.tenant.headers }, (s) => s.end("{}"));
      expect(withBody.status).toBe(400);
      const unknownMethod = await h2({ ":method": "FOO", ":path": "/v1/sessions" }, (s) => s.end());
      expect(unknownMethod.status).toBe(405);
      expect(JSON.parse(unknownMethod.body).error.code).toBe("method_not_allowed");
    } finally {
      session.close();
    }
  });

  it("accepts a well-formed X-Request-ID and echoes it; replaces one that is not", async () => {
    const good = await call(server, "GET", "/v1/sessions/ses_01HABCDEF999888", { headers: { "x-request-id": "trace-42.a:b_c" } });
    expect(good.headers.get("x-request-id")).toBe("trace-42.a:b_c");
    expect(good.json?.error.request_id).toBe("trace-42.a:b_c");
    for (const bad of ["has space", "x".repeat(200), "<script>"]) {
      const res = await call(server, "GET", "/v2/nothing", { headers: { "x-request-id": bad } });
      expect(res.headers.get("x-request-id")).toMatch(/^req_[0-9a-f]{32}$/);
    }
  });
});

describe("a caller's secret pasted where a name goes is never repeated in an error", () => {
  /** Frames one Connect-streaming JSON message. */
  const connectFrame = (json: string) => {
    const frame = Buffer.alloc(5);
    frame.writeUInt32BE(Buffer.byteLength(json), 1);
    return Buffer.concat([frame, Buffer.from(json)]);
  };

  it("REST, the event feed and Connect: 400 invalid_request, no `field`, the secret nowhere in the answer or the log", async () => {
    const made = await create("usr_pasted");
    // base64url without `-` or `_` after the prefix: as field-like as a secret gets.
    const secrets = [made.access_token, made.refresh_token, `rt_${"Ab1".repeat(14)}C`, server.tenant.secretKey];
    for (const secret of secrets) {
      const body = JSON.stringify({ [secret]: 1 });
      const answers: { what: string; status: number; text: string }[] = [];
      const send = async (what: string, path: string, init: RequestInit = {}) => {
        const res = await fetch(server.url + path, { ...init, headers: { ...server.tenant.headers, ...(init.headers as Record<string, string>) } });
        answers.push({ what, status: res.status, text: await res.text() });
      };
      await send("verify, the token as the query", `/v1/sessions/verify?${secret}`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
      await send("list, as a parameter name", `/v1/sessions?${encodeURIComponent(secret)}=1`);
      await send("revoke-all, as a parameter", `/v1/sessions?user_id=usr_pasted&${secret}`, { method: "DELETE" });
      await send("verify, as a body key", "/v1/sessions/verify", { method: "POST", headers: { "content-type": "application/json" }, body });
      await send("create, a key given twice", "/v1/sessions", { method: "POST", headers: { "content-type": "application/json" }, body: `{"user_id":"usr_pasted","${secret}":1,"${secret}":2}` });
      await send("create, a lone surrogate under it", "/v1/sessions", { method: "POST", headers: { "content-type": "application/json" }, body: `{"user_id":"usr_pasted","${secret}":"\\udc00"}` });
      await send("the event feed", `/v1/sessions/events?${secret}`);
      for (const answer of answers) {
        expect(answer.status, answer.what).toBe(400);
        const error = JSON.parse(answer.text).error;
        expect(error.code, answer.what).toBe("invalid_request");
        expect(error, answer.what).not.toHaveProperty("field");
        expect(answer.text, answer.what).not.toContain(secret.slice(3, 30));
      }

      const connect: { what: string; status: number; text: string }[] = [];
      const rpc = async (what: string, path: string, init: RequestInit) => {
        const res = await fetch(server.url + path, { ...init, headers: { ...server.tenant.headers, ...(init.headers as Record<string, string>) } });
        connect.push({ what, status: res.status, text: await res.text() });
      };
      await rpc("Connect JSON", "/sessions.v1.SessionService/VerifyToken", { method: "POST", headers: { "content-type": "application/json" }, body });
      await rpc("Connect GET", `/sessions.v1.SessionService/ListSessions?encoding=json&message=${encodeURIComponent(body)}`, { method: "GET" });
      await rpc("Connect, key twice", "/sessions.v1.SessionService/VerifyToken", { method: "POST", headers: { "content-type": "application/json" }, body: `{"${secret}":1,"${secret}":2}` });
      await rpc("Connect stream", "/sessions.v1.SessionService/WatchSessionEvents", { method: "POST", headers: { "content-type": "application/connect+json" }, body: connectFrame(body) });
      for (const answer of connect) {
        expect(answer.text, answer.what).toContain("invalid_argument");
        expect(answer.text, answer.what).not.toContain(secret.slice(3, 30));
      }
    }
    expect(logLines.join("\n")).not.toContain(made.refresh_token.slice(3, 30));
    // Nothing was revoked or created by any of it.
    expect((await getSessionOf(server, made.session.id)).status).toBe("active");
    const listed = await call(server, "GET", "/v1/sessions?user_id=usr_pasted");
    expect(listed.json?.data).toHaveLength(1);
  });

  it("a name that looks like a field is still named, with `field`", async () => {
    const res = await call(server, "GET", "/v1/sessions?bogus=1");
    expect(res.json?.error).toMatchObject({ code: "invalid_request", field: "bogus", message: 'unknown parameter "bogus"' });
    const body = await call(server, "POST", "/v1/sessions/verify", { body: { token: "x", tokn: 1 } });
    expect(body.json?.error).toMatchObject({ field: "tokn" });
    const connect = await fetch(`${server.url}/sessions.v1.SessionService/VerifyToken`, {
      method: "POST",
      headers: { ...server.tenant.headers, "content-type": "application/json" },
      body: '{"tokn": 1}',
    });
    expect(await connect.text()).toContain('key \\"tokn\\" is unknown');
  });
});
