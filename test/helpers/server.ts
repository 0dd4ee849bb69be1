import type { FastifyInstance } from "fastify";
import type { DestinationStream } from "pino";
import { buildApp } from "../../src/app.js";
import type { Config } from "../../src/config.js";
import { mintApiKey } from "../../src/domain/api-keys.js";
import type { Clock } from "../../src/domain/clock.js";
import { newId } from "../../src/domain/secrets.js";
import { openServices, type Services } from "../../src/services.js";
import { createTenantStore } from "../../src/store/tenant-store.js";
import { dropDatabase, testConfig } from "./db.js";

export interface TestServer {
  app: FastifyInstance;
  services: Services;
  config: Config;
  url: string;
  port: number;
  tenant: { id: string; secretKey: string; keyId: string; headers: Record<string, string> };
  /** Creates another tenant with its own key. */
  addTenant(name?: string): Promise<{ id: string; secretKey: string; keyId: string; headers: Record<string, string> }>;
  close(): Promise<void>;
}

/** The real app on a fresh database, listening on a free loopback port. */
export async function startTestServer(
  opts: { clock?: Clock; env?: Record<string, string>; listen?: boolean; sharedWith?: TestServer; logStream?: DestinationStream } = {},
): Promise<TestServer> {
  const config = testConfig({
    ...(opts.sharedWith ? { DATABASE_URL: opts.sharedWith.config.databaseUrl } : {}),
    ...opts.env,
  });
  const services = await openServices(config, { ...(opts.clock ? { clock: opts.clock } : {}), ...(opts.logStream ? { logStream: opts.logStream } : {}) });
  const app = buildApp(config, services);
  app.addHook("onClose", () => services.close());
  if (opts.listen !== false) await app.listen({ port: 0, host: "127.0.0.1" });
  else await app.ready();
  const address = app.server.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  const store = createTenantStore(services.pool);

  async function addTenant(name = "Acme") {
    const now = new Date();
    const id = newId("tnt");
    await store.createTenant({ id, name, createdAt: now });
    const { key, secret, hash } = mintApiKey(id, now);
    await store.createApiKey(key, hash);
    return {
      id,
      secretKey: secret,
      keyId: key.id,
      headers: { authorization: `Bearer ${secret}`, "x-tenant-id": id },
    };
  }
  const tenant = opts.sharedWith?.tenant ?? (await addTenant());
  return {
    app,
    services,
    config,
    url: `http://127.0.0.1:${port}`,
    port,
    tenant,
    addTenant,
    async close() {
      await app.close();
      // A server sharing another's database leaves dropping it to the owner.
      if (opts.sharedWith === undefined) await dropDatabase(config.databaseUrl);
    },
  };
}
