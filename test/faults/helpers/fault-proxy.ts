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
  /**
   * Records the text of every statement (MySQL COM_QUERY packet) clients send from now on, whatever
   * the mode, until `stop()`, which returns them in order.
   */
  /** Records the text of every statement clients send from now on: `texts` so far, and all of them at `stop`. */
  recordQueries(): { texts: readonly string[]; stop(): string[] };
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
  const recorders = new Set<string[]>();

  /**
   * Follows the MySQL packets one client sends (3-byte length, sequence id, payload), across chunks,
   * and hands the text of each statement (COM_QUERY) to the recorders.
   */
  const statementReader = () => {
    let buffered: Buffer = Buffer.alloc(0);
    return (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      let at = 0;
      while (buffered.length - at >= 4) {
        const end = at + 4 + buffered.readUIntLE(at, 3);
        if (end > buffered.length) break;
        if (recorders.size > 0 && end > at + 4 && buffered[at + 4] === 0x03 /* COM_QUERY */) {
          const sql = buffered.toString("utf8", at + 5, end);
          for (const texts of recorders) texts.push(sql);
        }
        at = end;
      }
      buffered = buffered.subarray(at);
    };
  };

  const drop = (link: Link) => {
    if (!links.delete(link)) return;
    for (const socket of [link.client, link.upstream]) if (socket && !socket.destroyed) socket.resetAndDestroy();
  };

  /** Writes chunks to `to` in order, each `latencyMs` after it arrived; nothing while stalled. */
  const forward = (link: Link, from: net.Socket, to: net.Socket) => {
    let queue = Promise.resolve();
    const readStatements = from === link.client ? statementReader() : undefined;
    from.on("data", (chunk: Buffer) => {
      readStatements?.(chunk);
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
    if (link.stalled) return; // never connects upstream, never answers (so the client never gets to send a statement)
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
    recordQueries() {
      const texts: string[] = [];
      recorders.add(texts);
      return {
        texts,
        stop: () => {
          recorders.delete(texts);
          return texts;
        },
      };
    },
    async close() {
      for (const link of [...links]) drop(link);
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
