#!/usr/bin/env node
// CUDA backend correctness against the CPU reference (and the fixtures), run on a GPU machine:
//   node scripts/gpu/validate.mjs [--skip-small | --only-host] [--big PATH_TO_LARGE_MODEL] [--out FILE]
// Prints one PASS/FAIL line per check and exits non-zero on any failure. Needs dist/ and the addon.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { Llama2, planCudaMemory } from "../../dist/index.js";
import { commonPrefix } from "../../dist/engine/prefix-cache.js";
import { argmax, loadHostReference, relErr, trace } from "../../dist/self-check.js";
import { args, opt } from "./args.mjs";

const shared = process.env.LLAMA2_SHARED ?? path.resolve("../shared");
const results = [];
let failed = 0;

function check(name, ok, detail) {
  results.push({ name, ok, ...detail });
  if (!ok) failed++;
  console.log(`${ok ? "PASS" : "FAIL"} ${name} ${JSON.stringify(detail)}`);
}

async function compareBackends(label, file, opts, prompt, steps, tol) {
  const cpu = await Llama2.load(file, { device: "cpu", ...opts.cpu });
  const gpu = await Llama2.load(file, { device: "cuda", ...opts.gpu });
  // Drive both with the CPU's greedy tokens so the comparison is step by step.
  const feed = [];
  {
    const n = cpu._native();
    const seq = n.createSequence();
    let [lg] = await n.forward([{ seq, tokens: Int32Array.from(prompt), output: -1 }]);
    for (let i = 0; i < steps; i++) {
      const t = argmax(lg);
      feed.push(t);
      [lg] = await n.forward([{ seq, tokens: Int32Array.from([t]), output: -1 }]);
    }
    n.freeSequence(seq);
  }
  const a = await trace(cpu, prompt, feed);
  const b = await trace(gpu, prompt, feed);
  // opts.quantRef (CPU options without the quantization under test): the CPU's own quantization error over
  // the same steps; the CUDA-vs-CPU error may reach it (both quantize, from fp16 and fp32 values, so a value
  // near a rounding boundary lands one step apart), and the check reports it.
  let quantErr;
  if (opts.quantRef) {
    const ref = await Llama2.load(file, { device: "cpu", ...opts.quantRef });
    const r = await trace(ref, prompt, feed);
    quantErr = Math.max(...r.map((x, i) => relErr(a[i], x)));
    tol = Math.max(tol, quantErr);
    await ref.dispose();
  }
  let worst = 0, agree = 0;
  for (let i = 0; i < a.length; i++) {
    worst = Math.max(worst, relErr(b[i], a[i]));
    if (argmax(a[i]) === argmax(b[i])) agree++;
  }
  check(`${label}: CUDA vs CPU logits over ${a.length} steps`, worst <= tol, { worstRel: worst, tol, quantErr, argmaxAgree: `${agree}/${a.length}`, device: gpu.info.deviceName, dtype: gpu.info.dtype });
  // Top-k from the device equals the top of the full logits.
  const g = gpu._native();
  const seq = g.createSequence();
  const [full] = await g.forward([{ seq, tokens: Int32Array.from(prompt), output: -1 }]);
  g.truncateSequence(seq, 0);
  const [cand] = await g.forward([{ seq, tokens: Int32Array.from(prompt), output: 40 }]);
  g.freeSequence(seq);
  const order = [...full.keys()].sort((x, y) => full[y] - full[x] || x - y).slice(0, 40);
  check(`${label}: device top-40 equals sorted logits`, order.every((id, i) => id === cand.ids[i] && Math.abs(cand.logits[i] - full[id]) < 1e-6), {});
  await cpu.dispose();
  await gpu.dispose();
}

// --only-host: just sections 2c and 2d (quick to run on the emulator build: LLAMA2_ADDON=build-emu/...).
const onlyHost = args.includes("--only-host");
const skipSmall = args.includes("--skip-small") || onlyHost;

