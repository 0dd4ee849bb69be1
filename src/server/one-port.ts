import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { FastifyServerFactory } from "fastify";
import { isZeroLength } from "../transport/rest.js";

/**
 * Limits for the inner servers. Fastify's own timeout options (keepAliveTimeout, requestTimeout,
 * http2SessionTimeout, ...) only reach servers fastify creates itself, never one from serverFactory.
 */
export interface OnePortOptions {
  /** Time (ms, > 0) a client has to send its first bytes, and an HTTP/1 request's headers. Default 60 s. */
  headersTimeoutMs?: number;
  /** Time (ms, 0 = none) a client has to send a whole HTTP/1 request. Default 300 s. */
  requestTimeoutMs?: number;
  /** How long an idle HTTP/1 keep-alive connection stays open. Default 72 s, as fastify's. */
  keepAliveTimeoutMs?: number;
  /** How long an HTTP/2 session may stay silent before it is sent GOAWAY. Default 72 s, as fastify's. */
  idleTimeoutMs?: number;
  /** Streams one HTTP/2 client may have open at once. Default 100. */
  maxConcurrentStreams?: number;
  /**
   * Connections open at once, all protocols. Default 4,096. A connection arriving at the bound takes
   * the place of the oldest idle one (no request or stream in flight); with none idle, it is closed.
   */
  maxConnections?: number;
  /**
   * Requests whose body has not fully arrived, in this process, HTTP/1 requests and HTTP/2 streams
   * alike. Past it the oldest such request is dropped (its stream reset, or its HTTP/1 connection
   * closed): a client that opens streams and never finishes them evicts its own, while requests
   * that send their body at once (every real client) finish long before they could be evicted.
   * Default 1,000.
   */
  maxPendingRequests?: number;
  /** Largest header block, in bytes (name + value + 32 per field, as HTTP/2 counts it). Default 16 KiB. */
  maxHeaderBytes?: number;
  /**
   * Answers what this layer refuses before any framework sees it, in the caller's error format:
   * an HTTP/2 request with too large a header block (431) or a method HTTP does not know (405; the
   * HTTP/1 parser refuses those itself), or an HTTP/1 CONNECT (405, on the socket).
   */
  refuse?: Refuser;
}

export interface Refuser {
  onResponse(req: http2.Http2ServerRequest, res: http2.Http2ServerResponse, reason: "headers_too_large" | "method_not_allowed"): void;
  onSocket(socket: net.Socket, reason: "method_not_allowed"): void;
}

export interface OnePort {
  /** Pass as `fastify({ serverFactory })`. */
  serverFactory: FastifyServerFactory;
  /**
   * Register as `app.addHook("preClose", closeConnections)`: without it `app.close()` waits for
   * every client to leave. Open HTTP/2 streams still finish first (see fastifyConnectPlugin's
   * shutdownTimeoutMs for ending long-lived RPCs).
   */
  closeConnections(): void;
}

const preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** An open connection, as the port tracks it. */
interface Connection {
  /** Requests (HTTP/1) or streams (HTTP/2) in flight: received and not yet answered. */
  active: number;
  /** Handed to the HTTP/1.1 server (not HTTP/2, nor still undecided). */
  isHttp1?: boolean;
  /** HTTP/1: the request running; the pipelined ones behind it wait in `waiting`, in order. */
  running?: http.ServerResponse;
  waiting: (() => void)[];
  /** HTTP/1: past `maxConcurrentStreams` waiting: nothing more is read or run on the connection. */
  isFlooded?: boolean;
  /** HTTP/1: the last request received, whose body may be the one a refusal cuts short. */
  last?: http.ServerResponse;
  /** HTTP/1: a refusal by the parser, held until the requests before it are answered. */
  refusal?: { isDue(): boolean; send(): void };
}

/** Whether Node's parser takes `req` as asking to switch protocols: an Upgrade header, and `upgrade` in Connection. */
function asksToUpgrade(req: http.IncomingMessage): boolean {
  return req.headers.upgrade !== undefined && /(?:^|,)\s*upgrade\s*(?:,|$)/i.test(req.headers.connection ?? "");
}

/** The methods HTTP/1's parser accepts; an HTTP/2 request may name any string. */
const knownMethods = new Set(http.METHODS);

/** A header block's size as HTTP/2 counts it (RFC 9113 section 6.5.2): name + value + 32 per field. */
function headerBytes(rawHeaders: string[]): number {
  let bytes = 0;
  for (const item of rawHeaders) bytes += item.length;
  return bytes + 16 * rawHeaders.length;
}

/**
 * One plaintext port for HTTP/1.1 and h2c with prior knowledge (what gRPC clients speak), which
 * Node cannot do by itself: `http2.createServer({ allowHTTP1 })` only falls back to HTTP/1 via
 * TLS ALPN. Each connection's first bytes decide which inner server gets the socket.
 */
