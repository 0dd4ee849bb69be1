import { getOption, type DescService } from "@bufbuild/protobuf";
import { createContextKey, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { FastifyBaseLogger } from "fastify";
import { is_public, no_store } from "../../gen/sessions/v1/options_pb.js";
import { requireTenantId, type Authenticator, type Caller } from "../domain/api-keys.js";
import { throwIfCancelled, withCall } from "../domain/call-context.js";
import { AppError } from "../domain/errors.js";
import { toConnectError, toPublicError } from "./error-codes.js";
import type { Metrics } from "./metrics.js";
import { tierOf, type RateLimits } from "./rate-limits.js";

const callerKey = createContextKey<Caller | undefined>(undefined, { description: "authenticated caller" });

/** The caller the guard authenticated for this call. */
export function callerOf(ctx: HandlerContext): Caller {
  const caller = ctx.values.get(callerKey);
  if (caller === undefined) throw new Error("callerOf called outside a guarded handler");
  return caller;
}

export interface GuardDeps {
  authenticator: Authenticator;
  log: FastifyBaseLogger;
  metrics: Metrics;
  rateLimits: RateLimits;
}

type UnaryImpl = (req: unknown, ctx: HandlerContext) => Promise<unknown>;

/** Retry-After on 503: a failover or a restart takes seconds; one second apart spreads retries out. */
const retryAfterUnavailableSeconds = 1;

/**
 * Wraps every unary handler of `service` with what every protocol needs alike, Connect, gRPC,
 * gRPC-Web and REST: rate limits (per IP for public RPCs and for failed authentications, per tenant
 * after authentication), authentication
 * (secret key + X-Tenant-ID, or the tenant header alone for RPCs marked `is_public`), no-store
 * headers for RPCs marked `no_store`, the client's
 * deadline for database work, one error mapping (anything not an AppError becomes a generic
 * `internal`, logged here and nowhere else), and per-RPC metrics.
 */
export function guardService<S extends DescService>(service: S, impl: ServiceImpl<S>, deps: GuardDeps): ServiceImpl<S> {
  const guarded: Record<string, UnaryImpl> = {};
  /** The public RPC (refresh) names its tenant only; it is limited per client IP before anything else. */
  async function publicCaller(ctx: HandlerContext): Promise<Caller> {
    await deps.rateLimits.checkIp(ctx);
    return { tenantId: requireTenantId(ctx.requestHeader.get("x-tenant-id")), keyId: null };
  }
  /** A secret key; an address that keeps failing may no longer have new keys looked up. */
  async function authenticate(ctx: HandlerContext): Promise<Caller> {
    try {
      return await deps.authenticator.authenticate(ctx.requestHeader.get("authorization"), ctx.requestHeader.get("x-tenant-id"), () =>
        deps.rateLimits.checkKeyLookup(ctx),
      );
    } catch (err) {
      if (err instanceof AppError && err.code === "invalid_api_key") await deps.rateLimits.countAuthFailure(ctx);
      throw err;
    }
  }
  for (const method of service.methods) {
    const handler = (impl as unknown as Record<string, UnaryImpl>)[method.localName];
    if (method.methodKind !== "unary" || handler === undefined) {
      throw new Error(`${service.typeName}.${method.name}: only unary RPCs can be guarded`);
    }
    const isPublic = getOption(method, is_public);
    const isNoStore = getOption(method, no_store);
    const tier = tierOf(method);
    guarded[method.localName] = async (req, ctx) => {
      const stop = deps.metrics.startRpc(method.name, ctx.protocolName);
      if (isNoStore) {
        // Responses that carry tokens must never be stored by a cache or a browser.
        ctx.responseHeader.set("cache-control", "no-store");
        ctx.responseHeader.set("pragma", "no-cache");
      }
      try {
        // A gRPC/Connect deadline bounds the database work done for the call (the key lookup
        // included), not just the wait; a client that went away stops the call before each
        // expensive step (a reset HTTP/2 stream never reaches the database or a signature check).
        const res = await withCall({ timeoutMs: ctx.timeoutMs(), signal: ctx.signal }, async () => {
          throwIfCancelled();
          const caller = isPublic ? await publicCaller(ctx) : await authenticate(ctx);
          ctx.values.set(callerKey, caller);
          await deps.rateLimits.checkTenant(ctx, tier, caller.tenantId);
          throwIfCancelled();
          return handler(req, ctx);
        });
        stop("ok");
        return res;
      } catch (err) {
        const pub = toPublicError(err);
        stop(pub.code);
        // The database is failing over, read-only or down: worth a retry, soon.
        if (pub.code === "unavailable") ctx.responseHeader.set("retry-after", String(retryAfterUnavailableSeconds));
        if (pub.cause !== undefined) deps.log.error({ err: pub.cause, rpc: method.name }, "internal error");
        throw toConnectError(err);
      }
    };
  }
  return guarded as unknown as ServiceImpl<S>;
}