// Sequences joining a running batch: `long` (> 128 tokens: decode attention with 2+ splits, merged through
// the workspace's counters) decodes alone for 3 steps, then the `shorts` join it for `steps` steps. Every
// sequence's logits must equal (within 2e-2) its own logits alone. Until stop 29, a launch with more decode
// tokens than the one before read the earlier launch's split partials as its merge counters and left the new
// tokens' attention unmerged (garbage: relative errors ~1).
async function joinCheck(label, file, opts) {
  const m = await Llama2.load(file, { device: "cuda", ...opts });
  const V = m.info.config.vocabSize;
  const tok = (i) => 3 + ((i * 7919) % (V - 3));
  const long = Array.from({ length: 150 }, (_, i) => tok(i));
  const shorts = [5, 9, 13].map((len, k) => Array.from({ length: len }, (_, i) => tok(1000 + 97 * k + i)));
  const forced = (k, j) => tok(5000 + 31 * k + j);  // sequence k's j-th fed token
  const n = m._native();
  const feed = async (seqs, toks) => n.forward(seqs.map((seq, i) => ({ seq, tokens: Int32Array.from(toks[i]), output: toks[i].length === 1 ? -1 : 0 })));
  // Alone: the long one (prefill, then 3 + 3 tokens), each short one (prefill, then 3 tokens).
  const alone = [];
  {
    const a = n.createSequence();
    await feed([a], [long]);
    const rows = [];
    for (let j = 0; j < 6; j++) rows.push((await feed([a], [[forced(0, j)]]))[0]);
    alone.push(rows.slice(3));
    n.freeSequence(a);
  }
  for (const [k, s] of shorts.entries()) {
    const b = n.createSequence();
    await feed([b], [s]);
    const rows = [];
    for (let j = 0; j < 3; j++) rows.push((await feed([b], [[forced(k + 1, j)]]))[0]);
    alone.push(rows);
    n.freeSequence(b);
  }
  // Joined.
  const seqs = [0, 1, 2, 3].map(() => n.createSequence());
  await feed([seqs[0]], [long]);
  for (let j = 0; j < 3; j++) await feed([seqs[0]], [[forced(0, j)]]);
  await feed(seqs.slice(1), shorts);
  let worst = 0;
  for (let j = 0; j < 3; j++) {
    const out = await feed(seqs, [0, 1, 2, 3].map((k) => [forced(k, k === 0 ? 3 + j : j)]));
    out.forEach((lg, k) => (worst = Math.max(worst, relErr(lg, alone[k][j]))));
  }
  for (const s of seqs) n.freeSequence(s);
  check(`${label}: sequences joining a running batch at 150+ positions equal their logits alone`, worst <= 2e-2, { worstRel: worst });
  await m.dispose();
}

// A stories260K fixture case on `m`: how many greedy ids equal llama2.c's, the teacher-forced logits, and
// the relative error of the first and last step's.
async function againstStories(m, c) {
  const r = await m.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: c.generated.length }).result;
  const same = commonPrefix(r.tokenIds, c.generated);
  const logits = await trace(m, c.prompt, c.generated.slice(0, -1));
  return { same, ids: r.tokenIds, logits, e1: relErr(logits[0], c.first_logits), e2: relErr(logits[logits.length - 1], c.last_logits) };
}

// 1. stories260K against llama2.c's fixture.
if (!skipSmall) {
  const fx = JSON.parse(readFileSync(path.join(shared, "fixtures/stories260K-greedy.json"), "utf8"));
  const m = await Llama2.load(path.join(shared, "models/stories260K.bin"), { device: "cuda" });
  const alone = [];
  for (const [i, c] of fx.cases.entries()) {
    const { same, ids, e1, e2 } = await againstStories(m, c);
    alone.push(ids);
    check(`stories260K case ${i}: greedy ids (>= 64 equal) and logits within 2e-2`, same >= Math.min(64, c.generated.length) && e1 <= 2e-2 && e2 <= 2e-2, { sameIds: same, of: c.generated.length, firstRel: e1, lastRel: e2 });
  }
  // Batched: all cases at once give the same ids as each alone (not the fixture's: fp16 leaves llama2.c's
  // near-ties of cases 1 and 3 at tokens 37 and 51), over the first 64 ids as the fixture check. Further on,
  // equality depends on rounding: batched, case 1's first token runs in the GEMM with the other prompts,
  // alone in the GEMV, and on the emulator a near-tie flips at its token 355 (the H200 kept all 401); the
  // first difference of each case is reported.
  const rs = await Promise.all(fx.cases.map((c) => m.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: c.generated.length }).result));
  const firstDiff = rs.map((r, i) => commonPrefix(r.tokenIds, alone[i]));
  check("stories260K batched equals alone (first 64 ids)", firstDiff.every((k, i) => k >= Math.min(64, alone[i].length)), { firstDifference: firstDiff, of: alone.map((a) => a.length) });
  await m.dispose();
  await joinCheck("stories260K", path.join(shared, "models/stories260K.bin"), {});
}

