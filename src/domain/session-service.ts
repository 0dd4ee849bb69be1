import { wholeSeconds, type Clock } from "./clock.js";
import { decodeCursor, encodeCursor } from "./cursor.js";
import { deviceTypeFromUserAgent } from "./device-type.js";
import { AppError } from "./errors.js";
import { scheduledEndOf, statusOf, type DeviceType, type Session, type SessionPolicy, type SessionStatus } from "./model.js";
import type { PolicySource } from "./policy.js";
import type { RefreshDecider, SessionStore } from "./ports.js";
import { hashSecret, idPatterns, newId, newNonce, newSecret } from "./secrets.js";
import type { AccessTokenClaims, KeyRing } from "./signing-keys.js";
import {
  isGenuine,
  lastGeneration,
  legacyRefreshTokenPattern,
  numberedRefreshToken,
  parseNumberedRefreshToken,
  recordOfGeneration,
  successorOf,
} from "./refresh-tokens.js";
import { cutToCharacters, isIdentifier } from "./text-rules.js";

export interface SessionServiceDeps {
  sessions: SessionStore;
  keys: KeyRing;
  clock: Clock;
  /** Key for the MACs on pagination cursors. */
  cursorKey: Buffer;
  /** Key refresh tokens are made with (refresh-tokens.ts). */
  refreshTokenKey: Buffer;
  /** The refresh tokens new sessions get; both are always accepted. */
  refreshTokenFormat: "numbered" | "legacy";
  policies: PolicySource;
}

/**
 * What a request may hold is declared on its proto fields (buf.validate: lengths, limits, formats,
 * required fields, enum values, text rules) and checked by the request pipeline before the service
 * is called (src/transport/validation.ts), for every protocol. The service decides what those rules
 * cannot: defaults (20 rows, active sessions, role member), values it cuts or normalizes (user
 * agents, country codes), and answers other than invalid_request: a cursor, session id or refresh
 * token it did not issue, and a token that is merely invalid.
 */

/**
 * A filter the caller left out is undefined. One that is present says something (validated: never
 * empty, so never read as "every user").
 */
export interface ListInput {
  userId?: string | undefined;
  status?: SessionStatus | undefined;
  limit?: number | undefined;
  cursor?: string | undefined;
}

/** Whose sessions to revoke: one user's, or every user's, which must be said explicitly, never inferred from a missing user id. */
export type RevokeAllInput = ({ userId: string } | { isAllUsers: true }) & { exceptSessionId?: string | undefined };

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
  /** When the refresh token stops working unless used: the session's scheduled end (scheduledEndOf). */
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

/**
 * Longer than any token we issue; anything longer is rejected before it is parsed. Not a rule in the
 * proto: such a token is an invalid token (valid=false, invalid_token), not an invalid request.
 */
export const maxAccessTokenLength = 4096;

const defaultLimit = 20;
/** The longest user id and org id, and role, in characters: the max_len the proto declares on create's fields, here for the claims of tokens. */
const maxIdCharacters = 255;
const maxRoleCharacters = 64;
/** User agents are kept to this many characters; longer ones are cut, not refused (a cut is no rule protovalidate can declare). */
const maxUserAgentCharacters = 1024;

export type SessionService = ReturnType<typeof createSessionService>;

/**
 * The session claims a token must carry, of the types and under the rules create applied when it
 * signed them. Only a token signed by one of our keys gets here, but verify answers with these
 * claims: whatever a key signed, a malformed one is invalid_token, never an error or a value
 * create would have refused.
 */
function hasSessionClaims(claims: AccessTokenClaims): boolean {
  const { sub, sid, tenant_id, jti, role, org_id, mfa_verified } = claims as Record<string, unknown>;
  if (typeof sid !== "string" || typeof tenant_id !== "string" || typeof jti !== "string" || typeof mfa_verified !== "boolean") return false;
  if (typeof sub !== "string" || typeof role !== "string" || (org_id !== undefined && typeof org_id !== "string")) return false;
  return isIdentifier(sub, maxIdCharacters) && isIdentifier(role, maxRoleCharacters) && (org_id === undefined || isIdentifier(org_id, maxIdCharacters));
}

