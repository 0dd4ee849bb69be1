import http2 from "node:http2";
import { gzipSync } from "node:zlib";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { compressionGzip, createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";
import { CreateSessionRequestSchema, SessionService, VerifyTokenRequestSchema, type CreateSessionResponse } from "../gen/sessions/v1/sessions_pb.js";
import { callUnary, grpcClient } from "./helpers/grpc-client.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * The unary protocol adapters (src/transport/rpc-unary.ts) against real clients: @grpc/grpc-js,
 * connect-es's Connect, gRPC and gRPC-Web transports, and raw HTTP for what clients would not send.
 * Deadlines, compression, errors with details, large messages, and exact answers to bad input.
 */

let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server?.close();
});

type Json = Record<string, any>;

const transports: [string, () => Transport][] = [
  ["Connect", () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" })],
  ["Connect (JSON, gzip)", () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: false, sendCompression: compressionGzip, compressMinBytes: 1 })],
  ["gRPC", () => createGrpcTransport({ baseUrl: server.url })],
  ["gRPC (gzip)", () => createGrpcTransport({ baseUrl: server.url, sendCompression: compressionGzip, compressMinBytes: 1 })],
  ["gRPC-Web", () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" })],
  ["gRPC-Web (JSON, HTTP/2)", () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "2", useBinaryFormat: false })],
];

describe.each(transports)("connect-es over %s", (_name, transport) => {
  const client = () => createClient(SessionService, transport());

  it("creates and verifies a session whose user agent is near the body limit, and reads response headers", async () => {
    let headers = new Headers();
    const created = await client().createSession(
      { userId: "usr_big", userAgent: "a".repeat(1000), orgId: "o".repeat(255) },
      { headers: server.tenant.headers, onHeader: (h) => (headers = h) },
    );
    expect(headers.get("cache-control")).toBe("no-store");
    const verified = await client().verifyToken({ token: created.accessToken }, { headers: server.tenant.headers });
    expect(verified).toMatchObject({ valid: true, sessionId: created.session?.id, orgId: "o".repeat(255) });
  });

  it("answers errors with their code and an ErrorInfo detail naming the field", async () => {
    const err = ConnectError.from(await client().createSession({ userId: " x" }, { headers: server.tenant.headers }).catch((e: unknown) => e));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.findDetails(ErrorInfoSchema)[0]).toMatchObject({ reason: "invalid_request", metadata: { field: "user_id" } });
    const missing = ConnectError.from(await client().getSession({ id: "ses_01HABCDEF999888ABCDEFGHJKM" }, { headers: server.tenant.headers }).catch((e: unknown) => e));
    expect(missing.code).toBe(Code.NotFound);
    const unauth = ConnectError.from(await client().listSessions({}, { headers: { "x-tenant-id": server.tenant.id } }).catch((e: unknown) => e));
    expect(unauth.code).toBe(Code.Unauthenticated);
    expect(unauth.findDetails(ErrorInfoSchema)[0]?.reason).toBe("missing_token");
  });

  it("refuses a message over the body limit as INVALID_ARGUMENT payload_too_large", async () => {
    const err = ConnectError.from(await client().createSession({ userId: "u", userAgent: "b".repeat(70_000) }, { headers: server.tenant.headers }).catch((e: unknown) => e));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.findDetails(ErrorInfoSchema)[0]?.reason).toBe("payload_too_large");
  });
});

