import { getOption, type DescMethod } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from "rate-limiter-flexible";
import { is_public, rate_limit_tier, RateLimitTier } from "../../gen/sessions/v1/options_pb.js";
import { AppError } from "../domain/errors.js";
import type { SharedCounters } from "../store/redis.js";
import type { CallInfo } from "./pipeline.js";

/** What a limit needs of a call: who sends it, and where its X-RateLimit-* headers go. */
type LimitedCall = Pick<CallInfo, "clientIp" | "responseHeaders">;

export interface RateLimitConfig {
  /** Per tenant: RPCs without side effects (list, get, verify). 0: off (the default). */
  readPerMinute: number;
  /** Per tenant: RPCs that change sessions (create, revoke). 0: off (the default). */
  writePerMinute: number;
  /** Per tenant and client IP: the public refresh RPC. 0: off (the default). */
  refreshPerMinute: number;
  /** Per client IP: public RPCs (refresh), checked before anything is looked up. On by default. */
  ipPerMinute: number;
  /**
   * Per client IP: failed authentications. Past it, that address may still use keys that worked on
   * this instance within the last hour, but no other key is looked up until the window ends, so a
   * flood of guessed keys never reaches the database while the address's working keys keep working.
   */
  authFailuresPerMinute: number;
}

export type Tier = "read" | "write" | "refresh";

/** The tier comes from the proto: `rate_limit_tier` when set; else `is_public` RPCs are refreshes, NO_SIDE_EFFECTS ones reads. */
export function tierOf(method: DescMethod): Tier {
  const declared = getOption(method, rate_limit_tier);
  if (declared !== RateLimitTier.UNSPECIFIED) return declared === RateLimitTier.READ ? "read" : declared === RateLimitTier.WRITE ? "write" : "refresh";
  if (getOption(method, is_public)) return "refresh";
  return method.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS ? "read" : "write";
}

export interface RateLimits {
  /** Counts one call of a public RPC from this IP; throws rate_limit_exceeded past the per-IP limit. */
  checkIp(call: LimitedCall): Promise<void>;
  /** Throws rate_limit_exceeded when this IP has used up its failed-authentication budget. */
  checkKeyLookup(call: LimitedCall): Promise<void>;
  /** Counts one failed authentication from this IP. */
  countAuthFailure(call: LimitedCall): Promise<void>;
  /** Counts one call against the tenant's tier and reports the budget in X-RateLimit-* headers. */
  checkTenant(call: LimitedCall, tier: Tier, tenantId: string): Promise<void>;
}

/**
 * Fixed one-minute windows (rate-limiter-flexible). Without `shared` they are kept in this instance's
 * memory: with N instances behind a balancer a client gets up to N times each limit. With `shared`
 * (REDIS_URL) the counters live in Redis under `keyPrefix`, one budget for every instance; while
 * Redis cannot answer, each instance counts in its own memory again (limits are protection, not
 * correctness: calls never fail because Redis did). A limit of 0 turns that limit off. By default
 * only the unauthenticated refresh is limited (per IP) and failed authentications are budgeted per
 * IP: a healthy tenant's traffic is never throttled unless its operator opts in to per-tenant limits.
 */
export function createRateLimits(config: RateLimitConfig, shared?: { counters: SharedCounters; keyPrefix: string }): RateLimits {
  /** One limit: counted in Redis while the shared counters are healthy, else in this instance's memory. */
  const limiter = (name: string, points: number): (() => RateLimiterAbstract) | undefined => {
    if (points <= 0) return undefined;
    const memory = new RateLimiterMemory({ points, duration: 60 });
    if (shared === undefined) return () => memory;
    // The insurance limiter answers a call whose Redis command fails before the health probe has
    // noticed; once it has, calls skip Redis (no command timeout to wait out) until it is healthy.
    const redis = new RateLimiterRedis({ storeClient: shared.counters.client, keyPrefix: `${shared.keyPrefix}:${name}`, points, duration: 60, insuranceLimiter: memory });
    return () => (shared.counters.isUp() ? redis : memory);
  };
  const ip = limiter("ip", config.ipPerMinute);
  const authFailures = limiter("auth_failures", config.authFailuresPerMinute);
  const tiers: Record<Tier, (() => RateLimiterAbstract) | undefined> = {
    read: limiter("read", config.readPerMinute),
    write: limiter("write", config.writePerMinute),
    refresh: limiter("refresh", config.refreshPerMinute),
  };

  async function take(rl: RateLimiterAbstract, key: string, call: LimitedCall, isReported: boolean): Promise<void> {
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
      call.responseHeaders.set("x-ratelimit-limit", String(rl.points));
      call.responseHeaders.set("x-ratelimit-remaining", String(Math.max(0, res.remainingPoints)));
      call.responseHeaders.set("x-ratelimit-reset", String(Math.ceil((Date.now() + res.msBeforeNext) / 1000)));
    }
    if (isExceeded) throw exceeded(call, res.msBeforeNext);
  }

  return {
    async checkIp(call) {
      if (ip) await take(ip(), call.clientIp, call, false);
    },
    async checkKeyLookup(call) {
      const rl = authFailures?.();
      const used = rl ? await rl.get(call.clientIp) : null;
      if (rl && used !== null && used.consumedPoints >= rl.points) throw exceeded(call, used.msBeforeNext);
    },
    async countAuthFailure(call) {
      await authFailures?.().penalty(call.clientIp, 1);
    },
    async checkTenant(call, tier, tenantId) {
      const rl = tiers[tier]?.();
      if (rl) await take(rl, tier === "refresh" ? `${tenantId}|${call.clientIp}` : tenantId, call, true);
    },
  };
}

function exceeded(call: LimitedCall, msBeforeNext: number): AppError {
  const retryAfterSeconds = Math.max(1, Math.ceil(msBeforeNext / 1000));
  call.responseHeaders.set("retry-after", String(retryAfterSeconds));
  return new AppError("rate_limit_exceeded", `rate limit exceeded; retry after ${retryAfterSeconds} seconds`);
}
