import { isIP } from "node:net";
import { defaultEventRetentionDays } from "./domain/events.js";
import { databaseNameOf } from "./store/db.js";

/**
 * The development key-encryption key. It lets `npm start` work with no configuration; with
 * NODE_ENV=production the service refuses to start unless KEY_ENCRYPTION_KEY is set to another value.
 */
export const developmentKeyEncryptionKey = Buffer.alloc(32, "dev-only-kek").toString("base64url");

/** Named address ranges proxy-addr (fastify's trustProxy) knows. */
const proxyRangeNames = new Set(["loopback", "linklocal", "uniquelocal"]);

/** What each variable holds once read; `problem` collects what is wrong instead. */
class Reader {
  readonly problems: string[] = [];
  constructor(private readonly env: NodeJS.ProcessEnv) {}

  /**
   * The variable's value, or undefined when unset. Set but empty (`PORT=`, or a shell variable that
   * expanded to nothing) is a mistake, never a quiet default: a production DATABASE_URL= must not
   * mean the local database.
   */
  private raw(name: string): string | undefined {
    const value = this.env[name];
    if (value === undefined) return undefined;
    if (value.trim() === "") {
      this.problem(name, "is set but empty; unset it to use the default, or give a value");
      return undefined;
    }
    return value;
  }
  /** For the variables whose empty value is documented to mean off (REDIS_URL, CORS_ORIGINS, TRUST_PROXY). */
  private rawOrEmpty(name: string): string {
    return (this.env[name] ?? "").trim();
  }
  isSet(name: string): boolean {
    return this.env[name] !== undefined;
  }
  problem(name: string, message: string): void {
    this.problems.push(`${name}: ${message}`);
  }
  int(name: string, min: number, max: number, fallback: number): number {
    const value = this.raw(name);
    if (value === undefined) return fallback;
    const n = /^\d+$/.test(value.trim()) ? Number(value.trim()) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) this.problem(name, `must be an integer from ${min} to ${max}`);
    return n;
  }
  oneOf<T extends string>(name: string, values: readonly T[], fallback: T): T {
    const value = this.raw(name) ?? fallback;
    if (!(values as readonly string[]).includes(value)) this.problem(name, `must be one of ${values.join(", ")}`);
    return value as T;
  }
  text(name: string, fallback: string): string {
    return this.raw(name) ?? fallback;
  }
  url(name: string, fallback: string): string {
    const value = this.raw(name) ?? fallback;
    if (!URL.canParse(value)) this.problem(name, "must be a URL");
    return value;
  }
  /** A URL with one of `protocols`, or undefined when unset or empty (the feature it enables is off). */
  optionalUrl(name: string, protocols: readonly string[]): string | undefined {
    const value = this.rawOrEmpty(name);
    if (value === "") return undefined;
    if (!URL.canParse(value) || !protocols.includes(new URL(value).protocol)) {
      this.problem(name, `must be a ${protocols.map((p) => `${p}//`).join(" or ")} URL`);
    }
    return value;
  }
  /** Comma-separated web origins (`https://app.example.com`, scheme, host and port only); empty: none. */
  origins(name: string): string[] {
    const value = this.rawOrEmpty(name);
    if (value === "") return [];
    const origins = value.split(",").map((o) => o.trim());
    for (const origin of origins) {
      const url = URL.canParse(origin) ? new URL(origin) : undefined;
      if (url === undefined || !["http:", "https:"].includes(url.protocol) || url.origin !== origin) {
        this.problem(name, `"${origin}" is not an origin such as https://app.example.com (scheme, host and port, no path)`);
      }
    }
    return origins;
  }
  /** 32 bytes, base64url (or base64) encoded. */
  key(name: string): Buffer | undefined {
    const value = this.raw(name);
    if (value === undefined) return undefined;
    const key = Buffer.from(value, "base64url");
    if (key.length !== 32) this.problem(name, "must be 32 bytes, base64 or base64url encoded");
    return key;
  }
  /**
   * TRUST_PROXY: off (unset, empty or `false`); a hop count (`1`: trust the one proxy in front); or a
   * comma-separated list of proxy addresses, CIDR ranges or proxy-addr's names (loopback, linklocal,
   * uniquelocal). Then X-Forwarded-For from those proxies gives the client address that rate limits
   * and logs see.
   */
  trustProxy(name: string): false | number | string[] {
    const value = this.rawOrEmpty(name);
    if (value === "" || value === "false") return false;
    if (/^\d+$/.test(value)) return Number(value);
    const entries = value.split(",").map((e) => e.trim());
    for (const entry of entries) {
      const [address = "", bits, ...rest] = entry.split("/");
      const family = isIP(address);
      const isRange = bits === undefined || (/^\d+$/.test(bits) && Number(bits) <= (family === 6 ? 128 : 32));
      if (!proxyRangeNames.has(entry) && (family === 0 || !isRange || rest.length > 0)) {
        this.problem(name, `"${entry}" is not an IP address, a CIDR range or one of loopback, linklocal, uniquelocal`);
      }
    }
    return entries;
  }
}

