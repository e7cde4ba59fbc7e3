import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Native models are heavy; run files in separate forked processes, a couple at a time.
    pool: "forks",
    maxWorkers: 2,
  },
});
