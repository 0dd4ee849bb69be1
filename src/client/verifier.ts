/**
 * The local verifier for tenant backends: checks access tokens with jose against the service's
 * JWKS, and follows the tenant's event feed (GET /v1/sessions/events) to refuse the tokens of
 * sessions that were revoked or ended, within a poll interval of the change, without a call per
 * token. When it has not heard from the service for longer than `maxStalenessMs` it fails closed
 * (or, if asked, asks the service's verify endpoint instead); it never answers from stale state.
 *
 * Client-side code: it imports jose and its own folder, nothing of the server's (a test keeps it
 * so), and is exported on its own as `sessions-service/verifier`.
 *
 *   const verifier = createSessionVerifier({ baseUrl, tenantId, secretKey });
 *   await verifier.ready;
 *   const result = await verifier.verify(token); // { valid: true, sessionId, userId, … } or { valid: false, error }
 */
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload } from "jose";
import { setTimeout as sleep } from "node:timers/promises";
import { readEventStream } from "./sse.js";

/** The longest an access token of this service can live (the server's maxAccessTokenTtlSeconds). */
export const maxAccessTokenTtlSeconds = 24 * 60 * 60;
/** The clock skew allowed on `exp`, `iat` and `nbf` (the server's clockToleranceSeconds). */
export const clockToleranceSeconds = 30;

export interface SessionVerifierOptions {
  /** The service, e.g. `http://localhost:8080`. */
  baseUrl: string;
  tenantId: string;
  /** A tenant API key (`sk_live_…`): it reads the tenant's event feed. */
  secretKey: string;
  /** The `iss` the service signs with (its ISSUER setting); default `baseUrl`. */
  issuer?: string;
  /** How long without a word from the service (an event or a heartbeat) before the verifier stops trusting its state. Default 10 s. */
  maxStalenessMs?: number;
  /** When stale or not yet caught up: `"fail"` (default) answers `unavailable`; `"verify"` asks POST /v1/sessions/verify. */
  onStale?: "fail" | "verify";
  /** Verified tokens kept, so a token seen again costs a map lookup (0: none). Default 10,000. */
  cacheSize?: number;
  /** Told of feed errors (the verifier reconnects by itself). */
  onError?: (err: unknown) => void;
}

export type VerifyErrorCode = "invalid_token" | "token_expired" | "session_revoked" | "session_expired" | "tenant_mismatch" | "unavailable";

/** The same answer as the service's verify endpoint, in its JSON shape's meaning. */
export type VerifyResult =
  | {
      valid: true;
      sessionId: string;
      userId: string;
      tenantId: string;
      role: string;
      orgId: string | undefined;
      mfaVerified: boolean;
      expiresAt: Date;
      claims: JWTPayload;
    }
  | { valid: false; error: { code: VerifyErrorCode; message: string } };

export interface SessionVerifier {
  /** Resolves once the verifier has read the revocations of the last day and is following the feed. */
  readonly ready: Promise<void>;
  verify(token: string): Promise<VerifyResult>;
  /** Verifies the `Authorization: Bearer …` header's token (a missing or malformed header is invalid_token). */
  verifyAuthorization(header: string | undefined): Promise<VerifyResult>;
  /** Whether the verifier has heard from the service within `maxStalenessMs` and caught up. */
  isFresh(): boolean;
  /** Sessions currently refused by the feed (revoked or ended, and their tokens could still live). */
  readonly deniedSessions: number;
  close(): void;
}

interface DeniedSession {
  /** After this instant no token of the session can be valid, so the entry can go. */
  until: number;
  code: "session_revoked" | "session_expired";
}

interface VerifiedToken {
  claims: JWTPayload & Record<string, unknown>;
  kid: string;
  expMs: number;
}

/** What a feed event carries that the verifier uses (the REST shape of WatchSessionEventsResponse). */
interface FeedEvent {
  session_id?: string;
  key_id?: string;
  occurred_at?: string;
}

const reconnectDelaysMs = [100, 250, 500, 1000, 2000];
const requiredClaims = ["exp", "iat", "nbf", "jti", "sub", "aud", "sid", "tenant_id", "role", "mfa_verified"];

