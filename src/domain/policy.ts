import { lruCache } from "./lru.js";
import { AppError } from "./errors.js";
import type { SessionPolicy } from "./model.js";
import type { PolicyStore } from "./ports.js";
import { maxAccessTokenTtlSeconds } from "./signing-keys.js";

export const defaultPolicy: SessionPolicy = {
  accessTokenTtlSeconds: 15 * 60,
  sessionLifetimeSeconds: 30 * 24 * 60 * 60,
  idleTimeoutSeconds: null,
  refreshGraceSeconds: 10,
  maxSessionsPerUser: null,
};

/** The bounds each knob must stay within, and why. */
const bounds = {
  // Up to the longest TTL a retired signing key stays published for (signing-keys.ts).
  accessTokenTtlSeconds: [60, maxAccessTokenTtlSeconds],
  sessionLifetimeSeconds: [5 * 60, 400 * 24 * 60 * 60],
  idleTimeoutSeconds: [60, 400 * 24 * 60 * 60],
  // At least a second: two tabs refresh within milliseconds of each other, and with no window at all
  // the second would count as reuse and log the user out. At most five minutes: longer would let a
  // thief race the user for long.
  refreshGraceSeconds: [1, 300],
  maxSessionsPerUser: [1, 10_000],
} as const satisfies Record<keyof SessionPolicy, readonly [number, number]>;

/** Checks a whole policy; an out-of-range knob is `invalid_request` naming it. */
export function validatePolicy(policy: SessionPolicy): SessionPolicy {
  for (const [name, [min, max]] of Object.entries(bounds) as [keyof SessionPolicy, readonly [number, number]][]) {
    const value = policy[name];
    if (value === null && (name === "idleTimeoutSeconds" || name === "maxSessionsPerUser")) continue;
    if (!Number.isInteger(value) || (value as number) < min || (value as number) > max) {
      throw new AppError("invalid_request", `${name} must be an integer from ${min} to ${max}`, name);
    }
  }
  return policy;
}

export interface PolicySource {
  policyFor(tenantId: string): Promise<SessionPolicy>;
}

/**
 * Reads a tenant's policy, cached per instance for `cacheSeconds`: a change made with sessionctl
 * takes effect on every instance within that time.
 */
export function createPolicySource(store: PolicyStore, cacheSeconds: number): PolicySource {
  const cache = cacheSeconds > 0 ? lruCache<string, SessionPolicy>(10_000, cacheSeconds * 1000) : undefined;
  return {
    async policyFor(tenantId) {
      let policy = cache?.get(tenantId);
      if (policy === undefined) {
        policy = (await store.getPolicy(tenantId)) ?? defaultPolicy;
        cache?.set(tenantId, policy);
      }
      return policy;
    },
  };
}
