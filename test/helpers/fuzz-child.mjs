// Child process of the loader fuzz test (test/fuzz-loaders.test.ts): opens each model named in the
// case list the way a user does, with the built package (dist/), and reports one JSON line per case.
// A crash, abort or hang in native code takes down only this process; the parent sees which case
// was running from the last "start" line.
//
//   node fuzz-child.mjs <cases.json>     cases: [{ id, path, base?, selftest? }]
//
// Per case: native readModelInfo(path, true) (the header-only parse the CLI uses), then
// Llama2.load(path, { device: "cpu" }) and, when it loads, a 3-token greedy generate. A case with a
// `base` is a LoRA adapter: Llama2.load(base, { device: "cpu", lora: path }), no readModelInfo. Each step
// reports { ok: true } or the error's { code, message, name, typed }; the case also reports its wall
// and CPU time and its peak resident memory.
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const { Llama2, Llama2Error } = await import(pathToFileURL(path.join(root, "dist/index.js")).href);
const { native } = await import(pathToFileURL(path.join(root, "dist/native.js")).href);
const { fromNative } = await import(pathToFileURL(path.join(root, "dist/errors.js")).href);

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));

/** One protocol line (prefixed so that stray output cannot be mistaken for a report). */
function report(obj) {
  writeFileSync(1, `@@fuzz ${JSON.stringify(obj)}\n`);
}

function describe(err) {
  return {
    ok: false,
    code: typeof err?.code === "string" ? err.code : null,
    message: typeof err?.message === "string" ? err.message.slice(0, 600) : String(err).slice(0, 600),
    name: err?.constructor?.name ?? typeof err,
    typed: err instanceof Llama2Error,
  };
}

/** Peak resident memory since the last reset, in MiB (Linux; null elsewhere). */
function peakRssMb() {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
    return m ? Math.round(Number(m[1]) / 1024) : null;
  } catch {
    return null;
  }
}
function resetPeakRss() {
  try {
    writeFileSync("/proc/self/clear_refs", "5");
  } catch {
    /* not permitted: the peak then covers the whole process */
  }
}

// The harness's own failure modes, so the parent can prove it detects each of them.
async function selftest(kind) {
  if (kind === "segv") process.kill(process.pid, "SIGSEGV");
  if (kind === "abort") process.abort();
  if (kind === "hang") for (;;);
  if (kind === "untyped") throw new TypeError("plain error without a code");
  if (kind === "exit") process.exit(3);
  await new Promise((r) => setTimeout(r, 100));
}

for (const c of cases) {
  report({ start: c.id });
  resetPeakRss();
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const out = { id: c.id };
  if (c.selftest) {
    try {
      await selftest(c.selftest);
      out.info = out.load = { ok: true };
      out.generate = { ok: true, tokens: 1 };
    } catch (err) {
      out.info = out.load = describe(err);
    }
  } else {
    if (c.base) out.info = { ok: true };
    else {
      try {
        native().readModelInfo(c.path, true);
        out.info = { ok: true };
      } catch (err) {
        out.info = describe(fromNative(err));
      }
    }
    let model;
    try {
      model = await Llama2.load(c.base ?? c.path, { device: "cpu", maxSequences: 1, threads: 1, ...(c.base && { lora: c.path }) });
      out.load = { ok: true };
    } catch (err) {
      out.load = describe(err);
    }
    if (model) {
      try {
        const V = model.info.config.vocabSize;
        const prompt = model.tokenizer ? "Hello world" : [1, 2, 3].map((i) => i % V);
        const r = await model.generate(prompt, { maxTokens: 3, temperature: 0, stopOnEos: false }).result;
        out.generate = { ok: true, tokens: r.tokenIds.length };
      } catch (err) {
        out.generate = describe(err);
      }
      try {
        await model.dispose();
      } catch (err) {
        out.dispose = describe(err);
      }
    }
  }
  out.ms = Math.round(performance.now() - t0);
  const cpu = process.cpuUsage(cpu0); // all threads: the judge's time limit, robust to a busy machine
  out.cpuMs = Math.round((cpu.user + cpu.system) / 1000);
  out.rssMb = peakRssMb();
  report(out);
}
report({ done: true });
