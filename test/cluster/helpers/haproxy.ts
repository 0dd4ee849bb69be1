import { spawn, type ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { freePort } from "../../faults/helpers/private-mariadb.js";
import { onAbnormalExit } from "./galera.js";

/**
 * Debian's HAProxy in front of the cluster, as operators deploy it for Galera: TCP mode, one writer
 * node and the others as backups, so that every instance writes through the same node (no
 * certification conflicts between instances) and fails over to the next node when it goes down.
 *
 * Health: `option mysql-check` logs in as `haproxy_check` (a user with no password and no grants,
 * made by `createCheckUser`) and quits properly, so the checks do not count as aborted connections
 * toward max_connect_errors (a plain TCP check would, and the node would end up blocking HAProxy's
 * address). A node that answers the handshake but is not Synced (a joiner during SST) passes this
 * check; its queries fail with 1047, which the service answers as 503 (see README, "Running on Galera").
 */
export const haproxyConfig = (port: number, nodes: { index: number; port: number }[]) => `global
  maxconn 2000
defaults
  mode tcp
  timeout connect 2s
  # As long as the server's wait_timeout (8 h): an idle pooled connection is the server's to close.
  timeout client 8h
  timeout server 8h
listen galera
  bind 127.0.0.1:${port}
  balance first
  option mysql-check user haproxy_check post-41
  default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
${nodes.map((n, i) => `  server node${n.index} 127.0.0.1:${n.port} check${i === 0 ? "" : " backup"}`).join("\n")}
`;

export const createCheckUser = "CREATE USER IF NOT EXISTS 'haproxy_check'@'127.0.0.1'";

export interface HaProxy {
  port: number;
  url: string;
  close(): Promise<void>;
}

export async function startHaProxy(nodes: { index: number; port: number }[]): Promise<HaProxy> {
  const dir = await mkdtemp(join(tmpdir(), "sessions-haproxy-"));
  const port = await freePort();
  const config = join(dir, "haproxy.cfg");
  await writeFile(config, haproxyConfig(port, nodes));
  let stderr = "";
  // -db: foreground, no daemon; the process is ours to end.
  const child: ChildProcess = spawn("haproxy", ["-db", "-f", config], { stdio: ["ignore", "ignore", "pipe"] });
  child.stderr?.on("data", (b: Buffer) => void (stderr = (stderr + b.toString()).slice(-4_000)));
  const forget = onAbnormalExit(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });
  const close = async () => {
    forget();
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    for (const deadline = Date.now() + 10_000; ; await sleep(100)) {
      if (child.exitCode !== null) throw new Error(`haproxy exited with ${child.exitCode}: ${stderr}`);
      const isListening = await new Promise<boolean>((resolve) => {
        const s = net.connect(port, "127.0.0.1", () => (s.destroy(), resolve(true)));
        s.once("error", () => resolve(false));
      });
      if (isListening) break;
      if (Date.now() > deadline) throw new Error(`haproxy does not listen on ${port}: ${stderr}`);
    }
  } catch (err) {
    await close();
    throw err;
  }
  return { port, url: `mysql://root@127.0.0.1:${port}`, close };
}