// 1b. The fp32 path (dtype 'f32'): every id of every case, logits within 2e-5 (the host emulation: 4e-6),
// and the same bits as its host emulation (LLAMA2_CUDA_F32_EMULATE=1).
function bitsDiffer(a, b) {
  let n = 0;
  for (let i = 0; i < b.length; i++) if (!Object.is(a[i], b[i])) n++;
  return n;
}
if (!skipSmall) {
  const fx = JSON.parse(readFileSync(path.join(shared, "fixtures/stories260K-greedy.json"), "utf8"));
  const file = path.join(shared, "models/stories260K.bin");
  const m = await Llama2.load(file, { device: "cuda", dtype: "f32", maxSequences: 8 });
  const emu = await loadHostReference(file, { maxSequences: 2 });
  // The CUDA kernels, not the host policy of LLAMA2_CUDA_F32_EMULATE (named "host emulation of the CUDA fp32 path").
  check("fp32 path: info", m.info.dtype === "f32" && !m.info.deviceName.includes("host emulation of"), { deviceName: m.info.deviceName, dtype: m.info.dtype });
  for (const [i, c] of fx.cases.entries()) {
    const { same, logits, e1, e2 } = await againstStories(m, c);
    check(`fp32 path stories260K case ${i}: every greedy id, logits within 2e-5`, same === c.generated.length && e1 <= 2e-5 && e2 <= 2e-5, { sameIds: same, of: c.generated.length, firstRel: e1, lastRel: e2 });
    const ref = await trace(emu, c.prompt, c.generated.slice(0, 40));
    const mine = logits.slice(0, ref.length);
    const differing = mine.map((lg, j) => bitsDiffer(lg, ref[j]));
    check(`fp32 path stories260K case ${i}: the host emulation's bits over ${ref.length} steps`, differing.every((n) => n === 0), { stepsDiffering: differing.filter((n) => n > 0).length, worstRel: Math.max(...mine.map((lg, j) => relErr(lg, ref[j]))) });
  }
  const rs = await Promise.all(fx.cases.map((c) => m.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: c.generated.length }).result));
  check("fp32 path stories260K batched equals fixture", rs.every((r, i) => r.tokenIds.join() === fx.cases[i].generated.join()), {});
  await m.dispose();
  await emu.dispose();
  const tref = JSON.parse(readFileSync(path.join(shared, "fixtures/tiny-llama-hf-reference.json"), "utf8"));
  for (const rel of ["models/tiny-llama-hf", "models/tiny-llama-f16.gguf"]) {
    const g = await Llama2.load(path.join(shared, rel), { device: "cuda", dtype: "f32" });
    const e = await loadHostReference(path.join(shared, rel), {});
    for (const [i, c] of tref.cases.entries()) {
      const r = await g.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: c.generated.length }).result;
      const [lg] = await trace(g, c.prompt, []);
      const [le] = await trace(e, c.prompt, []);
      check(`fp32 path ${path.basename(rel)} case ${i}: transformers' ids, logits within 1e-3, emulation's bits`, r.tokenIds.join() === c.generated.join() && relErr(lg, c.last_logits) <= 1e-3 && bitsDiffer(lg, le) === 0, { rel: relErr(lg, c.last_logits), bitsDiffering: bitsDiffer(lg, le) });
    }
    await g.dispose();
    await e.dispose();
  }
}

