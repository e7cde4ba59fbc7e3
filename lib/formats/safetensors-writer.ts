// Streaming safetensors writer: 8-byte little-endian header length, a JSON header (dtype, shape,
// data_offsets per tensor, padded with spaces to a multiple of 8 like the reference implementation),
// then the tensors back to back. A model larger than `maxShardBytes` is split the Hugging Face way:
// model-0000i-of-0000n.safetensors plus model.safetensors.index.json.
import { writeFile, rename } from "node:fs/promises";
import path from "node:path";
import { InvalidArgumentError, Llama2Error } from "../errors.js";
import { writeSections, type FileSection, type TensorProducer } from "./stream-write.js";

export type SafetensorsDtype = "F32" | "F16" | "BF16";
const DTYPE_BYTES: Record<SafetensorsDtype, number> = { F32: 4, F16: 2, BF16: 2 };

export interface SafetensorsTensor {
  name: string;
  dtype: SafetensorsDtype;
  /** Row-major (PyTorch) shape. */
  shape: number[];
  data: TensorProducer;
}

export interface SafetensorsPlan {
  header: Uint8Array;
  sizes: number[];
  totalBytes: number;
}

/** Validates the tensors and builds the header. */
export function planSafetensors(tensors: SafetensorsTensor[], metadata: Record<string, string> = { format: "pt" }): SafetensorsPlan {
  const json: Record<string, unknown> = { __metadata__: metadata };
  const sizes: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    const field = `tensors.${t.name}`;
    if (!t.name || t.name === "__metadata__" || t.name in json) throw new InvalidArgumentError(field, "empty, reserved or duplicate name");
    if (!(t.dtype in DTYPE_BYTES)) throw new InvalidArgumentError(`${field}.dtype`, `unsupported dtype '${t.dtype}' (F32, F16, BF16)`);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d > 0))
      throw new InvalidArgumentError(`${field}.shape`, `expected positive integers, got [${t.shape.join(", ")}]`);
    const size = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    json[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + size] };
    sizes.push(size);
    offset += size;
  }
  let text = JSON.stringify(json);
  text += " ".repeat((8 - ((8 + Buffer.byteLength(text)) % 8)) % 8);
  const body = Buffer.from(text, "utf8");
  const header = Buffer.alloc(8 + body.length);
  header.writeBigUInt64LE(BigInt(body.length), 0);
  body.copy(header, 8);
  return { header, sizes, totalBytes: header.length + offset };
}

function sections(plan: SafetensorsPlan, tensors: SafetensorsTensor[]): FileSection[] {
  return [plan.header, ...tensors.map((t, i) => ({ name: t.name, bytes: plan.sizes[i]!, data: t.data }))];
}

export interface SafetensorsWriteOptions {
  metadata?: Record<string, string>;
  /** Bytes written so far / in all (all shards together). */
  onProgress?: (bytesWritten: number, totalBytes: number) => void;
}

/** Writes one .safetensors file (via `<file>.tmp`). Returns its size. */
export async function writeSafetensorsFile(file: string, tensors: SafetensorsTensor[], opts: SafetensorsWriteOptions = {}): Promise<number> {
  const plan = planSafetensors(tensors, opts.metadata);
  let written = 0;
  return writeSections(file, sections(plan, tensors), { onBytes: (n) => opts.onProgress?.((written += n), plan.totalBytes) });
}

export interface ShardOptions extends SafetensorsWriteOptions {
  /** Largest shard's tensor data (default 5 GB, transformers' `max_shard_size`); a bigger single tensor gets a shard of its own. */
  maxShardBytes?: number;
}

/** Splits tensors, in order, into shards of at most `maxShardBytes` of data. */
export function shardTensors<T extends { shape: number[]; dtype: SafetensorsDtype }>(tensors: T[], maxShardBytes: number): T[][] {
  if (!(Number.isFinite(maxShardBytes) && maxShardBytes > 0)) throw new InvalidArgumentError("maxShardBytes", `must be a positive number, got ${maxShardBytes}`);
  const shards: T[][] = [[]];
  let bytes = 0;
  for (const t of tensors) {
    const size = t.shape.reduce((a, b) => a * b, 1) * (DTYPE_BYTES[t.dtype] ?? 0);
    if (bytes + size > maxShardBytes && shards.at(-1)!.length > 0) {
      shards.push([]);
      bytes = 0;
    }
    shards.at(-1)!.push(t);
    bytes += size;
  }
  return shards;
}

/**
 * Writes the weights of a model into `dir`: `model.safetensors` when they fit in one shard, else
 * `model-0000i-of-0000n.safetensors` and `model.safetensors.index.json`. Returns the file names.
 */
export async function writeSafetensorsModel(dir: string, tensors: SafetensorsTensor[], opts: ShardOptions = {}): Promise<string[]> {
  const shards = shardTensors(tensors, opts.maxShardBytes ?? 5e9);
  const plans = shards.map((s) => planSafetensors(s, opts.metadata));
  const total = plans.reduce((a, p) => a + p.totalBytes, 0);
  const n = shards.length;
  const names = n === 1 ? ["model.safetensors"] : shards.map((_, i) => `model-${pad5(i + 1)}-of-${pad5(n)}.safetensors`);
  let written = 0;
  for (let i = 0; i < n; i++) {
    await writeSections(path.join(dir, names[i]!), sections(plans[i]!, shards[i]!), {
      onBytes: (b) => opts.onProgress?.((written += b), total),
    });
  }
  if (n === 1) return names;
  const weightMap: Record<string, string> = {};
  shards.forEach((s, i) => s.forEach((t) => (weightMap[t.name] = names[i]!)));
  const totalSize = plans.reduce((a, p) => a + p.sizes.reduce((x, y) => x + y, 0), 0);
  const index = path.join(dir, "model.safetensors.index.json");
  try {
    await writeFile(`${index}.tmp`, JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2) + "\n");
    await rename(`${index}.tmp`, index);
  } catch (err) {
    throw new Llama2Error("ERR_FILE_READ", `cannot write ${index}: ${(err as Error).message}`, { cause: err });
  }
  return [...names, "model.safetensors.index.json"];
}

function pad5(i: number): string {
  return String(i).padStart(5, "0");
}