export function createSessionVerifier(options: SessionVerifierOptions): SessionVerifier {
  const baseUrl = options.baseUrl.replace(/\/+$/, "");
  const { tenantId, secretKey } = options;
  const issuer = options.issuer ?? baseUrl;
  const maxStalenessMs = options.maxStalenessMs ?? 10_000;
  const onStale = options.onStale ?? "fail";
  const cacheSize = options.cacheSize ?? 10_000;
  const onError = options.onError ?? (() => undefined);
  const headers = { authorization: `Bearer ${secretKey}`, "x-tenant-id": tenantId };

  const jwks = createRemoteJWKSet(new URL(`${baseUrl}/.well-known/jwks.json`), { cooldownDuration: 5_000, cacheMaxAge: 10 * 60_000 });
  const denied = new Map<string, DeniedSession>();
  const revokedKeys = new Set<string>();
  const cache = new Map<string, VerifiedToken>();
  const closing = new AbortController();
  let lastHeardAt = 0;
  let isCaughtUp = false;
  let markReady: () => void = () => undefined;
  let refuse: (err: Error) => void = () => undefined;
  const ready = new Promise<void>((resolve, reject) => {
    markReady = resolve;
    refuse = reject;
  });
  // A caller that never awaits `ready` must not see an unhandled rejection.
  ready.catch(() => undefined);

  function deny(event: FeedEvent, code: DeniedSession["code"]): void {
    if (event.session_id === undefined) return;
    const occurredAt = event.occurred_at === undefined ? Date.now() : Date.parse(event.occurred_at);
    // A token of the session can have been issued up to the change (plus a second: times are whole
    // seconds) and live the longest TTL, plus the clock tolerance.
    const until = occurredAt + (1 + maxAccessTokenTtlSeconds + clockToleranceSeconds) * 1000;
    if (until <= Date.now()) return;
    denied.delete(event.session_id);
    denied.set(event.session_id, { until, code });
  }

  /** Entries are in about the order they expire (late commits are a little out of order, and only ever kept longer). */
  function forgetExpired(now: number): void {
    for (const [sessionId, entry] of denied) {
      if (entry.until > now) break;
      denied.delete(sessionId);
    }
  }

  function apply(type: string, event: FeedEvent): void {
    if (type === "session.revoked") deny(event, "session_revoked");
    else if (type === "session.ended") deny(event, "session_expired");
    else if (type === "signing_key.revoked" && event.key_id !== undefined) revokedKeys.add(event.key_id);
    else if (type === "signing_key.published" && event.key_id !== undefined) void fetchKeyWhenServed(event.key_id);
  }

  /**
   * Fetches the JWKS until it holds a newly published key. The instance the verifier reads may
   * serve it a few seconds after the event (each instance reloads its keys every few seconds); a
   * key published ahead of use is then in hand before its first token.
   */
  async function fetchKeyWhenServed(kid: string): Promise<void> {
    for (let attempt = 0; attempt < 60 && !closing.signal.aborted; attempt++) {
      try {
        await jwks.reload();
        if (jwks.jwks()?.keys.some((k) => k.kid === kid)) return;
      } catch (err) {
        onError(err);
      }
      await pause(500);
    }
  }

  /** Reads the feed for as long as the verifier is open: from a day back at first, then from the last cursor. */
  async function follow(): Promise<void> {
    let cursor: string | undefined;
    let failures = 0;
    while (!closing.signal.aborted) {
      try {
        const since = new Date(Date.now() - (maxAccessTokenTtlSeconds + clockToleranceSeconds + 1) * 1000);
        const url = cursor === undefined ? `${baseUrl}/v1/sessions/events?since=${since.toISOString()}` : `${baseUrl}/v1/sessions/events`;
        const res = await fetch(url, {
          headers: { ...headers, accept: "text/event-stream", ...(cursor === undefined ? {} : { "last-event-id": cursor }) },
          signal: closing.signal,
        });
        if (res.status !== 200 || res.body === null) {
          const body = (await res.json().catch(() => undefined)) as { error?: { code?: string; message?: string } } | undefined;
          // Events kept fewer than a day back: start again from a day back (what is denied stays denied).
          if (body?.error?.code === "cursor_expired") cursor = undefined;
          // A key the service refuses will not start working by retrying: say so to whoever awaits `ready`.
          if (res.status === 401 && !isCaughtUp) refuse(new Error(`the service refused the secret key for tenant ${tenantId} (401): the verifier cannot follow its events`));
          throw new Error(`the event feed answered ${res.status}${body?.error?.code ? ` ${body.error.code}` : ""}`);
        }
        for await (const block of readEventStream(res.body as unknown as AsyncIterable<Uint8Array>)) {
          if (block.event === "error") throw new Error(`the event feed ended with an error: ${block.data ?? ""}`);
          lastHeardAt = Date.now();
          failures = 0;
          if (block.id !== undefined) cursor = block.id;
          if (block.data === undefined) {
            // A heartbeat (an id, no data; not the `retry:` block that opens the stream): the first
            // one says the feed has caught up.
            if (!isCaughtUp && block.id !== undefined) {
              isCaughtUp = true;
              markReady();
            }
            continue;
          }
          apply(block.event, JSON.parse(block.data) as FeedEvent);
        }
        throw new Error("the event feed closed");
      } catch (err) {
        if (closing.signal.aborted) return;
        onError(err);
        const delay = reconnectDelaysMs[Math.min(failures++, reconnectDelaysMs.length - 1)]!;
        // Not unref'd: a program awaiting `ready` stays alive through the backoff.
        await pause(delay * (0.5 + Math.random()));
      }
    }
  }

  /** A wait that close() cuts short. */
  const pause = (ms: number) => sleep(ms, undefined, { signal: closing.signal }).catch(() => undefined);

  function isFresh(): boolean {
    return !closing.signal.aborted && isCaughtUp && Date.now() - lastHeardAt <= maxStalenessMs;
  }

  const invalid = (code: VerifyErrorCode, message: string): VerifyResult => ({ valid: false, error: { code, message } });

  async function verifyHere(token: string): Promise<VerifyResult> {
    const now = Date.now();
    let verified = cache.get(token);
    if (verified === undefined) {
      try {
        const { payload, protectedHeader } = await jwtVerify(token, jwks, {
          algorithms: ["EdDSA"],
          typ: "at+jwt",
          issuer,
          audience: tenantId,
          clockTolerance: clockToleranceSeconds,
          requiredClaims,
        });
        verified = { claims: payload as VerifiedToken["claims"], kid: protectedHeader.kid ?? "", expMs: (payload.exp as number) * 1000 };
      } catch (err) {
        if (err instanceof joseErrors.JWTExpired) return invalid("token_expired", "the access token has expired");
        if (err instanceof joseErrors.JWTClaimValidationFailed && err.claim === "aud") {
          return invalid("tenant_mismatch", "the access token belongs to another tenant");
        }
        if (err instanceof joseErrors.JOSEError || err instanceof TypeError) return invalid("invalid_token", "the access token is invalid");
        throw err;
      }
      if (cacheSize > 0) {
        if (cache.size >= cacheSize) cache.delete(cache.keys().next().value as string);
        cache.set(token, verified);
      }
    } else if (verified.expMs + clockToleranceSeconds * 1000 <= now) {
      cache.delete(token);
      return invalid("token_expired", "the access token has expired");
    }
    const { claims } = verified;
    if (revokedKeys.has(verified.kid)) return invalid("invalid_token", "the access token is invalid");
    if (typeof claims.sid !== "string" || claims.tenant_id !== tenantId) return invalid("invalid_token", "the access token is invalid");
    forgetExpired(now);
    const denial = denied.get(claims.sid);
    if (denial !== undefined) {
      return invalid(denial.code, denial.code === "session_revoked" ? "the session has been revoked" : "the session has expired");
    }
    return {
      valid: true,
      sessionId: claims.sid,
      userId: claims.sub as string,
      tenantId,
      role: claims.role as string,
      orgId: typeof claims.org_id === "string" ? claims.org_id : undefined,
      mfaVerified: claims.mfa_verified === true,
      expiresAt: new Date(verified.expMs),
      claims,
    };
  }

  /** The service's own answer, when the local state cannot be trusted and the caller asked for it. */
  async function verifyRemotely(token: string): Promise<VerifyResult> {
    try {
      const res = await fetch(`${baseUrl}/v1/sessions/verify`, {
        method: "POST",
        headers: { ...headers, "content-type": "application/json" },
        body: JSON.stringify({ token }),
        signal: AbortSignal.timeout(maxStalenessMs),
      });
      const body = (await res.json()) as Record<string, any>;
      if (res.status !== 200) return invalid("unavailable", `the service's verify answered ${res.status}`);
      if (body.valid !== true) return invalid(body.error?.code ?? "invalid_token", body.error?.message ?? "the access token is invalid");
      const local = await verifyHere(token);
      return local.valid ? local : invalid("invalid_token", "the access token is invalid");
    } catch {
      return invalid("unavailable", "the service cannot be reached to verify the token");
    }
  }

  void follow();

  return {
    ready,
    async verify(token) {
      if (closing.signal.aborted) return invalid("unavailable", "the verifier is closed");
      if (isFresh()) return verifyHere(token);
      if (onStale === "verify") return verifyRemotely(token);
      return invalid(
        "unavailable",
        isCaughtUp ? `the verifier has not heard from the service for over ${maxStalenessMs} ms` : "the verifier has not yet caught up with the service's events",
      );
    },
    verifyAuthorization(header) {
      // The scheme is case-insensitive (RFC 9110 section 11.1).
      const match = header === undefined ? null : /^bearer ([A-Za-z0-9_.-]+)$/i.exec(header);
      if (match === null) return Promise.resolve(invalid("invalid_token", "an Authorization: Bearer <access token> header is required"));
      return this.verify(match[1]!);
    },
    isFresh,
    get deniedSessions() {
      forgetExpired(Date.now());
      return denied.size;
    },
    close() {
      closing.abort();
    },
  };
}

