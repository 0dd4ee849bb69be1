import { gunzipSync } from "node:zlib";
import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import { fromBinary, fromJson, toBinary, toJson, type DescMethod, type Message } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import type { ConnectError } from "@connectrpc/connect";
import { codeToHttpStatus, errorToJsonBytes, parseTimeout as parseConnectTimeout } from "@connectrpc/connect/protocol-connect";
import { parseTimeout as parseGrpcTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { trailerFlag, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { honouredTimeoutMs } from "../domain/call-context.js";
import { AppError } from "../domain/errors.js";
import { toConnectError } from "./error-codes.js";
import { isFieldLike, withoutUnsafeNames } from "./field-names.js";
import { callInfoOf, type CallInfo, type PipelineMethod } from "./pipeline.js";
import { invalidQuery, isInvalidQuery } from "./rest.js";
import { parseStrictJson } from "./strict-json.js";

/**
 * The unary RPC protocols, lean: gRPC (HTTP/2), gRPC-Web and the Connect protocol (POST, and GET for
 * RPCs without side effects) on each method's path `/pkg.Service/Method`, told apart by content
 * type, every call run through the pipeline. Written for unary calls only (streaming RPCs such as
 * health Watch and reflection are served by connect-es, rpc-routes.ts), so that a call costs what it
 * must: read the body, decode, run, encode, answer; wire formats (error JSON, trailers, status codes,
 * timeouts) come from connect-es's protocol modules.
 *
 * Decisions: an undecodable request is INVALID_ARGUMENT (connect-es says INTERNAL, as if the server
 * were at fault); a request over the body limit is `payload_too_large`, INVALID_ARGUMENT (the Connect
 * protocol's fixed mapping would send RESOURCE_EXHAUSTED as HTTP 429, which clients read as rate
 * limiting); an unsupported compression is UNIMPLEMENTED with the encodings that are (gzip, identity).
 */
export interface RpcOptions {
  methods: ReadonlyMap<string, PipelineMethod>;
  /** Largest request message, after decompression. */
  readMaxBytes: number;
}

type Codec = "proto" | "json";
interface Protocol {
  name: "grpc" | "grpcweb" | "connect";
  codec: Codec;
}

const grpcContentType = /^application\/grpc(-web)?(?:\+(proto|json))?(?:;.*)?$/i;
const connectContentType = /^application\/(json|proto)(?:;\s*charset=utf-?8)?$/i;
const acceptedEncodings = "gzip,identity";

export function registerRpcUnary(app: FastifyInstance, opts: RpcOptions): void {
  app.register(async (scope) => {
    // The adapters read their bodies themselves, with the limit and the protocol's own errors.
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser("*", (_request, _payload, done) => done(null, undefined));
    for (const [path, method] of opts.methods) {
      const isIdempotent = method.method.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS;
      scope.route({ method: isIdempotent ? ["GET", "POST"] : "POST", url: path, handler: (request, reply) => serve(opts, method, request, reply) });
    }
  });
}

async function serve(opts: RpcOptions, target: PipelineMethod, request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
  const contentType = request.headers["content-type"] ?? "";
  const grpc = request.method === "POST" ? grpcContentType.exec(contentType) : null;
  if (grpc !== null) {
    const protocol: Protocol = { name: grpc[1] ? "grpcweb" : "grpc", codec: grpc[2]?.toLowerCase() === "json" ? "json" : "proto" };
    return serveGrpc(opts, target, protocol, request, reply);
  }
  if (request.method === "GET") return serveConnect(opts, target, { name: "connect", codec: "json" }, request, reply);
  const connect = connectContentType.exec(contentType);
  if (connect === null) {
    return reply.code(415).header("accept-post", "application/json, application/proto, application/grpc, application/grpc-web").send();
  }
  return serveConnect(opts, target, { name: "connect", codec: connect[1]?.toLowerCase() === "json" ? "json" : "proto" }, request, reply);
}

/** gRPC and gRPC-Web: one length-prefixed message in, one out, the status in trailers. */
async function serveGrpc(opts: RpcOptions, target: PipelineMethod, protocol: Protocol, request: FastifyRequest, reply: FastifyReply) {
  const isWeb = protocol.name === "grpcweb";
  const responseType = `application/${isWeb ? "grpc-web" : "grpc"}+${protocol.codec}`;
  const respond = (status: ConnectError | undefined, message?: Uint8Array, info?: CallInfo) => {
    const trailer = new Headers();
    setTrailerStatus(trailer, status);
    if (status === undefined) trailer.set("grpc-status", "0");
    reply.code(200).header("content-type", responseType).header("grpc-accept-encoding", acceptedEncodings);
    for (const [key, value] of info?.responseHeaders ?? []) reply.header(key, value);
    const frames = message === undefined ? [] : [frame(0, message)];
    if (isWeb) return reply.send(Buffer.concat([...frames, frame(trailerFlag, trailerSerialize(trailer))]));
    // Plain gRPC puts the status in HTTP/2 trailers.
    trailer.forEach((value, key) => void reply.trailer(key, async () => value));
    return reply.send(Buffer.concat(frames));
  };
  if (!isWeb && request.raw.httpVersionMajor !== 2) {
    return reply.code(505).header("content-type", "text/plain").send("gRPC needs HTTP/2 (or use gRPC-Web or the Connect protocol)");
  }
  // Any well-formed timeout is accepted; the call gets at most maxDeadlineMs (honouredTimeoutMs).
  const timeout = parseGrpcTimeout(request.headers["grpc-timeout"] as string | null ?? null, Number.POSITIVE_INFINITY);
  const encoding = String(request.headers["grpc-encoding"] ?? "identity").toLowerCase();
  try {
    if (timeout.error) throw new AppError("invalid_request", "the grpc-timeout header is malformed");
    if (encoding !== "identity" && encoding !== "gzip") {
      return respond(toConnectError(new AppError("unsupported_encoding", `unsupported grpc-encoding "${encoding}"; accepted: ${acceptedEncodings}`)), undefined);
    }
    const body = await readBody(request.raw, opts.readMaxBytes + 5 * 2);
    const message = singleMessage(body, encoding, opts.readMaxBytes);
    const info = callInfoOf(request, reply, protocol.name, timeout.timeoutMs);
    try {
      const output = await withDeadline(target.run(decode(target.method, message, protocol.codec), info), timeout.timeoutMs);
      return respond(undefined, encode(target.method, output, protocol.codec), info);
    } catch (err) {
      return respond(toConnectError(err), undefined, info);
    }
  } catch (err) {
    return respond(toConnectError(err), undefined);
  }
}

/** The Connect protocol, unary: the message is the body (or, for GET, in the query); errors as JSON with an HTTP status. */
async function serveConnect(opts: RpcOptions, target: PipelineMethod, protocol: Protocol, request: FastifyRequest, reply: FastifyReply) {
  const respondError = (err: unknown, info?: CallInfo) => {
    const error = toConnectError(err);
    for (const [key, value] of info?.responseHeaders ?? []) reply.header(key, value);
    return reply.code(codeToHttpStatus(error.code)).header("content-type", "application/json").send(Buffer.from(errorToJsonBytes(error, {})));
  };
  const timeout = parseConnectTimeout(request.headers["connect-timeout-ms"] as string | null ?? null, Number.POSITIVE_INFINITY);
  try {
    if (timeout.error) throw new AppError("invalid_request", "the connect-timeout-ms header is malformed");
    const version = request.headers["connect-protocol-version"];
    if (version !== undefined && version !== "1") throw new AppError("invalid_request", `connect-protocol-version ${String(version)} is not supported`);
    let codec = protocol.codec;
    let message: Uint8Array;
    if (request.method === "GET") {
      ({ codec, message } = getMessage(request, opts.readMaxBytes));
    } else {
      const encoding = String(request.headers["content-encoding"] ?? "identity").toLowerCase();
      if (encoding !== "identity" && encoding !== "gzip") {
        reply.header("accept-encoding", acceptedEncodings);
        return respondError(new AppError("unsupported_encoding", `unsupported content-encoding "${encoding}"; accepted: ${acceptedEncodings}`));
      }
      const body = await readBody(request.raw, opts.readMaxBytes);
      message = encoding === "gzip" ? gunzip(body, opts.readMaxBytes) : body;
    }
    const info = callInfoOf(request, reply, "connect", timeout.timeoutMs);
    try {
      const output = await withDeadline(target.run(decode(target.method, message, codec), info), timeout.timeoutMs);
      for (const [key, value] of info.responseHeaders) reply.header(key, value);
      return reply.code(200).header("content-type", `application/${codec}`).send(Buffer.from(encode(target.method, output, codec)));
    } catch (err) {
      return respondError(err, info);
    }
  } catch (err) {
    return respondError(err);
  }
}

/** GET /pkg.Service/Method?connect=v1&encoding=json|proto&message=…[&base64=1][&compression=gzip] */
function getMessage(request: FastifyRequest, readMaxBytes: number): { codec: Codec; message: Uint8Array } {
  const query = request.query as Record<string, string | string[] | undefined>;
  if (isInvalidQuery(query)) throw invalidQuery();
  const one = (name: string) => {
    const value = query[name];
    if (Array.isArray(value)) throw new AppError("invalid_request", `the query parameter ${name} is given more than once`, name);
    return value;
  };
  const encoding = one("encoding");
  if (encoding !== "json" && encoding !== "proto") throw new AppError("invalid_request", "encoding must be json or proto", "encoding");
  const compression = one("compression") ?? "identity";
  if (compression !== "identity" && compression !== "gzip") throw new AppError("invalid_request", `unsupported compression "${compression}"`, "compression");
  const raw = one("message") ?? "";
  const bytes = one("base64") === "1" ? Buffer.from(raw, "base64url") : Buffer.from(raw, "utf8");
  return { codec: encoding, message: compression === "gzip" ? gunzip(bytes, readMaxBytes) : bytes };
}

/** Resolves with `work`, or rejects with deadline_exceeded once the client's deadline has passed. */
function withDeadline<T>(work: Promise<T>, timeoutMs: number | undefined): Promise<T> {
  if (timeoutMs === undefined) return work;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new AppError("deadline_exceeded", "the call's deadline passed")), honouredTimeoutMs(timeoutMs));
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

/** The request body, or payload_too_large once more than `limit` bytes came. */
function readBody(raw: IncomingMessage | Http2ServerRequest, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    raw.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        raw.removeAllListeners("data");
        raw.resume();
        reject(tooLarge());
      } else {
        chunks.push(chunk);
      }
    });
    raw.once("end", () => resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks)));
    raw.once("error", () => reject(new AppError("cancelled", "the client went away")));
  });
}

