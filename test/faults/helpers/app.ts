import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { FastifyInstance } from "fastify";
import mysql, { type Connection, type RowDataPacket } from "mysql2/promise";
import { afterAll, afterEach, beforeAll } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../../../gen/grpc/health/v1/health_pb.js";
import { buildApp } from "../../../src/app.js";
import { loadConfig, type Config } from "../../../src/config.js";
import { mintApiKey } from "../../../src/domain/api-keys.js";
import { newId } from "../../../src/domain/secrets.js";
import { openServices, type Services } from "../../../src/services.js";
import { poolStats, type Pool } from "../../../src/store/db.js";
import { createTenantStore } from "../../../src/store/tenant-store.js";

import { startFaultProxy, type FaultProxy } from "./fault-proxy.js";
import { startPrivateMariaDb, type PrivateMariaDb } from "./private-mariadb.js";

export { HealthCheckResponse_ServingStatus as ServingStatus };

export const faultDatabase = "sessions_faults";

export function faultConfig(port: number, env: Record<string, string> = {}): Config {
  return loadConfig({
    NODE_ENV: "test",
    PORT: "0",
    HOST: "127.0.0.1",
    ISSUER: "http://localhost",
    DATABASE_URL: `mysql://root@127.0.0.1:${port}/${faultDatabase}`,
    LOG_LEVEL: "silent",
    // The load here is ours: rate limits (0 = off) would answer 429 before the database is reached.
    RATE_LIMIT_READ_PER_MINUTE: "0",
    RATE_LIMIT_WRITE_PER_MINUTE: "0",
    RATE_LIMIT_REFRESH_PER_MINUTE: "0",
    RATE_LIMIT_IP_PER_MINUTE: "0",
    ...env,
  });
}

export interface FaultApp {
  app: FastifyInstance;
  services: Services;
  url: string;
  headers: Record<string, string>;
  tenantId: string;
  close(): Promise<void>;
}

/** The real app (openServices + buildApp) on `dbPort`, listening on a free loopback port, with one tenant. */
/** The service on the fault database, listening, with nothing written by the test. */
export async function startFaultInstance(dbPort: number, env: Record<string, string> = {}) {
  const config = faultConfig(dbPort, env);
  const services = await openServices(config);
  const app = buildApp(config, services);
  app.addHook("onClose", () => services.close());
  await app.listen({ port: 0, host: "127.0.0.1" });
  const { port } = app.server.address() as { port: number };
  return { app, services, url: `http://127.0.0.1:${port}`, close: () => app.close() };
}

export async function startFaultApp(dbPort: number, env: Record<string, string> = {}): Promise<FaultApp> {
  const { app, services, url } = await startFaultInstance(dbPort, env);
  const tenantId = newId("tnt");
  const store = createTenantStore(services.pool);
  const now = new Date();
  await store.createTenant({ id: tenantId, name: "Faults", createdAt: now });
  const { key, secret, hash } = mintApiKey(tenantId, now);
  await store.createApiKey(key, hash);
  return {
    app,
    services,
    url,
    headers: { authorization: `Bearer ${secret}`, "x-tenant-id": tenantId },
    tenantId,
    close: () => app.close(),
  };
}

export interface FaultStack {
  db: PrivateMariaDb;
  proxy: FaultProxy;
  svc: FaultApp;
}

/**
 * Registers beforeAll/afterAll for a private MariaDB, a fault proxy in front of it and the app
 * talking to the proxy; the returned object is filled in once beforeAll has run. After each test
 * the proxy passes traffic again, so that a test failing half-way leaves no fault to the next.
 */
export function useFaultStack(env: Record<string, string> = {}): FaultStack {
  const stack = {} as FaultStack;
  beforeAll(async () => {
    stack.db = await startPrivateMariaDb();
    stack.proxy = await startFaultProxy(stack.db.port);
    stack.svc = await startFaultApp(stack.proxy.port, env);
  });
  afterEach(() => {
    stack.proxy?.setLatency(0);
    stack.proxy?.setMode("pass");
  });
  afterAll(async () => {
    await stack.svc?.close();
    await stack.proxy?.close();
    await stack.db?.destroy();
  });
  return stack;
}