// 2. tiny-llama in three formats; Q8_0 / int8 against the CPU's int8 on the same weights.
if (!skipSmall) {
  const ref = JSON.parse(readFileSync(path.join(shared, "fixtures/tiny-llama-hf-reference.json"), "utf8"));
  for (const [file, opts] of [
    ["models/tiny-llama-hf", {}],
    ["models/tiny-llama-f16.gguf", {}],
    ["models/tiny-llama-q8_0.gguf", {}],
    ["models/tiny-llama-hf", { cpu: { dtype: "int8" }, gpu: { dtype: "int8" } }],
  ]) {
    const label = `${path.basename(file)}${opts.gpu ? " int8" : ""}`;
    await compareBackends(label, path.join(shared, file), { cpu: opts.cpu ?? {}, gpu: opts.gpu ?? {} }, ref.cases[0].prompt, 24, 2e-2);
    if (!opts.gpu && !file.includes("q8")) {
      const m = await Llama2.load(path.join(shared, file), { device: "cuda" });
      for (const [i, c] of ref.cases.entries()) {
        const r = await m.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: c.generated.length }).result;
        const [lg] = await trace(m, c.prompt, []);
        check(`${label} case ${i}: transformers greedy ids, logits within 2e-2`, r.tokenIds.join() === c.generated.join() && relErr(lg, c.last_logits) <= 2e-2, { rel: relErr(lg, c.last_logits) });
      }
      await m.dispose();
    }
  }
}

// 2b. int8 KV cache: the CUDA cache (kv_quantize from fp16 K/V, int8 decode and prefill attention) against
// the CPU's int8 cache (quantized from fp32 K/V), and batched equals alone.
if (!skipSmall) {
  const ref = JSON.parse(readFileSync(path.join(shared, "fixtures/tiny-llama-hf-reference.json"), "utf8"));
  const kv8 = { cpu: { kvCacheType: "int8" }, gpu: { kvCacheType: "int8" }, quantRef: {} };
  await compareBackends("tiny-llama-hf KV int8", path.join(shared, "models/tiny-llama-hf"), kv8, ref.cases[0].prompt, 24, 2e-2);
  const fx = JSON.parse(readFileSync(path.join(shared, "fixtures/stories260K-greedy.json"), "utf8"));
  // head_dim 8: one scale per 8 values, so the quantization error is large (H200: 3.7e-2 against the CPU).
  await compareBackends("stories260K KV int8 (head_dim 8: groups of 8)", path.join(shared, "models/stories260K.bin"), kv8, fx.cases[1].prompt, 40, 2e-2);
  // A context that is not a power of two: the decode graphs' last context bucket (600) is not the power of
  // two below it (512); steps past position 512 must attend to every position (a graph captured for the
  // 512 bucket and replayed there would skip the rest: the key once held log2 of the bucket).
  const past512 = Array.from({ length: 500 }, (_, i) => 100 + ((i * 7919) % 31000));
  await compareBackends("tiny-llama-hf, context 600, decoding past position 512", path.join(shared, "models/tiny-llama-hf"),
    { cpu: { contextLength: 600 }, gpu: { contextLength: 600 } }, past512, 40, 2e-2);
  const m = await Llama2.load(path.join(shared, "models/stories260K.bin"), { device: "cuda", kvCacheType: "int8", maxSequences: 8 });
  check("stories260K KV int8: info", m.info.kvCacheType === "int8", { kvCacheType: m.info.kvCacheType });
  const alone = [];
  for (const c of fx.cases) alone.push((await m.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: 48 }).result).tokenIds.join());
  const rs = await Promise.all(fx.cases.map((c) => m.generate(c.prompt, { temperature: 0, stopOnEos: false, maxTokens: 48 }).result));
  check("stories260K KV int8: batched equals alone", rs.every((r, i) => r.tokenIds.join() === alone[i]), {});
  await m.dispose();
}

// 2c. Model changes prepared on the host (stop 30): rotary scaling folded into the rotary table, and a LoRA
// adapter merged into the weights. The CUDA backend runs them unchanged; each against the CPU with the
// same option, past the YaRN ramp's positions, and (the check that the change reached the device) away
// from the unchanged model.
if (!args.includes("--skip-small")) {
  const hf = path.join(shared, "models/tiny-llama-hf");
  const prompt = Array.from({ length: 300 }, (_, i) => (i === 0 ? 1 : 100 + ((i * 7919) % 31000)));
  const yarn = { ropeScaling: { type: "yarn", factor: 4, originalContextLength: 128 }, contextLength: 600 };
  await compareBackends("tiny-llama-hf YaRN x4 over 128", hf, { cpu: yarn, gpu: yarn }, prompt, 16, 2e-2);
  const adapter = writePeftAdapter(hf, "/tmp/l2-validate-lora");
  await compareBackends("tiny-llama-hf + LoRA r4 (merged at load)", hf, { cpu: { lora: adapter }, gpu: { lora: adapter } }, prompt.slice(0, 40), 16, 2e-2);
  for (const [label, o] of [["YaRN", yarn], ["LoRA", { lora: adapter }]]) {
    const a = await Llama2.load(hf, { device: "cuda", contextLength: 600, ...o });
    const b = await Llama2.load(hf, { device: "cuda", contextLength: 600 });
    const [x] = await trace(a, prompt, []);
    const [y] = await trace(b, prompt, []);
    check(`${label} reached the device: logits differ from the unchanged model's`, relErr(x, y) > 5e-2, { rel: relErr(x, y) });
    await a.dispose();
    await b.dispose();
  }
}

