import { isIP } from "node:net";
import { z } from "zod";

/**
 * The development key-encryption key. It lets `npm start` work with no configuration; with
 * NODE_ENV=production the service refuses to start unless KEY_ENCRYPTION_KEY is set to another value.
 */
export const developmentKeyEncryptionKey = Buffer.alloc(32, "dev-only-kek").toString("base64url");

const base64Key = z
  .string()
  .transform((s, ctx) => {
    const key = Buffer.from(s, "base64url");
    if (key.length !== 32) {
      ctx.addIssue({ code: "custom", message: "must be 32 bytes, base64 or base64url encoded" });
      return z.NEVER;
    }
    return key;
  });

const int = (min: number, max: number, fallback: number) =>
  z.coerce.number().int().min(min).max(max).default(fallback);

/** Named address ranges proxy-addr (fastify's trustProxy) knows. */
const proxyRangeNames = new Set(["loopback", "linklocal", "uniquelocal"]);

/**
 * TRUST_PROXY: off (unset, empty or `false`); a hop count (`1`: trust the one proxy in front); or a
 * comma-separated list of proxy addresses, CIDR ranges or proxy-addr's names (loopback, linklocal,
 * uniquelocal). Then X-Forwarded-For from those proxies gives the client address that rate limits
 * and logs see.
 */
const trustProxy = z
  .string()
  .default("")
  .transform((raw, ctx): false | number | string[] => {
    const value = raw.trim();
    if (value === "" || value === "false") return false;
    if (/^\d+$/.test(value)) return Number(value);
    const entries = value.split(",").map((e) => e.trim());
    for (const entry of entries) {
      const [address = "", bits, ...rest] = entry.split("/");
      const family = isIP(address);
      const isRange = bits === undefined || (/^\d+$/.test(bits) && Number(bits) <= (family === 6 ? 128 : 32));
      if (!proxyRangeNames.has(entry) && (family === 0 || !isRange || rest.length > 0)) {
        ctx.addIssue({ code: "custom", message: `"${entry}" is not an IP address, a CIDR range or one of loopback, linklocal, uniquelocal` });
        return z.NEVER;
      }
    }
    return entries;
  });

const schema = z
  .object({
    NODE_ENV: z.enum(["development", "production", "test"]).default("development"),
    PORT: int(0, 65535, 8080),
    HOST: z.string().min(1).default("0.0.0.0"),
    DATABASE_URL: z
      .url({ protocol: /^mysql$/ })
      .default("mysql://root@127.0.0.1:3306/sessions"),
    DATABASE_POOL_SIZE: int(1, 200, 16),
    KEY_ENCRYPTION_KEY: base64Key.optional(),
    ISSUER: z.url().default("http://localhost:8080"),
    LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
    BODY_LIMIT_BYTES: int(1024, 10 * 1024 * 1024, 64 * 1024),
    // Requests (HTTP/1 and HTTP/2 streams) whose body has not fully arrived; past it the oldest is
    // dropped. Each costs memory before its handler can run; 1,000 is far above what real clients
    // leave pending at once and bounds that memory to tens of MB.
    MAX_PENDING_REQUESTS: int(1, 1_000_000, 1_000),
    MAX_CONNECTIONS: int(1, 1_000_000, 4_096),
    API_KEY_CACHE_SECONDS: int(0, 300, 5),
    SHUTDOWN_TIMEOUT_MS: int(0, 120_000, 10_000),
    SHUTDOWN_DRAIN_DELAY_MS: int(0, 120_000, 0),
    DATABASE_STARTUP_TIMEOUT_MS: int(0, 600_000, 60_000),
    // Per-tenant limits are opt-in (0 = off), as in the anchor's self-hosted mode: verify, list and
    // get are every tenant backend's hot path, and no default fits every tenant's traffic.
    RATE_LIMIT_READ_PER_MINUTE: int(0, 10_000_000, 0),
    RATE_LIMIT_WRITE_PER_MINUTE: int(0, 10_000_000, 0),
    RATE_LIMIT_REFRESH_PER_MINUTE: int(0, 10_000_000, 0),
    // The unauthenticated refresh, per client address: 100 a second is far above what one browser
    // or one office behind NAT sends, and stops a single address from hammering the endpoint.
    RATE_LIMIT_IP_PER_MINUTE: int(0, 10_000_000, 6_000),
    // Failed authentications per client address before new keys from it stop being looked up.
    RATE_LIMIT_AUTH_FAILURES_PER_MINUTE: int(0, 10_000_000, 100),
    TRUST_PROXY: trustProxy,
    // Ended sessions and rotated refresh tokens are deleted this many days after their end.
    RETENTION_DAYS: int(1, 3650, 30),
    // How often an instance tries to run the session sweep (one instance at a time): it records
    // the ends of sessions that expired (so lists read ended sessions by index) and deletes what
    // retention lets go. 0: never.
    SWEEP_INTERVAL_SECONDS: int(0, 86_400, 30),
  })
  .transform((env, ctx) => {
    if (env.NODE_ENV === "production" && env.KEY_ENCRYPTION_KEY === undefined) {
      ctx.addIssue({ code: "custom", path: ["KEY_ENCRYPTION_KEY"], message: "is required in production" });
    }
    const kek = env.KEY_ENCRYPTION_KEY ?? Buffer.from(developmentKeyEncryptionKey, "base64url");
    if (env.NODE_ENV === "production" && kek.toString("base64url") === developmentKeyEncryptionKey) {
      ctx.addIssue({ code: "custom", path: ["KEY_ENCRYPTION_KEY"], message: "must not be the development key in production" });
    }
    return {
      nodeEnv: env.NODE_ENV,
      port: env.PORT,
      host: env.HOST,
      databaseUrl: env.DATABASE_URL,
      databasePoolSize: env.DATABASE_POOL_SIZE,
      keyEncryptionKey: kek,
      issuer: env.ISSUER,
      logLevel: env.LOG_LEVEL,
      bodyLimitBytes: env.BODY_LIMIT_BYTES,
      maxPendingRequests: env.MAX_PENDING_REQUESTS,
      maxConnections: env.MAX_CONNECTIONS,
      apiKeyCacheSeconds: env.API_KEY_CACHE_SECONDS,
      shutdownTimeoutMs: env.SHUTDOWN_TIMEOUT_MS,
      shutdownDrainDelayMs: env.SHUTDOWN_DRAIN_DELAY_MS,
      databaseStartupTimeoutMs: env.DATABASE_STARTUP_TIMEOUT_MS,
      rateLimits: {
        readPerMinute: env.RATE_LIMIT_READ_PER_MINUTE,
        writePerMinute: env.RATE_LIMIT_WRITE_PER_MINUTE,
        refreshPerMinute: env.RATE_LIMIT_REFRESH_PER_MINUTE,
        ipPerMinute: env.RATE_LIMIT_IP_PER_MINUTE,
        authFailuresPerMinute: env.RATE_LIMIT_AUTH_FAILURES_PER_MINUTE,
      },
      trustProxy: env.TRUST_PROXY,
      retentionDays: env.RETENTION_DAYS,
      sweepIntervalMs: env.SWEEP_INTERVAL_SECONDS * 1000,
    };
  });

export type Config = z.output<typeof schema>;

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

/** Reads and validates the configuration once; an invalid value names its variable. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `${i.path.join(".") || "env"}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n  ${lines.join("\n  ")}`);
  }
  return parsed.data;
}
