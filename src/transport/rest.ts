import { randomUUID } from "node:crypto";
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { Socket } from "node:net";
import {
  type DescField,
  type DescMethod,
  type DescService,
  type Message,
  ScalarType,
  getOption,
  hasOption,
  isFieldSet,
} from "@bufbuild/protobuf";
import { reflect } from "@bufbuild/protobuf/reflect";
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest, FastifyServerOptions, RouteOptions } from "fastify";
import { http } from "../../gen/google/api/annotations_pb.js";
import { http_success_code, implied_over_rest_without } from "../../gen/sessions/v1/options_pb.js";
import { AppError, type ErrorCode } from "../domain/errors.js";
import { errorTable, toPublicError } from "./error-codes.js";
import { callInfoOf, requestHeader, type PipelineMethod } from "./pipeline.js";
import { isUtf8Json, parseStrictJson } from "./strict-json.js";
import { type RestParams, fromRestJson, fromRestParams, restJsonEncoder } from "./rest-json.js";

export type HttpMethod = "GET" | "POST" | "PUT" | "PATCH" | "DELETE";

/** One REST endpoint, derived from an RPC's google.api.http option. */
export interface RestRoute {
  httpMethod: HttpMethod;
  /** The google.api.http path template, e.g. "/v1/sessions/{id}". */
  template: string;
  /** The same path in fastify's form, e.g. "/v1/sessions/:id". */
  url: string;
  method: DescMethod;
  /** "" (no body), "*" (the whole request message) or the name of the request field the body fills. */
  body: string;
  /** "" (the whole response message) or the name of the response field that is the body. */
  responseBody: string;
  successCode: number;
}

/**
 * The REST routes of a service's annotated RPCs; throws on a mapping this transcoder does not
 * support. A server-streaming RPC maps to a GET without body or path variables: its feed as
 * Server-Sent Events (src/transport/sse.ts); registerRest serves the unary ones.
 */
export function restRoutesOf(service: DescService): RestRoute[] {
  return service.methods.filter((method) => hasOption(method, http)).map(restRouteOf);
}

export function restRouteOf(method: DescMethod): RestRoute {
  const rule = getOption(method, http);
  const badRule = (why: string) => new Error(`${method.parent.typeName}.${method.name}: ${why}`);
  const { pattern } = rule;
  if (pattern.case === undefined || pattern.case === "custom") {
    throw badRule("google.api.http needs get, put, post, patch or delete");
  }
  const isStream = method.methodKind === "server_streaming";
  if (method.methodKind !== "unary" && !isStream) throw badRule("only unary and server-streaming RPCs can have a REST mapping");
  if (rule.additionalBindings.length > 0) throw badRule("additional_bindings are not supported");
  const httpMethod = pattern.case.toUpperCase() as HttpMethod;
  const template = pattern.value;
  const pathFields = new Set<string>();
  const [root, ...segments] = template.split("/");
  if (root !== "" || segments.length === 0) throw badRule(`path template "${template}" must start with "/"`);
  const url = segments.map((segment) => {
    const name = /^\{(\w+)\}$/.exec(segment)?.[1];
    if (name === undefined) {
      if (/^[\w.~-]+$/.test(segment)) return segment;
      throw badRule(`unsupported path segment "${segment}" in "${template}" (only literals and {field})`);
    }
    const field = method.input.fields.find((f) => f.name === name);
    if (field?.fieldKind !== "scalar" && field?.fieldKind !== "enum") {
      throw badRule(`path variable {${name}} is not a singular scalar field`);
    }
    if (pathFields.has(name)) throw badRule(`path variable {${name}} appears twice`);
    pathFields.add(name);
    return `:${name}`;
  });
  const { body, responseBody } = rule;
  if (isStream && (httpMethod !== "GET" || body !== "" || responseBody !== "" || pathFields.size > 0)) {
    throw badRule("a server-streaming RPC maps to a GET without body, response_body or path variables (its Server-Sent Events)");
  }
  if (body !== "" && (httpMethod === "GET" || httpMethod === "DELETE")) throw badRule(`${httpMethod} cannot have a body`);
  if (body !== "" && body !== "*" && (!method.input.fields.some((f) => f.name === body) || pathFields.has(body))) {
    throw badRule(`body "${body}" is not a request field outside the path`);
  }
  if (responseBody !== "" && !method.output.fields.some((f) => f.name === responseBody)) {
    throw badRule(`response_body "${responseBody}" is not a response field`);
  }
  const successCode = getOption(method, http_success_code) || 200;
  if (successCode < 200 || successCode > 299) throw badRule(`http_success_code ${successCode} is not a 2xx status`);
  return { httpMethod, template, url: `/${url.join("/")}`, method, body, responseBody, successCode };
}

