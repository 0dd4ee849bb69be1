/** The domain's own types: plain data, no transport or storage concerns. */

export const deviceTypes = ["desktop", "mobile", "tablet", "bot", "unknown"] as const;
export type DeviceType = (typeof deviceTypes)[number];

export const sessionStatuses = ["active", "expired", "revoked"] as const;
export type SessionStatus = (typeof sessionStatuses)[number];

/** Why a session was ended by a write: a revoke call, reuse detection or the per-user cap. */
export const revokeReasons = ["revoked", "revoked_all", "refresh_token_reuse", "session_limit"] as const;
export type RevokeReason = (typeof revokeReasons)[number];

/** The two ends that happen by time alone. */
export const timeEndReasons = ["idle_timeout", "expired"] as const;

/** Why a session ended. */
export type EndReason = RevokeReason | (typeof timeEndReasons)[number];

export function isRevokeReason(reason: EndReason): reason is RevokeReason {
  return (revokeReasons as readonly string[]).includes(reason);
}

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
  /**
   * The end the service has recorded: a revoke, or an end by time once the expiry sweep has written
   * it down. Null while none is recorded, though the session may still have ended by time (endOf).
   */
  recordedEnd: RecordedEnd | null;
}

export interface RecordedEnd {
  at: Date;
  reason: EndReason;
  /** Who ended it, when known: the id of the API key whose call revoked it. */
  by: string | null;
}

/** What decides whether a session is active: the hot path of every verify reads just this. */
export type SessionEndState = Pick<Session, "recordedEnd" | "expiresAt" | "idleExpiresAt">;

/**
 * When an open session is due to end: the earlier of its absolute expiry and its idle deadline.
 * Stored beside the session (ends_at) so that ended sessions are found by index.
 */
export function scheduledEndOf(session: Pick<Session, "expiresAt" | "idleExpiresAt">): { at: Date; reason: EndReason } {
  const { expiresAt, idleExpiresAt } = session;
  return idleExpiresAt !== null && idleExpiresAt < expiresAt ? { at: idleExpiresAt, reason: "idle_timeout" } : { at: expiresAt, reason: "expired" };
}

/**
 * When and why a session ended, or null while it is active at `now`: the recorded end if there is
 * one, else its scheduled end once that has come. The one rule for a session's status.
 */
export function endOf(session: SessionEndState, now: Date): { at: Date; reason: EndReason } | null {
  if (session.recordedEnd !== null) return session.recordedEnd;
  const scheduled = scheduledEndOf(session);
  return scheduled.at <= now ? scheduled : null;
}

/** A session's status at `now`: revoked, expired (by time) or active. */
export function statusOf(session: SessionEndState, now: Date): SessionStatus {
  const end = endOf(session, now);
  return end === null ? "active" : isRevokeReason(end.reason) ? "revoked" : "expired";
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
  /** True when the token it was rotated into is still the session's live token (it has not been used). */
  isSuccessorLive: boolean;
  /**
   * True when the successor on record is the one derived from the presented token, so a retry can
   * hand it out again (false only if the key it is derived with changed since the rotation).
   */
  isSuccessorDerived: boolean;
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
