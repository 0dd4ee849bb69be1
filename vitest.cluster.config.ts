import { defineConfig } from "vitest/config";

/**
 * The Galera suite (`npm run test:cluster`): test/cluster/ starts a private three-node MariaDB Galera
 * cluster (test/cluster/helpers/galera.ts: folders under the OS temp dir, free ports, removed on every
 * path), an HAProxy in front of it, and instances of the service on different nodes. Files run one at
 * a time: each owns a cluster, and a 2-core machine runs one well.
 */
export default defineConfig({
  test: {
    include: ["test/cluster/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 180_000,
    pool: "forks",
    fileParallelism: false,
  },
});
