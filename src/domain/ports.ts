import type { SessionEvent } from "./events.js";
import type { WebhookEndpoint } from "./webhooks.js";
import type {
  ApiKey,
  EndReason,
  PageAfter,
  RefreshTokenRecord,
  RevokeReason,
  Session,
  SessionEndState,
  SessionPolicy,
  SessionStatus,
  SigningKeyRecord,
  Tenant,
} from "./model.js";
import type { NumberedRefreshToken, RefreshChain } from "./refresh-tokens.js";

/**
 * The storage the domain needs. The domain owns this interface; src/store implements it on MySQL.
 * Every method that touches tenant data takes the tenant id first.
 */
export interface SessionStore {
  /**
   * Inserts a session and its first refresh token: the nonce of its numbered tokens, or the hash of
   * a legacy one (refresh-tokens.ts). With a cap, first revokes (reason
   * session_limit) the user's oldest active sessions so that at most `cap` remain with the new one;
   * concurrent creates for one user are serialised on that user's rows.
   */
  insertSession(session: Session, firstToken: { nonce: Buffer } | { legacyHash: Buffer }, cap: number | null): Promise<void>;
  getSession(tenantId: string, id: string): Promise<Session | null>;
  /**
   * Just what decides whether a session is active, read fresh from the database (never cached):
   * the hot path of every verify.
   */
  getSessionEndState(tenantId: string, id: string): Promise<SessionEndState | null>;
  listSessions(tenantId: string, query: ListQuery): Promise<Session[]>;
  /**
   * Revokes one session if it is still active at `revocation.now`; a session that has already
   * ended (revoked, or expired by time) keeps its end as it was. False when it does not exist.
   */
  revokeSession(tenantId: string, id: string, revocation: Revocation): Promise<boolean>;
  /**
   * Revokes the sessions the filter selects that are active at `revocation.now` and were created by
   * then; returns exactly how many this call revoked. Works in durable batches: a call cut short
   * leaves what it revoked revoked, and a retry revokes the rest.
   */
  revokeSessions(tenantId: string, filter: RevokeFilter, revocation: Revocation): Promise<number>;
  /**
   * Locks the presented refresh token and its session, lets `decide` choose, and applies the
   * choice atomically. Concurrent calls for one token are serialised by the row lock. `successorHash`
   * is the hash of the token a rotation makes live (derived from the presented one).
   */
  refresh(tenantId: string, presentedHash: Buffer, successorHash: Buffer, now: Date, decide: RefreshDecider): Promise<RefreshResult>;
  /**
   * Refreshes the session `token` names, whose refresh tokens are numbered (refresh-tokens.ts):
   * reads the session and its chain, lets `decide` choose (it checks the token's MAC), and applies
   * the choice with one statement guarded by the generation read, so concurrent calls for one
   * session cannot both rotate. A rotation makes the next generation live, at `now`. The result carries the chain as it
   * stands after the choice.
   */
  refreshNumbered(tenantId: string, token: NumberedRefreshToken, now: Date, decide: NumberedRefreshDecider): Promise<NumberedRefreshResult>;
}

export type NumberedRefreshDecider = (chain: RefreshChain, session: Session) => RefreshDecision;

export type NumberedRefreshResult =
  | { ok: true; session: Session; chain: RefreshChain }
  | { ok: false; error: RefreshError };

export interface Revocation {
  now: Date;
  reason: RevokeReason;
  /** Who asked, when known (an API key id). */
  by: string | null;
}

export interface ListQuery {
  userId?: string;
  status: SessionStatus;
  now: Date;
  after?: PageAfter;
  limit: number;
}

export interface RevokeFilter {
  userId?: string;
  exceptSessionId?: string;
}

export type RefreshDecision =
  /** The presented token is live: it is retired and its successor becomes the live token. */
  | { action: "rotate"; activeAt: Date; idleExpiresAt: Date | null }
  /** A retry within grace: its successor, still unused, stays the live token and is handed out again. */
  | { action: "retry"; activeAt: Date; idleExpiresAt: Date | null }
  /** Reuse: the session ends at `at` (a whole second, as every recorded instant). */
  | { action: "revoke"; at: Date; reason: RevokeReason; error: RefreshError }
  | { action: "reject"; error: RefreshError };