describe("@grpc/grpc-js", () => {
  it("a deadline that runs out while the call waits is DEADLINE_EXCEEDED, from the server", async () => {
    const created = (await (await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { ...server.tenant.headers, "content-type": "application/json" }, body: '{"user_id":"usr_dl"}' })).json()) as Json;
    const side = await server.services.pool.getConnection();
    try {
      await side.beginTransaction();
      await side.query("SELECT id FROM sessions WHERE tenant_id = ? AND id = ? FOR UPDATE", [server.tenant.id, created.session.id]);
      // Raw HTTP/2, so it is the server's answer that is read (grpc-js would time out on its own).
      const answer = await rawGrpc("/sessions.v1.SessionService/RefreshSession", { "x-tenant-id": server.tenant.id, "grpc-timeout": "300m" }, grpcFrame(toBinary(VerifyTokenRequestSchema, create(VerifyTokenRequestSchema, { token: created.refresh_token }))));
      expect(answer.status).toBe("4");
    } finally {
      await side.rollback();
      side.release();
    }
  });

  it("a deadline longer than the longest honoured is accepted (and shortened), in every unit and from grpc-js", async () => {
    const list = grpcFrame(new Uint8Array());
    for (const timeout of ["30001m", "31S", "1M", "3600S", "99999999H"]) {
      expect((await rawGrpc("/sessions.v1.SessionService/ListSessions", { ...server.tenant.headers, "grpc-timeout": timeout }, list)).status, timeout).toBe("0");
    }
    const client = grpcClient(SessionService, `127.0.0.1:${server.port}`);
    try {
      // Rejects (failing the test) unless the server answers OK.
      await expect(callUnary(client, "listSessions", {}, server.tenant.headers, 60_000)).resolves.toBeDefined();
    } finally {
      client.close();
    }
    const connect = await fetch(`${server.url}/sessions.v1.SessionService/ListSessions`, {
      method: "POST",
      headers: { ...server.tenant.headers, "content-type": "application/json", "connect-timeout-ms": "9999999999" },
      body: "{}",
    });
    expect(connect.status).toBe(200);
  });

  it("a deadline already past when the call arrives is DEADLINE_EXCEEDED, every time", async () => {
    const list = grpcFrame(new Uint8Array());
    for (const timeout of ["0n", "1n", "999u", "0m", "0S"]) {
      const answers = await Promise.all(Array.from({ length: 20 }, () => rawGrpc("/sessions.v1.SessionService/ListSessions", { ...server.tenant.headers, "grpc-timeout": timeout }, list)));
      expect(answers.map((a) => a.status), timeout).toEqual(Array(20).fill("4"));
    }
    const connect = await Promise.all(
      Array.from({ length: 20 }, () =>
        fetch(`${server.url}/sessions.v1.SessionService/ListSessions`, {
          method: "POST",
          headers: { ...server.tenant.headers, "content-type": "application/json", "connect-timeout-ms": "0" },
          body: "{}",
        }).then(async (r) => [r.status, ((await r.json()) as Json).code]),
      ),
    );
    expect(connect).toEqual(Array(20).fill([504, "deadline_exceeded"]));
  });

  it("reports errors with grpc-status-details-bin, and serves many calls on one connection", async () => {
    const client = grpcClient(SessionService, `127.0.0.1:${server.port}`);
    try {
      const results = await Promise.all(Array.from({ length: 50 }, (_, i) => callUnary<CreateSessionResponse>(client, "createSession", { userId: `usr_many_${i % 5}` }, server.tenant.headers)));
      expect(new Set(results.map((r) => r.session?.id)).size).toBe(50);
      const err = (await callUnary(client, "getSession", { id: "nope" }, server.tenant.headers).catch((e: unknown) => e)) as grpc.ServiceError;
      expect(err.code).toBe(grpc.status.NOT_FOUND);
      const status = fromBinary(StatusSchema, err.metadata.get("grpc-status-details-bin")[0] as Buffer);
      expect(anyUnpack(status.details[0]!, ErrorInfoSchema)?.reason).toBe("session_not_found");
    } finally {
      client.close();
    }
  });
});

/** One gRPC call over raw HTTP/2: the server's response headers, trailers and body. */
function rawGrpc(path: string, headers: Record<string, string>, body: Buffer): Promise<{ status: string | undefined; headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(server.url);
    session.on("error", reject);
    const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", ...headers });
    let responseHeaders: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    stream.on("response", (h) => (responseHeaders = h));
    stream.on("trailers", (t) => (trailers = t));
    stream.on("data", () => undefined);
    stream.on("close", () => {
      session.close();
      const status = (trailers["grpc-status"] ?? responseHeaders["grpc-status"]) as string | undefined;
      resolve({ status, headers: responseHeaders, trailers });
    });
    stream.end(body);
  });
}

function grpcFrame(message: Uint8Array, flags = 0): Buffer {
  const frame = Buffer.alloc(5 + message.length);
  frame[0] = flags;
  frame.writeUInt32BE(message.length, 1);
  Buffer.from(message).copy(frame, 5);
  return frame;
}

