import type { RowDataPacket } from "mysql2/promise";
import { describe, expect, it } from "vitest";
import { parseNumberedRefreshToken } from "../../src/domain/refresh-tokens.js";
import { createSession, directConnection, eventually, refreshSession, revokeSession, type CallResult, useFaultStack } from "./helpers/app.js";

/**
 * A bounded mixed load (create, refresh, revoke) while the database restarts. Every acknowledged
 * (2xx) operation must be durable; failures may only be 503. The phases follow what the load has
 * seen (served, refused during the outage, served again), not a clock.
 */

/** sessions.state of a revoked session (migration 0003). */
const revokedState = 2;

const stack = useFaultStack();

interface Track {
  id: string;
  /** Refresh tokens returned by acknowledged refreshes, in order. */
  refreshed: string[];
  isRevokeAcked: boolean;
  /** Whether an unacknowledged (503) operation followed the last acknowledged one. */
  hasUnackedSince: boolean;
  /** Reuse detection may legitimately revoke a session after an ambiguous refresh: stop using it. */
  isAbandoned: boolean;
}

describe("database restart under load", () => {
  it("keeps every acknowledged operation, fails only with 503, and recovers", async () => {
    const tracks: Track[] = [];
    const statuses = new Map<string, number>();
    const unexpected: string[] = [];
    const count = (op: string, res: CallResult) => statuses.set(`${op} ${res.status}`, (statuses.get(`${op} ${res.status}`) ?? 0) + 1);
    let isStopping = false;

    async function worker(w: number) {
      for (let n = 0; !isStopping; n++) {
        const created = await createSession(stack.svc, `usr_load_${w}`);
        count("create", created);
        if (created.status !== 201) {
          if (created.status !== 503) unexpected.push(`create ${created.status}`);
          await new Promise((r) => setTimeout(r, 50)); // back off before retrying
          continue;
        }
        const t: Track = { id: created.json!.session.id, refreshed: [], isRevokeAcked: false, hasUnackedSince: false, isAbandoned: false };
        tracks.push(t);
        let token: string = created.json!.refresh_token;
        // A few refreshes, then (most of the time) a revoke; retry each 503 with the same input.
        for (let step = 0; step < 4 && !isStopping && !t.isAbandoned; ) {
          const isRevoke = step === 3 && n % 4 !== 0;
          const res = isRevoke ? await revokeSession(stack.svc, t.id) : await refreshSession(stack.svc, token);
          count(isRevoke ? "revoke" : "refresh", res);
          if (res.status === 200 || res.status === 204) {
            if (isRevoke) t.isRevokeAcked = true;
            else t.refreshed.push((token = res.json!.refresh_token));
            t.hasUnackedSince = false;
            step++;
          } else if (res.status === 503) {
            t.hasUnackedSince = true;
            await new Promise((r) => setTimeout(r, 50)); // back off before retrying
          } else if (res.status === 401 && !isRevoke && t.hasUnackedSince) {
            t.isAbandoned = true;
          } else {
            unexpected.push(`${isRevoke ? "revoke" : "refresh"} ${res.status} ${JSON.stringify(res.json)}`);
            break;
          }
        }
      }
    }

    const workers = 6;
    const acked = () => ({ create: statuses.get("create 201") ?? 0, refresh: statuses.get("refresh 200") ?? 0, revoke: statuses.get("revoke 204") ?? 0 });
    /** Every kind of operation acknowledged at least `n` times since `since`: the full mix is running. */
    const hasMix = (since: ReturnType<typeof acked>, n: number) => {
      const now = acked();
      return now.create - since.create >= n && now.refresh - since.refresh >= 2 * n && now.revoke - since.revoke >= n;
    };
    const unavailable = () => ["create", "refresh", "revoke"].reduce((sum, op) => sum + (statuses.get(`${op} 503`) ?? 0), 0);
    const none = acked();
    const load = Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
    let acksBefore: number;
    let unavailableBefore: number;
    try {
      // Serving, all kinds of operations.
      await eventually(async () => hasMix(none, 2 * workers), 20_000, 20);
      acksBefore = tracks.length;
      unavailableBefore = unavailable();
      await stack.db.stop();
      // Down for a while: calls refused, as many as there are workers.
      await eventually(async () => unavailable() - unavailableBefore >= workers, 20_000, 20);
      await stack.db.start();
      // Serving again, all kinds of operations.
      const atRestart = acked();
      await eventually(async () => hasMix(atRestart, 2 * workers) && acked().refresh > 20, 30_000, 20);
    } finally {
      isStopping = true;
      await load;
    }

    expect(unexpected.slice(0, 5)).toEqual([]);
    for (const key of statuses.keys()) expect(key, JSON.stringify(Object.fromEntries(statuses))).toMatch(/ (200|201|204|503)$/);
    expect(unavailable() - unavailableBefore).toBeGreaterThan(0); // the outage was seen...
    expect(acked().refresh).toBeGreaterThan(20); // ...by real traffic
    expect(acksBefore).toBeGreaterThan(0);
    expect(tracks.length).toBeGreaterThan(acksBefore); // it served again after the restart

    const conn = await directConnection(stack.db.port);
    try {
      for (const t of tracks) {
        const [[row]] = await conn.query<RowDataPacket[]>(
          "SELECT state, refresh_generation FROM sessions WHERE tenant_id = ? AND id = ?",
          [stack.svc.tenantId, t.id],
        );
        expect(row, `acknowledged create ${t.id}`).toBeDefined();
        if (t.isRevokeAcked) expect(row!.state, `acknowledged revoke ${t.id}`).toBe(revokedState);
        for (const [i, token] of t.refreshed.entries()) {
          // The session's live token, or rotated away since (by a later refresh, acknowledged or
          // not): its generation is the live one or an earlier one.
          const generation = parseNumberedRefreshToken(token)!.generation;
          const isLive = row!.refresh_generation === generation;
          expect(generation <= row!.refresh_generation, `acknowledged refresh ${t.id} #${i}: live or rotated`).toBe(true);
          const isLast = i === t.refreshed.length - 1;
          if (isLast && !t.hasUnackedSince && !t.isAbandoned) expect(isLive, `last refresh of ${t.id} is live`).toBe(true);
        }
      }
    } finally {
      await conn.end();
    }
    await eventually(async () => (await createSession(stack.svc, "usr_after")).status === 201, 10_000);
  });
});
