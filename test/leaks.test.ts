import { Writable } from "node:stream";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SessionService } from "../gen/sessions/v1/sessions_pb.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * Runs real traffic, good and bad, with canary secrets, and looks for any secret in every log line,
 * every response body and the metrics. Logging is at trace level so nothing is filtered by level.
 */

const lines: string[] = [];
const bodies: string[] = [];
const logStream = new Writable({
  write(chunk: Buffer, _enc, done) {
    lines.push(...chunk.toString("utf8").split("\n").filter((l) => l !== ""));
    done();
  },
});
const canaryKey = `sk_live_CANARY${"k".repeat(37)}`;
const canaryRefresh = `rt_CANARY${"r".repeat(37)}`;
const canaryJwt = "eyJhbGciOiJFZERTQSJ9.eyJDQU5BUlkiOnRydWV9.Q0FOQVJZc2lnbmF0dXJl";
let server: TestServer;
const secrets: string[] = [canaryKey, canaryRefresh, canaryJwt];

async function call(method: string, path: string, headers: Record<string, string>, body?: string) {
  const res = await fetch(server.url + path, { method, headers: { "content-type": "application/json", ...headers }, body });
  const text = await res.text();
  bodies.push(text);
  return { status: res.status, text };
}

beforeAll(async () => {
  server = await startTestServer({ env: { LOG_LEVEL: "trace" }, logStream });
  secrets.push(server.tenant.secretKey);
});
afterAll(async () => {
  await server?.close();
});

describe("secrets never leak", () => {
  it("not into logs, error bodies or metrics, whatever the traffic", async () => {
    const h = server.tenant.headers;
    // Control characters and line breaks are refused (400) before anything is stored or signed; what
    // is accepted (quotes, JSON look-alikes, U+00A0) must still leave every log line one JSON object.
    for (const controlAgent of ['evil\n{"level":60,"msg":"forged"}\r\n\u0000"quoted"', 'evil\u2028{"level":60}\u2029']) {
      expect((await call("POST", "/v1/sessions", h, JSON.stringify({ user_id: "usr_leak", user_agent: controlAgent }))).status).toBe(400);
    }
    const hostileAgent = 'evil {"level":60,"msg":"forged"}\u00a0"quoted"';
    // Headers cannot carry line breaks; the body can.
    const created = await call("POST", "/v1/sessions", { ...h, "user-agent": 'evil "quoted" {"level":60}' }, JSON.stringify({ user_id: "usr_leak", user_agent: hostileAgent }));
    const pair = JSON.parse(created.text) as { access_token: string; refresh_token: string; session: { id: string } };
    secrets.push(pair.access_token, pair.refresh_token);

    await call("POST", "/v1/sessions/verify", h, JSON.stringify({ token: pair.access_token }));
    await call("POST", "/v1/sessions/verify", h, JSON.stringify({ token: canaryJwt }));
    await call("POST", "/v1/sessions/verify", h, JSON.stringify({ token: canaryJwt, extra: canaryKey }));
    await call("GET", `/v1/sessions?user_id=usr_leak&token=${canaryJwt}&key=${canaryKey}`, h);
    await call("GET", "/v1/sessions", { authorization: `Bearer ${canaryKey}`, "x-tenant-id": server.tenant.id });
    await call("GET", "/v1/sessions", { authorization: canaryKey, "x-tenant-id": canaryKey });
    await call("POST", "/v1/sessions", h, `{"user_id": "${canaryKey}`);
    await call("POST", "/v1/sessions", h, JSON.stringify({ user_id: "u", note: canaryKey.repeat(2000) }));
    const refreshed = await call("POST", "/v1/auth/token/refresh", { "x-tenant-id": server.tenant.id }, JSON.stringify({ refresh_token: pair.refresh_token }));
    secrets.push((JSON.parse(refreshed.text) as { access_token: string; refresh_token: string }).refresh_token);
    await call("POST", "/v1/auth/token/refresh", { "x-tenant-id": server.tenant.id }, JSON.stringify({ refresh_token: canaryRefresh }));
    // Reuse after the grace window is not needed here: a reused token must not be logged either.
    await call("POST", "/v1/auth/token/refresh", { "x-tenant-id": server.tenant.id }, JSON.stringify({ refresh_token: pair.refresh_token }));

    for (const transport of [
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
      createGrpcTransport({ baseUrl: server.url }),
    ]) {
      const client = createClient(SessionService, transport);
      await client.verifyToken({ token: canaryJwt }, { headers: h });
      await client.listSessions({}, { headers: { authorization: `Bearer ${canaryKey}`, "x-tenant-id": server.tenant.id } }).catch((e: Error) => bodies.push(e.message));
      await client.refreshSession({ refreshToken: canaryRefresh }, { headers: { "x-tenant-id": server.tenant.id } }).catch((e: Error) => bodies.push(e.message));
    }
    await call("DELETE", `/v1/sessions/${pair.session.id}`, h);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();

    expect(lines.length).toBeGreaterThan(10);
    for (const line of lines) expect(() => JSON.parse(line), line).not.toThrow();
    expect(lines.some((l) => l.includes('"msg":"forged"') && !l.startsWith('{"level":'))).toBe(false);
    for (const haystack of [...lines, ...bodies.filter((b) => !b.includes('"access_token"')), metrics]) {
      for (const secret of secrets) expect(haystack.includes(secret), `a secret leaked into: ${haystack.slice(0, 200)}`).toBe(false);
      expect(haystack).not.toMatch(/eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/);
      expect(haystack).not.toMatch(/sk_(live|test)_[\w-]{20,}/);
    }
  });

  it("a forced internal error returns the generic envelope without SQL, stack or host names", async () => {
    const h = server.tenant.headers;
    const created = JSON.parse((await call("POST", "/v1/sessions", h, JSON.stringify({ user_id: "usr_internal" }))).text) as { session: { id: string } };
    await server.services.pool.query("RENAME TABLE sessions TO sessions_hidden");
    try {
      const res = await call("GET", `/v1/sessions/${created.session.id}`, h);
      expect(res.status).toBe(500);
      const body = JSON.parse(res.text) as { error: { code: string; message: string } };
      expect(body.error).toMatchObject({ code: "internal", message: "internal error" });
      for (const leak of ["SELECT", "sessions", "at ", "127.0.0.1", "localhost", "ER_", "Table"]) expect(res.text).not.toContain(leak);
      const client = createClient(SessionService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
      const err = (await client.getSession({ id: created.session.id }, { headers: h }).catch((e: Error) => e)) as Error;
      expect(err.message).toBe("[internal] internal error");
    } finally {
      await server.services.pool.query("RENAME TABLE sessions_hidden TO sessions");
    }
    // The cause is in the log, for operators.
    expect(lines.some((l) => l.includes('"msg":"internal error"') && l.includes("ER_NO_SUCH_TABLE"))).toBe(true);
  });
});
