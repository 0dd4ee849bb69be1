import { spawn, type ChildProcess } from "node:child_process";
import { readFile } from "node:fs/promises";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { dropDatabase, freshDatabaseUrl } from "./db.js";

/** The real service (`src/main.ts`) in a process of its own: for what must be measured apart from the test (memory, survival). */
export interface ChildServer {
  url: string;
  port: number;
  pid: number;
  databaseUrl: string;
  /** Resident memory of the server process, in bytes (Linux /proc). */
  rss(): Promise<number>;
  isAlive(): boolean;
  /** SIGTERM, then the exit code once the process has exited (it is not killed). */
  terminate(): Promise<number | null>;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export async function startChildServer(env: Record<string, string> = {}): Promise<ChildServer> {
  const port = await freePort();
  const databaseUrl = freshDatabaseUrl();
  const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
    env: { ...process.env, NODE_ENV: "test", PORT: String(port), HOST: "127.0.0.1", DATABASE_URL: databaseUrl, LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr?.on("data", (b: Buffer) => void (stderr = (stderr + b.toString()).slice(-4000)));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGKILL");
      await exited;
    }
    await dropDatabase(databaseUrl);
  };
  try {
    for (let started = Date.now(); ; await sleep(100)) {
      if (child.exitCode !== null) throw new Error(`the server exited with ${child.exitCode}: ${stderr}`);
      if (await fetch(`${url}/readyz`).then((r) => r.ok, () => false)) break;
      if (Date.now() - started > 60_000) throw new Error(`the server did not become ready: ${stderr}`);
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    url,
    port,
    pid: child.pid as number,
    databaseUrl,
    async rss() {
      const status = await readFile(`/proc/${child.pid}/status`, "utf8");
      return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
    },
    isAlive: () => child.exitCode === null && child.signalCode === null,
    async terminate() {
      const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
      child.kill("SIGTERM");
      return exited;
    },
    stop,
  };
}