// 2d. Saved sessions (stop 32): a session's KV blocks copied to a file and back (fp16 and int8 caches, the
// fp32 path); the restored session's next turn must be the one the saved session gives.
if (!args.includes("--skip-small")) {
  const gguf = path.join(shared, "models/tiny-llama-f16.gguf");
  const g = { temperature: 0, maxTokens: 8, stopOnEos: false };
  for (const [label, o] of [["fp16 KV", {}], ["int8 KV", { kvCacheType: "int8" }], ["fp32 path", { dtype: "f32" }]]) {
    const a = await Llama2.load(gguf, { device: "cuda", maxSequences: 2, ...o });
    const b = await Llama2.load(gguf, { device: "cuda", maxSequences: 2, ...o });
    const s = a.createSession({ systemPrompt: "Be brief." });
    await s.send("Hello there", g).result;
    await s.send("And then?", g).result;
    const file = `/tmp/l2-validate-session-${label.replace(/\W+/g, "-")}.l2s`;
    const saved = await s.save(file);
    const next = await s.send("Third", g).result;
    const r = await b.restoreSession(file);
    const again = await r.send("Third", g).result;
    check(`saved session (${label}): restored, the next turn equals the saved session's`, again.tokenIds.join() === next.tokenIds.join() && again.stats.cachedPromptTokens === next.stats.cachedPromptTokens, {
      cachedTokens: saved.cachedTokens,
      bytes: saved.bytes,
    });
    await a.dispose();
    await b.dispose();
  }
}

// A PEFT adapter (rank 4, alpha 8, every projection; deterministic values) for the HF model in `dir`.
function writePeftAdapter(dir, out) {
  const cfg = JSON.parse(readFileSync(path.join(dir, "config.json"), "utf8"));
  const D = cfg.hidden_size, hd = cfg.head_dim ?? D / cfg.num_attention_heads, F = cfg.intermediate_size, r = 4;
  const Q = cfg.num_attention_heads * hd, KV = cfg.num_key_value_heads * hd;
  const shapes = { "self_attn.q_proj": [Q, D], "self_attn.k_proj": [KV, D], "self_attn.v_proj": [KV, D], "self_attn.o_proj": [D, Q], "mlp.gate_proj": [F, D], "mlp.up_proj": [F, D], "mlp.down_proj": [D, F] };
  let s = 7;
  const header = {};
  const parts = [];
  let at = 0;
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    for (const [mod, [rows, cols]] of Object.entries(shapes)) {
      for (const [ab, shape] of [["A", [r, cols]], ["B", [rows, r]]]) {
        const v = new Float32Array(shape[0] * shape[1]).map(() => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5) * 0.3);
        const b = Buffer.from(v.buffer);
        header[`base_model.model.model.layers.${l}.${mod}.lora_${ab}.weight`] = { dtype: "F32", shape, data_offsets: [at, at + b.length] };
        parts.push(b);
        at += b.length;
      }
    }
  }
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8) json += " ";
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  mkdirSync(out, { recursive: true });
  writeFileSync(path.join(out, "adapter_model.safetensors"), Buffer.concat([len, Buffer.from(json), ...parts]));
  writeFileSync(path.join(out, "adapter_config.json"), JSON.stringify({ peft_type: "LORA", r, lora_alpha: 8 }));
  return out;
}