/** The HTTP status a failed verification answers with: 503 while the verifier cannot vouch for its state, else 401. */
export function statusOf(result: VerifyResult): number {
  return result.valid ? 200 : result.error.code === "unavailable" ? 503 : 401;
}

interface NodeRequest {
  headers: Record<string, string | string[] | undefined>;
  /** Node's raw header lines (name, value, name, value, …), where a repeated header shows. */
  rawHeaders?: string[];
}

/**
 * The request's Authorization header. Node keeps only the first of repeated Authorization headers
 * in `headers`; a request carrying two credentials is ambiguous, so several are joined into one
 * value no token check accepts.
 */
function authorizationOf(req: NodeRequest): string | undefined {
  if (req.rawHeaders !== undefined) {
    const values: string[] = [];
    for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
      if ((req.rawHeaders[i] as string).toLowerCase() === "authorization") values.push(req.rawHeaders[i + 1] as string);
    }
    return values.length === 0 ? undefined : values.join(", ");
  }
  const header = req.headers.authorization;
  return typeof header === "string" ? header : undefined;
}
interface NodeResponse {
  statusCode: number;
  setHeader(name: string, value: string): unknown;
  end(body: string): unknown;
}

/**
 * A framework-neutral middleware (`(req, res, next)`, as Express, Connect and node:http servers
 * use): a valid token puts its result on `req.session` and calls next; otherwise it answers 401
 * (503 while stale) with the service's error shape.
 */
