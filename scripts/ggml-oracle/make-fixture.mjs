// Writes test/fixtures/ggml-blocks.json: rows of every GGUF block type we decode, quantized and decoded
// by ggml itself (oracle.c, run against a libggml-base.so), for test/ggml-blocks.test.ts. Per type,
// rows of 256 values (one K-quant super-block, eight 32-blocks):
//   rows 0..11: Gaussian values (std 0.02, like trained weights), quantized by ggml (the test builds
//     whole models from these);
//   rows 12, 13: pieces of edge cases (zeros, one sign, a huge or tiny range, one outlier), quantized by ggml;
//   rows 14, 15: random bytes (every bit pattern of the scales and values; the fp16 fields kept finite).
// Each row holds the block bytes and ggml's decoded floats. Not run by the tests or CI (they need no ggml):
//   npm pack @node-llama-cpp/linux-x64@3.22.1 && tar xzf node-llama-cpp-linux-x64-3.22.1.tgz
//   node scripts/ggml-oracle/make-fixture.mjs package/bins/linux-x64/libggml-base.so
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const lib = resolve(process.argv[2] ?? "");
if (!process.argv[2]) throw new Error("usage: make-fixture.mjs path/to/libggml-base.so");

// name, ggml type id, offsets of the fp16 fields within a block
const TYPES = [
  ["Q4_0", 2, [0]],
  ["Q4_1", 3, [0, 2]],
  ["Q5_0", 6, [0]],
  ["Q5_1", 7, [0, 2]],
  ["Q8_0", 8, [0]],
  ["Q2_K", 10, [80, 82]],
  ["Q3_K", 11, [108]],
  ["Q4_K", 12, [0, 2]],
  ["Q5_K", 13, [0, 2]],
  ["Q6_K", 14, [208]],
];
const COLS = 256;
const GAUSSIAN_ROWS = 12;

let state = 0x2545f491;
const u32 = () => {
  state ^= state << 13;
  state >>>= 0;
  state ^= state >>> 17;
  state ^= state << 5;
  return (state >>>= 0);
};
const uniform = () => (u32() + 0.5) / 2 ** 32;
const gauss = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());

function gaussianRow() {
  return Float32Array.from({ length: COLS }, () => 0.02 * gauss());
}

// 32-value pieces of edge cases along the row, starting at kind `first`.
function edgeRow(first) {
  const row = new Float32Array(COLS);
  const kinds = [
    () => 0,
    () => Math.abs(gauss()),
    () => -Math.abs(gauss()),
    () => 300 * gauss(),
    () => 1e-6 * gauss(),
    (i) => (i === 7 ? 50 : 0.01 * gauss()),
    (i) => (i % 2 ? 1 : -1),
    () => 2 + 0.001 * gauss(),
  ];
  for (let i = 0; i < COLS; ++i) row[i] = kinds[(first + Math.floor(i / 32)) % kinds.length](i % 32);
  return row;
}

function randomHalf() {
  const r = u32() % 16;
  const exp = r === 0 ? 0 : 5 + (u32() % 12); // a few subnormals / zeros, else 2^-10 .. 2^1
  return ((u32() & 1) << 15) | (exp << 10) | (u32() & 0x3ff);
}

const dir = mkdtempSync(join(tmpdir(), "ggml-oracle-"));
try {
  const exe = join(dir, "oracle");
  execFileSync("gcc", ["-O1", join(here, "oracle.c"), "-o", exe, "-ldl"]);
  const env = { ...process.env, LD_LIBRARY_PATH: dirname(lib) };
  const run = (args, input) => execFileSync(exe, [lib, ...args.map(String)], { input, env, maxBuffer: 1 << 28 });
  // node-llama-cpp's binaries name the llama.cpp release they were built from.
  const meta = join(dirname(lib), "_nlcBuildMetadata.json");
  const pkg = join(dirname(lib), "../../package.json");
  const from = [
    existsSync(pkg) ? `${JSON.parse(readFileSync(pkg, "utf8")).name}@${JSON.parse(readFileSync(pkg, "utf8")).version}` : lib,
    existsSync(meta) ? `llama.cpp ${JSON.parse(readFileSync(meta, "utf8")).buildOptions?.llamaCpp?.release}` : "",
  ].filter(Boolean);
  const out = { source: `libggml-base.so of ${from.join(", ")}: ggml_quantize_chunk, then the type's to_float`, cols: COLS, types: {} };
  for (const [name, id, halves] of TYPES) {
    const [ggmlName, blockElems, blockBytes] = run(["info", id]).toString().trim().split(" ");
    if (ggmlName.toUpperCase() !== name) throw new Error(`type ${id} is ${ggmlName}, expected ${name}`);
    const rowBytes = (COLS / Number(blockElems)) * Number(blockBytes);
    const rows = [...Array.from({ length: GAUSSIAN_ROWS }, gaussianRow), edgeRow(0), edgeRow(3)];
    const quantized = run(["quant", id, COLS, rows.length], Buffer.concat(rows.map((r) => Buffer.from(r.buffer))));
    const random = Buffer.from(Array.from({ length: 2 * rowBytes }, () => u32() & 0xff));
    for (let b = 0; b < random.length; b += Number(blockBytes))
      for (const off of halves) random.writeUInt16LE(randomHalf(), b + off);
    const bytes = Buffer.concat([quantized, random]);
    const nRows = rows.length + 2;
    const decoded = run(["dequant", id, COLS, nRows], bytes);
    out.types[name] = {
      ggmlType: id,
      blockElements: Number(blockElems),
      blockBytes: Number(blockBytes),
      rows: nRows,
      gaussianRows: GAUSSIAN_ROWS,
      bytes: bytes.toString("base64"),
      values: decoded.toString("base64"),
    };
  }
  const dest = join(here, "../../test/fixtures/ggml-blocks.json");
  writeFileSync(dest, JSON.stringify(out, null, 1) + "\n");
  console.log(`wrote ${dest}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
