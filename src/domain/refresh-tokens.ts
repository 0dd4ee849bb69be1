import { createHmac } from "node:crypto";

/**
 * Refresh tokens: `rt_` + 256 bits, base64url. Only their SHA-256 is stored.
 *
 * A session's first refresh token is random. Every later one is the *successor* of the token it
 * replaces: HMAC-SHA256 under a server-side key (derived from KEY_ENCRYPTION_KEY) of the presented
 * token. So a retry of a just-rotated token (a lost response, two tabs refreshing at once) can be
 * handed the very same successor again without the service keeping it anywhere: whoever presents
 * the old token within the grace window gets the one live token, and the database still holds
 * hashes only. Without the key, a successor cannot be computed from its predecessor.
 */
export const refreshTokenPattern = /^rt_[A-Za-z0-9_-]{43}$/;

export function successorOf(key: Buffer, presented: string): string {
  return `rt_${createHmac("sha256", key).update(presented).digest("base64url")}`;
}
