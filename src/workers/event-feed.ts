import { setTimeout as sleep } from "node:timers/promises";
import { Gauge, type Registry } from "prom-client";
import { withoutCall } from "../domain/call-context.js";
import type { Clock } from "../domain/clock.js";
import { AppError } from "../domain/errors.js";
import { cursorExpired, isForTenant, type EventFeed, type FeedItem, type FeedStart, type SessionEvent, type Subscription } from "../domain/events.js";
import type { EventStore } from "../domain/ports.js";

export interface EventFeedOptions {
  store: EventStore;
  clock: Clock;
  registry: Registry;
  /** How often the one poller reads new events while anyone is subscribed. */
  pollIntervalMs: number;
  /** A subscriber that hears nothing for this long gets a heartbeat. */
  heartbeatMs: number;
  /** Events kept (for `since` starts older than this, cursor_expired). */
  retentionDays: number;
  /** Events a subscriber may have waiting before it is ended as too slow. */
  maxQueue?: number;
  onError: (err: unknown) => void;
}

/** Recent events (all tenants) kept in memory, so subscribers joining late catch up without a query. */
const bufferSize = 10_000;
/** Events read per query, by the poller and by a subscriber catching up. */
const pageSize = 500;

/**
 * The instance's event feed: one poller reads the log for every subscriber (1,000 subscribers cost
 * one query per poll interval) and hands each its tenant's events. A subscriber that starts behind
 * catches up from the database page by page, as fast as it reads, then joins the live feed; one
 * that falls `maxQueue` events behind while live is ended rather than allowed to hold memory.
 */
export function createEventFeed(opts: EventFeedOptions): EventFeed {
  const { store, clock, pollIntervalMs, heartbeatMs, maxQueue = 10_000 } = opts;
  const subscribers = new Set<Subscriber>();
  /** Recent events, contiguous in seq, ending at `head`. */
  let buffer: SessionEvent[] = [];
  /** The highest seq the poller has read. */
  let head = 0;
  let polling: Promise<void> | undefined;
  let isStopped = false;
  const stopping = new AbortController();
  new Gauge({
    name: "sessions_event_subscribers",
    help: "Event feed subscribers (SSE, RPC streams) connected to this instance.",
    registers: [opts.registry],
    collect() {
      this.set(subscribers.size);
    },
  });

  const bufferFirstSeq = () => buffer[0]?.seq ?? head + 1;
  /** Read once, at the first subscription (however many come at once); from then on the poller moves it. */
  let headKnown: Promise<void> | undefined;
  let headRead: Promise<number> | undefined;
  const readHead = () => (headRead ??= store.headSeq().finally(() => (headRead = undefined)));
  const knowHead = () =>
    (headKnown ??= readHead().then(
      (h) => void (head = Math.max(head, h)),
      (err: unknown) => {
        headKnown = undefined;
        throw err;
      },
    ));

  /** Runs the poller while anyone is subscribed. */
  function ensurePolling(): void {
    if (polling !== undefined || isStopped) return;
    // Outside the call that happened to start it: it serves every subscriber, and outlives that one.
    polling = withoutCall(pollWhileSubscribed).finally(() => {
      polling = undefined;
      if (subscribers.size > 0) ensurePolling();
    });
  }

  async function pollWhileSubscribed(): Promise<void> {
    while (subscribers.size > 0 && !isStopped) {
      try {
        for (let n = pageSize; n === pageSize; ) {
          const events = await store.readAfter(head, pageSize);
          n = events.length;
          if (n === 0) break;
          buffer.push(...events);
          if (buffer.length > bufferSize) buffer = buffer.slice(buffer.length - bufferSize);
          head = events[n - 1]!.seq;
          for (const s of subscribers) s.offer(events, head);
        }
      } catch (err) {
        opts.onError(err);
      }
      await sleep(pollIntervalMs, undefined, { signal: stopping.signal }).catch(() => undefined);
    }
  }

  async function startPosition(start: FeedStart): Promise<number> {
    // From now on: after the log's head, read once for all who ask at the same time.
    if ("now" in start) return readHead();
    const purged = await store.purgedThrough();
    if ("after" in start) {
      if (start.after < purged) throw cursorExpired();
      return start.after;
    }
    if ("since" in start) {
      const oldestKept = clock.now().getTime() - opts.retentionDays * 24 * 60 * 60 * 1000;
      if (purged > 0 && start.since.getTime() < oldestKept) throw cursorExpired();
      const first = await store.firstSeqSince(start.since);
      return first === null ? await readHead() : Math.max(first - 1, purged);
    }
    throw new Error("unreachable");
  }

  return {
    async subscribe(tenantId, start) {
      if (isStopped) throw new AppError("unavailable", "the service is shutting down");
      const subscriber = new Subscriber(tenantId, await startPosition(start), heartbeatMs, maxQueue, () => subscribers.delete(subscriber));
      await knowHead();
      // Catch up from the database until the in-memory buffer covers the rest, then go live; in
      // the background, as the reader reads (a reader far behind is paced by what it has taken).
      void withoutCall(async () => {
        try {
          for (;;) {
            if (subscriber.isClosed) return;
            // Live once the buffer holds the rest and the rest fits in half its queue (else it
            // would be too slow the moment it joined); until then, page by page from the database.
            if (subscriber.position >= head || (subscriber.position + 1 >= bufferFirstSeq() && head - subscriber.position <= maxQueue / 2)) {
              subscriber.offer(buffer.filter((e) => e.seq > subscriber.position), head);
              subscriber.isLive = true;
              subscribers.add(subscriber);
              ensurePolling();
              return;
            }
            // Up to what the poller has read (later events reach the subscriber through it).
            const target = head;
            // Pages that fit what the queue may still take (it is waited down to half between pages).
            const size = Math.max(1, Math.min(pageSize, Math.floor(maxQueue / 2)));
            const page = await store.readTenantAfter(tenantId, subscriber.position, size);
            const bound = page.length === size ? Math.min(page[size - 1]!.seq, target) : target;
            subscriber.offer(page.filter((e) => e.seq <= bound), bound);
            await subscriber.roomToCatchUp();
          }
        } catch (err) {
          opts.onError(err);
          subscriber.fail(new AppError("unavailable", "reading the event log failed; resume from the last cursor received"));
        }
      });
      return subscriber;
    },
    async stop() {
      isStopped = true;
      stopping.abort();
      for (const s of subscribers) s.close();
      await polling;
    },
  };
}

