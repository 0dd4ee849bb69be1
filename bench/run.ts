import { execFileSync, fork, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { create, toBinary } from "@bufbuild/protobuf";
import autocannon from "autocannon";
import mysql from "mysql2/promise";
import { GetSessionRequestSchema, VerifyTokenRequestSchema } from "../gen/sessions/v1/sessions_pb.js";
import { grpcLoad, type LoadResult } from "./grpc-load.js";
import { median, writeReport, type Row } from "./report.js";
import { rateLimitsOff, seedTenant } from "./seed.js";
import { runScale } from "./scale.js";
import { benchIssuer, runEvents } from "./events.js";
import { runCluster } from "./cluster.js";
import { productionNodeFlags } from "./node-flags.js";

/**
 * `npm run bench`: every row of the performance table, the real service against a bare baseline
 * doing the same work, measured in the same run on this machine, printed as ratios and written to
 * bench/results/ (JSON and an SVG chart the README shows). Servers run in child processes (the
 * service exactly as `npm start` runs it: node on dist/); load comes from this process.
 *
 *   npm run bench                    the throughput rows
 *   npm run bench -- --scale         also the rows at a million sessions (seeds them by SQL once)
 *   npm run bench -- --only=verify   rows whose name contains "verify"
 *   npm run bench -- --cluster       also verify and refresh through a private 3-node Galera cluster
 *                                    (bench/cluster.ts), as ratios to the single server
 *
 * The session-event rows (bench/events.ts) run a second instance on the same database.
 *
 * BENCH_SECONDS (default 6) per run, BENCH_RUNS (default 3, the median is reported),
 * BENCH_CONNECTIONS (default 32), BENCH_FLAGS (node flags added to the service's, for experiments).
 */
const seconds = Number(process.env.BENCH_SECONDS ?? 6);
const runs = Number(process.env.BENCH_RUNS ?? 3);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 32);
const serverUrl = process.env.BENCH_DATABASE_SERVER ?? "mysql://root@127.0.0.1:3306";
const args = process.argv.slice(2);
const isScale = args.includes("--scale");
const isCluster = args.includes("--cluster");
const only = args.find((a) => a.startsWith("--only="))?.slice("--only=".length);
const root = fileURLToPath(new URL("..", import.meta.url));
const databaseUrl = `${serverUrl}/sessions_bench_${randomBytes(4).toString("hex")}`;

/** Distinct tokens verified, as a fleet of real users would present them. */
const tokenCount = 10_000;

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function startChild(script: string, env: Record<string, string>): Promise<{ child: ChildProcess; port: number }> {
  const child = fork(script, [], { cwd: root, env: { ...process.env, ...env }, execArgv: ["--import", "tsx"], stdio: ["ignore", "ignore", "inherit", "ipc"] });
  const [message] = (await once(child, "message")) as [{ port: number }];
  return { child, port: message.port };
}

export interface Service {
  url: string;
  child: ChildProcess;
  rss(): Promise<number>;
}

/**
 * The service as production runs it (`npm start`'s node flags, plus BENCH_FLAGS for experiments),
 * rate limits off.
 */
