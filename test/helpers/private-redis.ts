import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { Redis } from "ioredis";
import { freePort } from "./child-server.js";

/**
 * A private redis-server (Debian's `redis-server`) on a free port, in memory only, that a test can
 * stop and start again on the same port. Owned by the test: `stop()` on every path.
 */
export interface PrivateRedis {
  url: string;
  /** Kills the server (SIGKILL) and waits for it to exit. */
  kill(): Promise<void>;
  /** Starts it again on the same port (empty), and waits until it answers. */
  start(): Promise<void>;
  /** Freezes it (SIGSTOP): connected clients get no answer, as from a hung or overloaded server. */
  pause(): void;
  /** Lets a paused server go on (SIGCONT). */
  resume(): void;
  stop(): Promise<void>;
}

export async function startPrivateRedis({ replicaOf }: { replicaOf?: PrivateRedis } = {}): Promise<PrivateRedis> {
  const port = await freePort();
  const url = `redis://127.0.0.1:${port}`;
  let child: ChildProcess | undefined;
  const start = async () => {
    const replica = replicaOf ? ["--replicaof", "127.0.0.1", new URL(replicaOf.url).port] : [];
    child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", ...replica], { stdio: "ignore" });
    child.on("error", () => undefined);
    const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on("error", () => undefined);
    try {
      for (let i = 0; ; i++) {
        if (await probe.connect().then(() => probe.ping(), () => undefined)) return;
        if (child.exitCode !== null || i > 200) throw new Error("redis-server did not start (is Debian's redis-server installed?)");
        probe.disconnect();
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
    } finally {
      probe.disconnect();
    }
  };
  const kill = async () => {
    if (child === undefined || child.exitCode !== null) return;
    const exited = once(child, "exit");
    child.kill("SIGKILL");
    await exited;
  };
  await start();
  return {
    url,
    kill,
    start,
    stop: async () => {
      child?.kill("SIGCONT");
      await kill();
    },
    pause: () => child?.kill("SIGSTOP"),
    resume: () => child?.kill("SIGCONT"),
  };
}
