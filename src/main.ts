import closeWithGrace from "close-with-grace";
import { buildApp } from "./app.js";
import { ConfigError, loadConfig } from "./config.js";
import { openServices } from "./services.js";

/** The only module that reads the environment, listens and handles signals. */
async function main(): Promise<void> {
  const config = loadConfig();
  const services = await openServices(config);
  const app = buildApp(config, services);
  app.addHook("onClose", () => services.close());
  closeWithGrace({ delay: config.shutdownTimeoutMs }, async ({ signal, err }) => {
    if (err) app.log.error({ err }, "shutting down after an error");
    else app.log.info({ signal }, "shutting down");
    await app.close();
  });
  await app.listen({ port: config.port, host: config.host });
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
