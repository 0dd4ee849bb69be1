import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dropDatabase, freshDatabaseUrl } from "./helpers/db.js";

/** sessionctl as an operator runs it, against a database of its own. */

const run = promisify(execFile);
const databaseUrl = freshDatabaseUrl();
const sessionctl = (...args: string[]) => run(process.execPath, ["bin/sessionctl.js", ...args], { env: { ...process.env, DATABASE_URL: databaseUrl } });
let tenantId: string;

beforeAll(async () => {
  tenantId = (JSON.parse((await sessionctl("tenants", "create", "--name", "CLI", "--json")).stdout) as { tenant_id: string }).tenant_id;
});
afterAll(async () => {
  await dropDatabase(databaseUrl);
});

describe("sessionctl", () => {
  it("prints instants at the whole second, as the API does", async () => {
    const { stdout } = await sessionctl("tenants", "list", "--json");
    const { data } = JSON.parse(stdout) as { data: { created_at: string }[] };
    for (const t of data) expect(t.created_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  });

  it("names the flag in a policy error, not the field it sets, and exits 1", async () => {
    const err = (await sessionctl("policy", "set", "--tenant", tenantId, "--refresh-grace", "0").catch((e: unknown) => e)) as { code: number; stderr: string };
    expect(err.code).toBe(1);
    expect(err.stderr).toContain("--refresh-grace must be an integer from 1 to 300");
    expect(err.stderr).not.toContain("refreshGraceSeconds");
  });
});
