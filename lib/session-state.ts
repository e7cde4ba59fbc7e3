// Saved chat sessions: the conversation and its KV cache in one file, so that a long chat resumes without
// evaluating its history again (on the CPU, minutes for a few thousand 7B tokens; a read here).
//
// File: "L2SESSN\0", u32 version, u32 header length, the header (JSON), zeros to a 4096-byte boundary,
// then the KV blocks of the session's sequence (ModelInfo's kvBlockBytes each, the backend's own layout).
// The KV only means something to the model that computed it, so the header records what decides it (the
// weights, sampled; their precision; the device kind and cache type; rotary scaling and LoRA adapters)
// and a restore refuses any difference (ERR_SESSION_STATE, naming it).
import { createHash } from "node:crypto";
import { open, readdir, type FileHandle } from "node:fs/promises";
import path from "node:path";
import { Llama2Error } from "./errors.js";
import { hfFolder } from "./formats/hf-folder.js";
import { writeSections } from "./formats/stream-write.js";
import type { ChatMessage, ModelInfo } from "./types.js";

const MAGIC = "L2SESSN\0";
export const SESSION_STATE_MAGIC = MAGIC;
const VERSION = 1;
const ALIGN = 4096;
/** Largest header accepted (the token ids and messages of a long chat are a few MB at most). */
const MAX_HEADER = 256 << 20;
/** Bytes of KV moved per native call. */
const CHUNK_BYTES = 32 << 20;

/** KV blocks moved per native call (saving and restoring alike). */
export const blocksPerChunk = (blockBytes: number): number => Math.max(1, Math.floor(CHUNK_BYTES / blockBytes));

/** What the KV depends on besides the tokens: a restore needs all of it equal. */
export interface ModelFingerprint {
  format: string;
  config: ModelInfo["config"];
  dtype: string;
  device: string;
  kvCacheType: string;
  /** Tokens per KV block, and the bytes of one block. */
  kvBlockSize: number;
  kvBlockBytes: number;
  lora: { name: string; scale: number }[];
  /** sha256 over each weight file's size, first and last 64 KiB, and 63 pieces of 4 KiB spread between. */
  weights: string;
}

export interface SessionStateHeader {
  version: number;
  model: ModelFingerprint;
  /** The token ids whose KV follows (their count is the sequence's length). */
  tokens: number[];
  session: {
    systemPrompt?: string;
    template: string;
    contextShift: boolean;
    messages: ChatMessage[];
    dropped: number;
    pending: number[];
    stale: boolean;
  };
}

const SAMPLE = 64 << 10;
const PIECE = 4 << 10;
const PIECES = 64;

/** The files holding the weights: the GGUF / llama2.c file, or an HF directory's safetensors. */
async function weightFiles(info: ModelInfo): Promise<string[]> {
  if (info.format !== "hf") return [info.path];
  const dir = hfFolder(info.path);
  return (await readdir(dir)).filter((f) => f.endsWith(".safetensors")).sort().map((f) => path.join(dir, f));
}

export async function modelFingerprint(info: ModelInfo, kvBlockSize: number, kvBlockBytes: number): Promise<ModelFingerprint> {
  const hash = createHash("sha256");
  try {
    for (const file of await weightFiles(info)) {
      const fh = await open(file, "r");
      try {
        const size = (await fh.stat()).size;
        hash.update(`${path.basename(file)}:${size}:`);
        // The start and the end, and pieces spread over the weights: fine-tunes of one base differ in
        // nearly every weight but may share a GGUF's metadata, its first bytes, and constant norms.
        const buf = Buffer.alloc(Math.min(SAMPLE, size));
        const piece = Buffer.alloc(Math.min(PIECE, size));
        await fh.read(buf, 0, buf.length, 0);
        hash.update(buf);
        for (let k = 1; k < PIECES; k++) {
          await fh.read(piece, 0, piece.length, Math.floor(((size - piece.length) * k) / PIECES));
          hash.update(piece);
        }
        await fh.read(buf, 0, buf.length, size - buf.length);
        hash.update(buf);
      } finally {
        await fh.close();
      }
    }
  } catch (err) {
    throw new Llama2Error("ERR_FILE_READ", `cannot read the model's weights to identify them (${info.path}): ${(err as Error).message}`, { cause: err });
  }
  return {
    format: info.format,
    config: info.config,
    dtype: info.dtype,
    device: info.device,
    kvCacheType: info.kvCacheType,
    kvBlockSize,
    kvBlockBytes,
    lora: info.lora.map((a) => ({ name: path.basename(a.path), scale: a.scale })),
    weights: hash.digest("hex"),
  };
}

/** Writes the header and `blocks` KV blocks read by `read(first, count, buf)` (via a temporary file). */
export async function writeSessionState(
  file: string,
  header: SessionStateHeader,
  blocks: number,
  read: (first: number, count: number, buf: Uint8Array) => Promise<void>,
): Promise<number> {
  const json = Buffer.from(JSON.stringify(header), "utf8");
  const head = Buffer.alloc(Math.ceil((16 + json.length) / ALIGN) * ALIGN);
  head.write(MAGIC, 0, "latin1");
  head.writeUInt32LE(VERSION, 8);
  head.writeUInt32LE(json.length, 12);
  json.copy(head, 16);
  const bb = header.model.kvBlockBytes;
  const per = blocksPerChunk(bb);
  const bufs = [new Uint8Array(Math.min(per, Math.max(blocks, 1)) * bb), new Uint8Array(Math.min(per, Math.max(blocks, 1)) * bb)];
  let turn = 0;
  return writeSections(file, [
    head,
    {
      name: "KV cache",
      bytes: blocks * bb,
      data: async function* () {
        for (let first = 0; first < blocks; first += per) {
          const count = Math.min(per, blocks - first);
          turn ^= 1; // two buffers taken in turn: one is written while the next is filled
          const buf = bufs[turn]!.subarray(0, count * bb);
          await read(first, count, buf);
          yield buf;
        }
      },
    },
  ]);
}

