import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { create } from "@bufbuild/protobuf";
import { WatchSessionEventsResponseSchema, type SessionService as SessionServiceDesc, type WatchSessionEventsResponse } from "../../gen/sessions/v1/sessions_pb.js";
import type { Clock } from "../domain/clock.js";
import { encodeEventCursor, feedStart, type EventFeed, type FeedItem, type SessionEvent } from "../domain/events.js";
import type { SessionService } from "../domain/session-service.js";
import { fromProtoDeviceType, fromProtoStatus, timeFromProto, toProtoEvent, toProtoSession, verifyErrorCodeToProto } from "./converters.js";
import type { Metrics } from "./metrics.js";
import type { Handlers } from "./pipeline.js";

/**
 * The RPC handlers: convert in, call the domain, convert out. Authentication, limits and error
 * mapping happen around them (pipeline.ts), for every protocol alike.
 */
export function createSessionHandlers(
  service: SessionService,
  clock: Clock,
  events: { feed: EventFeed; cursorKey: Buffer },
  metrics: Pick<Metrics, "countVerify">,
): Handlers<typeof SessionServiceDesc> {
  /**
   * One message per event and tenant, shared by every subscriber it goes to (the live feed hands
   * them all the same event object): 400 readers of a tenant cost one conversion, one cursor MAC and
   * (sse.ts) one JSON encoding per event, not 400.
   */
  const messages = new WeakMap<SessionEvent, Map<string, WatchSessionEventsResponse>>();
  const messageOf = (item: FeedItem, tenantId: string, cursorOf: (seq: number) => string): WatchSessionEventsResponse => {
    if (item.kind === "heartbeat") return create(WatchSessionEventsResponseSchema, toProtoEvent(item, cursorOf, clock.now()));
    let byTenant = messages.get(item.event);
    if (byTenant === undefined) messages.set(item.event, (byTenant = new Map()));
    let message = byTenant.get(tenantId);
    if (message === undefined) byTenant.set(tenantId, (message = create(WatchSessionEventsResponseSchema, toProtoEvent(item, cursorOf, clock.now()))));
    return message;
  };
  return {
    async watchSessionEvents(req, { caller: { tenantId } }) {
      const start = feedStart(events.cursorKey, tenantId, { after: req.after, since: req.since === undefined ? undefined : timeFromProto(req.since, "since") });
      const subscription = await events.feed.subscribe(tenantId, start);
      const cursorOf = (seq: number) => encodeEventCursor(events.cursorKey, tenantId, seq);
      return (async function* () {
        try {
          for await (const item of subscription) yield messageOf(item, tenantId, cursorOf);
        } finally {
          subscription.close();
        }
      })();
    },

    async listSessions(req, { caller }) {
      const page = await service.list(caller.tenantId, {
        userId: req.userId,
        status: fromProtoStatus(req.status),
        limit: req.limit,
        cursor: req.cursor,
      });
      const now = clock.now();
      return {
        data: page.sessions.map((s) => toProtoSession(s, now)),
        pagination: { limit: page.limit, hasMore: page.hasMore, nextCursor: page.nextCursor },
      };
    },

    async getSession(req, { caller }) {
      const session = await service.get(caller.tenantId, req.id);
      return { session: toProtoSession(session, clock.now()) };
    },

    async revokeSession(req, { caller: { tenantId, keyId } }) {
      await service.revoke(tenantId, req.id, keyId);
      return {};
    },

    async revokeSessions(req, { caller: { tenantId, keyId } }) {
      // The proto's rules let exactly one of user_id and all_users through; were neither given, the
      // empty user id would match no session, never every user's.
      const target = req.allUsers ? { isAllUsers: true as const } : { userId: req.userId ?? "" };
      const revoked = await service.revokeAll(tenantId, { ...target, exceptSessionId: req.exceptSessionId }, keyId);
      return { revoked };
    },

    async verifyToken(req, { caller }) {
      const result = await service.verify(caller.tenantId, req.token);
      metrics.countVerify(result.valid ? "valid" : result.code);
      if (!result.valid) return { valid: false, error: { code: verifyErrorCodeToProto[result.code], message: result.message } };
      return {
        valid: true,
        sessionId: result.sessionId,
        userId: result.userId,
        tenantId: result.tenantId,
        role: result.role,
        orgId: result.orgId,
        mfaVerified: result.isMfaVerified,
        expiresAt: timestampFromDate(result.expiresAt),
      };
    },

    async createSession(req, { caller }) {
      const pair = await service.create(caller.tenantId, {
        userId: req.userId,
        userAgent: req.userAgent,
        ipAddress: req.ipAddress,
        country: req.country,
        deviceType: fromProtoDeviceType(req.deviceType),
        role: req.role,
        orgId: req.orgId,
        isMfaVerified: req.mfaVerified,
      });
      return {
        session: toProtoSession(pair.session, clock.now()),
        accessToken: pair.accessToken,
        refreshToken: pair.refreshToken,
        accessTokenExpiresAt: timestampFromDate(pair.accessTokenExpiresAt),
        refreshTokenExpiresAt: timestampFromDate(pair.refreshTokenExpiresAt),
      };
    },

    async refreshSession(req, { caller }) {
      const pair = await service.refresh(caller.tenantId, req.refreshToken);
      return {
        sessionId: pair.session.id,
        accessToken: pair.accessToken,
        refreshToken: pair.refreshToken,
        tokenType: "Bearer",
        expiresIn: pair.expiresInSeconds,
        accessTokenExpiresAt: timestampFromDate(pair.accessTokenExpiresAt),
        refreshTokenExpiresAt: timestampFromDate(pair.refreshTokenExpiresAt),
      };
    },
  };
}
