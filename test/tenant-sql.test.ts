import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import mysql from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { retryDelaysSeconds } from "../src/domain/webhooks.js";
import { manualClock } from "./helpers/clock.js";
import { testServerUrl } from "./helpers/db.js";
import { openEventStream } from "./helpers/events.js";
import { startTestServer, type TestServer } from "./helpers/server.js";
import { normalizeSql, recordStatements, tenantReferences, type RecordedStatement } from "./helpers/sql-tenancy.js";

/**
 * Tenant first, in the SQL actually sent (STYLE habit 4, docs/capacity.md): every statement the
 * service and sessionctl send while a workload runs every operation is recorded from mysql2's
 * diagnostics channels, and each one that reads or writes a tenant-owned table must pin the tenant
 * (a `tenant_id` equality in its WHERE or JOIN, or the column in an INSERT). The statements that
 * deliberately span tenants are listed below, each with why. It is also what sharding by tenant_id
 * (Vitess, TiDB placement) needs: a statement without the tenant goes to every shard.
 */

/** Tables that are a tenant's, and the column naming the tenant (read from the migrated schema, checked against this list). */
const tenantOwned = new Map([
  ["tenants", "id"],
  ["api_keys", "tenant_id"],
  ["tenant_policies", "tenant_id"],
  ["sessions", "tenant_id"],
  ["refresh_tokens", "tenant_id"],
  ["session_events", "tenant_id"],
  ["webhook_endpoints", "tenant_id"],
]);

/** Every other table, and why its statements are not checked. */
const notTenantOwned: Record<string, string> = {
  signing_keys: "the service's own keys: one JWKS for every tenant",
  leases: "one-instance-at-a-time leases of the background workers, and the signing-key lock",
  schema_migrations: "the migrator's bookkeeping",
  schema_migrations_lock: "the migrator's lock row",
  session_event_log: "one row: how far event retention has deleted the global log",
  // A gap, not a judgment: these rows are a tenant's but carry no tenant_id, so no statement can
  // pin one. They are reached through webhook_endpoints.id (globally unique), which is what the
  // dispatcher reads by. Sharding them by tenant needs the column (docs/capacity.md).
  webhook_deliveries: "keyed by endpoint_id; no tenant_id column (see docs/capacity.md)",
  webhook_attempts: "keyed by endpoint_id; no tenant_id column (see docs/capacity.md)",
};

/**
 * Statements that read or write tenant-owned rows without naming one tenant, on purpose. Each is
 * matched against the normalized statement (normalizeSql: literals are `?`, lower case) and must be
 * seen in the workload, so an entry cannot outlive its statement.
 */
