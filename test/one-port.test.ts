import http2 from "node:http2";
import net, { type AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { fromBinary, type DescMessage, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import Fastify from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  Health,
  type HealthCheckRequest,
  HealthCheckRequestSchema,
  type HealthCheckResponse,
  HealthCheckResponse_ServingStatus as Status,
  HealthCheckResponseSchema,
} from "../gen/grpc/health/v1/health_pb.js";
import { SessionService } from "../gen/sessions/v1/sessions_pb.js";
import { createOnePort, type OnePortOptions } from "../src/server/one-port.js";
import { registerHealth } from "../src/transport/health.js";
import { registerReflection } from "../src/transport/reflection.js";
import { registerRpcRoutes } from "../src/transport/rpc-routes.js";

const headersTimeoutMs = 500;

/**
 * Server limits far longer than any test here runs: a connection or stream that ends in a test
 * ended because of what the test is about (a short timeout, close()), never because of these.
 */
const longMs = 60_000;
const long = { headersTimeoutMs: longMs, keepAliveTimeoutMs: longMs, idleTimeoutMs: longMs };

/** Polls `probe` until it is true. */
async function until(probe: () => boolean, timeoutMs = 10_000): Promise<void> {
  for (const started = Date.now(); !probe(); await sleep(5)) {
    if (Date.now() - started > timeoutMs) throw new Error(`not true within ${timeoutMs} ms`);
  }
}

async function startApp(opts: OnePortOptions = {}) {
  const onePort = createOnePort({ headersTimeoutMs, ...opts });
  const app = Fastify({ serverFactory: onePort.serverFactory });
  app.addHook("preClose", onePort.closeConnections);
  registerRpcRoutes(app, {
    routes(router) {
      router.service(SessionService, { listSessions: () => ({ data: [] }) });
      registerHealth(router, () => true, { watchIntervalMs: 100 });
      registerReflection(router);
    },
    // Ends open streams (a health Watch) on close: HTTP/2 GOAWAY alone waits for them.
    shutdownTimeoutMs: 200,
  });
  app.get("/hello", async () => ({ hello: "world" }));
  let slowRequestsStarted = 0;
  app.get("/slow", async () => {
    slowRequestsStarted++;
    await sleep(300);
    return { slow: true };
  });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const { port } = app.server.address() as AddressInfo;
  return { app, port, url: `http://127.0.0.1:${port}`, slowRequestsStarted: () => slowRequestsStarted };
}

type Started = Awaited<ReturnType<typeof startApp>>;

function grpcJsClient(port: number) {
  return new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
}

const serialize =
  <D extends DescMessage>(schema: D) =>
  (msg: MessageShape<D>) =>
    Buffer.from(toBinary(schema, msg));
const deserialize =
  <D extends DescMessage>(schema: D) =>
  (bytes: Buffer) =>
    fromBinary(schema, bytes);

function grpcJsCheck(client: grpc.Client, service = "") {
  return new Promise<HealthCheckResponse>((resolve, reject) =>
    client.makeUnaryRequest<HealthCheckRequest, HealthCheckResponse>(
      "/grpc.health.v1.Health/Check",
      serialize(HealthCheckRequestSchema),
      deserialize(HealthCheckResponseSchema),
      { $typeName: "grpc.health.v1.HealthCheckRequest", service },
      (err, res) => (err || !res ? reject(err) : resolve(res)),
    ),
  );
}

/**
 * Writes the chunks with a pause between them, and collects what comes back until the server closes
 * the connection; after `giveUpMs` the client closes it itself (`isClosedByServer` false).
 */
function rawExchange(port: number, chunks: Buffer[], { pauseMs = 50, giveUpMs = 10_000 } = {}) {
  return new Promise<{ data: Buffer; closedAfterMs: number; isClosedByServer: boolean }>((resolve, reject) => {
    const started = Date.now();
    const received: Buffer[] = [];
    let isGivenUp = false;
    const socket = net.connect(port, "127.0.0.1", async () => {
      for (const chunk of chunks) {
        socket.write(chunk);
        await sleep(pauseMs);
      }
    });
    const giveUp = setTimeout(() => {
      isGivenUp = true;
      socket.destroy();
    }, giveUpMs);
    socket.on("data", (d) => received.push(d));
    socket.on("error", reject);
    socket.on("close", () => {
      clearTimeout(giveUp);
      resolve({ data: Buffer.concat(received), closedAfterMs: Date.now() - started, isClosedByServer: !isGivenUp });
    });
  });
}

const h2Preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
const frame = (type: number, flags: number, payload: Buffer) => {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header.writeUInt8(type, 3);
  header.writeUInt8(flags, 4); // stream 0
  return Buffer.concat([header, payload]);
};

describe("one port for HTTP/1.1 and h2c", () => {
  let s: Started;
  beforeAll(async () => {
    s = await startApp();
  });
  afterAll(() => s.app.close());

  it("serves a plain fastify route over HTTP/1.1", async () => {
    const res = await fetch(`${s.url}/hello`);
    expect(res.status).toBe(200);
    expect(res.headers.get("keep-alive")).toBe("timeout=72"); // keepAliveTimeoutMs's default
    expect(await res.json()).toEqual({ hello: "world" });
  });

  it("loses no HTTP/1 bytes when the first chunk is too short to decide on, and keeps pipelined requests", async () => {
    const { data } = await rawExchange(s.port, [
      Buffer.from("P"), // could still be the HTTP/2 preface
      Buffer.from("OST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
      Buffer.from("GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ]);
    const text = data.toString();
    expect(text.match(/^HTTP\/1\.1 404/)).toBeTruthy(); // fastify has no POST /hello
    expect(text.match(/HTTP\/1\.1 200 OK/g)).toHaveLength(2);
    expect(text.match(/\{"hello":"world"\}/g)).toHaveLength(2);
  });

  it("loses no HTTP/2 bytes when the preface comes in pieces", async () => {
    const ping = Buffer.from("12345678");
    const { data } = await rawExchange(s.port, [
      h2Preface.subarray(0, 5),
      h2Preface.subarray(5, 20),
      Buffer.concat([h2Preface.subarray(20), frame(0x4, 0, Buffer.alloc(0)), frame(0x6, 0, ping)]),
      frame(0x7, 0, Buffer.alloc(8)), // GOAWAY, so that the server hangs up
    ]);
    const pingAck = frame(0x6, 0x1, ping);
    expect(data.includes(pingAck)).toBe(true);
  });

  it("serves gRPC to a grpc-js client on the same port", async () => {
    const client = grpcJsClient(s.port);
    try {
      expect((await grpcJsCheck(client)).status).toBe(Status.SERVING);
      expect((await grpcJsCheck(client, "sessions.v1.SessionService")).status).toBe(Status.SERVING);
    } finally {
      client.close();
    }
  });

  it("serves connect-node clients over gRPC/HTTP2 and Connect/HTTP1.1", async () => {
    for (const transport of [
      createGrpcTransport({ baseUrl: s.url }),
      createConnectTransport({ baseUrl: s.url, httpVersion: "1.1" }),
    ]) {
      const health = createClient(Health, transport);
      expect((await health.check({})).status).toBe(Status.SERVING);
    }
  });

  // The server's other limits are 72 s and more; a client that waits 20 × headersTimeoutMs tells
  // "closed by headersTimeout" from "closed by something much longer" with room to spare.
  const giveUpMs = 20 * headersTimeoutMs;

  it("applies headersTimeout to HTTP/1 requests", async () => {
    const { data, closedAfterMs, isClosedByServer } = await rawExchange(s.port, [Buffer.from("GET /hel")], { giveUpMs });
    expect(isClosedByServer, `still open after ${giveUpMs} ms`).toBe(true);
    // 408 is Node's answer to a request whose headers or body did not arrive in time; the request
    // limit (requestTimeoutMs) is 300 s here, so this is headersTimeout...
    expect(data.toString()).toMatch(/^HTTP\/1\.1 408/);
    // ...and it waited for it (a lower bound: slowness cannot break it).
    expect(closedAfterMs).toBeGreaterThanOrEqual(headersTimeoutMs - 50);
  });

  it("drops a connection that never says which protocol it speaks", async () => {
    const { data, closedAfterMs, isClosedByServer } = await rawExchange(s.port, [h2Preface.subarray(0, 10)], { giveUpMs });
    expect(isClosedByServer, `still open after ${giveUpMs} ms`).toBe(true);
    expect(data.length).toBe(0); // no HTTP answer: neither inner server ever saw it
    expect(closedAfterMs).toBeGreaterThanOrEqual(headersTimeoutMs - 50);
  });
});

describe("HTTP/2 sessions", () => {
  it("are told maxConcurrentStreams, and sent GOAWAY after idleTimeoutMs", async () => {
    const { app, url } = await startApp({ maxConcurrentStreams: 7, idleTimeoutMs: 300 });
    try {
      const session = http2.connect(url);
      const settings = await new Promise<http2.Settings>((resolve) => session.once("remoteSettings", resolve));
      expect(settings.maxConcurrentStreams).toBe(7);
      const started = Date.now();
      await new Promise((resolve) => session.once("goaway", resolve));
      expect(Date.now() - started).toBeGreaterThanOrEqual(250);
      session.destroy();
    } finally {
      await app.close();
    }
  });
});

describe("the connection bound", () => {
  it("a connection arriving at the bound takes the place of the oldest idle one; busy ones stay", async () => {
    const { app, url, port, slowRequestsStarted } = await startApp({ maxConnections: 10 });
    const idle: http2.ClientHttp2Session[] = [];
    const silent: net.Socket[] = [];
    try {
      // One busy connection first (the oldest), then idle HTTP/2 sessions (preface and SETTINGS
      // only) and silent sockets, far past the bound.
      const busy = fetch(`${url}/slow`);
      await until(() => slowRequestsStarted() === 1);
      for (let i = 0; i < 20; i++) {
        const session = http2.connect(url);
        session.on("error", () => undefined);
        idle.push(session);
        await new Promise((resolve) => session.once("remoteSettings", resolve));
      }
      for (let i = 0; i < 20; i++) {
        const socket = net.connect(port, "127.0.0.1");
        socket.on("error", () => undefined);
        silent.push(socket);
        await new Promise((resolve) => socket.once("connect", resolve));
      }
      // A newcomer is served; so is the request that was in flight all along.
      expect((await (await fetch(`${url}/hello`)).json())).toEqual({ hello: "world" });
      expect((await (await busy).json())).toEqual({ slow: true });
      // The oldest idle sessions were closed to make room.
      expect(idle.filter((s) => s.closed || s.destroyed).length).toBeGreaterThan(0);
    } finally {
      for (const s of idle) s.destroy();
      for (const s of silent) s.destroy();
      await app.close();
    }
  });
});

describe("streams left waiting for their body", () => {
  it("a connection that has had as many dropped as it may open at once is closed", async () => {
    const { app, url } = await startApp({ maxConcurrentStreams: 10, maxPendingRequests: 3 });
    const session = http2.connect(url);
    session.on("error", () => undefined);
    try {
      await new Promise((resolve) => session.once("remoteSettings", resolve));
      const closed = new Promise((resolve) => session.once("close", resolve));
      // Streams announcing a body that never comes, opened again as soon as the server drops one.
      const open = () => {
        if (session.closed || session.destroyed) return;
        const stream = session.request({ ":method": "POST", ":path": "/hello", "content-type": "application/json" });
        stream.on("error", () => undefined);
        stream.on("close", open);
      };
      for (let i = 0; i < 5; i++) open();
      await closed;
    } finally {
      session.destroy();
      await app.close();
    }
  });
});

describe("closing", () => {
  // Clients here never leave by themselves and the server's own limits are a minute: close() must
  // end their connections itself. "Promptly" is well within those limits, a quarter of them.
  const promptlyMs = longMs / 4;

  it("closes promptly while a grpc-js client and an HTTP/1 keep-alive client are connected", async () => {
    const { app, port, url } = await startApp(long);
    const client = grpcJsClient(port);
    try {
      await grpcJsCheck(client);
      await (await fetch(`${url}/hello`)).text();
      const silent = net.connect(port, "127.0.0.1");
      await new Promise((resolve) => silent.once("connect", resolve));
      const silentClosed = new Promise((resolve) => silent.once("close", resolve));
      const started = Date.now();
      await app.close();
      expect(Date.now() - started).toBeLessThan(promptlyMs);
      await silentClosed; // closed by the server: the client never ends it
    } finally {
      client.close();
    }
  });

  it("lets an HTTP/1 request in flight finish, then closes its keep-alive connection", async () => {
    const started = await startApp(long);
    const { app, url } = started;
    const slow = fetch(`${url}/slow`).then((res) => res.json());
    await until(() => started.slowRequestsStarted() === 1); // the request is being handled
    const closeStarted = Date.now();
    await app.close();
    expect(Date.now() - closeStarted).toBeLessThan(promptlyMs);
    expect(await slow).toEqual({ slow: true });
  });

  it("closes while a health Watch stream is open", async () => {
    const { app, port } = await startApp(long);
    const client = grpcJsClient(port);
    try {
      const call = client.makeServerStreamRequest<HealthCheckRequest, HealthCheckResponse>(
        "/grpc.health.v1.Health/Watch",
        serialize(HealthCheckRequestSchema),
        deserialize(HealthCheckResponseSchema),
        { $typeName: "grpc.health.v1.HealthCheckRequest", service: "" },
      );
      call.on("error", () => {}); // the stream's end on shutdown is no failure here
      const ended = new Promise((resolve) => call.once("status", resolve));
      const first = await new Promise<HealthCheckResponse>((resolve) => call.once("data", resolve));
      expect(first.status).toBe(Status.SERVING);
      const started = Date.now();
      await app.close();
      expect(Date.now() - started).toBeLessThan(promptlyMs);
      await ended; // the server ended the stream, which would otherwise never end
    } finally {
      client.close();
    }
  });
});
