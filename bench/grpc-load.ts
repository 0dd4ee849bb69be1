import http2 from "node:http2";

/**
 * A lean gRPC load generator: raw HTTP/2 streams carrying pre-encoded length-prefixed messages, so
 * that the server under test, not the client library, is what limits the rate. `concurrency`
 * streams are kept in flight, spread over `connections` h2c connections; a call counts as a success
 * when its trailers say grpc-status 0.
 */
export interface GrpcLoadOptions {
  url: string;
  path: string;
  /** Request metadata (lower-case names). */
  headers: Record<string, string>;
  /** Encoded request messages (protobuf binary); calls take them in turn. */
  messages: Uint8Array[];
  connections: number;
  concurrency: number;
  durationMs: number;
}

export interface LoadResult {
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
}

export async function grpcLoad(opts: GrpcLoadOptions): Promise<LoadResult> {
  const sessions = Array.from({ length: opts.connections }, () => {
    const session = http2.connect(opts.url);
    session.on("error", () => undefined);
    return session;
  });
  const frames = opts.messages.map((m) => {
    const frame = Buffer.alloc(5 + m.length);
    frame.writeUInt32BE(m.length, 1);
    Buffer.from(m).copy(frame, 5);
    return frame;
  });
  const headers = { ":method": "POST", ":path": opts.path, "content-type": "application/grpc", te: "trailers", ...opts.headers };
  const latencies: number[] = [];
  let ok = 0;
  let errors = 0;
  let next = 0;
  const stopAt = performance.now() + opts.durationMs;

  function call(session: http2.ClientHttp2Session): Promise<void> {
    return new Promise((resolve) => {
      const started = performance.now();
      const stream = session.request(headers);
      let status: string | undefined;
      stream.on("response", (h) => (status = h["grpc-status"] as string | undefined ?? status));
      stream.on("trailers", (t) => (status = t["grpc-status"] as string | undefined));
      stream.on("error", () => undefined);
      stream.on("data", () => undefined);
      stream.on("close", () => {
        latencies.push(performance.now() - started);
        if (status === "0") ok++;
        else errors++;
        resolve();
      });
      stream.end(frames[next++ % frames.length]);
    });
  }

  const started = performance.now();
  await Promise.all(
    Array.from({ length: opts.concurrency }, async (_, i) => {
      const session = sessions[i % sessions.length]!;
      while (performance.now() < stopAt) await call(session);
    }),
  );
  const elapsedS = (performance.now() - started) / 1000;
  for (const session of sessions) session.close();
  latencies.sort((a, b) => a - b);
  const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;
  return { requestsPerSecond: ok / elapsedS, p50Ms: at(0.5), p99Ms: at(0.99), errors };
}
