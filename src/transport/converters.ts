import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  DeviceType as ProtoDeviceType,
  EndReason as ProtoEndReason,
  SessionStatus as ProtoSessionStatus,
  VerifyErrorCode as ProtoVerifyErrorCode,
  type SessionSchema,
  type WatchSessionEventsResponseSchema,
} from "../../gen/sessions/v1/sessions_pb.js";
import { AppError } from "../domain/errors.js";
import type { FeedItem } from "../domain/events.js";
import { endOf, statusOf, type DeviceType, type EndReason, type Session, type SessionStatus } from "../domain/model.js";
import type { VerifyErrorCode } from "../domain/session-service.js";

/** Small pure converters between domain values and generated messages, named by direction. */

const statusToProto: Record<SessionStatus, ProtoSessionStatus> = {
  active: ProtoSessionStatus.ACTIVE,
  expired: ProtoSessionStatus.EXPIRED,
  revoked: ProtoSessionStatus.REVOKED,
};

const deviceTypeToProto: Record<DeviceType, ProtoDeviceType> = {
  desktop: ProtoDeviceType.DESKTOP,
  mobile: ProtoDeviceType.MOBILE,
  tablet: ProtoDeviceType.TABLET,
  bot: ProtoDeviceType.BOT,
  unknown: ProtoDeviceType.UNKNOWN,
};

const endReasonToProto: Record<EndReason, ProtoEndReason> = {
  revoked: ProtoEndReason.REVOKED,
  revoked_all: ProtoEndReason.REVOKED_ALL,
  refresh_token_reuse: ProtoEndReason.REFRESH_TOKEN_REUSE,
  session_limit: ProtoEndReason.SESSION_LIMIT,
  idle_timeout: ProtoEndReason.IDLE_TIMEOUT,
  expired: ProtoEndReason.EXPIRED,
};

/** REST JSON writes each as the domain's code (VERIFY_ERROR_CODE_SESSION_REVOKED → "session_revoked"); test/unit/codecs.test.ts holds them equal. */
export const verifyErrorCodeToProto: Record<VerifyErrorCode, ProtoVerifyErrorCode> = {
  invalid_token: ProtoVerifyErrorCode.INVALID_TOKEN,
  token_expired: ProtoVerifyErrorCode.TOKEN_EXPIRED,
  tenant_mismatch: ProtoVerifyErrorCode.TENANT_MISMATCH,
  session_revoked: ProtoVerifyErrorCode.SESSION_REVOKED,
  session_expired: ProtoVerifyErrorCode.SESSION_EXPIRED,
};

function invert<K extends string, V extends number>(table: Record<K, V>): Map<V, K> {
  return new Map(Object.entries(table).map(([k, v]) => [v as V, k as K]));
}

const statusFromProtoTable = invert(statusToProto);
const deviceTypeFromProtoTable = invert(deviceTypeToProto);

export function toProtoSession(session: Session, now: Date): MessageInitShape<typeof SessionSchema> {
  const end = endOf(session, now);
  return {
    id: session.id,
    userId: session.userId,
    tenantId: session.tenantId,
    status: statusToProto[statusOf(session, now)],
    userAgent: session.userAgent,
    ipAddress: session.ipAddress,
    country: session.country,
    deviceType: deviceTypeToProto[session.deviceType],
    createdAt: timestampFromDate(session.createdAt),
    lastActiveAt: timestampFromDate(session.lastActiveAt),
    expiresAt: timestampFromDate(session.expiresAt),
    role: session.role,
    orgId: session.orgId ?? undefined,
    mfaVerified: session.isMfaVerified,
    endedAt: end ? timestampFromDate(end.at) : undefined,
    endReason: end ? endReasonToProto[end.reason] : ProtoEndReason.UNSPECIFIED,
    revokedBy: session.recordedEnd?.by ?? undefined,
  };
}

/**
 * Unspecified (0), unknown numbers and undefined map to undefined: the domain applies its default. (A
 * status filter that is present names a status: the proto's rules refuse 0 and unknown numbers.)
 */
export function fromProtoStatus(status: ProtoSessionStatus | undefined): SessionStatus | undefined {
  return status === undefined ? undefined : statusFromProtoTable.get(status);
}

export function fromProtoDeviceType(deviceType: ProtoDeviceType): DeviceType | undefined {
  return deviceTypeFromProtoTable.get(deviceType);
}

/**
 * A Timestamp the caller sent, as a Date. Its seconds are within the Timestamp range by the proto's
 * rules (timestamp gte/lte); its nanos are checked here, because protovalidate compares instants
 * and lets nanos outside 0 to 999,999,999 through (only binary protobuf can carry them).
 */
export function timeFromProto(ts: Timestamp, field: string): Date {
  if (ts.nanos < 0 || ts.nanos > 999_999_999) throw new AppError("invalid_request", `${field} must have nanos from 0 to 999999999`, field);
  return timestampDate(ts);
}

/** A feed item as the RPC and SSE carry it; `cursorOf` makes the tenant's cursor for a seq. */
export function toProtoEvent(item: FeedItem, cursorOf: (seq: number) => string, now: Date): MessageInitShape<typeof WatchSessionEventsResponseSchema> {
  if (item.kind === "heartbeat") return { cursor: cursorOf(item.seq), type: "heartbeat", occurredAt: timestampFromDate(now) };
  const e = item.event;
  return {
    cursor: cursorOf(e.seq),
    type: e.type,
    sessionId: e.sessionId ?? undefined,
    userId: e.userId ?? undefined,
    reason: e.reason ?? undefined,
    revokedBy: e.type === "session.revoked" ? (e.actor ?? undefined) : undefined,
    keyId: e.keyId ?? undefined,
    occurredAt: timestampFromDate(e.occurredAt),
  };
}
