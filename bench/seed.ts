import { mintApiKey } from "../src/domain/api-keys.js";
import { newId } from "../src/domain/secrets.js";
import { openDatabase } from "../src/store/db.js";
import { migrate } from "../src/store/migrate.js";
import { createTenantStore } from "../src/store/tenant-store.js";

/** Creates (and migrates) the database, then a tenant with one secret key, as sessionctl would. */
export async function seedTenant(databaseUrl: string, name: string): Promise<{ tenantId: string; secret: string }> {
  const pool = await openDatabase({ url: databaseUrl, poolSize: 2 });
  try {
    await migrate(pool);
    const store = createTenantStore(pool);
    const tenantId = newId("tnt");
    const now = new Date();
    const { key, secret, hash } = mintApiKey(tenantId, now);
    await store.createTenant({ id: tenantId, name, createdAt: now });
    await store.createApiKey(key, hash);
    return { tenantId, secret };
  } finally {
    await pool.end();
  }
}

/** Load tools measure the service, not the limiter's refusals: every rate limit off. */
export const rateLimitsOff = {
  RATE_LIMIT_READ_PER_MINUTE: "0",
  RATE_LIMIT_WRITE_PER_MINUTE: "0",
  RATE_LIMIT_REFRESH_PER_MINUTE: "0",
  RATE_LIMIT_IP_PER_MINUTE: "0",
};
