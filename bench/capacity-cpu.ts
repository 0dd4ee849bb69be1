import { spawn } from "node:child_process";
import { appendFileSync, readFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import { freePort, startPrivateMariaDb } from "../test/faults/helpers/private-mariadb.js";
import { productionNodeFlags } from "./node-flags.js";
import { rateLimitsOff, seedTenant } from "./seed.js";

/**
 * What one create, verify and refresh costs in CPU, split between the service process and the
 * database server (`npm run build && node --import tsx bench/capacity-cpu.ts`), for docs/capacity.md.
 * The service runs as production runs it (node on dist/, `npm start`'s flags). Throughput on
 * this shared machine says little about a fleet; CPU seconds per call do: the service's (one Node
 * process, at most one core) and mariadbd's, each read from /proc before and after a run under
 * load. The database is a private MariaDB (test/faults/helpers/private-mariadb.ts), so no other
 * work on the machine is counted as ours; it is removed afterwards.
 *
 * Loads as `npm run bench` makes them: 32 connections, 2 s of warm-up, then CAPACITY_SECONDS (6);
 * verify cycles over 10,000 distinct tokens; refresh presents each refresh token once (a token's
 * successor goes back in the queue). Appends the run, one JSON line, to bench/results/capacity-cpu.jsonl:
 * runs on a shared machine vary, and the spread is part of the result.
 */
const seconds = Number(process.env.CAPACITY_SECONDS ?? 6);
const connections = 32;
const tokenCount = 10_000;
const root = fileURLToPath(new URL("..", import.meta.url));
const ticksPerSecond = 100; // USER_HZ on Linux

/** User + system CPU seconds of a process so far (/proc/<pid>/stat fields 14 and 15). */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").replace(/^.*\) /, "").split(" ");
  return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond;
}

/** Busy CPU seconds of the whole machine so far (/proc/stat: all but idle and iowait), to show how much else ran. */
function machineBusySeconds(): number {
  const [, ...ticks] = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = ticks as number[];
  void idle;
  void iowait;
  return (user! + nice! + system! + irq! + softirq! + steal!) / ticksPerSecond;
}

interface Measured {
  operation: string;
  callsPerSecond: number;
  errors: number;
  serviceCpuMicrosPerCall: number;
  databaseCpuMicrosPerCall: number;
  loadCpuMicrosPerCall: number;
  /** Cores the whole machine kept busy during the run, ours included: above ours, other work shared the cores. */
  machineBusyCores: number;
}

const db = await startPrivateMariaDb();
let service: ReturnType<typeof spawn> | undefined;
try {
  const databaseUrl = `${db.url}/sessions_capacity`;
  const { tenantId, secret } = await seedTenant(databaseUrl, "capacity");
  const dbPid = Number(readFileSync(join(db.dir, "mysqld.pid"), "utf8").trim());
  const port = await freePort();
  service = spawn(process.execPath, [...productionNodeFlags(), "dist/src/main.js"], {
    cwd: root,
    env: {
      ...process.env,
      ...rateLimitsOff,
      PORT: String(port),
      HOST: "127.0.0.1",
      LOG_LEVEL: "warn",
      NODE_ENV: "production",
      DATABASE_URL: databaseUrl,
      KEY_ENCRYPTION_KEY: Buffer.alloc(32, "capacity-kek").toString("base64url"),
      ISSUER: "https://sessions.example.com",
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; !(await fetch(`${url}/readyz`).then((r) => r.ok, () => false)); i++) {
    if (service.exitCode !== null || i > 600) throw new Error("the service did not start");
    await sleep(100);
  }
  const headers = { authorization: `Bearer ${secret}`, "x-tenant-id": tenantId, "content-type": "application/json" };

  // The sessions verify and refresh use: 10,000 of them, 32 creates at a time.
  const accessTokens: string[] = [];
  const refreshTokens: string[] = [];
  for (let i = 0; i < tokenCount; i += connections) {
    await Promise.all(
      Array.from({ length: connections }, async (_, j) => {
        const res = await fetch(`${url}/v1/sessions`, { method: "POST", headers, body: JSON.stringify({ user_id: `usr_${i + j}` }) });
        const body = (await res.json()) as { access_token: string; refresh_token: string };
        accessTokens.push(body.access_token);
        refreshTokens.push(body.refresh_token);
      }),
    );
  }

  const measure = async (operation: string, opts: autocannon.Options): Promise<Measured> => {
    await autocannon({ ...opts, connections, duration: 2 });
    const before = { service: cpuSeconds(service!.pid!), db: cpuSeconds(dbPid), load: process.cpuUsage(), machine: machineBusySeconds() };
    const result = await autocannon({ ...opts, connections, duration: seconds });
    const load = process.cpuUsage(before.load);
    const calls = result["2xx"];
    const perCall = (cpu: number) => Math.round((cpu * 1e6) / calls);
    const m: Measured = {
      operation,
      callsPerSecond: Math.round(calls / result.duration),
      errors: result.errors + result.timeouts + result.non2xx,
      serviceCpuMicrosPerCall: perCall(cpuSeconds(service!.pid!) - before.service),
      databaseCpuMicrosPerCall: perCall(cpuSeconds(dbPid) - before.db),
      loadCpuMicrosPerCall: perCall((load.user + load.system) / 1e6),
      machineBusyCores: Number(((machineBusySeconds() - before.machine) / result.duration).toFixed(2)),
    };
    console.log(JSON.stringify(m));
    return m;
  };

  let verifyAt = 0;
  const rows = [
    await measure("create", { url: `${url}/v1/sessions`, method: "POST", headers, body: JSON.stringify({ user_id: "usr_create" }) }),
    await measure("verify", {
      url: `${url}/v1/sessions/verify`,
      headers,
      requests: [{ method: "POST", setupRequest: (req) => ({ ...req, body: JSON.stringify({ token: accessTokens[verifyAt++ % accessTokens.length] }) }) }],
    }),
    await measure("refresh", {
      url: `${url}/v1/auth/token/refresh`,
      headers: { "x-tenant-id": tenantId, "content-type": "application/json" },
      requests: [
        {
          method: "POST",
          setupRequest: (req) => ({ ...req, body: JSON.stringify({ refresh_token: refreshTokens.shift() }) }),
          onResponse: (status, body) => {
            if (status === 200) refreshTokens.push((JSON.parse(body) as { refresh_token: string }).refresh_token);
          },
        },
      ],
    }),
  ];
  const result = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, memoryGiB: Math.round(os.totalmem() / 2 ** 30), loadAverageAtEnd: os.loadavg() },
    settings: { seconds, connections, tokenCount, database: "private MariaDB (test/faults/helpers/private-mariadb.ts), default settings" },
    rows,
  };
  appendFileSync(new URL("results/capacity-cpu.jsonl", import.meta.url), `${JSON.stringify(result)}\n`);
} finally {
  service?.kill();
  await db.destroy();
}
