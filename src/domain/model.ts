/** The domain's own types: plain data, no transport or storage concerns. */

export const deviceTypes = ["desktop", "mobile", "tablet", "bot", "unknown"] as const;
export type DeviceType = (typeof deviceTypes)[number];

export const sessionStatuses = ["active", "expired", "revoked"] as const;
export type SessionStatus = (typeof sessionStatuses)[number];

/** Why a session was ended by a write: a revoke call, reuse detection or the per-user cap. */
export const revokeReasons = ["revoked", "revoked_all", "refresh_token_reuse", "session_limit"] as const;
export type RevokeReason = (typeof revokeReasons)[number];

/** Why a session ended, including the two ends that happen by time alone. */
export type EndReason = RevokeReason | "idle_timeout" | "expired";

export interface Session {
  tenantId: string;
  id: string;
  userId: string;
  userAgent: string;
  ipAddress: string;
  country: string;
  deviceType: DeviceType;
  role: string;
  orgId: string | null;
  isMfaVerified: boolean;
  createdAt: Date;
  lastActiveAt: Date;
  expiresAt: Date;
  /** When the session ends for want of a refresh (idle timeout); null when the tenant has none. */
  idleExpiresAt: Date | null;
  revokedAt: Date | null;
  revokeReason: RevokeReason | null;
  /** Who revoked it, when known: the id of the API key that asked. */
  revokedBy: string | null;
}

/** A session's status is derived at read time, never stored. */
export function statusOf(session: Pick<Session, "revokedAt" | "revokeReason" | "expiresAt" | "idleExpiresAt">, now: Date): SessionStatus {
  return endOf(session, now) === null ? "active" : session.revokedAt !== null ? "revoked" : "expired";
}

/** When and why a session ended, or null while it is active. Time-based ends are derived, not stored. */
export function endOf(
  session: Pick<Session, "revokedAt" | "revokeReason" | "expiresAt" | "idleExpiresAt">,
  now: Date,
): { at: Date; reason: EndReason } | null {
  if (session.revokedAt !== null) return { at: session.revokedAt, reason: session.revokeReason ?? "revoked" };
  const { expiresAt, idleExpiresAt } = session;
  if (idleExpiresAt !== null && idleExpiresAt < expiresAt && idleExpiresAt <= now) return { at: idleExpiresAt, reason: "idle_timeout" };
  if (expiresAt <= now) return { at: expiresAt, reason: "expired" };
  return null;
}

/** A tenant's session policy. */
export interface SessionPolicy {
  accessTokenTtlSeconds: number;
  /** Absolute lifetime from creation; refreshing never extends it. */
  sessionLifetimeSeconds: number;
  /** A session not refreshed for this long ends; null turns the idle timeout off. */
  idleTimeoutSeconds: number | null;
  /** How long after a rotation the previous refresh token may still be retried. */
  refreshGraceSeconds: number;
  /** Creating a session beyond this many active ones for a user revokes the oldest; null: no cap. */
  maxSessionsPerUser: number | null;
}

/** Where a keyset page starts: strictly after this (created_at, id) in newest-first order. */
export interface PageAfter {
  createdAt: Date;
  id: string;
}

export interface Tenant {
  id: string;
  name: string;
  createdAt: Date;
}

export interface ApiKey {
  tenantId: string;
  id: string;
  hint: string;
  createdAt: Date;
  revokedAt: Date | null;
}

/** What the refresh rules need to know of the presented refresh token. */
export interface RefreshTokenRecord {
  /** When it was rotated away; null while it is the session's live token. */
  rotatedAt: Date | null;
  /** True when the token it was rotated into is still the session's live token. */
  isSuccessorLive: boolean;
}

export interface SigningKeyRecord {
  id: string;
  /** The public key, base64url (the JWK `x`). */
  publicX: string;
  privateKeyEncrypted: Buffer;
  createdAt: Date;
  signsFrom: Date;
  retiredAt: Date | null;
  revokedAt: Date | null;
}
