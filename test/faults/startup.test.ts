import { execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AppError } from "../../src/domain/errors.js";
import { openServices } from "../../src/services.js";
import { faultConfig } from "./helpers/app.js";
import { startFaultProxy, type FaultProxy } from "./helpers/fault-proxy.js";
import { freePort, startPrivateMariaDb, type PrivateMariaDb } from "./helpers/private-mariadb.js";

/** The service starting before its database answers. */

const run = promisify(execFile);
let db: PrivateMariaDb;
let proxy: FaultProxy;

beforeAll(async () => {
  db = await startPrivateMariaDb();
  proxy = await startFaultProxy(db.port);
});
afterAll(async () => {
  await proxy?.close();
  await db?.destroy();
});

/** The server process's environment, its database on a port where nothing listens. */
async function withoutDatabase(startupTimeoutMs: number): Promise<NodeJS.ProcessEnv> {
  return {
    ...process.env,
    NODE_ENV: "test",
    PORT: String(await freePort()),
    HOST: "127.0.0.1",
    LOG_LEVEL: "silent",
    DATABASE_URL: `mysql://root@127.0.0.1:${await freePort()}/sessions_faults`,
    DATABASE_STARTUP_TIMEOUT_MS: String(startupTimeoutMs),
  };
}

describe("openServices before the database", () => {
  it("keeps retrying and comes up once the database appears within the deadline", async () => {
    await db.stop();
    const retries: number[] = [];
    let starting: Promise<void> | undefined;
    const opening = openServices(faultConfig(proxy.port), {
      startupTimeoutMs: 30_000,
      onRetry: (_e, ms) => {
        retries.push(ms);
        // Down for three attempts in a row (counted, not timed), then it appears.
        if (retries.length === 3) {
          starting = db.start();
          starting.catch(() => undefined); // awaited below
        }
      },
    });
    const services = await opening.finally(() => starting);
    try {
      expect(starting, "the database was started").toBeDefined();
      await starting;
      expect(retries.length).toBeGreaterThanOrEqual(3);
      expect(retries.slice(0, 3)).toEqual([250, 500, 1_000]); // backoff doubles (capped at 5 s)
      expect(services.keyRing.jwks().keys).toHaveLength(1);
    } finally {
      await services.close();
    }
  });

  it("gives up with unavailable at the deadline", async () => {
    proxy.setMode("refuse");
    const startupTimeoutMs = 1_200;
    const retries: number[] = [];
    const started = Date.now();
    const err = await openServices(faultConfig(proxy.port), { startupTimeoutMs, onRetry: (_e, ms) => retries.push(ms) }).catch((e: unknown) => e);
    const ms = Date.now() - started;
    proxy.setMode("pass");
    expect(err).toBeInstanceOf(AppError);
    expect((err as AppError).code).toBe("unavailable");
    // It kept trying until the deadline (timers never fire early: this cannot fail for being slow)...
    expect(retries.length).toBeGreaterThanOrEqual(1);
    expect(ms).toBeGreaterThanOrEqual(startupTimeoutMs);
    // ...and never planned to sleep past it: each wait is cut to the time left (full backoff
    // steps, 250 + 500 + 1000 ms, would overrun 1200 ms).
    expect(retries.reduce((sum, wait) => sum + wait, 0)).toBeLessThanOrEqual(startupTimeoutMs);
  });

  it("does not retry what waiting cannot cure (bad credentials)", async () => {
    const config = faultConfig(proxy.port, { DATABASE_URL: `mysql://nobody:wrong@127.0.0.1:${proxy.port}/sessions_faults` });
    const retries: number[] = [];
    const err = await openServices(config, { startupTimeoutMs: 20_000, onRetry: (_e, ms) => retries.push(ms) }).catch((e: unknown) => e);
    expect(err).toMatchObject({ errno: 1045 });
    expect(retries).toEqual([]); // the first failure is final
  });

  it("the server process exits 1 with a clear message past DATABASE_STARTUP_TIMEOUT_MS", async () => {
    const err = (await run(process.execPath, ["--import", "tsx", "src/main.ts"], {
      env: await withoutDatabase(1_500),
      timeout: 20_000,
    }).catch((e: unknown) => e)) as { code: number; stderr: string };
    expect(err.code).toBe(1);
    expect(err.stderr).toContain("database unavailable, retrying");
    expect(err.stderr).toMatch(/did not answer within DATABASE_STARTUP_TIMEOUT_MS \(1500 ms\).*ECONNREFUSED/);
  });

  it("the server process stops with exit 0 when sent SIGTERM while it waits for the database", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
      env: await withoutDatabase(600_000),
      stdio: ["ignore", "ignore", "pipe"],
    });
    try {
      let stderr = "";
      const exited = once(child, "exit");
      await new Promise<void>((resolve, reject) => {
        child.stderr!.on("data", (chunk: Buffer) => {
          stderr += chunk.toString();
          if (stderr.includes("database unavailable, retrying")) resolve();
        });
        child.once("exit", () => reject(new Error(`exited before retrying: ${stderr}`)));
      });
      child.kill("SIGTERM");
      const [code, signal] = await exited;
      expect({ code, signal }).toEqual({ code: 0, signal: null });
      expect(stderr).toContain('"msg":"stopped before the service started","signal":"SIGTERM"');
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
  });
});
