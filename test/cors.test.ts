import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./helpers/server.js";

/** Browser callers: CORS for the configured origins only (CORS_ORIGINS), and none by default. */
let open: TestServer;
let closed: TestServer;
beforeAll(async () => {
  open = await startTestServer({ env: { CORS_ORIGINS: "https://app.example.com,http://localhost:3000" } });
  closed = await startTestServer();
});
afterAll(async () => {
  await open?.close();
  await closed?.close();
});

const preflight = (server: TestServer, path: string, origin: string, headers = "content-type,x-tenant-id") =>
  fetch(`${server.url}${path}`, { method: "OPTIONS", headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": headers } });

describe("CORS", () => {
  it("lets a configured origin refresh from a browser, and call Connect and gRPC-Web with their headers", async () => {
    const refresh = await preflight(open, "/v1/auth/token/refresh", "https://app.example.com");
    expect(refresh.status).toBe(204);
    expect(refresh.headers.get("access-control-allow-origin")).toBe("https://app.example.com");
    expect(refresh.headers.get("access-control-allow-headers")?.toLowerCase()).toContain("x-tenant-id");
    const grpcWeb = await preflight(open, "/sessions.v1.SessionService/VerifyToken", "http://localhost:3000", "content-type,x-grpc-web,x-user-agent,authorization,x-tenant-id");
    expect(grpcWeb.status).toBe(204);
    for (const h of ["x-grpc-web", "connect-protocol-version", "authorization"]) expect(grpcWeb.headers.get("access-control-allow-headers")?.toLowerCase()).toContain(h);
    // The real call then carries the origin and exposes what a browser client reads.
    const res = await fetch(`${open.url}/v1/auth/token/refresh`, { method: "POST", headers: { origin: "https://app.example.com", "x-tenant-id": open.tenant.id, "content-type": "application/json" }, body: '{"refresh_token":"rt_nope"}' });
    expect(res.headers.get("access-control-allow-origin")).toBe("https://app.example.com");
    for (const h of ["grpc-status", "grpc-message", "x-request-id", "retry-after"]) expect(res.headers.get("access-control-expose-headers")?.toLowerCase()).toContain(h);
  });

  it("says nothing to other origins, and nothing to anyone when CORS_ORIGINS is unset", async () => {
    const other = await preflight(open, "/v1/auth/token/refresh", "https://evil.example");
    expect(other.headers.get("access-control-allow-origin")).toBeNull();
    const off = await preflight(closed, "/v1/auth/token/refresh", "https://app.example.com");
    expect(off.headers.get("access-control-allow-origin")).toBeNull();
    expect(off.status).toBeGreaterThanOrEqual(400);
  });
});
