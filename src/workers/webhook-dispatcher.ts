import dns, { type LookupAddress } from "node:dns";
import http from "node:http";
import https from "node:https";
import { isIP } from "node:net";
import { Counter, type Registry } from "prom-client";
import { Webhook } from "standardwebhooks";
import { withoutCall } from "../domain/call-context.js";
import type { Clock } from "../domain/clock.js";
import type { SessionEvent } from "../domain/events.js";
import type { DueDelivery, EventStore, LeaseStore, WebhookAttempt, WebhookStore } from "../domain/ports.js";
import { unseal } from "../domain/secrets.js";
import { attemptTimeoutMs, isBlockedAddress, nextAttemptAt, persistentFailureReason, wantsEvent } from "../domain/webhooks.js";
import { webhookMessage } from "../transport/webhook-payload.js";
import { createLease } from "./lease.js";

export interface WebhookDispatcherOptions {
  store: WebhookStore;
  events: EventStore;
  leases: LeaseStore;
  clock: Clock;
  registry: Registry;
  /** Opens the endpoints' sealed secrets. */
  keyEncryptionKey: Buffer;
  /** Makes each tenant's event cursors (the webhook-id). */
  cursorKey: Buffer;
  /** How often the dispatcher looks for new events and due retries. */
  pollIntervalMs: number;
  /** WEBHOOK_ALLOW_PRIVATE: deliver to loopback and private addresses too. */
  allowPrivate: boolean;
  /** Attempts in flight at once. */
  concurrency?: number;
  onError: (err: unknown) => void;
}

export interface WebhookDispatcher {
  start(): void;
  /** Stops looking for work, lets attempts in flight finish, gives the lease up. */
  stop(): Promise<void>;
  /** Queues new events and makes the attempts due now, if this instance holds (or can take) the lease; attempts made, or undefined. */
  dispatchOnce(): Promise<number | undefined>;
}

const leaseName = "webhook-dispatcher";
const leaseMs = 15_000;
/** Events read per query when queueing; deliveries taken per round. */
const pageSize = 500;
const roundSize = 200;
/** Attempts in flight to one endpoint at a time. */
const perEndpoint = 8;
/** Response bodies are read (so connections can be reused) up to this much, and never kept. */
const maxResponseBytes = 64 * 1024;

/**
 * Delivers the event log to webhook endpoints, on one instance at a time (a lease), off the API
 * path: it reads the log, queues a delivery per endpoint and event the endpoint wants, and sends
 * each with Standard Webhooks headers, signed by `standardwebhooks`. A failure is tried again on
 * the schedule in domain/webhooks.ts; a delivery that fails the whole schedule is given up and its
 * endpoint disabled (sessionctl webhooks enable turns it back on; what it missed is then queued).
 */
