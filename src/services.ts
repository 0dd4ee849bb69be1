import { hkdfSync } from "node:crypto";
import type { DestinationStream, Logger } from "pino";
import { collectDefaultMetrics, Gauge, Registry } from "prom-client";
import { setTimeout as sleep } from "node:timers/promises";
import type { Config } from "./config.js";
import { createAuthenticator, type Authenticator } from "./domain/api-keys.js";
import { systemClock, type Clock } from "./domain/clock.js";
import { createPolicySource } from "./domain/policy.js";
import { createSessionService, type SessionService } from "./domain/session-service.js";
import { AppError } from "./domain/errors.js";
import type { EventFeed } from "./domain/events.js";
import type { EventStore, SessionStore, TenantStore } from "./domain/ports.js";
import { createKeyRing, type KeyRing } from "./domain/signing-keys.js";
import { createLogger, flushLogs } from "./logger.js";
import { closePool, openDatabase, poolStats, probeDatabase, type Pool } from "./store/db.js";
import { createRateLimits, type RateLimits } from "./transport/rate-limits.js";
import { createLeaseStore } from "./store/lease-store.js";
import { createSweepStore } from "./store/sweep-store.js";
import { migrate } from "./store/migrate.js";
import { createPolicyStore } from "./store/policy-store.js";
import { createSessionStore } from "./store/session-store.js";
import { createSigningKeyStore } from "./store/signing-key-store.js";
import { createTenantStore } from "./store/tenant-store.js";
import { createEventStore } from "./store/event-store.js";
import { createEventFeed } from "./workers/event-feed.js";
import { createEventSequencer, type EventSequencer } from "./workers/event-sequencer.js";
import { createSessionSweep, type SessionSweep } from "./workers/session-sweep.js";
import { createWebhookStore } from "./store/webhook-store.js";
import { createWebhookDispatcher, type WebhookDispatcher } from "./workers/webhook-dispatcher.js";

/** Everything the app runs on, built once at start and closed once at the end. */
export interface Services {
  pool: Pool;
  /** Prometheus metrics of every part (default Node metrics, RPCs, workers). */
  metricsRegistry: Registry;
  clock: Clock;
  keyRing: KeyRing;
  sessionService: SessionService;
  authenticator: Authenticator;
  tenantStore: TenantStore;
  sessionStore: SessionStore;
  sessionSweep: SessionSweep;
  eventStore: EventStore;
  eventSequencer: EventSequencer;
  /** This instance's event feed: one poller, every SSE and RPC subscriber. */
  eventFeed: EventFeed;
  /** Keys event cursors (each bound to its tenant). */
  eventCursorKey: Buffer;
  /** Sends the event log to webhook endpoints (one instance at a time). */
  webhookDispatcher: WebhookDispatcher;
  /** Rate limits, in Redis when REDIS_URL is set (shared by every instance), else in this instance's memory. */
  rateLimits: RateLimits;
  log: Logger;
  /**
   * Whether this instance can serve: the database answers and takes writes, and the signing keys
   * are fresh (a key ring that cannot reload would miss emergency revocations). `timeoutMs` bounds
   * the database probe.
   */
  readiness(timeoutMs: number): Promise<{ isReady: boolean; problems: string[] }>;
  /** Starts the background workers (the session sweep, the event sequencer, the webhook dispatcher). */
  startWorkers(): void;
  close(): Promise<void>;
}

export interface OpenOptions {
  clock?: Clock;
  /** Where logs go (tests read them); stdout by default. */
  logStream?: DestinationStream;
  /**
   * How long to keep trying while the database is unreachable (it may start after us: a fresh
   * deployment, a restart of both). 0, the default, tries once. Only `unavailable` is retried:
   * bad credentials or a failing migration stop at once.
   */
  startupTimeoutMs?: number;
  /** Told about each failed attempt, with the delay before the next. */
  onRetry?: (err: unknown, delayMs: number) => void;
}

