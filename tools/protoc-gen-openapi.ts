/**
 * protoc-gen-openapi: writes the OpenAPI 3.1 document of the REST mapping, from the same schema the
 * service is generated from (`buf generate`, buf.gen.yaml). It reads what src/transport/rest.ts
 * serves and how:
 *
 * - the paths, methods, bodies and success codes of the `google.api.http` rules, derived as
 *   restRoutesOf derives them (path variables are request fields; with no body every other field is
 *   a query parameter; `body: "*"` takes every field but the path's); a server-streaming RPC's GET
 *   path is its Server-Sent Events feed (src/transport/sse.ts);
 * - the REST JSON dialect of src/transport/rest-json.ts: keys are proto field names (or the field's
 *   `rest_name`), a response carries every field (an unset one as null, enums as short lower-case
 *   names, the zero value as null), int64 as strings, timestamps as RFC 3339;
 * - the comments of services, RPCs, messages, fields and enum values, as descriptions;
 * - `google.api.field_behavior` (REQUIRED, OUTPUT_ONLY, INPUT_ONLY, IMMUTABLE) and the
 *   `buf.validate` field rules (string, number, enum, repeated and map rules, `required`, `ignore`,
 *   predefined and CEL rules by their messages), as JSON Schema where it can say them and as text
 *   where it cannot. Nothing here needs them: they are read when the schema has them;
 * - the errors: each RPC's comment has an `Errors:` paragraph naming gRPC codes and, in parentheses,
 *   the REST error codes; the service comment names those every RPC may fail with ("may also fail
 *   with"). Each error code gets its HTTP status from src/transport/error-table.ts, the table the
 *   server answers with, plus what the REST transport itself refuses (malformed requests, bodies too
 *   large or not JSON, over-long path parameters).
 *
 * Options (`opt` in buf.gen.yaml): `file=<name>` (default openapi.json) and `title=<text>`.
 * Run with `strategy: all`, so that one document covers every file.
 */
import { pathToFileURL } from "node:url";
import {
  type DescEnum,
  type DescExtension,
  type DescField,
  type DescMessage,
  type DescMethod,
  type DescService,
  type FileRegistry,
  type Message,
  ScalarType,
  create,
  createFileRegistry,
  getOption,
  hasOption,
} from "@bufbuild/protobuf";
import { type ReflectList, type ReflectMessage, isReflectList, isReflectMessage, reflect } from "@bufbuild/protobuf/reflect";
import {
  type CodeGeneratorRequest,
  CodeGeneratorResponseSchema,
  CodeGeneratorResponse_Feature,
  Edition,
  FeatureSet_FieldPresence,
  FileDescriptorSetSchema,
} from "@bufbuild/protobuf/wkt";
import { type Plugin, getComments, runNodeJs } from "@bufbuild/protoplugin";
import { Code } from "@connectrpc/connect";
import type { ErrorCode } from "../src/domain/errors.js";
import { errorTable } from "../src/transport/error-table.js";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Schema = { [key: string]: Json };

/** The document, or an error naming the RPC or field it could not describe. */
export function generateOpenApi(request: CodeGeneratorRequest): { name: string; content: string } {
  const options = parseOptions(request.parameter);
  const registry = createFileRegistry(create(FileDescriptorSetSchema, { file: request.protoFile }));
  const ext = extensionsOf(registry);
  const services = request.fileToGenerate
    .map((name) => registry.getFile(name))
    .flatMap((file) => file?.services ?? [])
    .filter((service) => service.methods.some((m) => ext.http && hasOption(m, ext.http)));
  const schemas = createSchemas(registry, ext);
  const paths: Record<string, Schema> = {};
  for (const service of services) {
    const errors = documentedErrors(service);
    for (const method of service.methods) {
      if (!ext.http || !hasOption(method, ext.http)) continue;
      const route = routeOf(method, ext);
      const operations = (paths[route.template] ??= {});
      operations[route.httpMethod] = operationOf(route, errors.get(method) ?? new Set(), schemas, ext);
    }
  }
  const document: Schema = {
    openapi: "3.1.0",
    info: {
      title: options.title ?? services.map((s) => s.name).join(", "),
      version: versionOf(services),
      description: services.map((s) => commentOf(s)).filter(Boolean).join("\n\n"),
    },
    tags: services.map((s) => ({ name: s.name, description: firstParagraph(commentOf(s)) })),
    paths: sortedKeys(paths),
    components: {
      schemas: sortedKeys({ ...schemas.components(), Error: errorEnvelope() }),
      headers: {
        "X-Request-ID": {
          description: "The request's id, also in every error body: the caller's X-Request-ID when well-formed, else `req_…`.",
          schema: { type: "string" },
        },
        "Retry-After": {
          description: "Seconds to wait before trying again.",
          schema: { type: "string", pattern: "^[0-9]+$" },
        },
      },
      securitySchemes: {
        secretKey: {
          type: "http",
          scheme: "bearer",
          bearerFormat: "sk_live_… or sk_test_…",
          description: "A secret key of the tenant (`npx sessionctl keys create`), as `Authorization: Bearer sk_live_…`.",
        },
        tenantId: {
          type: "apiKey",
          in: "header",
          name: "X-Tenant-ID",
          description: "The tenant id, `tnt_…`. Every call names its tenant; the refresh endpoint needs nothing else.",
        },
      },
    },
  };
  return { name: options.file, content: `${JSON.stringify(document, null, 2)}\n` };
}

function parseOptions(parameter: string): { file: string; title?: string } {
  const options: { file: string; title?: string } = { file: "openapi.json" };
  for (const pair of parameter.split(",").filter(Boolean)) {
    const [key, ...rest] = pair.split("=");
    const value = rest.join("=");
    if (key === "file" && value) options.file = value;
    else if (key === "title" && value) options.title = value;
    else throw new Error(`protoc-gen-openapi: unknown option "${pair}" (file=…, title=…)`);
  }
  return options;
}

