import { create, getOption, type DescMethod, type DescService, type Message, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from "fastify";
import { is_public, no_store } from "../../gen/sessions/v1/options_pb.js";
import { requireTenantId, type Authenticator, type Caller } from "../domain/api-keys.js";
import { throwIfCancelled, withCall, type CancelSignal } from "../domain/call-context.js";
import { AppError } from "../domain/errors.js";
import type { Metrics } from "./metrics.js";
import { tierOf, type RateLimits, type Tier } from "./rate-limits.js";
import { createRequestValidator } from "./validation.js";

/** The protocols that carry unary calls, each with its own adapter (REST, gRPC, gRPC-Web, Connect). */
export type Protocol = "rest" | "grpc" | "grpcweb" | "connect";

/** What a protocol adapter knows of a call before the pipeline runs it. */
export interface CallInfo {
  protocol: Protocol;
  /**
   * A request header (or gRPC metadata entry) by lower-case name; null when absent. A header sent
   * more than once is every value joined with ", " (RFC 9110 §5.3), so two Authorization headers
   * read as one malformed credential, never as the first of them.
   */
  header(name: string): string | null;
  clientIp: string;
  /** The client's deadline in ms from now (grpc-timeout, connect-timeout-ms); undefined without one. */
  timeoutMs: number | undefined;
  /** True once the client has gone away (a reset stream, a closed connection). */
  readonly signal: CancelSignal;
  /** Headers the response carries, errors included (rate limits, no-store, Retry-After). */
  responseHeaders: Map<string, string>;
}

/** A call as handlers see it: the adapter's description plus the authenticated caller. */
export interface Call extends CallInfo {
  method: DescMethod;
  caller: Caller;
}

type MethodsOfKind<S extends DescService, Kind extends string> = {
  [K in keyof S["method"]]: S["method"][K]["methodKind"] extends Kind ? K : never;
}[keyof S["method"]];

/**
 * One handler per RPC: convert in, call the domain, convert out. A unary RPC's resolves with its
 * response; a server-streaming RPC's resolves, once the stream can start (errors before that are
 * the call's errors), with the messages to send until it ends.
 */
export type Handlers<S extends DescService> = {
  [K in MethodsOfKind<S, "unary">]: (request: MessageShape<S["method"][K]["input"]>, call: Call) => Promise<MessageInitShape<S["method"][K]["output"]>>;
} & {
  [K in MethodsOfKind<S, "server_streaming">]: (
    request: MessageShape<S["method"][K]["input"]>,
    call: Call,
  ) => Promise<AsyncIterable<MessageInitShape<S["method"][K]["output"]>>>;
};

export interface PipelineDeps {
  authenticator: Authenticator;
  log: FastifyBaseLogger;
  metrics: Metrics;
  rateLimits: RateLimits;
}

/** What a method's options say about who may call it and which rate-limit budget it spends. */
interface Admission {
  isPublic: boolean;
  tier: Tier;
}

/** A server-streaming RPC behind the pipeline. */
export interface PipelineStream {
  method: DescMethod;
  /**
   * Authenticates and limits the call and starts the stream; resolves with its messages (ended
   * when the iterator is returned). Errors, before or during the stream, are AppErrors as `run`'s are.
   */
  open(request: Message, info: CallInfo): Promise<AsyncIterable<Message>>;
}

/** The RPCs behind the pipeline by path (`/pkg.Service/Method`): unary ones for every adapter, streaming ones for the stream adapters. */
export interface Pipeline {
  unary: Map<string, PipelineMethod>;
  streams: Map<string, PipelineStream>;
}

/** A unary RPC behind the pipeline, as every adapter calls it. */
export interface PipelineMethod {
  method: DescMethod;
  /**
   * Runs the call and resolves with the response message, or rejects with an AppError: anything
   * else thrown (a bug, a driver error not translated) becomes a generic `internal`, logged here and
   * nowhere else.
   */
  run(request: Message, info: CallInfo): Promise<Message>;
}

/** Retry-After on 503: a failover or a restart takes seconds; one second apart spreads retries out. */
const retryAfterUnavailableSeconds = 1;

/**
 * The one request pipeline, the same for every protocol: metrics, rate limits (per IP for public
 * RPCs and for failed authentications, per tenant after authentication), authentication (secret
 * key + X-Tenant-ID, or the tenant header alone for RPCs marked `is_public`), validation of the
 * request against the rules its proto declares (protovalidate: invalid_request with every field
 * violation), no-store headers for RPCs marked `no_store`, the client's deadline and cancellation
 * for all of it, authentication included, and one error mapping. Streaming RPCs go through the
 * same steps before their first message. Returns the RPCs by their path (`/pkg.Service/Method`).
 */
export function createPipeline<S extends DescService>(service: S, handlers: Handlers<S>, deps: PipelineDeps): Pipeline {
  // Built once, with every request message's rules compiled now, not on a first call.
  const validator = createRequestValidator(service.methods.map((method) => method.input));
  async function authenticate(info: CallInfo): Promise<Caller> {
    try {
      return await deps.authenticator.authenticate(info.header("authorization"), info.header("x-tenant-id"), (isRecentlyValid) =>
        isRecentlyValid ? Promise.resolve() : deps.rateLimits.checkKeyLookup(info),
      );
    } catch (err) {
      if (err instanceof AppError && err.code === "invalid_api_key") await deps.rateLimits.countAuthFailure(info);
      throw err;
    }
  }
  /** The public RPC (refresh) names its tenant only; it is limited per client IP before anything else. */
  async function publicCaller(info: CallInfo): Promise<Caller> {
    await deps.rateLimits.checkIp(info);
    return { tenantId: requireTenantId(info.header("x-tenant-id")), keyId: null };
  }

  /**
   * The caller, authenticated and within its limits, and its request valid, before anything else
   * the call does. Validation comes after authentication, so a caller without a key learns nothing
   * from it, and an invalid request counts against the caller's limits like any other.
   */
  async function admit({ isPublic, tier }: Admission, method: DescMethod, request: Message, info: CallInfo): Promise<Caller> {
    throwIfCancelled();
    const caller = isPublic ? await publicCaller(info) : await authenticate(info);
    await deps.rateLimits.checkTenant(info, tier, caller.tenantId);
    validator.check(method.input, request);
    throwIfCancelled();
    return caller;
  }
  /** Anything thrown as the AppError callers see: a bug or an untranslated error becomes a logged `internal`. */
  function publicError(method: DescMethod, info: CallInfo, err: unknown): AppError {
    const error = err instanceof AppError ? err : new AppError("internal", "internal error", undefined, { cause: err });
    if (error.code === "internal") deps.log.error({ err: error.cause ?? err, rpc: method.name }, "internal error");
    // The database is failing over, read-only or down: worth a retry, soon.
    if (error.code === "unavailable") info.responseHeaders.set("retry-after", String(retryAfterUnavailableSeconds));
    return error;
  }

  const unary = new Map<string, PipelineMethod>();
  const streams = new Map<string, PipelineStream>();
  for (const method of service.methods) {
    const path = `/${service.typeName}/${method.name}`;
    // Each option read once, here: reading an extension option decodes it from the descriptor every
    // time (per call, that cost REST verify a quarter of its throughput).
    const admission: Admission = { isPublic: getOption(method, is_public), tier: tierOf(method) };
    if (method.methodKind === "server_streaming") {
      const handler = (handlers as unknown as Record<string, (req: Message, call: Call) => Promise<AsyncIterable<object>>>)[method.localName];
      if (handler === undefined) throw new Error(`${service.typeName}.${method.name} has no handler`);
      streams.set(path, {
        method,
        async open(request, info) {
          const stop = deps.metrics.startRpc(method.name, info.protocol);
          let messages: AsyncIterable<object>;
          try {
            // The deadline and cancellation cover the start; the stream then runs until the client leaves.
            messages = await withCall({ timeoutMs: info.timeoutMs, signal: info.signal }, async () => {
              const caller = await admit(admission, method, request, info);
              return handler(request, { ...info, method, caller });
            });
          } catch (err) {
            const error = publicError(method, info, err);
            stop(error.code);
            throw error;
          }
          return (async function* () {
            let code = "ok";
            let isReaderGone = false;
            try {
              for await (const message of messages) {
                try {
                  yield create(method.output, message as never);
                } catch (err) {
                  // Thrown in by the reader (the client went away mid-write): not the stream's failure.
                  isReaderGone = true;
                  throw err;
                }
              }
            } catch (err) {
              if (isReaderGone) {
                code = "cancelled";
                throw err;
              }
              const error = publicError(method, info, err);
              code = error.code;
              throw error;
            } finally {
              stop(code);
            }
          })();
        },
      });
      continue;
    }
    const handler = (handlers as unknown as Record<string, (req: Message, call: Call) => Promise<object>>)[method.localName];
    if (method.methodKind !== "unary" || handler === undefined) throw new Error(`${service.typeName}.${method.name}: only unary and server-streaming RPCs with a handler go through the pipeline`);
    const isNoStore = getOption(method, no_store);
    unary.set(path, {
      method,
      async run(request, info) {
        const stop = deps.metrics.startRpc(method.name, info.protocol);
        // Responses that carry tokens must never be stored by a cache or a browser.
        if (isNoStore) info.responseHeaders.set("cache-control", "no-store").set("pragma", "no-cache");
        try {
          const response = await withCall({ timeoutMs: info.timeoutMs, signal: info.signal }, async () => {
            const caller = await admit(admission, method, request, info);
            const response = await handler(request, { ...info, method, caller });
            // An answer after the deadline is not one the client waits for: it gets the error instead.
            throwIfCancelled();
            return response;
          });
          stop("ok");
          return create(method.output, response as never);
        } catch (err) {
          const error = publicError(method, info, err);
          stop(error.code);
          throw error;
        }
      },
    });
  }
  return { unary, streams };
}

/**
 * A request header as CallInfo.header reads it: every field line of it, from `rawHeaders`. Node's
 * `headers` keeps only the first of a repeated Authorization (and of its other single-value
 * headers), over HTTP/1.1 and HTTP/2 alike, which would let the first of two credentials decide.
 */
export function requestHeader(raw: IncomingMessage | Http2ServerRequest, name: string): string | null {
  if (raw.headers[name] === undefined) return null;
  const { rawHeaders } = raw;
  const values: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if ((rawHeaders[i] as string).toLowerCase() === name) values.push(rawHeaders[i + 1] as string);
  }
  return values.join(", ");
}

/** A call's description from the fastify request that carries it, for every adapter alike. */
export function callInfoOf(request: FastifyRequest, reply: FastifyReply, protocol: Protocol, timeoutMs: number | undefined): CallInfo {
  const raw = reply.raw as ServerResponse | Http2ServerResponse;
  return {
    protocol,
    header: (name) => requestHeader(request.raw, name),
    clientIp: request.ip,
    timeoutMs,
    // Read when asked (before each expensive step), so a call costs no listener or AbortController.
    // HTTP/2: the stream was reset (RST_STREAM) or its connection lost (Node's compatibility layer
    // reports the response of a reset stream as finished, so only the request's flag tells).
    // HTTP/1.1: the connection is gone. The request's socket, not the response's: a pipelined
    // request's response gets its socket only once the responses before it are sent.
    signal: {
      get aborted() {
        return "stream" in raw ? (request.raw as unknown as Http2ServerRequest).aborted : (request.raw as IncomingMessage).socket.destroyed;
      },
    },
    responseHeaders: new Map(),
  };
}
