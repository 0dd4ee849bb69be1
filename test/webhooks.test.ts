import { execFile } from "node:child_process";
import http from "node:http";
import { promisify } from "node:util";
import { Webhook } from "standardwebhooks";
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { newId, seal } from "../src/domain/secrets.js";
import { persistentFailureReason, retryDelaysSeconds } from "../src/domain/webhooks.js";
import { createWebhookStore } from "../src/store/webhook-store.js";
import { manualClock } from "./helpers/clock.js";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * Webhooks end to end: endpoints registered with sessionctl, the dispatcher run step by step
 * (dispatchOnce) on a clock the test moves, a real HTTP receiver that checks every signature with
 * the `standardwebhooks` library.
 */

const clock = manualClock(new Date());
let server: TestServer;

beforeAll(async () => {
  server = await startTestServer({ clock, env: { WEBHOOK_ALLOW_PRIVATE: "true" } });
});
afterAll(async () => {
  await server?.close();
});
// Receivers check that a message's timestamp is recent: each test starts at the real time.
beforeEach(() => clock.set(new Date()));

const run = promisify(execFile);
async function sessionctl(args: string[], env: Record<string, string> = { WEBHOOK_ALLOW_PRIVATE: "true" }) {
  const { stdout } = await run(process.execPath, ["bin/sessionctl.js", ...args, "--json"], { env: { ...process.env, DATABASE_URL: server.config.databaseUrl, ...env } });
  return JSON.parse(stdout) as Record<string, any>;
}

