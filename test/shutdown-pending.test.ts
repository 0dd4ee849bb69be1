import http2 from "node:http2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startChildServer, type ChildServer } from "./helpers/child-server.js";

/**
 * A client that starts a request body and never finishes it has not reached any handler: SIGTERM
 * must not wait for it (it used to hold shutdown for SHUTDOWN_TIMEOUT_MS and end in exit code 1).
 */

let server: ChildServer;
beforeAll(async () => {
  server = await startChildServer({ SHUTDOWN_TIMEOUT_MS: "60000" });
}, 90_000);
afterAll(async () => {
  await server?.stop();
});

describe("shutdown with requests still receiving their body", () => {
  it("drops them at once and exits 0", async () => {
    const session = http2.connect(server.url);
    session.on("error", () => undefined);
    const stream = session.request({ ":method": "POST", ":path": "/v1/sessions", "content-type": "application/json" }, { endStream: false });
    stream.on("error", () => undefined);
    const reset = new Promise<number>((resolve) => stream.on("close", () => resolve(stream.rstCode ?? -1)));
    stream.write('{"user_id":');
    // Frames on one connection are handled in order: once a later request on it is answered, the
    // server has seen the unfinished one.
    const probe = session.request({ ":path": "/healthz" });
    probe.resume();
    await new Promise((resolve) => probe.on("close", resolve));
    const started = performance.now();
    const code = await server.terminate();
    // Far sooner than the 60 s shutdown timeout, which waiting for the body would have hit.
    expect(performance.now() - started).toBeLessThan(30_000);
    expect(code).toBe(0);
    expect(await reset).toBeGreaterThan(0);
    session.destroy();
  });
});