/** The options this generator reads, found by name: each is absent when no file declares it. */
interface Extensions {
  http?: DescExtension;
  successCode?: DescExtension;
  isPublic?: DescExtension;
  noStore?: DescExtension;
  restName?: DescExtension;
  impliedOverRestWithout?: DescExtension;
  fieldBehavior?: DescExtension;
  fieldRules?: DescExtension;
  messageRules?: DescExtension;
  predefined?: DescExtension;
  /** Extensions of buf.validate's rule messages (predefined rules), by the message they extend. */
  predefinedRules: Map<string, DescExtension[]>;
}

function extensionsOf(registry: FileRegistry): Extensions {
  const find = (name: string) => registry.getExtension(name);
  const predefinedRules = new Map<string, DescExtension[]>();
  for (const file of registry.files) {
    for (const extension of nestedExtensions(file.extensions, file.messages)) {
      if (!extension.extendee.typeName.startsWith("buf.validate.")) continue;
      predefinedRules.set(extension.extendee.typeName, [...(predefinedRules.get(extension.extendee.typeName) ?? []), extension]);
    }
  }
  return {
    http: find("google.api.http"),
    successCode: find("sessions.v1.http_success_code"),
    isPublic: find("sessions.v1.is_public"),
    noStore: find("sessions.v1.no_store"),
    restName: find("sessions.v1.rest_name"),
    impliedOverRestWithout: find("sessions.v1.implied_over_rest_without"),
    fieldBehavior: find("google.api.field_behavior"),
    fieldRules: find("buf.validate.field"),
    messageRules: find("buf.validate.message"),
    predefined: find("buf.validate.predefined"),
    predefinedRules,
  };
}

function nestedExtensions(top: readonly DescExtension[], messages: readonly DescMessage[]): DescExtension[] {
  return [...top, ...messages.flatMap((m) => nestedExtensions(m.nestedExtensions, m.nestedMessages))];
}

/** An option's value as a reflected message, or undefined when the option is not set. */
function optionMessage(desc: DescMethod | DescField | DescMessage, extension: DescExtension | undefined): ReflectMessage | undefined {
  if (!extension?.message || !hasOption(desc as never, extension as never)) return undefined;
  return reflect(extension.message, getOption(desc as never, extension as never) as Message);
}

function optionScalar<T>(desc: DescMethod | DescField, extension: DescExtension | undefined, fallback: T): T {
  if (!extension || !hasOption(desc as never, extension as never)) return fallback;
  return getOption(desc as never, extension as never) as T;
}

// ---------------------------------------------------------------------------------------------
// Routes, as src/transport/rest.ts derives them.

type HttpMethod = "get" | "put" | "post" | "patch" | "delete";

interface Route {
  method: DescMethod;
  httpMethod: HttpMethod;
  template: string;
  pathFields: DescField[];
  /** "" (no body), "*" or a request field's name. */
  body: string;
  responseBody: string;
  successCode: number;
}

function routeOf(method: DescMethod, ext: Extensions): Route {
  const rule = optionMessage(method, ext.http);
  const bad = (why: string) => new Error(`protoc-gen-openapi: ${method.parent.typeName}.${method.name}: ${why}`);
  if (!rule) throw bad("no google.api.http rule");
  const pattern = rule.desc.oneofs.find((o) => o.name === "pattern");
  const chosen = pattern && rule.oneofCase(pattern);
  if (!chosen || chosen.name === "custom") throw bad("google.api.http needs get, put, post, patch or delete");
  const httpMethod = chosen.name as HttpMethod;
  const template = rule.get(chosen) as string;
  const body = stringField(rule, "body");
  const responseBody = stringField(rule, "response_body");
  const pathFields = [...template.matchAll(/\{(\w+)\}/g)].map(([, name]) => {
    const field = method.input.fields.find((f) => f.name === name);
    if (!field) throw bad(`path variable {${name}} is not a request field`);
    return field;
  });
  if (method.methodKind === "server_streaming") {
    if (httpMethod !== "get" || body !== "" || responseBody !== "") throw bad("a server-streaming RPC maps to GET only, without body");
  } else if (method.methodKind !== "unary") {
    throw bad("only unary and server-streaming RPCs have a REST mapping");
  }
  const successCode = optionScalar(method, ext.successCode, 0) || 200;
  return { method, httpMethod, template, pathFields, body, responseBody, successCode };
}

function stringField(message: ReflectMessage, name: string): string {
  const field = message.desc.fields.find((f) => f.name === name);
  return field ? (message.get(field) as string) : "";
}

// ---------------------------------------------------------------------------------------------
// Operations.

