// Locates ../shared (models and fixtures that are never committed). Tests that need it use
// `describeShared`: on a user's machine without it they skip with a visible reason; in CI
// (LLAMA2_REQUIRE_SHARED=1, set by .ci/run) a missing file fails the run instead.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, it } from "vitest";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const projectRoot = root;
export const sharedDir = path.resolve(root, process.env.LLAMA2_SHARED ?? "../shared");

/**
 * Multiplier for a test's own time limit: 1 normally; scripts/sanitizer-test.sh sets
 * LLAMA2_TEST_TIMEOUT_SCALE (ASan/UBSan builds run the engine several times slower).
 */
export const timeoutScale = Math.max(1, Number(process.env.LLAMA2_TEST_TIMEOUT_SCALE) || 1);

export function sharedPath(rel: string): string {
  return path.join(sharedDir, rel);
}

export function hasShared(...rels: string[]): boolean {
  return rels.every((r) => existsSync(sharedPath(r)));
}

export function readSharedJson<T = any>(rel: string): T {
  return JSON.parse(readFileSync(sharedPath(rel), "utf8")) as T;
}

/** describe() that needs shared files: skips visibly when they are absent, fails when CI requires them. */
export function describeShared(name: string, rels: string[], fn: () => void): void {
  const missing = rels.filter((r) => !existsSync(sharedPath(r)));
  if (missing.length === 0) return describe(name, fn);
  const reason = `missing ${missing.map((m) => path.join(sharedDir, m)).join(", ")}`;
  if (process.env.LLAMA2_REQUIRE_SHARED === "1") {
    describe(name, () => {
      it(`requires shared fixtures (${reason})`, () => {
        throw new Error(`shared fixtures required in CI: ${reason}`);
      });
    });
    return;
  }
  console.warn(`[skip] ${name}: ${reason} (set LLAMA2_SHARED to the shared folder)`);
  describe.skip(`${name} [skipped: ${reason}]`, fn);
}


/** A case of fixtures/stories260K-greedy.json (llama2.c's greedy ids and logits). */
export interface StoriesCase {
  prompt: number[];
  generated: number[];
  first_logits: number[];
  last_logits: number[];
}

/** A case of fixtures/tiny-llama-hf-reference.json (transformers' greedy ids and logits). */
export interface TinyCase {
  text: string;
  prompt: number[];
  generated: number[];
  last_logits: number[];
  first_position_logits_top: [number, number][];
}