export async function startService(env: Record<string, string>): Promise<Service> {
  const port = await freePort();
  const child = spawn(process.execPath, [...productionNodeFlags(), ...(process.env.BENCH_FLAGS ?? "").split(" ").filter(Boolean), "dist/src/main.js"], {
    cwd: root,
    env: { ...process.env, PORT: String(port), HOST: "127.0.0.1", LOG_LEVEL: "warn", NODE_ENV: "production", ...rateLimitsOff, ...env },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; !(await fetch(`${url}/readyz`).then((r) => r.ok, () => false)); i++) {
    if (child.exitCode !== null || i > 600) throw new Error("the service did not start");
    await sleep(100);
  }
  return {
    url,
    child,
    async rss() {
      const status = await readFile(`/proc/${child.pid}/status`, "utf8");
      return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
    },
  };
}


/** An HTTP load run with autocannon; a warm-up first (JIT, pools, caches). */
export async function httpLoad(opts: autocannon.Options, overrides: Partial<autocannon.Options> = {}): Promise<LoadResult> {
  await autocannon({ ...opts, duration: 2, connections });
  const result = await autocannon({ ...opts, duration: seconds, connections, ...overrides });
  return {
    // Successful answers only: a fast error is not throughput.
    requestsPerSecond: result["2xx"] / result.duration,
    p50Ms: result.latency.p50,
    p99Ms: result.latency.p99,
    errors: result.errors + result.timeouts + result.non2xx,
  };
}

/** The service's resident memory, sampled every 200 ms: the highest since start, and since the current row began. */
const rssSeen = { peak: 0, rowPeak: 0 };
const mib = (bytes: number) => Math.round(bytes / 2 ** 20);

/** Runs `service` and `baseline` alternately `runs` times and keeps the medians. */
async function compare(
  name: string,
  goal: string,
  goalRatio: number | undefined,
  service: () => Promise<LoadResult>,
  baseline: () => Promise<LoadResult>,
  baselineName: string,
): Promise<Row> {
  const s: LoadResult[] = [];
  const b: LoadResult[] = [];
  rssSeen.rowPeak = 0;
  for (let i = 0; i < runs; i++) {
    b.push(await baseline());
    s.push(await service());
  }
  const row: Row = {
    name,
    baselineName,
    service: median(s.map((r) => r.requestsPerSecond)),
    baseline: median(b.map((r) => r.requestsPerSecond)),
    ratio: 0,
    goal,
    goalRatio,
    p50Ms: median(s.map((r) => r.p50Ms)),
    p99Ms: median(s.map((r) => r.p99Ms)),
    errors: s.reduce((n, r) => n + r.errors, 0),
    peakRssMiB: mib(rssSeen.rowPeak),
  };
  row.ratio = row.service / row.baseline;
  const pass = goalRatio === undefined ? "" : row.ratio >= goalRatio ? "  ok" : "  BELOW GOAL";
  console.log(
    `${name.padEnd(46)} ${row.service.toFixed(0).padStart(7)}/s vs ${row.baseline.toFixed(0).padStart(7)}/s = ${row.ratio.toFixed(2)}x (goal ${goal})${pass}` +
      `  p50 ${row.p50Ms.toFixed(1)} ms p99 ${row.p99Ms.toFixed(1)} ms  RSS ≤ ${row.peakRssMiB} MiB${row.errors ? `  ${row.errors} errors` : ""}`,
  );
  return row;
}

async function createSessions(base: string, headers: Record<string, string>, count: number, userOf: (i: number) => string) {
  const created: { access_token: string; refresh_token: string; session: { id: string } }[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      for (let i = next++; i < count; i = next++) {
        const res = await fetch(`${base}/v1/sessions`, { method: "POST", headers, body: JSON.stringify({ user_id: userOf(i) }) });
        created.push((await res.json()) as (typeof created)[number]);
      }
    }),
  );
  return created;
}

/** Every refresh rotates its token: each request takes a live token and returns its successor. */
function refreshRequests(tenantId: string, live: string[]): autocannon.Options {
  return {
    url: "",
    requests: [
      {
        method: "POST",
        headers: { "x-tenant-id": tenantId, "content-type": "application/json" },
        setupRequest: (req) => ({ ...req, body: JSON.stringify({ refresh_token: live.shift() }) }),
        onResponse: (status, body) => {
          if (status === 200) live.push((JSON.parse(body) as { refresh_token: string }).refresh_token);
        },
      },
    ],
  };
}

const isWanted = (name: string) => only === undefined || name.toLowerCase().includes(only.toLowerCase());

