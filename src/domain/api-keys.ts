import { lruCache } from "./lru.js";
import type { Clock } from "./clock.js";
import { AppError } from "./errors.js";
import type { ApiKey } from "./model.js";
import type { TenantStore } from "./ports.js";
import { hashSecret, idPatterns, newId, newSecret } from "./secrets.js";

/** A fresh secret key; only its hash is stored, the key itself is shown to the operator once. */
export function mintApiKey(tenantId: string, now: Date, mode: "live" | "test" = "live") {
  const secret = newSecret(mode === "live" ? "sk_live_" : "sk_test_");
  const key: ApiKey = {
    tenantId,
    id: newId("key"),
    // Enough to recognise a key in a listing, far too little to guess it.
    hint: `${secret.slice(0, 12)}…`,
    createdAt: now,
    revokedAt: null,
  };
  return { key, secret, hash: hashSecret(secret) };
}

const secretKeyPattern = /^sk_(live|test)_[A-Za-z0-9_-]{43}$/;

/** Pulls the tenant id from the X-Tenant-ID header, or says what is wrong with it. */
export function requireTenantId(header: string | null): string {
  if (header === null || header === "") {
    throw new AppError("invalid_request", "the X-Tenant-ID header is required", "x-tenant-id");
  }
  if (!idPatterns.tenant.test(header)) {
    throw new AppError("invalid_request", "the X-Tenant-ID header is not a tenant id", "x-tenant-id");
  }
  return header;
}

/** Who is calling: a tenant, and the API key it used (none for the public refresh RPC). */
export interface Caller {
  tenantId: string;
  keyId: string | null;
}

export interface Authenticator {
  /**
   * Checks `Authorization: Bearer sk_…` for the tenant in X-Tenant-ID. `beforeLookup` runs (and may
   * throw) only when the key has to be looked up in the store, not when the cache answers; it is told
   * whether this key authenticated on this instance within the last hour.
   */
  authenticate(
    authorization: string | null,
    tenantHeader: string | null,
    beforeLookup?: (isRecentlyValid: boolean) => Promise<void>,
  ): Promise<Caller>;
}

/**
 * Results are cached per (tenant, key hash) for `cacheSeconds`: a revoked key stops working on every
 * instance within that time. Unknown keys are cached too, so a flood of bad keys costs one query
 * per distinct key per window, not one per request. The cache is keyed by digest, never the key.
 *
 * Keys that authenticated within the last hour are remembered apart (digests only, never trusted
 * without a lookup): under a flood of bad keys from one address, its working keys are still looked
 * up and keep working after their cache entry expires, while guessed keys are not.
 */
export function createAuthenticator(store: TenantStore, clock: Clock, cacheSeconds: number): Authenticator {
  const cache = cacheSeconds > 0 ? lruCache<string, { keyId: string | null }>(50_000, cacheSeconds * 1000) : undefined;
  const recentlyValid = lruCache<string, true>(50_000, 60 * 60 * 1000);
  const invalid = () => new AppError("invalid_api_key", "the API key is invalid for this tenant");

  return {
    async authenticate(authorization, tenantHeader, beforeLookup) {
      if (authorization === null || authorization.trim() === "") {
        throw new AppError("missing_token", "the Authorization header is required");
      }
      const match = /^Bearer ([^\s]+)$/i.exec(authorization.trim());
      const tenantId = requireTenantId(tenantHeader);
      if (match === null || !secretKeyPattern.test(match[1] as string)) throw invalid();
      const hash = hashSecret(match[1] as string);
      const cacheKey = `${tenantId}:${hash.toString("base64")}`;
      let entry = cache?.get(cacheKey);
      if (entry === undefined) {
        await beforeLookup?.(recentlyValid.has(cacheKey));
        const key = await store.findApiKey(tenantId, hash);
        entry = { keyId: key !== null && (key.revokedAt === null || key.revokedAt > clock.now()) ? key.id : null };
        cache?.set(cacheKey, entry);
        if (entry.keyId !== null) recentlyValid.set(cacheKey, true);
        else recentlyValid.delete(cacheKey);
      }
      if (entry.keyId === null) throw invalid();
      return { tenantId, keyId: entry.keyId };
    },
  };
}
