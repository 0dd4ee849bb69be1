import mysql from "mysql2/promise";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { closePool, oneAtATimeOn, openDatabase, type Pool } from "../src/store/db.js";
import { dropDatabase, freshDatabaseUrl } from "./helpers/db.js";

/**
 * Guarded statements of different calls sent in the same event-loop turn travel as one transaction
 * (src/store/db.ts, batchedStatements). When that transaction fails, each statement runs again on
 * its own: the one at fault fails alone, and no other is applied twice or left uncommitted.
 */
const url = freshDatabaseUrl();
let pool: Pool;

beforeAll(async () => {
  pool = await openDatabase({ url, poolSize: 2 });
  await pool.query("CREATE TABLE batch_rows (id INT NOT NULL PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB");
  await pool.query("INSERT INTO batch_rows (id, n) VALUES (1, 0), (2, 0), (3, 0), (4, 0)");
});
afterAll(async () => {
  await closePool(pool);
  await dropDatabase(url);
});

const bump = (id: number) =>
  oneAtATimeOn(pool, `row-${id}`, (run) => run<{ affectedRows: number }>("UPDATE batch_rows SET n = n + 1 WHERE id = ?", [id]));

async function countsSeenFromOutside(): Promise<number[]> {
  const conn = await mysql.createConnection(url);
  try {
    const [rows] = await conn.query<mysql.RowDataPacket[]>("SELECT n FROM batch_rows ORDER BY id");
    return rows.map((r) => r.n as number);
  } finally {
    await conn.end();
  }
}

describe("batched guarded statements", () => {
  it("give each call its own statement's result, committed", async () => {
    const results = await Promise.all([bump(3), bump(4), bump(3)]);
    expect(results.map((r) => r.affectedRows)).toEqual([1, 1, 1]);
    expect(await countsSeenFromOutside()).toEqual([0, 0, 2, 1]);
  });

  it("after a batch fails on a locked row, apply every other statement once and commit it; the blocked one fails alone", async () => {
    const holder = await mysql.createConnection(url);
    try {
      await holder.query("START TRANSACTION");
      await holder.query("SELECT n FROM batch_rows WHERE id = 1 FOR UPDATE");
      // One turn: row 1's statement first, so the batch stops on it before row 2's runs.
      const [blocked, free] = await Promise.allSettled([bump(1), bump(2)]);
      expect(blocked.status).toBe("rejected");
      expect((blocked as PromiseRejectedResult).reason).toMatchObject({ code: "unavailable" });
      expect(free).toMatchObject({ status: "fulfilled", value: { affectedRows: 1 } });
      await holder.query("ROLLBACK");
    } finally {
      await holder.end();
    }
    // Row 2 was bumped once and committed (not left in the failed batch's open transaction).
    expect(await countsSeenFromOutside()).toEqual([0, 1, 2, 1]);
    // And the pooled connections hold no lock on it.
    const conn = await mysql.createConnection(url);
    try {
      await conn.query("SET SESSION innodb_lock_wait_timeout = 1");
      await conn.query("UPDATE batch_rows SET n = n WHERE id = 2");
    } finally {
      await conn.end();
    }
  });
});
