import { isIP } from "node:net";
import type { Clock } from "./clock.js";
import { decodeCursor, encodeCursor } from "./cursor.js";
import { deviceTypeFromUserAgent } from "./device-type.js";
import { AppError } from "./errors.js";
import { statusOf, type DeviceType, type Session, type SessionPolicy, type SessionStatus } from "./model.js";
import type { PolicySource } from "./policy.js";
import type { RefreshDecider, SessionStore } from "./ports.js";
import { hashSecret, idPatterns, newId, newSecret } from "./secrets.js";
import type { KeyRing } from "./signing-keys.js";

export interface SessionServiceDeps {
  sessions: SessionStore;
  keys: KeyRing;
  clock: Clock;
  /** Key for the MACs on pagination cursors. */
  cursorKey: Buffer;
  policies: PolicySource;
}

export interface ListInput {
  userId: string;
  status: SessionStatus | undefined;
  limit: number | undefined;
  cursor: string;
}

export interface CreateInput {
  userId: string;
  userAgent: string;
  ipAddress: string;
  country: string;
  deviceType: DeviceType | undefined;
  role: string;
  orgId: string | undefined;
  isMfaVerified: boolean;
}

export interface TokenPair {
  session: Session;
  accessToken: string;
  refreshToken: string;
  accessTokenExpiresAt: Date;
  refreshTokenExpiresAt: Date;
}

export type VerifyResult =
  | {
      valid: true;
      sessionId: string;
      userId: string;
      tenantId: string;
      role: string;
      orgId: string | undefined;
      isMfaVerified: boolean;
      expiresAt: Date;
    }
  | { valid: false; code: VerifyErrorCode; message: string };

export type VerifyErrorCode = "token_expired" | "invalid_token" | "session_revoked" | "session_expired" | "tenant_mismatch";

/** Longer than any token we issue; anything longer is rejected before it is parsed. */
export const maxAccessTokenLength = 4096;

const defaultLimit = 20;
const maxLimit = 100;

export type SessionService = ReturnType<typeof createSessionService>;

