import { gzipSync } from "node:zlib";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { compressionGzip, createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { SessionService } from "../gen/sessions/v1/sessions_pb.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/** Size limits on every path: bodies (after decompression), headers, fields. */

let server: TestServer;
const limit = 8 * 1024;

beforeAll(async () => {
  server = await startTestServer({ env: { BODY_LIMIT_BYTES: String(limit) } });
});
afterAll(async () => {
  await server?.close();
});

describe("body limit", () => {
  it("REST: 413 over the limit; compressed bodies are refused rather than parsed unread", async () => {
    const big = JSON.stringify({ user_id: "u", user_agent: "a".repeat(limit) });
    const over = await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { ...server.tenant.headers, "content-type": "application/json" }, body: big });
    expect(over.status).toBe(413);
    expect(((await over.json()) as { error: { code: string } }).error.code).toBe("payload_too_large");
    const gz = await fetch(`${server.url}/v1/sessions`, {
      method: "POST",
      headers: { ...server.tenant.headers, "content-type": "application/json", "content-encoding": "gzip" },
      body: gzipSync(big),
    });
    expect(gz.status).toBe(415);
  });

  it.each([
    ["Connect", () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", sendCompression: compressionGzip, compressMinBytes: 1 })],
    ["gRPC", () => createGrpcTransport({ baseUrl: server.url, sendCompression: compressionGzip, compressMinBytes: 1 })],
  ])("%s: a body that is small compressed but over the limit decompressed is INVALID_ARGUMENT payload_too_large", async (_name, transport) => {
    const client = createClient(SessionService, transport());
    const err = await client
      .createSession({ userId: "u", userAgent: "a".repeat(limit * 4) }, { headers: server.tenant.headers })
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
    expect((err as ConnectError).findDetails(ErrorInfoSchema)[0]?.reason).toBe("payload_too_large");
    const listed = await fetch(`${server.url}/v1/sessions?user_id=u`, { headers: server.tenant.headers });
    expect(((await listed.json()) as { data: unknown[] }).data).toEqual([]);
  });
});

describe("header limit", () => {
  it("a header block over Node's 16 KiB is refused with 431 and the server keeps serving", async () => {
    const res = await fetch(`${server.url}/v1/sessions`, { headers: { ...server.tenant.headers, "x-padding": "p".repeat(20_000) } });
    expect(res.status).toBe(431);
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
  });
});
