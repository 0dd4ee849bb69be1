import {
  type MessageInitShape,
  type MessageShape,
  create,
  createFileRegistry,
  hasOption,
  isFieldSet,
  setExtension,
} from "@bufbuild/protobuf";
import {
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FileDescriptorProtoSchema,
  MethodOptionsSchema,
  timestampFromDate,
} from "@bufbuild/protobuf/wkt";
import Fastify, { type FastifyInstance, type LightMyRequestResponse } from "fastify";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { http } from "../gen/google/api/annotations_pb.js";
import { HttpRuleSchema } from "../gen/google/api/http_pb.js";
import {
  DeviceType,
  ListSessionsRequestSchema,
  SessionService,
  SessionStatus,
} from "../gen/sessions/v1/sessions_pb.js";
import { AppError } from "../src/domain/errors.js";
import type { CallInfo, PipelineMethod } from "../src/transport/pipeline.js";
import { registerRest, registerRestErrors, restRoutesOf } from "../src/transport/rest.js";

describe("restRoutesOf", () => {
  const routes = restRoutesOf(SessionService);

  it("every annotated RPC has exactly one REST route", () => {
    const annotated = SessionService.methods.filter((m) => hasOption(m, http));
    expect(annotated.length).toBeGreaterThan(0);
    for (const method of annotated) expect(routes.filter((r) => r.method === method)).toHaveLength(1);
    expect(routes).toHaveLength(annotated.length);
    const keys = routes.map((r) => `${r.httpMethod} ${r.url}`);
    expect(new Set(keys).size).toBe(keys.length);
  });

  it("has the seed routes", () => {
    const table = routes.map((r) => [r.httpMethod, r.template, r.url, r.method.name, r.successCode]);
    expect(table).toEqual(
      expect.arrayContaining([
        ["GET", "/v1/sessions", "/v1/sessions", "ListSessions", 200],
        ["GET", "/v1/sessions/{id}", "/v1/sessions/:id", "GetSession", 200],
        ["DELETE", "/v1/sessions/{id}", "/v1/sessions/:id", "RevokeSession", 204],
        ["DELETE", "/v1/sessions", "/v1/sessions", "RevokeSessions", 200],
        ["POST", "/v1/sessions/verify", "/v1/sessions/verify", "VerifyToken", 200],
        ["POST", "/v1/sessions", "/v1/sessions", "CreateSession", 201],
        ["POST", "/v1/auth/token/refresh", "/v1/auth/token/refresh", "RefreshSession", 200],
      ]),
    );
    expect(routes.find((r) => r.method.name === "GetSession")?.responseBody).toBe("session");
    expect(routes.find((r) => r.method.name === "CreateSession")?.body).toBe("*");
  });

  /** A one-RPC service whose only method carries the given google.api.http rule. */
  function serviceWith(rule: MessageInitShape<typeof HttpRuleSchema>, { serverStreaming = false } = {}) {
    const options = create(MethodOptionsSchema);
    setExtension(options, http, create(HttpRuleSchema, rule));
    const field = (name: string, number: number, label = FieldDescriptorProto_Label.OPTIONAL) => ({
      name,
      number,
      label,
      type: FieldDescriptorProto_Type.STRING,
      jsonName: name,
    });
    const file = create(FileDescriptorProtoSchema, {
      name: "t.proto",
      package: "t",
      syntax: "proto3",
      messageType: [
        { name: "Req", field: [field("id", 1), field("tags", 2, FieldDescriptorProto_Label.REPEATED)] },
        { name: "Res" },
      ],
      service: [{ name: "S", method: [{ name: "M", inputType: ".t.Req", outputType: ".t.Res", options, serverStreaming }] }],
    });
    const service = createFileRegistry(file, () => undefined).getService("t.S");
    if (!service) throw new Error("test service not built");
    return service;
  }

  it("accepts a simple template", () => {
    expect(restRoutesOf(serviceWith({ pattern: { case: "patch", value: "/v1/things/{id}" }, body: "*" }))[0]?.url).toBe(
      "/v1/things/:id",
    );
  });

  it("maps a server-streaming RPC to a GET (its Server-Sent Events), and nothing else", () => {
    const feed = restRoutesOf(serviceWith({ pattern: { case: "get", value: "/v1/things/feed" } }, { serverStreaming: true }))[0];
    expect(feed?.url).toBe("/v1/things/feed");
    for (const rule of [
      { pattern: { case: "post", value: "/v1/things/feed" }, body: "*" },
      { pattern: { case: "get", value: "/v1/things/{id}/feed" } },
    ] satisfies MessageInitShape<typeof HttpRuleSchema>[]) {
      expect(() => restRoutesOf(serviceWith(rule, { serverStreaming: true }))).toThrow(/^t\.S\.M: a server-streaming RPC/);
    }
  });

  it.each<[string, MessageInitShape<typeof HttpRuleSchema>]>([
    ["a custom verb", { pattern: { case: "custom", value: { kind: "HEAD", path: "/v1/things" } } }],
    ["a path pattern", { pattern: { case: "get", value: "/v1/{id=things/*}" } }],
    ["a nested field path", { pattern: { case: "get", value: "/v1/things/{id.x}" } }],
    ["a :verb suffix", { pattern: { case: "post", value: "/v1/things:search" } }],
    ["a relative path", { pattern: { case: "get", value: "v1/things" } }],
    ["an unknown path field", { pattern: { case: "get", value: "/v1/things/{nope}" } }],
    ["a repeated path field", { pattern: { case: "get", value: "/v1/things/{tags}" } }],
    ["a GET body", { pattern: { case: "get", value: "/v1/things" }, body: "*" }],
    ["an unknown body field", { pattern: { case: "post", value: "/v1/things" }, body: "nope" }],
    ["an unknown response_body", { pattern: { case: "post", value: "/v1/things" }, responseBody: "nope" }],
    ["additional_bindings", { pattern: { case: "get", value: "/v1/a" }, additionalBindings: [{ pattern: { case: "get", value: "/v1/b" } }] }],
  ])("rejects %s at startup", (_name, rule) => {
    expect(() => restRoutesOf(serviceWith(rule))).toThrow(/^t\.S\.M: /);
  });
});

