import { createContextKey, createContextValues, type ConnectRouter, type ContextValues, type HandlerContext } from "@connectrpc/connect";
import type { Message } from "@bufbuild/protobuf";
import type { FastifyRequest } from "fastify";
import { toConnectError } from "./error-codes.js";
import { requestHeader, type CallInfo, type PipelineStream, type Protocol } from "./pipeline.js";

/** The client address, carried from the fastify request into connect-es's handler context. */
const clientIpKey = createContextKey<string>("", { description: "client address" });
/**
 * The request's headers as every other adapter reads them (requestHeader): connect-es builds its
 * requestHeader from Node's `headers`, which keep only the first of two Authorization headers.
 */
const headerKey = createContextKey<((name: string) => string | null) | undefined>(undefined, { description: "request headers" });

/** What registerRpcRoutes passes into every call's context: the client address rate limits key on, and the headers. */
export function streamContextValues(request: FastifyRequest): ContextValues {
  return createContextValues()
    .set(clientIpKey, request.ip)
    .set(headerKey, (name) => requestHeader(request.raw, name));
}

const protocols: Record<string, Protocol> = { grpc: "grpc", "grpc-web": "grpcweb", connect: "connect" };

/**
 * Serves the pipeline's server-streaming RPCs (gRPC, gRPC-Web, Connect) through connect-es's router,
 * which owns the streaming framing; each call goes through the pipeline like every unary one.
 */
export function registerRpcStreams(router: ConnectRouter, streams: ReadonlyMap<string, PipelineStream>): void {
  for (const stream of streams.values()) {
    const impl = async function* (request: Message, context: HandlerContext): AsyncIterable<Message> {
      try {
        yield* await stream.open(request, callInfoOfContext(context));
      } catch (err) {
        throw toConnectError(err);
      }
    };
    // The method's message types are only known at run time here; the implementation fits any.
    router.rpc(stream.method, impl as never);
  }
}

function callInfoOfContext(context: HandlerContext): CallInfo {
  return {
    protocol: protocols[context.protocolName] ?? "connect",
    header: context.values.get(headerKey) ?? ((name) => context.requestHeader.get(name)),
    clientIp: context.values.get(clientIpKey),
    timeoutMs: context.timeoutMs(),
    signal: context.signal,
    responseHeaders: new Map(),
  };
}
