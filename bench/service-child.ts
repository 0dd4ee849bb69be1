import { buildApp } from "../src/app.js";
import { loadConfig } from "../src/config.js";
import { openServices } from "../src/services.js";

/** The real service, started exactly as src/main.ts does, reporting its port to the bench. */
const config = loadConfig({ ...process.env, PORT: "0", HOST: "127.0.0.1" });
const services = await openServices(config);
const app = buildApp(config, services);
app.addHook("onClose", () => services.close());
await app.listen({ port: 0, host: "127.0.0.1" });
const address = app.server.address();
process.send?.({ port: typeof address === "object" && address ? address.port : 0 });
process.on("SIGTERM", () => void app.close().then(() => process.exit(0)));