/** Reads every variable (see the README's table), or throws a ConfigError naming each bad one. */
function readConfig(env: NodeJS.ProcessEnv) {
  const r = new Reader(env);
  const nodeEnv = r.oneOf("NODE_ENV", ["development", "production", "test"], "development");
  const configuredKek = r.key("KEY_ENCRYPTION_KEY");
  if (nodeEnv === "production" && configuredKek === undefined) r.problem("KEY_ENCRYPTION_KEY", "is required in production");
  const keyEncryptionKey = configuredKek ?? Buffer.from(developmentKeyEncryptionKey, "base64url");
  if (nodeEnv === "production" && keyEncryptionKey.toString("base64url") === developmentKeyEncryptionKey) {
    r.problem("KEY_ENCRYPTION_KEY", "must not be the development key in production");
  }
  const port = r.int("PORT", 0, 65535, 8080);
  const host = r.text("HOST", "0.0.0.0");
  const config = {
    nodeEnv,
    port,
    host,
    databaseUrl: databaseUrl(r),
    databasePoolSize: r.int("DATABASE_POOL_SIZE", 1, 200, 16),
    keyEncryptionKey,
    // The address the service listens on, as a client on this machine reaches it; behind a load
    // balancer or with several instances, set it to the public URL all of them share.
    issuer: r.url("ISSUER", defaultIssuer(r, host, port)),
    logLevel: r.oneOf("LOG_LEVEL", ["fatal", "error", "warn", "info", "debug", "trace", "silent"], "info"),
    bodyLimitBytes: r.int("BODY_LIMIT_BYTES", 1024, 10 * 1024 * 1024, 64 * 1024),
    // Requests (HTTP/1 and HTTP/2 streams) whose body has not fully arrived; past it the oldest is
    // dropped. Each costs memory before its handler can run; 1,000 is far above what real clients
    // leave pending at once and bounds that memory to tens of MB.
    maxPendingRequests: r.int("MAX_PENDING_REQUESTS", 1, 1_000_000, 1_000),
    maxConnections: r.int("MAX_CONNECTIONS", 1, 1_000_000, 4_096),
    apiKeyCacheSeconds: r.int("API_KEY_CACHE_SECONDS", 0, 300, 5),
    shutdownTimeoutMs: r.int("SHUTDOWN_TIMEOUT_MS", 0, 120_000, 10_000),
    shutdownDrainDelayMs: r.int("SHUTDOWN_DRAIN_DELAY_MS", 0, 120_000, 0),
    databaseStartupTimeoutMs: r.int("DATABASE_STARTUP_TIMEOUT_MS", 0, 600_000, 60_000),
    rateLimits: {
      // Per-tenant limits are opt-in (0 = off), as in the anchor's self-hosted mode: verify, list and
      // get are every tenant backend's hot path, and no default fits every tenant's traffic.
      readPerMinute: r.int("RATE_LIMIT_READ_PER_MINUTE", 0, 10_000_000, 0),
      writePerMinute: r.int("RATE_LIMIT_WRITE_PER_MINUTE", 0, 10_000_000, 0),
      refreshPerMinute: r.int("RATE_LIMIT_REFRESH_PER_MINUTE", 0, 10_000_000, 0),
      // The unauthenticated refresh, per client address: 100 a second is far above what one browser
      // or one office behind NAT sends, and stops a single address from hammering the endpoint.
      ipPerMinute: r.int("RATE_LIMIT_IP_PER_MINUTE", 0, 10_000_000, 6_000),
      // Failed authentications per client address before new keys from it stop being looked up.
      authFailuresPerMinute: r.int("RATE_LIMIT_AUTH_FAILURES_PER_MINUTE", 0, 10_000_000, 100),
    },
    // Rate-limit counters shared by every instance (off: each instance counts alone), and the prefix
    // of their keys, for deployments that share one Redis.
    redisUrl: redisUrl(r),
    redisKeyPrefix: r.text("REDIS_KEY_PREFIX", "sessions"),
    trustProxy: r.trustProxy("TRUST_PROXY"),
    // The refresh tokens new sessions get (src/domain/refresh-tokens.ts). Every version since
    // migration 0009 accepts both; `legacy` is for the rolling upgrade from an earlier version, whose
    // instances do not know numbered tokens.
    refreshTokens: r.oneOf("REFRESH_TOKENS", ["numbered", "legacy"], "numbered"),
    // Ended sessions and rotated refresh tokens are deleted this many days after their end.
    retentionDays: r.int("RETENTION_DAYS", 1, 3650, 30),
    // How often an instance tries to run the session sweep (one instance at a time): it records
    // the ends of sessions that expired (so lists read ended sessions by index) and deletes what
    // retention lets go. 0: never.
    sweepIntervalMs: r.int("SWEEP_INTERVAL_SECONDS", 0, 86_400, 30) * 1000,
    // Session events are kept this many days; a consumer whose cursor is older must resynchronise.
    // At least 2: a local verifier starting up reads the last day (the longest an access token lives).
    eventRetentionDays: r.int("EVENT_RETENTION_DAYS", 2, 365, defaultEventRetentionDays),
    // How often an instance reads new events for its subscribers (and numbers them, on the one
    // instance that does): the bulk of how long a revocation takes to reach a verifier.
    eventPollIntervalMs: r.int("EVENT_POLL_INTERVAL_MS", 5, 5_000, 50),
    // A subscriber that hears nothing for this long gets a heartbeat (local verifiers fail closed
    // after 10 s of silence by default, so this stays well below it).
    eventHeartbeatMs: r.int("EVENT_HEARTBEAT_SECONDS", 1, 15, 5) * 1000,
    // Browser origins allowed to call the service (CORS), comma-separated; none by default.
    corsOrigins: r.origins("CORS_ORIGINS"),
    // How often the webhook dispatcher (one instance at a time) looks for new events and due retries.
    webhookPollIntervalMs: r.int("WEBHOOK_POLL_INTERVAL_MS", 10, 60_000, 250),
    // Webhooks to loopback, private, link-local and other reserved addresses are refused unless this
    // is true (tests and private networks).
    webhookAllowPrivate: r.oneOf("WEBHOOK_ALLOW_PRIVATE", ["true", "false"], "false") === "true",
  };
  if (r.problems.length > 0) throw new ConfigError(`invalid configuration:\n  ${r.problems.join("\n  ")}`);
  return config;
}

