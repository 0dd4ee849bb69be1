import fastifyCors from "@fastify/cors";
import { cors as connectCors } from "@connectrpc/connect";
import type { FastifyInstance } from "fastify";

/**
 * CORS for browser callers (CORS_ORIGINS; off when empty): the refresh endpoint, REST, Connect and
 * gRPC-Web. The headers are those connect-es documents for its protocols, plus ours: the tenant
 * header and bearer key in, the request id, rate-limit state and Retry-After out. No credentials
 * (cookies): callers send tokens in headers and bodies.
 */
export function registerCors(app: FastifyInstance, origins: string[]): void {
  void app.register(fastifyCors, {
    origin: origins,
    methods: [...new Set([...connectCors.allowedMethods, "POST", "DELETE"])],
    allowedHeaders: [...connectCors.allowedHeaders, "Authorization", "X-Tenant-ID", "X-Request-ID", "Last-Event-ID"],
    exposedHeaders: [...connectCors.exposedHeaders, "X-Request-ID", "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"],
    maxAge: 7200,
    credentials: false,
  });
}