export function createSessionService({ sessions, keys, clock, cursorKey, policies }: SessionServiceDeps) {
  /** An access token never outlives its session's absolute expiry. */
  async function issueAccessToken(session: Session, now: Date, policy: SessionPolicy) {
    const expiresAt = new Date(Math.min(now.getTime() + policy.accessTokenTtlSeconds * 1000, session.expiresAt.getTime()));
    const accessToken = await keys.sign(
      {
        sub: session.userId,
        aud: session.tenantId,
        jti: newId("at"),
        sid: session.id,
        tenant_id: session.tenantId,
        role: session.role,
        ...(session.orgId !== null ? { org_id: session.orgId } : {}),
        mfa_verified: session.isMfaVerified,
      },
      now,
      expiresAt,
    );
    return { accessToken, accessTokenExpiresAt: expiresAt };
  }

  return {
    async list(tenantId: string, input: ListInput) {
      const limit = input.limit ?? defaultLimit;
      if (!Number.isInteger(limit) || limit < 1 || limit > maxLimit) {
        throw new AppError("invalid_request", `limit must be between 1 and ${maxLimit}`, "limit");
      }
      const status = input.status ?? "active";
      const userId = input.userId === "" ? undefined : checkLength("user_id", input.userId, 255);
      const binding = [tenantId, userId ?? "", status];
      const after = input.cursor === "" ? undefined : decodeCursor(cursorKey, binding, input.cursor);
      const rows = await sessions.listSessions(tenantId, { userId, status, now: clock.now(), after, limit: limit + 1 });
      const page = rows.slice(0, limit);
      const last = page[page.length - 1];
      const hasMore = rows.length > limit;
      return {
        sessions: page,
        limit,
        hasMore,
        nextCursor: hasMore && last ? encodeCursor(cursorKey, binding, last) : undefined,
      };
    },

    async get(tenantId: string, id: string): Promise<Session> {
      const session = idPatterns.session.test(id) ? await sessions.getSession(tenantId, id) : null;
      if (session === null) throw sessionNotFound();
      return session;
    },

    /** `by` is who asked (an API key id), recorded on the session. */
    async revoke(tenantId: string, id: string, by: string | null): Promise<void> {
      const exists =
        idPatterns.session.test(id) && (await sessions.revokeSession(tenantId, id, { now: clock.now(), reason: "revoked", by }));
      if (!exists) throw sessionNotFound();
    },

    async revokeAll(tenantId: string, filter: { userId: string; exceptSessionId: string }, by: string | null): Promise<number> {
      return sessions.revokeSessions(
        tenantId,
        {
          userId: filter.userId === "" ? undefined : checkLength("user_id", filter.userId, 255),
          exceptSessionId: filter.exceptSessionId === "" ? undefined : filter.exceptSessionId,
        },
        { now: clock.now(), reason: "revoked_all", by },
      );
    },

    async verify(tenantId: string, token: string): Promise<VerifyResult> {
      if (token === "") throw new AppError("invalid_request", "token is required", "token");
      if (token.length > maxAccessTokenLength) return { valid: false, code: "invalid_token", message: "the access token is invalid" };
      const check = await keys.verify(token);
      if (!check.ok) return { valid: false, code: check.code, message: check.message };
      const { claims } = check;
      if (claims.tenant_id !== tenantId || claims.aud !== tenantId) {
        return { valid: false, code: "tenant_mismatch", message: "the access token belongs to another tenant" };
      }
      const state = idPatterns.session.test(claims.sid) ? await sessions.getSessionState(tenantId, claims.sid) : null;
      if (state === null) return { valid: false, code: "invalid_token", message: "the access token's session does not exist" };
      const status = statusOf(state, clock.now());
      if (status === "revoked") return { valid: false, code: "session_revoked", message: "the session has been revoked" };
      if (status === "expired") return { valid: false, code: "session_expired", message: "the session has expired" };
      // Who and what the session is never changes after creation: the signed claims say it.
      return {
        valid: true,
        sessionId: claims.sid,
        userId: claims.sub as string,
        tenantId,
        role: claims.role,
        orgId: claims.org_id,
        isMfaVerified: claims.mfa_verified,
        expiresAt: new Date((claims.exp as number) * 1000),
      };
    },

    async create(tenantId: string, input: CreateInput): Promise<TokenPair> {
      if (input.userId === "") throw new AppError("invalid_request", "user_id is required", "user_id");
      if (input.ipAddress !== "" && isIP(input.ipAddress) === 0) {
        throw new AppError("invalid_request", "ip_address must be an IPv4 or IPv6 address", "ip_address");
      }
      const country = input.country.toUpperCase();
      if (country !== "" && !/^[A-Z]{2}$/.test(country)) {
        throw new AppError("invalid_request", "country must be an ISO 3166-1 alpha-2 code", "country");
      }
      const policy = await policies.policyFor(tenantId);
      const now = clock.now();
      const userAgent = input.userAgent.slice(0, 1024);
      const session: Session = {
        tenantId,
        id: newId("ses"),
        userId: checkLength("user_id", input.userId, 255),
        userAgent,
        ipAddress: input.ipAddress,
        country,
        deviceType: input.deviceType ?? deviceTypeFromUserAgent(userAgent),
        role: checkLength("role", input.role === "" ? "member" : input.role, 64),
        orgId: input.orgId === undefined || input.orgId === "" ? null : checkLength("org_id", input.orgId, 255),
        isMfaVerified: input.isMfaVerified,
        createdAt: now,
        lastActiveAt: now,
        expiresAt: new Date(now.getTime() + policy.sessionLifetimeSeconds * 1000),
        idleExpiresAt: idleExpiry(now, policy),
        revokedAt: null,
        revokeReason: null,
        revokedBy: null,
      };
      const refreshToken = newSecret("rt_");
      await sessions.insertSession(session, hashSecret(refreshToken), policy.maxSessionsPerUser);
      const { accessToken, accessTokenExpiresAt } = await issueAccessToken(session, now, policy);
      return { session, accessToken, refreshToken, accessTokenExpiresAt, refreshTokenExpiresAt: session.expiresAt };
    },

    async refresh(tenantId: string, refreshToken: string): Promise<TokenPair & { expiresInSeconds: number }> {
      if (refreshToken === "") throw new AppError("invalid_request", "refresh_token is required", "refresh_token");
      if (!/^rt_[A-Za-z0-9_-]{43}$/.test(refreshToken)) {
        throw new AppError("refresh_token_invalid", "the refresh token is invalid");
      }
      const policy = await policies.policyFor(tenantId);
      const now = clock.now();
      const next = newSecret("rt_");
      const result = await sessions.refresh(tenantId, hashSecret(refreshToken), hashSecret(next), now, decideRefresh(now, policy));
      if (!result.ok) throw new AppError(result.error, refreshErrorMessages[result.error]);
      const { accessToken, accessTokenExpiresAt } = await issueAccessToken(result.session, now, policy);
      return {
        session: result.session,
        accessToken,
        refreshToken: next,
        accessTokenExpiresAt,
        refreshTokenExpiresAt: result.session.expiresAt,
        expiresInSeconds: Math.round((accessTokenExpiresAt.getTime() - now.getTime()) / 1000),
      };
    },
  };
}

const refreshErrorMessages = {
  refresh_token_invalid: "the refresh token is invalid",
  refresh_token_expired: "the refresh token has expired",
  session_revoked: "the session has been revoked",
} as const;

/**
 * The refresh rules, as a pure function of the locked token and session rows:
 * - an ended session refuses (revoked: session_revoked; expired or idle: refresh_token_expired);
 * - a live token rotates, moving the idle expiry;
 * - a rotated token whose successor is still live, presented within the grace window after its
 *   rotation, is a retry (lost response, two tabs): it rotates again, retiring that successor;
 * - any other rotated token is reuse: the session is revoked and the request fails.
 */
export function decideRefresh(now: Date, policy: SessionPolicy): RefreshDecider {
  return (token, session) => {
    const status = statusOf(session, now);
    if (status === "revoked") return { action: "reject", error: "session_revoked" };
    if (status === "expired") return { action: "reject", error: "refresh_token_expired" };
    const rotate = { action: "rotate", idleExpiresAt: idleExpiry(now, policy) } as const;
    if (token.rotatedAt === null) return rotate;
    const isWithinGrace = now.getTime() - token.rotatedAt.getTime() <= policy.refreshGraceSeconds * 1000;
    if (isWithinGrace && token.isSuccessorLive) return rotate;
    return { action: "revoke", reason: "refresh_token_reuse", error: "refresh_token_invalid" };
  };
}

function idleExpiry(now: Date, policy: SessionPolicy): Date | null {
  return policy.idleTimeoutSeconds === null ? null : new Date(now.getTime() + policy.idleTimeoutSeconds * 1000);
}

function checkLength(field: string, value: string, max: number): string {
  if (value.length > max) throw new AppError("invalid_request", `${field} must be at most ${max} characters`, field);
  return value;
}

function sessionNotFound() {
  return new AppError("session_not_found", "no session with that id");
}