/**
 * Serves the service's annotated RPCs as REST JSON, calling the same implementation object the
 * Connect router gets. Routes live in their own fastify scope, which reads only JSON bodies
 * (anything else is 415) and answers every failure with the REST error envelope.
 */
export function registerRest(app: FastifyInstance, opts: { service: DescService; methods: ReadonlyMap<string, PipelineMethod> }): void {
  const routes = restRoutesOf(opts.service);
  app.register(async (scope) => {
    scope.setErrorHandler(restErrorHandler);
    scope.removeAllContentTypeParsers();
    // Bodies only reach fromRestJson, which copies known fields only; parseStrictJson refuses bytes
    // that are not UTF-8 and keys given twice.
    scope.addContentTypeParser<Buffer>("application/json", { parseAs: "buffer" }, (request, body, done) => {
      // Called with the whole body read: a refusal here leaves the connection able to answer the
      // requests behind this one (restErrorHandler), where fastify would close it unanswered.
      const refuse = (err: Error) => done(Object.assign(err, { [wholeBodyRead]: true }));
      // Fastify does not decompress, and a compressed body must not dodge the size limit unread.
      const encoding = request.headers["content-encoding"];
      if (encoding !== undefined && encoding !== "identity") {
        return refuse(new AppError("unsupported_media_type", "Content-Encoding is not supported; send plain JSON"));
      }
      // Every Content-Type line: fastify chose the parser by the first, and a second may name
      // another type or charset.
      if (!isUtf8Json(requestHeader(request.raw, "content-type") ?? "")) {
        return refuse(new AppError("unsupported_media_type", "send one Content-Type, application/json, in UTF-8: charset=utf-8 or no charset"));
      }
      if (body.length === 0) return done(null, {}); // an empty body is an empty request message
      try {
        done(null, parseStrictJson(body));
      } catch (err) {
        refuse(err as Error);
      }
    });
    for (const route of routes) {
      if (route.method.methodKind !== "unary") continue;
      scope.route({
        method: route.httpMethod,
        url: route.url,
        handler: restHandler(route, opts.methods.get(`/${opts.service.typeName}/${route.method.name}`)),
      });
    }
  });
}

/** Marks an error of the JSON body parser, which refuses only what it has read to the end. */
const wholeBodyRead = Symbol("whole body read");

/** Methods whose requests never carry a body here (every REST route with a body is POST). */
const bodylessMethods = new Set(["GET", "HEAD", "DELETE"]);

/**
 * Refuses what no route can mean: an HTTP/1.1 request without Host (RFC 9112 requires one), and a
 * body on GET, HEAD or DELETE. A filter sent in a body (say DELETE /v1/sessions {"user_id": …})
 * would otherwise be ignored and the call would act on everything its query string selects. A body
 * is known by its headers; when only its arrival can tell (chunked, or an HTTP/2 stream still open),
 * the first byte decides, so an empty one (some clients send an empty DATA frame) passes.
 */
async function refuseUnmeant(request: FastifyRequest): Promise<void> {
  const { raw } = request;
  if (raw.httpVersion === "1.1" && request.headers.host === undefined) {
    throw new AppError("invalid_request", "an HTTP/1.1 request needs a Host header");
  }
  if (bodylessMethods.has(request.method) && (await hasBody(raw))) {
    throw new AppError("invalid_request", `${request.method} takes no request body: its parameters go in the path and query string`);
  }
}

/** Whether a Content-Length (digits: Node's parser has checked) says no body; "00" is zero too. */
export function isZeroLength(length: string): boolean {
  return /^0+$/.test(length);
}

async function hasBody(raw: IncomingMessage | Http2ServerRequest): Promise<boolean> {
  const length = raw.headers["content-length"];
  if (length !== undefined) return !isZeroLength(length);
  const isOpen = raw.headers["transfer-encoding"] !== undefined || ("stream" in raw && !raw.stream.endAfterHeaders);
  if (!isOpen) return false;
  return new Promise((resolve) => {
    const settle = (hasByte: boolean) => {
      raw.off("data", onData).off("end", onEnd).off("error", onEnd);
      resolve(hasByte);
    };
    const onData = (chunk: Buffer) => chunk.length > 0 && settle(true);
    const onEnd = () => settle(false);
    raw.on("data", onData).on("end", onEnd).on("error", onEnd);
  });
}

