import { readFileSync } from "node:fs";
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { servedRoutesOf } from "../src/transport/rest.js";
import { openEventStream } from "./helpers/events.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * The OpenAPI document (generated from the proto by tools/protoc-gen-openapi.ts) and the server
 * agree: the document's routes are the server's /v1 routes, and real answers of the running server,
 * successes and errors of every operation, validate against the document's schemas. Requests are
 * built from the document (its paths and parameter names), and what the tests send is checked
 * against it too: accepted requests must be valid by the document, refused ones invalid by it
 * where the document can say why.
 */

type Schema = Record<string, unknown>;
interface Parameter {
  name: string;
  in: "path" | "query" | "header";
  required?: boolean;
  schema: Schema;
}
interface Response {
  description: string;
  headers?: Record<string, { $ref?: string; schema?: Schema }>;
  content?: Record<string, { schema: Schema; "x-event-data"?: Schema }>;
}
interface Operation {
  operationId: string;
  parameters?: Parameter[];
  requestBody?: { required: boolean; content: { "application/json": { schema: Schema } } };
  responses: Record<string, Response>;
  security: Record<string, string[]>[];
}
interface Document {
  openapi: string;
  paths: Record<string, Record<string, Operation>>;
  components: { schemas: Record<string, Schema>; headers: Record<string, { schema?: Schema }>; securitySchemes: Record<string, Schema> };
}

const generated = JSON.parse(readFileSync(new URL("../gen/openapi/sessions.openapi.json", import.meta.url), "utf8")) as Document;

let server: TestServer;
let doc: Document;
const operations = new Map<string, { method: string; template: string; op: Operation }>();
/** Statuses seen per operation, to prove every operation was exercised. */
const exercised = new Map<string, Set<number>>();

// ---------------------------------------------------------------------------------------------
// Schemas, compiled from the document with a maintained JSON Schema 2020-12 validator.

const addFormats = addFormatsModule as unknown as (ajv: Ajv2020) => Ajv2020;
const ajv = addFormats(new Ajv2020({ strict: true, allErrors: true, allowUnionTypes: true }));
// OpenAPI's format registry: integer widths (64-bit ones are decimal strings in JSON).
ajv.addFormat("int32", { type: "number", validate: (n: number) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31 });
ajv.addFormat("uint32", { type: "number", validate: (n: number) => Number.isInteger(n) && n >= 0 && n < 2 ** 32 });
ajv.addFormat("int64", { type: "string", validate: (s: string) => /^-?[0-9]+$/.test(s) && BigInt(s) >= -(2n ** 63n) && BigInt(s) < 2n ** 63n });
ajv.addFormat("uint64", { type: "string", validate: (s: string) => /^[0-9]+$/.test(s) && BigInt(s) < 2n ** 64n });

/**
 * Component schemas as $defs, each object closed (unevaluatedProperties: false), so that a field the
 * server sends and the document does not declare fails validation too.
 */
let defs: Record<string, unknown>;
const compiled = new Map<Schema, ValidateFunction>();

function toDefs(value: unknown, close: boolean): unknown {
  if (Array.isArray(value)) return value.map((v) => toDefs(v, close));
  if (typeof value !== "object" || value === null) return value;
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) {
    out[key] = key === "$ref" && typeof v === "string" ? v.replace("#/components/schemas/", "#/$defs/") : toDefs(v, close);
  }
  if (close && "properties" in out && !("additionalProperties" in out)) out.unevaluatedProperties = false;
  return out;
}

function validator(schema: Schema): ValidateFunction {
  let validate = compiled.get(schema);
  if (validate === undefined) {
    validate = ajv.compile({ $defs: defs, ...(toDefs(schema, false) as Schema) });
    compiled.set(schema, validate);
  }
  return validate;
}

function expectValid(schema: Schema, value: unknown, what: string): void {
  const validate = validator(schema);
  if (!validate(value)) expect.fail(`${what} does not match the document: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(value)}`);
}

