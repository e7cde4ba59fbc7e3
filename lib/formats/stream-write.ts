// Writes a file of known layout (headers, padding, tensor data) without holding it in memory:
// each tensor's bytes come from a producer, chunk by chunk, and go straight to disk. The file is
// written as a temporary and renamed at the end, so the final name never names a partial file.
import { open, rename, rm, type FileHandle } from "node:fs/promises";
import { Llama2Error } from "../errors.js";
import { checkFreeSpace, writeError } from "./disk-space.js";

/**
 * Produces one tensor's bytes in order, in chunks of any size. The writer finishes writing chunk i
 * before it asks for chunk i + 2 (it writes one chunk while the next is produced), so a producer may
 * rotate two reusable buffers.
 */
export type TensorProducer = () => Iterable<Uint8Array> | AsyncIterable<Uint8Array>;

/** A piece of the file: literal bytes (header, padding) or `bytes` bytes from a producer. */
export type FileSection = Uint8Array | { name: string; bytes: number; data: TensorProducer };

export interface StreamWriteOptions {
  /** Where to write before the rename (default `<path>.tmp`). */
  tmpPath?: string;
  /** Called after each write with the number of bytes just written. */
  onBytes?: (n: number) => void;
}

/** Writes `sections` in order to `path` (via a temporary file). Returns the file size. */
export async function writeSections(path: string, sections: FileSection[], opts: StreamWriteOptions = {}): Promise<number> {
  const tmp = opts.tmpPath ?? `${path}.tmp`;
  await checkFreeSpace(tmp, sections.reduce((n, s) => n + (s instanceof Uint8Array ? s.length : s.bytes), 0));
  let fh: FileHandle | undefined;
  try {
    fh = await open(tmp, "w");
  } catch (err) {
    throw new Llama2Error("ERR_FILE_WRITE", `cannot create ${tmp}: ${(err as Error).message}`, { cause: err });
  }
  let pos = 0;
  let inflight: Promise<void> | undefined;
  const write = async (buf: Uint8Array): Promise<void> => {
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await fh!.write(buf, done, buf.length - done, pos + done);
      done += bytesWritten;
    }
    pos += buf.length;
    opts.onBytes?.(buf.length);
  };
  // One write in flight while the next chunk is produced: generation overlaps the disk I/O.
  const enqueue = async (buf: Uint8Array): Promise<void> => {
    if (inflight) await inflight;
    inflight = write(buf);
    inflight.catch(() => {}); // awaited later; avoid an unhandled rejection in between
  };
  try {
    for (const s of sections) {
      if (s instanceof Uint8Array) {
        if (s.length) await enqueue(s);
        continue;
      }
      let produced = 0;
      for await (const chunk of s.data()) {
        produced += chunk.length;
        if (produced > s.bytes) break;
        if (chunk.length) await enqueue(chunk);
      }
      if (produced !== s.bytes) {
        throw new Llama2Error("ERR_INTERNAL", `tensor ${s.name}: the producer gave ${produced > s.bytes ? "more than" : produced} bytes, expected ${s.bytes}`);
      }
    }
    if (inflight) await inflight;
    await fh!.datasync(); // the data must be on disk before the rename makes it visible
    await fh!.close();
    fh = undefined;
    await rename(tmp, path);
    return pos;
  } catch (err) {
    if (inflight) await inflight.catch(() => {});
    await fh?.close().catch(() => {});
    await rm(tmp, { force: true }).catch(() => {});
    throw writeError(err, path);
  }
}

/** `n` zero bytes (padding). */
export function zeros(n: number): Uint8Array {
  return new Uint8Array(n);
}
