// A Hugging Face tokenizer.json of the Llama family (BPE over the whole text, byte fallback, "▁" for
// spaces with one prepended) turned into a SentencePiece vocabulary, for model folders saved without
// tokenizer.model (fine-tunes saved from a "fast" tokenizer ship only tokenizer.json).
//
// Hugging Face's BPE merges the adjacent pair of lowest rank in `merges`; SentencePiece's merges the pair
// whose result has the highest score. So a piece's score is minus the rank of the first merge that makes
// it, and SentencePiece then merges in Hugging Face's order. tokenizer.json files converted from a
// SentencePiece model (every Llama one: transformers' LlamaConverter) list all of a piece's pairs next to
// each other, which is what makes the two agree; llama.cpp's converter gives every such piece the same
// score (-1000) instead, which merges in a different order. Where the "▁" before text comes from (a Prepend
// normalizer: SentencePiece's dummy prefix; a Metaspace pre-tokenizer, transformers' legacy: false) is kept
// as the vocabulary's spacePrefix. Checked against the real Llama 2 merges and tokenizers.js in
// test/hf-tokenizer-json.test.ts.
import { existsSync } from "node:fs";
import path from "node:path";
import { Llama2Error, showValue } from "../errors.js";
import { readHfJson, readHfText } from "../formats/hf-folder.js";
import { PieceType, type Vocabulary } from "./sentencepiece-model.js";

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => v !== null && typeof v === "object" && !Array.isArray(v);

/**
 * The normalizer / pre-tokenizer steps a Llama tokenizer.json may hold, each checked to do what SentencePiece
 * can: spaces become "▁", and a "▁" is put first by a Prepend normalizer (SentencePiece's dummy prefix:
 * undefined), by a Metaspace pre-tokenizer (its prepend_scheme), or not at all ("never").
 */
function checkLlamaText(json: Json, fail: (field: string, why: string) => never): Vocabulary["spacePrefix"] {
  const steps = (v: unknown, field: string): Json[] => {
    if (v === null || v === undefined) return [];
    if (!isObject(v)) fail(field, "is not an object");
    if (v.type === "Sequence") {
      const list = v.normalizers ?? v.pretokenizers;
      if (!Array.isArray(list)) fail(field, "is a Sequence without its list");
      return list.flatMap((s, i) => steps(s, `${field}[${i}]`));
    }
    return [v];
  };
  let prepended = false;
  let spaces = false;
  for (const s of steps(json.normalizer, "normalizer")) {
    const pattern = isObject(s.pattern) ? s.pattern.String : undefined;
    if (s.type === "Prepend" && s.prepend === "\u2581") prepended = true;
    else if (s.type === "Replace" && pattern === " " && s.content === "\u2581") spaces = true;
    else if (s.type === "NFKC" || s.type === "NFC" || s.type === "NFD" || s.type === "NFKD" || s.type === "Lowercase" || s.type === "Replace")
      fail("normalizer", `step ${showValue(s.type)} changes the text in a way SentencePiece's Llama model does not`);
    else fail("normalizer", `step ${showValue(s.type)} is not supported`);
  }
  const pre = steps(json.pre_tokenizer, "pre_tokenizer");
  for (const s of pre) {
    if (s.type !== "Metaspace") fail("pre_tokenizer", `${showValue(s.type)} is not a Llama (SentencePiece) pre-tokenizer: only Metaspace is`);
    if ((s.replacement ?? "\u2581") !== "\u2581") fail("pre_tokenizer", "Metaspace replacement must be '▁'");
    if (s.split === true) fail("pre_tokenizer", "Metaspace with split: true (words encoded apart) is not supported");
  }
  if (pre.length > 1) fail("pre_tokenizer", "holds more than one Metaspace");
  if (pre.length === 0) {
    if (!spaces) fail("normalizer", "spaces are not replaced by '▁' (not a Llama tokenizer)");
    return prepended ? undefined : "never";
  }
  if (prepended) fail("pre_tokenizer", "Metaspace after a normalizer that prepends '▁' is not supported");
  const m = pre[0]!;
  const scheme = m.prepend_scheme ?? (m.add_prefix_space === false ? "never" : "always");
  if (scheme !== "first" && scheme !== "always" && scheme !== "never") fail("pre_tokenizer", `Metaspace prepend_scheme ${showValue(scheme)} is not one of first, always, never`);
  return scheme as Vocabulary["spacePrefix"];
}