export type Config = ReturnType<typeof readConfig>;

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

/**
 * Reads and validates the configuration once; an invalid value names its variable. Hand-written
 * rather than a schema library: it runs once, and a library held in memory for it costs ~5 MiB of
 * the service's resident memory for good.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  return readConfig(env);
}

/**
 * The issuer when ISSUER is unset: the address the service listens on, as a client on this machine
 * reaches it (localhost for a wildcard HOST, else HOST itself). PORT=0 picks a port only when it
 * listens, too late for an issuer fixed at start: ISSUER must then be given.
 */
function defaultIssuer(r: Reader, host: string, port: number): string {
  if (!Number.isInteger(port) || port < 0 || port > 65535) return "http://localhost"; // PORT's own problem is reported
  if (port === 0) {
    if (!r.isSet("ISSUER")) r.problem("ISSUER", "is required with PORT=0 (the port is chosen only when the service listens)");
    return "http://localhost";
  }
  const isWildcard = ["0.0.0.0", "::", "localhost"].includes(host);
  const name = isWildcard ? "localhost" : isIP(host) === 6 ? `[${host}]` : host;
  return `http://${name}:${port}`;
}

/**
 * DATABASE_URL: a mysql:// (or mariadb://) URL whose path names the database (created when missing), by the rule
 * openDatabase applies (src/store/db.ts), so that a URL without one is a configuration problem
 * reported with the others, not a failure once the service starts.
 */
function databaseUrl(r: Reader): string {
  const url = r.text("DATABASE_URL", "mysql://root@127.0.0.1:3306/sessions");
  const parsed = URL.canParse(url) ? new URL(url) : undefined;
  // One problem at a time: what follows cannot be judged of a URL that is not one.
  if (parsed === undefined || !databaseProtocols.includes(parsed.protocol)) {
    r.problem("DATABASE_URL", "must be a mysql:// or mariadb:// URL, such as mysql://user:password@127.0.0.1:3306/sessions (a user name or password with / ? # @ : or % in it percent-encoded)");
  } else if (/[?#]/.test(url)) {
    // Read as nothing, `?ssl=true` would leave a connection the operator believes encrypted in plain text.
    r.problem("DATABASE_URL", "takes no query parameters or fragment: driver options (ssl, timeouts, …) are not read from it");
  } else if (!isDecodable(parsed.username) || !isDecodable(parsed.password)) {
    r.problem("DATABASE_URL", "has a % in its user name or password that is not followed by two hex digits (write % as %25)");
  } else if (databaseNameOf(url) === undefined) {
    r.problem("DATABASE_URL", "must name a database of letters, digits, _ or $ (up to 64), such as mysql://root@127.0.0.1:3306/sessions");
  }
  return url;
}

/** The schemes DATABASE_URL may have: one driver serves both servers. */
const databaseProtocols = ["mysql:", "mariadb:"];

function isDecodable(part: string): boolean {
  try {
    decodeURIComponent(part);
    return true;
  } catch {
    return false;
  }
}

/** REDIS_URL, when set: a redis:// or rediss:// URL whose path, if any, is a database number. */
function redisUrl(r: Reader): string | undefined {
  const url = r.optionalUrl("REDIS_URL", ["redis:", "rediss:"]);
  if (url !== undefined && URL.canParse(url) && !/^\/?(\d{1,5})?$/.test(new URL(url).pathname)) {
    r.problem("REDIS_URL", "its path must be a database number such as /0, or nothing");
  }
  return url;
}