export type RefreshError = "refresh_token_invalid" | "refresh_token_expired" | "session_revoked";

export type RefreshDecider = (token: RefreshTokenRecord, session: Session) => RefreshDecision;

export type RefreshResult =
  | { ok: true; session: Session }
  | { ok: false; error: RefreshError };

/**
 * What the session sweep reads and writes: open sessions whose time has come (to record their end),
 * sessions that ended before a retention cutoff (deleted with all their refresh tokens), and refresh
 * tokens rotated away before it. Every call is one tenant's and one small batch, so no statement
 * holds locks for long.
 */
export interface SweepStore {
  /** Up to `limit` of the tenant's sessions with no recorded end whose scheduled end is at or before `now`. */
  sessionsDueToEnd(tenantId: string, now: Date, limit: number): Promise<(SessionEndState & { id: string })[]>;
  /**
   * Records these ends by time, for those sessions still without a recorded end and still due at
   * `now`; returns how many it recorded.
   */
  recordEnds(tenantId: string, now: Date, ends: { id: string; reason: EndReason }[]): Promise<number>;
  /** The first tenant id after `after` (in byte order) that has sessions, or null: a keyset walk over tenants. */
  nextTenantWithSessions(after: string | null): Promise<string | null>;
  /** Deletes up to `limit` sessions of the tenant that ended before `cutoff`, and their refresh tokens. */
  purgeEndedSessions(tenantId: string, cutoff: Date, limit: number): Promise<PurgeCounts>;
  /** Deletes up to `limit` of the tenant's refresh tokens rotated away before `cutoff`. */
  purgeRotatedTokens(tenantId: string, cutoff: Date, limit: number): Promise<number>;
  /** What purging at `cutoff` would delete for the tenant, changing nothing. */
  countPurgeable(tenantId: string, cutoff: Date): Promise<PurgeCounts>;
}

export interface PurgeCounts {
  sessions: number;
  refreshTokens: number;
}

/** The event log (see domain/events.ts): written by the database, read in seq order. */
export interface EventStore {
  /** Gives the next seqs to up to `limit` committed events that have none yet, numbered at `now`; returns their kinds. */
  sequence(limit: number, now: Date): Promise<{ type: SessionEvent["type"]; reason: string | null }[]>;
  /** The highest seq given so far (0 when none). */
  headSeq(): Promise<number>;
  /** Up to `limit` events after `seq`, every tenant's, in seq order. */
  readAfter(seq: number, limit: number): Promise<SessionEvent[]>;
  /** Up to `limit` events of the tenant's feed (its own and the service's) after `seq`, in seq order. */
  readTenantAfter(tenantId: string, seq: number, limit: number): Promise<SessionEvent[]>;
  /** The events with these seqs (those still kept), in seq order. */
  readSeqs(seqs: number[]): Promise<SessionEvent[]>;
  /** The lowest seq of an event that occurred at or after `time`; null when there is none. */
  firstSeqSince(time: Date): Promise<number | null>;
  /** Every event up to this seq has been deleted by retention (0: none yet). */
  purgedThrough(): Promise<number>;
  /** Deletes up to `limit` of the oldest events, all of which were numbered before `cutoff`; returns how many. */
  purgeBefore(cutoff: Date, limit: number): Promise<number>;
}

