import { Redis } from "ioredis";

/** What the service needs of the shared rate-limit store's connection. */
export interface SharedCounters {
  client: Redis;
  /** True while the connection is up (the limits are then shared across instances). */
  isUp(): boolean;
  close(): Promise<void>;
}

/**
 * A Redis connection for counters shared across instances (rate limits), and whether they are
 * healthy: connected, and a write probe (SET with a short expiry, every `probeIntervalMs`) answered
 * within `commandTimeoutMs`. The probe finds what the connection state does not: a Redis that hangs
 * (stopped, overloaded) and one that refuses writes (a read-only replica). Commands fail fast: none
 * is queued while the connection is down, and one without an answer in `commandTimeoutMs` fails;
 * the caller falls back to its own memory. It reconnects by itself (backing off to 2 s). `onChange`
 * hears each move between healthy and not once, with the reason (never the URL, which may hold a
 * password).
 */
export function openSharedCounters(
  url: string,
  { keyPrefix, commandTimeoutMs = 250, probeIntervalMs = 1_000, onChange }: { keyPrefix: string; commandTimeoutMs?: number; probeIntervalMs?: number; onChange(isUp: boolean, reason?: string): void },
): SharedCounters {
  const client = new Redis(url, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: commandTimeoutMs,
    connectTimeout: 2_000,
    retryStrategy: (attempt) => Math.min(attempt * 100, 2_000),
  });
  // undefined until the first probe or connection attempt ends either way.
  let isUp: boolean | undefined;
  const set = (up: boolean, reason?: string) => {
    if (isUp === up) return;
    isUp = up;
    onChange(up, reason);
  };
  const probeKey = `${keyPrefix}:probe`;
  let isProbing = false;
  const probe = async () => {
    if (isProbing || client.status !== "ready") return;
    isProbing = true;
    try {
      await client.set(probeKey, "1", "PX", 10_000);
      set(true);
    } catch (err) {
      set(false, (err as Error).message);
    } finally {
      isProbing = false;
    }
  };
  const timer = setInterval(() => void probe(), probeIntervalMs);
  timer.unref();
  client.on("ready", () => void probe());
  client.on("error", (err: Error) => set(false, err.message));
  client.on("close", () => set(false, "connection closed"));
  return {
    client,
    isUp: () => isUp === true,
    async close() {
      clearInterval(timer);
      client.removeAllListeners();
      client.on("error", () => undefined);
      await client.quit().catch(() => client.disconnect());
    },
  };
}