interface Received {
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A webhook receiver on a free port: answers each request with the next status of `statuses` (then the last one). */
async function startReceiver(statuses: number[] = [204]) {
  const received: Received[] = [];
  let answered = 0;
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (chunk: Buffer) => (body += chunk.toString()));
    req.on("end", () => {
      received.push({ headers: req.headers, body });
      res.statusCode = statuses[Math.min(answered++, statuses.length - 1)]!;
      res.end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}/hook`,
    received,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

async function create(userId: string, headers = server.tenant.headers, target = server) {
  const res = await fetch(`${target.url}/v1/sessions`, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: JSON.stringify({ user_id: userId }) });
  expect(res.status).toBe(201);
  return (await res.json()) as { session: { id: string } };
}
const revoke = async (id: string) => expect((await fetch(`${server.url}/v1/sessions/${id}`, { method: "DELETE", headers: server.tenant.headers })).status).toBe(204);

/** Numbers what is committed, then runs the dispatcher: one round of queueing and attempts. */
async function dispatch(): Promise<number> {
  while (((await server.services.eventSequencer.sequenceOnce()) ?? 0) > 0);
  return (await server.services.webhookDispatcher.dispatchOnce()) ?? 0;
}

const payload = (r: Received) => JSON.parse(r.body) as { type: string; timestamp: string; data: Record<string, any> };

describe("webhooks", () => {
  it("deliver the events an endpoint asked for, signed per Standard Webhooks, verified by the standardwebhooks library", async () => {
    const receiver = await startReceiver();
    try {
      const endpoint = await sessionctl(["webhooks", "create", "--tenant", server.tenant.id, "--url", receiver.url, "--events", "session.revoked"]);
      expect(endpoint).toMatchObject({ webhook_id: expect.stringMatching(/^whk_/), events: ["session.revoked"], enabled: true, secret: expect.stringMatching(/^whsec_/) });
      const s = await create("usr_hook_basic");
      await revoke(s.session.id);
      await dispatch();
      expect(receiver.received).toHaveLength(1);
      const [message] = receiver.received;
      // The library checks the signature and that the timestamp is recent; it throws otherwise.
      new Webhook(endpoint.secret as string).verify(message!.body, message!.headers as Record<string, string>);
      expect(() => new Webhook(`whsec_${Buffer.alloc(24, 1).toString("base64")}`).verify(message!.body, message!.headers as Record<string, string>)).toThrow();
      const body = payload(message!);
      expect(body).toMatchObject({ type: "session.revoked", data: { type: "session.revoked", session_id: s.session.id, user_id: "usr_hook_basic", reason: "revoked", revoked_by: server.tenant.keyId } });
      // The message id is the event's cursor: the same on every attempt, and it resumes the SSE feed.
      expect(message!.headers["webhook-id"]).toBe(body.data.cursor);
      expect(message!.headers["content-type"]).toBe("application/json");
      // Nothing more to send; a second round sends nothing again.
      expect(await dispatch()).toBe(0);
      expect(receiver.received).toHaveLength(1);
      await sessionctl(["webhooks", "delete", "--tenant", server.tenant.id, "--id", endpoint.webhook_id]);
    } finally {
      await receiver.close();
    }
  });

  it("retry failures on the schedule, record every attempt, disable an endpoint that fails for over 24 h, and deliver what it missed once enabled", async () => {
    const flaky = await startReceiver([500, 503, 204]);
    const dead = await startReceiver([500]);
    try {
      const flakyHook = await sessionctl(["webhooks", "create", "--tenant", server.tenant.id, "--url", flaky.url, "--events", "session.created"]);
      const deadHook = await sessionctl(["webhooks", "create", "--tenant", server.tenant.id, "--url", dead.url, "--events", "session.created"]);
      const first = await create("usr_hook_retry");
      await dispatch();
      expect([flaky.received.length, dead.received.length]).toEqual([1, 1]);
      // Not due yet: nothing is sent.
      await dispatch();
      expect(flaky.received).toHaveLength(1);
      clock.advance(retryDelaysSeconds[0] * 1000);
      await dispatch();
      clock.advance(retryDelaysSeconds[1] * 1000);
      await dispatch();
      expect(flaky.received).toHaveLength(3);
      expect(new Set(flaky.received.map((r) => r.headers["webhook-id"])).size).toBe(1);
      const attempts = await sessionctl(["webhooks", "attempts", "--tenant", server.tenant.id, "--id", flakyHook.webhook_id]);
      expect(attempts.data.map((a: { status: number }) => a.status)).toEqual([204, 503, 500]);

      // The dead endpoint: every attempt of the schedule fails (8 over 27 h), then it is disabled.
      for (const delay of retryDelaysSeconds.slice(2)) {
        clock.advance(delay * 1000);
        await dispatch();
      }
      expect(dead.received).toHaveLength(retryDelaysSeconds.length + 1);
      expect(dead.received.every((r) => payload(r).data.session_id === first.session.id)).toBe(true);
      const listed = (await sessionctl(["webhooks", "list", "--tenant", server.tenant.id])).data as Record<string, any>[];
      expect(listed.find((e) => e.webhook_id === deadHook.webhook_id)).toMatchObject({ enabled: false, disabled_reason: persistentFailureReason, deliveries: { failed: 1, pending: 0 } });
      expect(listed.find((e) => e.webhook_id === flakyHook.webhook_id)).toMatchObject({ enabled: true, deliveries: { delivered: 1 } });

      // While disabled it gets nothing; enabled again, it gets what happened meanwhile.
      const missed = await create("usr_hook_missed");
      await dispatch();
      expect(dead.received).toHaveLength(retryDelaysSeconds.length + 1);
      expect(await sessionctl(["webhooks", "enable", "--tenant", server.tenant.id, "--id", deadHook.webhook_id])).toEqual({ webhook_id: deadHook.webhook_id, enabled: true });
      await dispatch();
      expect(payload(dead.received.at(-1)!).data.session_id).toBe(missed.session.id);
      await sessionctl(["webhooks", "delete", "--tenant", server.tenant.id, "--id", deadHook.webhook_id]);
      await sessionctl(["webhooks", "delete", "--tenant", server.tenant.id, "--id", flakyHook.webhook_id]);
    } finally {
      await flaky.close();
      await dead.close();
    }
  });

  it("after rotate-secret, sign with the new secret and, for a day, the old one", async () => {
    const receiver = await startReceiver();
    try {
      const hook = await sessionctl(["webhooks", "create", "--tenant", server.tenant.id, "--url", receiver.url, "--events", "session.created"]);
      const rotated = await sessionctl(["webhooks", "rotate-secret", "--tenant", server.tenant.id, "--id", hook.webhook_id]);
      expect(rotated.secret).not.toBe(hook.secret);
      await create("usr_hook_rotate");
      await dispatch();
      const [message] = receiver.received;
      expect((message!.headers["webhook-signature"] as string).split(" ")).toHaveLength(2);
      for (const secret of [hook.secret, rotated.secret]) new Webhook(secret as string).verify(message!.body, message!.headers as Record<string, string>);
      await sessionctl(["webhooks", "delete", "--tenant", server.tenant.id, "--id", hook.webhook_id]);
    } finally {
      await receiver.close();
    }
  });

  it("keep tenants apart: an endpoint hears only its tenant's sessions; another tenant cannot touch it", async () => {
    const other = await server.addTenant("Other");
    const receiver = await startReceiver();
    try {
      const hook = await sessionctl(["webhooks", "create", "--tenant", server.tenant.id, "--url", receiver.url, "--events", "session.created"]);
      await create("usr_hook_theirs", other.headers);
      const ours = await create("usr_hook_ours");
      await dispatch();
      expect(receiver.received.map((r) => payload(r).data.session_id)).toEqual([ours.session.id]);
      const err = (await sessionctl(["webhooks", "delete", "--tenant", other.id, "--id", hook.webhook_id]).catch((e: unknown) => e)) as { code: number; stderr: string };
      expect([err.code, err.stderr]).toEqual([1, expect.stringContaining(`no webhook ${hook.webhook_id} for tenant ${other.id}`)]);
      await sessionctl(["webhooks", "delete", "--tenant", server.tenant.id, "--id", hook.webhook_id]);
    } finally {
      await receiver.close();
    }
  });

  it("refuse bad registrations with a clear error: private addresses (unless allowed), other schemes, unknown event types", async () => {
    const refused = async (args: string[], env?: Record<string, string>) => {
      const err = (await sessionctl(["webhooks", "create", "--tenant", server.tenant.id, ...args], env).catch((e: unknown) => e)) as { code: number; stderr: string };
      expect(err.code, args.join(" ")).toBe(1);
      return err.stderr;
    };
    const strict = { WEBHOOK_ALLOW_PRIVATE: "false" };
    for (const url of ["http://127.0.0.1:9/x", "http://localhost:9/x", "http://10.1.2.3/x", "http://169.254.169.254/latest", "http://[::1]:9/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/"]) {
      expect(await refused(["--url", url], strict)).toContain("private or reserved address");
    }
    expect(await refused(["--url", "ftp://example.com/x"])).toContain("must be http or https");
    expect(await refused(["--url", "https://user:pw@example.com/x"])).toContain("must not carry credentials");
    expect(await refused(["--url", "not a url"])).toContain("is not an absolute URL");
    expect(await refused(["--url", "https://example.com/x", "--events", "session.revoked,session.deleted"])).toContain('unknown event type "session.deleted"');
    expect(await refused(["--url", "https://example.com/x", "--events", ""])).toContain("at least one event type");
    for (const url of ["http://[::127.0.0.1]/", "http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::]/", "http://2130706433/", "http://127.1/"]) {
      expect(await refused(["--url", url], { WEBHOOK_ALLOW_PRIVATE: "false" }), url).toContain("private or reserved address");
    }
    const err = (await sessionctl(["webhooks", "attempts", "--tenant", server.tenant.id, "--id", "whk_01ARZ3NDEKTSV4RRFFQ69G5FAV"]).catch((e: unknown) => e)) as { code: number; stderr: string };
    expect([err.code, err.stderr]).toEqual([1, expect.stringContaining("no webhook whk_01ARZ3NDEKTSV4RRFFQ69G5FAV")]);
    expect((await sessionctl(["webhooks", "list", "--tenant", server.tenant.id])).data).toEqual([]);
  });
});

describe("webhooks to private addresses", () => {
  it("are refused at delivery too when WEBHOOK_ALLOW_PRIVATE is off (a name can resolve elsewhere later), and recorded as failed attempts", async () => {
    const strict = await startTestServer({ clock, env: { WEBHOOK_ALLOW_PRIVATE: "false" } });
    const receiver = await startReceiver();
    try {
      const store = createWebhookStore(strict.services.pool);
      // The start-up key event numbered first: the endpoints hear only the session below.
      while (((await strict.services.eventSequencer.sequenceOnce()) ?? 0) > 0);
      const port = new URL(receiver.url).port;
      // As if both names had resolved to a public address at registration.
      for (const url of [`http://localhost:${port}/hook`, `http://127.0.0.1:${port}/hook`]) {
        const id = newId("whk");
        const endpoint = { id, tenantId: strict.tenant.id, url, eventTypes: [], isEnabled: true, disabledReason: null, position: await strict.services.eventStore.headSeq(), createdAt: clock.now() };
        await store.createEndpoint(endpoint, seal(strict.config.keyEncryptionKey, id, Buffer.from(`whsec_${Buffer.alloc(24, 7).toString("base64")}`)));
      }
      await fetch(`${strict.url}/v1/sessions`, { method: "POST", headers: { ...strict.tenant.headers, "content-type": "application/json" }, body: '{"user_id":"usr_hook_private"}' });
      while (((await strict.services.eventSequencer.sequenceOnce()) ?? 0) > 0);
      expect(await strict.services.webhookDispatcher.dispatchOnce()).toBe(2);
      expect(receiver.received).toEqual([]);
      const endpoints = await store.listEndpoints(strict.tenant.id);
      const errors = (await Promise.all(endpoints.map((e) => store.listAttempts(strict.tenant.id, e.id, 10)))).flat().map((a) => [a.status, a.error]);
      expect(errors).toEqual([
        [null, expect.stringMatching(/EBLOCKEDADDRESS|private or reserved/)],
        [null, expect.stringMatching(/EBLOCKEDADDRESS|private or reserved/)],
      ]);
    } finally {
      await receiver.close();
      await strict.close();
    }
  });
});