/** Webhook endpoints and their deliveries (domain/webhooks.ts; migration 0006). */
export interface WebhookStore {
  /** Registers an endpoint; its signing secret sealed under the KEK. */
  createEndpoint(endpoint: WebhookEndpoint, secretSealed: Buffer): Promise<void>;
  /** The tenant's endpoints with their delivery counts, oldest first. */
  listEndpoints(tenantId: string): Promise<WebhookEndpointReport[]>;
  /** Deletes the endpoint, its deliveries and its attempts; false when the tenant has no such endpoint. */
  deleteEndpoint(tenantId: string, id: string): Promise<boolean>;
  /** A new current secret; the old one keeps signing until `previousUntil`. False when there is no such endpoint. */
  rotateSecret(tenantId: string, id: string, secretSealed: Buffer, previousUntil: Date): Promise<boolean>;
  /** Enables (reason null) or disables an endpoint; false when the tenant has no such endpoint. */
  setEnabled(tenantId: string, id: string, isEnabled: boolean, reason: string | null): Promise<boolean>;
  /** Every enabled endpoint, for the dispatcher to queue events for. */
  enabledEndpoints(): Promise<WebhookEndpoint[]>;
  /**
   * Queues deliveries of `seqs` to the endpoint and moves its position from `from` to `to`, in one
   * transaction; nothing when the position is no longer `from` (false).
   */
  queue(endpointId: string, from: number, to: number, seqs: number[], now: Date): Promise<boolean>;
  /** Up to `limit` pending deliveries of enabled endpoints due at `now`, earliest first, at most `perEndpoint` of each endpoint. */
  dueDeliveries(now: Date, limit: number, perEndpoint: number): Promise<DueDelivery[]>;
  /**
   * Claims deliveries for an attempt: moves those still due at `now` to `until`, so no other
   * dispatcher takes them meanwhile (and an attempt cut short by a crash is retried after `until`).
   * Returns the ones this call claimed.
   */
  claim(deliveries: DueDelivery[], now: Date, until: Date): Promise<DueDelivery[]>;
  /** Records an attempt and what follows from it: delivered, tried again at `retryAt`, or given up. */
  recordAttempt(delivery: { endpointId: string; seq: number }, attempt: WebhookAttempt, outcome: { state: "delivered" } | { state: "retry"; retryAt: Date } | { state: "failed" }): Promise<void>;
  /** The endpoint's last attempts, newest first. */
  listAttempts(tenantId: string, endpointId: string, limit: number): Promise<(WebhookAttempt & { seq: number })[]>;
  /** Deletes up to `limit` finished deliveries (and attempts) from before `cutoff`; returns how many deliveries. */
  purgeFinished(cutoff: Date, limit: number): Promise<number>;
}

export interface WebhookEndpointReport extends WebhookEndpoint {
  pending: number;
  delivered: number;
  failed: number;
}

export interface DueDelivery {
  endpointId: string;
  tenantId: string;
  url: string;
  seq: number;
  attempts: number;
  secretSealed: Buffer;
  previousSecretSealed: Buffer | null;
  previousSecretUntil: Date | null;
}

export interface WebhookAttempt {
  attemptedAt: Date;
  /** The HTTP status, or null when no response came. */
  status: number | null;
  /** What went wrong, when it did (never the response body). */
  error: string | null;
  durationMs: number;
}

/** Leases for background work one instance at a time should do; they outlive connections. */
export interface LeaseStore {
  /** Takes or renews the lease `name` for `holder` until `until`; false when another holder has it. */
  tryAcquire(name: string, holder: string, now: Date, until: Date): Promise<boolean>;
  /** Gives the lease up at once if `holder` has it, so another instance need not wait it out. */
  release(name: string, holder: string, now: Date): Promise<void>;
}

export interface TenantStore {
  createTenant(tenant: Tenant): Promise<void>;
  listTenants(): Promise<Tenant[]>;
  getTenant(id: string): Promise<Tenant | null>;
  createApiKey(key: ApiKey, hash: Buffer): Promise<void>;
  listApiKeys(tenantId: string): Promise<ApiKey[]>;
  revokeApiKey(tenantId: string, id: string, now: Date): Promise<boolean>;
  /** The key with this hash, for this tenant only; null when there is none. */
  findApiKey(tenantId: string, hash: Buffer): Promise<ApiKey | null>;
}

export interface PolicyStore {
  getPolicy(tenantId: string): Promise<SessionPolicy | null>;
  putPolicy(tenantId: string, policy: SessionPolicy, now: Date): Promise<void>;
}

export interface SigningKeyStore {
  listSigningKeys(): Promise<SigningKeyRecord[]>;
  insertSigningKey(key: SigningKeyRecord): Promise<void>;
  /** Marks when a key stops signing (it stays published for the longest token lifetime after). */
  retireSigningKey(id: string, at: Date): Promise<void>;
  /** Withdraws a key at once: it leaves JWKS and its tokens stop verifying. */
  revokeSigningKey(id: string, at: Date): Promise<boolean>;
  /** Runs `work` holding a lock shared by every instance, so two instances never both create a key. */
  withSigningKeyLock<T>(work: () => Promise<T>): Promise<T>;
}
