import type { ResultSetHeader, RowDataPacket } from "mysql2/promise";
import type { SessionEvent, SessionEventType } from "../domain/events.js";
import type { EventStore } from "../domain/ports.js";
import { inTransaction, query, text, type Pool } from "./db.js";

interface EventRow extends RowDataPacket {
  seq: number;
  tenant_id: Buffer | null;
  type: string;
  session_id: Buffer | null;
  user_id: Buffer | null;
  reason: string | null;
  actor: Buffer | null;
  key_id: Buffer | null;
  occurred_at: Date;
}

const columns = "seq, tenant_id, type, session_id, user_id, reason, actor, key_id, occurred_at";
/** The highest seq given so far: the top of the log, or what retention deleted through when it took everything. */
const highestSeq = "GREATEST(COALESCE((SELECT MAX(seq) FROM session_events), 0), COALESCE((SELECT purged_through_seq FROM session_event_log WHERE id = 1), 0))";
const orNull = (b: Buffer | null) => (b === null ? null : text(b));

function toEvent(r: EventRow): SessionEvent {
  return {
    seq: Number(r.seq),
    tenantId: orNull(r.tenant_id),
    type: r.type as SessionEventType,
    sessionId: orNull(r.session_id),
    userId: orNull(r.user_id),
    reason: r.reason,
    actor: orNull(r.actor),
    keyId: orNull(r.key_id),
    occurredAt: r.occurred_at,
  };
}

/** The event log (migration 0005): sequencing committed rows, reading in seq order, retention. */
export function createEventStore(pool: Pool): EventStore {
  return {
    async sequence(limit, now) {
      // Only committed rows are seen (a plain read); the one sequencer numbers them in insertion
      // order after the highest seq given so far. Numbers are consecutive: a reader can tell that it
      // has every event up to a seq.
      return inTransaction(pool, async (conn) => {
        const [pending] = await conn.query<RowDataPacket[]>("SELECT id, type, reason FROM session_events WHERE seq IS NULL ORDER BY id LIMIT ?", [limit]);
        if (pending.length === 0) return [];
        // After the highest seq ever given: retention may have deleted every numbered row.
        const [[top]] = await conn.query<RowDataPacket[]>(`SELECT ${highestSeq} AS top`);
        const ids = pending.map((r) => r.id as number);
        const [result] = await conn.query<ResultSetHeader>("UPDATE session_events SET seq = ? + FIELD(id, ?), sequenced_at = ? WHERE id IN (?) AND seq IS NULL", [
          Number(top!.top),
          ids,
          now,
          ids,
        ]);
        // Only the rows this statement numbered (none is numbered twice: `seq IS NULL`, one sequencer).
        return result.affectedRows === pending.length ? pending.map((r) => ({ type: r.type as SessionEventType, reason: (r.reason as string | null) ?? null })) : [];
      });
    },
    async headSeq() {
      const rows = await query<RowDataPacket[]>(pool, `SELECT ${highestSeq} AS head`);
      return Number(rows[0]!.head);
    },
    async readAfter(seq, limit) {
      const rows = await query<EventRow[]>(pool, `SELECT ${columns} FROM session_events WHERE seq > ? ORDER BY seq LIMIT ?`, [seq, limit]);
      return rows.map(toEvent);
    },
    async readTenantAfter(tenantId, seq, limit) {
      // Two index ranges (the tenant's events, the service's own), merged in seq order.
      const rows = await query<EventRow[]>(
        pool,
        `(SELECT ${columns} FROM session_events WHERE tenant_id = ? AND seq > ? ORDER BY seq LIMIT ?)
         UNION ALL
         (SELECT ${columns} FROM session_events WHERE tenant_id IS NULL AND seq > ? ORDER BY seq LIMIT ?)
         ORDER BY seq LIMIT ?`,
        [tenantId, seq, limit, seq, limit, limit],
      );
      return rows.map(toEvent);
    },
    async readSeqs(seqs) {
      if (seqs.length === 0) return [];
      const rows = await query<EventRow[]>(pool, `SELECT ${columns} FROM session_events WHERE seq IN (?) ORDER BY seq`, [seqs]);
      return rows.map(toEvent);
    },
    async firstSeqSince(time) {
      const rows = await query<RowDataPacket[]>(pool, "SELECT MIN(seq) AS first FROM session_events WHERE occurred_at >= ? AND seq IS NOT NULL", [time]);
      return rows[0]!.first === null ? null : Number(rows[0]!.first);
    },
    async purgedThrough() {
      const rows = await query<RowDataPacket[]>(pool, "SELECT purged_through_seq AS seq FROM session_event_log WHERE id = 1");
      return Number(rows[0]?.seq ?? 0);
    },
    async purgeBefore(cutoff, limit) {
      // Events go from the bottom of the log up, so that "purged through" is one number: up to the
      // first event numbered within retention (or everything sequenced, when all are older). By when
      // numbered, not when occurred: a live reader has had the whole retention to read each one.
      const [first] = await query<RowDataPacket[]>(pool, "SELECT MIN(seq) AS first FROM session_events WHERE sequenced_at >= ?", [cutoff]);
      const [head] = await query<RowDataPacket[]>(pool, `SELECT ${highestSeq} AS head`);
      const through = first!.first === null ? Number(head!.head) : Number(first!.first) - 1;
      return inTransaction(pool, async (conn) => {
        const [deleted] = await conn.query<ResultSetHeader>("DELETE FROM session_events WHERE seq <= ? ORDER BY seq LIMIT ?", [through, limit]);
        const [[low]] = await conn.query<RowDataPacket[]>("SELECT MIN(seq) AS low FROM session_events WHERE seq IS NOT NULL");
        // Everything below the lowest seq left (or through `through`, when nothing is left) is gone.
        const gone = low!.low === null ? through : Math.min(through, Number(low!.low) - 1);
        await conn.query("UPDATE session_event_log SET purged_through_seq = GREATEST(purged_through_seq, ?) WHERE id = 1", [gone]);
        return deleted.affectedRows;
      });
    },
  };
}