export interface CallResult {
  status: number;
  json: Record<string, any> | undefined;
  ms: number;
  /** Why a call with status 0 failed. */
  error?: string;
}

/** One REST call; a transport failure or a client timeout (`timeoutMs`) is status 0. */
export async function call(
  base: string,
  method: string,
  path: string,
  { headers = {}, body, timeoutMs = 15_000 }: { headers?: Record<string, string>; body?: unknown; timeoutMs?: number } = {},
): Promise<CallResult> {
  const started = performance.now();
  try {
    const res = await fetch(base + path, {
      method,
      headers: { ...headers, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
      body: body !== undefined ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : undefined, ms: performance.now() - started };
  } catch (err) {
    const e = err as Error & { cause?: { code?: string } };
    return { status: 0, json: undefined, ms: performance.now() - started, error: e.cause?.code ?? e.name };
  }
}

export const createSession = (a: FaultApp, userId: string, timeoutMs?: number) =>
  call(a.url, "POST", "/v1/sessions", { headers: a.headers, body: { user_id: userId }, timeoutMs });

export const refreshSession = (a: Pick<FaultApp, "url" | "tenantId">, token: string, timeoutMs?: number) =>
  call(a.url, "POST", "/v1/auth/token/refresh", { headers: { "x-tenant-id": a.tenantId }, body: { refresh_token: token }, timeoutMs });

export const revokeSession = (a: FaultApp, id: string, timeoutMs?: number) =>
  call(a.url, "DELETE", `/v1/sessions/${id}`, { headers: a.headers, timeoutMs });

/** grpc.health.v1.Health/Check over gRPC (h2c) with a Connect client. */
export async function healthCheck(url: string, timeoutMs = 5_000): Promise<HealthCheckResponse_ServingStatus> {
  const client = createClient(Health, createGrpcTransport({ baseUrl: url }));
  const res = await client.check({ service: "" }, { timeoutMs });
  return res.status;
}

export { hashSecret } from "../../../src/domain/secrets.js";

/** A direct connection to the private server (not through the proxy), for checks and side locks. */
export function directConnection(port: number, database = faultDatabase) {
  return mysql.createConnection({ host: "127.0.0.1", port, user: "root", database, timezone: "Z" });
}

/**
 * A server-wide counter from SHOW GLOBAL STATUS, e.g. `Innodb_row_lock_waits` (row-lock waits begun),
 * `Innodb_row_lock_current_waits`, `Innodb_deadlocks`, `Com_begin` (transactions started).
 */
export async function globalStatus(conn: Connection, name: string): Promise<number> {
  const [rows] = await conn.query<RowDataPacket[]>("SHOW GLOBAL STATUS LIKE ?", [name]);
  if (rows[0] === undefined) throw new Error(`no status variable ${name}`);
  return Number(rows[0].Value);
}

/**
 * Watches the pool while `work` runs: the most connections in use and the most callers waiting at
 * any moment (sampled every few milliseconds and whenever `note` is called).
 */
export async function watchPool<T>(pool: Pool, work: (note: () => void) => Promise<T>): Promise<{ result: T; maxInUse: number; maxWaiting: number }> {
  let maxInUse = 0;
  let maxWaiting = 0;
  const note = () => {
    const { inUse, waiting } = poolStats(pool);
    maxInUse = Math.max(maxInUse, inUse);
    maxWaiting = Math.max(maxWaiting, waiting);
  };
  const sampler = setInterval(note, 5);
  try {
    const result = await work(note);
    note();
    return { result, maxInUse, maxWaiting };
  } finally {
    clearInterval(sampler);
  }
}

/** Polls `probe` until it returns true or `timeoutMs` passes; returns how long it took. */
export async function eventually(probe: () => Promise<boolean>, timeoutMs = 15_000, everyMs = 100): Promise<number> {
  const started = Date.now();
  for (;;) {
    if (await probe().catch(() => false)) return Date.now() - started;
    if (Date.now() - started > timeoutMs) throw new Error(`not true within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