function isValid(schema: Schema, value: unknown): boolean {
  return validator(schema)(value) === true;
}

// ---------------------------------------------------------------------------------------------
// Calls built from the document.

interface CallInit {
  path?: Record<string, string>;
  query?: Record<string, string>;
  body?: unknown;
  /** A body sent as it is, with `contentType`. */
  rawBody?: string;
  contentType?: string;
  headers?: Record<string, string>;
  /** Whether the document must accept the request (true), refuse it (false), or cannot judge (undefined). */
  isValidByDocument?: boolean;
  on?: TestServer;
}

interface Exchange {
  operationId: string;
  status: number;
  headers: Headers;
  json: any;
}

function operation(operationId: string) {
  const found = operations.get(operationId);
  if (!found) expect.fail(`the document has no operation ${operationId}`);
  return found;
}

/** The request as the document describes it is valid (or not) by the document's schemas. */
function requestIsValid(op: Operation, init: CallInit): boolean {
  for (const parameter of op.parameters ?? []) {
    const given = parameter.in === "path" ? init.path?.[parameter.name] : parameter.in === "query" ? init.query?.[parameter.name] : undefined;
    if (given === undefined) {
      if (parameter.required) return false;
      continue;
    }
    if (!isValid(parameter.schema, parameterValue(parameter.schema, given))) return false;
  }
  const known = new Set((op.parameters ?? []).map((p) => p.name));
  if ([...Object.keys(init.query ?? {})].some((name) => !known.has(name))) return false;
  if (op.requestBody) {
    if (init.body === undefined) return !op.requestBody.required;
    return isValid(op.requestBody.content["application/json"].schema, init.body);
  }
  return init.body === undefined;
}

/** A path or query string value as the parameter's JSON type (OpenAPI's form style). */
function parameterValue(schema: Schema, text: string): unknown {
  if (schema.type === "integer") return /^-?[0-9]+$/.test(text) ? Number(text) : text;
  if (schema.type === "boolean") return text === "true" ? true : text === "false" ? false : text;
  return text;
}

async function call(operationId: string, init: CallInit = {}): Promise<Exchange> {
  const { method, template, op } = operation(operationId);
  const target = init.on ?? server;
  if (init.isValidByDocument !== undefined) expect(requestIsValid(op, init), `${operationId} request validity by the document`).toBe(init.isValidByDocument);
  const path = template.replace(/\{(\w+)\}/g, (_, name: string) => {
    const value = init.path?.[name];
    if (value === undefined) expect.fail(`${operationId}: no value for path parameter ${name}`);
    return encodeURIComponent(value);
  });
  const query = Object.entries(init.query ?? {})
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join("&");
  const isPublic = op.security.every((requirement) => !("secretKey" in requirement));
  const credentials = isPublic ? { "x-tenant-id": target.tenant.id } : target.tenant.headers;
  const hasBody = init.body !== undefined || init.rawBody !== undefined;
  const res = await fetch(`${target.url}${path}${query ? `?${query}` : ""}`, {
    method: method.toUpperCase(),
    headers: { ...credentials, ...(hasBody ? { "content-type": init.contentType ?? "application/json" } : {}), ...init.headers },
    body: init.rawBody ?? (init.body !== undefined ? JSON.stringify(init.body) : undefined),
  });
  const text = await res.text();
  const exchange = { operationId, status: res.status, headers: res.headers, json: text ? JSON.parse(text) : undefined };
  expectConforms(op, exchange, text);
  return exchange;
}

