import http from "node:http";
import { describe, expect, it } from "vitest";
import { dropDatabase } from "./helpers/db.js";
import { whileRowLocked } from "./helpers/row-lock.js";
import { startTestServer } from "./helpers/server.js";

/**
 * HTTP/1.1 keep-alive during shutdown: a response still in flight when the server starts closing
 * says `Connection: close`, so the client does not send its next request on a socket about to go
 * (a POST sent there would be reset, and the client could not tell whether it was processed).
 */
describe("closing with keep-alive clients", () => {
  it("answers the requests in flight with Connection: close", async () => {
    const server = await startTestServer();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const created = await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { ...server.tenant.headers, "content-type": "application/json" }, body: '{"user_id":"usr_keepalive"}' });
      const { session } = (await created.json()) as { session: { id: string } };
      const revoke = () =>
        new Promise<{ status: number; connection: string | undefined }>((resolve, reject) => {
          const req = http.request(`${server.url}/v1/sessions/${session.id}`, { method: "DELETE", headers: server.tenant.headers, agent }, (res) => {
            res.resume();
            res.on("end", () => resolve({ status: res.statusCode ?? 0, connection: res.headers.connection }));
          });
          req.on("error", reject);
          req.end();
        });
      let closed: Promise<void> = Promise.resolve();
      // The revoke waits on its row; meanwhile the server begins to close; then the row is free.
      const [answer] = await whileRowLocked(server.services.pool, { tenantId: server.tenant.id, sessionId: session.id }, {
        writers: 1,
        blockedStatement: "UPDATE sessions SET state = 2%",
        start: () => [revoke()],
        during: async () => {
          closed = server.app.close();
        },
      });
      await closed;
      expect(answer).toEqual({ status: 204, connection: "close" });
    } finally {
      agent.destroy();
      await server.app.close();
      await dropDatabase(server.config.databaseUrl);
    }
  });
});