/** A merge as its two pieces: "a b" (tokenizers < 0.20) or ["a", "b"]. */
function mergePair(m: unknown): [string, string] | null {
  if (typeof m === "string") {
    const at = m.indexOf(" ", 1); // a piece may not hold a space (they are "▁"), but may be one
    return at > 0 && m.indexOf(" ", at + 1) < 0 ? [m.slice(0, at), m.slice(at + 1)] : null;
  }
  if (Array.isArray(m) && m.length === 2 && typeof m[0] === "string" && typeof m[1] === "string") return [m[0], m[1]];
  return null;
}

/**
 * The SentencePiece vocabulary equal to a Llama-family tokenizer.json (`text`, read from `source`).
 * BOS and EOS are "<s>" and "</s>" (a folder's tokenizer_config.json may name others: withHfAddedTokens).
 * Throws ERR_TOKENIZER naming the field when it is not JSON, not BPE with byte fallback, or not Llama's
 * "▁" text handling.
 */
export function parseHfTokenizerJson(text: string, source: string): Vocabulary {
  const fail = (field: string, why: string): never => {
    throw new Llama2Error("ERR_TOKENIZER", `${source}: ${field} ${why}`);
  };
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Llama2Error("ERR_TOKENIZER", `${source}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  if (!isObject(json)) return fail("(top level)", "is not a tokenizer.json object");
  const model = json.model;
  if (!isObject(model)) return fail("model", "is missing");
  if (model.type !== "BPE" && !(model.type === undefined && Array.isArray(model.merges))) {
    return fail("model.type", `is ${showValue(model.type)}: only BPE (Llama's SentencePiece converted by transformers) is supported`);
  }
  if (model.byte_fallback !== true) fail("model.byte_fallback", "is not true: not a Llama tokenizer (GPT-2 style byte-level BPE is not supported)");
  if (model.ignore_merges === true) fail("model.ignore_merges", "is true: not supported");
  if (!isObject(model.vocab)) return fail("model.vocab", "is not a { piece: id } object");
  const spacePrefix = checkLlamaText(json, fail);

  // Pieces by id: the model's vocabulary, then added tokens (which may also restate model pieces).
  const tokens: string[] = [];
  const addedType = new Map<number, number>();
  const place = (piece: string, id: unknown, field: () => string): void => {
    if (!Number.isInteger(id) || (id as number) < 0 || (id as number) >= 1 << 24) fail(field(), `has id ${showValue(id)}`);
    const prev = tokens[id as number];
    if (prev !== undefined && prev !== piece) fail(field(), `gives id ${showValue(id)} to ${showValue(piece)}, which ${showValue(prev)} already has`);
    tokens[id as number] = piece;
  };
  for (const [piece, id] of Object.entries(model.vocab)) place(piece, id, () => `model.vocab[${JSON.stringify(piece)}]`);
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added)) return fail("added_tokens", "is not an array");
  added.forEach((a, i) => {
    if (!isObject(a) || typeof a.content !== "string" || a.content === "") return fail(`added_tokens[${i}]`, "is not { id, content, special }");
    place(a.content, a.id, () => `added_tokens[${i}]`);
    addedType.set(a.id as number, a.special === true ? PieceType.CONTROL : PieceType.USER_DEFINED);
  });
  const n = tokens.length;
  const ids = new Map<string, number>();
  for (let id = 0; id < n; id++) {
    const piece = tokens[id];
    if (piece === undefined) fail("model.vocab", `has no piece with id ${id} (ids must run 0..${n - 1})`);
    if (ids.has(piece!)) fail("model.vocab", `repeats the piece ${JSON.stringify(piece)}`);
    ids.set(piece!, id);
  }

  const types = new Int32Array(n).fill(PieceType.NORMAL);
  const bytePieces = new Set<number>();
  for (let id = 0; id < n; id++) {
    if (/^<0x[0-9A-F]{2}>$/.test(tokens[id]!) && !addedType.has(id)) {
      types[id] = PieceType.BYTE;
      bytePieces.add(parseInt(tokens[id]!.slice(3, 5), 16));
    }
  }
  if (bytePieces.size !== 256) fail("model.vocab", `holds ${bytePieces.size} of the 256 byte pieces <0x00>..<0xFF> that byte fallback needs`);
  for (const [id, type] of addedType) types[id] = type;
  const unk = typeof model.unk_token === "string" ? ids.get(model.unk_token) : undefined;
  if (unk === undefined) return fail("model.unk_token", `${showValue(model.unk_token)} is not a piece`);
  types[unk] = PieceType.UNKNOWN;

  // Scores from merge ranks; a piece no merge makes (a character, a byte, an added token) needs none.
  if (!Array.isArray(model.merges)) return fail("model.merges", "is not an array");
  const rankOf = new Float64Array(n).fill(Infinity);
  model.merges.forEach((m, rank) => {
    const pair = mergePair(m);
    if (!pair) return fail(`model.merges[${rank}]`, `is ${showValue(m)}, not two pieces`);
    const made = ids.get(pair[0] + pair[1]);
    if (!ids.has(pair[0]) || !ids.has(pair[1]) || made === undefined) return fail(`model.merges[${rank}]`, `${showValue(m)} names a piece the vocabulary lacks`);
    if (rank < rankOf[made]!) rankOf[made] = rank;
  });
  const scores = new Float32Array(n);
  const lowest = -(model.merges.length + 1);
  for (let id = 0; id < n; id++) {
    if (types[id] !== PieceType.NORMAL) continue;
    // No merge makes it, so Hugging Face never builds it: the lowest score, so that SentencePiece builds it
    // only where nothing else merges (transformers' converted files list every pair, so this does not arise).
    scores[id] = Number.isFinite(rankOf[id]!) ? -rankOf[id]! : lowest;
  }
  // Float32 keeps integers exactly up to 2^24: ranks past that would tie.
  if (model.merges.length >= 1 << 24) fail("model.merges", "has more merges than scores can order");

  const special = (piece: string): number => {
    const id = ids.get(piece);
    if (id === undefined) return fail("model.vocab", `has no ${piece} piece (Llama's BOS / EOS)`);
    types[id] = PieceType.CONTROL; // SentencePiece takes BOS / EOS as control pieces
    return id;
  };
  const bosId = special("<s>");
  const eosId = special("</s>");
  const pad = [...addedType.keys()].find((id) => tokens[id] === "<pad>");
  return { tokens, scores, types, unkId: unk, bosId, eosId, padId: pad ?? -1, ...(spacePrefix && { spacePrefix }) };
}

