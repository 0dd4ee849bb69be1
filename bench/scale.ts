import { hkdfSync, randomBytes } from "node:crypto";
import type autocannon from "autocannon";
import mysql from "mysql2/promise";
import { encodeCursor } from "../src/domain/cursor.js";
import type { LoadResult } from "./grpc-load.js";
import type { Row } from "./report.js";
import type { Service } from "./run.js";
import { seedTenant } from "./seed.js";

/**
 * The rows at scale (`npm run bench -- --scale`): one tenant with 1,000,000 sessions, seeded by SQL
 * into a database kept between runs (sessions_bench_scale; seeding takes a few minutes once):
 *   - 250,000 active and 750,000 ended (half revoked, half past their expiry, their ends recorded
 *     as the running service's sweep records them), created over 60 days by 10,000 users;
 *   - usr_heavy: 66,667 active sessions (the bulk revoke), usr_gone: 500 sessions, all ended;
 *   - a neighbouring tenant whose creates are timed while usr_heavy's sessions are revoked.
 */
const scaleDatabase = "sessions_bench_scale";
/** Changed whenever the seed or the schema it fills changes: the kept database is then made anew. */
const seedVersion = "v3-1m-no-seed-events";
const kek = Buffer.alloc(32, "bench-scale-kek").toString("base64url");

interface ScaleOptions {
  serverUrl: string;
  httpLoad: (opts: autocannon.Options, overrides?: Partial<autocannon.Options>) => Promise<LoadResult>;
  startService: (env: Record<string, string>) => Promise<Service>;
  isWanted: (name: string) => boolean;
}

/** The seed `--scale` uses, into `database` (docs/capacity.md measures row sizes on it in a scratch database). */
export async function seedScale(serverUrl: string, database = scaleDatabase): Promise<{ tenantId: string; secret: string; neighbour: { tenantId: string; secret: string } }> {
  const conn = await mysql.createConnection({ uri: serverUrl, multipleStatements: true });
  try {
    await conn.query(`CREATE DATABASE IF NOT EXISTS ${database}`);
    await conn.query(`CREATE TABLE IF NOT EXISTS ${database}.bench_seed (version VARCHAR(40) PRIMARY KEY, tenant_id VARCHAR(40), secret VARCHAR(100), neighbour_id VARCHAR(40), neighbour_secret VARCHAR(100))`);
    const [done] = (await conn.query(`SELECT * FROM ${database}.bench_seed WHERE version = ?`, [seedVersion])) as unknown as [Record<string, string>[]];
    if (done[0]) return { tenantId: done[0].tenant_id!, secret: done[0].secret!, neighbour: { tenantId: done[0].neighbour_id!, secret: done[0].neighbour_secret! } };
    // Another seed (or none finished): start from an empty database.
    await conn.query(`DROP DATABASE ${database}`);
    await conn.query(`CREATE DATABASE ${database}`);
    await conn.query(`CREATE TABLE ${database}.bench_seed (version VARCHAR(40) PRIMARY KEY, tenant_id VARCHAR(40), secret VARCHAR(100), neighbour_id VARCHAR(40), neighbour_secret VARCHAR(100))`);
    console.log("scale: seeding 1,000,000 sessions (a few minutes, once)…");
    const url = `${serverUrl}/${database}`;
    const main = await seedTenant(url, "scale");
    const neighbour = await seedTenant(url, "neighbour");
    await conn.query(`USE ${database}`);
    await conn.query("CREATE TABLE IF NOT EXISTS bench_digits (d INT PRIMARY KEY); INSERT IGNORE INTO bench_digits VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9)");
    // n in 0..999,999 from six digits; rows in batches of 100,000 to keep each statement short.
    for (let batch = 0; batch < 10; batch++) {
      await conn.query(
        `INSERT INTO sessions (tenant_id, id, user_id, user_agent, ip_address, country, device_type, role, org_id, mfa_verified,
                               created_at, last_active_at, expires_at, idle_expires_at, state, ends_at, end_reason, ended_by, refresh_token_hash)
         SELECT ?, CONCAT('ses_', LPAD(n, 26, '0')),
                CASE WHEN kind = 'heavy' THEN 'usr_heavy' WHEN n % 2000 = 1 THEN 'usr_gone' ELSE CONCAT('usr_', n % 10000) END,
                'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)', '203.0.113.42', 'US', 'desktop', 'member', NULL, 0,
                created, created,
                CASE kind WHEN 'revoked' THEN DATE_ADD(created, INTERVAL 30 DAY) WHEN 'expired' THEN DATE_SUB(UTC_TIMESTAMP(6), INTERVAL 1 DAY)
                          ELSE DATE_ADD(UTC_TIMESTAMP(6), INTERVAL 20 DAY) END,
                NULL,
                CASE kind WHEN 'revoked' THEN 2 WHEN 'expired' THEN 1 ELSE 0 END,
                CASE kind WHEN 'revoked' THEN DATE_ADD(created, INTERVAL 1 DAY) WHEN 'expired' THEN DATE_SUB(UTC_TIMESTAMP(6), INTERVAL 1 DAY)
                          ELSE DATE_ADD(UTC_TIMESTAMP(6), INTERVAL 20 DAY) END,
                CASE kind WHEN 'revoked' THEN 'revoked' WHEN 'expired' THEN 'expired' END, NULL, UNHEX(SHA2(n, 256))
           FROM (SELECT n, created,
                        CASE WHEN n % 15 = 0 THEN 'heavy' WHEN n % 2000 = 1 OR n % 4 <> 0 THEN IF(n % 2 = 0, 'revoked', 'expired') ELSE 'active' END AS kind
                   FROM (SELECT ? * 100000 + a.d * 10000 + b.d * 1000 + c.d * 100 + e.d * 10 + f.d AS n,
                                DATE_SUB(UTC_TIMESTAMP(6), INTERVAL (999999 - (? * 100000 + a.d * 10000 + b.d * 1000 + c.d * 100 + e.d * 10 + f.d)) * 5 SECOND) AS created
                           FROM bench_digits a, bench_digits b, bench_digits c, bench_digits e, bench_digits f) numbers) classified`,
        [main.tenantId, batch, batch],
      );
      process.stdout.write(".");
    }    console.log("");
    // The inserts fired session_events_on_create a million times: events of no history anyone reads,
    // which the service's sequencer would otherwise spend the whole run numbering beside the rows
    // being measured.
    await conn.query("TRUNCATE TABLE session_events");
    await conn.query("ANALYZE TABLE sessions");
    await conn.query(`INSERT INTO bench_seed VALUES (?, ?, ?, ?, ?)`, [seedVersion, main.tenantId, main.secret, neighbour.tenantId, neighbour.secret]);
    return { ...main, neighbour };
  } finally {
    await conn.end();
  }
}

