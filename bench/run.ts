import { fork, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import mysql from "mysql2/promise";
import { rateLimitsOff, seedTenant } from "./seed.js";

/**
 * `npm run bench`: throughput of the real service against baselines measured in the same run on
 * the same machine, printed as ratios. Servers run in child processes; the load generator here.
 * BENCH_SECONDS (default 10) and BENCH_CONNECTIONS (default 32) tune the runs.
 */
const seconds = Number(process.env.BENCH_SECONDS ?? 10);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 32);
const serverUrl = process.env.BENCH_DATABASE_SERVER ?? "mysql://root@127.0.0.1:3306";
const databaseUrl = `${serverUrl}/sessions_bench_${randomBytes(4).toString("hex")}`;
const root = fileURLToPath(new URL("..", import.meta.url));

async function startChild(script: string, env: Record<string, string>): Promise<{ child: ChildProcess; port: number }> {
  const child = fork(script, [], {
    cwd: root,
    env: { ...process.env, ...env },
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "ignore", "inherit", "ipc"],
  });
  const [message] = (await once(child, "message")) as [{ port: number }];
  return { child, port: message.port };
}

async function load(title: string, opts: autocannon.Options): Promise<number> {
  await autocannon({ ...opts, duration: 2 }); // warm-up: JIT, pools, caches
  const result = await autocannon({ ...opts, duration: seconds, connections });
  const errors = result.errors + result.timeouts + result.non2xx;
  console.log(`${title.padEnd(44)} ${result.requests.average.toFixed(0).padStart(7)} req/s  p99 ${String(result.latency.p99).padStart(4)} ms${errors ? `  (${errors} errors/non-2xx)` : ""}`);
  return result.requests.average;
}

/**
 * Every refresh rotates its token, so each request takes a live token from a shared pool and
 * returns its successor: one session per connection, each refreshed in a chain.
 */
async function refreshLoad(base: string, headers: Record<string, string>): Promise<autocannon.Options> {
  const live: string[] = [];
  for (let i = 0; i < connections * 2; i++) {
    const res = await fetch(`${base}/v1/sessions`, { method: "POST", headers, body: JSON.stringify({ user_id: `usr_refresh_${i}` }) });
    live.push(((await res.json()) as { refresh_token: string }).refresh_token);
  }
  const refreshHeaders = { "x-tenant-id": headers["x-tenant-id"] as string, "content-type": "application/json" };
  return {
    url: `${base}/v1/auth/token/refresh`,
    requests: [
      {
        method: "POST",
        headers: refreshHeaders,
        setupRequest: (req) => ({ ...req, body: JSON.stringify({ refresh_token: live.shift() }) }),
        onResponse: (status, body) => {
          if (status === 200) live.push((JSON.parse(body) as { refresh_token: string }).refresh_token);
        },
      },
    ],
  };
}

async function main() {
  const { tenantId, secret } = await seedTenant(databaseUrl, "bench");
  const service = await startChild("bench/service-child.ts", {
    DATABASE_URL: databaseUrl,
    LOG_LEVEL: "warn",
    NODE_ENV: "production",
    KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64url"),
    ...rateLimitsOff,
  });
  const base = `http://127.0.0.1:${service.port}`;
  const headers = { authorization: `Bearer ${secret}`, "x-tenant-id": tenantId, "content-type": "application/json" };
  const created = (await (await fetch(`${base}/v1/sessions`, { method: "POST", headers, body: JSON.stringify({ user_id: "usr_bench" }) })).json()) as { access_token: string };
  const baseline = await startChild("bench/baseline-verify.ts", { JWKS_URL: `${base}/.well-known/jwks.json` });
  const dbBaseline = await startChild("bench/baseline-db.ts", { DATABASE_URL: databaseUrl });

  console.log(`bench: ${seconds}s per run, ${connections} connections, Node ${process.version}`);
  try {
    const verifyBody = JSON.stringify({ token: created.access_token });
    const bare = await load("baseline: node:http + jose verify", { url: `http://127.0.0.1:${baseline.port}/`, method: "POST", body: verifyBody, headers });
    const verify = await load("POST /v1/sessions/verify", { url: `${base}/v1/sessions/verify`, method: "POST", body: verifyBody, headers });
    console.log(`verify / baseline = ${(verify / bare).toFixed(2)}x (goal >= 0.5x)`);

    const insert = await load("baseline: node:http + one INSERT", { url: `http://127.0.0.1:${dbBaseline.port}/insert`, method: "POST" });
    const create = await load("POST /v1/sessions", {
      url: `${base}/v1/sessions`,
      method: "POST",
      headers,
      body: JSON.stringify({ user_id: "usr_bench", user_agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)", ip_address: "203.0.113.42" }),
    });
    console.log(`create / INSERT baseline = ${(create / insert).toFixed(2)}x`);

    const update = await load("baseline: node:http + one PK UPDATE", { url: `http://127.0.0.1:${dbBaseline.port}/update`, method: "POST" });
    const refresh = await load("POST /v1/auth/token/refresh", await refreshLoad(base, headers));
    console.log(`refresh / UPDATE baseline = ${(refresh / update).toFixed(2)}x`);
  } finally {
    dbBaseline.child.kill();
    baseline.child.kill();
    service.child.kill();
    const conn = await mysql.createConnection(serverUrl);
    await conn.query(`DROP DATABASE IF EXISTS \`${new URL(databaseUrl).pathname.slice(1)}\``);
    await conn.end();
  }
}

await main();
