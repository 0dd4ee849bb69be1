import { execFile } from "node:child_process";
import http from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { SessionService } from "../gen/sessions/v1/sessions_pb.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/** The caller's own credentials, over REST and Connect alike. */

const run = promisify(execFile);
const apiKeyCacheSeconds = 1;
let server: TestServer;

beforeAll(async () => {
  server = await startTestServer({ env: { API_KEY_CACHE_SECONDS: String(apiKeyCacheSeconds) } });
});
afterAll(async () => {
  await server?.close();
});

async function restError(headers: Record<string, string>) {
  const res = await fetch(`${server.url}/v1/sessions`, { headers });
  const body = (await res.json()) as { error: { code: string; message: string } };
  return { status: res.status, code: body.error?.code, message: body.error?.message };
}

async function connectError(headers: Record<string, string>) {
  const client = createClient(SessionService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
  const err = ConnectError.from(await client.listSessions({}, { headers }).then(() => new Error("no error"), (e: unknown) => e));
  return { code: err.code, reason: err.findDetails(ErrorInfoSchema)[0]?.reason, message: err.rawMessage };
}

describe("malformed Authorization headers", () => {
  const key = () => server.tenant.secretKey;
  it.each([
    ["no scheme", () => key()],
    ["Basic scheme", () => `Basic ${key()}`],
    ["Bearer without a token", () => "Bearer"],
    ["Bearer and spaces", () => "Bearer   "],
    ["two tokens", () => `Bearer ${key()} ${key()}`],
    ["a tab inside", () => `Bearer\t${key()}x`],
    ["truncated key", () => `Bearer ${key().slice(0, -1)}`],
    ["one character more", () => `Bearer ${key()}A`],
    ["wrong prefix", () => `Bearer ${key().replace("sk_live_", "sk_prod_")}`],
    ["a JWT instead of a key", () => "Bearer eyJhbGciOiJFZERTQSJ9.e30.sig"],
    ["a very long value", () => `Bearer ${"A".repeat(8000)}`],
  ])("%s: deterministic 401 invalid_api_key, the same over REST and Connect", async (_name, value) => {
    const headers = { authorization: value(), "x-tenant-id": server.tenant.id };
    const first = await restError(headers);
    expect(first).toMatchObject({ status: 401, code: "invalid_api_key" });
    expect(await restError(headers)).toEqual(first);
    expect(await connectError(headers)).toEqual({ code: Code.Unauthenticated, reason: "invalid_api_key", message: first.message });
  });

  it("a missing header is 401 missing_token; an empty one too", async () => {
    expect(await restError({ "x-tenant-id": server.tenant.id })).toMatchObject({ status: 401, code: "missing_token" });
    expect(await restError({ authorization: "", "x-tenant-id": server.tenant.id })).toMatchObject({ status: 401, code: "missing_token" });
    expect(await connectError({ "x-tenant-id": server.tenant.id })).toMatchObject({ code: Code.Unauthenticated, reason: "missing_token" });
  });

  it("the scheme is case-insensitive, as RFC 9110 says", async () => {
    const res = await fetch(`${server.url}/v1/sessions`, { headers: { authorization: `bearer ${server.tenant.secretKey}`, "x-tenant-id": server.tenant.id } });
    expect(res.status).toBe(200);
  });
});

describe("unknown, revoked and wrong-tenant keys", () => {
  it("give identical answers, and a key revoked with sessionctl stops working on every instance within API_KEY_CACHE_SECONDS", async () => {
    const second = await startTestServer({ sharedWith: server, env: { API_KEY_CACHE_SECONDS: String(apiKeyCacheSeconds) } });
    try {
      const tenant = await server.addTenant("revocable");
      const other = await server.addTenant("other");
      // Both instances look the key up now, and may answer from their cache until this lookup is
      // API_KEY_CACHE_SECONDS old.
      for (const s of [server, second]) {
        expect((await fetch(`${s.url}/v1/sessions`, { headers: tenant.headers })).status).toBe(200);
      }
      await run("node", ["bin/sessionctl.js", "keys", "revoke", "--tenant", tenant.id, "--key", tenant.keyId], {
        env: { ...process.env, DATABASE_URL: server.config.databaseUrl },
      });
      // Once the cache window has passed since those lookups (they were before the revocation), no
      // instance may accept the key: each must refuse it on the very first try. The wait is the
      // documented bound itself; a slow machine only makes it longer, which cannot fail the test.
      await sleep(apiKeyCacheSeconds * 1_000 + 100);
      for (const s of [server, second]) {
        expect((await fetch(`${s.url}/v1/sessions`, { headers: tenant.headers })).status, s.url).toBe(401);
      }

      const revoked = await restError(tenant.headers);
      const unknown = await restError({ authorization: `Bearer sk_live_${"Z".repeat(43)}`, "x-tenant-id": tenant.id });
      const wrongTenant = await restError({ authorization: `Bearer ${other.secretKey}`, "x-tenant-id": tenant.id });
      expect(revoked).toEqual(unknown);
      expect(wrongTenant).toEqual(unknown);
    } finally {
      await second.close();
    }
  });
});

/**
 * One request with two Authorization field lines, sent as clients send them on the wire: Node
 * keeps only the first in `headers` (HTTP/1.1 and HTTP/2 alike), so without care the first would
 * authenticate whatever the second says. HTTP/1.1 through node:http (which writes each value of an
 * array as its own line); h2c through curl, since Node's HTTP/2 client refuses to send them.
 */
describe("two Authorization headers on one request", () => {
  const listPath = "/sessions.v1.SessionService/ListSessions";
  const watchPath = "/sessions.v1.SessionService/WatchSessionEvents";
  const empty = Buffer.alloc(5); // one uncompressed, empty message frame (gRPC, gRPC-Web)
  const connectStreamFrame = Buffer.concat([Buffer.from([0, 0, 0, 0, 2]), Buffer.from("{}")]);

  /** Each value its own `Authorization:` line, over HTTP/1.1; the answer as it ended, or what came within a second (a stream that was let in). */
  function http1(path: string, authorizations: string[], init: { method?: string; headers?: Record<string, string>; body?: Buffer } = {}) {
    return new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
      const req = http.request(`${server.url}${path}`, { method: init.method ?? "GET", headers: { "x-tenant-id": server.tenant.id, ...init.headers } });
      req.setHeader("authorization", authorizations);
      req.on("error", reject);
      req.on("response", (res) => {
        const chunks: Buffer[] = [];
        const done = () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("latin1") });
        const timer = setTimeout(() => {
          res.destroy();
          done();
        }, 1_000);
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          clearTimeout(timer);
          done();
        });
      });
      req.end(init.body);
    });
  }

  /** The same over h2c with curl: the response's status, headers (trailers included) and body. */
  async function h2c(path: string, authorizations: string[], init: { method?: string; headers?: Record<string, string>; body?: Buffer } = {}) {
    const args = ["-s", "--http2-prior-knowledge", "-D", "-", "-X", init.method ?? "GET", "-H", `x-tenant-id: ${server.tenant.id}`];
    // curl drops a header given as `name:` with no value; `name;` sends it empty.
    for (const value of authorizations) args.push("-H", value === "" ? "authorization;" : `authorization: ${value}`);
    for (const [name, value] of Object.entries(init.headers ?? {})) args.push("-H", `${name}: ${value}`);
    if (init.body) args.push("--data-binary", `@-`);
    const child = execFile("curl", [...args, `${server.url}${path}`], { encoding: "latin1", timeout: 5_000 });
    child.stdin?.end(init.body);
    const stdout = await new Promise<string>((resolve, reject) => {
      let out = "";
      child.stdout?.on("data", (c: string) => (out += c));
      child.on("close", () => resolve(out));
      child.on("error", reject);
    });
    return { status: Number(/^HTTP\/2 (\d+)/.exec(stdout)?.[1]), text: stdout };
  }

  const key = () => `Bearer ${server.tenant.secretKey}`;
  const pairs: [string, () => string[]][] = [
    ["the same key twice", () => [key(), key()]],
    ["a working key, then junk", () => [key(), "Bearer junk"]],
    ["a working key, then an empty line", () => [key(), ""]],
    ["junk, then a working key", () => ["Bearer junk", key()]],
  ];

  describe.each(pairs)("%s", (_name, values) => {
    it("REST (HTTP/1.1 and h2c): 401 invalid_api_key, as for any malformed header", async () => {
      const one = await http1("/v1/sessions", values());
      expect(one.status).toBe(401);
      expect(JSON.parse(one.body).error).toMatchObject({ code: "invalid_api_key", status: 401 });
      const two = await h2c("/v1/sessions", values());
      expect(two.status).toBe(401);
      expect(two.text).toContain('"code":"invalid_api_key"');
    });

    it("Connect (HTTP/1.1 and h2c) and gRPC-Web: UNAUTHENTICATED, reason invalid_api_key", async () => {
      const connect = { method: "POST", headers: { "content-type": "application/json" }, body: Buffer.from("{}") };
      for (const answer of [await http1(listPath, values(), connect), await h2c(listPath, values(), connect)]) {
        expect(answer.status).toBe(401);
        const text = "body" in answer ? answer.body : answer.text;
        expect(text).toContain('"code":"unauthenticated"');
      }
      const web = await http1(listPath, values(), { method: "POST", headers: { "content-type": "application/grpc-web+proto" }, body: empty });
      expect(web.body).toMatch(/grpc-status: ?16/);
    });

    it("gRPC over h2c: status 16 (UNAUTHENTICATED)", async () => {
      const answer = await h2c(listPath, values(), { method: "POST", headers: { "content-type": "application/grpc", te: "trailers" }, body: empty });
      expect(answer.text).toMatch(/grpc-status: 16/);
    });

    it("the event feed, over SSE and as a Connect stream: refused before it starts", async () => {
      const sse = await http1("/v1/sessions/events", values(), { headers: { accept: "text/event-stream" } });
      expect(sse.status).toBe(401);
      expect(JSON.parse(sse.body).error.code).toBe("invalid_api_key");
      const stream = await http1(watchPath, values(), { method: "POST", headers: { "content-type": "application/connect+json" }, body: connectStreamFrame });
      expect(stream.body).toContain('"code":"unauthenticated"');
    });
  });
});
