// The Llama 2 tokenizer. Every source (a tokenizer.model file, a vocabulary read from a GGUF, the
// built-in demo vocabulary) becomes a Vocabulary, is written back as a SentencePiece ModelProto and
// loaded into Google's SentencePiece compiled to wasm (@agnai/sentencepiece-js), so encoding is
// SentencePiece itself. Decoding is done here from the pieces (lib/tokenizer/decoder.ts) so that
// one-shot and streaming decoding are the same code.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { InvalidArgumentError, Llama2Error, showValue } from "./errors.js";
import { buildDecoderTable, createStreamDecoder, type DecoderTable, type StreamDecoder, type StreamDecoderOptions } from "./tokenizer/decoder.js";
import { parseHfTokenizerJson } from "./tokenizer/hf-tokenizer-json.js";
import { llamaVocabulary } from "./tokenizer/llama-vocab.js";
import { buildSentencePieceModel, parseSentencePieceModel, PieceType, type Vocabulary } from "./tokenizer/sentencepiece-model.js";

export type { StreamDecoder, StreamDecoderOptions } from "./tokenizer/decoder.js";
export type { Vocabulary } from "./tokenizer/sentencepiece-model.js";

export interface EncodeOptions {
  /** Prepend BOS (default false). */
  bos?: boolean;
  /** Append EOS (default false). */
  eos?: boolean;
  /**
   * Read special pieces written in the text (control, user-defined and unknown pieces such as "<s>",
   * "</s>") as their ids, the way llama.cpp's `parse_special` and Hugging Face tokenizers read a rendered
   * chat template (default false: "<s>" is text). Each stretch of text between them is encoded on its own,
   * with SentencePiece's leading "▁".
   */
  special?: boolean;
  /**
   * Whether the text begins the input (default true). False for text that follows other tokens (a chat
   * template's text after a special piece): a tokenizer whose spacePrefix is "first" puts no "▁" before it.
   */
  start?: boolean;
}

// ---- the parts of @agnai/sentencepiece-js we use (it ships no type declarations) ----
interface WasmObject {
  delete(): void;
}
interface WasmStringView extends WasmObject {
  getView(): WasmObject;
}
interface WasmProcessor extends WasmObject {
  Load(view: WasmObject): WasmObject & { ToString(): string };
  PieceToId(view: WasmObject): number;
}
interface WasmModule {
  FS: { writeFile(path: string, data: Uint8Array): void; unlink(path: string): void };
  StringView: new (s: string) => WasmStringView;
  SentencePieceProcessor: new () => WasmProcessor;
}
interface SpProcessor {
  sentencepiece?: WasmModule;
  processor?: WasmProcessor;
  load(path: string): Promise<void>;
  encodeIds(text: string): number[];
  encodePieces(text: string): string[];
}

const MODEL_FILE = "sentencepiece.model"; // the name sentencepiece-js's own load() uses in the wasm FS

/** Loads ModelProto bytes into a fresh sentencepiece-js instance, checking that it really loaded. */
async function loadSentencePiece(model: Uint8Array, vocab: Vocabulary, source: string): Promise<SpProcessor> {
  const fail = (msg: string, cause?: unknown): never => {
    throw new Llama2Error("ERR_TOKENIZER", `${source}: ${msg}`, { cause });
  };
  let ctor: new () => SpProcessor;
  try {
    ctor = createRequire(import.meta.url)("@agnai/sentencepiece-js").SentencePieceProcessor;
  } catch (err) {
    return fail("the tokenizer needs the '@agnai/sentencepiece-js' package", err);
  }
  const sp = new ctor();
  // The package's only way to its wasm module is load(path): it instantiates the module, stores it in
  // `sentencepiece`, then reads `path` with fs. A path with a NUL byte makes fs throw before touching
  // the disk, leaving us the module to write the model into ourselves (no temp file).
  await sp.load("\0").catch(() => undefined);
  const wasm = sp.sentencepiece;
  if (!wasm?.FS || !wasm.StringView || !wasm.SentencePieceProcessor) return fail("unsupported @agnai/sentencepiece-js version");
  const withView = <T>(s: string, fn: (view: WasmObject) => T): T => {
    const sv = new wasm.StringView(s);
    const view = sv.getView();
    try {
      return fn(view);
    } finally {
      view.delete();
      sv.delete();
    }
  };
  let proc: WasmProcessor | undefined;
  try {
    wasm.FS.writeFile(MODEL_FILE, model);
    proc = new wasm.SentencePieceProcessor();
    // Like sentencepiece-js's load(), but the status is checked instead of dropped.
    const status = withView(MODEL_FILE, (v) => proc!.Load(v));
    const msg = status.ToString();
    status.delete();
    wasm.FS.unlink(MODEL_FILE);
    if (msg !== "OK") fail(`SentencePiece rejected the model: ${msg}`);
    // The whole vocabulary must be there: its last piece maps back to the last id.
    const last = vocab.tokens.length - 1;
    const got = withView(vocab.tokens[last]!, (v) => proc!.PieceToId(v));
    if (got !== last) fail(`SentencePiece loaded an incomplete vocabulary (piece ${last} maps to ${got})`);
  } catch (err) {
    proc?.delete();
    if (err instanceof Llama2Error) throw err;
    return fail("SentencePiece failed to load the model", err);
  }
  sp.processor = proc;
  return sp;
}