describe("registerRest", () => {
  const calls: { method: string; req: Record<string, unknown>; ctx: CallInfo }[] = [];
  const logs: string[] = [];
  let app: FastifyInstance;

  const session = (id: string) => ({
    id,
    userId: "usr_1",
    tenantId: "tnt_1",
    status: SessionStatus.ACTIVE,
    deviceType: DeviceType.DESKTOP,
    createdAt: timestampFromDate(new Date("2024-01-15T10:30:00Z")),
  });

  function record(method: string, req: object, ctx: CallInfo) {
    calls.push({ method, req: req as Record<string, unknown>, ctx });
  }

  // Stands in for the pipeline: each RPC records what the REST adapter handed it.
  const impl: { [K in keyof typeof SessionService.method]?: (req: any, ctx: CallInfo) => Promise<object> } = {
    async listSessions(req, ctx) {
      record("listSessions", req, ctx);
      return { data: [session("ses_1")], pagination: { limit: req.limit ?? 20, hasMore: false } };
    },
    async getSession(req, ctx) {
      record("getSession", req, ctx);
      if (req.id === "missing") throw new AppError("session_not_found", "session not found", "id");
      if (req.id === "boom") throw new Error("secret SQL text: SELECT * FROM sessions");
      return { session: session(req.id) };
    },
    async revokeSession(req, ctx) {
      record("revokeSession", req, ctx);
      return {};
    },
    async revokeSessions(req, ctx) {
      record("revokeSessions", req, ctx);
      return { revoked: 3 };
    },
    async verifyToken(req, ctx) {
      record("verifyToken", req, ctx);
      return req.token === "good" ? { valid: true, sessionId: "ses_1" } : { valid: false, error: { code: "invalid_token" } };
    },
    async createSession(req, ctx) {
      record("createSession", req, ctx);
      ctx.responseHeaders.set("location", "/v1/sessions/ses_new");
      return { session: session("ses_new"), accessToken: "at", refreshToken: "rt_1" };
    },
    async refreshSession(req, ctx) {
      record("refreshSession", req, ctx);
      return { sessionId: "ses_1", tokenType: "Bearer", expiresIn: 900 };
    },
  };

  beforeAll(async () => {
    app = Fastify({
      bodyLimit: 256,
      genReqId: () => "req_test",
      logger: { level: "error", stream: { write: (line: string) => void logs.push(line) } },
    });
    registerRestErrors(app);
    const methods = new Map<string, PipelineMethod>();
    for (const method of SessionService.methods) {
      const handler = impl[method.localName as keyof typeof impl];
      if (handler) methods.set(`/${SessionService.typeName}/${method.name}`, { method, run: async (req, info) => create(method.output, (await handler(req, info)) as never) });
    }
    registerRest(app, { service: SessionService, methods });
    await app.ready();
  });
  afterAll(() => app.close());
  beforeEach(() => {
    calls.length = 0;
    logs.length = 0;
  });

  const lastCall = (method: string) => {
    const call = calls.at(-1);
    expect(call?.method).toBe(method);
    return call as (typeof calls)[number];
  };

  function expectError(res: LightMyRequestResponse, status: number, code: string, field?: string) {
    expect(res.statusCode).toBe(status);
    expect(res.headers["content-type"]).toMatch(/^application\/json/);
    expect(res.json()).toEqual({ error: { code, message: expect.any(String), status, request_id: "req_test", ...(field ? { field } : {}) } });
  }

  it("binds path parameters and unwraps response_body", async () => {
    const res = await app.inject({ method: "GET", url: "/v1/sessions/ses_1", headers: { "x-tenant-id": "tnt_1" } });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ id: "ses_1", status: "active", device_type: "desktop", created_at: "2024-01-15T10:30:00Z", org_id: null });
    expect(res.json()).not.toHaveProperty("session");
    const { req, ctx } = lastCall("getSession");
    expect(req.id).toBe("ses_1");
    expect(ctx.protocol).toBe("rest");
    expect(ctx.header("x-tenant-id")).toBe("tnt_1");
    expect(ctx.timeoutMs).toBeUndefined();
  });

  it("routes GET /v1/sessions/verify to GetSession", async () => {
    const res = await app.inject({ method: "GET", url: "/v1/sessions/verify" });
    expect(res.statusCode).toBe(200);
    expect(lastCall("getSession").req.id).toBe("verify");
  });

  it("binds query parameters", async () => {
    const res = await app.inject({ method: "GET", url: "/v1/sessions?user_id=usr_1&status=revoked&limit=5" });
    expect(res.statusCode).toBe(200);
    expect(lastCall("listSessions").req).toMatchObject({ userId: "usr_1", status: SessionStatus.REVOKED, limit: 5 });
    expect(res.json()).toMatchObject({ data: [{ id: "ses_1" }], pagination: { limit: 5, has_more: false, next_cursor: null } });
  });

  it("passes limit=0 on as explicitly set", async () => {
    await app.inject({ method: "GET", url: "/v1/sessions?limit=0" });
    const req = lastCall("listSessions").req as unknown as MessageShape<typeof ListSessionsRequestSchema>;
    expect(isFieldSet(req, ListSessionsRequestSchema.field.limit)).toBe(true);
  });

  it.each([
    ["limit=abc", "/v1/sessions?limit=abc", "limit"],
    ["an unknown query parameter", "/v1/sessions?bogus=1", "bogus"],
    ["a bad enum", "/v1/sessions?status=sideways", "status"],
  ])("rejects %s with 400 naming the parameter", async (_name, url, field) => {
    expectError(await app.inject({ method: "GET", url }), 400, "invalid_request", field);
    expect(calls).toHaveLength(0);
  });

  it("binds a JSON body, answers 201 and copies response headers", async () => {
    const res = await app.inject({
      method: "POST",
      url: "/v1/sessions",
      payload: { user_id: "usr_1", device_type: "mobile", mfa_verified: true, org_id: null },
    });
    expect(res.statusCode).toBe(201);
    expect(res.headers.location).toBe("/v1/sessions/ses_new");
    expect(res.json()).toMatchObject({ session: { id: "ses_new" }, access_token: "at", refresh_token: "rt_1", access_token_expires_at: null });
    expect(lastCall("createSession").req).toMatchObject({ userId: "usr_1", deviceType: DeviceType.MOBILE, mfaVerified: true });
  });

  it("answers VerifyToken with every field present", async () => {
    const res = await app.inject({ method: "POST", url: "/v1/sessions/verify", payload: { token: "good" } });
    expect(res.json()).toEqual({
      valid: true,
      session_id: "ses_1",
      user_id: null,
      tenant_id: null,
      role: null,
      org_id: null,
      mfa_verified: null,
      expires_at: null,
      error: null,
    });
  });

  it.each(["application/json; charset=utf-8", 'application/json;charset="UTF-8"', "application/json; charset=utf8", "application/json; foo=bar"])(
    "reads a body sent as %s",
    async (contentType) => {
      const res = await app.inject({ method: "POST", url: "/v1/sessions", payload: '{"user_id":"u"}', headers: { "content-type": contentType } });
      expect(res.statusCode).toBe(201);
      expect(lastCall("createSession").req.userId).toBe("u");
    },
  );

  it("treats an empty JSON body as {}", async () => {
    const res = await app.inject({ method: "POST", url: "/v1/auth/token/refresh", headers: { "content-type": "application/json" } });
    expect(res.statusCode).toBe(200);
    expect(lastCall("refreshSession").req.refreshToken).toBe("");
    expect(res.json()).toMatchObject({ session_id: "ses_1", token_type: "Bearer", expires_in: 900 });
  });

  it.each<[string, { payload: string | object; headers?: Record<string, string>; url?: string }, number, string, string?]>([
    ["an unknown body field", { payload: { user_id: "u", nope: 1 } }, 400, "invalid_request", "nope"],
    ["a wrongly typed body field", { payload: { mfa_verified: "yes" } }, 400, "invalid_request", "mfa_verified"],
    ["a non-object body", { payload: "[1]", headers: { "content-type": "application/json" } }, 400, "invalid_request"],
    ["malformed JSON", { payload: '{"user_id":', headers: { "content-type": "application/json" } }, 400, "invalid_request"],
    ["an oversized body", { payload: { user_id: "u".repeat(300) } }, 413, "payload_too_large"],
    ["a non-JSON content type", { payload: "user_id=u", headers: { "content-type": "text/plain" } }, 415, "unsupported_media_type"],
    ["JSON in another charset", { payload: '{"user_id":"u"}', headers: { "content-type": "application/json; charset=iso-8859-1" } }, 415, "unsupported_media_type"],
    ["JSON in another charset, quoted", { payload: '{"user_id":"u"}', headers: { "content-type": 'application/json; charset="utf-16"' } }, 415, "unsupported_media_type"],
    ["a query parameter on a body-* route", { payload: {}, url: "/v1/sessions?user_id=u" }, 400, "invalid_request", "user_id"],
  ])("rejects %s", async (_name, { url = "/v1/sessions", ...rest }, status, code, field) => {
    expectError(await app.inject({ method: "POST", url, ...rest }), status, code, field);
    expect(calls).toHaveLength(0);
  });

  it("answers unknown paths with a 404 envelope, and known paths with another method with 405 and Allow", async () => {
    expectError(await app.inject({ method: "GET", url: "/v1/nope" }), 404, "not_found");
    const wrongMethod = await app.inject({ method: "PUT", url: "/v1/sessions" });
    expectError(wrongMethod, 405, "method_not_allowed");
    expect(wrongMethod.headers.allow).toBe("DELETE, GET, HEAD, POST");
    const onTemplate = await app.inject({ method: "POST", url: "/v1/sessions/ses_1" });
    expectError(onTemplate, 405, "method_not_allowed");
    expect(onTemplate.headers.allow).toBe("DELETE, GET, HEAD");
  });

  it("answers 204 with no body", async () => {
    const res = await app.inject({ method: "DELETE", url: "/v1/sessions/ses_1" });
    expect(res.statusCode).toBe(204);
    expect(res.body).toBe("");
    expect(lastCall("revokeSession").req.id).toBe("ses_1");
  });

  it.each(["text/plain", "application/x-www-form-urlencoded", "application/octet-stream"])(
    "runs a DELETE without a body whatever Content-Type it names (%s); a POST body of that type is 415",
    async (contentType) => {
      for (const headers of [{ "content-type": contentType }, { "content-type": contentType, "content-length": "0" }]) {
        const res = await app.inject({ method: "DELETE", url: "/v1/sessions/ses_1", headers });
        expect(res.statusCode).toBe(204);
        expect(lastCall("revokeSession").req.id).toBe("ses_1");
      }
      calls.length = 0;
      expectError(await app.inject({ method: "POST", url: "/v1/sessions", headers: { "content-type": contentType }, payload: "user_id=u" }), 415, "unsupported_media_type");
      expectError(await app.inject({ method: "DELETE", url: "/v1/sessions/ses_1", headers: { "content-type": contentType }, payload: "x" }), 400, "invalid_request");
      expect(calls).toHaveLength(0);
    },
  );

  it("binds DELETE query parameters", async () => {
    const res = await app.inject({ method: "DELETE", url: "/v1/sessions?user_id=usr_1&except_session_id=ses_1" });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ revoked: 3 });
    expect(lastCall("revokeSessions").req).toMatchObject({ userId: "usr_1", exceptSessionId: "ses_1" });
  });

  it("maps an AppError to its status", async () => {
    const res = await app.inject({ method: "GET", url: "/v1/sessions/missing" });
    expectError(res, 404, "session_not_found", "id");
    expect(logs).toHaveLength(0);
  });

  it("hides internal errors behind a generic 500 and logs them", async () => {
    const res = await app.inject({ method: "GET", url: "/v1/sessions/boom" });
    expectError(res, 500, "internal");
    expect(res.json().error.message).toBe("internal error");
    expect(res.body).not.toContain("secret");
    expect(res.body).not.toContain("SELECT");
    expect(logs.join("")).toContain("secret SQL text");
  });
});
