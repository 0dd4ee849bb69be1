import { setTimeout as sleep } from "node:timers/promises";
import closeWithGrace from "close-with-grace";
import { buildApp } from "./app.js";
import { ConfigError, loadConfig } from "./config.js";
import { AppError } from "./domain/errors.js";
import { openServices } from "./services.js";

/** The only module that reads the environment, listens and handles signals. */
async function main(): Promise<void> {
  const config = loadConfig();
  // The database may come up after us (a fresh deployment, both restarting): wait for it, boundedly,
  // rather than crash-looping; past the deadline, exit non-zero and let the supervisor decide.
  const startupTimeoutMs = config.databaseStartupTimeoutMs;
  // Behind a load balancer: how long /readyz answers 503 after SIGTERM, while still serving, before
  // the port closes, so the balancer stops sending traffic before connections are refused.
  const drainDelayMs = config.shutdownDrainDelayMs;
  // Asked to stop while still waiting for the database: nothing is served yet, so stop now, as a
  // normal stop (exit 0), not killed by the signal.
  const stopWhileStarting = (signal: NodeJS.Signals) => {
    console.error(JSON.stringify({ level: "info", msg: "stopped before the service started", signal }));
    process.exit(0);
  };
  process.once("SIGTERM", stopWhileStarting).once("SIGINT", stopWhileStarting);
  const services = await openServices(config, {
    startupTimeoutMs,
    onRetry: (err, delayMs) =>
      console.error(JSON.stringify({ level: "warn", msg: "database unavailable, retrying", error: causeOf(err), retryInMs: delayMs })),
  }).catch((err: unknown) => {
    if (err instanceof AppError && err.code === "unavailable") {
      throw new Error(`the database did not answer within DATABASE_STARTUP_TIMEOUT_MS (${startupTimeoutMs} ms): ${causeOf(err)}`);
    }
    throw err;
  });
  process.off("SIGTERM", stopWhileStarting).off("SIGINT", stopWhileStarting);
  let isDraining = false;
  const app = buildApp(config, services, { isDraining: () => isDraining });
  app.addHook("onClose", () => services.close());
  closeWithGrace({ delay: drainDelayMs + config.shutdownTimeoutMs }, async ({ signal, err }) => {
    if (err) app.log.error({ err }, "shutting down after an error");
    else app.log.info({ signal, drainDelayMs }, "shutting down");
    isDraining = true;
    if (drainDelayMs > 0 && !err) await sleep(drainDelayMs);
    await app.close();
  });
  await app.listen({ port: config.port, host: config.host });
  services.startWorkers();
}

/** The driver's own words behind an `unavailable`, for the operator. */
function causeOf(err: unknown): string {
  const cause = (err as { cause?: { message?: string; code?: string } })?.cause;
  return cause?.message || cause?.code || String((err as Error)?.message ?? err);
}

main().catch((err: unknown) => {
  if (err instanceof ConfigError) {
    console.error(err.message);
  } else {
    const e = err as { message?: string; code?: string };
    console.error(JSON.stringify({ level: "fatal", msg: "could not start", error: e?.message, code: e?.code }));
  }
  process.exit(1);
});
