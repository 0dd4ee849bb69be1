import { execFile, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import http2 from "node:http2";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { create, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { VerifyTokenRequestSchema } from "../gen/sessions/v1/sessions_pb.js";
import { randomBytes } from "node:crypto";
import { openServices } from "../src/services.js";
import { poolStats } from "../src/store/db.js";
import { startChildServer, type ChildServer } from "./helpers/child-server.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * Hostile clients: HTTP/2 streams opened and never finished, streams reset as soon as sent, malformed
 * numbers and bodies, a row locked elsewhere while its clients pile on, and deadlines that run out.
 */

const run = promisify(execFile);
type Json = Record<string, any>;

/** A gRPC frame: one uncompressed length-prefixed message. */
function grpcFrame(message: Uint8Array): Buffer {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  Buffer.from(message).copy(frame, 5);
  return frame;
}

describe("HTTP/2 streams opened and never finished", () => {
  let server: ChildServer;
  let token: string;
  let headers: Record<string, string>;

  beforeAll(async () => {
    // The heap the reported attack killed the process with.
    server = await startChildServer({ NODE_OPTIONS: "--max-old-space-size=256" });
    const created = JSON.parse(
      (await run(process.execPath, ["bin/sessionctl.js", "tenants", "create", "--name", "Target", "--json"], { env: { ...process.env, DATABASE_URL: server.databaseUrl } })).stdout,
    ) as { tenant_id: string; secret_key: string };
    headers = { authorization: `Bearer ${created.secret_key}`, "x-tenant-id": created.tenant_id };
    const session = (await (await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: '{"user_id":"u"}' })).json()) as Json;
    token = session.access_token;
  }, 90_000);
  afterAll(async () => {
    await server?.stop();
  });

  it("300 connections × 100 pending streams: the process (256 MB heap) stays up, memory stays bounded, health and verify answer others within 1 s", async () => {
    const verifyOnce = async () => {
      const started = performance.now();
      const res = await fetch(`${server.url}/v1/sessions/verify`, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: JSON.stringify({ token }) });
      const body = (await res.json()) as Json;
      return { ms: performance.now() - started, isValid: res.status === 200 && body.valid === true };
    };
    const healthOnce = async () => {
      const started = performance.now();
      const res = await fetch(`${server.url}/healthz`);
      await res.arrayBuffer();
      return { ms: performance.now() - started, isOk: res.status === 200 };
    };
    // Warm up, then take the resting footprint.
    for (let i = 0; i < 20; i++) await verifyOnce();
    const before = await server.rss();

    const flood = spawn(process.execPath, ["--import", "tsx", "test/helpers/h2-flood.ts", server.url, "300", "100", JSON.stringify(headers)], {
      stdio: ["pipe", "pipe", "inherit"],
    });
    const lines = createInterface({ input: flood.stdout! });
    const reports: Json[] = [];
    lines.on("line", (line) => reports.push(JSON.parse(line) as Json));
    let peakRss = before;
    const probes: { ms: number; isOk: boolean }[] = [];
    try {
      // While the attack builds up and once it is all open, other clients are served.
      for (let round = 0; reports.length === 0 || round < 20; round++) {
        const [health, verify] = await Promise.all([healthOnce(), verifyOnce()]);
        probes.push(health, { ms: verify.ms, isOk: verify.isValid });
        peakRss = Math.max(peakRss, await server.rss());
        await sleep(100);
        if (round > 600) throw new Error("the attacker never finished opening its streams");
      }
    } finally {
      const exited = new Promise((resolve) => flood.once("exit", resolve));
      flood.stdin!.end();
      await exited;
    }
    const [{ opened }, { reset }] = reports as [{ opened: number }, { reset: number }];
    expect(opened).toBe(30_000);
    expect(server.isAlive()).toBe(true);
    expect(probes.every((p) => p.isOk)).toBe(true);
    expect(Math.max(...probes.map((p) => p.ms)), JSON.stringify(probes.map((p) => Math.round(p.ms)))).toBeLessThan(1_000);
    // The oldest pending streams were reset to keep at most 1,000 pending.
    expect(reset).toBeGreaterThan(20_000);
    const growthMiB = (peakRss - before) / 2 ** 20;
    console.log(`pending-stream attack: rss ${Math.round(before / 2 ** 20)} MiB before, peak ${Math.round(peakRss / 2 ** 20)} MiB, ${reset} of ${opened} streams reset, ${probes.length} probes, slowest ${Math.round(Math.max(...probes.map((p) => p.ms)))} ms`);
    expect(growthMiB).toBeLessThan(150);
    // Still serving once the attackers left.
    expect((await verifyOnce()).isValid).toBe(true);
  }, 120_000);
});

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

  async function createSession(userId = "u") {
    const res = await post("/v1/sessions", JSON.stringify({ user_id: userId }));
    expect(res.status).toBe(201);
    return (await res.json()) as Json;
  }

  it("a stream reset right after it was sent never reaches the signature check or the database", async () => {
    const { access_token: token } = await createSession();
    const verify = vi.spyOn(server.services.keyRing, "verify");
    const lookups = vi.spyOn(server.services.tenantStore, "findApiKey");
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
    expect(lookups).not.toHaveBeenCalled();
    expect(verify).not.toHaveBeenCalled();
    vi.restoreAllMocks();
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
    const side = await server.services.pool.getConnection();
    const refresh = (token: string) =>
      fetch(`${server.url}/v1/auth/token/refresh`, { method: "POST", headers: { "content-type": "application/json", "x-tenant-id": server.tenant.id }, body: JSON.stringify({ refresh_token: token }) });
    let pile: Promise<Response[]> | undefined;
    try {
      await side.beginTransaction();
      await side.query("SELECT id FROM sessions WHERE tenant_id = ? AND id = ? FOR UPDATE", [server.tenant.id, locked.session.id]);
      pile = Promise.all(Array.from({ length: 40 }, () => refresh(locked.refresh_token)));
      // Wait until one of them is inside the database, waiting for the row (the refresh's locking read).
      for (;;) {
        const [rows] = (await side.query(
          "SELECT COUNT(*) AS n FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID() AND command = 'Query' AND info LIKE '%FOR UPDATE%'",
        )) as unknown as [{ n: number }[]];
        if (Number(rows[0]!.n) >= 1) break;
        await sleep(20);
      }
      // The other 39 wait in memory: the pool holds the side connection and the one waiter.
      expect(poolStats(server.services.pool).inUse).toBeLessThanOrEqual(2);
      const free = await Promise.all(others.map((o) => refresh(o.refresh_token)));
      expect(free.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    } finally {
      await side.rollback();
      side.release();
    }
    const piled = await pile!;
    const statuses = piled.map((r) => r.status);
    // Each waits at most its own 5 s budget; those that got the row got the one successor.
    expect(statuses.every((s) => s === 200 || s === 503)).toBe(true);
    const tokens = new Set(await Promise.all(piled.filter((r) => r.status === 200).map(async (r) => ((await r.json()) as Json).refresh_token)));
    expect(tokens.size).toBeLessThanOrEqual(1);
  });
});