export async function runScale({ serverUrl, httpLoad, startService, isWanted }: ScaleOptions): Promise<Row[]> {
  const { tenantId, secret, neighbour } = await seedScale(serverUrl);
  const service = await startService({ DATABASE_URL: `${serverUrl}/${scaleDatabase}`, KEY_ENCRYPTION_KEY: kek });
  const headers = { authorization: `Bearer ${secret}`, "x-tenant-id": tenantId };
  const rows: Row[] = [];
  const latencyRow = (name: string, r: LoadResult, goalMs: number): Row => {
    const row: Row = { name, baselineName: "", service: r.requestsPerSecond, baseline: 0, ratio: 0, goal: `p99 < ${goalMs} ms`, goalRatio: undefined, p50Ms: r.p50Ms, p99Ms: r.p99Ms, errors: r.errors, note: `p50 ${r.p50Ms} ms, p99 ${r.p99Ms} ms, ${Math.round(r.requestsPerSecond)}/s at 8 connections${r.errors ? `, ${r.errors} errors` : ""}`, isMet: r.p99Ms < goalMs && r.errors === 0 };
    console.log(`${name.padEnd(46)} ${row.note}  (goal ${row.goal})${row.isMet ? "  ok" : "  BELOW GOAL"}`);
    return row;
  };
  const listAt = (query: string) => httpLoad({ url: `${service.url}/v1/sessions?${query}`, headers }, { connections: 8 });
  try {
    if (isWanted("list first page")) rows.push(latencyRow("list first page @1M", await listAt(""), 10));
    if (isWanted("list deep page")) {
      // A cursor half-way down the active sessions, made with the service's cursor key.
      const conn = await mysql.createConnection(`${serverUrl}/${scaleDatabase}`);
      const [mid] = (await conn.query(
        "SELECT created_at, CAST(id AS CHAR) AS id FROM sessions WHERE tenant_id = ? AND state = 0 AND ends_at > UTC_TIMESTAMP(6) ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET 120000",
        [tenantId],
      )) as unknown as [{ created_at: Date; id: string }[]];
      await conn.end();
      const cursorKey = Buffer.from(hkdfSync("sha256", Buffer.from(kek, "base64url"), Buffer.alloc(0), "sessions/cursor-mac/v1", 32));
      const cursor = encodeCursor(cursorKey, [tenantId, "*", "active"], { createdAt: mid[0]!.created_at, id: mid[0]!.id });
      rows.push(latencyRow("list deep page @1M", await listAt(`cursor=${encodeURIComponent(cursor)}`), 10));
    }
    if (isWanted("list status=expired")) rows.push(latencyRow("list status=expired @1M", await listAt("status=expired"), 10));
    if (isWanted("list ended user")) rows.push(latencyRow("list a user whose sessions all ended @1M", await listAt("user_id=usr_gone"), 10));
    if (isWanted("bulk revoke")) rows.push(await bulkRevoke(service.url, headers, neighbour, serverUrl, tenantId));
  } finally {
    service.child.kill();
  }
  return rows;
}