/** The answer's status, headers and body are what the document says for it. */
function expectConforms(op: Operation, { operationId, status, headers, json }: Exchange, text: string): void {
  (exercised.get(operationId) ?? exercised.set(operationId, new Set()).get(operationId))?.add(status);
  const response = op.responses[String(status)];
  if (!response) expect.fail(`${operationId} answered ${status}, which the document does not list (${Object.keys(op.responses).join(", ")}): ${text}`);
  for (const [name, given] of Object.entries(response.headers ?? {})) {
    const header = given.$ref ? doc.components.headers[given.$ref.replace("#/components/headers/", "")] : given;
    const value = headers.get(name);
    expect(value, `${operationId} ${status}: header ${name}`).not.toBeNull();
    expect(header?.schema, `${operationId} ${status}: header ${name} has a schema`).toBeDefined();
    expectValid(header?.schema as Schema, value, `${operationId} ${status}: header ${name}`);
  }
  const content = Object.entries(response.content ?? {});
  if (content.length === 0) {
    expect(text, `${operationId} ${status}: a body the document does not describe`).toBe("");
    return;
  }
  const [[mediaType, { schema }]] = content as [[string, { schema: Schema }]];
  expect(headers.get("content-type")?.split(";")[0], `${operationId} ${status}: content type`).toBe(mediaType);
  if (mediaType === "application/json") expectValid(schema, json, `${operationId} ${status}: body`);
  if (status >= 400) expect(json.error.request_id).toBe(headers.get("x-request-id"));
}

async function createSession(userId: string, on = server) {
  const res = await call("CreateSession", { body: { user_id: userId, user_agent: "Mozilla/5.0 (X11; Linux x86_64)", ip_address: "203.0.113.7", country: "DE" }, on });
  expect(res.status).toBe(201);
  return res.json as { session: { id: string }; access_token: string; refresh_token: string };
}

beforeAll(async () => {
  server = await startTestServer();
  const res = await fetch(`${server.url}/openapi.json`);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^application\/json/);
  doc = (await res.json()) as Document;
  defs = toDefs(doc.components.schemas, true) as Record<string, unknown>;
  for (const [template, byMethod] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(byMethod)) operations.set(op.operationId, { method, template, op });
  }
});
afterAll(async () => {
  await server?.close();
});

describe("the document", () => {
  it("is served at /openapi.json, without credentials, exactly as generated", () => {
    expect(doc).toEqual(generated);
    expect(doc.openapi).toMatch(/^3\.1\./);
  });

  it("has well-formed schemas throughout (a strict JSON Schema 2020-12 compiler takes every one)", () => {
    const schemas: Schema[] = [];
    for (const { op } of operations.values()) {
      for (const parameter of op.parameters ?? []) schemas.push(parameter.schema);
      if (op.requestBody) schemas.push(op.requestBody.content["application/json"].schema);
      for (const response of Object.values(op.responses)) {
        for (const media of Object.values(response.content ?? {})) schemas.push(media.schema, ...(media["x-event-data"] ? [media["x-event-data"]] : []));
      }
    }
    expect(schemas.length).toBeGreaterThan(operations.size);
    for (const schema of schemas) expect(() => validator(schema)).not.toThrow();
  });

  it("lists exactly the REST routes the server serves", () => {
    // The server's own route table (the one that tells 405 from 404). HEAD is fastify's automatic
    // twin of every GET, not an operation of its own.
    const served = servedRoutesOf(server.app)
      .filter((r) => r.url.startsWith("/v1/") && r.method !== "HEAD")
      .map((r) => `${r.method} ${r.url.replace(/:(\w+)/g, "{$1}")}`);
    const documented = [...operations.values()].map(({ method, template }) => `${method.toUpperCase()} ${template}`);
    expect(served.length).toBeGreaterThan(0);
    expect([...new Set(served)].sort()).toEqual([...documented].sort());
  });

  // Calls below send only the credentials these name (the refresh endpoint: the tenant header alone).
  it("names, for every operation, security schemes it defines", () => {
    for (const [operationId, { op }] of operations) {
      expect(op.security.length, operationId).toBeGreaterThan(0);
      for (const requirement of op.security) for (const scheme of Object.keys(requirement)) expect(doc.components.securitySchemes).toHaveProperty(scheme);
    }
  });
});

