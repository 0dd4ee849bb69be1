import { spawn, type ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import mysql from "mysql2/promise";

/**
 * A MariaDB server of the tests' own, everything it writes inside one folder of its own:
 *
 *   <os tmpdir>/sessions-faults-mariadb-XXXXXX/   unique (mkdtemp), removed on every path
 *     data/          the datadir (system tables, InnoDB and Aria files and logs)
 *     tmp/           --tmpdir (and TMPDIR) of mariadb-install-db's bootstrap server and of mariadbd
 *     mysqld.sock, mysqld.pid
 *
 * Nothing goes to the shared /tmp: without --tmpdir, the bootstrap server and mariadbd put their
 * temporary tables (`#sql-temptable-<pid>-…`) there, where another run's files (another user's,
 * another PID namespace's) can collide with them. `mariadb-install-db --no-defaults` reads no option
 * file; it gets no --user, since with one it would chown the PAM tool under /usr/lib/mysql/plugin.
 * Errors go to stderr (no --log-error), logs and binlogs are off or in the datadir.
 */
export interface PrivateMariaDb {
  port: number;
  /** `mysql://root@127.0.0.1:<port>` (no database). */
  url: string;
  /** The server's own folder (datadir, tmpdir, socket, pid file). */
  dir: string;
  /** SIGTERM, then waits for the process to exit. */
  stop(): Promise<void>;
  /** Starts it again on the same port and datadir and waits until it answers. */
  start(): Promise<void>;
  restart(): Promise<void>;
  /** Stops it and removes its folder. */
  destroy(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const installTimeoutMs = 45_000;
const startTimeoutMs = 30_000;
/** A clean shutdown normally takes well under a second; past this the server is killed. */
const stopTimeoutMs = 30_000;

/**
 * Every folder not destroyed yet, with a way to kill what still runs in it: a test that forgets
 * `destroy()`, or a worker ended early (vitest stops its workers with SIGTERM), leaves nothing behind.
 */
const live = new Map<string, () => void>();

function removeAllNow(): void {
  for (const [dir, kill] of live) {
    kill();
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
    } catch {
      // Nothing more can be done at exit.
    }
  }
  live.clear();
}

/** Runs `cleanup` (synchronous) when the process exits, or on SIGINT, SIGTERM or SIGHUP. */
export function onExitOrSignal(cleanup: () => void): void {
  process.once("exit", cleanup);
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(signal, () => {
      cleanup();
      // Then what the signal would have done had no one listened (unless someone else handles it).
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    });
  }
}

let isCleanupHooked = false;
function hookCleanup(): void {
  if (isCleanupHooked) return;
  isCleanupHooked = true;
  onExitOrSignal(removeAllNow);
}

/** The last `max` characters of a growing output. */
const tail = (text: string, max = 4_000) => (text.length > max ? `…${text.slice(-max)}` : text);

/**
 * Runs mariadb-install-db (a shell script that pipes SQL into `mariadbd --bootstrap`) in its own
 * process group, so that a timeout or an early exit ends the bootstrap server too.
 */
export function installSystemTables(datadir: string, tmp: string, env: NodeJS.ProcessEnv, onSpawn: (kill: () => void) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      "mariadb-install-db",
      [
        "--no-defaults", `--datadir=${datadir}`, `--tmpdir=${tmp}`,
        "--auth-root-authentication-method=normal", "--skip-test-db",
      ],
      { env, detached: true, stdio: ["ignore", "pipe", "pipe"] },
    );
    const killGroup = () => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(-child.pid, "SIGKILL");
        } catch {
          // Already gone.
        }
      }
    };
    onSpawn(killGroup);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (b: Buffer) => void (stdout = tail(stdout + b.toString(), 8_000)));
    child.stderr.on("data", (b: Buffer) => void (stderr = tail(stderr + b.toString(), 8_000)));
    const timer = setTimeout(killGroup, installTimeoutMs);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`mariadb-install-db could not run: ${err.message}`));
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve();
      const how = signal !== null ? `was killed (${signal}${signal === "SIGKILL" ? `, not done within ${installTimeoutMs} ms` : ""})` : `exited with ${code}`;
      reject(new Error(`mariadb-install-db ${how}\n--- stderr ---\n${tail(stderr)}\n--- stdout ---\n${tail(stdout, 1_500)}`));
    });
  });
}

