import { randomBytes } from "node:crypto";
import http2 from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { VerifyTokenRequestSchema } from "../gen/sessions/v1/sessions_pb.js";
import { openServices } from "../src/services.js";
import { poolStats } from "../src/store/db.js";
import { rotationStatement, whileRowLocked } from "./helpers/row-lock.js";
import { headerLines, rawCreate as rawCreateFor, rawHttp } from "./helpers/raw-http.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * Hostile clients: streams reset as soon as sent, malformed numbers and bodies, bad signing-key rows,
 * a row locked elsewhere while its clients pile on, and deadlines that run out. (Streams opened and
 * never finished: test/serial/h2-pending-streams.test.ts.)
 */

type Json = Record<string, any>;

/** A gRPC frame: one uncompressed length-prefixed message. */
function grpcFrame(message: Uint8Array): Buffer {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  Buffer.from(message).copy(frame, 5);
  return frame;
}

describe("in-process server", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server?.close();
  });

  const post = (path: string, body: string | Buffer, headers: Record<string, string> = {}) =>
    fetch(server.url + path, { method: "POST", headers: { ...server.tenant.headers, "content-type": "application/json", ...headers }, body });

  /** The statuses of one raw HTTP/1.1 exchange (several for pipelined requests), space-separated. */
  const exchange = async (request: string, options: { halfClose?: boolean } = {}): Promise<string | undefined> =>
    statusesOf(await rawExchange(request, options));
  const statusesOf = (response: string) => [...response.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]).join(" ") || undefined;
  const rawExchange = (request: string, options: { halfClose?: boolean } = {}) => rawHttp(server.port, request, options);
  const sessionOf = async (userId: string) => ((await (await post("/v1/sessions", JSON.stringify({ user_id: userId }))).json()) as Json).session.id as string;
  const rawCreate = (userId: string, extraHeaders = "") => rawCreateFor(server.tenant.headers, userId, extraHeaders);

  it("answers an HTTP/1.1 client that half-closes after sending: a create, a revoke, pipelined requests", async () => {
    const create = rawCreate("usr_half_close");
    expect(await exchange(create, { halfClose: true })).toBe("201");
    const listed = (await (await fetch(`${server.url}/v1/sessions?user_id=usr_half_close`, { headers: server.tenant.headers })).json()) as Json;
    expect(listed.data).toHaveLength(1);
    const id = listed.data[0].id as string;
    const revoke = `DELETE /v1/sessions/${id} HTTP/1.1\r\nHost: localhost\r\n${headerLines(Object.entries(server.tenant.headers))}\r\n`;
    expect(await exchange(create + revoke + create, { halfClose: true })).toBe("201 204 201");
    const after = (await (await fetch(`${server.url}/v1/sessions?user_id=usr_half_close`, { headers: server.tenant.headers })).json()) as Json;
    expect(after.data.map((s: Json) => s.id)).not.toContain(id);
    expect(after.data).toHaveLength(2);
    expect(((await (await fetch(`${server.url}/v1/sessions/${id}`, { headers: server.tenant.headers })).json()) as Json).status).toBe("revoked");
  });

  it("runs pipelined HTTP/1.1 requests one at a time, in order: each sees what the one before it did", async () => {
    const auth = headerLines(Object.entries(server.tenant.headers));
    for (let round = 0; round < 5; round++) {
      const id = await sessionOf(`usr_pipelined_order_${round}`);
      const revokeThenRead = await rawExchange(
        `DELETE /v1/sessions/${id} HTTP/1.1\r\nHost: localhost\r\n${auth}\r\n` + `GET /v1/sessions/${id} HTTP/1.1\r\nHost: localhost\r\n${auth}connection: close\r\n\r\n`,
      );
      expect(statusesOf(revokeThenRead)).toBe("204 200");
      expect(revokeThenRead).toContain('"status":"revoked"');
      // A revoke-all pipelined behind a create includes the session just created.
      const user = `usr_pipelined_all_${round}`;
      const createThenRevokeAll = await rawExchange(
        rawCreate(user) + `DELETE /v1/sessions?user_id=${user} HTTP/1.1\r\nHost: localhost\r\n${auth}connection: close\r\n\r\n`,
      );
      expect(statusesOf(createThenRevokeAll)).toBe("201 200");
      expect(createThenRevokeAll).toContain('{"revoked":1}');
    }
  });

  it("answers the request running, saying the connection closes, when more than 100 are pipelined behind it, and runs none of them", async () => {
    const id = await sessionOf("usr_pipeline_flood");
    const auth = headerLines(Object.entries(server.tenant.headers));
    // The revoke waits on its row, with 101 creates behind it (in the same write: all read by then).
    const [response] = await whileRowLocked(server.services.pool, { tenantId: server.tenant.id, sessionId: id }, {
      writers: 1,
      blockedStatement: "UPDATE sessions SET state = 2%",
      start: () => [rawExchange(`DELETE /v1/sessions/${id} HTTP/1.1\r\nHost: localhost\r\n${auth}\r\n` + rawCreate("usr_pipeline_flood_behind").repeat(101))],
    });
    expect(statusesOf(response!)).toBe("204");
    expect(response).toMatch(/\r\nConnection: close\r\n/i);
    const behind = (await (await fetch(`${server.url}/v1/sessions?user_id=usr_pipeline_flood_behind`, { headers: server.tenant.headers })).json()) as Json;
    expect(behind.data).toEqual([]);
  });

  it("a request asking to switch protocols is answered and closes the connection (Node drops what is pipelined behind it)", async () => {
    const upgrade = rawCreate("usr_upgrade_asked", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n");
    const response = await rawExchange(upgrade + rawCreate("usr_upgrade_behind"), { halfClose: true });
    expect(statusesOf(response)).toBe("201");
    expect(response).toMatch(/\r\nConnection: close\r\n/i);
    const behind = (await (await fetch(`${server.url}/v1/sessions?user_id=usr_upgrade_behind`, { headers: server.tenant.headers })).json()) as Json;
    expect(behind.data).toEqual([]);
  });

  it("answers the requests in flight before refusing a malformed or cut-short request behind them", async () => {
    const create = rawCreate("usr_before_refusal");
    // Cut short by the client's FIN: in its headers, in its body.
    expect(await exchange(create + create.slice(0, 40), { halfClose: true })).toBe("201 400");
    expect(await exchange(create + create + create.slice(0, create.length - 5), { halfClose: true })).toBe("201 201 400");
    // Malformed, with the connection left open.
    expect(await exchange(create + "NOT HTTP AT ALL\r\n\r\n")).toBe("201 400");
    // CONNECT (this is no proxy): 405, in its turn.
    expect(await exchange(create + "CONNECT 127.0.0.1:3306 HTTP/1.1\r\nHost: 127.0.0.1:3306\r\n\r\n" + create)).toBe("201 405");
    // Data after a request that asked to close the connection.
    expect((await exchange(create + rawCreate("usr_before_refusal", "Connection: close\r\n") + create))?.startsWith("201 201")).toBe(true);
  });

  it("reads every Content-Type line of a request, not only the first (a second one naming another type or charset is 415)", async () => {
    const send = (contentTypes: string[], userId: string) => {
      const body = JSON.stringify({ user_id: userId });
      const headers: [string, string][] = [...Object.entries(server.tenant.headers), ...contentTypes.map((v): [string, string] => ["content-type", v]), ["content-length", String(body.length)], ["connection", "close"]];
      return exchange(`POST /v1/sessions HTTP/1.1\r\nHost: localhost\r\n${headerLines(headers)}\r\n${body}`);
    };
    expect(await send(["application/json", "application/json; charset=latin1"], "usr_two_types")).toBe("415");
    expect(await send(["application/json", "text/plain"], "usr_json_then_text")).toBe("415");
    expect(await send(["application/json; charset=utf-8, text/plain"], "usr_json_folded_text")).toBe("415");
    expect(await send(["application/json", "application/json"], "usr_same_type_twice")).toBe("201");
    for (const userId of ["usr_two_types", "usr_json_then_text", "usr_json_folded_text"]) {
      const listed = await fetch(`${server.url}/v1/sessions?user_id=${userId}`, { headers: server.tenant.headers });
      expect(((await listed.json()) as { data: unknown[] }).data).toEqual([]);
    }
  });

  it("answers the pipelined requests behind a body it refused having read it (415, 400), instead of closing on them", async () => {
    const created = (await (await post("/v1/sessions", JSON.stringify({ user_id: "usr_pipelined" }))).json()) as Json;
    const id = created.session.id as string;
    const auth = headerLines(Object.entries(server.tenant.headers));
    const refused = (contentType: string, body: string) =>
      `POST /v1/sessions HTTP/1.1\r\nHost: localhost\r\n${auth}content-type: ${contentType}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    const revoke = `DELETE /v1/sessions/${id} HTTP/1.1\r\nHost: localhost\r\n${auth}connection: close\r\n\r\n`;
    expect(await exchange(refused("application/json; charset=iso-8859-1", '{"user_id":"usr_pipelined"}') + refused("application/json", '{"user_id":') + revoke)).toBe("415 400 204");
    const got = (await (await fetch(`${server.url}/v1/sessions/${id}`, { headers: server.tenant.headers })).json()) as Json;
    expect(got.status).toBe("revoked");
  });

  it("runs a DELETE without a body whatever Content-Type it names and however it says it has none", async () => {
    const statusOf = async (id: string) => ((await (await fetch(`${server.url}/v1/sessions/${id}`, { headers: server.tenant.headers })).json()) as Json).status;
    const cases: [contentType: string | null, framing: [string, string][], body: string][] = [
      // An empty chunked body: read to its end to learn it is empty, so it must not be read again.
      ["application/json", [["transfer-encoding", "chunked"]], "0\r\n\r\n"],
      ["text/plain", [], ""],
      ["application/x-www-form-urlencoded", [["content-length", "0"]], ""],
      ["text/plain", [["content-length", "00"]], ""],
      ["(((", [], ""],
      ["application/json; charset=iso-8859-1", [], ""],
      ["text/plain", [["transfer-encoding", "chunked"]], "0\r\n\r\n"],
      [null, [["transfer-encoding", "chunked"]], "0\r\n\r\n"],
    ];
    for (const [contentType, framing, body] of cases) {
      const id = await sessionOf("usr_delete_types");
      const headers: [string, string][] = [...Object.entries(server.tenant.headers), ...(contentType === null ? [] : [["content-type", contentType] as [string, string]]), ...framing, ["connection", "close"]];
      expect([contentType, await exchange(`DELETE /v1/sessions/${id} HTTP/1.1\r\nHost: localhost\r\n${headerLines(headers)}\r\n${body}`)]).toEqual([contentType, "204"]);
      expect(await statusOf(id)).toBe("revoked");
    }
    // HTTP/2: a JSON Content-Type and one empty DATA frame.
    const id = await sessionOf("usr_delete_types");
    const session = http2.connect(server.url);
    session.on("error", () => undefined);
    try {
      const stream = session.request({ ":method": "DELETE", ":path": `/v1/sessions/${id}`, "content-type": "application/json", ...server.tenant.headers });
      stream.on("error", () => undefined);
      const response = new Promise<http2.IncomingHttpHeaders>((resolve) => stream.on("response", resolve));
      stream.end();
      expect((await response)[":status"]).toBe(204);
      stream.resume();
    } finally {
      session.close();
    }
    expect(await statusOf(id)).toBe("revoked");
  });

  it("refuses a body over HTTP/2 without an HTTP/1 Connection header (Node warns on stderr, outside the JSON log)", async () => {
    // Fastify marks every body its parser refuses "connection: close", a header HTTP/2 forbids. Node
    // warns once per process, so this is the first HTTP/2 body refusal in this file.
    const warnings = vi.spyOn(process, "emitWarning");
    const session = http2.connect(server.url);
    session.on("error", () => undefined);
    try {
      for (const [contentType, body, status] of [
        ["application/json; charset=latin1", '{"user_id":"u"}', 415],
        ["application/json", '{"user_id":', 400],
      ] as const) {
        const stream = session.request({ ":method": "POST", ":path": "/v1/sessions", "content-type": contentType, ...server.tenant.headers });
        stream.on("error", () => undefined);
        const response = new Promise<http2.IncomingHttpHeaders>((resolve) => stream.on("response", resolve));
        stream.end(body);
        const headers = await response;
        stream.resume();
        await new Promise((resolve) => stream.on("close", resolve));
        expect(headers[":status"]).toBe(status);
      }
      expect(warnings.mock.calls.map(([warning]) => String(warning))).toEqual([]);
    } finally {
      warnings.mockRestore();
      session.close();
    }
  });

  async function createSession(userId = "u") {
    const res = await post("/v1/sessions", JSON.stringify({ user_id: userId }));
    expect(res.status).toBe(201);
    return (await res.json()) as Json;
  }

  it("answers HTTP/1.1 requests pipelined on one connection, each in turn, none taken for cancelled", async () => {
    const { session, access_token: token } = await createSession();
    const requests = [
      ["POST", "/v1/sessions/verify", JSON.stringify({ token })],
      ["GET", `/v1/sessions/${session.id}`, ""],
      ["POST", "/v1/sessions/verify", JSON.stringify({ token })],
    ].map(([method, path, body], i, all) => {
      // The last one closes the connection, so that the exchange ends once all three are answered.
      const headers: [string, string][] = [...Object.entries({ ...server.tenant.headers, "content-type": "application/json", "content-length": String(Buffer.byteLength(body!)) }), ...(i === all.length - 1 ? [["connection", "close"] as [string, string]] : [])];
      return `${method} ${path} HTTP/1.1\r\nHost: localhost\r\n${headerLines(headers)}\r\n${body}`;
    });
    // All three in one write: the second and third wait while the first is answered.
    expect(await exchange(requests.join(""))).toBe("200 200 200");
  });

  it("a stream reset right after it was sent never runs to the signature check or the session read", async () => {
    const { access_token: token } = await createSession();
    const verify = vi.spyOn(server.services.keyRing, "verify");
    const lookups = vi.spyOn(server.services.tenantStore, "findApiKey");
    const sessionReads = vi.spyOn(server.services.sessionStore, "getSessionEndState");
    const session = http2.connect(server.url);
    session.on("error", () => undefined);
    try {
      const body = grpcFrame(toBinary(VerifyTokenRequestSchema, create(VerifyTokenRequestSchema, { token })));
      const closed: Promise<void>[] = [];
      for (let i = 0; i < 50; i++) {
        // A fresh key each time, so no cached check can answer it; sent and reset in one go.
        const stream = session.request({
          ":method": "POST",
          ":path": "/sessions.v1.SessionService/VerifyToken",
          "content-type": "application/grpc",
          te: "trailers",
          authorization: `Bearer sk_live_${String(i).padStart(43, "r")}`,
          "x-tenant-id": server.tenant.id,
        });
        stream.on("error", () => undefined);
        stream.end(body);
        stream.close(http2.constants.NGHTTP2_CANCEL);
        closed.push(new Promise((resolve) => stream.on("close", () => resolve())));
      }
      await Promise.all(closed);
      // One normal call after them, on the same connection, so their handlers have all had their turn.
      const done = session.request({ ":method": "GET", ":path": "/healthz" });
      done.resume();
      await new Promise((resolve) => done.on("close", resolve));
    } finally {
      session.close();
    }
    // Cancellation is checked before the key lookup, the signature check and any SQL: a reset that
    // arrives while the key is being looked up (the lookup already sent) stops the call at the next.
    expect(lookups.mock.calls.length).toBeLessThan(50);
    expect(verify).not.toHaveBeenCalled();
    expect(sessionReads).not.toHaveBeenCalled();
    vi.restoreAllMocks();
  });

  it("streams reset while their calls wait for a pooled connection send nothing once they get one", async () => {
    const narrow = await startTestServer({ sharedWith: server, env: { DATABASE_POOL_SIZE: "1" } });
    // The key and the tenant's policy are cached by a first create: the creates below wait for a
    // connection for their own INSERT only.
    const warm = await fetch(`${narrow.url}/v1/sessions`, { method: "POST", headers: { ...narrow.tenant.headers, "content-type": "application/json" }, body: '{"user_id":"usr_warm"}' });
    expect(warm.status).toBe(201);
    const inFlight = async () => {
      const metrics = await (await fetch(`${narrow.url}/metrics`)).text();
      return Number(/^sessions_rpc_in_flight\{method="CreateSession",protocol="[^"]+"\} (\d+)$/m.exec(metrics)?.[1] ?? 0);
    };
    const held = await narrow.services.pool.getConnection();
    const session = http2.connect(narrow.url);
    session.on("error", () => undefined);
    // Fewer than the pool's wait queue (16 per connection) holds.
    const userIds = Array.from({ length: 12 }, (_, i) => `usr_reset_queued_${i}`);
    let isReleased = false;
    try {
      const streams = userIds.map((userId) => {
        const stream = session.request({ ":method": "POST", ":path": "/v1/sessions", "content-type": "application/json", ...narrow.tenant.headers });
        stream.on("error", () => undefined);
        stream.resume();
        stream.end(JSON.stringify({ user_id: userId }));
        return stream;
      });
      // Every create is past authentication, and their rows wait in batches for the one connection,
      // held here (a batch waits as one: the pool sees at least one waiter).
      for (;;) {
        if ((await inFlight()) === userIds.length && poolStats(narrow.services.pool).waiting > 0) break;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      // Reset in a write of their own, well after the requests; the PING's answer comes once the
      // server has read the resets.
      for (const stream of streams) stream.close(http2.constants.NGHTTP2_CANCEL);
      await new Promise((resolve) => session.ping(() => resolve(undefined)));
      held.release();
      isReleased = true;
      for (;;) {
        const stats = poolStats(narrow.services.pool);
        if (stats.waiting === 0 && stats.inUse === 0) break;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    } finally {
      if (!isReleased) held.release();
      session.close();
    }
    const [rows] = (await server.services.pool.query("SELECT COUNT(*) AS n FROM sessions WHERE tenant_id = ? AND user_id IN (?)", [
      narrow.tenant.id,
      userIds,
    ])) as unknown as [{ n: number }[]];
    expect(Number(rows[0]!.n)).toBe(0);
    // Every one of them was answered (cancelled), none left counted as in flight.
    expect(await inFlight()).toBe(0);
    await narrow.close();
  });

  it("a bad signing-key row is skipped and reported while the good keys keep working; a wrong KEY_ENCRYPTION_KEY stops start-up", async () => {
    const kid = "key_01HZZZZZZZZZZZZZZZZZZZZZZZ";
    const identity = Buffer.concat([Buffer.from([1]), Buffer.alloc(31)]).toString("base64url");
    await server.services.pool.query(
      "INSERT INTO signing_keys (id, public_x, private_key_encrypted, created_at, signs_from) VALUES (?, ?, ?, ?, ?)",
      [kid, identity, Buffer.alloc(64, 7), new Date(), new Date(Date.now() - 1000)],
    );
    try {
      await server.services.keyRing.reload();
      const jwks = (await (await fetch(`${server.url}/.well-known/jwks.json`)).json()) as { keys: { kid: string }[] };
      expect(jwks.keys.map((k) => k.kid)).not.toContain(kid);
      expect(jwks.keys.length).toBeGreaterThan(0);
      expect((await fetch(`${server.url}/readyz`)).status).toBe(200);
      expect(await (await fetch(`${server.url}/metrics`)).text()).toMatch(/^sessions_signing_keys_invalid 1$/m);
      const { access_token: token } = await createSession();
      expect(((await (await post("/v1/sessions/verify", JSON.stringify({ token }))).json()) as Json).valid).toBe(true);
      const wrongKek = { ...server.config, keyEncryptionKey: randomBytes(32) };
      await expect(openServices(wrongKek)).rejects.toThrow(/KEY_ENCRYPTION_KEY does not decrypt/);
    } finally {
      await server.services.pool.query("DELETE FROM signing_keys WHERE id = ?", [kid]);
    }
  });

  it.each(["1e2", "0x10", "+5", "1.0", " 5", "5 ", "٥", "1_0", "Infinity"])("limit=%j is 400 naming limit (plain decimal integers only)", async (limit) => {
    const res = await fetch(`${server.url}/v1/sessions?limit=${encodeURIComponent(limit)}`, { headers: server.tenant.headers });
    expect(res.status).toBe(400);
    expect(((await res.json()) as Json).error).toMatchObject({ code: "invalid_request", field: "limit" });
  });

  it("a JSON body naming a key twice, at any depth, is 400; so are bytes that are not UTF-8", async () => {
    for (const body of ['{"user_id":"a","user_id":"b"}', '{"user_id":"a","user_\\u0069d":"b"}', '{"token":"x","token":"x"}']) {
      const res = await post(body.includes("token") ? "/v1/sessions/verify" : "/v1/sessions", body);
      expect(res.status, body).toBe(400);
      expect(((await res.json()) as Json).error.code).toBe("invalid_request");
    }
    const invalidUtf8 = Buffer.concat([Buffer.from('{"user_id":"a'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]);
    const res = await post("/v1/sessions", invalidUtf8);
    expect(res.status).toBe(400);
    expect(((await res.json()) as Json).error.message).toMatch(/UTF-8/);
    const listed = (await (await fetch(`${server.url}/v1/sessions?user_id=a`, { headers: server.tenant.headers })).json()) as Json;
    expect(listed.data).toEqual([]);
  });

  it("an expired client deadline is DEADLINE_EXCEEDED, not unavailable", async () => {
    const { session, refresh_token: refreshToken } = await createSession("usr_deadline");
    const side = await server.services.pool.getConnection();
    try {
      await side.beginTransaction();
      await side.query("SELECT id FROM sessions WHERE tenant_id = ? AND id = ? FOR UPDATE", [server.tenant.id, session.id]);
      // The Connect protocol over plain HTTP: the server answers; the client does not time out itself.
      const res = await fetch(`${server.url}/sessions.v1.SessionService/RefreshSession`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-tenant-id": server.tenant.id, "connect-timeout-ms": "300" },
        body: JSON.stringify({ refreshToken }),
      });
      expect(res.status).toBe(504);
      expect(((await res.json()) as Json).code).toBe("deadline_exceeded");
    } finally {
      await side.rollback();
      side.release();
    }
  });

  it("40 refreshes piling onto a locked session hold one connection; unrelated refreshes go on meanwhile", async () => {
    const locked = await createSession("usr_locked");
    const others = await Promise.all([1, 2, 3, 4, 5].map(() => createSession("usr_free")));
    const refresh = (token: string) =>
      fetch(`${server.url}/v1/auth/token/refresh`, { method: "POST", headers: { "content-type": "application/json", "x-tenant-id": server.tenant.id }, body: JSON.stringify({ refresh_token: token }) });
    // One of the 40 is inside the database, blocked on the row in its write; the other 39 wait in
    // memory: the pool holds the side connection and that one writer.
    const piled = await whileRowLocked(server.services.pool, { tenantId: server.tenant.id, sessionId: locked.session.id }, {
      writers: 1,
      blockedStatement: rotationStatement,
      start: () => Array.from({ length: 40 }, () => refresh(locked.refresh_token)),
      during: async () => {
        expect(poolStats(server.services.pool).inUse).toBeLessThanOrEqual(2);
        const free = await Promise.all(others.map((o) => refresh(o.refresh_token)));
        expect(free.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
      },
    });
    const statuses = piled.map((r) => r.status);
    // Each waits at most its own 5 s budget; those that got the row got the one successor.
    expect(statuses.every((s) => s === 200 || s === 503)).toBe(true);
    const tokens = new Set(await Promise.all(piled.filter((r) => r.status === 200).map(async (r) => ((await r.json()) as Json).refresh_token)));
    expect(tokens.size).toBeLessThanOrEqual(1);
  });
});
