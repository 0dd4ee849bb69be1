import { fork } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import mysql from "mysql2/promise";
import { parseNumberedRefreshToken } from "../src/domain/refresh-tokens.js";
import { freePort, startPrivateMariaDb } from "../test/faults/helpers/private-mariadb.js";
import { rateLimitsOff, seedTenant } from "./seed.js";

/**
 * `npm run soak` (not part of CI): mixed load against the real service on loopback for
 * SOAK_SECONDS (default 300) while a private MariaDB is restarted every SOAK_RESTART_EVERY_SECONDS
 * (default 60). Mostly verify, some refresh, create and revoke, from SOAK_CONCURRENCY (default 16)
 * loops. Afterwards every acknowledged write is looked up in the database. Prints the success rate,
 * latency percentiles and lost acknowledgements, which must be zero; exits 1 if any were lost or
 * any call failed with anything but 503 `unavailable`.
 */
const seconds = Number(process.env.SOAK_SECONDS ?? 300);
const restartEverySeconds = Number(process.env.SOAK_RESTART_EVERY_SECONDS ?? 60);
const concurrency = Number(process.env.SOAK_CONCURRENCY ?? 16);
const database = "sessions_soak";

interface Live {
  sessionId: string;
  accessToken: string;
  refreshToken: string;
}

const latencies: number[] = [];
const outcomes = new Map<string, number>();
const acked = { creates: new Set<string>(), revokes: new Set<string>(), refreshTokens: new Map<string, string>() };

function count(kind: string, status: number | string) {
  const key = `${kind} ${status}`;
  outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
}

