import type {
  ApiKey,
  PageAfter,
  RefreshTokenRecord,
  Session,
  SessionStatus,
  SigningKeyRecord,
  Tenant,
} from "./model.js";

/**
 * The storage the domain needs. The domain owns this interface; src/store implements it on MySQL.
 * Every method that touches tenant data takes the tenant id first.
 */
export interface SessionStore {
  insertSession(session: Session, refreshTokenHash: Buffer): Promise<void>;
  getSession(tenantId: string, id: string): Promise<Session | null>;
  listSessions(tenantId: string, query: ListQuery): Promise<Session[]>;
  /** Revokes one session unless already revoked; null when it does not exist. */
  revokeSession(tenantId: string, id: string, now: Date, reason: RevokeReason): Promise<Session | null>;
  revokeSessions(tenantId: string, filter: RevokeFilter, now: Date, reason: RevokeReason): Promise<number>;
  /**
   * Locks the presented refresh token and its session, lets `decide` choose, and applies the
   * choice atomically. Concurrent calls for one token are serialised by the row lock.
   */
  refresh(tenantId: string, presentedHash: Buffer, newHash: Buffer, now: Date, decide: RefreshDecider): Promise<RefreshResult>;
}

export type RevokeReason = NonNullable<Session["revokeReason"]>;

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
  | { action: "rotate" }
  | { action: "revoke"; reason: RevokeReason; error: RefreshError }
  | { action: "reject"; error: RefreshError };

export type RefreshError = "refresh_token_invalid" | "refresh_token_expired" | "session_revoked";

export type RefreshDecider = (token: RefreshTokenRecord, session: Session) => RefreshDecision;

export type RefreshResult =
  | { ok: true; session: Session }
  | { ok: false; error: RefreshError };

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

export interface SigningKeyStore {
  listSigningKeys(): Promise<SigningKeyRecord[]>;
  insertSigningKey(key: SigningKeyRecord): Promise<void>;
  /** Runs `work` holding a lock shared by every instance, so two instances never both create a key. */
  withSigningKeyLock<T>(work: () => Promise<T>): Promise<T>;
}
