import { createHmac, timingSafeEqual } from "node:crypto";
import type { RefreshTokenRecord } from "./model.js";

/**
 * Refresh tokens. Only their holders have them: the database holds no token, and a token cannot be
 * made without a server-side key (derived from KEY_ENCRYPTION_KEY).
 *
 * **Numbered** (every session created since migration 0009): `rt_` + base64url of 62 bytes, 83
 * characters: the session id's 26-character ULID, the token's generation (4 bytes, big-endian) and
 * a 256-bit MAC, HMAC-SHA256 under the key of the tenant, session, generation and the session's
 * nonce (32 random bytes kept on the session row). A session's first token is generation 0; each
 * rotation makes the next generation the live one. So a refresh finds its session by primary key,
 * tells a genuine token from a forged one by its MAC, and knows how far behind the live token it
 * is from its generation: no table of rotated tokens, no index that changes on every rotation.
 * A retry of the token just rotated away gets the same successor, computed again.
 *
 * **Legacy** (sessions created before migration 0009): `rt_` + 256 bits, base64url, 43 characters;
 * the first is random, each later one the HMAC of its predecessor (successorOf). The session holds
 * the live one's SHA-256, and refresh_tokens the rotated ones'. They keep working until their
 * sessions end (30 days at most by default), through the same rules.
 */
export const legacyRefreshTokenPattern = /^rt_[A-Za-z0-9_-]{43}$/;

export function successorOf(key: Buffer, presented: string): string {
  return `rt_${createHmac("sha256", key).update(presented).digest("base64url")}`;
}

/** A numbered refresh token, read. */
export interface NumberedRefreshToken {
  sessionId: string;
  generation: number;
  mac: Buffer;
}

/** What the session row keeps of its numbered tokens. */
export interface RefreshChain {
  /** The live token's generation. */
  generation: number;
  /** The session's random MAC input. */
  nonce: Buffer;
  /** When the live token took over (the last rotation); null for generation 0. */
  rotatedAt: Date | null;
}

const numberedPattern = /^rt_[A-Za-z0-9_-]{83}$/;
const ulidPattern = /^[0-9A-HJKMNP-TV-Z]{26}$/;
/** The last generation a token can carry (4 bytes). */
export const lastGeneration = 0xffff_ffff;

/** The token for `generation` of a session's chain. */
export function numberedRefreshToken(key: Buffer, tenantId: string, sessionId: string, generation: number, nonce: Buffer): string {
  const body = Buffer.alloc(62);
  body.write(sessionId.slice("ses_".length), 0, "latin1");
  body.writeUInt32BE(generation, 26);
  macOf(key, tenantId, sessionId, generation, nonce).copy(body, 30);
  return `rt_${body.toString("base64url")}`;
}

/** `token` read as a numbered refresh token; undefined when it is not one (its MAC unchecked: see isGenuine). */
export function parseNumberedRefreshToken(token: string): NumberedRefreshToken | undefined {
  if (!numberedPattern.test(token)) return undefined;
  const text = token.slice(3);
  const body = Buffer.from(text, "base64url");
  // One spelling per token: base64url's last character has spare bits a lenient decoder ignores.
  if (body.length !== 62 || body.toString("base64url") !== text) return undefined;
  const ulid = body.toString("latin1", 0, 26);
  if (!ulidPattern.test(ulid)) return undefined;
  return { sessionId: `ses_${ulid}`, generation: body.readUInt32BE(26), mac: body.subarray(30) };
}

/** Whether the server made `token` for this tenant's session with this nonce (constant-time). */
export function isGenuine(key: Buffer, tenantId: string, token: NumberedRefreshToken, nonce: Buffer): boolean {
  return timingSafeEqual(token.mac, macOf(key, tenantId, token.sessionId, token.generation, nonce));
}

function macOf(key: Buffer, tenantId: string, sessionId: string, generation: number, nonce: Buffer): Buffer {
  return createHmac("sha256", key).update(`rt\0${tenantId}\0${sessionId}\0${generation}\0`).update(nonce).digest();
}

/**
 * A genuine numbered token as the refresh rules see it (decideRefresh), from its generation and
 * the live one's: the live token; the one just rotated away, whose successor is still live; or an
 * older one, whose successor has been used. Undefined for a generation past the live one, which
 * the server has not issued.
 */
export function recordOfGeneration(presented: number, chain: RefreshChain): RefreshTokenRecord | undefined {
  if (presented === chain.generation) return { rotatedAt: null, isSuccessorLive: false, isSuccessorDerived: true };
  if (presented > chain.generation || chain.rotatedAt === null) return undefined;
  // An older token was rotated away before the last rotation; only "was it the one before" matters.
  return { rotatedAt: chain.rotatedAt, isSuccessorLive: presented === chain.generation - 1, isSuccessorDerived: true };
}
