import type { RowDataPacket } from "mysql2/promise";
import { describe, expect, it } from "vitest";
import { createSession, directConnection, eventually, hashSecret, refreshSession, revokeSession, type CallResult, useFaultStack } from "./helpers/app.js";

/**
 * A bounded mixed load (create, refresh, revoke) while the database restarts. Every acknowledged
 * (2xx) operation must be durable; failures may only be 503.
 */

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
    const loadMs = 6_000;
    const stopAt = Date.now() + loadMs;

    async function worker(w: number) {
      for (let n = 0; Date.now() < stopAt; n++) {
        const created = await createSession(stack.svc, `usr_load_${w}`);
        count("create", created);
        if (created.status !== 201) {
          if (created.status !== 503) unexpected.push(`create ${created.status}`);
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        const t: Track = { id: created.json!.session.id, refreshed: [], isRevokeAcked: false, hasUnackedSince: false, isAbandoned: false };
        tracks.push(t);
        let token: string = created.json!.refresh_token;
        // A few refreshes, then (most of the time) a revoke; retry each 503 with the same input.
        for (let step = 0; step < 4 && Date.now() < stopAt && !t.isAbandoned; ) {
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
            await new Promise((r) => setTimeout(r, 50));
          } else if (res.status === 401 && !isRevoke && t.hasUnackedSince) {
            t.isAbandoned = true;
          } else {
            unexpected.push(`${isRevoke ? "revoke" : "refresh"} ${res.status} ${JSON.stringify(res.json)}`);
            break;
          }
        }
      }
    }

    const load = Promise.all(Array.from({ length: 6 }, (_, w) => worker(w)));
    await new Promise((r) => setTimeout(r, 1_500));
    const acksBefore = tracks.length;
    await stack.db.stop();
    await new Promise((r) => setTimeout(r, 1_000)); // down for a while: calls in this window get 503
    await stack.db.start();
    await load;

    expect(unexpected.slice(0, 5)).toEqual([]);
    for (const key of statuses.keys()) expect(key, JSON.stringify(Object.fromEntries(statuses))).toMatch(/ (200|201|204|503)$/);
    const unavailable = ["create", "refresh", "revoke"].reduce((sum, op) => sum + (statuses.get(`${op} 503`) ?? 0), 0);
    expect(unavailable).toBeGreaterThan(0); // the outage was seen...
    expect(statuses.get("refresh 200") ?? 0).toBeGreaterThan(20); // ...by real traffic
    expect(acksBefore).toBeGreaterThan(0);
    expect(tracks.length).toBeGreaterThan(acksBefore); // it served again after the restart

    const conn = await directConnection(stack.db.port);
    try {
      for (const t of tracks) {
        const [[row]] = await conn.query<RowDataPacket[]>(
          "SELECT revoked_at, refresh_token_hash FROM sessions WHERE tenant_id = ? AND id = ?",
          [stack.svc.tenantId, t.id],
        );
        expect(row, `acknowledged create ${t.id}`).toBeDefined();
        if (t.isRevokeAcked) expect(row!.revoked_at, `acknowledged revoke ${t.id}`).not.toBeNull();
        for (const [i, token] of t.refreshed.entries()) {
          const [[tok]] = await conn.query<RowDataPacket[]>(
            "SELECT rotated_at FROM refresh_tokens WHERE tenant_id = ? AND token_hash = ?",
            [stack.svc.tenantId, hashSecret(token)],
          );
          expect(tok, `acknowledged refresh ${t.id} #${i}`).toBeDefined();
          const isLive = Buffer.compare(row!.refresh_token_hash as Buffer, hashSecret(token)) === 0;
          // Live, or rotated away since (by a later refresh, acknowledged or not).
          expect(isLive || tok!.rotated_at !== null, `refresh ${t.id} #${i} live or rotated`).toBe(true);
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
