import { fromBinary, type DescMessage } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BadRequestSchema, ErrorInfoSchema, type BadRequest_FieldViolation } from "../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";
import { SessionService } from "../gen/sessions/v1/sessions_pb.js";
import { callUnary, grpcClient } from "./helpers/grpc-client.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * Every rule the proto declares on request fields, over REST (the error envelope naming the field)
 * and over RPC: gRPC with @grpc/grpc-js and the Connect protocol with connect-es, each decoding the
 * google.rpc.BadRequest detail (field and rule) beside the ErrorInfo. One valid request per case,
 * one field made wrong. Pure rule checks without a server: test/unit/request-rules.test.ts.
 */

let server: TestServer;
let grpcJs: grpc.Client & Record<string, Function>;
let connect: Client<typeof SessionService>;

beforeAll(async () => {
  server = await startTestServer();
  grpcJs = grpcClient(SessionService, `127.0.0.1:${server.port}`);
  connect = createClient(SessionService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
});
afterAll(async () => {
  grpcJs?.close();
  await server?.close();
});

type Json = Record<string, any>;

async function rest(method: string, path: string, body?: unknown, headers: Record<string, string> = server.tenant.headers) {
  const res = await fetch(server.url + path, {
    method,
    headers: { ...headers, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: (text ? JSON.parse(text) : undefined) as Json | undefined };
}

/** The ErrorInfo and BadRequest of a gRPC error, decoded from grpc-status-details-bin as any gRPC client does. */
function detailsOfGrpc(err: grpc.ServiceError) {
  const status = fromBinary(StatusSchema, err.metadata.get("grpc-status-details-bin")[0] as Buffer);
  const unpack = <Desc extends DescMessage>(schema: Desc) => status.details.map((d) => anyUnpack(d, schema)).find((m) => m !== undefined);
  return { info: unpack(ErrorInfoSchema), badRequest: unpack(BadRequestSchema) };
}

const valid = {
  create: { user_id: "usr_valid", user_agent: "Mozilla/5.0 (X11; Linux x86_64)", ip_address: "203.0.113.42", country: "us", role: "admin", org_id: "org_1" },
  createRpc: { userId: "usr_valid", userAgent: "Mozilla/5.0 (X11; Linux x86_64)", ipAddress: "203.0.113.42", country: "us", role: "admin", orgId: "org_1" },
};
const ses = "ses_01HABCDEF0123456789ABCDEFG";
const long = "é".repeat(256);

interface Case {
  name: string;
  /** The same request over REST: method, path, body; null where REST cannot say it (given with why). */
  rest: [string, string, unknown?] | null;
  rpc: [string, object];
  field: string;
  /** The rule, as BadRequest's reason (the protovalidate rule id in upper snake case). */
  reason: string;
}

const cases: Case[] = [
  { name: "create: user_id missing", rest: ["POST", "/v1/sessions", { ...valid.create, user_id: undefined }], rpc: ["createSession", { ...valid.createRpc, userId: undefined }], field: "user_id", reason: "REQUIRED" },
  { name: "create: user_id too long", rest: ["POST", "/v1/sessions", { ...valid.create, user_id: long }], rpc: ["createSession", { ...valid.createRpc, userId: long }], field: "user_id", reason: "STRING_MAX_LEN" },
  { name: "create: user_id with a NUL", rest: ["POST", "/v1/sessions", { ...valid.create, user_id: "a\u0000b" }], rpc: ["createSession", { ...valid.createRpc, userId: "a\u0000b" }], field: "user_id", reason: "TEXT_NO_CONTROL_CHARACTERS" },
  { name: "create: user_id with a right-to-left override", rest: ["POST", "/v1/sessions", { ...valid.create, user_id: "a\u202eb" }], rpc: ["createSession", { ...valid.createRpc, userId: "a\u202eb" }], field: "user_id", reason: "TEXT_NO_BIDI_FORMATTING" },
  { name: "create: user_id with a zero-width space", rest: ["POST", "/v1/sessions", { ...valid.create, user_id: "alice\u200b" }], rpc: ["createSession", { ...valid.createRpc, userId: "alice\u200b" }], field: "user_id", reason: "IDENTIFIER_NO_INVISIBLE_FORMATTING" },
  { name: "create: user_id with a trailing space", rest: ["POST", "/v1/sessions", { ...valid.create, user_id: "alice " }], rpc: ["createSession", { ...valid.createRpc, userId: "alice " }], field: "user_id", reason: "IDENTIFIER_NO_EDGE_WHITESPACE" },
  { name: "create: user_agent with a line break", rest: ["POST", "/v1/sessions", { ...valid.create, user_agent: "Mozilla\r\nX-Injected: 1" }], rpc: ["createSession", { ...valid.createRpc, userAgent: "Mozilla\r\nX-Injected: 1" }], field: "user_agent", reason: "TEXT_NO_CONTROL_CHARACTERS" },
  { name: "create: user_agent with an isolate", rest: ["POST", "/v1/sessions", { ...valid.create, user_agent: "a\u2067b" }], rpc: ["createSession", { ...valid.createRpc, userAgent: "a\u2067b" }], field: "user_agent", reason: "TEXT_NO_BIDI_FORMATTING" },
  { name: "create: ip_address not an address", rest: ["POST", "/v1/sessions", { ...valid.create, ip_address: "999.1.1.1" }], rpc: ["createSession", { ...valid.createRpc, ipAddress: "999.1.1.1" }], field: "ip_address", reason: "STRING_IP" },
  // An IPv6 zone names the sender's interface, not an address; a long one was a 500 (the column holds 45).
  { name: "create: ip_address with an IPv6 zone", rest: ["POST", "/v1/sessions", { ...valid.create, ip_address: "fe80::1%eth0" }], rpc: ["createSession", { ...valid.createRpc, ipAddress: "fe80::1%eth0" }], field: "ip_address", reason: "STRING_NOT_CONTAINS" },
  { name: "create: ip_address with a long IPv6 zone", rest: ["POST", "/v1/sessions", { ...valid.create, ip_address: "fe80::1%zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz" }], rpc: ["createSession", { ...valid.createRpc, ipAddress: "fe80::1%zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz" }], field: "ip_address", reason: "STRING_MAX_LEN" },
  { name: "create: country not two letters", rest: ["POST", "/v1/sessions", { ...valid.create, country: "USA" }], rpc: ["createSession", { ...valid.createRpc, country: "USA" }], field: "country", reason: "STRING_PATTERN" },
  // REST reads enum values by name, so an unknown one stops at the reader (400, same field), before the rule.
  { name: "create: device_type unknown", rest: ["POST", "/v1/sessions", { ...valid.create, device_type: "phone" }], rpc: ["createSession", { ...valid.createRpc, deviceType: 99 }], field: "device_type", reason: "ENUM_DEFINED_ONLY" },
  { name: "create: role too long", rest: ["POST", "/v1/sessions", { ...valid.create, role: "r".repeat(65) }], rpc: ["createSession", { ...valid.createRpc, role: "r".repeat(65) }], field: "role", reason: "STRING_MAX_LEN" },
  { name: "create: role with a line feed", rest: ["POST", "/v1/sessions", { ...valid.create, role: "member\nadmin" }], rpc: ["createSession", { ...valid.createRpc, role: "member\nadmin" }], field: "role", reason: "TEXT_NO_CONTROL_CHARACTERS" },
  { name: "create: org_id too long", rest: ["POST", "/v1/sessions", { ...valid.create, org_id: long }], rpc: ["createSession", { ...valid.createRpc, orgId: long }], field: "org_id", reason: "STRING_MAX_LEN" },
  { name: "create: org_id with a leading space", rest: ["POST", "/v1/sessions", { ...valid.create, org_id: " org" }], rpc: ["createSession", { ...valid.createRpc, orgId: " org" }], field: "org_id", reason: "IDENTIFIER_NO_EDGE_WHITESPACE" },
  { name: "list: user_id empty", rest: ["GET", "/v1/sessions?user_id="], rpc: ["listSessions", { userId: "" }], field: "user_id", reason: "STRING_MIN_LEN" },
  { name: "list: user_id too long", rest: ["GET", `/v1/sessions?user_id=${encodeURIComponent(long)}`], rpc: ["listSessions", { userId: long }], field: "user_id", reason: "STRING_MAX_LEN" },
  { name: "list: user_id with a word joiner", rest: ["GET", "/v1/sessions?user_id=al%E2%81%A0ice"], rpc: ["listSessions", { userId: "al\u2060ice" }], field: "user_id", reason: "IDENTIFIER_NO_INVISIBLE_FORMATTING" },
  { name: "list: status unspecified", rest: ["GET", "/v1/sessions?status=unspecified"], rpc: ["listSessions", { status: 0 }], field: "status", reason: "ENUM_NOT_IN" },
  { name: "list: status unknown", rest: ["GET", "/v1/sessions?status=sleeping"], rpc: ["listSessions", { status: 9 }], field: "status", reason: "ENUM_DEFINED_ONLY" },
  { name: "list: limit 0", rest: ["GET", "/v1/sessions?limit=0"], rpc: ["listSessions", { limit: 0 }], field: "limit", reason: "INT32_GTE_LTE" },
  { name: "list: limit 101", rest: ["GET", "/v1/sessions?limit=101"], rpc: ["listSessions", { limit: 101 }], field: "limit", reason: "INT32_GTE_LTE" },
  { name: "list: cursor empty", rest: ["GET", "/v1/sessions?cursor="], rpc: ["listSessions", { cursor: "" }], field: "cursor", reason: "STRING_MIN_LEN" },
  // The id is a path segment over REST: never empty there.
  { name: "get: id missing", rest: null, rpc: ["getSession", { id: "" }], field: "id", reason: "REQUIRED" },
  { name: "revoke: id missing", rest: null, rpc: ["revokeSession", { id: "" }], field: "id", reason: "REQUIRED" },
  // Over REST, leaving user_id out is the seed's revoke-all (all_users implied): never neither.
  { name: "revoke-all: neither user_id nor all_users", rest: null, rpc: ["revokeSessions", { exceptSessionId: ses }], field: "user_id", reason: "MESSAGE_ONEOF" },
  { name: "revoke-all: both user_id and all_users", rest: ["DELETE", "/v1/sessions?user_id=usr_x&all_users=true"], rpc: ["revokeSessions", { userId: "usr_x", allUsers: true }], field: "all_users", reason: "MESSAGE_ONEOF" },
  { name: "revoke-all: user_id empty", rest: ["DELETE", "/v1/sessions?user_id="], rpc: ["revokeSessions", { userId: "" }], field: "user_id", reason: "STRING_MIN_LEN" },
  { name: "revoke-all: user_id too long", rest: ["DELETE", `/v1/sessions?user_id=${encodeURIComponent(long)}`], rpc: ["revokeSessions", { userId: long }], field: "user_id", reason: "STRING_MAX_LEN" },
  { name: "revoke-all: user_id with an ESC", rest: ["DELETE", "/v1/sessions?user_id=a%1Bb"], rpc: ["revokeSessions", { userId: "a\u001bb" }], field: "user_id", reason: "TEXT_NO_CONTROL_CHARACTERS" },
  { name: "revoke-all: except_session_id not a session id", rest: ["DELETE", "/v1/sessions?except_session_id=ses_nope"], rpc: ["revokeSessions", { allUsers: true, exceptSessionId: "ses_nope" }], field: "except_session_id", reason: "STRING_PATTERN" },
  { name: "verify: token missing", rest: ["POST", "/v1/sessions/verify", {}], rpc: ["verifyToken", {}], field: "token", reason: "REQUIRED" },
  { name: "refresh: refresh_token missing", rest: ["POST", "/v1/auth/token/refresh", { refresh_token: "" }], rpc: ["refreshSession", {}], field: "refresh_token", reason: "REQUIRED" },
];

describe.each(cases)("$name", ({ rest: restCall, rpc: [method, request], field, reason }) => {
  it.skipIf(restCall === null)("REST: 400 invalid_request naming the field", async () => {
    const [httpMethod, path, body] = restCall as [string, string, unknown?];
    const res = await rest(httpMethod, path, body);
    expect(res.status).toBe(400);
    expect(res.json?.error).toMatchObject({ code: "invalid_request", status: 400, field, message: expect.any(String) });
  });

  it("gRPC (@grpc/grpc-js): INVALID_ARGUMENT with ErrorInfo and a BadRequest naming the field and rule", async () => {
    const err = (await callUnary(grpcJs, method, request, server.tenant.headers).catch((e: unknown) => e)) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    const { info, badRequest } = detailsOfGrpc(err);
    expect(info).toMatchObject({ reason: "invalid_request", domain: "sessions.v1", metadata: { field } });
    expect(badRequest?.fieldViolations[0]).toMatchObject({ field, reason });
  });

  it("Connect (connect-es): the same BadRequest", async () => {
    const call = (connect as unknown as Record<string, (req: object, opts: object) => Promise<unknown>>)[method]!;
    const err = ConnectError.from(await call(request, { headers: server.tenant.headers }).catch((e: unknown) => e));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.findDetails(BadRequestSchema)[0]?.fieldViolations[0]).toMatchObject({ field, reason });
  });
});

describe("the event feed's request", () => {
  async function watchError(request: object): Promise<ConnectError> {
    try {
      for await (const _ of connect.watchSessionEvents(request, { headers: server.tenant.headers })) break;
    } catch (err) {
      return ConnectError.from(err);
    }
    throw new Error("the stream opened");
  }

  it("both after and since: 400 over SSE naming since, INVALID_ARGUMENT with a BadRequest over the RPC", async () => {
    const res = await rest("GET", "/v1/sessions/events?after=evt_1.abc&since=2026-01-01T00:00:00Z");
    expect(res.status).toBe(400);
    expect(res.json?.error).toMatchObject({ code: "invalid_request", field: "since" });
    const err = await watchError({ after: "evt_1.abc", since: { seconds: 1n } });
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.findDetails(BadRequestSchema)[0]?.fieldViolations[0]).toMatchObject({ field: "since", reason: "MESSAGE_ONEOF" });
    expect(err.rawMessage).toBe("since cannot be given with after");
  });

  it("a oneof rule reads as a sentence: neither target of a revoke-all, or both", async () => {
    const neither = await rest("DELETE", "/v1/sessions?all_users=false");
    expect(neither.json?.error).toMatchObject({ field: "user_id", message: "user_id or all_users is required (exactly one of them)" });
    const both = await rest("DELETE", "/v1/sessions?all_users=true&user_id=u");
    expect(both.json?.error).toMatchObject({ field: "all_users", message: "all_users cannot be given with user_id" });
  });

  it("since outside the Timestamp range: 400 over SSE, INVALID_ARGUMENT with a BadRequest over the RPC", async () => {
    const res = await rest("GET", "/v1/sessions/events?since=0000-12-31T00:00:00Z");
    expect(res.status).toBe(400);
    expect(res.json?.error).toMatchObject({ code: "invalid_request", field: "since" });
    const err = await watchError({ since: { seconds: 253_402_300_800n } });
    expect(err.findDetails(BadRequestSchema)[0]?.fieldViolations[0]).toMatchObject({ field: "since", reason: "TIMESTAMP_GTE_LTE" });
  });
});

describe("how violations are answered", () => {
  it("lists every violation in BadRequest; REST names the first", async () => {
    const bad = { userId: "", ipAddress: "x", country: "USA" };
    const err = (await callUnary(grpcJs, "createSession", bad, server.tenant.headers).catch((e: unknown) => e)) as grpc.ServiceError;
    const violations = detailsOfGrpc(err).badRequest?.fieldViolations as BadRequest_FieldViolation[];
    expect(violations.map((v) => [v.field, v.reason])).toEqual([
      ["user_id", "REQUIRED"],
      ["ip_address", "STRING_IP"],
      ["country", "STRING_PATTERN"],
    ]);
    for (const v of violations) expect(v.description.startsWith(`${v.field} `)).toBe(true);
    const res = await rest("POST", "/v1/sessions", { ip_address: "x", country: "USA" });
    expect(res.json?.error).toMatchObject({ code: "invalid_request", field: "user_id", message: "user_id is required" });
  });

  it("checks credentials first: an invalid request without a key is 401, on REST and RPC", async () => {
    const noKey = { "x-tenant-id": server.tenant.id };
    expect((await rest("POST", "/v1/sessions", {}, noKey)).json?.error.code).toBe("missing_token");
    const err = (await callUnary(grpcJs, "createSession", {}, noKey).catch((e: unknown) => e)) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
  });

  it("names the field of a JSON string that is not Unicode (a lone surrogate), which no rule could see", async () => {
    const res = await fetch(`${server.url}/v1/sessions`, {
      method: "POST",
      headers: { ...server.tenant.headers, "content-type": "application/json" },
      body: '{"user_id": "usr_x", "role": "a\\udc00"}',
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as Json).error).toMatchObject({ code: "invalid_request", field: "role" });
  });

  it("still creates from a valid request, storing what the service normalizes", async () => {
    const res = await rest("POST", "/v1/sessions", valid.create);
    expect(res.status).toBe(201);
    expect(res.json?.session).toMatchObject({ user_id: "usr_valid", country: "US", role: "admin", org_id: "org_1" });
    const created = await connect.createSession(valid.createRpc, { headers: server.tenant.headers });
    expect(created.session).toMatchObject({ userId: "usr_valid", country: "US" });
  });
});
