// `pullModel("llama2-7b-chat")`: a model from the Hugging Face Hub into
// `$LLAMA2_HOME/models/hf/<owner>/<repo>/<revision>/` (default ~/.llama2), then its local path. A single
// .gguf / .bin file, or a whole Hugging Face model folder (config.json, tokenizer.model, safetensors
// shards and their index; the repo's file list from the Hub's tree API). Files already there are used
// without touching the network; a folder counts as there once its `.llama2-complete.json` is written.
// HF_TOKEN (or HUGGING_FACE_HUB_TOKEN, or huggingface-cli's saved token) for gated repos; HF_ENDPOINT for
// a mirror; HF_HUB_OFFLINE=1 never downloads.
import { existsSync, readFileSync } from "node:fs";
import { unlink } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Llama2Error } from "../errors.js";
import { defaultModelsDir } from "../synth/demo.js";
import { writeJsonAtomic } from "../runner/store.js";
import { downloadFile, httpError, type Expected } from "./download.js";
import { formatHubRef, parseHubRef, type HubRef } from "./refs.js";

export interface PullProgress {
  /** The file being downloaded (its path in the repo). */
  file: string;
  fileIndex: number;
  files: number;
  /** Bytes of all files so far, and in all (when the Hub said). */
  bytes: number;
  totalBytes?: number;
}

export interface PullOptions {
  /** Revision when the reference names none (default "main"). */
  revision?: string;
  /** Root of the local copies (default $LLAMA2_HOME/models/hf). */
  dir?: string;
  /** Hub token (default HF_TOKEN, HUGGING_FACE_HUB_TOKEN, then $HF_HOME/token). */
  token?: string;
  /** Hub address (default HF_ENDPOINT or https://huggingface.co). */
  endpoint?: string;
  /** Download again even when a local copy exists. */
  force?: boolean;
  onProgress?: (p: PullProgress) => void;
  signal?: AbortSignal;
  /** Passed to each file's download (tests use them to make retries fast). */
  retry?: { attempts?: number; stallMs?: number; backoffMs?: (n: number) => number };
}

const COMPLETE = ".llama2-complete.json";
// Files of a Hugging Face model folder that the loader reads (plus the safetensors shards): the chat template
// and added tokens live in tokenizer_config.json, chat_template.jinja and added_tokens.json; tokenizer.json is
// the tokenizer of a folder without tokenizer.model, and otherwise says where transformers puts "▁".
const FOLDER_FILES = new Set([
  "config.json",
  "tokenizer.model",
  "tokenizer.json",
  "model.safetensors.index.json",
  "generation_config.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
  "added_tokens.json",
]);

