import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { FastifyInstance } from "fastify";
import mysql from "mysql2/promise";
import { afterAll, beforeAll } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../../../gen/grpc/health/v1/health_pb.js";
import { buildApp } from "../../../src/app.js";
import { loadConfig, type Config } from "../../../src/config.js";
import { mintApiKey } from "../../../src/domain/api-keys.js";
import { newId } from "../../../src/domain/secrets.js";
import { openServices, type Services } from "../../../src/services.js";
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
export async function startFaultApp(dbPort: number, env: Record<string, string> = {}): Promise<FaultApp> {
  const config = faultConfig(dbPort, env);
  const services = await openServices(config);
  const app = buildApp(config, services);
  app.addHook("onClose", () => services.close());
  await app.listen({ port: 0, host: "127.0.0.1" });
  const { port } = app.server.address() as { port: number };
  const tenantId = newId("tnt");
  const store = createTenantStore(services.pool);
  const now = new Date();
  await store.createTenant({ id: tenantId, name: "Faults", createdAt: now });
  const { key, secret, hash } = mintApiKey(tenantId, now);
  await store.createApiKey(key, hash);
  return {
    app,
    services,
    url: `http://127.0.0.1:${port}`,
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
 * talking to the proxy; the returned object is filled in once beforeAll has run.
 */
export function useFaultStack(env: Record<string, string> = {}): FaultStack {
  const stack = {} as FaultStack;
  beforeAll(async () => {
    stack.db = await startPrivateMariaDb();
    stack.proxy = await startFaultProxy(stack.db.port);
    stack.svc = await startFaultApp(stack.proxy.port, env);
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

/** Polls `probe` until it returns true or `timeoutMs` passes; returns how long it took. */
export async function eventually(probe: () => Promise<boolean>, timeoutMs = 15_000, everyMs = 100): Promise<number> {
  const started = Date.now();
  for (;;) {
    if (await probe().catch(() => false)) return Date.now() - started;
    if (Date.now() - started > timeoutMs) throw new Error(`not true within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
