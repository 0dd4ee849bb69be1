import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openServices, type Services } from "../src/services.js";
import { withRowLock } from "../src/store/row-lock.js";
import { dropDatabase, testConfig } from "./helpers/db.js";

/**
 * The lock the migrator and the signing-key creation take (src/store/row-lock.ts), on one server:
 * it serialises holders as GET_LOCK did, is given back when the work ends (or throws), and a claim
 * whose holder died is taken over once it has expired, never before. test/cluster/ runs it across
 * Galera nodes.
 */

const config = testConfig();
let services: Services;

beforeAll(async () => {
  services = await openServices(config);
});
afterAll(async () => {
  await services.close();
  await dropDatabase(config.databaseUrl);
});

const lock = (name: string, waitSeconds = 10) => ({ table: "leases" as const, name, waitSeconds });

describe("withRowLock", () => {
  it("runs holders of one name one at a time, and holders of different names together", async () => {
    const events: string[] = [];
    let isBusy = false;
    const work = (who: string) => async () => {
      expect(isBusy).toBe(false);
      isBusy = true;
      events.push(`${who} in`);
      // Yield to the event loop, so that another holder would run now if the lock let it.
      for (let i = 0; i < 5; i++) await services.pool.query("SELECT 1");
      events.push(`${who} out`);
      isBusy = false;
      return who;
    };
    const results = await Promise.all(["a", "b", "c"].map((who) => withRowLock(services.pool, lock("test-serial"), work(who))));
    expect(results).toEqual(["a", "b", "c"]);
    for (let i = 0; i < events.length; i += 2) expect(events[i + 1]).toBe(events[i]!.replace(" in", " out"));

    let isOtherIn = false;
    await withRowLock(services.pool, lock("test-one"), () => withRowLock(services.pool, lock("test-two"), async () => void (isOtherIn = true)));
    expect(isOtherIn).toBe(true);
  });

  it("gives the row back when the work throws", async () => {
    await expect(withRowLock(services.pool, lock("test-throw"), () => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    const [rows] = await services.pool.query("SELECT name FROM leases WHERE name = 'test-throw'");
    expect(rows).toEqual([]);
  });

  it("takes over a claim whose holder died once it has expired, and waits out a live one", async () => {
    await services.pool.query("INSERT INTO leases (name, holder, expires_at) VALUES ('test-dead', 'gone', NOW(6) - INTERVAL 1 SECOND)");
    expect(await withRowLock(services.pool, lock("test-dead"), async () => "taken")).toBe("taken");

    await services.pool.query("INSERT INTO leases (name, holder, expires_at) VALUES ('test-live', 'other', NOW(6) + INTERVAL 1 HOUR)");
    let hasRun = false;
    await expect(withRowLock(services.pool, lock("test-live", 1), async () => void (hasRun = true))).rejects.toThrow("could not take the test-live lock");
    expect(hasRun).toBe(false);
    const [rows] = await services.pool.query("SELECT holder FROM leases WHERE name = 'test-live'");
    expect((rows as { holder: Buffer }[]).map((r) => r.holder.toString())).toEqual(["other"]);
  });
});
