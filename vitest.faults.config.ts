import { defineConfig } from "vitest/config";

/**
 * Database-fault and shutdown tests (`npm run test:faults`). Each file starts its own MariaDB
 * (a temp datadir, a free port) behind a fault-injecting TCP proxy; nothing touches :3306.
 * Files run one at a time: they stop and restart servers and assert on timings.
 */
export default defineConfig({
  test: {
    include: ["test/faults/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    fileParallelism: false,
  },
});