// 3. A large synthetic model (7B shape): prefill (tensor-core GEMM + flash attention) and decode.
const big = opt("--big");
if (big) {
  const prompt = Array.from({ length: 100 }, (_, i) => 100 + ((i * 7919) % 31000));
  await compareBackends(`${path.basename(big)} f16`, big, { cpu: { contextLength: 512 }, gpu: { contextLength: 512 } }, prompt, 4, 2e-2);
  await compareBackends(`${path.basename(big)} int8`, big, { cpu: { contextLength: 512, dtype: "int8" }, gpu: { contextLength: 512, dtype: "int8" } }, prompt, 4, 2e-2);
  // A long prompt takes the large-tile (wgmma on sm_90a) GEMM and the flash-attention prefill.
  const long = Array.from({ length: 600 }, (_, i) => 100 + ((i * 7919) % 31000));
  await compareBackends(`${path.basename(big)} f16 600-token prefill`, big, { cpu: { contextLength: 1024 }, gpu: { contextLength: 1024 } }, long, 1, 2e-2);
  // Batched decode on the GPU equals each sequence alone: 3 (GEMV), 12 (GEMM, 32x32 tile for the 4096-row
  // matrices), 40 (GEMM 32x64 tiles); decode steps of up to 64 sequences replay CUDA graphs.
  const m = await Llama2.load(big, { device: "cuda", contextLength: 512, maxSequences: 40 });
  const prompts = Array.from({ length: 40 }, (_, j) => prompt.slice(0, 20 + (j % 12) * 5 + Math.floor(j / 12)));
  const alone = [];
  for (const p of prompts.slice(0, 3)) alone.push((await m.generate(p, { temperature: 0, stopOnEos: false, maxTokens: 16 }).result).tokenIds.join());
  for (const n of [3, 12, 40]) {
    const rs = await Promise.all(prompts.slice(0, n).map((p) => m.generate(p, { temperature: 0, stopOnEos: false, maxTokens: 16 }).result));
    const same = rs.slice(0, 3).filter((r, i) => r.tokenIds.join() === alone[i]).length;
    check(`7B batch of ${n}: first 3 sequences equal their alone ids`, same === 3, { same, maxBatch: m.stats().scheduler.maxBatch });
  }
  await m.dispose();
  await joinCheck("7B f16", big, { contextLength: 512 });
  // The int8 KV cache last: a fault in the newest kernels cannot hide the checks above.
  const m8 = await Llama2.load(big, { device: "cuda", contextLength: 512, maxSequences: 12, kvCacheType: "int8" });
  const alone8 = [];
  for (const p of prompts.slice(0, 3)) alone8.push((await m8.generate(p, { temperature: 0, stopOnEos: false, maxTokens: 16 }).result).tokenIds.join());
  const rs8 = await Promise.all(prompts.slice(0, 12).map((p) => m8.generate(p, { temperature: 0, stopOnEos: false, maxTokens: 16 }).result));
  check("7B KV int8 batch of 12: first 3 sequences equal their alone ids", rs8.slice(0, 3).every((r, i) => r.tokenIds.join() === alone8[i]), {});
  await m8.dispose();
  // int8 KV cache at the 7B shape: prefill through the int8 flash-attention path, then decode steps.
  await compareBackends(`${path.basename(big)} f16 KV int8 600-token prefill`, big, { cpu: { contextLength: 1024, kvCacheType: "int8" }, gpu: { contextLength: 1024, kvCacheType: "int8" } }, long, 4, 2e-2);
  // GPU memory at 4096 context, one sequence: what the backend allocated equals the plan (cuda_plan.h),
  // within issue 4's budgets (14.5 GiB fp16 weights, 8 GiB int8, both with the int8 KV cache).
  for (const [dtype, budget] of [["f16", 14.5], ["int8", 8]]) {
    const g = await Llama2.load(big, { device: "cuda", dtype, kvCacheType: "int8", contextLength: 4096, maxSequences: 1 });
    const used = g._native().info().deviceMemoryUsed;
    const plan = planCudaMemory({ config: g.info.config, fileDtype: g.info.fileDtype }, { dtype, kvCacheType: "int8", contextLength: 4096, maxSequences: 1 });
    const r = await g.generate(long.slice(0, 200), { temperature: 0, stopOnEos: false, maxTokens: 8 }).result;
    check(`7B ${dtype} + KV int8 at 4096 context: allocated = plan, <= ${budget} GiB`, used === plan.totalBytes && used / 2 ** 30 <= budget && r.tokenIds.length === 8, {
      allocatedGiB: used / 2 ** 30,
      planGiB: plan.totalBytes / 2 ** 30,
      allocatedGB: used / 1e9,
    });
    await g.dispose();
  }
}

const out = opt("--out");
if (out) writeFileSync(out, JSON.stringify({ failed, results }, null, 2));
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