export function createSessionService({ sessions, keys, clock, cursorKey, refreshTokenKey, refreshTokenFormat, policies }: SessionServiceDeps) {
  /** An access token never outlives its session's absolute expiry. `now` is a whole second. */
  async function issueAccessToken(session: Session, now: Date, policy: SessionPolicy) {
    const expiresAt = wholeSeconds(new Date(Math.min(now.getTime() + policy.accessTokenTtlSeconds * 1000, session.expiresAt.getTime())));
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
      const status = input.status ?? "active";
      const { userId } = input;
      // The user id is bound with a marker, so "no filter" and any user id can never share a cursor.
      const binding = [tenantId, userId === undefined ? "*" : `=${userId}`, status];
      const after = input.cursor === undefined ? undefined : decodeCursor(cursorKey, binding, input.cursor);
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
      // A malformed id is no session's id: 404 like any missing one, so not a format rule in the proto.
      const session = idPatterns.session.test(id) ? await sessions.getSession(tenantId, id) : null;
      if (session === null) throw sessionNotFound();
      return session;
    },

    /**
     * Revokes a session that is active; one that already ended keeps its end (204 all the same).
     * `by` is who asked (an API key id), recorded on the session.
     */
    async revoke(tenantId: string, id: string, by: string | null): Promise<void> {
      const exists =
        idPatterns.session.test(id) &&
        (await sessions.revokeSession(tenantId, id, { now: wholeSeconds(clock.now()), reason: "revoked", by }));
      if (!exists) throw sessionNotFound();
    },

    /** Revokes every active session of one user, or of every user of the tenant (`isAllUsers`). */
    async revokeAll(tenantId: string, filter: RevokeAllInput, by: string | null): Promise<number> {
      return sessions.revokeSessions(
        tenantId,
        { userId: "isAllUsers" in filter ? undefined : filter.userId, exceptSessionId: filter.exceptSessionId },
        { now: wholeSeconds(clock.now()), reason: "revoked_all", by },
      );
    },

    async verify(tenantId: string, token: string): Promise<VerifyResult> {
      if (token.length > maxAccessTokenLength) return { valid: false, code: "invalid_token", message: "the access token is invalid" };
      const check = await keys.verify(token);
      if (!check.ok) return { valid: false, code: check.code, message: check.message };
      const { claims } = check;
      if (!hasSessionClaims(claims)) return { valid: false, code: "invalid_token", message: "the access token is invalid" };
      if (claims.tenant_id !== tenantId || claims.aud !== tenantId) {
        return { valid: false, code: "tenant_mismatch", message: "the access token belongs to another tenant" };
      }
      const state = idPatterns.session.test(claims.sid) ? await sessions.getSessionEndState(tenantId, claims.sid) : null;
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
      const { userId } = input;
      const role = input.role === "" ? "member" : input.role;
      const orgId = input.orgId === undefined || input.orgId === "" ? null : input.orgId;
      const userAgent = cutToCharacters(input.userAgent, maxUserAgentCharacters);
      // Two letters, either case (validated); stored as ISO 3166-1 writes them.
      const country = input.country.toUpperCase();
      const policy = await policies.policyFor(tenantId);
      const now = wholeSeconds(clock.now());
      const session: Session = {
        tenantId,
        id: newId("ses"),
        userId,
        userAgent,
        ipAddress: input.ipAddress,
        country,
        deviceType: input.deviceType ?? deviceTypeFromUserAgent(userAgent),
        role,
        orgId,
        isMfaVerified: input.isMfaVerified,
        createdAt: now,
        lastActiveAt: now,
        expiresAt: new Date(now.getTime() + policy.sessionLifetimeSeconds * 1000),
        idleExpiresAt: idleExpiry(now, policy),
        recordedEnd: null,
      };
      let refreshToken: string;
      if (refreshTokenFormat === "numbered") {
        const nonce = newNonce();
        await sessions.insertSession(session, { nonce }, policy.maxSessionsPerUser);
        refreshToken = numberedRefreshToken(refreshTokenKey, tenantId, session.id, 0, nonce);
      } else {
        refreshToken = newSecret("rt_");
        await sessions.insertSession(session, { legacyHash: hashSecret(refreshToken) }, policy.maxSessionsPerUser);
      }
      const { accessToken, accessTokenExpiresAt } = await issueAccessToken(session, now, policy);
      return { session, accessToken, refreshToken, accessTokenExpiresAt, refreshTokenExpiresAt: scheduledEndOf(session).at };
    },

    /**
     * Exchanges a refresh token for a new pair. The new refresh token is always the presented one's
     * successor, made from it (refresh-tokens.ts): a retry within grace gets the same one.
     */
    async refresh(tenantId: string, refreshToken: string): Promise<TokenPair & { expiresInSeconds: number }> {
      const numbered = parseNumberedRefreshToken(refreshToken);
      // Not a format rule in the proto: a token we never issued is refresh_token_invalid (401), like an unknown one.
      if (numbered === undefined && !legacyRefreshTokenPattern.test(refreshToken)) {
        throw new AppError("refresh_token_invalid", "the refresh token is invalid");
      }
      const policy = await policies.policyFor(tenantId);
      const decidedAt = clock.now();
      const now = wholeSeconds(decidedAt);
      const decide = decideRefresh(decidedAt, policy);
      let result: { session: Session; refreshToken: string };
      if (numbered !== undefined) {
        const refreshed = await sessions.refreshNumbered(tenantId, numbered, decidedAt, (chain, session) => {
          const token = isGenuine(refreshTokenKey, tenantId, numbered, chain.nonce) ? recordOfGeneration(numbered.generation, chain) : undefined;
          if (token === undefined) return { action: "reject", error: "refresh_token_invalid" };
          if (token.rotatedAt === null && chain.generation === lastGeneration) return { action: "reject", error: "refresh_token_expired" };
          return decide(token, session);
        });
        if (!refreshed.ok) throw new AppError(refreshed.error, refreshErrorMessages[refreshed.error]);
        const { generation, nonce } = refreshed.chain;
        result = { session: refreshed.session, refreshToken: numberedRefreshToken(refreshTokenKey, tenantId, numbered.sessionId, generation, nonce) };
      } else {
        const next = successorOf(refreshTokenKey, refreshToken);
        const refreshed = await sessions.refresh(tenantId, hashSecret(refreshToken), hashSecret(next), decidedAt, decide);
        if (!refreshed.ok) throw new AppError(refreshed.error, refreshErrorMessages[refreshed.error]);
        result = { session: refreshed.session, refreshToken: next };
      }
      const { accessToken, accessTokenExpiresAt } = await issueAccessToken(result.session, now, policy);
      return {
        session: result.session,
        accessToken,
        refreshToken: result.refreshToken,
        accessTokenExpiresAt,
        refreshTokenExpiresAt: scheduledEndOf(result.session).at,
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
 * The refresh rules, as a pure function of the locked token and session rows, at `now`:
 * - an ended session refuses (revoked: session_revoked; expired or idle: refresh_token_expired);
 * - the live token rotates: its successor becomes the live token, and the idle deadline moves;
 * - a rotated token whose successor is still live (unused), presented within the grace window after
 *   its rotation, is a retry (a lost response, two tabs): the same successor is handed out again,
 *   so every holder ends up with the one live token, and the idle deadline moves;
 * - any other rotated token is reuse: the session is revoked and the request fails.
 * Instants it records (last_active_at, the idle deadline) are whole seconds; the grace window is
 * measured from the exact rotation time.
 */
export function decideRefresh(now: Date, policy: SessionPolicy): RefreshDecider {
  return (token, session) => {
    const status = statusOf(session, now);
    if (status === "revoked") return { action: "reject", error: "session_revoked" };
    if (status === "expired") return { action: "reject", error: "refresh_token_expired" };
    const activeAt = wholeSeconds(now);
    const idleExpiresAt = idleExpiry(activeAt, policy);
    if (token.rotatedAt === null) return { action: "rotate", activeAt, idleExpiresAt };
    const isWithinGrace = now.getTime() - token.rotatedAt.getTime() <= policy.refreshGraceSeconds * 1000;
    if (isWithinGrace && token.isSuccessorLive) {
      // The successor on record is not the one we can derive only if the derivation key changed
      // since: refuse this retry rather than mint a second live token; the other holder goes on.
      return token.isSuccessorDerived ? { action: "retry", activeAt, idleExpiresAt } : { action: "reject", error: "refresh_token_invalid" };
    }
    return { action: "revoke", at: activeAt, reason: "refresh_token_reuse", error: "refresh_token_invalid" };
  };
}

function idleExpiry(now: Date, policy: SessionPolicy): Date | null {
  return policy.idleTimeoutSeconds === null ? null : new Date(now.getTime() + policy.idleTimeoutSeconds * 1000);
}

function sessionNotFound() {
  return new AppError("session_not_found", "no session with that id");
}
