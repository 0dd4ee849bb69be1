import { Redis } from "ioredis";

/** What the service needs of the shared rate-limit store's connection. */
export interface SharedCounters {
  client: Redis;
  /** True while the connection is up (the limits are then shared across instances). */
  isUp(): boolean;
  close(): Promise<void>;
}

/**
 * A Redis connection for counters shared across instances (rate limits). Commands fail fast instead
 * of waiting: none is queued while the connection is down, and one that has no answer within
 * `commandTimeoutMs` fails; the caller then falls back to its own memory. It reconnects by itself
 * (backing off to 2 s). `onChange` hears each move between up and down once (never the URL, which
 * may hold a password).
 */
export function openSharedCounters(url: string, { commandTimeoutMs = 250, onChange }: { commandTimeoutMs?: number; onChange(isUp: boolean, err?: Error): void }): SharedCounters {
  const client = new Redis(url, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: commandTimeoutMs,
    connectTimeout: 2_000,
    retryStrategy: (attempt) => Math.min(attempt * 100, 2_000),
  });
  // undefined until the first connection attempt ends either way.
  let isUp: boolean | undefined;
  const set = (up: boolean, err?: Error) => {
    if (isUp === up) return;
    isUp = up;
    onChange(up, err);
  };
  client.on("ready", () => set(true));
  client.on("error", (err: Error) => set(false, err));
  client.on("close", () => set(false));
  return {
    client,
    isUp: () => isUp === true,
    async close() {
      client.removeAllListeners();
      client.on("error", () => undefined);
      await client.quit().catch(() => client.disconnect());
    },
  };
}
