import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from "fastify";
import { file_google_rpc_error_details } from "../gen/google/rpc/error_details_pb.js";
import { SessionService } from "../gen/sessions/v1/sessions_pb.js";
import type { Config } from "./config.js";
import { pathOf } from "./logger.js";
import { jwksMaxAgeSeconds } from "./domain/signing-keys.js";
import { createOnePort } from "./server/one-port.js";
import type { Services } from "./services.js";
import { registerApiDocs } from "./transport/api-docs.js";
import { createPipeline } from "./transport/pipeline.js";
import { registerHealth } from "./transport/health.js";
import { createMetrics } from "./transport/metrics.js";
import { registerReflection } from "./transport/reflection.js";
import { refuseOnResponse, refuseOnSocket, registerRest, registerRestErrors, restServerOptions } from "./transport/rest.js";
import { registerRpcRoutes } from "./transport/rpc-routes.js";
import { registerRpcStreams, streamContextValues } from "./transport/rpc-streams.js";
import { registerRpcUnary } from "./transport/rpc-unary.js";
import { registerCors } from "./transport/cors.js";
import { registerEventStream } from "./transport/sse.js";
import { createSessionHandlers } from "./transport/session-handlers.js";

/** Server timeouts: generous for real clients, short enough that slow or idle ones let go. */
const timeouts = {
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 65_000,
  idleTimeoutMs: 120_000,
} as const;
const readinessProbeTimeoutMs = 1_000;


/** Trusts the `hops` proxies nearest the service, as fastify does for a number (its types only take a function). */
const trustHops = (hops: number) => (_address: string, hop: number) => hop < hops;

export interface AppOptions {
  /** True while a shutdown drains: readiness and gRPC health then report not serving. */
  isDraining?: () => boolean;
}

/**
 * Builds the whole HTTP surface on one fastify instance without listening: Connect, gRPC and
 * gRPC-Web for SessionService (plus health and reflection), the REST paths transcoded from the
 * proto's google.api.http options, and the operational endpoints.
 */
export function buildApp(config: Config, services: Services, { isDraining }: AppOptions = {}): FastifyInstance {
  const onePort = createOnePort({
    ...timeouts,
    maxConcurrentStreams: 100,
    maxConnections: config.maxConnections,
    maxPendingRequests: config.maxPendingRequests,
    // What the port refuses before fastify sees it still answers in the REST envelope, and is logged.
    refuse: {
      onResponse: (req, res, reason) => {
        const message = reason === "headers_too_large" ? "the request headers are too large" : `${req.method} is not an HTTP method this service knows`;
        const reqId = refuseOnResponse(req, res, reason, message);
        services.log.info({ reqId, code: reason }, "request refused before routing");
      },
      onSocket: (socket) => {
        const reqId = refuseOnSocket(socket, "method_not_allowed", "CONNECT is not supported: this is not a proxy");
        services.log.info({ reqId, code: "method_not_allowed", status: 405 }, "request refused before routing");
      },
    },
  });
  const app = Fastify({
    serverFactory: onePort.serverFactory,
    bodyLimit: config.bodyLimitBytes,
    // Behind a load balancer: whose X-Forwarded-For to believe for the client address (off by default).
    trustProxy: typeof config.trustProxy === "number" ? trustHops(config.trustProxy) : config.trustProxy,
    // Request ids (a client's well-formed X-Request-ID is kept), a strict query-string parser, and
    // the REST error envelope for what fails before any handler runs.
    ...restServerOptions,
    // A request that reaches a handler while the server closes (one pipelined behind others on an
    // HTTP/1.1 connection, a stream of an HTTP/2 session told GOAWAY) is served, its answer saying
    // `Connection: close`: fastify's default is a bare 503 outside the error envelope, for a request
    // the service is still able to serve within SHUTDOWN_TIMEOUT_MS.
    return503OnClosing: false,
    // One line per request, written in onResponse below, instead of fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    loggerInstance: services.log as FastifyBaseLogger,
  });
  const metrics = createMetrics(services.metricsRegistry);
  let isShuttingDown = false;
  // Before any route: it keeps the table that tells 405 from 404.
  registerRestErrors(app);
  if (config.corsOrigins.length > 0) registerCors(app, config.corsOrigins);

  app.addHook("onRequest", async (req, reply) => {
    reply.header("x-request-id", req.id);
  });
  if (["info", "debug", "trace"].includes(config.logLevel)) {
    app.addHook("onResponse", async (req, reply) => {
      req.log.info(
        { method: req.method, path: pathOf(req.url), status: reply.statusCode, ms: Math.round(reply.elapsedTime * 10) / 10 },
        "request completed",
      );
    });
  }
  app.addHook("preClose", async () => {
    isShuttingDown = true;
    // Event streams never end by themselves: end them, so their connections can close.
    await services.eventFeed.stop();
    onePort.closeConnections();
  });

  // One pipeline for SessionService, whatever protocol carries the call.
  const pipeline = createPipeline(SessionService, createSessionHandlers(services.sessionService, services.clock, { feed: services.eventFeed, cursorKey: services.eventCursorKey }, metrics), {
    authenticator: services.authenticator,
    log: app.log,
    metrics,
    rateLimits: services.rateLimits,
  });
  const readiness = async () =>
    isShuttingDown || isDraining?.()
      ? { isReady: false, problems: ["shutting down"] }
      : await services.readiness(readinessProbeTimeoutMs);
  const isServing = async () => (await readiness()).isReady;

  // SessionService's unary RPCs: gRPC, gRPC-Web and Connect through the lean adapters.
  registerRpcUnary(app, { methods: pipeline.unary, readMaxBytes: config.bodyLimitBytes });
  registerRest(app, { service: SessionService, methods: pipeline.unary });
  // The event feed over REST, as Server-Sent Events.
  registerEventStream(app, pipeline.streams.get(`/${SessionService.typeName}/${SessionService.method.watchSessionEvents.name}`)!);
  // The streaming RPCs (WatchSessionEvents, health Watch, reflection) through connect-es's router.
  registerRpcRoutes(app, {
    contextValues: streamContextValues,
    routes(router) {
      registerRpcStreams(router, pipeline.streams);
      registerHealth(router, isServing, { alsoServing: [SessionService] });
      // ErrorInfo only ever travels in error details, so nothing else would describe its file.
      registerReflection(router, { services: [SessionService], files: [file_google_rpc_error_details] });
    },
    readMaxBytes: config.bodyLimitBytes,
    // As on REST: a field the schema does not know is an error, never silently dropped (a typo in a
    // filter must not widen what a call does).
    jsonOptions: { ignoreUnknownFields: false },
    // Long-lived streams (health Watch) are ended half-way through the drain, so they cannot hold
    // shutdown open until the hard deadline; unary calls finish long before.
    shutdownTimeoutMs: Math.floor(config.shutdownTimeoutMs / 2),
    grpcWeb: true,
    connect: true,
    grpc: true,
  });

  app.get("/healthz", async () => ({ status: "ok" }));
  app.get("/readyz", async (_req, reply) => {
    const { isReady, problems } = await readiness();
    return reply.code(isReady ? 200 : 503).send({ status: isReady ? "ready" : "unavailable", ...(isReady ? {} : { problems }) });
  });
  app.get("/metrics", async (_req, reply) => {
    reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  app.get("/.well-known/jwks.json", async (_req, reply) => {
    reply.header("cache-control", `public, max-age=${jwksMaxAgeSeconds}`);
    return services.keyRing.jwks();
  });
  // The OpenAPI document generated from the proto, and the reference page that renders it.
  registerApiDocs(app);
  return app;
}