/** Revokes usr_heavy's ~67k sessions while a neighbouring tenant creates sessions; then puts them back. */
async function bulkRevoke(url: string, headers: Record<string, string>, neighbour: { tenantId: string; secret: string }, serverUrl: string, tenantId: string): Promise<Row> {
  const neighbourHeaders = { authorization: `Bearer ${neighbour.secret}`, "x-tenant-id": neighbour.tenantId, "content-type": "application/json" };
  const createLatencies: number[] = [];
  let isRevoking = true;
  const creates = (async () => {
    while (isRevoking) {
      const started = performance.now();
      const res = await fetch(`${url}/v1/sessions`, { method: "POST", headers: neighbourHeaders, body: `{"user_id":"usr_${randomBytes(4).toString("hex")}"}` });
      await res.arrayBuffer();
      createLatencies.push(performance.now() - started);
    }
  })();
  const conn = await mysql.createConnection(`${serverUrl}/${scaleDatabase}`);
  const [[{ n: active }]] = (await conn.query(
    "SELECT COUNT(*) AS n FROM sessions WHERE tenant_id = ? AND user_id = 'usr_heavy' AND state = 0 AND ends_at > UTC_TIMESTAMP(6)",
    [tenantId],
  )) as unknown as [[{ n: number }]];
  const started = performance.now();
  const res = await fetch(`${url}/v1/sessions?user_id=usr_heavy`, { method: "DELETE", headers });
  const body = (await res.json()) as { revoked?: number };
  const ms = performance.now() - started;
  isRevoking = false;
  await creates;
  await conn.query(
    "UPDATE sessions SET state = 0, ends_at = DATE_ADD(UTC_TIMESTAMP(6), INTERVAL 20 DAY), end_reason = NULL, ended_by = NULL WHERE tenant_id = ? AND user_id = 'usr_heavy'",
    [tenantId],
  );
  await conn.end();
  createLatencies.sort((a, b) => a - b);
  const maxCreate = createLatencies.at(-1) ?? 0;
  const note = `HTTP ${res.status}, revoked ${body.revoked ?? "?"} of ${Number(active)} in ${Math.round(ms)} ms; neighbour tenant's creates meanwhile: ${createLatencies.length}, slowest ${Math.round(maxCreate)} ms`;
  const isMet = res.status === 200 && body.revoked === Number(active) && maxCreate < 500;
  console.log(`${"bulk revoke of 67k sessions".padEnd(46)} ${note}${isMet ? "  ok" : "  BELOW GOAL"}`);
  return { name: "bulk revoke of 67k sessions", baselineName: "", service: 0, baseline: 0, ratio: 0, goal: "exact count, no 5xx, neighbours not slowed", goalRatio: undefined, p50Ms: ms, p99Ms: ms, errors: res.status >= 500 ? 1 : 0, note, isMet };
}
