import { hkdfSync } from "node:crypto";
import { collectDefaultMetrics, Registry } from "prom-client";
import { setTimeout as sleep } from "node:timers/promises";
import type { Config } from "./config.js";
import { createAuthenticator, type Authenticator } from "./domain/api-keys.js";
import { systemClock, type Clock } from "./domain/clock.js";
import { createPolicySource } from "./domain/policy.js";
import { createSessionService, type SessionService } from "./domain/session-service.js";
import { AppError } from "./domain/errors.js";
import type { TenantStore } from "./domain/ports.js";
import { createKeyRing, type KeyRing } from "./domain/signing-keys.js";
import { closePool, openDatabase, type Pool } from "./store/db.js";
import { createLeaseStore } from "./store/lease-store.js";
import { createRetentionStore } from "./store/retention-store.js";
import { migrate } from "./store/migrate.js";
import { createPolicyStore } from "./store/policy-store.js";
import { createSessionStore } from "./store/session-store.js";
import { createSigningKeyStore } from "./store/signing-key-store.js";
import { createTenantStore } from "./store/tenant-store.js";
import { createRetentionSweep, type RetentionSweep } from "./workers/retention-sweep.js";

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
  retentionSweep: RetentionSweep;
  /** Starts the background workers (the retention sweep); `log` hears of their failures. */
  startWorkers(log: (err: unknown, msg: string) => void): void;
  close(): Promise<void>;
}

export interface OpenOptions {
  clock?: Clock;
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
      return await openOnce(config, options.clock ?? systemClock);
    } catch (err) {
      const isUnavailable = err instanceof AppError && err.code === "unavailable";
      const wait = Math.min(delayMs, giveUpAt - Date.now());
      if (!isUnavailable || wait <= 0) throw err;
      onRetry?.(err, wait);
      await sleep(wait);
    }
  }
}

async function openOnce(config: Config, clock: Clock): Promise<Services> {
  const pool = await openDatabase({ url: config.databaseUrl, poolSize: config.databasePoolSize });
  try {
    await migrate(pool);
    const keyRing = createKeyRing({
      store: createSigningKeyStore(pool),
      keyEncryptionKey: config.keyEncryptionKey,
      clock,
      issuer: config.issuer,
    });
    await keyRing.start();
    const tenantStore = createTenantStore(pool);
    const metricsRegistry = new Registry();
    collectDefaultMetrics({ register: metricsRegistry });
    let logWorkerError: (err: unknown, msg: string) => void = () => undefined;
    const retentionSweep = createRetentionSweep({
      store: createRetentionStore(pool),
      leases: createLeaseStore(pool),
      clock,
      retentionDays: config.retentionDays,
      intervalMs: config.retentionSweepIntervalMs,
      registry: metricsRegistry,
      onError: (err) => logWorkerError(err, "retention sweep failed"),
    });
    // Cursor MACs and refresh-token successors get their own keys, derived so that one secret (the
    // KEK) is all an operator manages.
    const deriveKey = (purpose: string) => Buffer.from(hkdfSync("sha256", config.keyEncryptionKey, Buffer.alloc(0), purpose, 32));
    return {
      pool,
      metricsRegistry,
      clock,
      keyRing,
      sessionService: createSessionService({
        sessions: createSessionStore(pool),
        keys: keyRing,
        clock,
        cursorKey: deriveKey("sessions/cursor-mac/v1"),
        refreshTokenKey: deriveKey("sessions/refresh-successor/v1"),
        // Policy changes reach every instance within the same window as API-key revocations.
        policies: createPolicySource(createPolicyStore(pool), config.apiKeyCacheSeconds),
      }),
      authenticator: createAuthenticator(tenantStore, clock, config.apiKeyCacheSeconds),
      tenantStore,
      retentionSweep,
      startWorkers(log) {
        logWorkerError = log;
        retentionSweep.start();
      },
      async close() {
        keyRing.stop();
        await retentionSweep.stop();
        await closePool(pool);
      },
    };
  } catch (err) {
    await closePool(pool);
    throw err;
  }
}
