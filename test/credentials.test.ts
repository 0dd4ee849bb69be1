import { execFile } from "node:child_process";
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