/** `serverArgs` go to mariadbd after the defaults (for example `--sql-mode=…`). */
export async function startPrivateMariaDb(serverArgs: string[] = []): Promise<PrivateMariaDb> {
  hookCleanup();
  const dir = await mkdtemp(join(tmpdir(), "sessions-faults-mariadb-"));
  let child: ChildProcess | undefined;
  let killInstall: (() => void) | undefined;
  live.set(dir, () => {
    killInstall?.();
    if (child !== undefined && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  const datadir = join(dir, "data");
  const tmp = join(dir, "tmp");
  const socket = join(dir, "mysqld.sock");
  // TMPDIR as well, for anything the script or the server would put in a temp dir without asking.
  const env = { ...process.env, TMPDIR: tmp };
  let port = 0;
  let stderr = "";

  async function start(): Promise<void> {
    stderr = "";
    const started = spawn("/usr/sbin/mariadbd", [
      "--no-defaults", `--datadir=${datadir}`, `--tmpdir=${tmp}`, `--port=${port}`, `--socket=${socket}`,
      `--pid-file=${join(dir, "mysqld.pid")}`, "--bind-address=127.0.0.1", "--user=root", "--skip-log-bin",
      "--innodb-buffer-pool-size=64M",
      // Fast restarts: nothing to dump or load, no DNS lookups, a short shutdown.
      "--innodb-buffer-pool-dump-at-shutdown=0", "--innodb-buffer-pool-load-at-startup=0",
      "--skip-name-resolve", "--performance-schema=0", "--max-connections=200",
      ...serverArgs,
    ], { env, stdio: ["ignore", "ignore", "pipe"] });
    child = started;
    started.stderr?.on("data", (b: Buffer) => void (stderr = tail(stderr + b.toString())));
    const deadline = Date.now() + startTimeoutMs;
    for (;;) {
      if (started.exitCode !== null || started.signalCode !== null) {
        throw new Error(`mariadbd exited with ${started.exitCode ?? started.signalCode}:\n${stderr}`);
      }
      try {
        const conn = await mysql.createConnection({ host: "127.0.0.1", port, user: "root", connectTimeout: 1_000 });
        await conn.end();
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`mariadbd does not answer on ${port} within ${startTimeoutMs} ms: ${String(err)}\n${stderr}`);
        await sleep(100);
      }
    }
  }

  async function stop(): Promise<void> {
    const c = child;
    child = undefined;
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((resolve) => c.once("exit", resolve));
    c.kill("SIGTERM");
    const timer = setTimeout(() => c.kill("SIGKILL"), stopTimeoutMs);
    await exited;
    clearTimeout(timer);
  }

  let isDestroyed = false;
  async function destroy(): Promise<void> {
    if (isDestroyed) return;
    isDestroyed = true;
    try {
      await stop();
    } finally {
      live.delete(dir);
      await rm(dir, { recursive: true, force: true, maxRetries: 5 });
    }
  }

  try {
    // mariadb-install-db passes the options it does not know on to mariadbd unquoted.
    if (/\s/.test(dir)) throw new Error(`mariadb-install-db cannot take a path with white space: ${dir} (set TMPDIR)`);
    await mkdir(tmp);
    await installSystemTables(datadir, tmp, env, (kill) => void (killInstall = kill));
    killInstall = undefined;
    // The free port may be taken by someone else before mariadbd binds it: then try another.
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      try {
        await start();
        break;
      } catch (err) {
        await stop();
        const isPortTaken = /Address already in use|Bind on TCP\/IP port/i.test(stderr);
        if (!isPortTaken || attempt === 3) throw err;
      }
    }
  } catch (err) {
    await destroy().catch(() => undefined);
    const e = err as Error;
    e.message = `private MariaDB in ${dir} (removed): ${e.message}`;
    throw e;
  }

  return {
    port,
    url: `mysql://root@127.0.0.1:${port}`,
    dir,
    start,
    stop,
    async restart() {
      await stop();
      await start();
    },
    destroy,
  };
}
