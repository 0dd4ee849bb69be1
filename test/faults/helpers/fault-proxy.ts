import net from "node:net";

/**
 * - `pass`: forwards both ways (after `latencyMs`, if set);
 * - `refuse`: resets every open connection and every new one;
 * - `blackhole`: accepts, never forwards nor answers; open connections stall (bytes are dropped).
 */
export type FaultMode = "pass" | "refuse" | "blackhole";

export interface FaultProxy {
  port: number;
  mode: FaultMode;
  setMode(mode: FaultMode): void;
  /** Delay added to every chunk, each way, in pass mode. */
  setLatency(ms: number): void;
  /** Connections currently open through the proxy. */
  connectionCount(): number;
  close(): Promise<void>;
}

interface Link {
  client: net.Socket;
  upstream?: net.Socket;
  stalled: boolean;
}

/** A TCP proxy on a free loopback port in front of 127.0.0.1:`targetPort`, for injecting faults. */
export async function startFaultProxy(targetPort: number): Promise<FaultProxy> {
  const links = new Set<Link>();
  let mode: FaultMode = "pass";
  let latencyMs = 0;

  const drop = (link: Link) => {
    if (!links.delete(link)) return;
    for (const socket of [link.client, link.upstream]) if (socket && !socket.destroyed) socket.resetAndDestroy();
  };

  /** Writes chunks to `to` in order, each `latencyMs` after it arrived; nothing while stalled. */
  const forward = (link: Link, from: net.Socket, to: net.Socket) => {
    let queue = Promise.resolve();
    from.on("data", (chunk: Buffer) => {
      if (link.stalled) return;
      const due = Date.now() + latencyMs;
      queue = queue.then(async () => {
        const wait = due - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        if (!link.stalled && !to.destroyed) to.write(chunk);
      });
    });
    from.on("end", () => void queue.then(() => link.stalled || to.end()));
  };

  const server = net.createServer((client) => {
    const link: Link = { client, stalled: mode === "blackhole" };
    links.add(link);
    client.on("error", () => drop(link)).on("close", () => drop(link));
    if (mode === "refuse") return drop(link);
    if (link.stalled) return; // never connects upstream, never answers
    const upstream = net.connect(targetPort, "127.0.0.1");
    link.upstream = upstream;
    upstream.setNoDelay(true);
    client.setNoDelay(true);
    upstream.on("error", () => drop(link)).on("close", () => drop(link));
    forward(link, client, upstream);
    forward(link, upstream, client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;

  return {
    port,
    get mode() {
      return mode;
    },
    setMode(next) {
      const previous = mode;
      mode = next;
      for (const link of [...links]) {
        if (next === "refuse") drop(link);
        else if (next === "blackhole") link.stalled = true;
        // A stalled link has lost bytes: it cannot carry a protocol any more once traffic resumes.
        else if (previous === "blackhole" && link.stalled) drop(link);
      }
    },
    setLatency(ms) {
      latencyMs = ms;
    },
    connectionCount: () => links.size,
    async close() {
      for (const link of [...links]) drop(link);
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
