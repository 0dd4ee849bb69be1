import { Code, ConnectError, createConnectRouter, type ConnectRouter, type ConnectRouterOptions, type Interceptor } from "@connectrpc/connect";
import { createLinkedAbortController } from "@connectrpc/connect/protocol";
import * as protoConnect from "@connectrpc/connect/protocol-connect";
import * as protoGrpc from "@connectrpc/connect/protocol-grpc";
import * as protoGrpcWeb from "@connectrpc/connect/protocol-grpc-web";
import { compressionBrotli, compressionGzip, universalRequestFromNodeRequest, universalResponseToNodeResponse } from "@connectrpc/connect-node";
import type { ContextValues } from "@connectrpc/connect";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { withoutUnsafeNames } from "./field-names.js";

export interface RpcRoutesOptions extends ConnectRouterOptions {
  routes(router: ConnectRouter): void;
  contextValues?: (request: FastifyRequest) => ContextValues;
  /** After close begins, long-lived calls (health Watch) are ended this much later. */
  shutdownTimeoutMs?: number;
}

/**
 * Serves Connect, gRPC and gRPC-Web for the router's services on a fastify instance: one route per
 * RPC, its body read by Connect's protocol code straight from the Node request. The role of
 * @connectrpc/connect-fastify (whose releases pin an older @connectrpc/connect), written here so the
 * service can take connect-es releases as they come and log through its own logger.
 */
export function registerRpcRoutes(app: FastifyInstance, opts: RpcRoutesOptions): void {
  const { routes, contextValues, shutdownTimeoutMs, ...routerOptions } = opts;
  const shutdown = createLinkedAbortController(routerOptions.shutdownSignal);
  if (shutdownTimeoutMs !== undefined) {
    app.addHook("preClose", (done) => {
      setTimeout(() => shutdown.abort(), shutdownTimeoutMs).unref();
      done();
    });
  }
  const router = createConnectRouter({
    acceptCompression: [compressionGzip, compressionBrotli],
    ...routerOptions,
    interceptors: [hideUnsafeNames, ...(routerOptions.interceptors ?? [])],
    shutdownSignal: shutdown.signal,
  });
  routes(router);
  app.register(async (scope) => {
    // Connect's protocol code reads these bodies itself.
    const untouched = (_req: unknown, _payload: unknown, done: (err: null, body: undefined) => void) => done(null, undefined);
    scope.addContentTypeParser(
      [protoConnect.contentTypeUnaryJson, protoConnect.contentTypeStreamJson, protoGrpcWeb.contentTypeProto, protoGrpcWeb.contentTypeJson, protoGrpc.contentTypeProto, protoGrpc.contentTypeJson],
      untouched,
    );
    for (const pattern of [protoGrpc.contentTypeRegExp, protoGrpcWeb.contentTypeRegExp, protoConnect.contentTypeRegExp]) {
      scope.addContentTypeParser(pattern, untouched);
    }
    for (const handler of router.handlers) {
      scope.all(handler.requestPath, async (req, reply) => {
        try {
          const response = await handler(universalRequestFromNodeRequest(req.raw, reply.raw, req.body as undefined, contextValues?.(req)));
          // Headers set on the fastify reply (the request id) go out with the raw response.
          for (const [key, value] of Object.entries(reply.getHeaders())) if (value !== undefined) reply.raw.setHeader(key, value);
          await universalResponseToNodeResponse(response, reply.raw);
        } catch (err) {
          // A client that went away mid-response is not a server error.
          if (ConnectError.from(err).code !== Code.Aborted) req.log.error({ err, rpc: handler.requestPath }, "RPC response failed");
        }
      });
    }
  });
}

/**
 * connect-es's decode errors quote what was sent (`key "…" is unknown`); a key that does not look
 * like a field name may be a pasted secret and is not repeated (field-names.ts). A streaming call
 * decodes its request inside this chain, so its errors pass here. (A unary call through this router,
 * health Check, decodes before any interceptor; SessionService's unary RPCs decode in rpc-unary.ts.)
 */
const hideUnsafeNames: Interceptor = (next) => async (request) => {
  try {
    return await next(request);
  } catch (err) {
    if (!(err instanceof ConnectError)) throw err;
    const message = withoutUnsafeNames(err.rawMessage);
    if (message === err.rawMessage) throw err;
    const safe = new ConnectError(message, err.code, err.metadata, undefined, err.cause);
    safe.details = err.details;
    throw safe;
  }
};
