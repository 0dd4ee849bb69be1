import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import os from "node:os";
import mysql from "mysql2/promise";
import { seedScale } from "./scale.js";

/**
 * The row and index sizes docs/capacity.md extrapolates from (`node --import tsx bench/capacity-sizes.ts`):
 * seeds the million sessions of `npm run bench -- --scale` (bench/scale.ts) into a scratch database,
 * reads InnoDB's page counts per table and per index, then rotates the refresh token of `rotations`
 * sessions with the UPDATE the service's refresh makes (its trigger writes the rotated token's row)
 * and reads them again: what a refresh adds. The scratch database is dropped at the end.
 * Writes bench/results/capacity-sizes.json.
 */
const serverUrl = process.env.BENCH_DATABASE_SERVER ?? "mysql://root@127.0.0.1:3306";
const rotations = Number(process.env.CAPACITY_ROTATIONS ?? 250_000);
const database = `sessions_capacity_${randomBytes(4).toString("hex")}`;
const tables = ["sessions", "refresh_tokens", "session_events"];
const pageBytes = 16384;

interface IndexSize {
  index: string;
  pages: number;
  leafPages: number;
}
interface TableSize {
  table: string;
  rows: number;
  dataBytes: number;
  indexBytes: number;
  fileBytes: number;
  indexes: IndexSize[];
}

async function measure(conn: mysql.Connection): Promise<TableSize[]> {
  // InnoDB's persistent statistics count each index's pages exactly (size, n_leaf_pages); the row
  // count is sampled there, so it is counted here.
  for (const table of tables) await conn.query(`ANALYZE TABLE ${table}`);
  const sizes: TableSize[] = [];
  for (const table of tables) {
    const [[{ n }]] = (await conn.query(`SELECT COUNT(*) AS n FROM ${table}`)) as unknown as [[{ n: number }]];
    const [[info]] = (await conn.query("SELECT data_length AS d, index_length AS i FROM information_schema.TABLES WHERE table_schema = ? AND table_name = ?", [database, table])) as unknown as [[{ d: number; i: number }]];
    const [[file]] = (await conn.query("SELECT allocated_size AS a FROM information_schema.INNODB_SYS_TABLESPACES WHERE name = ?", [`${database}/${table}`])) as unknown as [[{ a: number } | undefined]];
    const [stats] = (await conn.query(
      "SELECT index_name AS i, stat_name AS s, stat_value AS v FROM mysql.innodb_index_stats WHERE database_name = ? AND table_name = ? AND stat_name IN ('size', 'n_leaf_pages')",
      [database, table],
    )) as unknown as [{ i: string; s: string; v: number }[]];
    const byIndex = new Map<string, IndexSize>();
    for (const { i, s, v } of stats) {
      const entry = byIndex.get(i) ?? { index: i, pages: 0, leafPages: 0 };
      if (s === "size") entry.pages = Number(v);
      else entry.leafPages = Number(v);
      byIndex.set(i, entry);
    }
    sizes.push({ table, rows: Number(n), dataBytes: Number(info.d), indexBytes: Number(info.i), fileBytes: Number(file?.a ?? 0), indexes: [...byIndex.values()] });
  }
  return sizes;
}

function print(label: string, sizes: TableSize[]): void {
  console.log(`\n${label}`);
  for (const t of sizes) {
    console.log(`${t.table}: ${t.rows} rows, data ${(t.dataBytes / 2 ** 20).toFixed(1)} MiB, indexes ${(t.indexBytes / 2 ** 20).toFixed(1)} MiB, file ${(t.fileBytes / 2 ** 20).toFixed(1)} MiB`);
    for (const i of t.indexes) {
      const perRow = t.rows ? ((i.pages * pageBytes) / t.rows).toFixed(1) : "-";
      console.log(`  ${i.index.padEnd(32)} ${String(i.pages).padStart(7)} pages (${i.leafPages} leaf) = ${perRow} B/row`);
    }
  }
}

const conn = await mysql.createConnection({ uri: serverUrl });
try {
  const seedStarted = performance.now();
  const { tenantId } = await seedScale(serverUrl, database);
  const seedSeconds = (performance.now() - seedStarted) / 1000;
  await conn.query(`USE ${database}`);
  // The seed's events are as committed, not yet numbered; in service every event is, within
  // EVENT_POLL_INTERVAL_MS. Numbered as the sequencer numbers them (seq, sequenced_at), so the
  // two indexes on them are measured full.
  const [[{ maxId }]] = (await conn.query("SELECT MAX(id) AS maxId FROM session_events")) as unknown as [[{ maxId: number }]];
  for (let from = 0; from < Number(maxId); from += 100_000) {
    await conn.query("UPDATE session_events SET seq = id, sequenced_at = UTC_TIMESTAMP(6) WHERE id > ? AND id <= ? AND seq IS NULL", [from, from + 100_000]);
  }
  const afterSeed = await measure(conn);
  print(`after the seed (${seedSeconds.toFixed(0)} s)`, afterSeed);

  // The refresh's rotation (src/store/session-store.ts): the session row takes the successor's hash
  // and the rotation time; trigger refresh_tokens_on_rotate (migration 0007) writes the rotated
  // token's row. Sessions are taken in id order, the tokens' hashes are random as real ones are.
  const rotationStarted = performance.now();
  const batch = 25_000;
  for (let from = 0; from < rotations; from += batch) {
    await conn.query(
      `UPDATE sessions SET refresh_token_hash = UNHEX(SHA2(CONCAT('rotated:', id), 256)), refresh_rotated_at = UTC_TIMESTAMP(6), last_active_at = UTC_TIMESTAMP(6)
        WHERE tenant_id = ? AND id >= CONCAT('ses_', LPAD(?, 26, '0')) AND id < CONCAT('ses_', LPAD(?, 26, '0'))`,
      [tenantId, from, Math.min(from + batch, rotations)],
    );
    process.stdout.write(".");
  }
  const rotationSeconds = (performance.now() - rotationStarted) / 1000;
  const afterRotation = await measure(conn);
  print(`after ${rotations} rotations (${rotationSeconds.toFixed(0)} s)`, afterRotation);

  const [[versionRow]] = (await conn.query("SELECT VERSION() AS v")) as unknown as [[{ v: string }]];
  const result = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, memoryGiB: Math.round(os.totalmem() / 2 ** 30), database: versionRow.v, pageBytes },
    seed: "bench/scale.ts seedScale: 1,000,000 sessions of one tenant (+ one neighbour tenant), one session.created event each",
    seedSeconds,
    rotations,
    rotationSeconds,
    afterSeed,
    afterRotation,
  };
  writeFileSync(new URL("results/capacity-sizes.json", import.meta.url), `${JSON.stringify(result, null, 2)}\n`);
} finally {
  await conn.query(`DROP DATABASE IF EXISTS ${database}`);
  await conn.end();
}