const tooLarge = () => new AppError("payload_too_large", "the request message is too large");

function gunzip(bytes: Uint8Array, limit: number): Buffer {
  try {
    return gunzipSync(bytes, { maxOutputLength: limit });
  } catch (err) {
    if ((err as { code?: string }).code === "ERR_BUFFER_TOO_LARGE" || err instanceof RangeError) throw tooLarge();
    throw new AppError("invalid_request", "the request is not valid gzip");
  }
}

/** The one message of a unary gRPC request body: exactly one length-prefixed frame. */
function singleMessage(body: Buffer, encoding: string, limit: number): Uint8Array {
  if (body.length < 5) throw new AppError("invalid_request", "a unary call needs exactly one request message; none came");
  const flags = body[0] as number;
  const length = body.readUInt32BE(1);
  if ((flags & ~1) !== 0) throw new AppError("invalid_request", "the request message has an invalid frame flag");
  if (5 + length !== body.length) {
    throw new AppError("invalid_request", 5 + length > body.length ? "the request message is truncated" : "a unary call takes exactly one request message");
  }
  const message = body.subarray(5);
  if ((flags & 1) === 0) {
    if (message.length > limit) throw tooLarge();
    return message;
  }
  if (encoding === "identity") throw new AppError("invalid_request", "a compressed message needs grpc-encoding");
  return gunzip(message, limit);
}