describe("exact answers to what clients should not send", () => {
  const authed = () => server.tenant.headers;
  const verifyPath = "/sessions.v1.SessionService/VerifyToken";

  it("undecodable protobuf is INVALID_ARGUMENT on gRPC and 400 invalid_argument on Connect, never INTERNAL", async () => {
    const garbage = Buffer.from([0xff, 0xff, 0xff]);
    expect((await rawGrpc(verifyPath, authed(), grpcFrame(garbage))).status).toBe("3");
    const res = await fetch(server.url + verifyPath, { method: "POST", headers: { ...authed(), "content-type": "application/proto" }, body: garbage });
    expect(res.status).toBe(400);
    expect(((await res.json()) as Json).code).toBe("invalid_argument");
  });

  it("a gRPC body with no message, two messages, a truncated frame or a bad flag is INVALID_ARGUMENT", async () => {
    const one = grpcFrame(toBinary(VerifyTokenRequestSchema, create(VerifyTokenRequestSchema, { token: "x" })));
    for (const body of [Buffer.alloc(0), Buffer.concat([one, one]), one.subarray(0, one.length - 1), Buffer.concat([Buffer.from([4]), one.subarray(1)])]) {
      expect((await rawGrpc(verifyPath, authed(), body)).status).toBe("3");
    }
  });

  it("an unsupported grpc-encoding is UNIMPLEMENTED with grpc-accept-encoding; gzip is accepted", async () => {
    const message = toBinary(VerifyTokenRequestSchema, create(VerifyTokenRequestSchema, { token: "x" }));
    const snappy = await rawGrpc(verifyPath, { ...authed(), "grpc-encoding": "snappy" }, grpcFrame(message, 1));
    expect(snappy.status).toBe("12");
    expect(String(snappy.headers["grpc-accept-encoding"])).toContain("gzip");
    const connectBrotli = await fetch(`${server.url}${verifyPath}`, {
      method: "POST",
      headers: { ...authed(), "content-type": "application/json", "content-encoding": "br" },
      body: "{}",
    });
    expect(connectBrotli.status).toBe(501);
    expect(connectBrotli.headers.get("accept-encoding")).toContain("gzip");
    expect(((await connectBrotli.json()) as Json).details[0].debug.reason).toBe("unsupported_encoding");
    const gzipped = await rawGrpc(verifyPath, { ...authed(), "grpc-encoding": "gzip" }, grpcFrame(gzipSync(message), 1));
    expect(gzipped.status).toBe("0");
  });

  it("an oversized body on the Connect protocol is HTTP 400 payload_too_large, not 429 (which reads as rate limiting)", async () => {
    const body = JSON.stringify({ userId: "u", userAgent: "c".repeat(70_000) });
    const res = await fetch(`${server.url}/sessions.v1.SessionService/CreateSession`, { method: "POST", headers: { ...authed(), "content-type": "application/json" }, body });
    expect(res.status).toBe(400);
    const json = (await res.json()) as Json;
    expect(json.code).toBe("invalid_argument");
    expect(json.details[0].debug.reason).toBe("payload_too_large");
    // A gzip bomb is measured after decompression.
    const bomb = await fetch(`${server.url}/sessions.v1.SessionService/CreateSession`, {
      method: "POST",
      headers: { ...authed(), "content-type": "application/json", "content-encoding": "gzip" },
      body: gzipSync(body),
    });
    expect(bomb.status).toBe(400);
  });

  it("Connect GET serves RPCs without side effects only; JSON with a key given twice is refused", async () => {
    const message = encodeURIComponent(JSON.stringify({ id: "ses_01HABCDEF999888ABCDEFGHJKM" }));
    const get = await fetch(`${server.url}/sessions.v1.SessionService/GetSession?connect=v1&encoding=json&message=${message}`, { headers: authed() });
    expect(get.status).toBe(404);
    expect(((await get.json()) as Json).code).toBe("not_found");
    const create = await fetch(`${server.url}/sessions.v1.SessionService/CreateSession?connect=v1&encoding=json&message=%7B%7D`, { headers: authed() });
    expect(create.status).toBe(405);
    // VerifyToken has no side effects, but a token never goes in a URL: no GET.
    const verify = await fetch(`${server.url}${verifyPath}?connect=v1&encoding=json&message=${encodeURIComponent('{"token":"eyJ.x.y"}')}`, { headers: authed() });
    expect(verify.status).toBe(405);
    const twice = await fetch(`${server.url}${verifyPath}`, { method: "POST", headers: { ...authed(), "content-type": "application/json" }, body: '{"token":"a","token":"b"}' });
    expect(twice.status).toBe(400);
    const binaryUnknown = await fetch(`${server.url}${verifyPath}`, {
      method: "POST",
      headers: { ...authed(), "content-type": "application/proto" },
      body: Buffer.from(toBinary(CreateSessionRequestSchema, create0())),
    });
    // Unknown fields in binary protobuf are skipped, as the wire format says (only JSON refuses them).
    expect(binaryUnknown.status).toBe(200);
  });

  it("a content type no protocol speaks is 415", async () => {
    const res = await fetch(server.url + verifyPath, { method: "POST", headers: { ...authed(), "content-type": "text/plain" }, body: "x" });
    expect(res.status).toBe(415);
  });
});

function create0() {
  return create(CreateSessionRequestSchema, { userId: "u", userAgent: "ua", role: "r" });
}
