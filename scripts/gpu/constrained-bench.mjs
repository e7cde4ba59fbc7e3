#!/usr/bin/env node
// What constrained output and logprobs cost per token beside the model's own step (batch 1): the same
// prompt decoded free (greedy, and topK 0 sampling), under a JSON Schema, under llama.cpp's json.gbnf
// and with logprobs 5; and what prompt lookup decoding saves (lookup 4 / 8, greedy: the free greedy
// tokens in fewer steps); medians of REPS runs after a warm-up. The host-side sampler runs between device
// steps, so on a GPU its cost is not hidden; this is the figure NOTES asks for.
//   node scripts/gpu/constrained-bench.mjs --model M [--device cuda] [--dtype f16] [--tokens 64] [--reps 3] [--out FILE]
// Needs dist/ and the addon only, so it runs on the device machine (and on the CPU: the test suite runs it
// on the demo model).
import { writeFileSync } from "node:fs";
import { Llama2 } from "../../dist/index.js";
import { opt } from "./args.mjs";

const model = opt("--model");
if (!model) {
  console.error("usage: constrained-bench.mjs --model PATH [--device cuda] [--dtype f16] [--tokens 64] [--reps 3] [--out FILE]");
  process.exit(2);
}
const tokens = Number(opt("--tokens", "64"));
const reps = Number(opt("--reps", "3"));

// llama.cpp's grammars/json.gbnf, with a root that asks for at least 16 strings so that even greedy runs
// on random weights last (they would close "{}" at once): the string rules are the costly part.
const JSON_GBNF = String.raw`root   ::= "[" ws string ("," ws string){15,} "]"
json   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws ::= | " " | "\n" [ \t]{0,20}
`;
// A schema that keeps going (at least 16 strings of 8+ characters) so that runs reach --tokens.
const SCHEMA = { type: "object", properties: { notes: { type: "array", items: { type: "string", minLength: 8 }, minItems: 16 } }, required: ["notes"] };

const modes = [
  ["free greedy", { temperature: 0 }],
  ["free topK 0", { temperature: 1, topK: 0, topP: 1, minP: 0 }],
  ["json_schema greedy", { temperature: 0, responseFormat: { type: "json_schema", schema: SCHEMA } }],
  ["json_schema topK 0", { temperature: 1, topK: 0, topP: 1, minP: 0, responseFormat: { type: "json_schema", schema: SCHEMA } }],
  ["gbnf json greedy", { temperature: 0, responseFormat: { type: "grammar", grammar: JSON_GBNF } }],
  ["gbnf json topK 0", { temperature: 1, topK: 0, topP: 1, minP: 0, responseFormat: { type: "grammar", grammar: JSON_GBNF } }],
  ["logprobs 5", { temperature: 0, logprobs: 5 }],
  // Prompt lookup decoding: the same greedy tokens as "free greedy", in fewer steps where they repeat.
  ["lookup 4 greedy", { temperature: 0, lookup: 4 }],
  ["lookup 8 greedy", { temperature: 0, lookup: 8 }],
];

const llama = await Llama2.load(model, { device: opt("--device", "cuda"), dtype: opt("--dtype", "auto"), contextLength: 512, maxSequences: 1 });
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows = [];
try {
  console.log(`${llama.info.deviceName}, ${llama.info.dtype}, ${tokens} tokens, ${reps} reps`);
  for (const [name, o] of modes) {
    const run = async (seed) => {
      const r = await llama.generate("Notes about the weather, as JSON:", { ...o, seed, maxTokens: tokens, stopOnEos: false }).result;
      const s = r.stats;
      return { n: s.completionTokens, ms: s.completionTokens > 1 ? (s.totalMs - s.timeToFirstTokenMs) / (s.completionTokens - 1) : NaN, drafts: s.draftTokens, accepted: s.acceptedDraftTokens };
    };
    await run(0); // warm-up (schema / grammar compile, the vocabulary trie)
    const got = [];
    for (let k = 1; k <= reps; k++) got.push(await run(k));
    // Runs of under 8 tokens say little about a per-token cost: left out (NaN when all are).
    const long = got.filter((g) => g.n >= 8).map((g) => g.ms);
    const row = { mode: name, msPerToken: long.length ? median(long) : NaN, tokens: got.map((g) => g.n) };
    if (got[0].drafts !== undefined) row.draftsAccepted = got.map((g) => `${g.accepted}/${g.drafts}`);
    rows.push(row);
    console.log(`${name.padEnd(20)} ${row.msPerToken.toFixed(3)} ms/token (tokens per run: ${row.tokens.join(", ")}${row.draftsAccepted ? `; drafts accepted ${row.draftsAccepted.join(", ")}` : ""})`);
  }
} finally {
  await llama.dispose();
}
const free = rows[0].msPerToken;
for (const r of rows) r.overFreeGreedyMs = r.msPerToken - free;
const out = opt("--out");
if (out) writeFileSync(out, JSON.stringify({ model, device: llama.info.deviceName, dtype: llama.info.dtype, tokens, reps, rows }, null, 2) + "\n");