// Lone UTF-16 surrogates would be mangled (merged with the next character) by the wasm string
// conversion; TextEncoder's rule (U+FFFD) is used instead.
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

let demoTokenizer: Promise<Tokenizer> | undefined;

export class Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly unkId: number;
  /** -1 when the vocabulary has none. */
  readonly padId: number;
  /** Where the vocabulary came from (a path or a description), used in error messages. */
  readonly source: string;
  private readonly vocab: Vocabulary;
  private readonly sp: SpProcessor;
  /** The ids of "☺" (encodeBare's marker), once asked for. */
  private bareHead: number[] | undefined;
  private readonly table: DecoderTable;
  private bytesCache: (Uint8Array | null)[] | undefined;
  private specialCache: { re: RegExp | null; ids: Map<string, number> } | undefined;

  private constructor(vocab: Vocabulary, sp: SpProcessor, table: DecoderTable, source: string) {
    this.vocab = vocab;
    this.sp = sp;
    this.table = table;
    this.source = source;
    this.vocabSize = vocab.tokens.length;
    this.bosId = vocab.bosId;
    this.eosId = vocab.eosId;
    this.unkId = vocab.unkId;
    this.padId = vocab.padId;
  }

  /** The pieces, scores and special ids (what a GGUF file's tokenizer.ggml.* keys hold). */
  get vocabulary(): Readonly<Vocabulary> {
    return this.vocab;
  }

  /** Loads a SentencePiece tokenizer.model, or a Llama-family Hugging Face tokenizer.json (told apart by content). */
  static async fromFile(path: string): Promise<Tokenizer> {
    if (typeof path !== "string" || path === "") throw new InvalidArgumentError("path", "must be a non-empty string");
    let buf: Buffer;
    try {
      buf = await readFile(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") throw new Llama2Error("ERR_FILE_NOT_FOUND", `tokenizer file not found: ${path}`, { cause: err });
      throw new Llama2Error("ERR_FILE_READ", `cannot read tokenizer file ${path}: ${(err as Error).message}`, { cause: err });
    }
    // A ModelProto starts with a field tag (0x0a); JSON with "{" or "[" after any whitespace (or a UTF-8 BOM).
    const json = /^(\xef\xbb\xbf)?\s*[{[]/.test(buf.subarray(0, 64).toString("latin1"));
    const vocab = json ? parseHfTokenizerJson(buf.toString("utf8").replace(/^\uFEFF/, ""), path) : parseSentencePieceModel(buf, path);
    return Tokenizer.fromVocabulary(vocab, path);
  }

  /** Builds a tokenizer from a vocabulary (e.g. a GGUF's tokenizer metadata). */
  static async fromVocabulary(vocab: Vocabulary, source: string): Promise<Tokenizer> {
    if (typeof source !== "string") throw new InvalidArgumentError("source", "must be a string");
    const v = vocab as Partial<Vocabulary> | null;
    if (!v || typeof v !== "object" || !Array.isArray(v.tokens) || !(v.scores instanceof Float32Array) || !(v.types instanceof Int32Array)) {
      throw new InvalidArgumentError("vocab", "must be a Vocabulary { tokens: string[], scores: Float32Array, types: Int32Array, ... }");
    }
    const n = vocab.tokens.length;
    if (n === 0) throw new Llama2Error("ERR_TOKENIZER", `${source}: empty vocabulary`);
    if (!vocab.tokens.every((t) => typeof t === "string")) throw new InvalidArgumentError("vocab.tokens", "must all be strings");
    for (const key of ["unkId", "bosId", "eosId", "padId"] as const) {
      const id = vocab[key];
      const ok = Number.isInteger(id) && id < n && (id >= 0 || (key === "padId" && id === -1));
      if (!ok) throw new Llama2Error("ERR_TOKENIZER", `${source}: ${key} ${showValue(id)} is not a token id (vocabulary of ${n})`);
    }
    if (vocab.spacePrefix !== undefined && !["first", "always", "never"].includes(vocab.spacePrefix)) {
      throw new InvalidArgumentError("vocab.spacePrefix", `must be "first", "always", "never" or absent, got ${showValue(vocab.spacePrefix)}`);
    }
    const table = buildDecoderTable(vocab, source); // before the wasm load: it validates byte pieces
    const sp = await loadSentencePiece(buildSentencePieceModel(vocab), vocab, source);
    return new Tokenizer(vocab, sp, table, source);
  }

  /** The Llama 2 tokenizer built from the vocabulary bundled with llama-tokenizer-js (no download). */
  static demo(): Promise<Tokenizer> {
    if (!demoTokenizer) {
      const p = (async () => Tokenizer.fromVocabulary(llamaVocabulary(), "built-in Llama 2 vocabulary"))();
      p.catch(() => (demoTokenizer = undefined)); // a failed load is not cached: a later call retries
      demoTokenizer = p;
    }
    return demoTokenizer;
  }

  /** The piece string of `id` (e.g. "▁Hello", "<0x0A>", "<s>"). */
  piece(id: number): string {
    return this.vocab.tokens[this.checkId(id, "id")]!;
  }

  /** Whether `id` is a control token (BOS, EOS, ...), which decodes to nothing. */
  isControl(id: number): boolean {
    return this.vocab.types[this.checkId(id, "id")] === PieceType.CONTROL;
  }

  /**
   * The bytes each token adds to decoded text ("▁" as a space, a byte piece as its byte), as the stream
   * decoder produces them; null for control, unknown and unused pieces. Computed once.
   */
  tokenBytes(): readonly (Uint8Array | null)[] {
    if (!this.bytesCache) {
      const enc = new TextEncoder();
      const { surface, byteValue } = this.table;
      this.bytesCache = this.vocab.tokens.map((_, id) => {
        const type = this.vocab.types[id];
        if (type === PieceType.BYTE) return Uint8Array.of(byteValue[id]!);
        if (type === PieceType.CONTROL || type === PieceType.UNKNOWN || type === PieceType.UNUSED) return null;
        const s = surface[id]!;
        return s === "" ? null : enc.encode(s);
      });
    }
    return this.bytesCache;
  }

  /** SentencePiece encoding of `text` ("<s>" in the text is plain text, not BOS). */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const t = this.checkText(text);
    if (options === null || typeof options !== "object") throw new InvalidArgumentError("options", "must be an object");
    for (const k of Object.keys(options)) if (!["bos", "eos", "special", "start"].includes(k)) throw new InvalidArgumentError(`options.${k}`, "unknown option");
    const { bos = false, eos = false, special = false, start = true } = options;
    if (typeof bos !== "boolean") throw new InvalidArgumentError("bos", "must be a boolean");
    if (typeof eos !== "boolean") throw new InvalidArgumentError("eos", "must be a boolean");
    if (typeof special !== "boolean") throw new InvalidArgumentError("special", "must be a boolean");
    if (typeof start !== "boolean") throw new InvalidArgumentError("start", "must be a boolean");
    const parts = special ? this.splitSpecial(t) : [t];
    const ids = parts.flatMap((part, i) => (typeof part === "number" ? [part] : this.encodeText(part, start && i === 0)));
    if (bos) ids.unshift(this.bosId);
    if (eos) ids.push(this.eosId);
    return ids;
  }

  /**
   * `text` cut at the special pieces written in it (control, user-defined and unknown pieces, longest
   * first, left to right): text stretches as strings, special pieces as their ids. No empty strings.
   */
  splitSpecial(text: string): (string | number)[] {
    const t = this.checkText(text);
    const { re, ids } = this.specials();
    if (!re) return t === "" ? [] : [t];
    const out: (string | number)[] = [];
    let last = 0;
    re.lastIndex = 0;
    for (let m = re.exec(t); m; m = re.exec(t)) {
      if (m.index > last) out.push(t.slice(last, m.index));
      out.push(ids.get(m[0])!);
      last = m.index + m[0].length;
    }
    if (last < t.length) out.push(t.slice(last));
    return out;
  }

  /** The pieces SentencePiece splits `text` into (no BOS/EOS). */
  encodePieces(text: string): string[] {
    const t = this.checkText(text);
    return this.bare(t, true) ? this.encodeBare(t).map((id) => this.vocab.tokens[id]!) : this.callWasm(() => this.sp.encodePieces(t));
  }

  /** Exactly SentencePiece's DecodeIds: control tokens dropped, the first piece's leading space removed. */
  decode(ids: readonly number[] | ArrayLike<number>): string {
    const list = this.checkIds(ids);
    const d = createStreamDecoder(this.table, { stripLeadingSpace: true });
    let out = "";
    for (let i = 0; i < list.length; i++) out += d.push(list[i]!);
    return out + d.flush();
  }

  /** An incremental decoder: push ids one at a time, get complete UTF-8 text back. */
  createStreamDecoder(options: StreamDecoderOptions = {}): StreamDecoder {
    return createStreamDecoder(this.table, options);
  }

  /**
   * SentencePiece's ids of `text` without the "▁" it puts before text, as Meta's encode_infilling does it:
   * encode("☺" + text) less the ids of "☺" ("▁", "☺" in Llama's vocabulary; nothing merges across it).
   * Code Llama's infilling and the spacePrefix rules encode this way.
   */
  encodeBare(text: string): number[] {
    const t = this.checkText(text);
    const head = (this.bareHead ??= this.callWasm(() => this.sp.encodeIds("☺")));
    const ids = this.callWasm(() => this.sp.encodeIds("☺" + t));
    if (!head.every((id, i) => ids[i] === id)) {
      throw new Llama2Error("ERR_TOKENIZER", `${this.source}: "☺" merges with the text after it in this vocabulary, so text cannot be encoded without its leading "▁"`);
    }
    return ids.slice(head.length);
  }

  /** `text`'s ids; `atStart`: it begins the whole input (Metaspace "first" prefixes only there). */
  private encodeText(text: string, atStart: boolean): number[] {
    return this.bare(text, atStart) ? this.encodeBare(text) : this.callWasm(() => this.sp.encodeIds(text));
  }

  /** Whether the vocabulary's spacePrefix puts no "▁" before `text` (SentencePiece always puts one). */
  private bare(text: string, atStart: boolean): boolean {
    const p = this.vocab.spacePrefix;
    return !!p && (p === "never" || text.startsWith(" ") || text.startsWith("\u2581") || (p === "first" && !atStart));
  }

  /** The special pieces' strings (the lowest id for a string that repeats) and one regex for all of them. */
  private specials(): { re: RegExp | null; ids: Map<string, number> } {
    if (!this.specialCache) {
      const ids = new Map<string, number>();
      this.vocab.types.forEach((type, id) => {
        const piece = this.vocab.tokens[id]!;
        const special = type === PieceType.CONTROL || type === PieceType.USER_DEFINED || type === PieceType.UNKNOWN;
        if (special && piece !== "" && !ids.has(piece)) ids.set(piece, id);
      });
      const alternatives = [...ids.keys()].sort((a, b) => b.length - a.length).map((p) => p.replace(/[\\^$.*+?()[\]{}|\/]/g, "\\$&"));
      this.specialCache = { re: alternatives.length ? new RegExp(alternatives.join("|"), "gu") : null, ids };
    }
    return this.specialCache;
  }

  private checkId(id: number, field: string): number {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new InvalidArgumentError(field, `token id must be an integer in [0, ${this.vocabSize}), got ${showValue(id)}`);
    }
    return id;
  }

  private checkIds(ids: unknown): ArrayLike<number> {
    const ok = Array.isArray(ids) || (ArrayBuffer.isView(ids) && !(ids instanceof DataView));
    if (!ok) throw new InvalidArgumentError("ids", "must be an array of token ids");
    const list = ids as ArrayLike<number>;
    for (let i = 0; i < list.length; i++) this.checkId(list[i]!, `ids[${i}]`);
    return list;
  }

  private checkText(text: unknown): string {
    if (typeof text !== "string") throw new InvalidArgumentError("text", `must be a string, got ${text === null ? "null" : typeof text}`);
    return text.replace(LONE_SURROGATE, "\uFFFD");
  }

  private callWasm<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      // e.g. the wasm heap could not grow for a huge input
      throw new Llama2Error("ERR_TOKENIZER", `${this.source}: SentencePiece failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }
}
