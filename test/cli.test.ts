import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dropDatabase, freshDatabaseUrl } from "./helpers/db.js";

/** sessionctl as an operator runs it, against a database of its own. */

const run = promisify(execFile);
const databaseUrl = freshDatabaseUrl();
const sessionctlWith = (env: Record<string, string>, ...args: string[]) =>
  run(process.execPath, ["bin/sessionctl.js", ...args], { env: { ...process.env, DATABASE_URL: databaseUrl, ...env } });
const sessionctl = (...args: string[]) => sessionctlWith({}, ...args);
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

  it("refuses to rotate or revoke signing keys with a KEY_ENCRYPTION_KEY that decrypts none of the stored ones, and writes nothing", async () => {
    const first = JSON.parse((await sessionctl("signing-keys", "rotate", "--json")).stdout) as { kid: string };
    const wrongKek = { KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64url") };
    for (const args of [["signing-keys", "rotate"], ["signing-keys", "revoke", "--kid", first.kid]]) {
      const err = (await sessionctlWith(wrongKek, ...args).catch((e: unknown) => e)) as { code: number; stderr: string };
      expect(err.code, args.join(" ")).toBe(1);
      expect(err.stderr).toContain("KEY_ENCRYPTION_KEY does not decrypt any signing key");
    }
    const { data } = JSON.parse((await sessionctl("signing-keys", "list", "--json")).stdout) as { data: { kid: string; revoked_at: string | null }[] };
    expect(data).toEqual([expect.objectContaining({ kid: first.kid, revoked_at: null })]);
  });

  it("prints its version, says in its help where it connects, and exits 1 naming an unknown tenant on every subcommand that takes one", async () => {
    expect((await sessionctl("--version")).stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
    expect((await sessionctl("--help")).stdout).toContain("DATABASE_URL");
    const unknown = "tnt_01ARZ3NDEKTSV4RRFFQ69G5FAV";
    for (const args of [
      ["keys", "create", "--tenant", unknown],
      ["keys", "list", "--tenant", unknown],
      ["keys", "revoke", "--tenant", unknown, "--key", "key_01ARZ3NDEKTSV4RRFFQ69G5FAV"],
      ["policy", "get", "--tenant", unknown],
      ["policy", "set", "--tenant", unknown, "--refresh-grace", "5"],
      ["webhooks", "list", "--tenant", unknown],
      ["webhooks", "create", "--tenant", unknown, "--url", "https://example.com/hook"],
      ["webhooks", "delete", "--tenant", unknown, "--id", "whk_01ARZ3NDEKTSV4RRFFQ69G5FAV"],
    ]) {
      const err = (await sessionctl(...args).catch((e: unknown) => e)) as { code: number; stderr: string };
      expect(err.code, args.join(" ")).toBe(1);
      expect(err.stderr, args.join(" ")).toContain(`no tenant ${unknown}`);
    }
  });

  it("names the flag when --tenant is not a tenant id, empty included, and writes nothing", async () => {
    for (const value of ["junk", ""]) {
      const err = (await sessionctl("keys", "create", "--tenant", value).catch((e: unknown) => e)) as { code: number; stderr: string };
      expect(err.code, value).toBe(1);
      expect(err.stderr, value).toContain(`--tenant: "${value}" is not a tenant id (tnt_`);
    }
    const { data } = JSON.parse((await sessionctl("keys", "list", "--tenant", tenantId, "--json")).stdout) as { data: unknown[] };
    expect(data).toHaveLength(1);
  });

  it("says that off is accepted too when a knob that can be turned off is out of range, and changes nothing", async () => {
    const before = (await sessionctl("policy", "get", "--tenant", tenantId, "--json")).stdout;
    for (const [flag, range] of [["--idle-timeout", "60 to 34560000"], ["--max-sessions-per-user", "1 to 10000"]] as const) {
      // Not integers as typed, though Number() reads the last three as 100, 256 and 100.
      for (const value of ["5x", "1e2", "0x100", "100.0"]) {
        const err = (await sessionctl("policy", "set", "--tenant", tenantId, flag, value).catch((e: unknown) => e)) as { code: number; stderr: string };
        expect(err.code, `${flag} ${value}`).toBe(1);
        expect(err.stderr, `${flag} ${value}`).toContain(`${flag} must be an integer from ${range}, or off`);
      }
    }
    const grace = (await sessionctl("policy", "set", "--tenant", tenantId, "--refresh-grace", "0").catch((e: unknown) => e)) as { stderr: string };
    expect(grace.stderr).not.toContain("off");
    expect((await sessionctl("policy", "get", "--tenant", tenantId, "--json")).stdout).toBe(before);
  });

  it("says which host and port it could not reach, never the password", async () => {
    const closed = net.createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const { port } = closed.address() as net.AddressInfo;
    await new Promise((resolve) => closed.close(resolve));
    const err = (await sessionctlWith({ DATABASE_URL: `mysql://root:pw-hunter2@127.0.0.1:${port}/sessions` }, "tenants", "list").catch((e: unknown) => e)) as {
      code: number;
      stderr: string;
    };
    expect(err.code).toBe(1);
    expect(err.stderr).toContain(`127.0.0.1:${port}`);
    expect(err.stderr).not.toContain("hunter2");
  });
});
