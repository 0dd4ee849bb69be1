import { hkdfSync } from "node:crypto";
import type { Config } from "./config.js";
import { createAuthenticator, type Authenticator } from "./domain/api-keys.js";
import { systemClock, type Clock } from "./domain/clock.js";
import { createPolicySource } from "./domain/policy.js";
import { createSessionService, type SessionService } from "./domain/session-service.js";
import { createKeyRing, type KeyRing } from "./domain/signing-keys.js";
import { openDatabase, type Pool } from "./store/db.js";
import { migrate } from "./store/migrate.js";
import { createPolicyStore } from "./store/policy-store.js";
import { createSessionStore } from "./store/session-store.js";
import { createSigningKeyStore } from "./store/signing-key-store.js";
import { createTenantStore } from "./store/tenant-store.js";

/** Everything the app runs on, built once at start and closed once at the end. */
export interface Services {
  pool: Pool;
  clock: Clock;
  keyRing: KeyRing;
  sessionService: SessionService;
  authenticator: Authenticator;
  close(): Promise<void>;
}

/** Opens the database (creating and migrating it), loads or creates the signing key. */
export async function openServices(config: Config, { clock = systemClock }: { clock?: Clock } = {}): Promise<Services> {
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
    // Cursor MACs get their own key, derived so that one secret (the KEK) is all an operator manages.
    const cursorKey = Buffer.from(hkdfSync("sha256", config.keyEncryptionKey, Buffer.alloc(0), "sessions/cursor-mac/v1", 32));
    return {
      pool,
      clock,
      keyRing,
      sessionService: createSessionService({
        sessions: createSessionStore(pool),
        keys: keyRing,
        clock,
        cursorKey,
        // Policy changes reach every instance within the same window as API-key revocations.
        policies: createPolicySource(createPolicyStore(pool), config.apiKeyCacheSeconds),
      }),
      authenticator: createAuthenticator(createTenantStore(pool), clock, config.apiKeyCacheSeconds),
      async close() {
        keyRing.stop();
        await pool.end();
      },
    };
  } catch (err) {
    await pool.end();
    throw err;
  }
}
