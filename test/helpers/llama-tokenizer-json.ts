// The Llama 2 tokenizer.json as transformers' LlamaConverter writes it (meta-llama/Llama-2-7b-hf): its
// vocabulary and its 61,249 merges in their order come from llama-tokenizer-js, which packed them from
// that file (its data-conversion.py); the other fields are the converter's. `variant` "metaspace" is the
// legacy: false form (no normalizer; a Metaspace pre-tokenizer), `mergeForm` "pairs" the tokenizers >= 0.20 form.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { llamaVocabulary } from "../../lib/tokenizer/llama-vocab.js";
import { PieceType, type Vocabulary } from "../../lib/tokenizer/sentencepiece-model.js";

const require = createRequire(import.meta.url);

/** The package's pieces (as lib's llamaVocabulary reads them) and its merges. */
function packageData(): { vocab: string[]; merges: [number, number][] } {
  const src = readFileSync(require.resolve("llama-tokenizer-js/llama-tokenizer.js"), "utf8");
  const vocab = llamaVocabulary().tokens;
  const bin = Buffer.from(/const llama_merges_binary = "([^"]+)"/.exec(src)![1]!, "base64");
  const merges: [number, number][] = [];
  for (let i = 0; i + 3 < bin.length; i += 4) merges.push([bin.readUInt16LE(i), bin.readUInt16LE(i + 2)]);
  return { vocab, merges };
}

export interface TokenizerJsonOptions {
  variant?: "legacy" | "metaspace";
  /** legacy: whether the normalizer prepends "▁" (add_prefix_space); metaspace: the prepend_scheme (default "first"). */
  prepend?: boolean | "first" | "always" | "never";
  mergeForm?: "strings" | "pairs";
  /** Extra added tokens after the vocabulary (id = 32000, 32001, ...). */
  added?: { content: string; special: boolean }[];
}

const addedToken = (id: number, content: string, special: boolean) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special });

export function llamaTokenizerJson(opts: TokenizerJsonOptions = {}): Record<string, unknown> {
  const { vocab, merges } = packageData();
  return tokenizerJson(vocab, merges, opts);
}

/**
 * The tokenizer.json transformers would write for a SentencePiece vocabulary (its SentencePieceExtractor:
 * every split of a piece into two pieces, by the piece's score, best first).
 */
export function tokenizerJsonFor(v: Vocabulary, opts: TokenizerJsonOptions = {}): Record<string, unknown> {
  const ids = new Map(v.tokens.map((t, i) => [t, i]));
  const merges: [number, number, number][] = [];
  v.tokens.forEach((piece, id) => {
    if (v.types[id] !== PieceType.NORMAL) return;
    const chars = [...piece];
    const local: [number, number, number][] = [];
    for (let k = 1; k < chars.length; k++) {
      const l = ids.get(chars.slice(0, k).join("")), r = ids.get(chars.slice(k).join(""));
      if (l !== undefined && r !== undefined) local.push([l, r, v.scores[id]!]);
    }
    merges.push(...local.sort((a, b) => a[0] - b[0] || a[1] - b[1]));
  });
  merges.sort((a, b) => b[2] - a[2]); // stable: a piece's pairs stay together
  return tokenizerJson(v.tokens, merges.map(([a, b]) => [a, b]), opts);
}

function tokenizerJson(vocab: string[], merges: [number, number][], opts: TokenizerJsonOptions): Record<string, unknown> {
  const replace = { type: "Replace", pattern: { String: " " }, content: "\u2581" };
  const text = opts.variant === "metaspace"
    ? { normalizer: null, pre_tokenizer: { type: "Metaspace", replacement: "\u2581", prepend_scheme: typeof opts.prepend === "string" ? opts.prepend : "first", split: false } }
    : { normalizer: { type: "Sequence", normalizers: opts.prepend === false ? [replace] : [{ type: "Prepend", prepend: "\u2581" }, replace] }, pre_tokenizer: null };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [
      addedToken(0, "<unk>", true),
      addedToken(1, "<s>", true),
      addedToken(2, "</s>", true),
      ...(opts.added ?? []).map((a, i) => addedToken(vocab.length + i, a.content, a.special)),
    ],
    ...text,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: "<s>", type_id: 1 } }, { Sequence: { id: "B", type_id: 1 } }],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "\u2581" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab: Object.fromEntries(vocab.map((p, i) => [p, i])),
      merges: merges.map(([a, b]) => (opts.mergeForm === "pairs" ? [vocab[a]!, vocab[b]!] : `${vocab[a]} ${vocab[b]}`)),
    },
  };
}