export function createOnePort(opts: OnePortOptions = {}): OnePort {
  const {
    headersTimeoutMs = 60_000,
    requestTimeoutMs = 300_000,
    keepAliveTimeoutMs = 72_000,
    idleTimeoutMs = 72_000,
    maxConcurrentStreams = 100,
    maxConnections = 4_096,
    maxPendingRequests = 1_000,
    maxHeaderBytes = 16 * 1024,
    refuse,
  } = opts;
  const undecided = new Set<net.Socket>();
  /** Every open connection, oldest first, with the requests (HTTP/1) or streams (HTTP/2) it has in flight. */
  const connections = new Map<net.Socket, Connection>();
  /** Closes the oldest connection with nothing in flight; false when every connection is busy. */
  const evictIdle = () => {
    for (const [socket, conn] of connections) {
      if (conn.active === 0) {
        connections.delete(socket);
        socket.destroy();
        return true;
      }
    }
    return false;
  };
  /** Streams of each HTTP/2 session dropped while they waited for their body. */
  const droppedStreams = new WeakMap<http2.Http2Session, number>();
  /** The connection being handed to the HTTP/2 server, for its 'session' listener. */
  let handingOver: Connection | undefined;
  const sessions = new Set<http2.ServerHttp2Session>();
  let closing = false;
  // Requests still receiving their body, oldest first (a Set keeps insertion order); each entry drops its request.
  /** HTTP/1.1 responses not yet sent: told to close their connection when closing begins. */
  const inFlight = new Set<http.ServerResponse>();
  const pending = new Set<() => void>();
  /** Tracks a request until its body has arrived or it closed; evicts the oldest past the bound. */
  const track = (req: http.IncomingMessage | http2.Http2ServerRequest, drop: () => void) => {
    if (req.complete) return;
    const entry = () => {
      pending.delete(entry);
      // A body that has arrived but is not read yet (its request waits behind others on the
      // connection) is not one still to come.
      if (!req.complete) drop();
    };
    const done = () => pending.delete(entry);
    pending.add(entry);
    // Until the body has arrived, not until the answer: a request refused at once (a body on a
    // DELETE, a wrong type) may still be receiving one, and must not hold the shutdown either.
    req.once("end", done);
    req.once("close", done);
    if (pending.size > maxPendingRequests) pending.values().next().value?.();
  };

  const serverFactory: FastifyServerFactory = (handler) => {
    const h1 = http.createServer(
      {
        headersTimeout: headersTimeoutMs,
        requestTimeout: requestTimeoutMs,
        keepAliveTimeout: keepAliveTimeoutMs,
        // Node enforces the two timeouts above from a timer that ticks every 30 s by default.
        connectionsCheckingInterval: Math.ceil(Math.min(30_000, headersTimeoutMs / 2)),
        maxHeaderSize: maxHeaderBytes,
        // Node would answer a missing Host with a bare 400; the framework answers it in its envelope.
        requireHostHeader: false,
      },
      (req, res) => {
        // Only a request whose body is still to come is tracked; dropping it closes the connection.
        const length = req.headers["content-length"];
        const hasBody = (length !== undefined && !isZeroLength(length)) || req.headers["transfer-encoding"] !== undefined;
        if (hasBody) track(req, () => req.socket.destroy());
        // Once closing, every answer says `Connection: close`, so keep-alive clients stop sending on
        // a socket about to go (those in flight when closing began are told as they answer).
        inFlight.add(res);
        if (closing) res.shouldKeepAlive = false;
        const conn = connections.get(req.socket);
        res.once("close", () => {
          inFlight.delete(res);
          if (conn !== undefined) {
            conn.active--;
            if (conn.running === res) conn.running = undefined;
            if (conn.refusal?.isDue()) conn.refusal.send();
            else conn.waiting.shift()?.();
          }
          // A connection whose answers are all given is closed once they have left its buffer.
          if (closing) closeIdleHttp1();
        });
        if (conn === undefined) return void handler(req, res);
        conn.active++;
        conn.last = res;
        // Node reads nothing more of a connection once a request asks to switch protocols (what is
        // pipelined behind it is lost): its answer closes the connection, so the client sends the
        // rest again, on another.
        if (asksToUpgrade(req)) res.shouldKeepAlive = false;
        // Pipelined requests run one at a time, in order, each once the one before it is answered:
        // Node would run them all at once, and a GET behind a DELETE would read what the DELETE
        // was about to change (RFC 9112 §9.3.2 allows parallel processing of safe methods only).
        // A request whose answer can no longer be sent (the one before it closed the connection)
        // is not run.
        const run = () => {
          if (!req.socket.writable) return void res.destroy();
          conn.running = res;
          handler(req, res);
        };
        if (conn.active === 1) run();
        else if (conn.isFlooded !== true && conn.waiting.length < maxConcurrentStreams) conn.waiting.push(run);
        else if (conn.isFlooded !== true) {
          // As many waiting as an HTTP/2 connection may have streams open; past that the client is
          // flooding, and each waiting request holds memory. Nothing more is read or run; the
          // request running is answered, saying the connection closes, and it closes.
          conn.isFlooded = true;
          conn.waiting.length = 0;
          req.socket.pause();
          if (conn.running !== undefined && !conn.running.headersSent) conn.running.shouldKeepAlive = false;
          else req.socket.destroy();
        }
      },
    );
    // A client may half-close once its request is sent (RFC 9112 §9.6). Node would end the socket on
    // that FIN and the answer, the request already run, would be lost; the socket's own half (below)
    // and this flag keep it open until the answers in flight are written, then close it.
    (h1 as http.Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
    // Nothing here is a proxy: CONNECT is refused (Node would drop the connection without a word),
    // after the requests before it are answered.
    h1.on("connect", (_req: http.IncomingMessage, socket: net.Socket) =>
      refuseInTurn(socket, false, () => (refuse ? refuse.onSocket(socket, "method_not_allowed") : socket.destroy())),
    );

    const h2Options: http2.ServerOptions & { streamResetBurst: number; streamResetRate: number } = {
      // Streams per connection bounded and announced. Header blocks are let in up to 4 times the
      // limit, so that one over it gets a 431 answer below rather than a bare stream reset.
      settings: { maxConcurrentStreams, maxHeaderListSize: 4 * maxHeaderBytes },
      maxSessionMemory: 4,
      // Rapid reset (CVE-2023-44487): a client resetting streams faster than this loses its session.
      streamResetBurst: 100,
      streamResetRate: 30,
    };
    const h2 = http2.createServer(h2Options);
    // Fastify's handler copes with both request kinds; only its types insist on one server kind.
    type H2Handler = (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void;
    h2.on("request", (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => {
      const { stream } = req;
      const refusal = headerBytes(req.rawHeaders) > maxHeaderBytes ? "headers_too_large" : knownMethods.has(req.method) ? undefined : "method_not_allowed";
      if (refusal !== undefined) {
        if (refuse) refuse.onResponse(req, res, refusal);
        else res.writeHead(refusal === "headers_too_large" ? 431 : 405).end();
        return;
      }
      const dispatch = () => (handler as unknown as H2Handler)(req, res);
      if (stream.endAfterHeaders) return dispatch();
      // A connection whose streams keep being dropped for a body that never came (evicted or timed
      // out) loses the connection after as many as it may have open at once: re-opening them as
      // fast as they are dropped then costs a new connection each round.
      const reset = () => {
        const { session } = stream;
        stream.close(http2.constants.NGHTTP2_CANCEL);
        if (session === undefined) return;
        const dropped = (droppedStreams.get(session) ?? 0) + 1;
        droppedStreams.set(session, dropped);
        if (dropped >= maxConcurrentStreams) session.destroy();
      };
      track(req, reset);
      // As HTTP/1's requestTimeout: a stream whose body has not all arrived in time is reset, so
      // streams opened and left pending cannot pile up (Node has no such timeout for HTTP/2).
      const timer = setTimeout(() => req.complete || reset(), requestTimeoutMs);
      res.once("close", () => clearTimeout(timer));
      req.once("end", () => clearTimeout(timer));
      // A request reaches fastify (and costs its request, reply and handler objects) only once its
      // body starts to arrive: a stream that announces a body and sends none costs only Node's own
      // objects until it is evicted or times out. 'readable' tells that data (or its end) is
      // buffered in the stream without consuming it; once the listener is gone the stream flows
      // again for Node's compatibility layer, which reads it on the handler's behalf.
      const ready = () => {
        stream.off("readable", ready);
        if (!stream.destroyed) dispatch();
      };
      stream.on("readable", ready);
    });
    h2.on("session", (session) => {
      const conn = handingOver;
      session.on("stream", (stream: http2.ServerHttp2Stream) => {
        if (conn === undefined) return;
        conn.active++;
        stream.once("close", () => conn.active--);
      });
      sessions.add(session);
      session.once("close", () => sessions.delete(session));
      // close() sends GOAWAY and lets open streams finish, where Node's default would destroy them.
      session.setTimeout(idleTimeoutMs, () => session.close());
    });

    // noDelay as http.createServer does for its own sockets: Nagle would hold small responses back.
    const server = net.createServer({ noDelay: true }, (socket) => {
      if (closing) return void socket.destroy();
      if (connections.size >= maxConnections && !evictIdle()) return void socket.destroy();
      connections.set(socket, { active: 0, waiting: [] });
      socket.once("close", () => connections.delete(socket));
      undecided.add(socket);
      // A client that connects and stays silent would never meet any of the inner servers' timeouts.
      const timer = setTimeout(() => socket.destroy(), headersTimeoutMs);
      let head = Buffer.alloc(0);
      const settle = () => {
        clearTimeout(timer);
        undecided.delete(socket);
        socket.off("data", onData).off("error", settle).off("close", settle);
      };
      const onData = (chunk: Buffer) => {
        head = Buffer.concat([head, chunk]);
        const n = Math.min(head.length, preface.length);
        const isH2 = head.subarray(0, n).equals(preface.subarray(0, n));
        if (isH2 && n < preface.length) return; // a prefix of the preface: wait for more
        settle();
        socket.pause();
        socket.unshift(head);
        if (isH2) {
          // The Http2Session drains the socket's buffered bytes itself, via read() on the next tick.
          // Its 'session' event comes synchronously, inside this emit.
          handingOver = connections.get(socket);
          h2.emit("connection", socket);
          handingOver = undefined;
        } else {
          // http.Server parses straight from the handle from now on; resuming makes the socket emit
          // the unshifted bytes to its 'data' listener first, and restarts reading from the handle.
          socket.allowHalfOpen = true;
          const conn = connections.get(socket);
          if (conn !== undefined) conn.isHttp1 = true;
          h1.emit("connection", socket);
          socket.resume();
        }
      };
      socket.on("data", onData).on("error", settle).on("close", settle);
    });
    // http.Server starts its connection tracking (headersTimeout, requestTimeout, closeIdleConnections)
    // on 'listening', which it never sees since fastify listens on the outer server.
    server.on("listening", () => h1.emit("listening"));
    server.on("close", () => h1.close()); // stops that tracking timer
    // Fastify installs its clientError handler (the 400/408 answers) on the server it is given.
    // A refusal (a malformed request, one cut short by the client's FIN) behind requests still being
    // answered waits for their answers, which would otherwise be lost or come after it; then, once
    // they have left the socket's buffer (the refusal closes the socket at once), it is sent.
    h1.on("clientError", (err: Error & { code?: string }, socket: net.Socket) => {
      const refuseNow = () => server.emit("clientError", err, socket);
      if (err.code === "ECONNRESET") return void refuseNow();
      // The last request, when its body was cut short, never completes: the refusal is its answer.
      const last = connections.get(socket)?.last;
      refuseInTurn(socket, last !== undefined && !last.req.complete && !last.writableFinished, refuseNow);
    });
    // Fastify only calls listen(), address(), close() and on() on it, which net.Server has.
    return server as unknown as http.Server;
  };

  /**
   * Refuses what the HTTP/1.1 parser could not take on `socket` once the requests before it are
   * answered (all of them, or all but the last when `isLastCut`: the one the refusal answers) and
   * their bytes have left the socket's buffer. At once, the refusal would be lost or read as the
   * answer to the first request in flight.
   */
  const refuseInTurn = (socket: net.Socket, isLastCut: boolean, refuseNow: () => void) => {
    const conn = connections.get(socket);
    if (conn === undefined) return void refuseNow();
    if (conn.refusal !== undefined) return;
    conn.refusal = {
      isDue: () => conn.active === (isLastCut ? 1 : 0),
      // An empty write's callback runs once everything written before it has left the buffer.
      send: () => void socket.write("", () => refuseNow()),
    };
    if (conn.refusal.isDue()) conn.refusal.send();
  };

  /**
   * Closes the HTTP/1.1 connections with no request in flight: between requests, or with a request
   * whose headers never finished. Each would otherwise hold the shutdown to its timeout. One with
   * bytes of its answers still in its buffer (a client reading slowly) is closed once they have
   * left: destroying it would cut an answer off, Node's closeIdleConnections does.
   */
  const closeIdleHttp1 = () => {
    for (const [socket, conn] of connections) {
      if (!conn.isHttp1 || conn.active > 0) continue;
      if (socket.writableLength === 0) socket.destroy();
      else socket.destroySoon();
    }
  };

  return {
    serverFactory,
    closeConnections() {
      closing = true;
      // The request running on each connection says so; those waiting behind it never run.
      for (const res of inFlight) if (!res.headersSent) res.shouldKeepAlive = false;
      // Requests still waiting for their body have not reached a handler: they are not work in
      // flight, and a client that never finishes one must not hold the shutdown.
      for (const drop of [...pending]) drop();
      for (const socket of undecided) socket.destroy();
      closeIdleHttp1();
      for (const session of sessions) session.close();
    },
  };
}