export function createWebhookDispatcher(opts: WebhookDispatcherOptions): WebhookDispatcher {
  const { store, events, clock, concurrency = 16 } = opts;
  const lease = createLease(opts.leases, leaseName, clock, leaseMs, opts.onError);
  const attempts = new Counter({
    name: "sessions_webhook_attempts_total",
    help: "Webhook delivery attempts, by outcome (delivered, retry, failed: given up).",
    labelNames: ["outcome"] as const,
    registers: [opts.registry],
  });
  const agents = { http: new http.Agent({ keepAlive: true, maxSockets: 8 }), https: new https.Agent({ keepAlive: true, maxSockets: 8 }) };
  const lookup = guardedLookup(opts.allowPrivate);
  let loop: Promise<void> | undefined;
  let isStopping = false;
  const stopping = new AbortController();

  /** Queues, for every enabled endpoint, the events after its position that it wants. */
  async function queueNewEvents(): Promise<void> {
    for (const endpoint of await store.enabledEndpoints()) {
      let position = endpoint.position;
      for (;;) {
        const page = await events.readTenantAfter(endpoint.tenantId, position, pageSize);
        if (page.length === 0) break;
        const to = page[page.length - 1]!.seq;
        const seqs = page.filter((e) => wantsEvent(endpoint, e.type)).map((e) => e.seq);
        if (!(await store.queue(endpoint.id, position, to, seqs, clock.now()))) break;
        position = to;
        if (page.length < pageSize) break;
      }
    }
  }

  async function attempt(delivery: DueDelivery, event: SessionEvent | undefined): Promise<void> {
    const started = clock.now();
    const startedMs = performance.now();
    let result: { status: number | null; error: string | null };
    if (event === undefined) {
      result = { status: null, error: "the event is no longer kept (event retention)" };
    } else {
      const message = webhookMessage(event, delivery.tenantId, opts.cursorKey);
      const headers = {
        "content-type": "application/json",
        "user-agent": "sessions-webhooks/1",
        "webhook-id": message.id,
        "webhook-timestamp": String(Math.floor(started.getTime() / 1000)),
        "webhook-signature": signatures(delivery, message, started),
      };
      result = await post(delivery.url, message.body, headers);
    }
    const record: WebhookAttempt = { attemptedAt: started, ...result, durationMs: performance.now() - startedMs };
    const isDelivered = result.status !== null && result.status >= 200 && result.status < 300;
    const retryAt = isDelivered || event === undefined ? null : nextAttemptAt(delivery.attempts + 1, clock.now());
    const outcome = isDelivered ? ({ state: "delivered" } as const) : retryAt !== null ? ({ state: "retry", retryAt } as const) : ({ state: "failed" } as const);
    await store.recordAttempt(delivery, record, outcome);
    attempts.inc({ outcome: outcome.state });
    if (outcome.state === "failed" && event !== undefined) await store.setEnabled(delivery.tenantId, delivery.endpointId, false, persistentFailureReason);
  }

  /** `v1,<sig>` with the current secret, and with the previous one while it is still honoured. */
  function signatures(delivery: DueDelivery, message: { id: string; body: string }, at: Date): string {
    const sign = (sealed: Buffer) => new Webhook(unseal(opts.keyEncryptionKey, delivery.endpointId, sealed).toString()).sign(message.id, at, message.body);
    const all = [sign(delivery.secretSealed)];
    if (delivery.previousSecretSealed !== null && delivery.previousSecretUntil !== null && delivery.previousSecretUntil > at) all.push(sign(delivery.previousSecretSealed));
    return all.join(" ");
  }

  /** POSTs the message; the status, or why none came. Never follows redirects. */
  function post(target: string, body: string, headers: Record<string, string>): Promise<{ status: number | null; error: string | null }> {
    return new Promise((resolve) => {
      const url = new URL(target);
      const host = url.hostname.replace(/^\[|\]$/g, "");
      // An IP literal is not looked up: it is judged here.
      if (!opts.allowPrivate && isIP(host) !== 0 && isBlockedAddress(host)) {
        resolve({ status: null, error: "the URL's address is private or reserved (WEBHOOK_ALLOW_PRIVATE is off)" });
        return;
      }
      const isHttps = url.protocol === "https:";
      const request = (isHttps ? https : http).request(url, {
        method: "POST",
        headers: { ...headers, "content-length": String(Buffer.byteLength(body)) },
        agent: isHttps ? agents.https : agents.http,
        lookup,
        signal: AbortSignal.any([AbortSignal.timeout(attemptTimeoutMs), stopping.signal]),
      });
      request.once("response", (response) => {
        let read = 0;
        response.on("data", (chunk: Buffer) => {
          read += chunk.length;
          if (read > maxResponseBytes) response.destroy();
        });
        response.once("end", () => resolve({ status: response.statusCode ?? null, error: null }));
        response.once("error", () => resolve({ status: response.statusCode ?? null, error: null }));
        response.once("close", () => resolve({ status: response.statusCode ?? null, error: null }));
      });
      request.once("error", (err: NodeJS.ErrnoException) => {
        const why = err.name === "AbortError" || err.name === "TimeoutError" ? `no response within ${attemptTimeoutMs} ms` : (err.code ?? err.message);
        resolve({ status: null, error: why });
      });
      request.end(body);
    });
  }

  /** Attempts in flight, in all and per endpoint: one slow endpoint holds at most `perEndpoint` of them. */
  const inFlight = new Set<Promise<void>>();
  const inFlightPerEndpoint = new Map<string, number>();
  /** Cuts the loop's wait short (set while it waits). */
  let wakeLoop: (() => void) | undefined;

  /**
   * Starts the attempts due now that fit (in all, and per endpoint), claimed first so no other
   * dispatcher makes them too; resolves with how many it started and when they have all ended.
   * Never waits for the attempts themselves: a slow endpoint holds its own slots, not the loop.
   */
  async function startDue(): Promise<{ started: number; done: Promise<unknown> }> {
    const room = concurrency - inFlight.size;
    if (room <= 0) return { started: 0, done: Promise.resolve() };
    const now = clock.now();
    const busy = new Map(inFlightPerEndpoint);
    const picked = (await store.dueDeliveries(now, roundSize, perEndpoint)).filter((d) => {
      const n = busy.get(d.endpointId) ?? 0;
      busy.set(d.endpointId, n + 1);
      return n < perEndpoint;
    });
    // Until the attempt must have ended (its timeout and a margin), plus up to a second of jitter,
    // so that reading the claim back finds this dispatcher's own (the lease makes a second
    // dispatcher rare; the jitter makes two claiming in the same millisecond rarer still).
    const until = new Date(now.getTime() + attemptTimeoutMs + 5_000 + Math.floor(Math.random() * 1_000));
    const claimed = await store.claim(picked.slice(0, room), now, until);
    if (claimed.length === 0) return { started: 0, done: Promise.resolve() };
    const bySeq = new Map((await events.readSeqs([...new Set(claimed.map((d) => d.seq))])).map((e) => [e.seq, e]));
    const started = claimed.map((delivery) => {
      inFlightPerEndpoint.set(delivery.endpointId, (inFlightPerEndpoint.get(delivery.endpointId) ?? 0) + 1);
      const running = attempt(delivery, bySeq.get(delivery.seq))
        .catch(opts.onError)
        .finally(() => {
          inFlight.delete(running);
          const left = (inFlightPerEndpoint.get(delivery.endpointId) ?? 1) - 1;
          if (left > 0) inFlightPerEndpoint.set(delivery.endpointId, left);
          else inFlightPerEndpoint.delete(delivery.endpointId);
          // Half the slots free: look for more at once rather than at the next interval.
          if (inFlight.size <= concurrency / 2) wakeLoop?.();
        });
      inFlight.add(running);
      return running;
    });
    return { started: started.length, done: Promise.all(started) };
  }

  /** One round, waited to its end (tests drive the dispatcher with it). */
  async function dispatchOnce(): Promise<number | undefined> {
    if (!(await lease.hold())) return undefined;
    await queueNewEvents();
    const { started, done } = await startDue();
    await done;
    return started;
  }

  return {
    start() {
      if (loop !== undefined) return;
      // Every interval: renew the lease, queue new events, start what is due and fits. Attempts
      // run on by themselves; the lease is renewed while they do.
      loop = withoutCall(async () => {
        while (!isStopping) {
          let isHolder = false;
          try {
            isHolder = await lease.hold();
            if (isHolder) {
              await queueNewEvents();
              await startDue();
            }
          } catch (err) {
            opts.onError(err);
          }
          if (isStopping) break;
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, isHolder ? opts.pollIntervalMs : leaseMs / 5);
            wakeLoop = () => {
              clearTimeout(timer);
              resolve();
            };
          });
          wakeLoop = undefined;
        }
        await Promise.all(inFlight);
      });
    },
    async stop() {
      isStopping = true;
      lease.stop();
      stopping.abort();
      wakeLoop?.();
      await loop;
      agents.http.destroy();
      agents.https.destroy();
      await lease.release();
    },
    dispatchOnce,
  };
}

/**
 * A DNS lookup for webhook connections that drops private and reserved addresses (unless allowed),
 * at connection time: a name that resolved to a public address when it was registered and to
 * 127.0.0.1 now (DNS rebinding) is refused now.
 */
function guardedLookup(allowPrivate: boolean) {
  return (hostname: string, options: dns.LookupOptions, callback: (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void) => {
    dns.lookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, "");
      const allowed = allowPrivate ? addresses : addresses.filter((a) => !isBlockedAddress(a.address));
      if (allowed.length === 0) {
        const refused: NodeJS.ErrnoException = new Error(`${hostname} resolves only to private or reserved addresses (WEBHOOK_ALLOW_PRIVATE is off)`);
        refused.code = "EBLOCKEDADDRESS";
        return callback(refused, "");
      }
      if (options.all) return callback(null, allowed);
      return callback(null, allowed[0]!.address, allowed[0]!.family);
    });
  };
}
