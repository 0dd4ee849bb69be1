import { tracingChannel } from "node:diagnostics_channel";

/**
 * Every statement mysql2 sends, read from its diagnostics channels (`mysql2:query`, `mysql2:execute`),
 * so a test sees the SQL the service really runs without a hook in production code. The text is as
 * sent, values inlined by the driver's client-side formatting.
 */
export interface RecordedStatement {
  sql: string;
  database: string;
}

interface QueryContext {
  query: string;
  database: string;
}

export function recordStatements(): { statements: RecordedStatement[]; stop(): void } {
  const statements: RecordedStatement[] = [];
  const start = (message: unknown) => {
    const { query, database } = message as QueryContext;
    statements.push({ sql: query, database });
  };
  const channels = [tracingChannel("mysql2:query"), tracingChannel("mysql2:execute")];
  // Only `start` matters; the other events are subscribed to as no-ops (a TracingChannel subscriber).
  const handlers = { start, end() {}, asyncStart() {}, asyncEnd() {}, error() {} };
  for (const c of channels) c.subscribe(handlers);
  return {
    statements,
    stop: () => {
      for (const c of channels) c.unsubscribe(handlers);
    },
  };
}

/**
 * The statement's shape: literals (strings, hex, numbers, booleans) become `?`, lists of them one
 * `?`, whitespace one space, all lower case. Two runs of the same statement normalize alike.
 */
export function normalizeSql(sql: string): string {
  return sql
    .replace(/\/\*[\s\S]*?\*\//g, " ")
    .replace(/[xX]'[0-9a-fA-F]*'/g, "?")
    .replace(/'(?:[^'\\]|\\.|'')*'/g, "?")
    .replace(/(?<![\w.])-?\d+(?:\.\d+)?(?![\w])/g, "?")
    .replace(/\b(?:true|false)\b/gi, "?")
    .replace(/\s+/g, " ")
    .trim()
    .toLowerCase()
    .replace(/\?(?:\s*,\s*\?)+/g, "?")
    .replace(/\(\?\)(?:\s*,\s*\(\?\))+/g, "(?)");
}

/** A reference to a table in a statement, and whether the statement pins it to one tenant. */
export interface TableReference {
  table: string;
  alias: string;
  isTenantConstrained: boolean;
}

const notAnAlias = new Set([
  "where", "on", "set", "join", "inner", "left", "right", "cross", "order", "group", "limit", "values", "value",
  "select", "union", "for", "using", "natural", "straight_join", "partition", "having", "window", "lock", "into", "as",
]);
const dataStatement = /^\(*\s*(select|insert|replace|update|delete)\b/;

/** Text at paren depth 0 from `from` on, up to where the enclosing parenthesis or a UNION ends it; nested parens kept empty. */
function scopeAfter(sql: string, from: number): string {
  let depth = 0;
  let out = "";
  for (let i = from; i < sql.length; i++) {
    const c = sql[i]!;
    if (c === "(") {
      if (depth === 0) out += "(";
      depth++;
      continue;
    }
    if (c === ")") {
      if (depth === 0) break;
      depth--;
      if (depth === 0) out += ")";
      continue;
    }
    if (depth > 0) continue;
    if (sql.startsWith(" union ", i)) break;
    out += c;
  }
  return out;
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/**
 * The tables a data statement reads or writes that are in `tenantColumns` (table → the column that
 * names the tenant), each with whether the statement constrains that column to a value:
 * - INSERT / REPLACE: the column is in the inserted column list;
 * - SELECT / UPDATE / DELETE: in the WHERE or a JOIN's ON of the table's own query block, an
 *   equality (`col = …`, `col <=> …`, `col IN (…)`), unqualified or qualified by the table's alias,
 *   with no top-level OR beside it (`col IS NULL` is not a tenant).
 * Other statements (DDL, SET, transaction control) give none.
 */
export function tenantReferences(sql: string, tenantColumns: ReadonlyMap<string, string>): TableReference[] {
  const s = normalizeSql(sql).replace(/ on duplicate key update .*$/, "");
  const kind = dataStatement.exec(s)?.[1];
  if (kind === undefined) return [];
  const refs: TableReference[] = [];
  const tableRef = /\b(from|join|update|into) `?([a-z_][a-z0-9_]*)`?(?: (?:as )?([a-z_][a-z0-9_]*))?/g;
  for (let m = tableRef.exec(s); m !== null; m = tableRef.exec(s)) {
    const [, keyword, table, maybeAlias] = m as unknown as [string, string, string, string | undefined];
    const column = tenantColumns.get(table);
    if (column === undefined) continue;
    const alias = maybeAlias !== undefined && !notAnAlias.has(maybeAlias) ? maybeAlias : table;
    if (keyword === "into") {
      const columns = /^ ?\(([^)]*)\)/.exec(s.slice(m.index + m[0].length - (maybeAlias && notAnAlias.has(maybeAlias) ? maybeAlias.length + 1 : 0)));
      const names = columns?.[1]?.split(",").map((c) => c.trim().replace(/`/g, "")) ?? [];
      refs.push({ table, alias, isTenantConstrained: names.includes(column) });
      continue;
    }
    const scope = scopeAfter(s, m.index);
    const conditions = / (?:where|on) (.*)$/.exec(scope)?.[1] ?? "";
    const qualifier = `(?:(?:${escapeRe(alias)}|${escapeRe(table)})\\.)?`;
    const equality = new RegExp(`(?:^|[^a-z0-9_.])${qualifier}${escapeRe(column)} ?(?:=|<=>|in ?\\()`);
    const hasTopLevelOr = / or /.test(conditions);
    refs.push({ table, alias, isTenantConstrained: equality.test(conditions) && !hasTopLevelOr });
  }
  return refs;
}
