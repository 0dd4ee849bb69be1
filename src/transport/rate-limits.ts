import { getOption, type DescMethod } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import { RateLimiterMemory, RateLimiterRes } from "rate-limiter-flexible";
import { is_public } from "../../gen/sessions/v1/options_pb.js";
import { AppError } from "../domain/errors.js";

/** The client's IP address, put into every call's context by the transport that received it. */
export const clientIpKey = createContextKey<string>("unknown", { description: "client IP address" });

export interface RateLimitConfig {
  /** Per tenant: RPCs without side effects (list, get, verify). */
  readPerMinute: number;
  /** Per tenant: RPCs that change sessions (create, revoke). */
  writePerMinute: number;
  /** Per tenant and client IP: the public refresh RPC. */
  refreshPerMinute: number;
  /** Per client IP, checked before authentication, so floods of bad keys never reach the database. */
  ipPerMinute: number;
}

type Tier = "read" | "write" | "refresh";

/** The tier comes from the proto: `is_public` RPCs are refreshes, NO_SIDE_EFFECTS ones are reads. */
export function tierOf(method: DescMethod): Tier {
  if (getOption(method, is_public)) return "refresh";
  return method.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS ? "read" : "write";
}

export interface RateLimits {
  /** Counts one call from this IP; throws rate_limit_exceeded past the per-IP limit. */
  checkIp(ctx: HandlerContext): Promise<void>;
  /** Counts one call against the tenant's tier and reports the budget in X-RateLimit-* headers. */
  checkTenant(ctx: HandlerContext, tier: Tier, tenantId: string): Promise<void>;
}

/**
 * Fixed one-minute windows kept in this instance's memory (rate-limiter-flexible). With N instances
 * behind a balancer a client gets up to N times each limit; a shared store is not built. A limit of
 * 0 turns that limit off.
 */
export function createRateLimits(config: RateLimitConfig): RateLimits {
  const limiter = (points: number) => (points > 0 ? new RateLimiterMemory({ points, duration: 60 }) : undefined);
  const ip = limiter(config.ipPerMinute);
  const tiers: Record<Tier, RateLimiterMemory | undefined> = {
    read: limiter(config.readPerMinute),
    write: limiter(config.writePerMinute),
    refresh: limiter(config.refreshPerMinute),
  };

  async function take(rl: RateLimiterMemory, key: string, ctx: HandlerContext, isReported: boolean): Promise<void> {
    let res: RateLimiterRes;
    let isExceeded = false;
    try {
      res = await rl.consume(key);
    } catch (rejection) {
      if (!(rejection instanceof RateLimiterRes)) throw rejection;
      res = rejection;
      isExceeded = true;
    }
    if (isReported || isExceeded) {
      ctx.responseHeader.set("x-ratelimit-limit", String(rl.points));
      ctx.responseHeader.set("x-ratelimit-remaining", String(Math.max(0, res.remainingPoints)));
      ctx.responseHeader.set("x-ratelimit-reset", String(Math.ceil((Date.now() + res.msBeforeNext) / 1000)));
    }
    if (isExceeded) {
      const retryAfterSeconds = Math.max(1, Math.ceil(res.msBeforeNext / 1000));
      ctx.responseHeader.set("retry-after", String(retryAfterSeconds));
      throw new AppError("rate_limit_exceeded", `rate limit exceeded; retry after ${retryAfterSeconds} seconds`);
    }
  }

  return {
    async checkIp(ctx) {
      if (ip) await take(ip, ctx.values.get(clientIpKey), ctx, false);
    },
    async checkTenant(ctx, tier, tenantId) {
      const rl = tiers[tier];
      if (rl) await take(rl, tier === "refresh" ? `${tenantId}|${ctx.values.get(clientIpKey)}` : tenantId, ctx, true);
    },
  };
}
