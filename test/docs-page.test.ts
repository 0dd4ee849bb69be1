import { existsSync, mkdirSync } from "node:fs";
import { type Browser, type Page, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./helpers/server.js";

/**
 * GET /docs in headless Chromium (Debian's `chromium` package, driven by playwright-core): the
 * reference page loads from this server alone, under its Content-Security-Policy, with no console
 * error, and shows every operation of /openapi.json. It leaves a screenshot in test-artifacts/.
 */

const chromiumPath = (process.env.CHROMIUM_PATH ? [process.env.CHROMIUM_PATH] : ["/usr/bin/chromium", "/usr/bin/chromium-browser"]).find((p) => existsSync(p));
const screenshotPath = new URL("../test-artifacts/docs.png", import.meta.url).pathname;

let server: TestServer;
let browser: Browser;

beforeAll(async () => {
  if (chromiumPath === undefined) {
    throw new Error("the /docs browser test needs Chromium: install it with `apt-get install -y chromium` (or set CHROMIUM_PATH to a Chromium binary)");
  }
  server = await startTestServer();
  browser = await chromium.launch({ executablePath: chromiumPath });
});
afterAll(async () => {
  await browser?.close();
  await server?.close();
});

/** A page that records console errors, uncaught exceptions, failed requests and any request leaving the server. */
async function openPage(): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems: string[] = [];
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`exception: ${error.message}`));
  page.on("requestfailed", (request) => problems.push(`failed: ${request.url()} ${request.failure()?.errorText ?? ""}`));
  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(`${server.url}/`) || url.startsWith("data:")) return route.continue();
    problems.push(`left the server: ${url}`);
    return route.abort();
  });
  return { page, problems };
}

describe("GET /docs", () => {
  it("renders every operation of /openapi.json offline, with no console error", async () => {
    const doc = (await (await fetch(`${server.url}/openapi.json`)).json()) as {
      paths: Record<string, Record<string, { operationId: string; tags: string[] }>>;
    };
    const operations = Object.entries(doc.paths).flatMap(([path, byMethod]) =>
      Object.entries(byMethod).map(([method, op]) => ({ path, method, id: `operations-${op.tags[0]}-${op.operationId}` })),
    );
    expect(operations.length).toBeGreaterThan(0);

    const { page, problems } = await openPage();
    const response = await page.goto(`${server.url}/docs`);
    expect(response?.status()).toBe(200);
    expect(response?.headers()["content-security-policy"]).toContain("script-src 'self'");

    for (const { path, method, id } of operations) {
      const block = page.locator(`[id="${id}"]`);
      await block.waitFor();
      expect(await block.locator(".opblock-summary-method").innerText()).toBe(method.toUpperCase());
      expect(await block.locator(".opblock-summary-path").getAttribute("data-path")).toBe(path);
    }
    expect(await page.locator(".opblock").count()).toBe(operations.length);
    mkdirSync(new URL("../test-artifacts/", import.meta.url), { recursive: true });
    await page.screenshot({ path: screenshotPath, fullPage: true });

    // Open every operation: parameters, request bodies and responses render too.
    for (const { id } of operations) {
      const block = page.locator(`[id="${id}"]`);
      await block.locator(".opblock-summary-control").click();
      await block.locator(".responses-table").first().waitFor();
    }
    expect(problems).toEqual([]);
    await page.close();
  });

  it("serves the page and its assets from this server, under a Content-Security-Policy without inline code", async () => {
    const res = await fetch(`${server.url}/docs`);
    const html = await res.text();
    const csp = res.headers.get("content-security-policy") ?? "";
    expect(csp).toMatch(/default-src 'none'/);
    expect(csp).not.toMatch(/unsafe-inline|unsafe-eval|https?:/);
    expect(res.headers.get("content-type")).toMatch(/^text\/html/);
    // Every script and stylesheet the page names is ours, and answers.
    const assets = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map(([, url]) => url as string);
    expect(assets.length).toBeGreaterThan(0);
    expect(html).not.toMatch(/<script>|<style>| on\w+=/);
    for (const asset of assets) {
      expect(asset.startsWith("/docs/"), asset).toBe(true);
      const answer = await fetch(`${server.url}${asset}`);
      expect(answer.status, asset).toBe(200);
      await answer.arrayBuffer();
    }
  });
});
