import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { systemClock } from "../src/domain/clock.js";
import type { EventStore } from "../src/domain/ports.js";
import { createEventFeed } from "../src/workers/event-feed.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * One poller per instance: 1,000 subscribers of one instance's feed cost the same reads of the log
 * as one, and each hears every event of its tenant. The feed runs on the real event store of a real
 * database, counted.
 */
let server: TestServer;
beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server?.close();
});

describe("the event feed's fan-out", () => {
  it("serves 1,000 subscribers with one log read per poll interval", async () => {
    const reads = { readAfter: 0, other: 0 };
    const real = server.services.eventStore;
    const counted: EventStore = {
      ...real,
      readAfter: (seq, limit) => {
        reads.readAfter++;
        return real.readAfter(seq, limit);
      },
    };
    const pollIntervalMs = 20;
    const feed = createEventFeed({ store: counted, clock: systemClock, registry: new Registry(), pollIntervalMs, heartbeatMs: 60_000, retentionDays: 7, onError: () => undefined });
    try {
      // All at once, as a fleet of verifiers reconnecting after a restart would.
      const subscriptions = await Promise.all(Array.from({ length: 1_000 }, () => feed.subscribe(server.tenant.id, { now: true })));
      const heard = subscriptions.map(() => new Set<string>());
      const readers = subscriptions.map(async (s, i) => {
        for await (const item of s) if (item.kind === "event" && item.event.sessionId) heard[i]!.add(item.event.sessionId);
      });
      const created: string[] = [];
      for (let i = 0; i < 5; i++) {
        const res = await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { ...server.tenant.headers, "content-type": "application/json" }, body: `{"user_id":"usr_fanout_${i}"}` });
        created.push(((await res.json()) as { session: { id: string } }).session.id);
      }
      const started = performance.now();
      const readsBefore = reads.readAfter;
      while (((await server.services.eventSequencer.sequenceOnce()) ?? 0) > 0);
      await vi.waitFor(() => expect(heard.every((h) => created.every((id) => h.has(id)))).toBe(true), { timeout: 20_000, interval: 20 });
      const intervals = (performance.now() - started) / pollIntervalMs;
      // At most one read of the log per interval (plus one for a page that came back full), however many subscribers.
      expect(reads.readAfter - readsBefore).toBeLessThanOrEqual(Math.ceil(intervals) + 2);
      for (const s of subscriptions) s.close();
      await Promise.all(readers);
    } finally {
      await feed.stop();
    }
  });

  it("catches a reader up from far behind while it reads, however far (more than its queue holds), from the database or the feed's buffer", async () => {
    // A queue of 40: 300 events must come page by page as the reader takes them.
    const feed = createEventFeed({ store: server.services.eventStore, clock: systemClock, registry: new Registry(), pollIntervalMs: 20, heartbeatMs: 60_000, retentionDays: 7, maxQueue: 40, onError: () => undefined });
    try {
      // A live subscriber keeps the poller running, so the 300 events are also in the feed's buffer.
      const live = await feed.subscribe(server.tenant.id, { now: true });
      const since = new Date(Date.now() - 1_000);
      let next = 0;
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          for (let i = next++; i < 300; i = next++) {
            const res = await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { ...server.tenant.headers, "content-type": "application/json" }, body: `{"user_id":"usr_behind_${i}"}` });
            expect(res.status).toBe(201);
          }
        }),
      );
      while (((await server.services.eventSequencer.sequenceOnce()) ?? 0) > 0);
      /** Reads the 300, then what comes next: a heartbeat once caught up (an error if it was ended as too slow). */
      const readAll = async (subscription: Awaited<ReturnType<typeof feed.subscribe>>) => {
        const seen = new Set<string>();
        const items = subscription[Symbol.asyncIterator]();
        let after: string | undefined;
        while (after === undefined) {
          try {
            const { value: item, done } = await items.next();
            if (done) after = "ended";
            else if (item.kind === "heartbeat") after = seen.size === 300 ? "heartbeat" : undefined;
            else if (item.event.type === "session.created" && item.event.userId?.startsWith("usr_behind_")) seen.add(item.event.userId);
          } catch (err) {
            after = (err as Error).message;
          }
        }
        subscription.close();
        return { count: seen.size, after };
      };
      await readAll(live);
      // The late one starts 300 behind, all of them in the feed's buffer: it gets them page by page
      // and then its caught-up heartbeat, never ended as too slow.
      expect(await readAll(await feed.subscribe(server.tenant.id, { since }))).toEqual({ count: 300, after: "heartbeat" });
    } finally {
      await feed.stop();
    }
  });
});
