import http2 from "node:http2";
import net from "node:net";
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

  it("drops HTTP/1.1 requests answered while their body still arrives, and headers never finished, and exits 0", async () => {
    // Shorter than Node's own headers timeout (10 s), which would otherwise end the unfinished
    // headers by itself: waiting for either connection ends in a kill, exit code 1.
    const own = await startChildServer({ SHUTDOWN_TIMEOUT_MS: "5000" });
    const sockets: net.Socket[] = [];
    try {
      const open = () => {
        const socket = net.connect(Number(new URL(own.url).port), "127.0.0.1");
        socket.on("error", () => undefined);
        sockets.push(socket);
        return socket;
      };
      // A body on a DELETE and a body of another type are refused at once, with most of the body still to come.
      for (const head of ["DELETE /v1/sessions/ses_01HZZZZZZZZZZZZZZZZZZZZZZZ HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n", "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n"]) {
        const socket = open();
        const answered = new Promise<string>((resolve) => socket.once("data", (chunk) => resolve(chunk.toString())));
        socket.write(`${head}{"a"`);
        expect(await answered).toMatch(/^HTTP\/1\.1 (400|415) /);
      }
      // Headers begun and never finished (the server may or may not have read them yet: both must end).
      open().write("GET /healthz HTTP/1.1\r\nHost: x\r\n");
      expect(await own.terminate()).toBe(0);
    } finally {
      for (const socket of sockets) socket.destroy();
      await own.stop();
    }
  }, 90_000);
});
