import { execFile } from "node:child_process";
import http from "node:http";
import { promisify } from "node:util";
import autocannon from "autocannon";
import { createLocalJWKSet, jwtVerify } from "jose";
import { createSessionVerifier, type SessionVerifier } from "../src/client/verifier.js";
import { median, type Row } from "./report.js";
import type { Service } from "./run.js";

/**
 * The session-event rows (issue 9), on two instances of the service sharing one database:
 *   - the local verifier (src/client/verifier.ts) against a bare jose.jwtVerify of the same tokens,
 *     in this process: with its cache (tokens seen again) and without (every token a first sight);
 *   - revocation lag: revokes committed through instance A, each timed from A's answer until the
 *     verifier following instance B's feed refuses the token, under verify load on A;
 *   - webhooks: from the API's answer to the receiver's first request, at a steady pace, and the
 *     deliveries per second a burst drains at.
 */
interface EventsOptions {
  a: Service;
  b: Service;
  databaseUrl: string;
  keyEncryptionKey: string;
  tenantId: string;
  secret: string;
  headers: Record<string, string>;
  /** Sessions already created (their access tokens are the verify population). */
  sessions: { access_token: string; session: { id: string } }[];
  seconds: number;
  runs: number;
  isWanted: (name: string) => boolean;
}

const percentile = (values: number[], p: number) => [...values].sort((x, y) => x - y)[Math.min(values.length - 1, Math.floor((values.length * p) / 100))] as number;
/** The ISSUER both instances run with. */
export const benchIssuer = "https://sessions.bench.example";
const issuer = benchIssuer;

/** Calls `verify` over the tokens in turn, 64 at a time, for `seconds`; verifies per second. */
async function verifyRate(verify: (token: string) => Promise<unknown>, tokens: string[], seconds: number): Promise<number> {
  let done = 0;
  let next = 0;
  const until = performance.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (performance.now() < until) {
        await verify(tokens[next++ % tokens.length]!);
        done++;
      }
    }),
  );
  return done / seconds;
}

export async function runEvents(o: EventsOptions): Promise<Row[]> {
  const rows: Row[] = [];
  const verifiers: SessionVerifier[] = [];
  const verifierOn = (service: Service, cacheSize?: number) => {
    const v = createSessionVerifier({ baseUrl: service.url, tenantId: o.tenantId, secretKey: o.secret, issuer, ...(cacheSize === undefined ? {} : { cacheSize }) });
    verifiers.push(v);
    return v;
  };
  try {
    const tokens = o.sessions.map((s) => s.access_token);
    if (o.isWanted("SDK verify")) {
      const jwks = createLocalJWKSet((await (await fetch(`${o.a.url}/.well-known/jwks.json`)).json()) as never);
      const bare = (token: string) => jwtVerify(token, jwks, { algorithms: ["EdDSA"], typ: "at+jwt", issuer, audience: o.tenantId });
      for (const [name, cacheSize] of [
        ["SDK local verify (10,000 tokens, seen again)", undefined],
        ["SDK local verify (every token a first sight)", 0],
      ] as const) {
        const sdk = verifierOn(o.b, cacheSize);
        await sdk.ready;
        const check = await sdk.verify(tokens[0]!);
        if (!check.valid) throw new Error(`the verifier refuses a live token: ${JSON.stringify(check)}`);
        await verifyRate((t) => sdk.verify(t), tokens, 1);
        await verifyRate(bare, tokens, 1);
        const s: number[] = [];
        const b: number[] = [];
        for (let i = 0; i < o.runs; i++) {
          b.push(await verifyRate(bare, tokens, o.seconds));
          s.push(await verifyRate((t) => sdk.verify(t), tokens, o.seconds));
        }
        const row: Row = { name, baselineName: "bare jose.jwtVerify, same tokens, same process", service: median(s), baseline: median(b), ratio: median(s) / median(b), goal: "≥ 0.9×", goalRatio: 0.9, p50Ms: 0, p99Ms: 0, errors: 0 };
        console.log(`${name.padEnd(46)} ${row.service.toFixed(0).padStart(7)}/s vs ${row.baseline.toFixed(0).padStart(7)}/s = ${row.ratio.toFixed(2)}x (goal ≥ 0.9×)${row.ratio >= 0.9 ? "  ok" : "  BELOW GOAL"}`);
        rows.push(row);
        sdk.close();
      }
    }

    if (o.isWanted("revocation lag")) {
      const sdk = verifierOn(o.b);
      await sdk.ready;
      const victims = o.sessions.slice(0, 1_000);
      for (const v of victims) if (!(await sdk.verify(v.access_token)).valid) throw new Error("a victim's token is not valid before its revoke");
      // Verify load on instance A throughout (the service's REST verify, 16 connections).
      let nextToken = 0;
      const bodies = tokens.slice(1_000).map((token) => JSON.stringify({ token }));
      let loadResult: (result: autocannon.Result) => void = () => undefined;
      const loaded = new Promise<autocannon.Result>((resolve) => (loadResult = resolve));
      const load = autocannon(
        {
        url: `${o.a.url}/v1/sessions/verify`,
        connections: 16,
        duration: 3_600,
          requests: [{ method: "POST", headers: o.headers, setupRequest: (req) => ({ ...req, body: bodies[nextToken++ % bodies.length] }) }],
        },
        (_err, result) => loadResult(result),
      );
      const lags: number[] = [];
      const watching = new Map<string, number>();
      let isDone = false;
      // Each pending revoke's token is checked every millisecond until the verifier refuses it.
      const watcher = (async () => {
        while (!isDone || watching.size > 0) {
          for (const [token, ackedAt] of watching) {
            const r = await sdk.verify(token);
            if (!r.valid && r.error.code === "session_revoked") {
              lags.push(performance.now() - ackedAt);
              watching.delete(token);
            }
          }
          await new Promise((resolve) => setTimeout(resolve, 1));
        }
      })();
      // 1,000 revokes, 8 at a time (about 100 a second on this machine).
      let next = 0;
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          for (let i = next++; i < victims.length; i = next++) {
            const victim = victims[i]!;
            const res = await fetch(`${o.a.url}/v1/sessions/${victim.session.id}`, { method: "DELETE", headers: { authorization: o.headers.authorization!, "x-tenant-id": o.tenantId } });
            if (res.status !== 204) throw new Error(`revoke answered ${res.status}`);
            watching.set(victim.access_token, performance.now());
            await new Promise((resolve) => setTimeout(resolve, 60));
          }
        }),
      );
      isDone = true;
      await watcher;
      load.stop();
      const verifyLoad = await loaded;
      const p99 = percentile(lags, 99);
      const note = `${lags.length} revokes: p50 ${percentile(lags, 50).toFixed(0)} ms, p99 ${p99.toFixed(0)} ms, max ${Math.max(...lags).toFixed(0)} ms (under ${Math.round(verifyLoad.requests.average)} verify/s on A)`;
      console.log(`${"revocation lag, A → local verifier on B".padEnd(46)} ${note} (goal p99 < 1 s)${p99 < 1000 ? "  ok" : "  BELOW GOAL"}`);
      rows.push({ name: "revocation lag, A → local verifier on B", baselineName: "", service: 0, baseline: 0, ratio: 0, goal: "p99 < 1 s", goalRatio: undefined, p50Ms: percentile(lags, 50), p99Ms: p99, errors: 0, note, isMet: p99 < 1000 });
    }

    if (o.isWanted("webhook")) rows.push(...(await webhookRows(o)));
  } finally {
    for (const v of verifiers) v.close();
  }
  return rows;
}

