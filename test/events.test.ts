import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { SessionService, type WatchSessionEventsResponse } from "../gen/sessions/v1/sessions_pb.js";
import { createPolicyStore } from "../src/store/policy-store.js";
import { defaultPolicy } from "../src/domain/policy.js";
import { revokeSigningKey, rotateSigningKey } from "../src/domain/signing-keys.js";
import { createSigningKeyStore } from "../src/store/signing-key-store.js";
import { manualClock } from "./helpers/clock.js";
import { openEventStream, type SseEvent } from "./helpers/events.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * The session event feed: every path that ends a session, read on another instance over SSE and
 * over an RPC stream; resuming from a cursor loses nothing, even with transactions that commit out
 * of order; tenants see only their own; old cursors are refused clearly.
 */

const clock = manualClock(new Date("2026-06-01T12:00:00.000Z"));
let server: TestServer;
let peer: TestServer;

beforeAll(async () => {
  // No policy cache: the per-user cap below takes effect at once.
  const env = { EVENT_POLL_INTERVAL_MS: "10", EVENT_HEARTBEAT_SECONDS: "1", API_KEY_CACHE_SECONDS: "0" };
  server = await startTestServer({ clock, env });
  peer = await startTestServer({ clock, sharedWith: server, env });
  // One sequencer for the database, on the first instance; the peer only reads.
  server.services.eventSequencer.start();
});
afterAll(async () => {
  await peer?.close();
  await server?.close();
});

type Json = Record<string, any>;

