// Preloaded (`node --import`) into a child process, sessionctl for instance: appends every statement
// mysql2 sends, read from its diagnostics channels as test/helpers/sql-tenancy.ts does in process, to
// the file named by RECORD_SQL_FILE, one JSON line each.
import { tracingChannel } from "node:diagnostics_channel";
import { appendFileSync } from "node:fs";

const file = process.env.RECORD_SQL_FILE;
if (file) {
  const start = ({ query, database }) => appendFileSync(file, `${JSON.stringify({ sql: query, database })}\n`);
  for (const name of ["mysql2:query", "mysql2:execute"]) tracingChannel(name).subscribe({ start, end() {}, asyncStart() {}, asyncEnd() {}, error() {} });
}