function frame(flags: number, message: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + message.length);
  out[0] = flags;
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

/** Any request that does not decode is the client's error: INVALID_ARGUMENT, never INTERNAL. */
function decode(method: DescMethod, bytes: Uint8Array, codec: Codec): Message {
  if (codec === "json") {
    // Strict as REST is: UTF-8 only, no key twice, no unknown field.
    const json = parseStrictJson(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    try {
      return fromJson(method.input, json as never, { ignoreUnknownFields: false });
    } catch (err) {
      const message = withoutUnsafeNames((err as Error).message);
      throw new AppError("invalid_request", message, decodedFieldOf(message));
    }
  }
  try {
    return fromBinary(method.input, bytes, { readUnknownFields: false });
  } catch (err) {
    throw new AppError("invalid_request", `cannot decode ${method.input.typeName}: ${(err as Error).message}`);
  }
}

/**
 * The field a protobuf-es JSON decode error is about, when it names one: `cannot decode field
 * <message>.<field> from JSON: …` (a wrong type, a field set under both its names) or `key "<field>" is
 * unknown` (already cleared of names that are not field-like). Then the error carries it, as REST's
 * does, and RPC callers get a one-violation BadRequest.
 */
function decodedFieldOf(message: string): string | undefined {
  const field = /^cannot decode field [\w.]+\.(\w+) from JSON/.exec(message)?.[1] ?? /key "(\w+)" is unknown/.exec(message)?.[1];
  return field !== undefined && isFieldLike(field) ? field : undefined;
}

function encode(method: DescMethod, message: Message, codec: Codec): Uint8Array {
  return codec === "json" ? Buffer.from(JSON.stringify(toJson(method.output, message))) : toBinary(method.output, message);
}