function operationOf(route: Route, errors: ReadonlySet<ErrorCode>, schemas: Schemas, ext: Extensions): Schema {
  const { method } = route;
  const isPublic = optionScalar(method, ext.isPublic, false);
  const isNoStore = optionScalar(method, ext.noStore, false);
  const isStream = method.methodKind === "server_streaming";
  const pathNames = new Set(route.pathFields.map((f) => f.name));
  const bodyFields =
    route.body === "*" ? method.input.fields.filter((f) => !pathNames.has(f.name)) : method.input.fields.filter((f) => f.name === route.body);
  const queryFields = method.input.fields.filter((f) => !pathNames.has(f.name) && !bodyFields.includes(f));
  const parameters: Json[] = [
    ...route.pathFields.map((field) => parameterOf(field, "path", schemas)),
    ...queryFields.filter(isQueryable).map((field) => parameterOf(field, "query", schemas)),
  ];
  if (isStream) {
    parameters.push({
      name: "Last-Event-ID",
      in: "header",
      description: "The id (cursor) of the last event received: the feed resumes just after it. An EventSource sends it by itself when it reconnects; it takes precedence over the query.",
      schema: { type: "string" },
    });
  }
  const comment = commentOf(method);
  const operation: Schema = {
    operationId: method.name,
    tags: [method.parent.name],
    summary: firstSentence(comment),
    description: [comment, messageRulesText(method.input, schemas.ext)].filter(Boolean).join("\n\n"),
    security: isPublic ? [{ tenantId: [] }] : [{ secretKey: [], tenantId: [] }],
  };
  if (parameters.length > 0) operation.parameters = parameters;
  if (route.body !== "") {
    const schema =
      route.body === "*"
        ? schemas.input(method.input, { exclude: pathNames })
        : schemas.fieldInput(method.input.fields.find((f) => f.name === route.body) as DescField);
    operation.requestBody = {
      required: route.body === "*" ? bodyFields.some((f) => isRequired(f, schemas.ext)) : true,
      content: { "application/json": { schema } },
    };
  }
  const headers: Schema = { "X-Request-ID": { $ref: "#/components/headers/X-Request-ID" } };
  if (isNoStore) {
    headers["Cache-Control"] = { description: "`no-store`: the response carries tokens.", schema: { type: "string", const: "no-store" } };
    headers.Pragma = { description: "`no-cache`, for HTTP/1.0 caches.", schema: { type: "string", const: "no-cache" } };
  }
  const responses: Schema = {};
  const success: Schema = { description: successDescription(route), headers };
  if (isStream) {
    success.content = {
      "text/event-stream": {
        schema: {
          type: "string",
          description:
            "Server-Sent Events. Each event has `id:` (its cursor), `event:` (its type) and `data:` (one JSON object, x-event-data); " +
            "a heartbeat is a comment with the current cursor as `id:`; an error after the stream started is an `error` event " +
            "whose data is `{\"error\": {code, message, request_id}}`.",
        },
        "x-event-data": schemas.output(method.output),
      },
    };
  } else if (route.successCode !== 204) {
    const responseField = route.responseBody ? method.output.fields.find((f) => f.name === route.responseBody) : undefined;
    const schema = responseField ? schemas.fieldOutput(responseField, { nullable: false }) : schemas.output(method.output);
    success.content = { "application/json": { schema } };
  }
  responses[String(route.successCode)] = success;
  for (const [status, codes] of errorStatuses(route, errors, isPublic)) {
    // The envelope, narrowed to the codes this route answers with this status.
    const narrowed = { type: "object", properties: { error: { type: "object", properties: { code: { enum: codes }, status: { const: status } } } } };
    // The pipeline tells a client it may retry, and when: rate limits and an unavailable database.
    const retryAfter: Schema = codes.some((c) => c === "rate_limit_exceeded" || c === "unavailable") ? { "Retry-After": { $ref: "#/components/headers/Retry-After" } } : {};
    responses[String(status)] = {
      description: codes.map((c) => `\`${c}\``).join(", "),
      headers: { "X-Request-ID": { $ref: "#/components/headers/X-Request-ID" }, ...retryAfter },
      content: { "application/json": { schema: { allOf: [{ $ref: "#/components/schemas/Error" }, narrowed] } } },
    };
  }
  operation.responses = responses;
  return operation;
}

function successDescription(route: Route): string {
  if (route.method.methodKind === "server_streaming") return "The feed, as Server-Sent Events, until the client leaves or an error ends it.";
  if (route.successCode === 204) return "Done; no body.";
  const output = route.responseBody ? route.method.output.fields.find((f) => f.name === route.responseBody)?.message : route.method.output;
  return output ? firstSentence(commentOf(output)) || output.name : "OK";
}

/** Fields a query string can carry: scalars, enums, lists of them, and messages whose JSON is a string. */
function isQueryable(field: DescField): boolean {
  if (field.fieldKind === "map") return false;
  const message = field.message;
  return message === undefined || stringJsonTypes.has(message.typeName);
}

function parameterOf(field: DescField, where: "path" | "query", schemas: Schemas): Json {
  // The parameter carries the field's description; its schema keeps what the rules add.
  const { description, ...schema } = schemas.fieldInput(field);
  const rules = typeof description === "string" ? description.slice(commentOf(field).length).trim() : "";
  const parameter: Schema = {
    name: schemas.keyOf(field),
    in: where,
    description: [commentOf(field), rules].filter(Boolean).join(" "),
    required: where === "path" || isRequired(field, schemas.ext),
    schema,
  };
  if (field.fieldKind === "list") {
    parameter.style = "form";
    parameter.explode = true;
  }
  return parameter;
}

// ---------------------------------------------------------------------------------------------
// Errors.

const grpcCodeNames = new Map(
  Object.values(Code)
    .filter((v): v is Code => typeof v === "number")
    .map((code) => [Code[code].replace(/[A-Z]/g, (c, i) => (i === 0 ? c : `_${c}`)).toUpperCase(), code]),
);

/**
 * The error codes each RPC documents: those named in parentheses after a gRPC code in the `Errors:`
 * paragraph of its comment, plus those the service comment says every RPC may fail with. A gRPC
 * code named alone stands for its most general error code: the first the table gives it among those
 * the comments name (INVALID_ARGUMENT: invalid_request), else the table's first.
 */
function documentedErrors(service: DescService): Map<DescMethod, Set<ErrorCode>> {
  const serviceItems = errorItems(commentOf(service), /(?:Errors:|may also fail with)([\s\S]*?)(?:\.\s|\.$|\n\s*\n|$)/g);
  const methodItems = new Map(service.methods.map((m) => [m, errorItems(commentOf(m), /Errors:([\s\S]*?)(?:\n\s*\n|$)/g)]));
  const named = new Set([serviceItems, ...methodItems.values()].flat().flatMap((item) => item.reasons));
  const generalOf = (code: Code): ErrorCode[] => {
    const ofCode = errorCodes.filter((c) => errorTable[c].code === code);
    return [ofCode.find((c) => named.has(c)) ?? ofCode[0]].filter((c) => c !== undefined);
  };
  const expand = ({ code, reasons }: ErrorItem): ErrorCode[] => (reasons.length > 0 ? reasons : generalOf(code));
  return new Map(
    service.methods.map((m) => [m, new Set([...serviceItems, ...(methodItems.get(m) ?? [])].flatMap(expand))]),
  );
}