function restHandler(route: RestRoute, target: PipelineMethod | undefined) {
  const { method, body } = route;
  const pathFields = new Set(route.url.split("/").filter((s) => s.startsWith(":")).map((s) => s.slice(1)));
  const boundFields = new Set([...pathFields, ...(body === "*" ? method.input.fields.map((f) => f.name) : body ? [body] : [])]);
  const implied = impliedFieldsOf(method);
  // The response (or its response_body field) written straight as REST JSON.
  const responseField = route.responseBody ? method.output.fields.find((f) => f.name === route.responseBody) : undefined;
  const encode = responseField?.message ? restJsonEncoder(responseField.message) : restJsonEncoder(method.output);

  return async (request: FastifyRequest, reply: FastifyReply) => {
    if (target === undefined) throw new AppError("not_found", `${method.parent.typeName}.${method.name} is not served`);
    const info = callInfoOf(request, reply, "rest", undefined);
    let output: Message;
    try {
      if (isInvalidQuery(request.query)) throw invalidQuery();
      const bodyJson = body === "*" ? (request.body ?? {}) : body ? { [body]: request.body ?? null } : {};
      const input = fromRestJson(method.input, bodyJson, { exclude: pathFields });
      fromRestParams(method.input, request.query as RestParams, { into: input, exclude: boundFields });
      fromRestParams(method.input, request.params as RestParams, { into: input });
      for (const { field, unless } of implied) {
        // Only a request that names neither field: `all_users=false` is a request that says "not
        // everyone" and names no user, refused by the proto's rules, never read as revoke-all.
        const isNamed = (f: DescField) => [request.query, bodyJson].some((given) => typeof given === "object" && given !== null && (Object.hasOwn(given, f.name) || Object.hasOwn(given, f.jsonName)));
        if (!isFieldSet(input, unless) && !isFieldSet(input, field) && !isNamed(field)) reflect(method.input, input).set(field, true);
      }
      output = await target.run(input, info);
    } finally {
      // Headers the pipeline set (rate limits, no-store, Retry-After) go out with errors too.
      for (const [key, value] of info.responseHeaders) reply.header(key, value);
    }
    if (route.successCode === 204) return reply.code(204).send();
    const payload = route.responseBody ? (output as unknown as Record<string, unknown>)[responseField?.localName as string] : output;
    return sendJsonText(reply, route.successCode, payload === undefined ? "null" : (encode as (m: unknown) => string)(payload));
  };
}

/**
 * Bool fields marked `implied_over_rest_without` (options.proto): over REST they are true when
 * the request leaves out (does not even name) both them and the field the option names (DELETE /v1/sessions without
 * user_id is the seed's revoke-all, which RPC callers must ask for with all_users).
 */
function impliedFieldsOf(method: DescMethod): { field: DescField; unless: DescField }[] {
  return method.input.fields.flatMap((field) => {
    const name = getOption(field, implied_over_rest_without);
    if (name === "") return [];
    const unless = method.input.fields.find((f) => f.name === name);
    if (field.fieldKind !== "scalar" || field.scalar !== ScalarType.BOOL || unless === undefined) {
      throw new Error(`${method.input.typeName}.${field.name}: implied_over_rest_without needs a bool field and a sibling field name`);
    }
    return [{ field, unless }];
  });
}

/**
 * Every error answers in the REST envelope with a request id, including those raised before any
 * handler runs. These fastify options cover the ones fastify and Node raise themselves: a URL that
 * does not decode, an over-long path parameter, a query string that is not percent-encoded UTF-8,
 * and what Node's HTTP parser refuses (oversized headers, malformed requests, timeouts). Pass them to
 * `Fastify(...)`; `registerRestErrors` handles the rest.
 */
export const restServerOptions = {
  genReqId: requestIdOf,
  requestIdHeader: false,
  frameworkErrors: (error: FastifyError, request: FastifyRequest, reply: FastifyReply) => sendError(request, reply, fromFastify(error)),
  clientErrorHandler: answerClientError,
  routerOptions: { querystringParser: parseQueryString },
} satisfies Partial<FastifyServerOptions>;

