/**
 * The checks on an access token that jose does not make, in one place:
 *
 * - `checkTokenFormat` runs before anything is verified. It accepts only the exact shape our signer
 *   writes: a compact JWS of three non-empty, canonical base64url segments, a protected header that is
 *   exactly `{"alg":"EdDSA","kid":"key_…","typ":"at+jwt"}` (no other parameters: no `jwk`, `jku`,
 *   `x5u`, `x5c`, `crit`, `b64`, …; no whitespace, escapes or duplicate keys) and a 64-byte signature.
 *   Only the header is decoded; the payload and signature are checked as text, so jose is the one
 *   that decodes them (a segment is decoded once on the hot path, the short header twice).
 * - `checkClaimSanity` runs on the claims jose verified. It rejects an `aud` that is not a single
 *   string (our tokens name one tenant), time claims that are not non-negative safe integers, an
 *   `iat` in the future beyond the clock tolerance, and an `exp` later than `iat` + the longest
 *   access-token TTL + tolerance, or not after `iat`.
 *
 * Why canonical base64url matters: jose decodes with `atob` on Node 20, which ignores whitespace and
 * `=` padding and discards the unused low bits of the last character. Those bytes are not part of the
 * signing input when they sit in the signature, so without this check many byte-different strings
 * verify as the same token.
 */

/** The only `alg` accepted. */
export const accessTokenAlg = "EdDSA";
/** The only `typ` accepted: exactly this, not `AT+JWT`, `application/at+jwt` or `JWT`. */
export const accessTokenTyp = "at+jwt";
/** The `kid` of every signing key (`newId("key")`: a prefix and a ULID). */
const kidPattern = /^key_[0-9A-HJKMNP-TV-Z]{26}$/;
/** Three non-empty segments of the base64url alphabet, nothing else (no padding, no whitespace). */
const compactJws = /^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$/;
/** An Ed25519 signature is 64 bytes: 86 base64url characters without padding. */
const ed25519SignatureLength = 86;

const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const sextet = new Int8Array(128).fill(-1);
for (let i = 0; i < alphabet.length; i++) sextet[alphabet.charCodeAt(i)] = i;

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

export type FormatCheck = { ok: true; kid: string } | { ok: false; reason: string };

/**
 * True when `segment` (already known to use only the base64url alphabet) is the one encoding of its
 * bytes: its length is possible (not 1 mod 4) and the bits of the last character beyond the data are
 * zero. That is exactly "decoding then re-encoding gives the same text", without decoding.
 */
export function isCanonicalBase64url(segment: string): boolean {
  const rest = segment.length % 4;
  if (rest === 0) return true;
  if (rest === 1) return false;
  const last = sextet[segment.charCodeAt(segment.length - 1)] ?? -1;
  if (last < 0) return false;
  // 2 characters carry 1 byte (4 spare bits); 3 characters carry 2 bytes (2 spare bits).
  return (last & (rest === 2 ? 0x0f : 0x03)) === 0;
}

/** The checks made before any key lookup or signature verification. */
export function checkTokenFormat(token: string): FormatCheck {
  const parts = compactJws.exec(token);
  if (parts === null) return { ok: false, reason: "not three non-empty base64url segments" };
  const [, header = "", payload = "", signature = ""] = parts;
  if (!isCanonicalBase64url(header) || !isCanonicalBase64url(payload) || !isCanonicalBase64url(signature)) {
    return { ok: false, reason: "a segment is not canonical base64url" };
  }
  if (signature.length !== ed25519SignatureLength) return { ok: false, reason: "the signature is not 64 bytes" };

  let text: string;
  let parsed: unknown;
  try {
    text = strictUtf8.decode(Buffer.from(header, "base64url"));
    parsed = JSON.parse(text);
  } catch {
    return { ok: false, reason: "the header is not UTF-8 JSON" };
  }
  if (!isPlainObject(parsed)) return { ok: false, reason: "the header is not a JSON object" };
  const { alg, kid, typ } = parsed;
  if (alg !== accessTokenAlg) return { ok: false, reason: "alg is not EdDSA" };
  if (typ !== accessTokenTyp) return { ok: false, reason: "typ is not at+jwt" };
  if (typeof kid !== "string" || !kidPattern.test(kid)) return { ok: false, reason: "kid is not a key id" };
  // Exactly the three parameters, in the form our signer writes them: this rejects any other
  // parameter (jwk, jku, x5u, x5c, crit, b64, …) as well as duplicate keys, whitespace and escapes.
  if (text !== JSON.stringify({ alg, kid, typ })) return { ok: false, reason: "the header has other parameters or is not in canonical form" };
  return { ok: true, kid };
}

/**
 * Sanity of the time claims of a verified token, at `now` with `toleranceSeconds` of clock skew.
 * Returns undefined when sane, otherwise why not.
 */
export function checkClaimSanity(
  claims: unknown,
  now: Date,
  toleranceSeconds: number,
  maxTtlSeconds: number,
): string | undefined {
  if (!isPlainObject(claims)) return "the claims are not a JSON object";
  if (typeof claims.aud !== "string") return "aud must be one tenant id";
  const { exp, iat, nbf } = claims;
  if (!isTimestamp(exp) || !isTimestamp(iat) || !isTimestamp(nbf)) return "exp, iat and nbf must be non-negative integers";
  const nowSeconds = Math.floor(now.getTime() / 1000);
  if (iat > nowSeconds + toleranceSeconds) return "iat is in the future";
  if (exp <= iat) return "exp is not after iat";
  if (exp - iat > maxTtlSeconds + toleranceSeconds) return "exp is further from iat than any access-token TTL";
  return undefined;
}

function isTimestamp(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}
