import { existsSync } from "node:fs";
import path from "node:path";

/** The directory holding the CUDA headers (cuda_fp16.h) the host SIMT emulator builds need, if any; the same
 *  places scripts/build-kernel-tests-emu.sh looks. */
export const cudaHeadersDir: string | undefined = [
  process.env.CUDA_INC,
  process.env.CUDA_HOME && path.join(process.env.CUDA_HOME, "include"),
  "/usr/local/cuda/include",
  "/usr/include",
].find((d): d is string => !!d && existsSync(path.join(d, "cuda_fp16.h")));
