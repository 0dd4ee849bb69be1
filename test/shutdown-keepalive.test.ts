import http from "node:http";
import net from "node:net";
import mysql, { type RowDataPacket } from "mysql2/promise";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { dropDatabase } from "./helpers/db.js";
import { headerLines, rawCreate, rawHttp } from "./helpers/raw-http.js";
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

  it("runs no request pipelined behind the one in flight at close: its answer says Connection: close", async () => {
    const server = await startTestServer();
    try {
      const headers = { ...server.tenant.headers, "content-type": "application/json" };
      const created = await fetch(`${server.url}/v1/sessions`, { method: "POST", headers, body: '{"user_id":"usr_pipelined_close"}' });
      const { session } = (await created.json()) as { session: { id: string } };
      const create = (userId: string) => rawCreate(server.tenant.headers, userId);
      const exchange = () =>
        rawHttp(server.port, `DELETE /v1/sessions/${session.id} HTTP/1.1\r\nHost: x\r\n${headerLines(server.tenant.headers)}\r\n` + create("usr_pipelined_second") + create("usr_pipelined_third"));
      let closed: Promise<void> = Promise.resolve();
      // The revoke waits on its row, the two creates behind it; meanwhile the server begins to close.
      const [response] = await whileRowLocked(server.services.pool, { tenantId: server.tenant.id, sessionId: session.id }, {
        writers: 1,
        blockedStatement: "UPDATE sessions SET state = 2%",
        start: () => [exchange()],
        during: async () => {
          closed = server.app.close();
        },
      });
      await closed;
      const answers = [...(response ?? "").matchAll(/HTTP\/1\.1 (\d{3})[^]*?\r\nConnection: ([a-z-]+)/gi)].map((m) => `${m[1]} ${m[2]}`);
      // The revoke, in flight when closing began, says the connection closes; the creates waiting
      // behind it never run, so the client knows to send them again elsewhere.
      expect(answers).toEqual(["204 close"]);
      const db = await mysql.createConnection(server.config.databaseUrl);
      try {
        const [rows] = await db.query<RowDataPacket[]>("SELECT CAST(user_id AS CHAR) AS user_id FROM sessions WHERE user_id LIKE 'usr_pipelined_%' ORDER BY user_id");
        expect(rows.map((r) => r.user_id)).toEqual(["usr_pipelined_close"]);
      } finally {
        await db.end();
      }
    } finally {
      await server.app.close();
      await dropDatabase(server.config.databaseUrl);
    }
  });

  it("a client reading slowly gets every byte of the answers given before the close, and nothing it was not answered ran", async () => {
    const server = await startTestServer();
    const db = await mysql.createConnection(server.config.databaseUrl);
    try {
      // Pages of ~140 KB: 100 sessions with 1,000-character user agents.
      await Promise.all(
        Array.from({ length: 100 }, () =>
          fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { ...server.tenant.headers, "content-type": "application/json" }, body: JSON.stringify({ user_id: "usr_big", user_agent: "a".repeat(1000) }) }),
        ),
      );
      const page = `GET /v1/sessions?user_id=usr_big&limit=100 HTTP/1.1\r\nHost: x\r\n${headerLines(server.tenant.headers)}\r\n`;
      // 10 creates, each followed by 9 pages (13 MB): more than the kernel's buffers hold for a
      // client that does not read, so answers wait in the server's socket buffer.
      const pipeline = Array.from({ length: 10 }, (_, i) => rawCreate(server.tenant.headers, `usr_slow_${i}`) + page.repeat(9)).join("");
      const socket = net.connect(Number(new URL(server.url).port), "127.0.0.1");
      socket.pause();
      const chunks: Buffer[] = [];
      const ended = new Promise<void>((resolve, reject) => {
        socket.on("data", (chunk: Buffer) => chunks.push(chunk));
        socket.on("close", () => resolve());
        socket.on("error", reject);
      });
      socket.write(pipeline);
      const ran = async () => Number(((await db.query<RowDataPacket[]>("SELECT COUNT(*) AS n FROM sessions WHERE user_id LIKE 'usr_slow_%'"))[0][0] as RowDataPacket).n);
      // Until the creates stop running: the connection is stuck behind the unread answers.
      for (let seen = -1, now = await ran(); now === 0 || now !== seen; seen = now, now = await ran()) await sleep(50);
      const closed = server.app.close();
      socket.resume();
      await ended;
      await closed;
      const received = Buffer.concat(chunks).toString("latin1");
      const answers: { status: string; connection: string; complete: boolean }[] = [];
      for (let at = 0; at < received.length; ) {
        const headEnd = received.indexOf("\r\n\r\n", at);
        const head = received.slice(at, headEnd);
        const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1]);
        const body = received.slice(headEnd + 4, headEnd + 4 + length);
        answers.push({ status: head.slice(9, 12), connection: /\r\nconnection: ([a-z-]+)/i.exec(head)?.[1] ?? "", complete: body.length === length });
        at = headEnd + 4 + length;
      }
      expect(answers.every((a) => a.complete)).toBe(true);
      expect(answers.filter((a) => a.status === "201")).toHaveLength(await ran());
      // The answer running when closing began may have had its headers on their way already
      // (keep-alive); no answer after it, nor any ran.
      expect(answers.slice(0, -1).every((a) => a.connection.toLowerCase() === "keep-alive")).toBe(true);
    } finally {
      await db.end();
      await server.app.close();
      await dropDatabase(server.config.databaseUrl);
    }
  });
});