const spansTenants: { pattern: RegExp; why: string }[] = [
  // Migrations (src/store/migrate.ts): schema changes that rewrite every row once.
  { pattern: /^update sessions set (state = \?, ends_at = revoked_at|ends_at = least\()/, why: "migration 0003 fills the new end columns of every existing session, once" },
  // The event log (migration 0005) has one order across all tenants, `seq`, numbered after commit
  // by one sequencer at a time (src/workers/event-sequencer.ts).
  { pattern: /^select id, type, reason from session_events where seq is null /, why: "the sequencer finds committed, unnumbered events of every tenant" },
  { pattern: /^update session_events set seq = /, why: "the sequencer numbers them in the one global order" },
  { pattern: /^select greatest\(coalesce\(\(select max\(seq\) from session_events\)/, why: "the head of the global log: where the sequencer continues, and where a new webhook endpoint or subscriber starts" },
  { pattern: /^select seq, .* from session_events where seq > \? order by seq limit \?$/, why: "each instance's one event poller reads every tenant's new events and hands each subscriber its own tenant's (src/workers/event-feed.ts)" },
  { pattern: /\(select seq, .* from session_events where tenant_id is null and seq > \? /, why: "a tenant's feed also carries the service's own events (signing keys published or revoked), which belong to no tenant" },
  { pattern: /^select min\(seq\) as first from session_events where occurred_at >= \? /, why: "a feed started with ?since= begins at a position in the global log; no event's content is read" },
  { pattern: /^(select min\(seq\) as (first|low) from session_events where (sequenced_at >= \?|seq is not null)$|delete from session_events where seq <= \? )/, why: "event retention deletes the global log by seq, all tenants alike (the session sweep)" },
  // The webhook dispatcher (src/workers/webhook-dispatcher.ts), one instance at a time, serves every tenant's endpoints.
  { pattern: /^select id, tenant_id, .* from webhook_endpoints where is_enabled = \? order by id$/, why: "the dispatcher loads every enabled endpoint" },
  { pattern: /^select endpoint_id, seq, attempts, tenant_id, url, .* from webhook_deliveries d join webhook_endpoints e on e.id = d.endpoint_id /, why: "the dispatcher takes the due deliveries of every endpoint" },
  { pattern: /^select seq, .* from session_events where seq in \(\?\) order by seq$/, why: "the dispatcher reads the events its due deliveries carry, of every tenant" },
  // By its globally unique id; the dispatcher knows the endpoint's tenant and could name it too.
  { pattern: /^update webhook_endpoints set position = \? where id = \? and position = \?$/, why: "the dispatcher moves an endpoint's position in the global log, by endpoint id" },
  // The session sweep (src/workers/session-sweep.ts, and sessionctl purge) works tenant by tenant.
  { pattern: /^select tenant_id from sessions (where tenant_id > \? )?order by tenant_id limit \?$/, why: "the sweep walks to the next tenant that has sessions; each of its other statements names that tenant" },
  // sessionctl, the operator's CLI.
  { pattern: /^select id, name, created_at from tenants order by created_at, id$/, why: "sessionctl tenants list: the operator lists every tenant" },
];

const clock = manualClock(new Date());
const recording = recordStatements();
const run = promisify(execFile);
const recordDir = mkdtempSync(join(tmpdir(), "tenant-sql-"));
const cliRecord = join(recordDir, "sessionctl.jsonl");
let server: TestServer;
let database: string;

/** sessionctl as an operator runs it, its statements recorded by a preload into `cliRecord`. */
async function sessionctl(...args: string[]): Promise<Record<string, any>> {
  const { stdout } = await run(process.execPath, ["--import", "./test/helpers/record-sql-preload.mjs", "bin/sessionctl.js", ...args, "--json"], {
    env: { ...process.env, DATABASE_URL: server.config.databaseUrl, WEBHOOK_ALLOW_PRIVATE: "true", RECORD_SQL_FILE: cliRecord },
  });
  return stdout.trim() === "" ? {} : (JSON.parse(stdout) as Record<string, any>);
}

async function rest(method: string, path: string, headers: Record<string, string>, body?: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers: { ...headers, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, json: text === "" ? undefined : (JSON.parse(text) as unknown) };
}

/** A webhook receiver answering with `statuses` in turn (then the last). */
async function startReceiver(statuses: number[]) {
  let answered = 0;
  const receiver = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.statusCode = statuses[Math.min(answered++, statuses.length - 1)]!;
      res.end();
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(receiver.address() as { port: number }).port}/hook`,
    received: () => answered,
    close: () => new Promise((resolve) => receiver.close(resolve)),
  };
}

/** Numbers committed events, then one round of the webhook dispatcher. */
async function dispatch(): Promise<void> {
  while (((await server.services.eventSequencer.sequenceOnce()) ?? 0) > 0);
  await server.services.webhookDispatcher.dispatchOnce();
}

/** Every operation of the service and of sessionctl, each at least once, on two tenants. */
async function workload(): Promise<void> {
  const a = server.tenant;
  const b = await server.addTenant("Other");
  const day = 24 * 3600 * 1000;

  // sessionctl: tenants, keys, policy, signing keys.
  await sessionctl("tenants", "list");
  await sessionctl("policy", "set", "--tenant", b.id, "--max-sessions-per-user", "2", "--idle-timeout", "86400");
  await sessionctl("policy", "get", "--tenant", b.id);
  // Tenant a's sessions outlive the retention of their rotated refresh tokens (30 days).
  await sessionctl("policy", "set", "--tenant", a.id, "--session-lifetime", String(90 * 24 * 3600));
  const extraKey = await sessionctl("keys", "create", "--tenant", b.id);
  await sessionctl("keys", "list", "--tenant", b.id);
  await sessionctl("keys", "revoke", "--tenant", b.id, "--key", extraKey.key_id as string);
  await sessionctl("signing-keys", "list");
  await sessionctl("signing-keys", "rotate");

  // Webhooks, registered before the events they are to receive.
  const receiver = await startReceiver([500, 204]);
  const hook = await sessionctl("webhooks", "create", "--tenant", a.id, "--url", receiver.url);

  // Create; the per-user cap (tenant b: 2) revokes the oldest in the create's transaction.
  const created: { session: { id: string }; access_token: string; refresh_token: string }[] = [];
  for (const userId of ["usr_a", "usr_a", "usr_b", "usr_keep"]) created.push((await rest("POST", "/v1/sessions", a.headers, { user_id: userId })).json);
  for (let i = 0; i < 3; i++) expect((await rest("POST", "/v1/sessions", b.headers, { user_id: "usr_c" })).status).toBe(201);
  const [first, second, third, kept] = created as [(typeof created)[0], (typeof created)[0], (typeof created)[0], (typeof created)[0]];

  // List with every filter and a second page; get; verify.
  for (const q of ["", "?user_id=usr_a", "?status=active", "?status=expired", "?status=revoked", "?user_id=usr_a&status=revoked"]) {
    expect((await rest("GET", `/v1/sessions${q}`, a.headers)).status, q).toBe(200);
  }
  const page = (await rest("GET", "/v1/sessions?limit=1", a.headers)).json as { pagination: { next_cursor: string } };
  expect((await rest("GET", `/v1/sessions?limit=1&cursor=${encodeURIComponent(page.pagination.next_cursor)}`, a.headers)).status).toBe(200);
  expect((await rest("GET", `/v1/sessions/${first.session.id}`, a.headers)).status).toBe(200);
  expect((await rest("GET", `/v1/sessions/${first.session.id}`, b.headers)).status).toBe(404);
  expect((await rest("POST", "/v1/sessions/verify", a.headers, { token: first.access_token })).json).toMatchObject({ valid: true });

  // Refresh: a rotation, a retry within the grace window, then the rotated token again after it: reuse.
  const refresh = (token: string, headers = a.headers) => rest("POST", "/v1/auth/token/refresh", { "x-tenant-id": headers["x-tenant-id"]! }, { refresh_token: token });
  expect((await refresh(first.refresh_token)).status).toBe(200);
  expect((await refresh(first.refresh_token)).status).toBe(200);
  clock.advance(60_000);
  expect((await refresh(first.refresh_token)).status).toBe(401);
  expect((await refresh("rt_unknown")).status).toBe(401);
  expect((await refresh(second.refresh_token)).status).toBe(200);
  expect((await refresh(kept.refresh_token)).status).toBe(200);

  // Revoke one, revoke a user's, revoke the whole tenant's; verify a revoked session.
  expect((await rest("DELETE", `/v1/sessions/${second.session.id}`, a.headers)).status).toBe(204);
  expect((await rest("DELETE", `/v1/sessions/${second.session.id}`, a.headers)).status).toBe(204);
  expect((await rest("DELETE", "/v1/sessions?user_id=usr_b", a.headers)).status).toBe(200);
  expect((await rest("DELETE", "/v1/sessions", b.headers)).status).toBe(200);
  // Left to end by tenant b's idle timeout, which the sweep records.
  expect((await rest("POST", "/v1/sessions", b.headers, { user_id: "usr_idle" })).status).toBe(201);
  expect((await rest("POST", "/v1/sessions/verify", a.headers, { token: third.access_token })).json).toMatchObject({ valid: false });

  // The event feed: numbered, then read by a subscriber from a time and resumed from a cursor.
  while (((await server.services.eventSequencer.sequenceOnce()) ?? 0) > 0);
  const since = new Date(clock.now().getTime() - day).toISOString();
  const stream = await openEventStream(server.url, a.headers, { query: `?since=${since}` });
  const events = await stream.until((e) => e.length >= 2);
  stream.close();
  const resumed = await openEventStream(server.url, a.headers, { lastEventId: events[0]!.id });
  await resumed.until((e) => e.length >= 1);
  resumed.close();

  // Webhooks: a failed attempt, its retry, then every endpoint command.
  await dispatch();
  clock.advance(retryDelaysSeconds[0] * 1000);
  await dispatch();
  expect(receiver.received()).toBeGreaterThanOrEqual(2);
  await sessionctl("webhooks", "list", "--tenant", a.id);
  await sessionctl("webhooks", "attempts", "--tenant", a.id, "--id", hook.webhook_id as string);
  await sessionctl("webhooks", "rotate-secret", "--tenant", a.id, "--id", hook.webhook_id as string);
  await sessionctl("webhooks", "disable", "--tenant", a.id, "--id", hook.webhook_id as string);
  await sessionctl("webhooks", "enable", "--tenant", a.id, "--id", hook.webhook_id as string);
  await dispatch();
  await sessionctl("webhooks", "delete", "--tenant", a.id, "--id", hook.webhook_id as string);
  await receiver.close();

  // sessionctl's purge counts (nothing is old enough on its real clock) and deletes as the sweep
  // does. Then the sweep, past every retention: ends by time recorded; ended sessions, rotated
  // tokens of a live session, events and finished deliveries deleted.
  await sessionctl("purge", "--dry-run");
  await sessionctl("purge");
  clock.advance(40 * day);
  await server.services.sessionSweep.sweepOnce();
  await server.services.sessionSweep.sweepOnce();
}

let statements: RecordedStatement[] = [];

beforeAll(async () => {
  server = await startTestServer({ clock, env: { WEBHOOK_ALLOW_PRIVATE: "true", API_KEY_CACHE_SECONDS: "0", EVENT_RETENTION_DAYS: "2" } });
  database = new URL(server.config.databaseUrl).pathname.slice(1);
  await workload();
  recording.stop();
  const fromCli = readFileSync(cliRecord, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as RecordedStatement);
  statements = [...recording.statements, ...fromCli].filter((s) => s.database === database);
}, 60_000);
afterAll(async () => {
  recording.stop();
  await server?.close();
  rmSync(recordDir, { recursive: true, force: true });
});

describe("the SQL the service sends", () => {
  it("classifies every table of the schema: a tenant's (with the column naming it) or not (with why)", async () => {
    const conn = await mysql.createConnection(testServerUrl);
    try {
      const [rows] = (await conn.query(
        "SELECT table_name AS t, SUM(column_name = 'tenant_id') AS has_tenant FROM information_schema.COLUMNS WHERE table_schema = ? GROUP BY table_name",
        [database],
      )) as unknown as [{ t: string; has_tenant: string }[]];
      const withTenantId = rows.filter((r) => Number(r.has_tenant) > 0).map((r) => r.t).sort();
      expect(withTenantId).toEqual([...tenantOwned].filter(([, column]) => column === "tenant_id").map(([t]) => t).sort());
      expect(rows.map((r) => r.t).sort()).toEqual([...tenantOwned.keys(), ...Object.keys(notTenantOwned)].sort());
    } finally {
      await conn.end();
    }
  });

  it("pins the tenant in every statement on a tenant-owned table, but for the listed ones that span tenants", () => {
    const checked = new Map<string, { tables: Set<string>; unpinned: string[] }>();
    for (const { sql } of statements) {
      const refs = tenantReferences(sql, tenantOwned);
      if (refs.length === 0) continue;
      const shape = normalizeSql(sql);
      const entry = checked.get(shape) ?? { tables: new Set(), unpinned: [] };
      for (const r of refs) {
        entry.tables.add(r.table);
        if (!r.isTenantConstrained && !entry.unpinned.includes(r.table)) entry.unpinned.push(r.table);
      }
      checked.set(shape, entry);
    }
    // The workload reached every tenant-owned table.
    const reached = new Set([...checked.values()].flatMap((e) => [...e.tables]));
    expect([...reached].sort()).toEqual([...tenantOwned.keys()].sort());

    const unexplained = [...checked].filter(([shape, e]) => e.unpinned.length > 0 && !spansTenants.some((a) => a.pattern.test(shape)));
    expect(unexplained.map(([shape, e]) => `${e.unpinned.join(", ")}: ${shape}`)).toEqual([]);

    const unused = spansTenants.filter((a) => ![...checked.keys()].some((shape) => a.pattern.test(shape)));
    expect(unused.map((a) => a.why)).toEqual([]);
  });
});

describe("tenantReferences", () => {
  const pinned = (sql: string) => tenantReferences(sql, tenantOwned).map((r) => `${r.table}:${r.isTenantConstrained}`);
  it.each([
    ["SELECT id FROM sessions WHERE tenant_id = 'tnt_1' AND id IN ('a', 'b')", ["sessions:true"]],
    ["SELECT id FROM sessions WHERE id IN ('a', 'b')", ["sessions:false"]],
    ["SELECT id FROM sessions WHERE tenant_id = 'x' OR id = 'a'", ["sessions:false"]],
    ["SELECT tenant_id FROM sessions WHERE tenant_id > 'x' ORDER BY tenant_id LIMIT 1", ["sessions:false"]],
    ["UPDATE sessions SET state = 2 WHERE tenant_id = 'x' AND id = 'y'", ["sessions:true"]],
    ["DELETE FROM refresh_tokens WHERE token_hash IN (X'00ff')", ["refresh_tokens:false"]],
    ["INSERT INTO api_keys (tenant_id, id) VALUES ('t', 'k')", ["api_keys:true"]],
    ["INSERT INTO webhook_endpoints (id, url) VALUES ('w', 'u')", ["webhook_endpoints:false"]],
    ["SELECT * FROM tenants WHERE id = 'tnt_1'", ["tenants:true"]],
    [
      "SELECT s.id FROM refresh_tokens t JOIN sessions s ON s.tenant_id = t.tenant_id AND s.id = t.session_id WHERE t.tenant_id = 'x' AND t.token_hash IN (X'01')",
      ["refresh_tokens:true", "sessions:true"],
    ],
    ["SELECT s.id FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.tenant_id = 'x'", ["refresh_tokens:true", "sessions:false"]],
    ["(SELECT seq FROM session_events WHERE tenant_id = 'x') UNION ALL (SELECT seq FROM session_events WHERE tenant_id IS NULL)", ["session_events:true", "session_events:false"]],
    ["SELECT (SELECT COUNT(*) FROM sessions WHERE tenant_id = 'x') AS a, (SELECT COUNT(*) FROM refresh_tokens WHERE rotated_at < 'y') AS b", ["sessions:true", "refresh_tokens:false"]],
    ["SELECT a.seq FROM webhook_attempts a JOIN webhook_endpoints e ON e.id = a.endpoint_id AND e.tenant_id = 'x' WHERE a.endpoint_id = 'w'", ["webhook_endpoints:true"]],
    ["SET NAMES utf8mb4", []],
  ])("%s", (sql, expected) => {
    expect(pinned(sql)).toEqual(expected);
  });
});