async function call(target: TestServer, method: string, path: string, body?: unknown, headers = target.tenant.headers) {
  const res = await fetch(target.url + path, {
    method,
    headers: { ...headers, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: (text ? JSON.parse(text) : undefined) as Json | undefined };
}

const create = async (userId: string, target = server, headers = target.tenant.headers) => {
  const res = await call(target, "POST", "/v1/sessions", { user_id: userId }, headers);
  expect(res.status).toBe(201);
  return res.json as { session: Json; access_token: string; refresh_token: string };
};

const sessionEvents = (events: SseEvent[], sessionId: string) => events.filter((e) => e.data.session_id === sessionId);

describe("every path that ends a session reaches a reader on the other instance", () => {
  it("over SSE and over a gRPC stream, with type, reason and who revoked", async () => {
    const sse = await openEventStream(peer.url, peer.tenant.headers);
    const rpc = createClient(SessionService, createGrpcTransport({ baseUrl: peer.url }));
    const abort = new AbortController();
    const rpcEvents: WatchSessionEventsResponse[] = [];
    let rpcLive: () => void = () => undefined;
    const isRpcLive = new Promise<void>((resolve) => (rpcLive = resolve));
    const rpcDone = (async () => {
      try {
        for await (const e of rpc.watchSessionEvents({}, { headers: peer.tenant.headers, signal: abort.signal })) {
          rpcLive();
          if (e.type !== "heartbeat") rpcEvents.push(e);
        }
      } catch (err) {
        if (ConnectError.from(err).code !== Code.Canceled) throw err;
      }
    })();
    try {
      // SSE is subscribed once its response starts; the RPC stream once its first message (a heartbeat) came.
      await sse.next();
      await isRpcLive;
      const single = await create("usr_events_single");
      expect((await call(server, "DELETE", `/v1/sessions/${single.session.id}`)).status).toBe(204);

      const all = [await create("usr_events_all"), await create("usr_events_all")];
      expect((await call(server, "DELETE", "/v1/sessions?user_id=usr_events_all")).json).toEqual({ revoked: 2 });

      const reused = await create("usr_events_reuse");
      await call(server, "POST", "/v1/auth/token/refresh", { refresh_token: reused.refresh_token }, { "x-tenant-id": server.tenant.id });
      clock.advance(60_000);
      await call(server, "POST", "/v1/auth/token/refresh", { refresh_token: reused.refresh_token }, { "x-tenant-id": server.tenant.id });

      await createPolicyStore(server.services.pool).putPolicy(server.tenant.id, { ...defaultPolicy, maxSessionsPerUser: 1 }, clock.now());
      const capped = await create("usr_events_cap");
      const newer = await create("usr_events_cap");
      await createPolicyStore(server.services.pool).putPolicy(server.tenant.id, defaultPolicy, clock.now());

      const expiring = await create("usr_events_expire");
      // Both readers have everything so far before the clock jumps past the event retention (the
      // sweep below would purge what they have not read: they had seconds, not the 7 days readers get).
      const hasExpiring = (ids: (string | undefined)[]) => ids.includes(expiring.session.id);
      const before = await sse.until((es) => hasExpiring(es.map((e) => e.data.session_id)));
      await vi.waitFor(() => expect(hasExpiring(rpcEvents.map((e) => e.sessionId))).toBe(true), { timeout: 10_000, interval: 10 });
      clock.advance(31 * 24 * 3600 * 1000);
      await server.services.sessionSweep.sweepOnce();

      const keys = createSigningKeyStore(server.services.pool);
      const { key } = await rotateSigningKey(keys, server.config.keyEncryptionKey, clock.now());
      await revokeSigningKey(keys, server.config.keyEncryptionKey, key.id, clock.now());

      const events = [...before, ...(await sse.until((es) => es.some((e) => e.event === "signing_key.revoked" && e.data.key_id === key.id)))];
      const reasonOf = (id: string) => sessionEvents(events, id).find((e) => e.event !== "session.created");
      expect(sessionEvents(events, single.session.id).map((e) => e.event)).toEqual(["session.created", "session.revoked"]);
      expect(reasonOf(single.session.id)?.data).toMatchObject({ reason: "revoked", revoked_by: server.tenant.keyId, user_id: "usr_events_single" });
      for (const s of all) expect(reasonOf(s.session.id)?.data).toMatchObject({ reason: "revoked_all", revoked_by: server.tenant.keyId });
      expect(reasonOf(reused.session.id)?.data.reason).toBe("refresh_token_reuse");
      expect(reasonOf(capped.session.id)?.data.reason).toBe("session_limit");
      expect(sessionEvents(events, newer.session.id).filter((e) => e.event === "session.revoked")).toEqual([]);
      expect(reasonOf(expiring.session.id)).toMatchObject({ event: "session.ended", data: { reason: "expired" } });
      expect(events.filter((e) => e.data.key_id === key.id).map((e) => e.event)).toEqual(["signing_key.published", "signing_key.revoked"]);
      // Every event once, in cursor order; ids are the cursors.
      expect(new Set(events.map((e) => e.id)).size).toBe(events.length);
      for (const e of events) expect(e.data.cursor).toBe(e.id);

      // The RPC stream saw the same events in the same order.
      const until = Date.now() + 10_000;
      while (!rpcEvents.some((e) => e.type === "signing_key.revoked" && e.keyId === key.id) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      // (It began a moment later than SSE, but live before the first session below was created; events
      // from before, such as a signing key published at start-up, may come first on either.)
      const from = events.findIndex((e) => e.id === rpcEvents[0]?.cursor);
      expect(from).toBeGreaterThanOrEqual(0);
      expect(events.slice(from).some((e) => e.event === "session.created" && e.data.session_id === single.session.id)).toBe(true);
      expect(rpcEvents.slice(0, events.length - from).map((e) => [e.cursor, e.type])).toEqual(events.slice(from).map((e) => [e.id, e.event]));
    } finally {
      sse.close();
      abort.abort();
      await rpcDone;
    }
  });
});

describe("resuming", () => {
  it("from Last-Event-ID (or ?after=) loses nothing and repeats nothing, even when a transaction commits after a later one", async () => {
    const first = await openEventStream(peer.url, peer.tenant.headers);
    await first.next();
    const a = await create("usr_resume");
    const created = (await first.until((es) => es.some((e) => e.data.session_id === a.session.id))).find((e) => e.data.session_id === a.session.id);
    first.close();
    // While nobody listens: one session whose insert commits late, around others that commit at once.
    const side = await server.services.pool.getConnection();
    await side.beginTransaction();
    const late = `ses_${"0".repeat(21)}LATE1`;
    await side.query(
      `INSERT INTO sessions (tenant_id, id, user_id, user_agent, ip_address, country, device_type, role, org_id, mfa_verified,
                             created_at, last_active_at, expires_at, idle_expires_at, state, ends_at, refresh_token_hash)
       VALUES (?, ?, 'usr_late', '', '', '', 'unknown', 'member', NULL, 0, ?, ?, ?, NULL, 0, ?, UNHEX(SHA2(?, 256)))`,
      [server.tenant.id, late, clock.now(), clock.now(), new Date(clock.now().getTime() + 86_400_000), new Date(clock.now().getTime() + 86_400_000), late],
    );
    const b = await create("usr_resume");
    const resumed = await openEventStream(peer.url, peer.tenant.headers, { lastEventId: created!.id });
    const beforeCommit = await resumed.until((es) => es.some((e) => e.data.session_id === b.session.id));
    await side.commit();
    side.release();
    const c = await create("usr_resume");
    const afterCommit = await resumed.until((es) => es.some((e) => e.data.session_id === c.session.id));
    resumed.close();
    const ids = [...beforeCommit, ...afterCommit].map((e) => e.data.session_id);
    expect(ids.filter((id) => id === a.session.id)).toEqual([]);
    expect(ids).toContain(b.session.id);
    expect(ids).toContain(late);
    expect(ids.indexOf(late)).toBeGreaterThan(ids.indexOf(b.session.id));
    expect(new Set(ids).size).toBe(ids.length);

    // ?after= does the same as the header.
    const viaQuery = await openEventStream(peer.url, peer.tenant.headers, { query: `?after=${encodeURIComponent(created!.id)}` });
    const again = await viaQuery.until((es) => es.some((e) => e.data.session_id === c.session.id));
    viaQuery.close();
    expect(again.map((e) => e.data.session_id)).toEqual(ids);
  });

  it("concurrent writers on both instances, a reader that keeps disconnecting: every created and revoked session arrives exactly once", async () => {
    const reader = await openEventStream(peer.url, peer.tenant.headers);
    await reader.next();
    let cursor: string | undefined;
    const seen: SseEvent[] = [];
    let current = reader;
    const writers = Array.from({ length: 4 }, async (_, w) => {
      const ids: string[] = [];
      for (let i = 0; i < 15; i++) {
        const s = await create(`usr_churn_${w}`, w % 2 === 0 ? server : peer);
        ids.push(s.session.id);
        if (i % 3 === 0) await call(w % 2 === 0 ? peer : server, "DELETE", `/v1/sessions/${s.session.id}`);
      }
      return ids;
    });
    const written = (await Promise.all(writers)).flat();
    const revokedCount = 4 * 5;
    const isDone = () =>
      written.every((id) => seen.some((e) => e.event === "session.created" && e.data.session_id === id)) &&
      seen.filter((e) => e.event === "session.revoked" && e.data.user_id?.startsWith("usr_churn_")).length >= revokedCount;
    // Read a few events at a time, reconnecting from the last cursor in between.
    while (!isDone()) {
      const batch = await current.until((es) => es.length >= 7 || (seen.length + es.length > 0 && isDoneWith(es)));
      seen.push(...batch);
      cursor = batch.at(-1)?.id ?? cursor;
      current.close();
      current = await openEventStream(peer.url, peer.tenant.headers, { lastEventId: cursor });
    }
    current.close();
    function isDoneWith(es: SseEvent[]) {
      const all = [...seen, ...es];
      return written.every((id) => all.some((e) => e.event === "session.created" && e.data.session_id === id)) &&
        all.filter((e) => e.event === "session.revoked" && e.data.user_id?.startsWith("usr_churn_")).length >= revokedCount;
    }
    const churn = seen.filter((e) => e.data.user_id?.startsWith("usr_churn_"));
    expect(new Set(churn.map((e) => e.id)).size).toBe(churn.length);
    expect(churn.filter((e) => e.event === "session.created").map((e) => e.data.session_id).sort()).toEqual([...written].sort());
    expect(churn.filter((e) => e.event === "session.revoked")).toHaveLength(revokedCount);
  });
});

describe("boundaries", () => {
  it("a tenant's feed carries none of another tenant's sessions, and refuses its cursors", async () => {
    const other = await server.addTenant("Other");
    const reader = await openEventStream(peer.url, other.headers);
    await reader.next();
    const mine = await create("usr_isolated");
    const theirs = await create("usr_isolated_other", server, other.headers);
    const events = await reader.until((es) => es.some((e) => e.data.session_id === theirs.session.id));
    reader.close();
    expect(events.some((e) => e.data.session_id === mine.session.id)).toBe(false);
    const foreign = await openEventStream(peer.url, server.tenant.headers, { lastEventId: events.at(-1)!.id });
    expect(foreign.status).toBe(400);
    expect(foreign.errorBody?.error).toMatchObject({ code: "invalid_cursor", field: "after" });
  });

  it("a cursor older than the events kept is 410 cursor_expired over SSE and OUT_OF_RANGE over RPC; bad input is 400", async () => {
    const reader = await openEventStream(peer.url, peer.tenant.headers);
    await reader.next();
    const s = await create("usr_expired_cursor");
    const [event] = await reader.until((es) => es.some((e) => e.data.session_id === s.session.id));
    reader.close();
    const [[head]] = (await server.services.pool.query("SELECT MAX(seq) AS head FROM session_events")) as unknown as [[{ head: number }]];
    await server.services.pool.query("UPDATE session_event_log SET purged_through_seq = ? WHERE id = 1", [Number(head.head) + 1]);
    try {
      const expired = await openEventStream(peer.url, peer.tenant.headers, { lastEventId: event!.id });
      expect(expired.status).toBe(410);
      expect(expired.errorBody?.error.code).toBe("cursor_expired");
      const rpc = createClient(SessionService, createGrpcTransport({ baseUrl: peer.url }));
      const err = await (async () => {
        for await (const _ of rpc.watchSessionEvents({ after: event!.id }, { headers: peer.tenant.headers })) break;
      })().catch((e: unknown) => ConnectError.from(e));
      expect((err as ConnectError).code).toBe(Code.OutOfRange);
    } finally {
      await server.services.pool.query("UPDATE session_event_log SET purged_through_seq = 0 WHERE id = 1");
    }
    // Dates that do not exist are refused, not rolled over into the next month or day.
    const impossible = ["2026-02-30T12:00:00Z", "2026-04-31T12:00:00Z", "2026-02-29T00:00:00Z", "2026-13-01T00:00:00Z", "2026-06-01T24:00:00Z", "2026-06-01T12:60:00Z", "2026-06-01T12:00:60Z", "2026-06-01T12:00:00+24:00", "2026-06-00T12:00:00Z"];
    for (const query of ["?since=yesterday", "?after=evt_1.x", "?limit=5", "?after=a&after=b", "?after=", "?since=", ...impossible.map((t) => `?since=${encodeURIComponent(t)}`)]) {
      expect((await openEventStream(peer.url, peer.tenant.headers, { query })).status, query).toBe(400);
    }
    // RFC 3339 allows lower-case t and z.
    const lower = await openEventStream(peer.url, peer.tenant.headers, { query: "?since=2026-06-01t12:00:00z" });
    expect(lower.status).toBe(200);
    lower.close();
    // A leap day that exists, and an offset, are fine.
    for (const t of ["2028-02-29T23:59:59.5+01:00", "2026-12-31T00:00:00-05:30"]) {
      const ok = await openEventStream(peer.url, peer.tenant.headers, { query: `?since=${encodeURIComponent(t)}` });
      expect(ok.status, t).toBe(200);
      ok.close();
    }
    expect((await openEventStream(peer.url, { "x-tenant-id": peer.tenant.id })).status).toBe(401);
  });

  it("refuses an RPC since outside the Timestamp range (it replayed everything from year 10000) with INVALID_ARGUMENT", async () => {
    const rpc = createClient(SessionService, createGrpcTransport({ baseUrl: peer.url }));
    for (const since of [{ seconds: 253_402_300_800n, nanos: 0 }, { seconds: -62_135_596_801n, nanos: 0 }, { seconds: 0n, nanos: -1 }, { seconds: 0n, nanos: 1_000_000_000 }]) {
      const err = await (async () => {
        for await (const _ of rpc.watchSessionEvents({ since }, { headers: peer.tenant.headers })) break;
      })().catch((e: unknown) => ConnectError.from(e));
      expect((err as ConnectError | undefined)?.code, JSON.stringify(since, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v))).toBe(Code.InvalidArgument);
    }
  });

  it("sends a heartbeat with the current cursor while nothing happens, and ?since= starts at events that occurred since", async () => {
    const start = clock.now();
    const s = await create("usr_since");
    const reader = await openEventStream(peer.url, peer.tenant.headers, { query: `?since=${start.toISOString()}` });
    const events = await reader.until((es) => es.some((e) => e.data.session_id === s.session.id));
    // From the first event that occurred at or after `since` (later ones in delivery order may have
    // occurred earlier: a revoke is stamped when it happened, a recorded end when the session ended).
    expect(new Date(events[0]!.data.occurred_at).getTime()).toBeGreaterThanOrEqual(start.getTime());
    // Then quiet: a block with an id and no data (a heartbeat) comes within the heartbeat interval.
    for (;;) {
      const block = await reader.next();
      expect(block).toBeDefined();
      if (block!.data === undefined && block!.id !== undefined) break;
    }
    reader.close();
  });

  it("the sweep deletes events older than the event retention", async () => {
    clock.advance(8 * 24 * 3600 * 1000);
    const report = await server.services.sessionSweep.sweepOnce();
    expect(report?.eventsPurged).toBeGreaterThan(0);
    const [[low]] = (await server.services.pool.query("SELECT MIN(occurred_at) AS low FROM session_events WHERE seq IS NOT NULL")) as unknown as [[{ low: Date | null }]];
    if (low.low !== null) expect(low.low.getTime()).toBeGreaterThanOrEqual(clock.now().getTime() - 7 * 24 * 3600 * 1000);
  });
});

describe("retention", () => {
  it("counts from when an event was numbered, and numbering goes on after it deleted every event: a live reader misses nothing", async () => {
    const own = manualClock(new Date("2026-03-01T00:00:00Z"));
    const solo = await startTestServer({ clock: own, env: { EVENT_POLL_INTERVAL_MS: "10", EVENT_HEARTBEAT_SECONDS: "1" } });
    try {
      const reader = await openEventStream(solo.url, solo.tenant.headers);
      await reader.next();
      const number = async () => {
        while (((await solo.services.eventSequencer.sequenceOnce()) ?? 0) > 0);
      };
      const count = async (where: string) => {
        const [[row]] = (await solo.services.pool.query(`SELECT COUNT(*) AS n FROM session_events WHERE ${where}`)) as unknown as [[{ n: number }]];
        return Number(row.n);
      };
      const first = await create("usr_retention_1", solo);
      await number();
      await reader.until((es) => es.some((e) => e.data.session_id === first.session.id));
      // Past retention for everything numbered so far: the sweep deletes every event.
      own.advance(8 * 24 * 3600 * 1000);
      expect((await solo.services.sessionSweep.sweepOnce())?.eventsPurged).toBeGreaterThan(0);
      expect(await count("TRUE")).toBe(0);
      // The next event is numbered after every seq ever given, so the live reader gets it.
      const second = await create("usr_retention_2", solo);
      await number();
      const events = await reader.until((es) => es.some((e) => e.data.session_id === second.session.id));
      expect(events.filter((e) => e.event === "session.created").map((e) => e.data.session_id)).toEqual([second.session.id]);
      // Its end by time recorded 10 days after it occurred (the session lasts 30 days): numbered
      // now, it is kept for the whole retention from now.
      own.advance(40 * 24 * 3600 * 1000);
      await solo.services.sessionSweep.sweepOnce();
      await number();
      await solo.services.sessionSweep.sweepOnce();
      expect(await count(`type = 'session.ended' AND session_id = '${second.session.id}'`)).toBe(1);
      await reader.until((es) => es.some((e) => e.event === "session.ended" && e.data.session_id === second.session.id));
      reader.close();
    } finally {
      await solo.close();
    }
  });
});