async function main() {
  execFileSync("npm", ["run", "build", "--silent"], { cwd: root, stdio: "inherit" });
  const { tenantId, secret } = await seedTenant(databaseUrl, "bench");
  const headers = { authorization: `Bearer ${secret}`, "x-tenant-id": tenantId, "content-type": "application/json" };
  const keyEncryptionKey = randomBytes(32).toString("base64url");
  // Both instances sign with one issuer, as instances behind one load balancer do.
  const shared = { DATABASE_URL: databaseUrl, KEY_ENCRYPTION_KEY: keyEncryptionKey, ISSUER: benchIssuer };
  const service = await startService({ ...shared, WEBHOOK_ALLOW_PRIVATE: "true" });
  const idleRss = await service.rss();
  rssSeen.peak = idleRss;
  const sampler = setInterval(
    () =>
      void service.rss().then(
        (r) => {
          rssSeen.peak = Math.max(rssSeen.peak, r);
          rssSeen.rowPeak = Math.max(rssSeen.rowPeak, r);
        },
        () => undefined,
      ),
    200,
  );
  const base = service.url;
  const children: ChildProcess[] = [service.child];
  const rows: Row[] = [];
  console.log(`bench: ${runs} × ${seconds}s per row (median), ${connections} connections, Node ${process.version}`);
  try {
    const sessions = await createSessions(base, headers, tokenCount, (i) => `usr_${i % 2_000}`);
    const tokens = sessions.map((s) => s.access_token);
    const verifyBodies = tokens.map((token) => JSON.stringify({ token }));
    let nextToken = 0;
    const verifyRequest = (url: string, extraHeaders: Record<string, string> = {}): autocannon.Options => ({
      url,
      requests: [{ method: "POST", headers: { ...headers, ...extraHeaders }, setupRequest: (req) => ({ ...req, body: verifyBodies[nextToken++ % verifyBodies.length] }) }],
    });
    const verifyBaseline = await startChild("bench/children/baseline-verify.ts", { JWKS_URL: `${base}/.well-known/jwks.json` });
    const dbBaseline = await startChild("bench/children/baseline-db.ts", { DATABASE_URL: databaseUrl, TENANT_ID: tenantId });
    const grpcBaseline = await startChild("bench/children/baseline-grpc.ts", { JWKS_URL: `${base}/.well-known/jwks.json`, DATABASE_URL: databaseUrl, TENANT_ID: tenantId });
    children.push(verifyBaseline.child, dbBaseline.child, grpcBaseline.child);
    const grpcMetadata = { authorization: headers.authorization, "x-tenant-id": tenantId };
    const verifyMessages = tokens.map((token) => toBinary(VerifyTokenRequestSchema, create(VerifyTokenRequestSchema, { token })));
    const getMessages = sessions.map((s) => toBinary(GetSessionRequestSchema, create(GetSessionRequestSchema, { id: s.session.id })));
    const grpcRun = (url: string, path: string, messages: Uint8Array[]) => () =>
      grpcLoad({ url, path, headers: grpcMetadata, messages, connections: 4, concurrency: connections, durationMs: seconds * 1000 });
    const grpcWarm = async (url: string, path: string, messages: Uint8Array[]) => {
      await grpcLoad({ url, path, headers: grpcMetadata, messages, connections: 4, concurrency: connections, durationMs: 2000 });
    };

    if (isWanted("gRPC VerifyToken")) {
      await grpcWarm(base, "/sessions.v1.SessionService/VerifyToken", verifyMessages);
      await grpcWarm(`http://127.0.0.1:${grpcBaseline.port}`, "/sessions.v1.SessionService/VerifyToken", verifyMessages);
      rows.push(await compare("gRPC VerifyToken", "≥ 0.9×", 0.9, grpcRun(base, "/sessions.v1.SessionService/VerifyToken", verifyMessages), grpcRun(`http://127.0.0.1:${grpcBaseline.port}`, "/sessions.v1.SessionService/VerifyToken", verifyMessages), "bare @grpc/grpc-js + jose"));
    }
    if (isWanted("gRPC GetSession")) {
      await grpcWarm(base, "/sessions.v1.SessionService/GetSession", getMessages);
      await grpcWarm(`http://127.0.0.1:${grpcBaseline.port}`, "/sessions.v1.SessionService/GetSession", getMessages);
      rows.push(await compare("gRPC GetSession", "≥ 0.9×", 0.9, grpcRun(base, "/sessions.v1.SessionService/GetSession", getMessages), grpcRun(`http://127.0.0.1:${grpcBaseline.port}`, "/sessions.v1.SessionService/GetSession", getMessages), "bare @grpc/grpc-js + one PK SELECT"));
    }
    if (isWanted("REST verify")) {
      rows.push(await compare("REST verify (10,000 tokens)", "≥ 1.0×", 1.0, () => httpLoad(verifyRequest(`${base}/v1/sessions/verify`)), () => httpLoad(verifyRequest(`http://127.0.0.1:${verifyBaseline.port}/`)), "bare node:http + jose"));
    }
    if (isWanted("Connect JSON verify")) {
      rows.push(await compare("Connect JSON verify vs REST verify", "≥ 0.9×", 0.9, () => httpLoad(verifyRequest(`${base}/sessions.v1.SessionService/VerifyToken`)), () => httpLoad(verifyRequest(`${base}/v1/sessions/verify`)), "the service's REST verify"));
    }
    if (isWanted("REST create")) {
      const body = JSON.stringify({ user_id: "usr_bench", user_agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)", ip_address: "203.0.113.42" });
      rows.push(await compare("REST create", "≥ 0.5×", 0.5, () => httpLoad({ url: `${base}/v1/sessions`, method: "POST", headers, body }), () => httpLoad({ url: `http://127.0.0.1:${dbBaseline.port}/insert`, method: "POST" }), "bare node:http + one INSERT"));
    }
    if (isWanted("REST refresh")) {
      // Answers still in flight when a run ends are dropped with their tokens: keep far more than that.
      const live = sessions.slice(0, 4_000).map((s) => s.refresh_token);
      rows.push(await compare("REST refresh", "≥ 0.5×", 0.5, () => httpLoad({ ...refreshRequests(tenantId, live), url: `${base}/v1/auth/token/refresh` }), () => httpLoad({ url: `http://127.0.0.1:${dbBaseline.port}/update`, method: "POST" }), "bare node:http + one PK UPDATE"));
    }
    if (isWanted("list pages")) {
      rows.push(await compare("list pages of 100 rows", "≥ 2× before", undefined, () => httpLoad({ url: `${base}/v1/sessions?limit=100`, headers }), () => httpLoad({ url: `http://127.0.0.1:${dbBaseline.port}/list` }), "bare node:http + SELECT 100 rows + JSON.stringify"));
    }
    if (["SDK verify", "revocation lag", "webhook"].some(isWanted)) {
      // A second instance on the same database: the local verifier follows its feed.
      const peer = await startService(shared);
      children.push(peer.child);
      rows.push(...(await runEvents({ a: service, b: peer, databaseUrl, keyEncryptionKey, tenantId, secret, headers, sessions, seconds, runs, isWanted })));
    }
    if (isScale) rows.push(...(await runScale({ serverUrl, httpLoad, startService, isWanted })));
    if (isCluster) {
      // Sessions no other row refreshes (REST refresh takes the first 4,000).
      const single = { url: base, tenantId, headers, sessions: sessions.slice(4_000) };
      rows.push(...(await runCluster({ isWanted, httpLoad, startService, compare, createSessions, refreshRequests, keyEncryptionKey, issuer: benchIssuer, single })));
    }
  } finally {
    clearInterval(sampler);
    for (const child of children) child.kill();
    const conn = await mysql.createConnection(serverUrl);
    await conn.query(`DROP DATABASE IF EXISTS \`${new URL(databaseUrl).pathname.slice(1)}\``);
    await conn.end();
  }
  console.log(`RSS of the service: idle ${mib(idleRss)} MiB, peak ${mib(rssSeen.peak)} MiB (goal ≤ 100 / ≤ 250)`);
  const path = await writeReport({ rows, rss: { idleMiB: mib(idleRss), peakMiB: mib(rssSeen.peak) }, seconds, runs, connections, isScale });
  console.log(`results: ${path}`);
}

await main();