export function hubToken(): string | undefined {
  const env = process.env.HF_TOKEN || process.env.HUGGING_FACE_HUB_TOKEN;
  if (env) return env.trim();
  const home = process.env.HF_HOME || path.join(os.homedir(), ".cache", "huggingface");
  try {
    return readFileSync(path.join(home, "token"), "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Where a reference is (or would be) stored locally. */
export function localPathOf(ref: HubRef, dir = path.join(defaultModelsDir(), "hf")): string {
  const base = path.join(dir, ...ref.repo.split("/"), ref.revision);
  return ref.file ? path.join(base, ...ref.file.split("/")) : base;
}

/** Downloads the model a reference names when it is not here yet; returns its local path. */
export async function pullModel(reference: string, opts: PullOptions = {}): Promise<string> {
  const ref = parseHubRef(reference, "model", opts.revision);
  const local = localPathOf(ref, opts.dir);
  const done = ref.file ? local : path.join(local, COMPLETE);
  if (!opts.force && existsSync(done)) return local;
  if (process.env.HF_HUB_OFFLINE === "1")
    throw new Llama2Error("ERR_FILE_NOT_FOUND", `${formatHubRef(ref)} is not downloaded (${local}) and HF_HUB_OFFLINE=1 forbids downloading it`);
  const endpoint = (opts.endpoint ?? process.env.HF_ENDPOINT ?? "https://huggingface.co").replace(/\/+$/, "");
  const token = opts.token ?? hubToken();
  let files: RepoFile[];
  let totalBytes: number | undefined;
  const fetchOne = async (f: RepoFile, i: number, n: number, before: number) => {
    const dest = ref.file ? local : path.join(local, ...f.name.split("/"));
    if (opts.force) await unlink(dest).catch(() => {});
    const url = `${endpoint}/${ref.repo}/resolve/${encodeURIComponent(ref.revision)}/${f.name.split("/").map(encodeURIComponent).join("/")}`;
    await downloadFile(url, dest, {
      ...opts.retry,
      token,
      ...(opts.signal && { signal: opts.signal }),
      expected: f.expected,
      onBytes: (bytes, size) => {
        const total = totalBytes ?? (ref.file ? size : undefined);
        opts.onProgress?.({ file: f.name, fileIndex: i, files: n, bytes: before + bytes, ...(total !== undefined && { totalBytes: total }) });
      },
    });
    return dest;
  };
  if (ref.file) {
    await fetchOne({ name: ref.file, expected: {} }, 0, 1, 0);
    return local;
  }
  const listing = await listFiles(endpoint, ref, token, opts.signal);
  files = chooseFolderFiles(ref, listing);
  const index = files.find((f) => f.name === "model.safetensors.index.json");
  if (index) {
    // Only the shards the index names (a repo may hold other .safetensors too).
    const at = await fetchOne(index, 0, 1, 0);
    const shards = shardsOf(at, ref);
    const missing = shards.filter((s) => !listing.some((e) => e.path === s));
    if (missing.length) throw new Llama2Error("ERR_MODEL_CORRUPT", `hf:${ref.repo}: model.safetensors.index.json names ${missing.join(", ")}, which the repo does not have`);
    files = files.filter((f) => !f.name.endsWith(".safetensors") || shards.includes(f.name));
  }
  totalBytes = files.every((f) => f.expected.size !== undefined) ? files.reduce((a, f) => a + f.expected.size!, 0) : undefined;
  let before = 0;
  for (const [i, f] of files.entries()) {
    if (f !== index) await fetchOne(f, i, files.length, before);
    before += f.expected.size ?? 0;
  }
  writeJsonAtomic(done, { ref: formatHubRef(ref), files: files.map((f) => f.name), pulledAt: new Date().toISOString() });
  return local;
}

interface RepoFile {
  name: string;
  expected: Expected;
}

function shardsOf(indexFile: string, ref: HubRef): string[] {
  let map: unknown;
  try {
    map = (JSON.parse(readFileSync(indexFile, "utf8")) as { weight_map?: unknown }).weight_map;
  } catch (err) {
    throw new Llama2Error("ERR_MODEL_CORRUPT", `hf:${ref.repo}: model.safetensors.index.json is not JSON: ${(err as Error).message}`, { cause: err });
  }
  const shards = map && typeof map === "object" ? [...new Set(Object.values(map as Record<string, unknown>))] : [];
  if (shards.length === 0 || !shards.every((s): s is string => typeof s === "string" && /^[^/]+\.safetensors$/.test(s)))
    throw new Llama2Error("ERR_MODEL_CORRUPT", `hf:${ref.repo}: model.safetensors.index.json has no usable weight_map`);
  return shards;
}

interface TreeEntry {
  type: string;
  path: string;
  size?: number;
  oid?: string;
  lfs?: { oid?: string; size?: number };
}

/** Every entry of the repo's root at the revision, from the Hub's tree listing (paginated by Link headers). */
async function listFiles(endpoint: string, ref: HubRef, token: string | undefined, signal?: AbortSignal): Promise<TreeEntry[]> {
  const entries: TreeEntry[] = [];
  let url: string | undefined = `${endpoint}/api/models/${ref.repo}/tree/${encodeURIComponent(ref.revision)}`;
  for (let page = 0; url && page < 100; page++) {
    let res: Response;
    try {
      res = await fetch(url, { headers: { accept: "application/json", ...(token && { authorization: `Bearer ${token}` }) }, ...(signal && { signal }) });
    } catch (err) {
      if (signal?.aborted) throw new Llama2Error("ERR_ABORTED", `listing ${ref.repo} aborted`, { cause: err });
      throw new Llama2Error("ERR_DOWNLOAD", `cannot reach ${endpoint} to list ${ref.repo}: ${(err as Error).message}`, { cause: err });
    }
    if (!res.ok) {
      await res.body?.cancel();
      const e = httpError(url, res.status, !!token);
      throw e instanceof Llama2Error ? e : new Llama2Error("ERR_DOWNLOAD", `${url}: HTTP ${res.status}; try again later`);
    }
    const body = (await res.json().catch(() => undefined)) as unknown;
    if (!Array.isArray(body)) throw new Llama2Error("ERR_DOWNLOAD", `${url}: not a file list`);
    entries.push(...(body as TreeEntry[]).filter((e) => e && typeof e.path === "string" && typeof e.type === "string"));
    const next = /<([^>]+)>;\s*rel="next"/.exec(res.headers.get("link") ?? "");
    url = next ? new URL(next[1]!, url).toString() : undefined;
  }
  return entries;
}

/** The files of a Hugging Face model folder to download (shards narrowed later by the index). */
function chooseFolderFiles(ref: HubRef, entries: TreeEntry[]): RepoFile[] {
  const names = entries.filter((e) => e.type === "file").map((e) => e.path);
  const weights = names.filter((n) => /^[^/]+\.safetensors$/.test(n));
  if (weights.length === 0) {
    const ggufs = names.filter((n) => n.endsWith(".gguf"));
    if (ggufs.length) {
      const pick = ggufs.find((n) => /q8_0/i.test(n)) ?? ggufs.find((n) => /f16/i.test(n)) ?? ggufs[0]!;
      throw new Llama2Error("ERR_INVALID_ARGUMENT", `hf:${ref.repo} holds ${ggufs.length} GGUF files and no safetensors: name one, e.g. hf:${ref.repo}/${pick}`);
    }
    const pt = names.some((n) => /\.(bin|pth|pt)$/.test(n));
    throw new Llama2Error(
      "ERR_FORMAT_UNSUPPORTED",
      `hf:${ref.repo} has no .safetensors weights${pt ? " (only PyTorch pickles, which llama2-native does not read)" : ""}; use a repo with safetensors or a GGUF file`,
    );
  }
  if (!names.includes("config.json")) throw new Llama2Error("ERR_FORMAT_UNSUPPORTED", `hf:${ref.repo} has safetensors but no config.json: not a Hugging Face model folder`);
  if (weights.length > 1 && !names.includes("model.safetensors.index.json"))
    throw new Llama2Error("ERR_FORMAT_UNSUPPORTED", `hf:${ref.repo} has ${weights.length} .safetensors files and no model.safetensors.index.json`);
  return names
    .filter((n) => FOLDER_FILES.has(n) || weights.includes(n))
    .map((name) => {
      const e = entries.find((x) => x.path === name)!;
      const lfs = e.lfs && typeof e.lfs.oid === "string" && /^[0-9a-f]{64}$/.test(e.lfs.oid);
      const size = Number(lfs ? (e.lfs!.size ?? e.size) : e.size);
      return {
        name,
        expected: {
          ...(Number.isSafeInteger(size) && size >= 0 && { size }),
          ...(lfs ? { sha256: e.lfs!.oid! } : typeof e.oid === "string" && /^[0-9a-f]{40}$/.test(e.oid) ? { gitSha1: e.oid } : {}),
        },
      };
    });
}