/** A client's X-Request-ID is kept when it is well-formed (it is logged and echoed); otherwise ours. */
const requestIdPattern = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export function requestIdOf(req: IncomingMessage | Http2ServerRequest): string {
  const given = req.headers["x-request-id"];
  return typeof given === "string" && requestIdPattern.test(given) ? given : newRequestId();
}

const newRequestId = () => `req_${randomUUID().replaceAll("-", "")}`;

/** What Node's parser refuses before fastify sees a request; answered on the raw socket. */
function answerClientError(this: FastifyInstance, err: Error & { code?: string }, socket: Socket): void {
  if (err.code === "ECONNRESET" || socket.destroyed) return;
  const code: ErrorCode =
    err.code === "HPE_HEADER_OVERFLOW" ? "headers_too_large" : err.code === "ERR_HTTP_REQUEST_TIMEOUT" ? "request_timeout" : "invalid_request";
  const requestId = refuseOnSocket(socket, code, clientErrorMessages[code] ?? "malformed HTTP request");
  this.log.info({ reqId: requestId, code, parserError: err.code }, "request refused by the HTTP parser");
}

const clientErrorMessages: Partial<Record<ErrorCode, string>> = {
  headers_too_large: "the request headers are too large",
  request_timeout: "the request was not received in time",
};

/** The envelope of an error answered before fastify has a request, and the request id it carries. */
function envelope(code: ErrorCode, message: string, requestId: string): { status: number; body: string } {
  const { status } = errorTable[code];
  return { status, body: JSON.stringify({ error: { code, message, status, request_id: requestId } }) };
}

/** Answers in the envelope on a raw HTTP/1 socket, then closes it; returns the request id. */
export function refuseOnSocket(socket: Socket, code: ErrorCode, message: string): string {
  const requestId = newRequestId();
  const { status, body } = envelope(code, message, requestId);
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nX-Request-ID: ${requestId}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy();
  return requestId;
}

/** Answers in the envelope on a raw response (one fastify never saw); returns the request id. */
export function refuseOnResponse(req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse, code: ErrorCode, message: string): string {
  const requestId = requestIdOf(req);
  const { status, body } = envelope(code, message, requestId);
  const headers = { "content-type": "application/json; charset=utf-8", "x-request-id": requestId };
  // The two response kinds take the same call; their overloads differ in type only.
  (res as ServerResponse).writeHead(status, headers).end(body);
  return requestId;
}

/**
 * Sets the REST error and not-found handlers on `app`, and keeps a table of every route (REST,
 * Connect, operational) so that a known path called with another method is 405 with `Allow`, not
 * 404. Call it before any route is registered.
 */
export function registerRestErrors(app: FastifyInstance): void {
  const known: KnownRoute[] = [];
  routeTables.set(app, known);
  app.addHook("onRoute", (route: RouteOptions) => {
    const methods = [route.method].flat();
    known.push({ url: route.url, pattern: pathPattern(route.url), methods });
  });
  app.setErrorHandler(restErrorHandler);
  app.addHook("onRequest", refuseUnmeant);
  // No route reads a DELETE body: refuseUnmeant refuses one, so fastify must not parse one either.
  // Parsing would answer 415 to a Content-Type that describes no content (libraries send one on
  // every request), and wait forever for an empty chunked body refuseUnmeant has already read.
  app.addHttpMethod("DELETE", { hasBody: false, overrideExisting: true });
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split("?")[0] ?? "";
    const allowed = [...new Set(known.filter((r) => r.pattern.test(path)).flatMap((r) => r.methods))].sort();
    if (allowed.length === 0) return sendError(request, reply, new AppError("not_found", "no such endpoint"));
    reply.header("allow", allowed.join(", "));
    return sendError(request, reply, new AppError("method_not_allowed", `${request.method} is not allowed here; allowed: ${allowed.join(", ")}`));
  });
}

interface KnownRoute {
  url: string;
  pattern: RegExp;
  methods: string[];
}

const routeTables = new WeakMap<FastifyInstance, readonly KnownRoute[]>();

/** Every route `app` serves, fastify's automatic HEAD routes included, as the table behind 405 knows them. */
export function servedRoutesOf(app: FastifyInstance): { method: string; url: string }[] {
  return (routeTables.get(app) ?? []).flatMap(({ url, methods }) => methods.map((method) => ({ method, url })));
}

