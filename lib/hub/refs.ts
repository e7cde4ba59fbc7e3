// Names of models on the Hugging Face Hub: `hf:owner/repo[@revision][/path/to/file]`, the Hub's own
// https://huggingface.co/owner/repo/(resolve|blob)/revision/path URLs, and a few aliases for the Llama 2
// chat models. Parsing is strict: every part becomes a path on disk and in a URL.
import { InvalidArgumentError } from "../errors.js";

export interface HubRef {
  /** "owner/name" */
  repo: string;
  revision: string;
  /** A file in the repo (a .gguf or llama2.c .bin); absent: the whole repo as a Hugging Face model folder. */
  file?: string;
}

export interface ModelAlias {
  ref: string;
  description: string;
}

/**
 * Short names for `--model` / `llama2 pull`. GGUF Q8_0 files load natively as int8 weights on the CPU and on
 * CUDA; Q4_K_M files run their Q4_K matrices as 4-bit and the rest as int8 (4.6 GiB of 7B weights against
 * Q8_0's 6.7). fp16 weights: the Meta repos, gated: accept the license on huggingface.co and set HF_TOKEN.
 */
export const MODEL_ALIASES: Readonly<Record<string, ModelAlias>> = {
  "llama2-7b-chat": {
    ref: "hf:TheBloke/Llama-2-7B-Chat-GGUF/llama-2-7b-chat.Q8_0.gguf",
    description: "Llama 2 7B chat, GGUF Q8_0 (7.2 GB), tokenizer included",
  },
  "llama2-7b-chat-q4": {
    ref: "hf:TheBloke/Llama-2-7B-Chat-GGUF/llama-2-7b-chat.Q4_K_M.gguf",
    description: "Llama 2 7B chat, GGUF Q4_K_M (4.1 GB download; its Q4_K matrices run 4-bit, the rest int8: 4.6 GiB of weights)",
  },
  "llama2-13b-chat": {
    ref: "hf:TheBloke/Llama-2-13B-chat-GGUF/llama-2-13b-chat.Q8_0.gguf",
    description: "Llama 2 13B chat, GGUF Q8_0 (13.8 GB), tokenizer included",
  },
  "tinyllama-1.1b-chat": {
    ref: "hf:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF/tinyllama-1.1b-chat-v1.0.Q8_0.gguf",
    description: "TinyLlama 1.1B chat, GGUF Q8_0 (1.2 GB): Llama 2's vocabulary, a draft model for --draft-model",
  },
  "codellama-7b": {
    ref: "hf:TheBloke/CodeLlama-7B-GGUF/codellama-7b.Q8_0.gguf",
    description: "Code Llama 7B (base), GGUF Q8_0 (7.2 GB): code completion and fill in the middle (infill, --suffix)",
  },
  "llama2-7b-chat-hf": {
    ref: "hf:meta-llama/Llama-2-7b-chat-hf",
    description: "Meta's Llama 2 7B chat, fp16 safetensors (13.5 GB; gated: needs HF_TOKEN)",
  },
  "llama2-13b-chat-hf": {
    ref: "hf:meta-llama/Llama-2-13b-chat-hf",
    description: "Meta's Llama 2 13B chat, fp16 safetensors (26 GB; gated: needs HF_TOKEN)",
  },
};

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$/;
const REVISION = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9._+ -]{0,199}$/;
const HUB_URL = /^https:\/\/(?:www\.)?huggingface\.co\/([^/]+)\/([^/]+)\/(?:resolve|blob)\/([^/]+)\/(.+?)(?:\?.*)?$/;

/** Whether `--model` names something on the Hub (an alias, hf:..., or a huggingface.co file URL). */
export function isHubRef(s: string): boolean {
  return Object.hasOwn(MODEL_ALIASES, s) || s.startsWith("hf:") || HUB_URL.test(s);
}

