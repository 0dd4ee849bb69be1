import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { mintApiKey } from "../../../src/domain/api-keys.js";
import { newId } from "../../../src/domain/secrets.js";
import { closePool, openDatabase } from "../../../src/store/db.js";
import { createTenantStore } from "../../../src/store/tenant-store.js";
import { freePort } from "../../faults/helpers/private-mariadb.js";
import { onAbnormalExit } from "./galera.js";

/** The real service (src/main.ts) in a process of its own, on a database the test names. */
export interface Instance {
  name: string;
  url: string;
  /** Everything it logged (stdout and stderr), for the no-stack-trace, no-secret check. */
  output(): string;
  stop(): Promise<void>;
}

/** One key for every instance of a test: they share the key table. */
export const keyEncryptionKey = randomBytes(32).toString("base64url");

/** Starts an instance; `ready` waits for /readyz (false: only for the process to listen, for starts that race). */
export async function startInstance(name: string, databaseUrl: string, env: Record<string, string> = {}): Promise<Instance> {
  const port = await freePort();
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
    env: {
      ...process.env, NODE_ENV: "test", PORT: String(port), HOST: "127.0.0.1", DATABASE_URL: databaseUrl, LOG_LEVEL: "warn",
      KEY_ENCRYPTION_KEY: keyEncryptionKey, ISSUER: "http://sessions.cluster.test",
      RATE_LIMIT_READ_PER_MINUTE: "0", RATE_LIMIT_WRITE_PER_MINUTE: "0", RATE_LIMIT_REFRESH_PER_MINUTE: "0", RATE_LIMIT_IP_PER_MINUTE: "0",
      RATE_LIMIT_AUTH_FAILURES_PER_MINUTE: "100000",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const forget = onAbnormalExit(() => child.kill("SIGKILL"));
  let output = "";
  const collect = (b: Buffer) => void (output = (output + b.toString()).slice(-200_000));
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGKILL");
      await exited;
    }
    forget();
  };
  try {
    for (const deadline = Date.now() + 90_000; ; await sleep(100)) {
      if (child.exitCode !== null) throw new Error(`instance ${name} exited with ${child.exitCode}: ${output.slice(-4_000)}`);
      if (await fetch(`${url}/readyz`).then((r) => r.ok, () => false)) break;
      if (Date.now() > deadline) throw new Error(`instance ${name} did not become ready: ${output.slice(-4_000)}`);
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { name, url, output: () => output, stop };
}

export interface Tenant {
  id: string;
  headers: Record<string, string>;
}

export async function createTenant(databaseUrl: string): Promise<Tenant> {
  const pool = await openDatabase({ url: databaseUrl, poolSize: 1 });
  try {
    const store = createTenantStore(pool);
    const id = newId("tnt");
    const now = new Date();
    await store.createTenant({ id, name: "Cluster", createdAt: now });
    const { key, secret, hash } = mintApiKey(id, now);
    await store.createApiKey(key, hash);
    return { id, headers: { authorization: `Bearer ${secret}`, "x-tenant-id": id } };
  } finally {
    await closePool(pool);
  }
}

/** Lines of a log that look like a stack frame or carry a secret. */
export function leaks(log: string): string[] {
  return log.split("\n").filter((l) => /^\s+at\s|\bsk_live_|\brt_[A-Za-z0-9_-]{10,}|eyJ[A-Za-z0-9_-]{20,}\./.test(l));
}
