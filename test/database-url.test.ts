import { createServer, connect, type Server, type Socket } from "node:net";
import { once } from "node:events";
import { afterEach, describe, expect, it } from "vitest";
import { closePool, openDatabase } from "../src/store/db.js";
import { dropDatabase, freshDatabaseUrl } from "./helpers/db.js";

/**
 * DATABASE_URL names the server as a URL does. An IPv6 literal comes bracketed
 * (mysql://root@[::1]:3306/sessions); the service connects to the address inside the brackets.
 */
describe("DATABASE_URL with an IPv6 address", () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  it("connects to [::1] and creates its database there", async () => {
    // The test server listens on IPv4 only; a relay on [::1] stands in for a server reached over IPv6.
    const target = new URL(freshDatabaseUrl());
    const sockets = new Set<Socket>();
    let relayed = 0;
    const relay: Server = createServer((client) => {
      relayed++;
      const upstream = connect(Number(target.port || 3306), target.hostname);
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on("error", () => s.destroy());
        s.on("close", () => sockets.delete(s));
      }
      client.pipe(upstream).pipe(client);
    });
    relay.listen(0, "::1");
    await once(relay, "listening");
    cleanups.push(async () => {
      for (const s of sockets) s.destroy();
      relay.close();
      await once(relay, "close");
    });
    const port = (relay.address() as { port: number }).port;
    const url = `mysql://root@[::1]:${port}${target.pathname}`;
    cleanups.push(() => dropDatabase(target.href));

    const pool = await openDatabase({ url, poolSize: 1 });
    cleanups.push(() => closePool(pool));
    const [rows] = await pool.query("SELECT DATABASE() AS name");
    expect((rows as { name: string }[])[0]!.name).toBe(target.pathname.slice(1));
    expect(relayed).toBeGreaterThan(0);
  });
});

describe("DATABASE_URL schemes and credentials", () => {
  it("connects with a mariadb:// URL and a password holding an unencoded @ and :", async () => {
    const target = new URL(freshDatabaseUrl());
    const database = target.pathname.slice(1);
    const admin = await openDatabase({ url: target.href, poolSize: 1 });
    const user = `u_${database.slice(-12)}`;
    try {
      await admin.query("CREATE USER ?@'127.0.0.1' IDENTIFIED BY 'p@ss:w'", [user]);
      await admin.query(`GRANT ALL ON \`${database}\`.* TO ?@'127.0.0.1'`, [user]);
      const pool = await openDatabase({ url: `mariadb://${user}:p@ss:w@127.0.0.1:${target.port || 3306}/${database}`, poolSize: 1 });
      try {
        const [rows] = await pool.query("SELECT CURRENT_USER() AS who");
        expect((rows as { who: string }[])[0]!.who).toBe(`${user}@127.0.0.1`);
      } finally {
        await closePool(pool);
      }
    } finally {
      await admin.query("DROP USER IF EXISTS ?@'127.0.0.1'", [user]);
      await closePool(admin);
      await dropDatabase(target.href);
    }
  });
});
