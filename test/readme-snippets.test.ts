import { execFile } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./helpers/server.js";

/** The README's code that a user pastes, run as pasted against a real server (only its address moved to the test's port). */
let server: TestServer;
beforeAll(async () => {
  server = await startTestServer({ env: { ISSUER: "http://localhost:8080" } });
});
afterAll(async () => {
  await server?.close();
});

function snippet(name: string): string {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const match = new RegExp(`<!-- snippet: ${name.replace(".", "\\.")}[^>]*-->\\n\`\`\`\\w*\\n([\\s\\S]*?)\`\`\``).exec(readme);
  if (!match) throw new Error(`README has no snippet ${name}`);
  return match[1]!;
}

describe("README snippets", () => {
  it("verify-locally.mjs verifies a fresh access token with jose, and refuses another tenant's", async () => {
    const created = await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { ...server.tenant.headers, "content-type": "application/json" }, body: '{"user_id":"usr_readme","role":"admin"}' });
    const { access_token: token, session } = (await created.json()) as { access_token: string; session: { id: string } };
    // Inside the project, so that `jose` resolves from its node_modules.
    const file = new URL(`./.snippet-${process.pid}.mjs`, import.meta.url);
    writeFileSync(file, snippet("verify-locally.mjs").replace("http://localhost:8080/.well-known", `${server.url}/.well-known`));
    try {
      const run = (tenant: string) => promisify(execFile)(process.execPath, [file.pathname], { env: { ...process.env, TOKEN: token, TNT: tenant } });
      const { stdout } = await run(server.tenant.id);
      expect(stdout.trim()).toBe(`usr_readme ${session.id} admin`);
      const other = await run("tnt_someone_else").catch((e: unknown) => e as { code: number; stderr: string });
      expect((other as { code: number }).code).toBe(1);
      expect((other as { stderr: string }).stderr).toContain('unexpected "aud" claim value');
    } finally {
      rmSync(file, { force: true });
    }
  });
});