/** A fastify route path (`/v1/sessions/:id`, `/x/*`) as a regular expression for concrete paths. */
function pathPattern(url: string): RegExp {
  const source = url
    .split("/")
    .map((segment) => (segment.startsWith(":") ? "[^/]+" : segment === "*" ? ".*" : segment.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")))
    .join("/");
  return new RegExp(`^${source}$`);
}

/** For app.setErrorHandler: fastify's own failures (body parsing, limits) and anything a route throws. */
export function restErrorHandler(error: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  // Fastify marks a body its parser refused "connection: close", lest the client go on sending it.
  // HTTP/2 has no such header (Node would drop it and print a warning outside the JSON log); and a
  // body read to its end needs no close: pipelined requests behind it would be run and not answered.
  if (request.raw.httpVersionMajor >= 2 || (error as { [wholeBodyRead]?: boolean })[wholeBodyRead] === true) reply.removeHeader("connection");
  return sendError(request, reply, fromFastify(error));
}

/** The one place REST error bodies are built. Internal details only ever reach the log. */
function sendError(request: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
  const { cause, code, message, status, field } = toPublicError(err);
  if (cause !== undefined) request.log.error({ err: cause }, "request failed");
  reply.header("x-request-id", request.id);
  return sendJson(reply, status, { error: { code, message, status, request_id: request.id, ...(field !== undefined ? { field } : {}) } });
}

const invalidQueryMark = Symbol("invalid query string");

/**
 * Fastify's query-string parser, strict: keys and values must be percent-encoded UTF-8 (raw bytes
 * outside printable ASCII, a malformed escape or an escape that is not UTF-8 make the whole query
 * invalid, which the REST handler answers with 400). A raw `+` is refused too: HTML forms mean a
 * space by it, URLs a plus, and `?user_id=john+tag@x.com` guessed either way could list or revoke
 * another user's sessions; `%2B` and `%20` say which. A key given twice becomes a list, as before.
 */
export function parseQueryString(query: string): Record<string, string | string[]> {
  const params: Record<string, string | string[]> = Object.create(null);
  if (/[^\x21-\x2a\x2c-\x7e]/.test(query)) return markInvalid(params);
  for (const pair of query.split("&")) {
    if (pair === "") continue;
    const eq = pair.indexOf("=");
    let key: string;
    let value: string;
    try {
      key = decodeURIComponent(eq < 0 ? pair : pair.slice(0, eq));
      value = eq < 0 ? "" : decodeURIComponent(pair.slice(eq + 1));
    } catch {
      return markInvalid(params);
    }
    const before = params[key];
    params[key] = before === undefined ? value : [before, value].flat();
  }
  return params;
}

function markInvalid(params: Record<string, string | string[]>) {
  Object.defineProperty(params, invalidQueryMark, { value: true });
  return params;
}

/** The error for a query string parseQueryString refused. */
export const invalidQuery = () =>
  new AppError("invalid_request", "the query string is not valid: use percent-encoded UTF-8, and %2B for a plus sign or %20 for a space");

export function isInvalidQuery(query: unknown): boolean {
  return typeof query === "object" && query !== null && invalidQueryMark in query;
}

function fromFastify(error: FastifyError): unknown {
  const status = error.statusCode;
  if (status === undefined || status < 400 || status > 499) return error;
  switch (error.code) {
    case "FST_ERR_BAD_URL":
      return new AppError("invalid_request", "the URL path is not valid: use percent-encoded UTF-8");
    case "FST_ERR_MAX_PARAM_LENGTH":
      return new AppError("uri_too_long", "a path parameter is too long");
    case "FST_ERR_CTP_INVALID_JSON_BODY":
      return new AppError("invalid_request", "malformed JSON body");
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return new AppError("invalid_request", "empty JSON body");
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return new AppError("payload_too_large", "request body is too large");
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return new AppError("unsupported_media_type", "unsupported content type; send application/json");
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return new AppError("invalid_request", "request body size does not match Content-Length");
    default:
      return new AppError("invalid_request", "invalid request");
  }
}

function sendJsonText(reply: FastifyReply, status: number, text: string): FastifyReply {
  return reply.code(status).type("application/json; charset=utf-8").send(text);
}

function sendJson(reply: FastifyReply, status: number, json: unknown): FastifyReply {
  return sendJsonText(reply, status, JSON.stringify(json));
}
