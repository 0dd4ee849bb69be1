import { execFile, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startChildServer, type ChildServer } from "../helpers/child-server.js";

/**
 * The reported HTTP/2 attack, against the real service in its own process with the 256 MB heap it
 * once died in: h2c connections opening streams with HEADERS and no END_STREAM or DATA, while other
 * clients measure health and verify. Serial suite: it loads the machine and measures latency, so it
 * runs alone (`npm run test:faults`, vitest.faults.config.ts).
 */

const run = promisify(execFile);
type Json = Record<string, any>;

describe("HTTP/2 streams opened and never finished", () => {
  let server: ChildServer;
  let token: string;
  let headers: Record<string, string>;

  beforeAll(async () => {
    // The heap the reported attack killed the process with.
    server = await startChildServer({ NODE_OPTIONS: "--max-old-space-size=256" });
    const created = JSON.parse(
      (await run(process.execPath, ["bin/sessionctl.js", "tenants", "create", "--name", "Target", "--json"], { env: { ...process.env, DATABASE_URL: server.databaseUrl } })).stdout,
    ) as { tenant_id: string; secret_key: string };
    headers = { authorization: `Bearer ${created.secret_key}`, "x-tenant-id": created.tenant_id };
    const session = (await (await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: '{"user_id":"u"}' })).json()) as Json;
    token = session.access_token;
  }, 90_000);
  afterAll(async () => {
    await server?.stop();
  });

  it("300 connections × 100 pending streams: the process (256 MB heap) stays up, memory stays bounded, health and verify answer others within 1 s", async () => {
    const verifyOnce = async () => {
      const started = performance.now();
      const res = await fetch(`${server.url}/v1/sessions/verify`, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: JSON.stringify({ token }) });
      const body = (await res.json()) as Json;
      return { ms: performance.now() - started, isValid: res.status === 200 && body.valid === true };
    };
    const healthOnce = async () => {
      const started = performance.now();
      const res = await fetch(`${server.url}/healthz`);
      await res.arrayBuffer();
      return { ms: performance.now() - started, isOk: res.status === 200 };
    };
    /** The server's V8 heap in use (what the attack used to fill), from its own metrics. */
    const heapUsed = async () => Number(/^nodejs_heap_size_used_bytes (\S+)$/m.exec(await (await fetch(`${server.url}/metrics`)).text())?.[1]);
    // Warm up, then take the resting footprint.
    for (let i = 0; i < 20; i++) await verifyOnce();
    const before = await server.rss();
    const heapBefore = await heapUsed();

    const flood = spawn(process.execPath, ["--import", "tsx", "test/helpers/h2-flood.ts", server.url, "300", "100", JSON.stringify(headers)], {
      stdio: ["pipe", "pipe", "inherit"],
    });
    const lines = createInterface({ input: flood.stdout! });
    const reports: Json[] = [];
    lines.on("line", (line) => reports.push(JSON.parse(line) as Json));
    let peakRss = before;
    let peakHeap = heapBefore;
    const probes: { ms: number; isOk: boolean }[] = [];
    try {
      // While the attack builds up and once it is all open, other clients are served.
      for (let round = 0; reports.length === 0 || round < 20; round++) {
        const [health, verify] = await Promise.all([healthOnce(), verifyOnce()]);
        probes.push(health, { ms: verify.ms, isOk: verify.isValid });
        peakRss = Math.max(peakRss, await server.rss());
        peakHeap = Math.max(peakHeap, await heapUsed());
        await sleep(100);
        if (round > 600) throw new Error("the attacker never finished opening its streams");
      }
    } finally {
      const exited = new Promise((resolve) => flood.once("exit", resolve));
      flood.stdin!.end();
      await exited;
    }
    const [{ opened }, { reset }] = reports as [{ opened: number }, { reset: number }];
    expect(opened).toBe(30_000);
    expect(server.isAlive()).toBe(true);
    expect(probes.every((p) => p.isOk)).toBe(true);
    expect(Math.max(...probes.map((p) => p.ms)), JSON.stringify(probes.map((p) => Math.round(p.ms)))).toBeLessThan(1_000);
    // The oldest pending streams were reset to keep at most 1,000 pending.
    expect(reset).toBeGreaterThan(20_000);
    const mib = (bytes: number) => Math.round(bytes / 2 ** 20);
    console.log(
      `pending-stream attack: heap used ${mib(heapBefore)} MiB before, peak ${mib(peakHeap)} MiB; rss ${mib(before)} → ${mib(peakRss)} MiB; ` +
        `${reset} of ${opened} streams reset, ${probes.length} probes, slowest ${Math.round(Math.max(...probes.map((p) => p.ms)))} ms`,
    );
    // Live memory stays bounded (it grew by ~600 MB before streams were bounded and evicted).
    expect(peakHeap - heapBefore).toBeLessThan(100 * 2 ** 20);
    // Still serving once the attackers left.
    expect((await verifyOnce()).isValid).toBe(true);
  }, 120_000);
});

