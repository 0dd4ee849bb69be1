import { randomBytes } from "node:crypto";
import mysql from "mysql2/promise";
import { loadConfig, type Config } from "../../src/config.js";

/** The server the tests use; TEST_DATABASE_URL overrides, with no database in its path. */
export const testServerUrl = process.env.TEST_DATABASE_URL ?? "mysql://root@127.0.0.1:3306";

/** A fresh, empty database name on the test server, dropped by `dropDatabase`. */
export function freshDatabaseUrl(): string {
  return `${testServerUrl.replace(/\/$/, "")}/sessions_test_${randomBytes(6).toString("hex")}`;
}

export async function dropDatabase(url: string): Promise<void> {
  const name = new URL(url).pathname.slice(1);
  const conn = await mysql.createConnection(testServerUrl);
  try {
    await conn.query(`DROP DATABASE IF EXISTS \`${name}\``);
  } finally {
    await conn.end();
  }
}

/** Configuration for a test server on a fresh database and a free port. */
export function testConfig(overrides: Record<string, string> = {}): Config {
  return loadConfig({
    NODE_ENV: "test",
    PORT: "0",
    HOST: "127.0.0.1",
    // The test server listens on a port chosen at listen time; its tokens name this issuer.
    ISSUER: "http://localhost",
    DATABASE_URL: freshDatabaseUrl(),
    LOG_LEVEL: "silent",
    ...overrides,
  });
}