async function main() {
  const db = await startPrivateMariaDb();
  const databaseUrl = `${db.url}/${database}`;
  const { tenantId, secret } = await seedTenant(databaseUrl, "soak");

  const port = await freePort();
  const service = fork("src/main.ts", [], {
    env: {
      ...process.env,
      PORT: String(port),
      HOST: "127.0.0.1",
      DATABASE_URL: databaseUrl,
      LOG_LEVEL: "error",
      NODE_ENV: "production",
      KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64url"),
      ...rateLimitsOff,
    },
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "ignore", "inherit", "ipc"],
  });
  const base = `http://127.0.0.1:${port}`;
  while ((await fetch(`${base}/readyz`).then((r) => r.status, () => 0)) !== 200) await sleep(100);

  const headers = { authorization: `Bearer ${secret}`, "x-tenant-id": tenantId, "content-type": "application/json" };
  async function request(kind: string, path: string, init: RequestInit): Promise<Record<string, any> | undefined> {
    const started = performance.now();
    try {
      const res = await fetch(base + path, { ...init, signal: AbortSignal.timeout(15_000) });
      const text = await res.text();
      latencies.push(performance.now() - started);
      count(kind, res.status);
      return res.ok && text ? (JSON.parse(text) as Record<string, any>) : res.ok ? {} : undefined;
    } catch (err) {
      count(kind, (err as Error).name);
      return undefined;
    }
  }

  async function create(): Promise<Live | undefined> {
    const body = await request("create", "/v1/sessions", { method: "POST", headers, body: JSON.stringify({ user_id: `usr_${randomBytes(3).toString("hex")}` }) });
    if (!body) return undefined;
    acked.creates.add(body.session.id);
    return { sessionId: body.session.id, accessToken: body.access_token, refreshToken: body.refresh_token };
  }

  const deadline = Date.now() + seconds * 1000;
  async function worker() {
    let live: Live | undefined;
    while (Date.now() < deadline) {
      if (!live) {
        live = await create();
        if (!live) await sleep(50);
        continue;
      }
      const dice = Math.random();
      if (dice < 0.8) {
        await request("verify", "/v1/sessions/verify", { method: "POST", headers, body: JSON.stringify({ token: live.accessToken }) });
      } else if (dice < 0.92) {
        const body = await request("refresh", "/v1/auth/token/refresh", {
          method: "POST",
          headers: { "x-tenant-id": tenantId, "content-type": "application/json" },
          body: JSON.stringify({ refresh_token: live.refreshToken }),
        });
        if (body) {
          acked.refreshTokens.set(body.refresh_token, live.sessionId);
          live = { ...live, accessToken: body.access_token, refreshToken: body.refresh_token };
        } else {
          live = undefined; // its outcome is unknown: start over with a new session
        }
      } else if (dice < 0.97) {
        await create();
      } else {
        const body = await request("revoke", `/v1/sessions/${live.sessionId}`, { method: "DELETE", headers: { authorization: headers.authorization, "x-tenant-id": tenantId } });
        if (body) acked.revokes.add(live.sessionId);
        live = undefined;
      }
    }
  }

  const restarts = (async () => {
    let n = 0;
    while (Date.now() + restartEverySeconds * 1000 < deadline) {
      await sleep(restartEverySeconds * 1000);
      await db.restart();
      n++;
    }
    return n;
  })();
  const startedAt = Date.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const restartCount = await restarts;
  const elapsedSeconds = (Date.now() - startedAt) / 1000;

  service.kill("SIGTERM");
  const [exitCode] = (await once(service, "exit")) as [number | null];

  const conn = await mysql.createConnection(databaseUrl);
  const lost: string[] = [];
  for (const id of acked.creates) {
    const [rows] = (await conn.query("SELECT state FROM sessions WHERE tenant_id = ? AND id = ?", [tenantId, id])) as unknown as [{ state: number }[]];
    if (rows.length === 0) lost.push(`create ${id}`);
    else if (acked.revokes.has(id) && rows[0]!.state !== 2) lost.push(`revoke ${id}`);
  }
  for (const [token, sessionId] of acked.refreshTokens) {
    // The token handed out is its session's live token, or has been rotated away since: its
    // generation is the live one or an earlier one.
    const [rows] = (await conn.query("SELECT 1 FROM sessions WHERE tenant_id = ? AND id = ? AND refresh_generation >= ?", [
      tenantId,
      sessionId,
      parseNumberedRefreshToken(token)?.generation ?? Infinity,
    ])) as unknown as [unknown[]];
    if (rows.length === 0) lost.push(`refresh of ${sessionId}`);
  }
  await conn.end();
  await db.destroy();

  const total = [...outcomes.values()].reduce((a, b) => a + b, 0);
  const ok = [...outcomes].filter(([k]) => /\s2\d\d$/.test(k)).reduce((a, [, v]) => a + v, 0);
  const unexpected = [...outcomes].filter(([k]) => !/\s(2\d\d|503)$/.test(k));
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor((latencies.length * p) / 100))]?.toFixed(1);
  console.log(`soak: ${elapsedSeconds.toFixed(0)} s, ${concurrency} loops, ${restartCount} database restarts, service exit code ${exitCode}`);
  console.log(`requests: ${total} (${(total / elapsedSeconds).toFixed(0)}/s), success ${((ok / total) * 100).toFixed(3)}%`);
  console.log(`latency ms: p50 ${pct(50)}  p99 ${pct(99)}  p99.9 ${pct(99.9)}  max ${latencies[latencies.length - 1]?.toFixed(1)}`);
  console.log(`outcomes: ${[...outcomes].sort().map(([k, v]) => `${k}: ${v}`).join(", ")}`);
  console.log(`acknowledged: ${acked.creates.size} creates, ${acked.refreshTokens.size} refreshes, ${acked.revokes.size} revokes`);
  console.log(`lost acknowledgements: ${lost.length}${lost.length ? ` (${lost.slice(0, 5).join("; ")})` : ""}`);
  console.log(`failures other than 503: ${unexpected.reduce((a, [, v]) => a + v, 0)}`);
  if (lost.length > 0 || unexpected.length > 0) process.exitCode = 1;
}

await main();