/**
 * Quantization tags in GGUF file names that the engine does not load. It reads F32/F16/BF16/Q8_0 and
 * llama.cpp's Q4_0, Q4_1, Q5_0, Q5_1 and K-quants Q2_K..Q6_K (with their _S/_M/_L mixes); not the
 * IQ*, TQ* or repacked (Q4_0_4_4 ...) types.
 */
export function unsupportedQuant(file: string): string | undefined {
  const base = file.split("/").pop()!;
  const m = /(?:^|[.\-_])(i?t?q[1-8](?:_[0-9a-z]+)*)(?=[.\-_]|$)/i.exec(base.replace(/\.gguf$/i, ""));
  return m && !/^q(?:8_0|[45]_[01]|[2-6]_k(?:_[sml])?)$/i.test(m[1]!) ? m[1] : undefined;
}

/**
 * Parses a Hub reference (see the file header). `field` names the option in errors. A revision given
 * separately (--revision) applies when the reference carries none.
 */
export function parseHubRef(input: string, field = "model", revision?: string): HubRef {
  const s = Object.hasOwn(MODEL_ALIASES, input) ? MODEL_ALIASES[input]!.ref : input;
  let owner: string, name: string, rev: string | undefined, file: string | undefined;
  const url = HUB_URL.exec(s);
  if (url) {
    [, owner, name, rev, file] = url as unknown as [string, string, string, string, string];
    file = decodeURIComponent(file);
    rev = decodeURIComponent(rev);
  } else {
    if (!s.startsWith("hf:")) throw new InvalidArgumentError(field, `not a Hugging Face reference: '${input}' (expected hf:owner/repo[/file.gguf])`);
    const parts = s.slice(3).split("/");
    if (parts.length < 2) throw new InvalidArgumentError(field, `'${input}': expected hf:owner/repo or hf:owner/repo/path/file.gguf`);
    owner = parts[0]!;
    const at = parts[1]!.indexOf("@");
    name = at < 0 ? parts[1]! : parts[1]!.slice(0, at);
    if (at >= 0) rev = parts[1]!.slice(at + 1);
    file = parts.length > 2 ? parts.slice(2).join("/") : undefined;
  }
  if (!NAME.test(owner) || !NAME.test(name) || owner.includes("..") || name.includes(".."))
    throw new InvalidArgumentError(field, `'${input}': '${owner}/${name}' is not a Hugging Face repo name`);
  if (rev !== undefined && revision !== undefined && rev !== revision)
    throw new InvalidArgumentError(field, `'${input}' names revision '${rev}' but --revision is '${revision}'`);
  rev = rev ?? revision ?? "main";
  if (!REVISION.test(rev) || rev.includes("..")) throw new InvalidArgumentError(field, `'${input}': '${rev}' is not a revision (a branch, tag or commit)`);
  if (file !== undefined) {
    if (file === "" || !file.split("/").every((p) => SEGMENT.test(p) && p !== "." && p !== ".."))
      throw new InvalidArgumentError(field, `'${input}': '${file}' is not a file path in a repo`);
    if (!/\.(gguf|bin)$/i.test(file))
      throw new InvalidArgumentError(
        field,
        `'${input}': a file reference names a .gguf or llama2.c .bin file; for a Hugging Face model folder (safetensors) name the repo alone: hf:${owner}/${name}`,
      );
    const q = unsupportedQuant(file);
    if (q)
      throw new InvalidArgumentError(
        field,
        `'${input}': ${q} tensors are not supported (llama2-native loads GGUF F32, F16, BF16, Q8_0, Q4_0/Q4_1/Q5_0/Q5_1 and the K-quants Q2_K..Q6_K); pick the repo's Q4_K_M, Q8_0 or F16 file`,
      );
  }
  return { repo: `${owner}/${name}`, revision: rev, ...(file !== undefined && { file }) };
}

/** The canonical `hf:` form of a reference. */
export function formatHubRef(r: HubRef): string {
  return `hf:${r.repo}${r.revision === "main" ? "" : `@${r.revision}`}${r.file ? `/${r.file}` : ""}`;
}
