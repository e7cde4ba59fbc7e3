// Writing large files (make-model, convert, downloads): a write that cannot fit fails before it starts with
// ERR_DISK_FULL; a full disk midway is ERR_DISK_FULL, other write failures ERR_FILE_WRITE; nothing partial
// is left under the final name.
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { checkFreeSpace, writeError } from "../lib/formats/disk-space.js";
import { writeSections } from "../lib/formats/stream-write.js";
import { Llama2Error } from "../lib/errors.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "llama2-disk-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("disk space and write errors", () => {
  it("a write larger than the free space is refused before anything is written (ERR_DISK_FULL naming the file)", async () => {
    await expect(checkFreeSpace(path.join(dir, "x.gguf.tmp"), 1e18)).rejects.toMatchObject({
      code: "ERR_DISK_FULL",
      message: expect.stringMatching(/needed for x\.gguf, .* free$/),
      suggestion: expect.stringContaining("free some space"),
    });
    await expect(checkFreeSpace(path.join(dir, "x.gguf.tmp"), 1024)).resolves.toBeUndefined();
    const out = path.join(dir, "big.gguf");
    const huge = { name: "t", bytes: 1e18, data: () => [new Uint8Array(8)] };
    await expect(writeSections(out, [new Uint8Array(4), huge])).rejects.toMatchObject({ code: "ERR_DISK_FULL" });
    expect(readdirSync(dir)).toEqual([]); // not even the temporary file
  });

  it("running out of space midway is ERR_DISK_FULL; other failures are ERR_FILE_WRITE, never a read error", () => {
    const enospc = Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
    expect(writeError(enospc, "/m/x.gguf")).toMatchObject({ code: "ERR_DISK_FULL", message: "disk full while writing /m/x.gguf" });
    expect(writeError(Object.assign(new Error("quota"), { code: "EDQUOT" }), "f")).toMatchObject({ code: "ERR_DISK_FULL" });
    expect(writeError(Object.assign(new Error("EIO: i/o error"), { code: "EIO" }), "f")).toMatchObject({ code: "ERR_FILE_WRITE", message: expect.stringContaining("EIO") });
    const typed = new Llama2Error("ERR_ABORTED", "aborted");
    expect(writeError(typed, "f")).toBe(typed);
  });
});
