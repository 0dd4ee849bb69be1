import { spawn, execFile, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import mysql from "mysql2/promise";

const run = promisify(execFile);

/** A MariaDB server of the tests' own: its own datadir under a temp dir, on a free loopback port. */
export interface PrivateMariaDb {
  port: number;
  /** `mysql://root@127.0.0.1:<port>` (no database). */
  url: string;
  /** SIGTERM, then waits for the process to exit. */
  stop(): Promise<void>;
  /** Starts it again on the same port and datadir and waits until it answers. */
  start(): Promise<void>;
  restart(): Promise<void>;
  /** Stops it and removes the datadir. */
  destroy(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export async function startPrivateMariaDb(): Promise<PrivateMariaDb> {
  const dir = await mkdtemp(join(tmpdir(), "sessions-faults-mariadb-"));
  const datadir = join(dir, "data");
  await run("mariadb-install-db", [
    "--no-defaults", `--datadir=${datadir}`, "--auth-root-authentication-method=normal", "--skip-test-db",
  ]);
  const port = await freePort();
  const url = `mysql://root@127.0.0.1:${port}`;
  let child: ChildProcess | undefined;
  let stderr = "";

  async function start(): Promise<void> {
    stderr = "";
    child = spawn("/usr/sbin/mariadbd", [
      "--no-defaults", `--datadir=${datadir}`, `--port=${port}`, `--socket=${join(dir, "mysqld.sock")}`,
      `--pid-file=${join(dir, "mysqld.pid")}`, "--bind-address=127.0.0.1", "--user=root", "--skip-log-bin",
      "--innodb-buffer-pool-size=64M",
      // Fast restarts: nothing to dump or load, no DNS lookups, a short shutdown.
      "--innodb-buffer-pool-dump-at-shutdown=0", "--innodb-buffer-pool-load-at-startup=0",
      "--skip-name-resolve", "--performance-schema=0", "--max-connections=200",
    ], { stdio: ["ignore", "ignore", "pipe"] });
    child.stderr?.on("data", (b: Buffer) => void (stderr = (stderr + b.toString()).slice(-4000)));
    const started = child;
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (started.exitCode !== null) throw new Error(`mariadbd exited with ${started.exitCode}:\n${stderr}`);
      try {
        const conn = await mysql.createConnection({ host: "127.0.0.1", port, user: "root", connectTimeout: 1_000 });
        await conn.end();
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`mariadbd does not answer on ${port}: ${String(err)}\n${stderr}`);
        await sleep(100);
      }
    }
  }

  async function stop(): Promise<void> {
    const c = child;
    child = undefined;
    if (c === undefined || c.exitCode !== null) return;
    const exited = new Promise((resolve) => c.once("exit", resolve));
    c.kill("SIGTERM");
    await exited;
  }

  await start();
  return {
    port,
    url,
    start,
    stop,
    async restart() {
      await stop();
      await start();
    },
    async destroy() {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