/** Backoff between startup attempts: doubling from 250 ms, capped at 5 s. */
const firstRetryDelayMs = 250;
const maxRetryDelayMs = 5_000;

/**
 * Opens the database (creating and migrating it), loads or creates the signing key; while the
 * database is unavailable, retries with backoff until `startupTimeoutMs` has passed.
 */
export async function openServices(config: Config, options: OpenOptions = {}): Promise<Services> {
  const { startupTimeoutMs = 0, onRetry } = options;
  const giveUpAt = Date.now() + startupTimeoutMs;
  for (let delayMs = firstRetryDelayMs; ; delayMs = Math.min(delayMs * 2, maxRetryDelayMs)) {
    try {
      return await openOnce(config, options.clock ?? systemClock, createLogger(config.logLevel, options.logStream));
    } catch (err) {
      const isUnavailable = err instanceof AppError && err.code === "unavailable";
      const wait = Math.min(delayMs, giveUpAt - Date.now());
      if (!isUnavailable || wait <= 0) throw err;
      onRetry?.(err, wait);
      await sleep(wait);
    }
  }
}

async function openOnce(config: Config, clock: Clock, log: Logger): Promise<Services> {
  const pool = await openDatabase({ url: config.databaseUrl, poolSize: config.databasePoolSize });
  try {
    await migrate(pool);
    const keyRing = createKeyRing({
      store: createSigningKeyStore(pool),
      keyEncryptionKey: config.keyEncryptionKey,
      clock,
      issuer: config.issuer,
      onInvalidKey: (kid, reason) => log.error({ kid, reason }, "a stored signing key is invalid and is not used"),
    });
    await keyRing.start();
    const tenantStore = createTenantStore(pool);
    const sessionStore = createSessionStore(pool);
    const metricsRegistry = new Registry();
    collectDefaultMetrics({ register: metricsRegistry });
    registerKeyRingMetrics(metricsRegistry, keyRing);
    new Gauge({
      name: "sessions_db_pool_connections",
      help: "This instance's database pool: connections in use, idle, and calls waiting for one.",
      labelNames: ["state"] as const,
      registers: [metricsRegistry],
      collect() {
        const { inUse, idle, waiting } = poolStats(pool);
        this.set({ state: "in_use" }, inUse);
        this.set({ state: "idle" }, idle);
        this.set({ state: "waiting" }, waiting);
      },
    });
    const leases = createLeaseStore(pool);
    const eventStore = createEventStore(pool);
    const webhookStore = createWebhookStore(pool);
    const sessionSweep = createSessionSweep({
      store: createSweepStore(pool),
      leases,
      events: eventStore,
      webhooks: webhookStore,
      clock,
      retentionDays: config.retentionDays,
      eventRetentionDays: config.eventRetentionDays,
      intervalMs: config.sweepIntervalMs,
      registry: metricsRegistry,
      onError: (err) => log.error({ err }, "retention sweep failed"),
    });
    // Cursor MACs and refresh-token successors get their own keys, derived so that one secret (the
    // KEK) is all an operator manages.
    const deriveKey = (purpose: string) => Buffer.from(hkdfSync("sha256", config.keyEncryptionKey, Buffer.alloc(0), purpose, 32));
    const eventSequencer = createEventSequencer({
      store: eventStore,
      leases,
      clock,
      registry: metricsRegistry,
      idleIntervalMs: config.eventPollIntervalMs,
      onError: (err) => log.error({ err }, "numbering events failed"),
    });
    const eventFeed = createEventFeed({
      store: eventStore,
      clock,
      registry: metricsRegistry,
      pollIntervalMs: config.eventPollIntervalMs,
      heartbeatMs: config.eventHeartbeatMs,
      retentionDays: config.eventRetentionDays,
      onError: (err) => log.error({ err }, "reading events failed"),
    });
    const eventCursorKey = deriveKey("sessions/event-cursor/v1");
    const counters =
      config.redisUrl === undefined
        ? undefined
        : // Loaded only when asked for: ioredis costs start-up time and memory an instance without Redis never uses.
          (await import("./store/redis.js")).openSharedCounters(config.redisUrl, {
            keyPrefix: config.redisKeyPrefix,
            onChange: (isUp, reason) =>
              isUp
                ? log.info("rate-limit counters: Redis answers, limits are shared by every instance")
                : log.warn({ reason }, "rate-limit counters: Redis does not answer or refuses writes, each instance counts alone until it does"),
          });
    if (counters !== undefined) {
      new Gauge({
        name: "sessions_rate_limit_store_up",
        help: "1 while the shared rate-limit counters (Redis) answer, 0 while each instance counts alone.",
        registers: [metricsRegistry],
        collect() {
          this.set(counters.isUp() ? 1 : 0);
        },
      });
    }
    const rateLimits = createRateLimits(config.rateLimits, counters && { counters, keyPrefix: config.redisKeyPrefix });
    const webhookDispatcher = createWebhookDispatcher({
      store: webhookStore,
      events: eventStore,
      leases,
      clock,
      registry: metricsRegistry,
      keyEncryptionKey: config.keyEncryptionKey,
      cursorKey: eventCursorKey,
      pollIntervalMs: config.webhookPollIntervalMs,
      allowPrivate: config.webhookAllowPrivate,
      onError: (err) => log.error({ err }, "webhook dispatch failed"),
    });
    return {
      pool,
      metricsRegistry,
      clock,
      keyRing,
      sessionService: createSessionService({
        sessions: sessionStore,
        keys: keyRing,
        clock,
        cursorKey: deriveKey("sessions/cursor-mac/v1"),
        refreshTokenKey: deriveKey("sessions/refresh-successor/v1"),
        refreshTokenFormat: config.refreshTokens,
        // Policy changes reach every instance within the same window as API-key revocations.
        policies: createPolicySource(createPolicyStore(pool), config.apiKeyCacheSeconds),
      }),
      authenticator: createAuthenticator(tenantStore, clock, config.apiKeyCacheSeconds),
      tenantStore,
      sessionStore,
      sessionSweep,
      eventStore,
      eventSequencer,
      eventFeed,
      eventCursorKey,
      webhookDispatcher,
      rateLimits,
      log,
      async readiness(timeoutMs) {
        const problems: string[] = [];
        const database = await probeDatabase(pool, timeoutMs);
        if (database !== "writable") problems.push(database === "read_only" ? "database is read-only" : "database unreachable");
        if (!keyRing.isFresh()) problems.push("signing keys could not be reloaded");
        return { isReady: problems.length === 0, problems };
      },
      startWorkers() {
        sessionSweep.start();
        eventSequencer.start();
        webhookDispatcher.start();
      },
      async close() {
        keyRing.stop();
        await eventFeed.stop();
        await webhookDispatcher.stop();
        await eventSequencer.stop();
        await sessionSweep.stop();
        await counters?.close();
        await closePool(pool);
        flushLogs(log);
      },
    };
  } catch (err) {
    await closePool(pool);
    throw err;
  }
}

/** Gauges read from the key ring's own status when scraped. */
function registerKeyRingMetrics(registry: Registry, keyRing: KeyRing): void {
  const gauge = (name: string, help: string, read: (s: ReturnType<KeyRing["status"]>) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(read(keyRing.status()));
      },
    });
  gauge("sessions_signing_keys_published", "Signing keys this instance publishes in JWKS.", (s) => s.published);
  gauge("sessions_signing_keys_invalid", "Stored signing keys refused at the last reload (bad length, small order, wrong KEK, mismatched halves).", (s) => s.invalidKeys.length);
  gauge("sessions_signing_keys_reload_failures", "Background reloads of the signing-key table that failed since start.", (s) => s.reloadFailures);
  gauge("sessions_signing_keys_last_reload_timestamp_seconds", "When the signing-key table was last read successfully (Unix seconds).", (s) => s.lastReloadAt / 1000);
}