export function sessionMiddleware(verifier: SessionVerifier) {
  return (req: NodeRequest & { session?: VerifyResult }, res: NodeResponse, next: (err?: unknown) => void): void => {
    verifier.verifyAuthorization(authorizationOf(req)).then((result) => {
      if (result.valid) {
        req.session = result;
        next();
        return;
      }
      res.statusCode = statusOf(result);
      res.setHeader("content-type", "application/json");
      if (result.error.code !== "unavailable") res.setHeader("www-authenticate", `Bearer error="invalid_token"`);
      res.end(JSON.stringify({ error: result.error }));
    }, next);
  };
}

/**
 * A fastify `onRequest` hook: `app.addHook("onRequest", sessionHook(verifier))`. A valid token's
 * result is `request.session`; anything else is answered 401 (503 while stale).
 */
export function sessionHook(verifier: SessionVerifier) {
  return async (
    request: { headers: Record<string, string | string[] | undefined>; raw?: NodeRequest; session?: VerifyResult },
    reply: { code(status: number): { send(body: unknown): unknown }; header(name: string, value: string): unknown },
  ): Promise<unknown> => {
    const result = await verifier.verifyAuthorization(authorizationOf(request.raw ?? request));
    if (result.valid) {
      request.session = result;
      return undefined;
    }
    if (result.error.code !== "unavailable") reply.header("www-authenticate", `Bearer error="invalid_token"`);
    // Returning the reply tells fastify the request was answered here.
    return reply.code(statusOf(result)).send({ error: result.error });
  };
}
