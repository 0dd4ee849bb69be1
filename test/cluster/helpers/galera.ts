import { execFile, spawn, type ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";
import { chmod, chown, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import mysql from "mysql2/promise";
import { freePort, installSystemTables, onExitOrSignal } from "../../faults/helpers/private-mariadb.js";

/**
 * A three-node MariaDB Galera cluster of the tests' own, on this machine, everything inside one folder:
 *
 *   <os tmpdir>/sessions-galera-XXXXXX/   unique (mkdtemp), removed on every path
 *     node1/ node2/ node3/                each: data/, tmp/, mysqld.sock, mysqld.pid
 *
 * Node 1 gets system tables from mariadb-install-db and bootstraps the cluster (--wsrep-new-cluster);
 * nodes 2 and 3 start with empty datadirs and join, receiving a full state transfer (SST) by rsync.
 * Each node has four ports of its own: client, group communication (gmcast), IST and SST.
 *
 * The joiner's SST script runs an rsync daemon, which, started by root, drops to `nobody` before it
 * writes: a node's folders belong to nobody (and the top folder may be traversed), or the joiner
 * fails with "Permission denied". The servers run as root and read and write those files all the same.
 */
export interface GaleraNode {
  index: number;
  port: number;
  /** `mysql://root@127.0.0.1:<port>` (no database). */
  url: string;
  dir: string;
  /** SIGKILL, as a crash: the node leaves the cluster without saying goodbye. */
  kill(): Promise<void>;
  /** SIGTERM, a clean leave. */
  stop(): Promise<void>;
  /** Starts the node again on its datadir, joining the others (IST when its gcache position allows, else SST), and waits until Synced. */
  start(): Promise<void>;
  isRunning(): boolean;
  /** The node's last stderr lines (its error log). */
  log(): string;
}

export interface GaleraCluster {
  nodes: GaleraNode[];
  dir: string;
  /** Stops every node and removes the folder. */
  destroy(): Promise<void>;
}

const run = promisify(execFile);
const nobody = { uid: 65534, gid: 65534 };
const installTimeoutMs = 45_000;
/** A joiner's SST copies a small datadir in seconds; the margin is for a loaded 2-core machine. */
const syncTimeoutMs = 90_000;
const stopTimeoutMs = 30_000;

/** Every cluster folder not destroyed yet, with a way to kill what still runs in it (test failure, SIGINT, worker exit); it returns the pids killed. */
const live = new Map<string, () => number[]>();

/** What else a test started (service instances, HAProxy): ended first, on the same paths. */
const others = new Set<() => void>();

/** Registers `killNow` (synchronous) to run at exit or on a signal; call the returned function once it is cleaned up normally. */
export function onAbnormalExit(killNow: () => void): () => void {
  hookCleanup();
  others.add(killNow);
  return () => void others.delete(killNow);
}

/**
 * At exit or on a signal: kills everything, then leaves the removal of each folder to a detached
 * shell that waits for the killed servers to be gone first (a dying mariadbd may still be writing)
 * and outlives this process, which vitest may end at any moment after a Ctrl-C.
 */
function removeAllNow(): void {
  for (const killNow of others) {
    try {
      killNow();
    } catch {
      // Nothing more can be done at exit.
    }
  }
  others.clear();
  for (const [dir, killAll] of live) {
    const pids = killAll();
    try {
      spawn("sh", ["-c", 'd="$1"; shift; for p; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done; rm -rf "$d"', "sh", dir, ...pids.map(String)], {
        detached: true,
        stdio: "ignore",
      }).unref();
    } catch {
      rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
    }
  }
  live.clear();
}

let isCleanupHooked = false;
function hookCleanup(): void {
  if (isCleanupHooked) return;
  isCleanupHooked = true;
  onExitOrSignal(removeAllNow);
}

const tail = (text: string, max = 6_000) => (text.length > max ? `…${text.slice(-max)}` : text);

/** Status variables of one node, or undefined when it does not answer. */
export async function wsrepStatus(port: number): Promise<Record<string, string> | undefined> {
  try {
    const conn = await mysql.createConnection({ host: "127.0.0.1", port, user: "root", connectTimeout: 1_000 });
    try {
      const [rows] = await conn.query<mysql.RowDataPacket[]>("SHOW GLOBAL STATUS LIKE 'wsrep_%'");
      return Object.fromEntries(rows.map((r) => [String(r.Variable_name), String(r.Value)]));
    } finally {
      conn.destroy();
    }
  } catch {
    return undefined;
  }
}

export async function startGaleraCluster(size = 3): Promise<GaleraCluster> {
  hookCleanup();
  const dir = await mkdtemp(join(tmpdir(), "sessions-galera-"));
  if (/\s/.test(dir)) throw new Error(`mariadb-install-db cannot take a path with white space: ${dir} (set TMPDIR)`);
  // rsync's daemon (as nobody) must reach the node folders below.
  await chmod(dir, 0o711);
  const children = new Map<number, ChildProcess>();
  let killInstall: (() => void) | undefined;
  live.set(dir, () => {
    killInstall?.();
    const pids: number[] = [];
    for (const c of children.values()) {
      if (c.exitCode === null && c.signalCode === null && c.pid !== undefined) {
        c.kill("SIGKILL");
        pids.push(c.pid);
      }
    }
    return pids;
  });

  const ports: { client: number; gcomm: number; ist: number; sst: number }[] = [];
  for (let i = 0; i < size; i++) {
    ports.push({ client: await freePort(), gcomm: await freePort(), ist: await freePort(), sst: await freePort() });
  }
  const clusterAddress = `gcomm://${ports.map((p) => `127.0.0.1:${p.gcomm}`).join(",")}`;
  const logs = new Map<number, string>();

  function nodeDir(i: number) {
    return join(dir, `node${i + 1}`);
  }

  function serverArgs(i: number): string[] {
    const home = nodeDir(i);
    const p = ports[i]!;
    return [
        "--no-defaults", `--datadir=${join(home, "data")}`, `--tmpdir=${join(home, "tmp")}`, `--port=${p.client}`,
        `--socket=${join(home, "mysqld.sock")}`, `--pid-file=${join(home, "mysqld.pid")}`, "--bind-address=127.0.0.1",
        "--user=root", "--innodb-buffer-pool-size=64M", "--innodb-buffer-pool-dump-at-shutdown=0",
        "--innodb-buffer-pool-load-at-startup=0", "--skip-name-resolve", "--performance-schema=0", "--max-connections=300",
        // What Galera needs of every node.
        "--binlog-format=ROW", "--innodb-autoinc-lock-mode=2", "--default-storage-engine=InnoDB",
        // Durability comes from the other nodes (as Galera deployments run): flush the log once a second.
        "--innodb-flush-log-at-trx-commit=2",
        "--wsrep-on=ON", "--wsrep-provider=/usr/lib/galera/libgalera_smm.so", "--wsrep-cluster-name=sessions-test",
        `--wsrep-cluster-address=${clusterAddress}`, `--wsrep-node-name=node${i + 1}`,
        `--wsrep-node-address=127.0.0.1:${p.gcomm}`, `--wsrep-node-incoming-address=127.0.0.1:${p.client}`,
        `--wsrep-sst-receive-address=127.0.0.1:${p.sst}`, "--wsrep-sst-method=rsync",
        `--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:${p.gcomm};ist.recv_addr=127.0.0.1:${p.ist};gcache.size=128M;evs.inactive_timeout=PT6S;evs.suspect_timeout=PT3S`,
    ];
  }

  /**
   * What mysqld_safe and the systemd unit's galera_recovery do before starting a node that has run:
   * `--wsrep-recover` reads the last committed position from InnoDB, which a node killed with -9 has
   * not written to grastate.dat; started at that position, the node can catch up by IST from a
   * donor's gcache instead of copying everything (SST).
   */
  async function recoveredPosition(i: number): Promise<string | undefined> {
    const home = nodeDir(i);
    const child = spawn("/usr/sbin/mariadbd", [...serverArgs(i), "--wsrep-recover"], {
      env: { ...process.env, TMPDIR: join(home, "tmp") },
      stdio: ["ignore", "ignore", "pipe"],
    });
    children.set(i, child);
    let out = "";
    child.stderr?.on("data", (b: Buffer) => void (out = tail(out + b.toString(), 20_000)));
    const code = await new Promise((resolve) => child.once("exit", (c, sig) => resolve(c ?? sig)));
    children.delete(i);
    const found = /WSREP: Recovered position:\s*([0-9a-f-]{36}:-?\d+)/.exec(out)?.[1];
    if (code !== 0 || found === undefined || found.endsWith(":-1")) return undefined;
    return found;
  }

  async function startNode(i: number, isBootstrap: boolean, isRestart = false): Promise<void> {
    const home = nodeDir(i);
    logs.set(i, "");
    const position = isRestart ? await recoveredPosition(i) : undefined;
    // A node that falls back to SST receives it through rsync's daemon, as nobody.
    if (isRestart) await run("chown", ["-R", `${nobody.uid}:${nobody.gid}`, home]);
    const child = spawn(
      "/usr/sbin/mariadbd",
      [...serverArgs(i), ...(isBootstrap ? ["--wsrep-new-cluster"] : []), ...(position ? [`--wsrep-start-position=${position}`] : [])],
      { env: { ...process.env, TMPDIR: join(home, "tmp") }, stdio: ["ignore", "ignore", "pipe"] },
    );
    children.set(i, child);
    child.stderr?.on("data", (b: Buffer) => void logs.set(i, tail((logs.get(i) ?? "") + b.toString())));
    await waitSynced(i, child);
  }

  /** Polls the node until it reports Synced and ready, or fails with its log. */
  async function waitSynced(i: number, child: ChildProcess): Promise<void> {
    const deadline = Date.now() + syncTimeoutMs;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`galera node${i + 1} exited with ${child.exitCode ?? child.signalCode}:\n${logs.get(i)}`);
      }
      const status = await wsrepStatus(ports[i]!.client);
      if (status?.wsrep_local_state_comment === "Synced" && status.wsrep_ready === "ON") return;
      if (Date.now() > deadline) throw new Error(`galera node${i + 1} not Synced within ${syncTimeoutMs} ms:\n${logs.get(i)}`);
      await sleep(200);
    }
  }

  async function signal(i: number, sig: NodeJS.Signals): Promise<void> {
    const c = children.get(i);
    children.delete(i);
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((resolve) => c.once("exit", resolve));
    c.kill(sig);
    const timer = setTimeout(() => c.kill("SIGKILL"), stopTimeoutMs);
    await exited;
    clearTimeout(timer);
  }

  let isDestroyed = false;
  async function destroy(): Promise<void> {
    if (isDestroyed) return;
    isDestroyed = true;
    try {
      // Joiners first, so that no node waits for a donor that is gone.
      await Promise.all([...children.keys()].map((i) => signal(i, "SIGKILL")));
    } finally {
      live.delete(dir);
      await rm(dir, { recursive: true, force: true, maxRetries: 5 });
    }
  }

  try {
    for (let i = 0; i < size; i++) {
      for (const sub of ["", "data", "tmp"]) {
        await mkdir(join(nodeDir(i), sub), { recursive: true });
        await chown(join(nodeDir(i), sub), nobody.uid, nobody.gid);
      }
    }
    await installSystemTables(join(nodeDir(0), "data"), join(nodeDir(0), "tmp"), { ...process.env, TMPDIR: join(nodeDir(0), "tmp") }, (k) => void (killInstall = k));
    killInstall = undefined;
    await startNode(0, true);
    // One joiner at a time: each takes its SST from a node that is Synced.
    for (let i = 1; i < size; i++) await startNode(i, false);
  } catch (err) {
    await destroy().catch(() => undefined);
    const e = err as Error;
    e.message = `galera cluster in ${dir} (removed): ${e.message}`;
    throw e;
  }

  const nodes = ports.map((p, i): GaleraNode => ({
    index: i + 1,
    port: p.client,
    url: `mysql://root@127.0.0.1:${p.client}`,
    dir: nodeDir(i),
    kill: () => signal(i, "SIGKILL"),
    stop: () => signal(i, "SIGTERM"),
    start: () => startNode(i, false, true),
    isRunning: () => {
      const c = children.get(i);
      return c !== undefined && c.exitCode === null && c.signalCode === null;
    },
    log: () => logs.get(i) ?? "",
  }));
  return { nodes, dir, destroy };
}
