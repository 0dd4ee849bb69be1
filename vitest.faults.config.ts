import { defineConfig } from "vitest/config";

/**
 * The serial suite (`npm run test:faults`): database-fault and shutdown tests (test/faults/), and
 * tests that load the machine to measure the service under attack (test/serial/). Each fault file
 * starts its own MariaDB (in a
 * folder of its own under the OS temp dir, datadir and tmpdir included, removed afterwards; a free
 * port) behind a fault-injecting TCP proxy; nothing touches :3306. Files run one at a time, since
 * each starts, stops and restarts servers. Assertions are on behaviour (statuses, pool state, server
 * counters, attempts), not on elapsed time against fixed numbers, so a busy machine cannot fail them.
 */
export default defineConfig({
  test: {
    include: ["test/faults/**/*.test.ts", "test/serial/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    fileParallelism: false,
  },
});