describe("webhook dispatch under a slow endpoint", () => {
  it("one tenant's endpoint that does not answer holds at most its own few slots; another tenant's deliveries go on", async () => {
    const own = await startTestServer({ env: { WEBHOOK_ALLOW_PRIVATE: "true", WEBHOOK_POLL_INTERVAL_MS: "20", EVENT_POLL_INTERVAL_MS: "10" } });
    // The slow receiver answers nothing until the test lets it.
    const held: http.ServerResponse[] = [];
    const slow = http.createServer((_req, res) => void held.push(res));
    await new Promise<void>((resolve) => slow.listen(0, "127.0.0.1", resolve));
    const fast = await startReceiver();
    try {
      const other = await own.addTenant("Slow");
      const store = createWebhookStore(own.services.pool);
      const register = async (tenantId: string, url: string) => {
        const id = newId("whk");
        const endpoint = { id, tenantId, url, eventTypes: ["session.created" as const], isEnabled: true, disabledReason: null, position: await own.services.eventStore.headSeq(), createdAt: new Date() };
        await store.createEndpoint(endpoint, seal(own.config.keyEncryptionKey, id, Buffer.from(`whsec_${Buffer.alloc(24, 9).toString("base64")}`)));
      };
      await register(other.id, `http://127.0.0.1:${(slow.address() as { port: number }).port}/hook`);
      await register(own.tenant.id, fast.url);
      own.services.eventSequencer.start();
      own.services.webhookDispatcher.start();
      for (let i = 0; i < 20; i++) await create(`usr_slow_${i}`, other.headers, own);
      await vi.waitFor(() => expect(held.length).toBe(8), { timeout: 10_000, interval: 20 });
      const mine = await create("usr_fast", own.tenant.headers, own);
      await vi.waitFor(() => expect(fast.received.map((r) => payload(r).data.session_id)).toContain(mine.session.id), { timeout: 10_000, interval: 20 });
      // Still only eight (half the slots) in flight to the slow one.
      expect(held.length).toBe(8);
    } finally {
      for (const res of held) res.end();
      await own.close();
      await new Promise((resolve) => slow.close(resolve));
      await fast.close();
    }
  });

  it("claims a due delivery for one dispatcher only, however many ask at once", async () => {
    const store = createWebhookStore(server.services.pool);
    const receiver = await startReceiver();
    try {
      const hook = await sessionctl(["webhooks", "create", "--tenant", server.tenant.id, "--url", receiver.url, "--events", "session.created"]);
      for (let i = 0; i < 6; i++) await create(`usr_claim_${i}`);
      while (((await server.services.eventSequencer.sequenceOnce()) ?? 0) > 0);
      // Queue them (a dispatch round would also send them): the endpoint's events from its position.
      const endpoint = (await store.listEndpoints(server.tenant.id)).find((e) => e.id === hook.webhook_id)!;
      const page = await server.services.eventStore.readTenantAfter(server.tenant.id, endpoint.position, 100);
      await store.queue(endpoint.id, endpoint.position, page.at(-1)!.seq, page.filter((e) => e.type === "session.created").map((e) => e.seq), clock.now());
      const due = (await store.dueDeliveries(clock.now(), 100, 100)).filter((d) => d.endpointId === endpoint.id);
      expect(due).toHaveLength(6);
      const claims = await Promise.all([0, 1, 2, 3].map((i) => store.claim(due, clock.now(), new Date(clock.now().getTime() + 15_000 + i))));
      const all = claims.flat().map((d) => d.seq);
      expect(new Set(all).size).toBe(all.length);
      expect(all.sort()).toEqual(due.map((d) => d.seq).sort());
      await sessionctl(["webhooks", "delete", "--tenant", server.tenant.id, "--id", hook.webhook_id]);
    } finally {
      await receiver.close();
    }
  });
});
