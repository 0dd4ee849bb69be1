import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Database-fault tests start their own MariaDB: `npm run test:faults` (vitest.faults.config.ts), part of `npm test`;
    // the Galera tests their own cluster: `npm run test:cluster` (vitest.cluster.config.ts).
    exclude: ["test/faults/**", "test/serial/**", "test/cluster/**", "node_modules/**"],
    // Integration tests share one MySQL server; each file uses its own database.
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
  },
});