/** One subscription's queue: the feed offers events, the reader takes them (or a heartbeat) as it goes. */
class Subscriber implements Subscription {
  private readonly queue: SessionEvent[] = [];
  /** Every event of the tenant's feed up to here is queued or was read. */
  position: number;
  private failure: AppError | undefined;
  isClosed = false;
  /** Caught up with the log: what is queued now is all there was. */
  isLive = false;
  /** The reader heard that it caught up (a heartbeat as soon as a live queue runs dry). */
  private hasSaidCaughtUp = false;
  private wake: (() => void) | undefined;
  private roomMade: (() => void) | undefined;

  constructor(
    private readonly tenantId: string,
    start: number,
    private readonly heartbeatMs: number,
    private readonly maxQueue: number,
    private readonly onClose: () => void,
  ) {
    this.position = start;
  }

  /** Queues the tenant's events after `position` among `events`; every event up to `upTo` has now been offered. */
  offer(events: SessionEvent[], upTo: number): void {
    if (this.isClosed) return;
    for (const e of events) if (e.seq > this.position && isForTenant(e, this.tenantId)) this.queue.push(e);
    this.position = Math.max(this.position, upTo);
    if (this.queue.length > this.maxQueue) {
      this.failure = new AppError("subscriber_too_slow", "the reader fell too far behind; resume from the last cursor received");
      this.close();
    }
    this.wake?.();
  }

  /** Resolves once the reader has taken enough that another page fits (catching up never outruns it). */
  roomToCatchUp(): Promise<void> {
    if (this.queue.length < this.maxQueue / 2 || this.isClosed) return Promise.resolve();
    return new Promise((resolve) => (this.roomMade = resolve));
  }

  /** Ends the subscription with `error` once the reader has taken what is queued. */
  fail(error: AppError): void {
    this.failure = error;
    this.close();
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.onClose();
    this.wake?.();
    this.roomMade?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<FeedItem> {
    try {
      for (;;) {
        const next = this.queue.shift();
        if (next !== undefined) {
          if (this.roomMade !== undefined && this.queue.length < this.maxQueue / 2) {
            this.roomMade();
            this.roomMade = undefined;
          }
          yield { kind: "event", event: next };
          continue;
        }
        if (this.failure !== undefined) throw this.failure;
        if (this.isClosed) return;
        if (this.isLive && !this.hasSaidCaughtUp) {
          // The first heartbeat comes at once: a reader that started behind knows it has caught up.
          this.hasSaidCaughtUp = true;
          yield { kind: "heartbeat", seq: this.position };
          continue;
        }
        // Heartbeats only once caught up: the first one tells the reader it is (until then the
        // catch-up keeps it busy with events).
        const isWoken = await new Promise<boolean>((resolve) => {
          const timer = this.isLive ? setTimeout(() => resolve(false), this.heartbeatMs) : undefined;
          this.wake = () => {
            clearTimeout(timer);
            resolve(true);
          };
        });
        this.wake = undefined;
        // Nothing came: everything up to `position` has been read, and the heartbeat says so.
        if (!isWoken) yield { kind: "heartbeat", seq: this.position };
      }
    } finally {
      this.close();
    }
  }
}