interface ErrorItem {
  code: Code;
  reasons: ErrorCode[];
}

const errorCodes = Object.keys(errorTable) as ErrorCode[];

/** `CODE (reason, reason: why)` items in the paragraphs `pattern` finds. */
function errorItems(comment: string, pattern: RegExp): ErrorItem[] {
  const items: ErrorItem[] = [];
  for (const [, paragraph = ""] of comment.matchAll(pattern)) {
    for (const [, name = "", inParens] of paragraph.matchAll(/\b([A-Z][A-Z_]+[A-Z])\b(?:\s*\(([^()]*)\))?/g)) {
      const code = grpcCodeNames.get(name);
      if (code === undefined) continue;
      const reasons = (inParens ?? "")
        .split(/[,;]/)
        .map((part) => /^\s*`?([a-z][a-z0-9_]*)/.exec(part)?.[1] ?? "")
        .filter((reason): reason is ErrorCode => reason in errorTable);
      items.push({ code, reasons });
    }
  }
  return items;
}

/**
 * The error responses of one route, by HTTP status: what its RPC documents, and what the REST
 * transport refuses before the RPC runs (src/transport/rest.ts): a malformed path, query or body
 * (invalid_request), headers (or a query string) over the server's limit, an over-long path
 * parameter, a body too large or not JSON, and a missing or unknown secret key.
 */
function errorStatuses(route: Route, documented: ReadonlySet<ErrorCode>, isPublic: boolean): [number, ErrorCode[]][] {
  // Any request's header block can outgrow the server's limit (a long query string too): 431.
  const codes = new Set<ErrorCode>(["invalid_request", "headers_too_large", ...documented]);
  if (!isPublic) codes.add("missing_token").add("invalid_api_key");
  if (route.pathFields.length > 0) codes.add("uri_too_long");
  if (route.body !== "") codes.add("payload_too_large").add("unsupported_media_type");
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of errorCodes) {
    if (!codes.has(code)) continue;
    const { status } = errorTable[code];
    byStatus.set(status, [...(byStatus.get(status) ?? []), code]);
  }
  return [...byStatus].sort(([a], [b]) => a - b);
}

function errorEnvelope(): Schema {
  return {
    type: "object",
    description: "Every error, whatever raised it, in one envelope; the request id is also the X-Request-ID header.",
    required: ["error"],
    properties: {
      error: {
        type: "object",
        required: ["code", "message", "status", "request_id"],
        properties: {
          code: { type: "string", enum: errorCodes, description: "A stable code to switch on." },
          message: { type: "string", description: "A human-readable explanation; not for parsing." },
          status: { type: "integer", enum: [...new Set(errorCodes.map((c) => errorTable[c].status))].sort(), description: "The HTTP status." },
          request_id: { type: "string", description: "The request's id: the caller's X-Request-ID when well-formed, else `req_…`." },
          field: { type: "string", description: "The request field or parameter a validation error is about, when there is one." },
        },
      },
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Schemas in the REST JSON dialect.

/** Well-known types whose JSON is a string (so they can be query parameters too). */
const stringJsonTypes = new Set(["google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"]);

const int64Scalars = new Set([ScalarType.INT64, ScalarType.UINT64, ScalarType.SINT64, ScalarType.FIXED64, ScalarType.SFIXED64]);
const unsignedScalars = new Set([ScalarType.UINT32, ScalarType.FIXED32, ScalarType.UINT64, ScalarType.FIXED64]);

interface Schemas {
  ext: Extensions;
  /** A request message as REST reads it (component schema reference). */
  input(message: DescMessage, options?: { exclude?: ReadonlySet<string> }): Schema;
  /** A response message as REST writes it (component schema reference). */
  output(message: DescMessage): Schema;
  fieldInput(field: DescField): Schema;
  fieldOutput(field: DescField, options?: { nullable?: boolean }): Schema;
  keyOf(field: DescField): string;
  components(): Record<string, Schema>;
}

function createSchemas(registry: FileRegistry, ext: Extensions): Schemas {
  const components: Record<string, Schema> = {};
  const names = new Map<string, string>();
  const keyOf = (field: DescField) => optionScalar(field, ext.restName, "") || field.name;

  /** A component name: the message's own name, its full name when two messages share one. */
  function nameOf(message: DescMessage, suffix: string): string {
    const key = `${message.typeName}${suffix}`;
    let name = names.get(key);
    if (name === undefined) {
      const short = `${message.name}${suffix}`;
      const taken = [...names.entries()].some(([k, v]) => v === short && k !== key) || registryHasTwo(registry, message.name);
      name = taken ? `${message.typeName}${suffix}` : short;
      names.set(key, name);
    }
    return name;
  }

  function reference(message: DescMessage, suffix: string, build: () => Schema): Schema {
    const own = ownJsonSchema(message);
    if (own) return own;
    const name = nameOf(message, suffix);
    if (!(name in components)) {
      components[name] = {}; // placeholder for recursive messages
      components[name] = build();
    }
    return { $ref: `#/components/schemas/${name}` };
  }

  function output(message: DescMessage): Schema {
    return reference(message, "", () => {
      const properties: Record<string, Json> = {};
      for (const field of message.fields) properties[keyOf(field)] = fieldOutput(field);
      return withDescription(
        { type: "object", required: message.fields.map(keyOf), properties },
        commentOf(message),
      );
    });
  }

  function input(message: DescMessage, { exclude }: { exclude?: ReadonlySet<string> } = {}): Schema {
    const fields = message.fields.filter((f) => !exclude?.has(f.name));
    const suffix = `${usedAsOutput.has(message.typeName) ? "Input" : ""}${fields.length < message.fields.length ? "Body" : ""}`;
    return reference(message, suffix, () => {
      const properties: Record<string, Json> = {};
      for (const field of fields) properties[keyOf(field)] = fieldInput(field);
      const required = fields.filter((f) => isRequired(f, ext)).map(keyOf);
      const schema: Schema = { type: "object", properties, additionalProperties: false };
      if (required.length > 0) schema.required = required;
      return withDescription(schema, [commentOf(message), messageRulesText(message, ext)].filter(Boolean).join("\n\n"));
    });
  }

  function fieldOutput(field: DescField, { nullable }: { nullable?: boolean } = {}): Schema {
    let schema: Schema;
    // An enum's zero value is written as null, in lists and maps too.
    const element = () => (field.enum ? orNull(elementOutput(field)) : elementOutput(field));
    if (field.fieldKind === "list") schema = { type: "array", items: element() };
    else if (field.fieldKind === "map") schema = { type: "object", additionalProperties: element() };
    else {
      schema = elementOutput(field);
      if (nullable ?? isNullableOutput(field)) schema = orNull(schema);
    }
    return annotate(schema, field, "output");
  }

  function elementOutput(field: DescField): Schema {
    if (field.message) return output(field.message);
    if (field.enum) return { type: "string", enum: enumNames(field.enum) };
    return scalarSchema(field.scalar as ScalarType, "output");
  }

  function fieldInput(field: DescField): Schema {
    const rules = fieldRulesOf(field, ext);
    let schema: Schema;
    if (field.fieldKind === "list") schema = { type: "array", items: elementInput(field, rules?.items) };
    else if (field.fieldKind === "map") schema = { type: "object", additionalProperties: elementInput(field, rules?.values) };
    else schema = elementInput(field, rules?.own);
    if (rules?.container) Object.assign(schema, rules.container);
    if (rules?.isRequired && field.fieldKind !== "list" && field.fieldKind !== "map") schema = notZero(schema, field);
    if (rules?.ignoreIfZero) schema = { anyOf: [zeroSchema(field), schema] };
    const described = annotate(schema, field, "input");
    return withText(described, rules?.text ?? []);
  }

  function elementInput(field: DescField, rules: Schema | undefined): Schema {
    let schema: Schema;
    if (field.message) schema = input(field.message);
    else if (field.enum) {
      const allowed = enumNames(field.enum).filter((name) => !rules?.notIn || !(rules.notIn as string[]).includes(name));
      schema = { type: "string", enum: rules?.in ? allowed.filter((n) => (rules.in as string[]).includes(n)) : allowed };
      return schema;
    } else schema = scalarSchema(field.scalar as ScalarType, "input");
    if (!rules) return schema;
    const { in: _in, notIn: _notIn, ...keywords } = rules;
    return Object.keys(keywords).length === 0 ? schema : field.message && !ownJsonSchema(field.message) ? { allOf: [schema, keywords] } : { ...schema, ...keywords };
  }

  function annotate(schema: Schema, field: DescField, direction: "input" | "output"): Schema {
    const behaviors = fieldBehaviorsOf(field, ext);
    const out = withDescription(schema, commentOf(field));
    if (behaviors.has("OUTPUT_ONLY")) out.readOnly = true;
    if (behaviors.has("INPUT_ONLY")) out.writeOnly = true;
    if (behaviors.has("IMMUTABLE") && direction === "output") out.description = [out.description, "Set when the resource is created; never changes."].filter(Boolean).join(" ");
    return out;
  }

  // Messages read from requests that are also written in responses get a second, input schema.
  const usedAsOutput = new Set<string>();
  const collectOutputs = (message: DescMessage) => {
    if (usedAsOutput.has(message.typeName)) return;
    usedAsOutput.add(message.typeName);
    for (const field of message.fields) if (field.message) collectOutputs(field.message);
  };
  for (const file of registry.files) for (const service of file.services) for (const m of service.methods) collectOutputs(m.output);

  return {
    ext,
    input,
    output,
    fieldInput,
    fieldOutput,
    keyOf,
    components: () => components,
  };
}

function registryHasTwo(registry: FileRegistry, name: string): boolean {
  let count = 0;
  for (const file of registry.files) {
    const walk = (messages: readonly DescMessage[]) => {
      for (const m of messages) {
        if (m.name === name) count++;
        walk(m.nestedMessages);
      }
    };
    walk(file.messages);
  }
  return count > 1;
}

/** How REST writes a field: null when unset (messages, oneof members, explicit presence) and for an enum's zero. */
function isNullableOutput(field: DescField): boolean {
  if (field.message || field.enum || field.oneof) return true;
  return field.presence === FeatureSet_FieldPresence.EXPLICIT && field.parent.file.edition === Edition.EDITION_PROTO3;
}

function orNull(schema: Schema): Schema {
  if (typeof schema.type === "string" && !("$ref" in schema)) {
    const out: Schema = { ...schema, type: [schema.type, "null"] };
    if (Array.isArray(schema.enum)) out.enum = [...schema.enum, null];
    return out;
  }
  return { anyOf: [schema, { type: "null" }] };
}

/** An enum's values as REST spells them: lower-case, without the shared prefix; the zero value is "not set". */
function enumNames(desc: DescEnum): string[] {
  return desc.values.filter((v) => v.number !== 0).map((v) => shortName(desc, v.name));
}

function shortName(desc: DescEnum, name: string): string {
  return name.toLowerCase().slice(desc.sharedPrefix?.length ?? 0);
}

function scalarSchema(scalar: ScalarType, direction: "input" | "output"): Schema {
  switch (scalar) {
    case ScalarType.STRING:
      return { type: "string" };
    case ScalarType.BOOL:
      return { type: "boolean" };
    case ScalarType.BYTES:
      return { type: "string", contentEncoding: "base64" };
    case ScalarType.FLOAT:
    case ScalarType.DOUBLE:
      return { anyOf: [{ type: "number" }, { type: "string", enum: ["NaN", "Infinity", "-Infinity"] }] };
    default:
      if (int64Scalars.has(scalar)) {
        const pattern = unsignedScalars.has(scalar) ? "^[0-9]+$" : "^-?[0-9]+$";
        // Written as a decimal string; read from a string or a number, as proto3 JSON is.
        const format = unsignedScalars.has(scalar) ? "uint64" : "int64";
        return direction === "output" ? { type: "string", pattern, format } : { type: ["string", "integer"], pattern, format };
      }
      return unsignedScalars.has(scalar)
        ? { type: "integer", format: "uint32", minimum: 0, maximum: 4294967295 }
        : { type: "integer", format: "int32", minimum: -2147483648, maximum: 2147483647 };
  }
}

/** The JSON Schema of a well-known type whose JSON is not an object of its fields. */
function ownJsonSchema(message: DescMessage): Schema | undefined {
  switch (message.typeName) {
    case "google.protobuf.Timestamp":
      return { type: "string", format: "date-time", description: "RFC 3339 (responses: UTC, `Z`)." };
    case "google.protobuf.Duration":
      return { type: "string", pattern: "^-?[0-9]+(\\.[0-9]{1,9})?s$", description: "Seconds with an `s` suffix, e.g. `1.5s`." };
    case "google.protobuf.FieldMask":
      return { type: "string", description: "Comma-separated field paths." };
    case "google.protobuf.Struct":
      return { type: "object" };
    case "google.protobuf.ListValue":
      return { type: "array" };
    case "google.protobuf.Value":
      return {};
    case "google.protobuf.Any":
      return { type: "object", required: ["@type"], properties: { "@type": { type: "string" } } };
  }
  const wrapped = /^google\.protobuf\.(Bool|Bytes|Double|Float|Int32|Int64|String|UInt32|UInt64)Value$/.exec(message.typeName)?.[1];
  if (wrapped === undefined) return undefined;
  const scalar = message.fields[0]?.scalar;
  return scalar === undefined ? {} : scalarSchema(scalar, "output");
}

// ---------------------------------------------------------------------------------------------
// google.api.field_behavior and buf.validate.

function fieldBehaviorsOf(field: DescField, ext: Extensions): Set<string> {
  const extension = ext.fieldBehavior;
  if (!extension?.enum || !hasOption(field as never, extension as never)) return new Set();
  const values = getOption(field as never, extension as never) as number[] | number;
  const desc = extension.enum;
  return new Set([values].flat().map((n) => desc.values.find((v) => v.number === n)?.name ?? String(n)));
}

function isRequired(field: DescField, ext: Extensions): boolean {
  return fieldBehaviorsOf(field, ext).has("REQUIRED") || fieldRulesOf(field, ext)?.isRequired === true;
}

interface FieldRules {
  isRequired: boolean;
  ignoreIfZero: boolean;
  /** Keywords for a singular field's value. */
  own?: Schema;
  /** Keywords for a list's items or a map's values. */
  items?: Schema;
  values?: Schema;
  /** Keywords on the list or map itself (minItems, …). */
  container?: Schema;
  /** What JSON Schema cannot say, as sentences. */
  text: string[];
}

function fieldRulesOf(field: DescField, ext: Extensions): FieldRules | undefined {
  const rules = optionMessage(field, ext.fieldRules);
  return rules ? readFieldRules(rules, field, ext) : undefined;
}

function readFieldRules(rules: ReflectMessage, field: DescField | undefined, ext: Extensions): FieldRules {
  const set = setFields(rules);
  const ignore = set.get("ignore");
  const ignoreName = typeof ignore === "number" ? rules.desc.fields.find((f) => f.name === "ignore")?.enum?.values.find((v) => v.number === ignore)?.name : undefined;
  const out: FieldRules = {
    isRequired: set.get("required") === true,
    ignoreIfZero: ignoreName === "IGNORE_IF_ZERO_VALUE" || ignoreName === "IGNORE_IF_UNPOPULATED" || ignoreName === "IGNORE_IF_DEFAULT_VALUE",
    text: celText(set.get("cel")),
  };
  if (ignoreName === "IGNORE_ALWAYS") return { isRequired: false, ignoreIfZero: false, text: [] };
  const typeOneof = rules.desc.oneofs.find((o) => o.name === "type");
  const chosen = typeOneof && rules.oneofCase(typeOneof);
  if (!chosen) return out;
  const typed = rules.get(chosen) as ReflectMessage;
  const typedSet = setFields(typed);
  out.text.push(...predefinedText(typed, ext));
  switch (chosen.name) {
    case "repeated": {
      out.container = pick(typedSet, { min_items: "minItems", max_items: "maxItems", unique: "uniqueItems" });
      const items = typedSet.get("items");
      if (isReflectMessage(items)) {
        const inner = readFieldRules(items, undefined, ext);
        out.items = inner.own;
        out.text.push(...inner.text.map((t) => `Each item: ${t}`));
      }
      return out;
    }
    case "map": {
      out.container = pick(typedSet, { min_pairs: "minProperties", max_pairs: "maxProperties" });
      const values = typedSet.get("values");
      if (isReflectMessage(values)) {
        const inner = readFieldRules(values, undefined, ext);
        out.values = inner.own;
        out.text.push(...inner.text.map((t) => `Each value: ${t}`));
      }
      const keys = typedSet.get("keys");
      if (isReflectMessage(keys)) {
        const inner = readFieldRules(keys, undefined, ext);
        if (inner.own) out.container = { ...out.container, propertyNames: inner.own };
      }
      return out;
    }
    case "enum": {
      const desc = field?.enum;
      const name = (n: unknown) => (desc ? shortNameOf(desc, Number(n)) : String(n));
      out.own = {};
      if (typedSet.has("const")) out.own.in = [name(typedSet.get("const"))];
      if (typedSet.has("in")) out.own.in = (typedSet.get("in") as unknown[]).map(name);
      if (typedSet.has("not_in")) out.own.notIn = (typedSet.get("not_in") as unknown[]).map(name);
      return out;
    }
    case "string":
      out.own = stringKeywords(typedSet, out.text);
      return out;
    case "bytes":
    case "timestamp":
    case "duration":
    case "any":
    case "field_mask":
      out.text.push(...describeRules(chosen.name, typedSet));
      return out;
    default:
      // bool and every number type share their rules' names.
      out.own = numberKeywords(typedSet, out.text);
      return out;
  }
}

function shortNameOf(desc: DescEnum, number: number): string {
  const value = desc.values.find((v) => v.number === number);
  return value ? shortName(desc, value.name) : String(number);
}

function stringKeywords(set: Map<string, unknown>, text: string[]): Schema {
  const schema: Schema = {};
  const patterns: string[] = [];
  for (const [name, value] of set) {
    switch (name) {
      case "const":
        schema.const = value as string;
        break;
      case "len":
        schema.minLength = Number(value);
        schema.maxLength = Number(value);
        break;
      case "min_len":
        schema.minLength = Number(value);
        break;
      case "max_len":
        schema.maxLength = Number(value);
        break;
      case "pattern":
        patterns.push(value as string);
        break;
      case "prefix":
        patterns.push(`^${escapeRegExp(value as string)}`);
        break;
      case "suffix":
        patterns.push(`${escapeRegExp(value as string)}$`);
        break;
      case "contains":
        patterns.push(escapeRegExp(value as string));
        break;
      case "in":
        schema.enum = value as string[];
        break;
      case "not_in":
        schema.not = { enum: value as string[] };
        break;
      case "email":
      case "hostname":
      case "uri":
      case "uuid":
      case "ipv4":
      case "ipv6":
        if (value === true) schema.format = name === "hostname" ? "hostname" : name;
        break;
      case "uri_ref":
        if (value === true) schema.format = "uri-reference";
        break;
      case "ip":
        if (value === true) schema.anyOf = [{ type: "string", format: "ipv4" }, { type: "string", format: "ipv6" }];
        break;
      default:
        text.push(...describeRules("string", new Map([[name, value]])));
    }
  }
  if (patterns.length === 1) schema.pattern = patterns[0] as string;
  else if (patterns.length > 1) schema.allOf = patterns.map((pattern) => ({ pattern }));
  return schema;
}

function numberKeywords(set: Map<string, unknown>, text: string[]): Schema {
  const schema: Schema = {};
  const num = (v: unknown) => (typeof v === "bigint" ? Number(v) : (v as number));
  for (const [name, value] of set) {
    switch (name) {
      case "const":
        schema.const = typeof value === "boolean" ? value : num(value);
        break;
      case "gt":
        schema.exclusiveMinimum = num(value);
        break;
      case "gte":
        schema.minimum = num(value);
        break;
      case "lt":
        schema.exclusiveMaximum = num(value);
        break;
      case "lte":
        schema.maximum = num(value);
        break;
      case "in":
        schema.enum = (value as unknown[]).map(num);
        break;
      case "not_in":
        schema.not = { enum: (value as unknown[]).map(num) };
        break;
      default:
        text.push(...describeRules("number", new Map([[name, value]])));
    }
  }
  // A lower bound above the upper one means "outside the range" in buf.validate.
  const low = (schema.minimum ?? schema.exclusiveMinimum) as number | undefined;
  const high = (schema.maximum ?? schema.exclusiveMaximum) as number | undefined;
  if (low !== undefined && high !== undefined && low > high) {
    const lower: Schema = "minimum" in schema ? { minimum: low } : { exclusiveMinimum: low };
    const upper: Schema = "maximum" in schema ? { maximum: high } : { exclusiveMaximum: high };
    for (const key of ["minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"]) delete schema[key];
    schema.anyOf = [lower, upper];
  }
  return schema;
}

const comparisons: Record<string, string> = { gt: "after", gte: "at or after", lt: "before", lte: "at or before", const: "exactly" };

function describeRules(kind: string, set: Map<string, unknown>): string[] {
  return [...set].map(([name, value]) =>
    (kind === "timestamp" || kind === "duration") && name in comparisons ? `${comparisons[name]} ${formatValue(value)}` : `${kind} rule ${name}: ${formatValue(value)}`,
  );
}

function formatValue(value: unknown): string {
  if (isReflectMessage(value)) {
    if (value.desc.typeName === "google.protobuf.Timestamp") {
      const seconds = value.get(value.desc.fields[0] as DescField) as bigint;
      const nanos = value.get(value.desc.fields[1] as DescField) as number;
      return new Date(Number(seconds) * 1000 + Math.floor(nanos / 1e6)).toISOString();
    }
    return `{${[...setFields(value)].map(([k, v]) => `${k}: ${formatValue(v)}`).join(", ")}}`;
  }
  if (Array.isArray(value)) return `[${value.map(formatValue).join(", ")}]`;
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

/** The messages of CEL rules (buf.validate.Rule: id, message, expression). */
function celText(rules: unknown): string[] {
  if (!Array.isArray(rules)) return [];
  return rules.filter((rule): rule is ReflectMessage => isReflectMessage(rule)).map((rule) => {
    const set = setFields(rule);
    return String(set.get("message") ?? set.get("expression") ?? set.get("id") ?? "");
  }).filter(Boolean);
}

/** Predefined rules set on a rules message: their CEL rules' messages, from the extension's options. */
function predefinedText(typed: ReflectMessage, ext: Extensions): string[] {
  const text: string[] = [];
  for (const extension of ext.predefinedRules.get(typed.desc.typeName) ?? []) {
    if (!hasExtensionSet(typed, extension)) continue;
    // Its rules' messages, or the extension's own comment when a rule builds its message itself.
    const predefined = optionMessage(extension as unknown as DescField, ext.predefined);
    const rules = predefined ? (setFields(predefined).get("cel") as unknown[] | undefined) ?? [] : [];
    const messages = rules.filter((rule): rule is ReflectMessage => isReflectMessage(rule)).map((rule) => setFields(rule).get("message"));
    const comment = firstParagraph(commentOf(extension as unknown as DescField));
    if (messages.length > 0 && messages.every((m) => typeof m === "string" && m !== "")) text.push(...(messages as string[]));
    else text.push(comment || extension.name);
  }
  return text;
}

function hasExtensionSet(message: ReflectMessage, extension: DescExtension): boolean {
  return (message.getUnknown() ?? []).some((u) => u.no === extension.number);
}

/** A message's rules when they apply to the whole message (buf.validate.message: oneof, cel), as sentences. */
function messageRulesText(message: DescMessage, ext: Extensions): string {
  const rules = optionMessage(message, ext.messageRules);
  if (!rules) return "";
  const set = setFields(rules);
  const text = celText(set.get("cel"));
  for (const oneof of (set.get("oneof") as unknown[] | undefined) ?? []) {
    if (!isReflectMessage(oneof)) continue;
    const o = setFields(oneof);
    const names = (o.get("fields") as string[] | undefined) ?? [];
    const fields = names.map((f) => `\`${f}\``).join(", ");
    // A bool that REST sets when the request leaves out another field (implied_over_rest_without)
    // makes "exactly one" "at most one" over REST.
    const implied = message.fields.find((f) => names.includes(f.name) && names.includes(optionScalar(f, ext.impliedOverRestWithout, "")));
    if (o.get("required") === true && implied) text.push(`At most one of ${fields} may be given; with none, \`${implied.name}\` is true.`);
    else text.push(o.get("required") === true ? `Exactly one of ${fields} must be given.` : `At most one of ${fields} may be given.`);
  }
  return text.join(" ");
}

/** The fields set on a reflected message, by proto name: scalars as values, lists as arrays. */
function setFields(message: ReflectMessage): Map<string, unknown> {
  const out = new Map<string, unknown>();
  for (const field of message.fields) {
    if (!message.isSet(field)) continue;
    const value = message.get(field);
    out.set(field.name, isReflectList(value) ? [...(value as ReflectList)] : value);
  }
  return out;
}

function pick(set: Map<string, unknown>, names: Record<string, string>): Schema {
  const schema: Schema = {};
  for (const [from, to] of Object.entries(names)) {
    const value = set.get(from);
    if (value !== undefined) schema[to] = typeof value === "bigint" ? Number(value) : (value as Json);
  }
  return schema;
}

/** A required field must not be its zero value either ("" is not a token). */
function notZero(schema: Schema, field: DescField): Schema {
  if (field.scalar === ScalarType.STRING && schema.type === "string" && schema.minLength === undefined) return { ...schema, minLength: 1 };
  if (field.scalar === ScalarType.BOOL) return { ...schema, const: true };
  if (field.scalar !== undefined && field.scalar !== ScalarType.STRING && field.scalar !== ScalarType.BYTES) return { ...schema, not: { const: 0 } };
  return schema;
}

function zeroSchema(field: DescField): Schema {
  if (field.enum) return { type: "string", const: shortNameOf(field.enum, 0) };
  switch (field.scalar) {
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return { type: "string", const: "" };
    case ScalarType.BOOL:
      return { type: "boolean", const: false };
    case undefined:
      return { type: "null" };
    default:
      return { const: 0 };
  }
}

// ---------------------------------------------------------------------------------------------
// Comments and small helpers.

function commentOf(desc: DescService | DescMethod | DescMessage | DescField | DescExtension): string {
  const leading = getComments(desc).leading ?? "";
  return leading
    .split("\n")
    .map((line) => line.replace(/^ /, "").trimEnd())
    .join("\n")
    .trim();
}

function firstParagraph(text: string): string {
  return text.split(/\n\s*\n/)[0]?.replace(/\n/g, " ") ?? "";
}

function firstSentence(text: string): string {
  const paragraph = firstParagraph(text);
  return /^(.*?\.)(\s|$)/.exec(paragraph)?.[1] ?? paragraph;
}

function withDescription(schema: Schema, description: string): Schema {
  if (!description) return schema;
  // A $ref cannot be described in place by every tool: wrap it.
  if ("$ref" in schema) return { allOf: [schema], description };
  return { ...schema, description: [description, schema.description].filter(Boolean).join(" ") };
}

function withText(schema: Schema, text: string[]): Schema {
  if (text.length === 0) return schema;
  const rules = `Rules: ${text.join("; ")}.`;
  return { ...schema, description: [schema.description, rules].filter(Boolean).join(" ") };
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function sortedKeys<T>(record: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.entries(record).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

function versionOf(services: DescService[]): string {
  const versions = new Set(services.map((s) => /\.(v\d+\w*)$/.exec(s.file.proto.package)?.[1] ?? s.file.proto.package));
  return [...versions].join(", ") || "0";
}

const plugin: Plugin = {
  name: "protoc-gen-openapi",
  version: "v1",
  run(request: CodeGeneratorRequest) {
    const { name, content } = generateOpenApi(request);
    return create(CodeGeneratorResponseSchema, {
      supportedFeatures: BigInt(CodeGeneratorResponse_Feature.PROTO3_OPTIONAL | CodeGeneratorResponse_Feature.SUPPORTS_EDITIONS),
      minimumEdition: Edition.EDITION_PROTO2,
      maximumEdition: Edition.EDITION_2023,
      file: [{ name, content }],
    });
  },
};

// Run as a protoc plugin; imported (by a test), it only exports generateOpenApi.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) runNodeJs(plugin);
