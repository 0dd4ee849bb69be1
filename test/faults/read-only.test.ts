import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SessionService } from "../../gen/sessions/v1/sessions_pb.js";
import {
  call, createSession, directConnection, faultDatabase, refreshSession, revokeSession, startFaultApp, startFaultInstance, type FaultApp,
} from "./helpers/app.js";
import { startPrivateMariaDb, type PrivateMariaDb } from "./helpers/private-mariadb.js";

/**
 * A server that cannot take writes (a replica behind a proxy, a primary during failover): writes
 * are 503 `unavailable` with Retry-After, never 500, reads go on, and readiness says so. The service
 * connects as an ordinary user: read_only does not bind a user with SUPER or READ ONLY ADMIN.
 */

let db: PrivateMariaDb;
let app: FaultApp;
let appUrl: string;
let root: Awaited<ReturnType<typeof directConnection>>;

beforeAll(async () => {
  db = await startPrivateMariaDb();
  // Create and migrate the database as root once, then run the service as an ordinary user.
  await (await startFaultApp(db.port)).close();
  root = await directConnection(db.port);
  await root.query("CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'app-password'");
  await root.query(`GRANT ALL PRIVILEGES ON \`${faultDatabase}\`.* TO 'app'@'127.0.0.1'`);
  appUrl = `mysql://app:app-password@127.0.0.1:${db.port}/${faultDatabase}`;
  app = await startFaultApp(db.port, { DATABASE_URL: appUrl });
});
afterAll(async () => {
  await root?.query("SET GLOBAL read_only = OFF").catch(() => undefined);
  await root?.end();
  await app?.close();
  await db?.destroy();
});

describe("a read-only database server", () => {
  it("answers writes with 503 and Retry-After on every protocol, keeps serving reads, and reports not ready until writable", async () => {
    const before = (await createSession(app, "usr_ro")).json!;
    expect((await call(app.url, "GET", "/readyz")).status).toBe(200);
    await root.query("SET GLOBAL read_only = ON");
    try {
      for (const res of [
        await createSession(app, "usr_ro"),
        await refreshSession(app, before.refresh_token),
        await revokeSession(app, before.session.id),
      ]) {
        expect(res.status).toBe(503);
        expect(res.json?.error.code).toBe("unavailable");
      }
      const raw = await fetch(`${app.url}/v1/sessions`, { method: "POST", headers: { ...app.headers, "content-type": "application/json" }, body: '{"user_id":"u"}' });
      expect(raw.headers.get("retry-after")).toBe("1");
      const rpc = createClient(SessionService, createGrpcTransport({ baseUrl: app.url }));
      const err = await rpc.createSession({ userId: "usr_ro" }, { headers: app.headers }).catch((e: unknown) => ConnectError.from(e));
      expect((err as ConnectError).code).toBe(Code.Unavailable);

      const verified = await call(app.url, "POST", "/v1/sessions/verify", { headers: app.headers, body: { token: before.access_token } });
      expect(verified.json).toMatchObject({ valid: true });
      expect((await call(app.url, "GET", `/v1/sessions/${before.session.id}`, { headers: app.headers })).status).toBe(200);
      const ready = await call(app.url, "GET", "/readyz");
      expect(ready.status).toBe(503);
      expect(ready.json).toMatchObject({ status: "unavailable", problems: ["database is read-only"] });

      // A new instance starts meanwhile (the schema is migrated; starting writes nothing) and serves reads.
      const another = await startFaultInstance(db.port, { DATABASE_URL: appUrl });
      try {
        expect((await call(another.url, "GET", `/v1/sessions/${before.session.id}`, { headers: app.headers })).status).toBe(200);
        expect((await call(another.url, "GET", "/readyz")).status).toBe(503);
      } finally {
        await another.close();
      }
    } finally {
      await root.query("SET GLOBAL read_only = OFF");
    }
    expect((await createSession(app, "usr_ro")).status).toBe(201);
    expect((await call(app.url, "GET", "/readyz")).status).toBe(200);
  });
});
