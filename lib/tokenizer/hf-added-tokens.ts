// A Hugging Face directory's tokens beyond its tokenizer.model: fine-tunes add pieces (ChatML's
// "<|im_start|>" / "<|im_end|>", a "<pad>", ...) in tokenizer_config.json's "added_tokens_decoder" (or the
// older added_tokens.json) and grow the model's vocabulary to match, sometimes padded further. The
// vocabulary is extended the way llama.cpp's converter writes it into a GGUF: an added special token is a
// control piece, any other a user-defined piece, and ids nothing names are unused "[PAD{id}]" pieces. A
// bos_token / eos_token in tokenizer_config.json (or special_tokens_map.json) naming an added token makes it
// BOS / EOS.
import path from "node:path";
import { Llama2Error, showValue } from "../errors.js";
import { readHfJson } from "../formats/hf-folder.js";
import { PieceType, type Vocabulary } from "./sentencepiece-model.js";

interface Added {
  content: string;
  special: boolean;
}

/** A token's text in tokenizer_config.json: a string, or an AddedToken object { content }. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") return (v as { content: string }).content;
  return undefined;
}

/**
 * `vocab` (tokenizer.model's or tokenizer.json's) extended to `vocabSize` pieces with the directory's added
 * tokens, and BOS / EOS as tokenizer_config.json names them; `vocab` itself when that changes nothing.
 * Throws ERR_TOKENIZER when the added tokens do not fit (an id past the vocabulary, a piece that repeats one).
 */
export function withHfAddedTokens(vocab: Vocabulary, dir: string, vocabSize: number): Vocabulary {
  const n = vocab.tokens.length;
  const added = new Map<number, Added>();
  const configFile = path.join(dir, "tokenizer_config.json");
  const config = (readHfJson(configFile) ?? null) as Record<string, unknown> | null;
  const where = (id: number, file: string) => `${file}: added token ${id}`;
  const decoder = config && typeof config === "object" ? config.added_tokens_decoder : undefined;
  if (decoder && typeof decoder === "object") {
    for (const [key, v] of Object.entries(decoder as Record<string, unknown>)) {
      const id = Number(key);
      const content = tokenText(v);
      if (!Number.isInteger(id) || id < 0 || content === undefined) throw new Llama2Error("ERR_TOKENIZER", `${configFile}: added_tokens_decoder["${key}"] is not { content, special }`);
      if (id >= n) added.set(id, { content, special: (v as { special?: unknown }).special === true });
    }
  }
  const legacyFile = path.join(dir, "added_tokens.json");
  const legacy = readHfJson(legacyFile);
  if (legacy !== undefined) {
    if (!legacy || typeof legacy !== "object" || Array.isArray(legacy)) throw new Llama2Error("ERR_TOKENIZER", `${legacyFile}: expected { "piece": id, ... }`);
    for (const [content, id] of Object.entries(legacy as Record<string, unknown>)) {
      if (!Number.isInteger(id) || (id as number) < 0) throw new Llama2Error("ERR_TOKENIZER", `${legacyFile}: ${showValue(content)} has id ${showValue(id)}`);
      if ((id as number) >= n && !added.has(id as number)) added.set(id as number, { content, special: false });
    }
  }
  const tokens = vocab.tokens.slice();
  const scores = new Float32Array(vocabSize);
  scores.set(vocab.scores.subarray(0, n));
  const types = new Int32Array(vocabSize);
  types.set(vocab.types.subarray(0, n));
  const seen = new Set(tokens);
  for (const id of added.keys()) {
    if (id >= vocabSize) throw new Llama2Error("ERR_TOKENIZER", `${where(id, configFile)} is past the model's vocabulary of ${vocabSize}`);
  }
  for (let id = n; id < vocabSize; id++) {
    const a = added.get(id);
    const piece = a ? a.content : `[PAD${id}]`;
    if (piece === "" || seen.has(piece)) throw new Llama2Error("ERR_TOKENIZER", `${where(id, configFile)} ${JSON.stringify(piece)} is empty or repeats a piece`);
    seen.add(piece);
    tokens.push(piece);
    types[id] = a ? (a.special ? PieceType.CONTROL : PieceType.USER_DEFINED) : PieceType.UNUSED;
  }
  // BOS / EOS as tokenizer_config.json names them, else special_tokens_map.json (older saves; transformers
  // reads both, the config first). Only an added or control piece can be one (a normal piece would stop
  // being made from text).
  const map = readHfJson(path.join(dir, "special_tokens_map.json"));
  const nameOf = (key: "bos_token" | "eos_token"): string | undefined =>
    (config && typeof config === "object" ? tokenText(config[key]) : undefined) ?? (map && typeof map === "object" ? tokenText((map as Record<string, unknown>)[key]) : undefined);
  const special = (key: "bos_token" | "eos_token", fallback: number): number => {
    const text = nameOf(key);
    const id = text === undefined ? -1 : tokens.indexOf(text);
    if (id < 0 || (id < n && types[id] !== PieceType.CONTROL && types[id] !== PieceType.USER_DEFINED)) return fallback;
    types[id] = PieceType.CONTROL; // SentencePiece takes BOS / EOS as control pieces
    return id;
  };
  const bosId = special("bos_token", vocab.bosId);
  const eosId = special("eos_token", vocab.eosId);
  if (vocabSize === n && bosId === vocab.bosId && eosId === vocab.eosId && types.every((t, i) => t === vocab.types[i])) return vocab;
  return { ...vocab, tokens, scores, types, bosId, eosId };
}