export interface OpenedState {
  header: SessionStateHeader;
  /** Reads `count` blocks from block `first` into `buf`. */
  read(first: number, count: number, buf: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

/** Opens a saved session, checking its framing and its header's shape (not yet the model: checkModel). */
export async function openSessionState(file: string): Promise<OpenedState> {
  let fh: FileHandle;
  try {
    fh = await open(file, "r");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code === "ENOENT" ? "ERR_FILE_NOT_FOUND" : "ERR_FILE_READ";
    throw new Llama2Error(code, `cannot open the saved session ${file}: ${(err as Error).message}`, { cause: err });
  }
  const bad = (what: string): never => {
    throw new Llama2Error("ERR_SESSION_STATE", `${file}: ${what}`);
  };
  try {
    const size = (await fh.stat()).size;
    const pre = Buffer.alloc(16);
    await fh.read(pre, 0, 16, 0);
    if (size < 16 || pre.toString("latin1", 0, 8) !== MAGIC) bad("not a saved llama2-native session");
    const version = pre.readUInt32LE(8);
    if (version !== VERSION) bad(`saved session version ${version} is not supported (this version reads ${VERSION})`);
    const n = pre.readUInt32LE(12);
    if (n > MAX_HEADER || 16 + n > size) bad(`header of ${n} bytes does not fit the file of ${size}`);
    const json = Buffer.alloc(n);
    await fh.read(json, 0, n, 16);
    let header: SessionStateHeader;
    try {
      header = JSON.parse(json.toString("utf8")) as SessionStateHeader;
    } catch (err) {
      return bad(`header is not valid JSON (${(err as Error).message})`);
    }
    checkHeaderShape(header, bad);
    const offset = Math.ceil((16 + n) / ALIGN) * ALIGN;
    const bb = header.model.kvBlockBytes;
    const blocks = Math.ceil(header.tokens.length / header.model.kvBlockSize);
    if (size !== offset + blocks * bb) bad(`holds ${size} bytes, but its header describes ${offset + blocks * bb} (truncated or corrupt)`);
    return {
      header,
      async read(first, count, buf) {
        const want = count * bb;
        let done = 0;
        while (done < want) {
          const { bytesRead } = await fh.read(buf, done, want - done, offset + first * bb + done);
          if (bytesRead === 0) bad("ended early");
          done += bytesRead;
        }
      },
      close: () => fh.close(),
    };
  } catch (err) {
    await fh.close().catch(() => {});
    if (err instanceof Llama2Error) throw err;
    throw new Llama2Error("ERR_FILE_READ", `cannot read the saved session ${file}: ${(err as Error).message}`, { cause: err });
  }
}

const isIds = (v: unknown): v is number[] => Array.isArray(v) && v.every((x) => Number.isInteger(x) && x >= 0);

function checkHeaderShape(h: SessionStateHeader, bad: (what: string) => never): void {
  if (!h || typeof h !== "object" || h.version !== VERSION) bad("header: not a session header");
  const m = h.model as Partial<ModelFingerprint> | undefined;
  const positive = (v: unknown) => Number.isInteger(v) && (v as number) > 0;
  if (!m || typeof m !== "object" || typeof m.weights !== "string" || !positive(m.kvBlockBytes) || !positive(m.kvBlockSize)) bad("header: model: missing or malformed");
  for (const k of ["format", "dtype", "device", "kvCacheType"] as const) if (typeof m![k] !== "string") bad(`header: model.${k}: expected a string`);
  if (!m!.config || typeof m!.config !== "object" || !Array.isArray(m!.lora)) bad("header: model.config / model.lora: malformed");
  if (!isIds(h.tokens)) bad("header: tokens: expected token ids");
  const s = h.session as Partial<SessionStateHeader["session"]> | undefined;
  if (!s || typeof s !== "object") bad("header: session: missing");
  if (typeof s!.template !== "string" || typeof s!.contextShift !== "boolean" || typeof s!.stale !== "boolean") bad("header: session: template / contextShift / stale malformed");
  if (s!.systemPrompt !== undefined && typeof s!.systemPrompt !== "string") bad("header: session.systemPrompt: expected a string");
  if (!Array.isArray(s!.messages)) bad("header: session.messages: expected an array");
  if (!Number.isInteger(s!.dropped) || s!.dropped! < 0 || s!.dropped! > s!.messages!.length || s!.dropped! % 2 !== 0) bad("header: session.dropped: out of range");
  if (!isIds(s!.pending)) bad("header: session.pending: expected token ids");
}

/** Throws ERR_SESSION_STATE naming the first field in which the saved model differs from `now`. */
export function checkSameModel(file: string, saved: ModelFingerprint, now: ModelFingerprint): void {
  const fields: (keyof ModelFingerprint)[] = ["format", "config", "weights", "lora", "dtype", "device", "kvCacheType", "kvBlockSize", "kvBlockBytes"];
  for (const f of fields) {
    const a = JSON.stringify(saved[f]) ?? "undefined";
    const b = JSON.stringify(now[f]) ?? "undefined";
    if (a !== b) {
      const what = f === "weights" ? "different weights" : `${f} ${a.length > 80 ? "differs" : `${a} (now ${b})`}`;
      throw new Llama2Error("ERR_SESSION_STATE", `${file} was saved with another model or load options: ${what}`, {
        suggestion: "load the same model file with the same dtype, device, kvCacheType, ropeScaling and lora to restore it",
      });
    }
  }
}
