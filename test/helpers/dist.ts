// dist/ (the compiled package) for tests that run it in a child process the way a user does.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { projectRoot } from "./shared.js";

function newestMtime(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) t = Math.max(t, newestMtime(p));
    else if (e.name.endsWith(".ts")) t = Math.max(t, statSync(p).mtimeMs);
  }
  return t;
}

/** Builds dist/ when `file` (a file under dist/) is missing or older than any lib/ source. */
export function ensureDist(file = path.join(projectRoot, "dist/index.js")): void {
  const stale = !existsSync(file) || statSync(file).mtimeMs < newestMtime(path.join(projectRoot, "lib"));
  if (!stale) return;
  const tsc = path.join(projectRoot, "node_modules/typescript/bin/tsc");
  // Type errors elsewhere in the tree still emit JavaScript; only a missing file is fatal here.
  const r = spawnSync(process.execPath, [tsc, "-p", "tsconfig.json"], { cwd: projectRoot, encoding: "utf8" });
  if (!existsSync(file)) throw new Error(`tsc did not produce ${file}: ${r.stdout}${r.stderr}`);
}