describe("real answers validate against the document", () => {
  it("CreateSession", async () => {
    const created = await call("CreateSession", {
      body: { user_id: "usr_openapi_create", user_agent: "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)", ip_address: "2001:db8::1", country: "us", role: "admin", org_id: "org_1", mfa_verified: true },
      isValidByDocument: true,
    });
    expect(created.status).toBe(201);
    expect((await call("CreateSession", { body: {}, isValidByDocument: false })).status).toBe(400);
    expect((await call("CreateSession", { body: { user_id: "usr_x", device_type: "toaster" }, isValidByDocument: false })).status).toBe(400);
    expect((await call("CreateSession", { body: { user_id: "usr_x", nickname: "x" }, isValidByDocument: false })).status).toBe(400);
    expect((await call("CreateSession", { body: { user_id: "usr_x" }, headers: { authorization: "" } })).status).toBe(401);
    expect((await call("CreateSession", { rawBody: "user_id=usr_x", contentType: "text/plain" })).status).toBe(415);
    const tooLarge = { user_id: "usr_x", user_agent: "x".repeat(server.config.bodyLimitBytes) };
    expect((await call("CreateSession", { body: tooLarge })).status).toBe(413);
  });

  it("ListSessions", async () => {
    const user = "usr_openapi_list";
    await createSession(user);
    await createSession(user);
    const first = await call("ListSessions", { query: { user_id: user, limit: "1" }, isValidByDocument: true });
    expect(first.status).toBe(200);
    expect(first.json.pagination.has_more).toBe(true);
    const last = await call("ListSessions", { query: { user_id: user, limit: "1", cursor: first.json.pagination.next_cursor }, isValidByDocument: true });
    expect(last.json.pagination).toMatchObject({ has_more: false, next_cursor: null });
    expect((await call("ListSessions", { query: { status: "revoked" }, isValidByDocument: true })).status).toBe(200);
    expect((await call("ListSessions", { query: { limit: "0" }, isValidByDocument: false })).status).toBe(400);
    expect((await call("ListSessions", { query: { status: "sleeping" }, isValidByDocument: false })).status).toBe(400);
    expect((await call("ListSessions", { query: { user: user }, isValidByDocument: false })).status).toBe(400);
    const forged = await call("ListSessions", { query: { cursor: "cur_forged" } });
    expect(forged.json.error.code).toBe("invalid_cursor");
    expect((await call("ListSessions", { headers: { authorization: "Bearer sk_live_nope" } })).status).toBe(401);
    // A query string past the server's header limit: 431, a documented answer.
    expect((await call("ListSessions", { query: { user_id: "u".repeat(20_000) } })).status).toBe(431);
  });

  it("GetSession", async () => {
    const { session } = await createSession("usr_openapi_get");
    expect((await call("GetSession", { path: { id: session.id }, isValidByDocument: true })).status).toBe(200);
    expect((await call("GetSession", { path: { id: "ses_01HABCDEF999888" } })).status).toBe(404);
    expect((await call("GetSession", { path: { id: `ses_${"0".repeat(200)}` } })).status).toBe(414);
  });

  it("RevokeSession", async () => {
    const { session } = await createSession("usr_openapi_revoke");
    expect((await call("RevokeSession", { path: { id: session.id }, isValidByDocument: true })).status).toBe(204);
    // Revoked: the session now shows when and why it ended (fields that are null while active).
    expect((await call("GetSession", { path: { id: session.id } })).json.status).toBe("revoked");
    expect((await call("RevokeSession", { path: { id: "ses_01HABCDEF999888" } })).status).toBe(404);
  });

  it("RevokeSessions", async () => {
    const user = "usr_openapi_revoke_all";
    await createSession(user);
    const revoked = await call("RevokeSessions", { query: { user_id: user }, isValidByDocument: true });
    expect(revoked.json).toEqual({ revoked: 1 });
    expect((await call("RevokeSessions", { query: { user_id: "" }, isValidByDocument: false })).status).toBe(400);
    expect((await call("RevokeSessions", { query: { user_id: user }, headers: { authorization: "Basic x" } })).status).toBe(401);
  });

  it("VerifyToken", async () => {
    const { access_token } = await createSession("usr_openapi_verify");
    const valid = await call("VerifyToken", { body: { token: access_token }, isValidByDocument: true });
    expect(valid.json.valid).toBe(true);
    const invalid = await call("VerifyToken", { body: { token: "eyJhbGciOiJFZERTQSJ9.e30.x" }, isValidByDocument: true });
    expect(invalid.json).toMatchObject({ valid: false, error: { code: "invalid_token" } });
    expect((await call("VerifyToken", { body: { token: "" }, isValidByDocument: false })).status).toBe(400);
    expect((await call("VerifyToken", { body: { token: access_token }, headers: { authorization: "" } })).status).toBe(401);
  });

  it("RefreshSession", async () => {
    const { refresh_token } = await createSession("usr_openapi_refresh");
    const refreshed = await call("RefreshSession", { body: { refresh_token }, isValidByDocument: true });
    expect(refreshed.status).toBe(200);
    const reused = await call("RefreshSession", { body: { refresh_token: `rt_${"A".repeat(43)}` }, isValidByDocument: true });
    expect(reused.json.error.code).toBe("refresh_token_invalid");
    expect((await call("RefreshSession", { body: {}, isValidByDocument: false })).status).toBe(400);
  });

  it("WatchSessionEvents", async () => {
    const { op, template } = operation("WatchSessionEvents");
    // Events reach readers once the sequencer (a background worker, off in tests) numbers them.
    server.services.eventSequencer.start();
    const since = new Date(Date.now() - 60_000).toISOString();
    const { session } = await createSession("usr_openapi_events");
    expect(requestIsValid(op, { query: { since } })).toBe(true);
    const stream = await openEventStream(server.url, server.tenant.headers, { query: `?since=${encodeURIComponent(since)}` });
    try {
      expect(template).toBe("/v1/sessions/events");
      expect(stream.status).toBe(200);
      (exercised.get("WatchSessionEvents") ?? exercised.set("WatchSessionEvents", new Set()).get("WatchSessionEvents"))?.add(200);
      const [[mediaType, media]] = Object.entries(op.responses["200"]?.content ?? {}) as unknown as [[string, { "x-event-data": Schema }]];
      expect(mediaType).toBe("text/event-stream");
      const events = await stream.until((es) => es.some((e) => e.data.session_id === session.id));
      for (const event of events) expectValid(media["x-event-data"], event.data, `event ${event.event}`);
    } finally {
      stream.close();
    }
    expect((await call("WatchSessionEvents", { query: { since: "yesterday" }, isValidByDocument: false })).status).toBe(400);
    expect((await call("WatchSessionEvents", { query: { after: "evt_forged" } })).json.error.code).toBe("invalid_cursor");
  });

  it("rate-limited calls (429) are documented answers too", async () => {
    const limited = await startTestServer({ env: { RATE_LIMIT_READ_PER_MINUTE: "1", RATE_LIMIT_WRITE_PER_MINUTE: "1", RATE_LIMIT_REFRESH_PER_MINUTE: "1" } });
    try {
      const { refresh_token } = await createSession("usr_openapi_limits", limited);
      expect((await call("CreateSession", { body: { user_id: "usr_openapi_limits" }, on: limited })).status).toBe(429);
      expect((await call("ListSessions", { on: limited })).status).toBe(200);
      expect((await call("ListSessions", { on: limited })).status).toBe(429);
      expect((await call("RefreshSession", { body: { refresh_token }, on: limited })).status).toBe(200);
      expect((await call("RefreshSession", { body: { refresh_token }, on: limited })).status).toBe(429);
    } finally {
      await limited.close();
    }
  });

  it("exercised every operation of the document: its success and at least one error", () => {
    for (const [operationId, { op }] of operations) {
      const seen = exercised.get(operationId) ?? new Set();
      const success = Object.keys(op.responses).map(Number).find((s) => s < 300);
      expect(seen.has(success as number), `${operationId} success ${success}`).toBe(true);
      expect([...seen].some((s) => s >= 400), `${operationId} error`).toBe(true);
    }
  });
});
