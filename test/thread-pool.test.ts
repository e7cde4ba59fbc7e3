// The CPU backend's thread pool and its default thread count (native/common/thread_pool.cc):
// test/native/thread-pool.cc checks that every loop covers its range exactly once with workers spinning
// or asleep, that loops finish while a worker is held (the caller claims its chunks), and reads the
// default from fake cgroup / topology trees; the addon's default is checked
// under a one-CPU affinity mask.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect, it } from "vitest";
import { describeShared, projectRoot, sharedPath } from "./helpers/shared.js";

it("parallel_for covers each range once (spinning, sleeping, oversubscribed, a worker held) and the default thread count follows cgroups and SMT", () => {
  const dir = mkdtempSync(join(tmpdir(), "l2-pool-"));
  try {
    const exe = join(dir, "thread-pool");
    execFileSync(
      "g++",
      ["-O2", "-std=c++17", "-pthread", `-I${projectRoot}`, join(projectRoot, "test/native/thread-pool.cc"), join(projectRoot, "native/common/thread_pool.cc"), "-o", exe],
      { stdio: "pipe" },
    );
    const out = execFileSync(exe, { encoding: "utf8", timeout: 120_000 });
    expect(out.trim()).toBe("pool ok");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 180_000);

const hasTaskset = spawnSync("taskset", ["--version"]).status === 0;

describeShared("default CPU threads", ["models/stories260K.bin"], () => {
  it.skipIf(!hasTaskset)("follow the affinity mask (taskset -c 0: 1 thread)", () => {
    const stories = sharedPath("models/stories260K.bin");
    const script = `import { Llama2 } from ${JSON.stringify(join(projectRoot, "dist/index.js"))};
  const m = await Llama2.load(${JSON.stringify(stories)}, { device: "cpu" });
  console.log(m.info.deviceName); await m.dispose();`;
    const one = execFileSync("taskset", ["-c", "0", process.execPath, "--input-type=module", "-e", script], { encoding: "utf8", timeout: 60_000 });
    expect(one).toMatch(/^CPU \(1 threads,/m);
  });
});
