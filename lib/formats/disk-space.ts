// Free space and full-disk errors for everything that writes large files (downloads, make-model, convert):
// a write that cannot fit fails before it starts, and one that runs out of space midway says so
// (ERR_DISK_FULL), not as a generic I/O error.
import { statfs } from "node:fs/promises";
import path from "node:path";
import { Llama2Error } from "../errors.js";

const gb = (n: number) => `${(n / 1e9).toFixed(2)} GB`;
const SUGGESTION = "free some space, or write to a folder on a larger disk (LLAMA2_HOME for downloads)";

/** Throws ERR_DISK_FULL when `file`'s folder has less than `needed` bytes free (unknown free space: no check). */
export async function checkFreeSpace(file: string, needed: number | undefined): Promise<void> {
  if (needed === undefined || needed <= 0) return;
  const s = await statfs(path.dirname(file)).catch(() => undefined);
  if (!s) return;
  const free = Number(s.bavail) * Number(s.bsize);
  if (free < needed) {
    // (a download's "x.gguf.part" or a writer's "x.gguf.tmp" is named by the file it becomes)
    const name = path.basename(file).replace(/\.(part|tmp)$/, "");
    throw new Llama2Error("ERR_DISK_FULL", `${path.dirname(file)}: ${gb(needed)} needed for ${name}, ${gb(free)} free`, { suggestion: SUGGESTION });
  }
}

/** Whether a file system error means no space (or quota) was left. */
export function isDiskFull(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === "ENOSPC" || code === "EDQUOT";
}

/** A write error as the library reports it: ERR_DISK_FULL when space ran out, else ERR_FILE_WRITE. */
export function writeError(err: unknown, what: string): Llama2Error {
  if (err instanceof Llama2Error) return err;
  if (isDiskFull(err)) return new Llama2Error("ERR_DISK_FULL", `disk full while writing ${what}`, { cause: err, suggestion: SUGGESTION });
  return new Llama2Error("ERR_FILE_WRITE", `writing ${what} failed: ${(err as Error).message}`, { cause: err });
}
