import { createServer } from "node:http";
import mysql from "mysql2/promise";

/**
 * The database baselines: a bare node:http server doing one statement per request through a mysql2
 * pool of the service's size on the same server: a single-row INSERT (what a create must at least
 * do), a primary-key UPDATE (what a refresh must at least do), or one page of 100 of the tenant's
 * sessions by index, sent as JSON.stringify of the rows (what a list must at least do). No auth, no
 * framework, no tokens.
 */
const pool = mysql.createPool({ uri: process.env.DATABASE_URL as string, connectionLimit: 16 });
const rows = 1000;
await pool.query("CREATE TABLE IF NOT EXISTS bench_rows (id INT NOT NULL PRIMARY KEY, n BIGINT NOT NULL, note VARCHAR(255) NOT NULL) ENGINE=InnoDB");
await pool.query("CREATE TABLE IF NOT EXISTS bench_inserts (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, note VARCHAR(255) NOT NULL, created_at DATETIME(6) NOT NULL) ENGINE=InnoDB");
await pool.query("INSERT IGNORE INTO bench_rows (id, n, note) VALUES ?", [Array.from({ length: rows }, (_, i) => [i, 0, "x"])]);

const server = createServer((req, res) => {
  req.resume();
  req.on("end", async () => {
    try {
      if (req.url === "/list") {
        const [page] = await pool.query(
          "SELECT * FROM sessions WHERE tenant_id = ? AND state = 0 AND ends_at > ? ORDER BY created_at DESC, id DESC LIMIT 100",
          [process.env.TENANT_ID, new Date()],
        );
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ data: page }));
        return;
      }
      if (req.url === "/insert") await pool.query("INSERT INTO bench_inserts (note, created_at) VALUES (?, ?)", ["bench", new Date()]);
      else await pool.query("UPDATE bench_rows SET n = n + 1 WHERE id = ?", [Math.floor(Math.random() * rows)]);
      res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
    } catch {
      res.writeHead(503).end();
    }
  });
});
server.listen(0, "127.0.0.1", () => {
  const address = server.address();
  process.send?.({ port: typeof address === "object" && address ? address.port : 0 });
});