async function webhookRows(o: EventsOptions): Promise<Row[]> {
  const arrivals = new Map<string, number>();
  const receiver = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString()));
    req.on("end", () => {
      const id = (JSON.parse(body) as { data: { session_id: string } }).data.session_id;
      if (!arrivals.has(id)) arrivals.set(id, performance.now());
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  try {
    const url = `http://127.0.0.1:${(receiver.address() as { port: number }).port}/hook`;
    await promisify(execFile)(process.execPath, ["bin/sessionctl.js", "webhooks", "create", "--tenant", o.tenantId, "--url", url, "--events", "session.created"], {
      env: { ...process.env, DATABASE_URL: o.databaseUrl, KEY_ENCRYPTION_KEY: o.keyEncryptionKey, WEBHOOK_ALLOW_PRIVATE: "true" },
    });
    const createOne = async (userId: string) => {
      const res = await fetch(`${o.a.url}/v1/sessions`, { method: "POST", headers: o.headers, body: JSON.stringify({ user_id: userId }) });
      if (res.status !== 201) throw new Error(`create answered ${res.status}`);
      return { id: ((await res.json()) as { session: { id: string } }).session.id, ackedAt: performance.now() };
    };
    const waitFor = async (ids: string[]) => {
      const until = performance.now() + 120_000;
      while (ids.some((id) => !arrivals.has(id)) && performance.now() < until) await new Promise((resolve) => setTimeout(resolve, 5));
    };
    // Latency: 500 sessions at a steady pace (about 50 a second).
    const paced: { id: string; ackedAt: number }[] = [];
    for (let i = 0; i < 500; i++) {
      paced.push(await createOne(`usr_hook_${i % 50}`));
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await waitFor(paced.map((p) => p.id));
    const lags = paced.filter((p) => arrivals.has(p.id)).map((p) => arrivals.get(p.id)! - p.ackedAt);
    const latencyNote = `${lags.length} of ${paced.length} delivered: p50 ${percentile(lags, 50).toFixed(0)} ms, p99 ${percentile(lags, 99).toFixed(0)} ms from the API's answer to the first attempt`;
    console.log(`${"webhook delivery latency".padEnd(46)} ${latencyNote}`);
    // Throughput: 5,000 sessions as fast as 32 callers create them; deliveries per second drained.
    const burst: { id: string; ackedAt: number }[] = [];
    let next = 0;
    const burstStart = performance.now();
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        for (let i = next++; i < 5_000; i = next++) burst.push(await createOne(`usr_burst_${i % 500}`));
      }),
    );
    const createdIn = (performance.now() - burstStart) / 1000;
    await waitFor(burst.map((b) => b.id));
    const times = burst.filter((b) => arrivals.has(b.id)).map((b) => arrivals.get(b.id)!);
    const drainedIn = (Math.max(...times) - burstStart) / 1000;
    const rate = times.length / drainedIn;
    const throughputNote = `${times.length} of ${burst.length} delivered in ${drainedIn.toFixed(1)} s: ${rate.toFixed(0)} deliveries/s (created at ${(burst.length / createdIn).toFixed(0)}/s)`;
    console.log(`${"webhook deliveries, a burst of 5,000".padEnd(46)} ${throughputNote}`);
    return [
      { name: "webhook delivery latency", baselineName: "", service: 0, baseline: 0, ratio: 0, goal: "measured", goalRatio: undefined, p50Ms: percentile(lags, 50), p99Ms: percentile(lags, 99), errors: paced.length - lags.length, note: latencyNote },
      { name: "webhook deliveries, a burst of 5,000", baselineName: "", service: rate, baseline: 0, ratio: 0, goal: "measured", goalRatio: undefined, p50Ms: 0, p99Ms: 0, errors: burst.length - times.length, note: throughputNote },
    ];
  } finally {
    await new Promise((resolve) => receiver.close(resolve));
  }
}