/**
 * The "▁" rule transformers encodes a folder's text with when the pieces come from its tokenizer.model
 * (LlamaTokenizerFast): its tokenizer.json's when it has one (AutoTokenizer loads that file as it is), unless
 * tokenizer_config.json sets add_prefix_space (which makes transformers convert tokenizer.model instead);
 * converting, the rule is tokenizer_config.json's (add_prefix_space false: none; legacy false: Metaspace
 * "first"; else SentencePiece's). A tokenizer.json that is not a readable Llama one is passed over
 * (tokenizer.model is what is loaded).
 */
export function hfSpacePrefix(dir: string): Vocabulary["spacePrefix"] {
  const config = readHfJson(path.join(dir, "tokenizer_config.json"));
  const cfg = isObject(config) ? config : {};
  const jsonFile = path.join(dir, "tokenizer.json");
  if (typeof cfg.add_prefix_space !== "boolean" && existsSync(jsonFile)) {
    try {
      const json: unknown = JSON.parse(readHfText(jsonFile));
      if (isObject(json)) {
        return checkLlamaText(json, () => {
          throw new Error("not a Llama tokenizer.json");
        });
      }
    } catch {
      /* passed over: see above */
    }
  }
  if (cfg.add_prefix_space === false) return "never";
  return cfg.legacy === false ? "first" : undefined;
}
