/** The domain's own types: plain data, no transport or storage concerns. */

export const deviceTypes = ["desktop", "mobile", "tablet", "bot", "unknown"] as const;
export type DeviceType = (typeof deviceTypes)[number];

export const sessionStatuses = ["active", "expired", "revoked"] as const;
export type SessionStatus = (typeof sessionStatuses)[number];

export const revokeReasons = ["revoked", "revoked_all", "refresh_token_reuse"] as const;
export type RevokeReason = (typeof revokeReasons)[number];

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
  revokedAt: Date | null;
  revokeReason: RevokeReason | null;
}

/** A session's status is derived at read time, never stored. */
export function statusOf(session: Pick<Session, "revokedAt" | "expiresAt">, now: Date): SessionStatus {
  if (session.revokedAt !== null) return "revoked";
  if (session.expiresAt.getTime() <= now.getTime()) return "expired";
  return "active";
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

/** One row per refresh token ever issued for a session. */
export interface RefreshTokenRecord {
  sessionId: string;
  createdAt: Date;
  rotatedAt: Date | null;
  /** True when the token this one was rotated into is still the session's live token. */
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
