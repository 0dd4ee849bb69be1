import { AppError } from "./errors.js";
import { equalBytes, hmac } from "./secrets.js";

/**
 * Session events: what a consumer (an SSE reader, an RPC stream, a webhook, the local verifier)
 * hears of, in the order the log delivers them. The log itself is written by the database in the
 * same statement as each change (migration 0005); this module holds what the service decides about
 * it: the event kinds, their cursors, and how long they are kept.
 */
export const sessionEventTypes = ["session.created", "session.revoked", "session.ended", "signing_key.published", "signing_key.revoked"] as const;
export type SessionEventType = (typeof sessionEventTypes)[number];

export function isSessionEventType(value: string): value is SessionEventType {
  return (sessionEventTypes as readonly string[]).includes(value);
}

/** One event of the log, as stored. `seq` is its place in delivery order. */
export interface SessionEvent {
  seq: number;
  /** null: the service's own event (a signing key), which every tenant's feed carries. */
  tenantId: string | null;
  type: SessionEventType;
  sessionId: string | null;
  userId: string | null;
  /** session.revoked: the revoke reason; session.ended: idle_timeout or expired. */
  reason: string | null;
  /** session.revoked: the API key id that asked, when a tenant's call did. */
  actor: string | null;
  keyId: string | null;
  occurredAt: Date;
}

/** Whether `tenantId`'s feed carries the event: its own, and the service's (signing keys). */
export function isForTenant(event: SessionEvent, tenantId: string): boolean {
  return event.tenantId === null || event.tenantId === tenantId;
}

/** Events are kept this many days by default (EVENT_RETENTION_DAYS); older cursors must resynchronise. */
export const defaultEventRetentionDays = 7;

/**
 * An event's cursor: `evt_<seq>.<mac>`, opaque to consumers and bound to the tenant whose feed
 * issued it (a cursor from one tenant's feed is refused on another's). The seq is the log's global
 * delivery order, so consumers see gaps where other tenants' events are; the cursor says no more.
 */
const prefix = "evt_";
const macBytes = 12;

export function encodeEventCursor(key: Buffer, tenantId: string, seq: number): string {
  const payload = seq.toString(36);
  return `${prefix}${payload}.${hmac(key, "event-cursor", tenantId, payload).subarray(0, macBytes).toString("base64url")}`;
}

/** The seq a cursor resumes after; `invalid_cursor` for anything not issued to this tenant. */
export function decodeEventCursor(key: Buffer, tenantId: string, cursor: string): number {
  const invalid = () => new AppError("invalid_cursor", "the event cursor is invalid or was issued for another tenant", "after");
  if (!cursor.startsWith(prefix) || cursor.length > 64) throw invalid();
  const [payload, mac, ...rest] = cursor.slice(prefix.length).split(".");
  if (payload === undefined || mac === undefined || rest.length > 0 || !/^(0|[1-9a-z][0-9a-z]{0,12})$/.test(payload)) throw invalid();
  const expected = Buffer.from(hmac(key, "event-cursor", tenantId, payload).subarray(0, macBytes).toString("base64url"));
  if (!equalBytes(Buffer.from(mac), expected)) throw invalid();
  const seq = parseInt(payload, 36);
  if (!Number.isSafeInteger(seq)) throw invalid();
  return seq;
}

/** Where a feed starts: after a cursor's event, at the first event that occurred at or after a time, or from now on. */
export type FeedStart = { after: number } | { since: Date } | { now: true };

/** Where a consumer asked its feed to start (`after`: a cursor; `since`: a time); at most one of the two. */
export function feedStart(cursorKey: Buffer, tenantId: string, ask: { after: string; since: Date | undefined }): FeedStart {
  if (ask.after !== "" && ask.since !== undefined) throw new AppError("invalid_request", "give either after or since, not both", "after");
  if (ask.after !== "") return { after: decodeEventCursor(cursorKey, tenantId, ask.after) };
  if (ask.since !== undefined) return { since: ask.since };
  return { now: true };
}

/** What a subscriber receives: an event, or (when nothing came for a while) a heartbeat with its current position. */
export type FeedItem = { kind: "event"; event: SessionEvent } | { kind: "heartbeat"; seq: number };

/** One tenant's feed from its start: events in seq order, heartbeats, until closed. */
export interface Subscription extends AsyncIterable<FeedItem> {
  close(): void;
}

/** An instance's event feed (src/workers/event-feed.ts). */
export interface EventFeed {
  /**
   * Opens the tenant's feed at `start`. Throws `cursor_expired` for a start older than what
   * retention kept. The subscription ends with `subscriber_too_slow` if its reader falls too far
   * behind (it resumes from its last cursor), and quietly when the feed stops.
   */
  subscribe(tenantId: string, start: FeedStart): Promise<Subscription>;
  /** Ends every subscription and stops polling. */
  stop(): Promise<void>;
}

/** A cursor older than what retention kept: its reader may have missed events and must resynchronise. */
export function cursorExpired(): AppError {
  return new AppError("cursor_expired", "the cursor is older than the events kept; resynchronise (start again with `since`)", "after");
}
