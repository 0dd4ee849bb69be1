import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pinnedCharset, pinnedSqlMode } from "../../src/store/db.js";
import { call, createSession, startFaultApp, type FaultApp } from "./helpers/app.js";
import { startPrivateMariaDb, type PrivateMariaDb } from "./helpers/private-mariadb.js";

/**
 * Correctness that does not depend on the server's configuration: a private MariaDB whose default
 * sql_mode has NO_BACKSLASH_ESCAPES (mysql2 escapes quotes with backslashes), one with the strictest
 * common modes (ANSI_QUOTES, PIPES_AS_CONCAT, PAD_CHAR_TO_FULL_LENGTH, TRADITIONAL, …), and one that
 * reads every connection as GBK whatever the client asks for (a multi-byte charset in which 0xBF 0x5C
 * is one character, so a backslash-escaped quote after "¿" closes the string).
 */

describe.each([
  ["sql_mode NO_BACKSLASH_ESCAPES", ["--sql-mode=NO_BACKSLASH_ESCAPES"]],
  [
    "the strictest common sql_modes",
    ["--sql-mode=ANSI,TRADITIONAL,NO_BACKSLASH_ESCAPES,PAD_CHAR_TO_FULL_LENGTH,NO_AUTO_VALUE_ON_ZERO,NO_UNSIGNED_SUBTRACTION,HIGH_NOT_PRECEDENCE"],
  ],
  [
    "GBK connections forced on every client",
    ["--sql-mode=NO_BACKSLASH_ESCAPES,ANSI_QUOTES", "--character-set-server=gbk", "--collation-server=gbk_chinese_ci", "--skip-character-set-client-handshake"],
  ],
])("a server with %s", (_name, serverArgs) => {
  let db: PrivateMariaDb;
  let app: FaultApp;

  beforeAll(async () => {
    db = await startPrivateMariaDb(serverArgs);
    app = await startFaultApp(db.port);
  });
  afterAll(async () => {
    await app?.close();
    await db?.destroy();
  });

  const injection = "x' OR 1=1 -- x";
  const backslashed = "x\\' OR 1=1 -- x";
  // "¿" is C2 BF in UTF-8: escaped, BF 5C 27, which GBK reads as one character and a closing quote.
  const multiByte = "\u4e2d\u00bf' OR 1=1 #";
  const hostile = [injection, backslashed, multiByte];

  it("runs every pooled connection in the pinned mode and character set", async () => {
    const [rows] = (await app.services.pool.query(
      "SELECT @@SESSION.sql_mode AS mode, @@GLOBAL.sql_mode AS server, @@character_set_client AS client, @@character_set_connection AS conn, @@character_set_results AS results",
    )) as unknown as [{ mode: string; server: string; client: string; conn: string; results: string }[]];
    expect(rows[0]!.server).toContain("NO_BACKSLASH_ESCAPES");
    expect(rows[0]!.mode.split(",").sort()).toEqual(pinnedSqlMode.split(",").sort());
    expect([rows[0]!.client, rows[0]!.conn, rows[0]!.results]).toEqual([pinnedCharset, pinnedCharset, pinnedCharset]);
  });

  it("a quote in a user id neither lists nor revokes another tenant's (or user's) sessions", async () => {
    const victim = await startFaultApp(db.port);
    try {
      const target = (await createSession(victim, "usr_victim")).json!;
      for (const userId of hostile) {
        const q = encodeURIComponent(userId);
        const listed = await call(app.url, "GET", `/v1/sessions?user_id=${q}`, { headers: app.headers });
        expect(listed.status).toBe(200);
        expect(listed.json?.data).toEqual([]);
        const revoked = await call(app.url, "DELETE", `/v1/sessions?user_id=${q}`, { headers: app.headers });
        expect(revoked.json).toEqual({ revoked: 0 });
      }
      const check = await call(victim.url, "GET", `/v1/sessions/${target.session.id}`, { headers: victim.headers });
      expect(check.json?.status).toBe("active");
    } finally {
      await victim.close();
    }
  });

  it("stores and returns quotes and backslashes exactly, and finds ids that contain them", async () => {
    const agent = `Mozilla/5.0 "quoted" 'single' back\\slash \\' \\\\ end`;
    for (const userId of [...hostile, `o'brien`, `back\\slash`, "\u4e2d\u6587", "\u{1F600}"]) {
      const created = await call(app.url, "POST", "/v1/sessions", { headers: app.headers, body: { user_id: userId, user_agent: agent } });
      expect(created.status, JSON.stringify(created.json)).toBe(201);
      expect(created.json?.session).toMatchObject({ user_id: userId, user_agent: agent });
      const listed = await call(app.url, "GET", `/v1/sessions?user_id=${encodeURIComponent(userId)}`, { headers: app.headers });
      expect((listed.json?.data as { user_id: string }[]).map((s) => s.user_id)).toEqual([userId]);
    }
  });
});
