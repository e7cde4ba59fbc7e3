// One file from the Hub to disk, the way a multi-gigabyte model file needs it: streamed into
// `<dest>.part` and renamed into place only when its size and checksum (the sha256 the Hub gives for
// LFS files, the git blob sha1 for small ones) match; resumed with a Range request after a dropped
// connection, a stall or Ctrl-C; retried with backoff on network errors and 5xx; one downloader per
// file across processes (a `<dest>.lock` holding the pid); free disk space checked first. The Hub's
// token goes to the Hub only, never to the CDN it redirects large files to.
import { createHash, type Hash } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";
import { mkdir, open, readFile, rename, stat, unlink } from "node:fs/promises";
import { checkFreeSpace, isDiskFull, writeError } from "../formats/disk-space.js";
import path from "node:path";
import { Llama2Error } from "../errors.js";

export interface Expected {
  size?: number;
  /** LFS files: sha256 of the content (hex). */
  sha256?: string;
  /** Small files: the git blob id, sha1("blob <size>\0" + content) (hex). */
  gitSha1?: string;
}

export interface DownloadOptions {
  token?: string;
  signal?: AbortSignal;
  /** Called as bytes arrive: bytes of this file on disk so far, and its size when known. */
  onBytes?: (bytes: number, total: number | undefined) => void;
  expected?: Expected;
  /** Attempts per file (network errors, 5xx, stalls); default 5. */
  attempts?: number;
  /** A connection with no data for this long is dropped and resumed; default 60 s. */
  stallMs?: number;
  /** Test hook: backoff before retry n (1-based), default 1, 2, 4, 8 s. */
  backoffMs?: (n: number) => number;
}

export interface HttpFailure {
  status: number;
  url: string;
}

const USER_AGENT = "llama2-native (+https://www.npmjs.com/package/llama2-native)";
const inProcess = new Map<string, Promise<void>>();

/** Downloads `url` to `dest` unless it is already there. Concurrent callers for one dest share the work. */
export function downloadFile(url: string, dest: string, opts: DownloadOptions = {}): Promise<void> {
  if (existsSync(dest)) return Promise.resolve();
  let p = inProcess.get(dest);
  if (!p) {
    p = withLock(dest, opts.signal, () => fetchToFile(url, dest, opts)).finally(() => inProcess.delete(dest));
    inProcess.set(dest, p);
  }
  return p;
}

/** A hex digest's form in the Hub's headers: quoted, maybe weak (W/"..."). */
export function etagHex(v: string | null): string | undefined {
  const m = v ? /^(?:W\/)?"?([0-9a-f]{40}|[0-9a-f]{64})"?$/i.exec(v.trim()) : null;
  return m ? m[1]!.toLowerCase() : undefined;
}

// ---- cross-process lock -------------------------------------------------------------------------------

async function withLock(dest: string, signal: AbortSignal | undefined, fn: () => Promise<void>): Promise<void> {
  await mkdir(path.dirname(dest), { recursive: true }).catch((err) => {
    throw new Llama2Error("ERR_FILE_WRITE", `cannot create ${path.dirname(dest)}: ${(err as Error).message}`, { cause: err });
  });
  const lock = `${dest}.lock`;
  for (let waited = 0; ; ) {
    signal?.throwIfAborted();
    try {
      const fh = await open(lock, "wx");
      await fh.writeFile(String(process.pid));
      await fh.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST")
        throw new Llama2Error("ERR_FILE_WRITE", `cannot create ${lock}: ${(err as Error).message}`, { cause: err });
    }
    const pid = Number((await readFile(lock, "utf8").catch(() => "")).trim());
    if (!(pid > 0) || !alive(pid)) {
      await unlink(lock).catch(() => {}); // left by a process that died: take it over
      continue;
    }
    if (waited === 0) process.stderr.write(`[llama2] waiting for process ${pid}, which is downloading ${path.basename(dest)}\n`);
    await sleep(500, signal);
    waited += 500;
    if (existsSync(dest)) return;
  }
  try {
    if (!existsSync(dest)) await fn();
  } finally {
    await unlink(lock).catch(() => {});
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

// ---- the transfer ------------------------------------------------------------------------------------

class Retryable extends Error {}

/**
 * The sha256 of the part's first `bytes` bytes, updated as chunks are written and kept across attempts,
 * so that a 7 GB file is not read back to verify it. A part left by an earlier run (or one whose size
 * disagrees after a failed write) is hashed from disk up to where the download resumes.
 */
interface RunningHash {
  h: Hash;
  bytes: number;
}

/** How often the part was read back from disk to hash it (tests check that a download does not). @internal */
export const hashReads = { prefix: 0, whole: 0 };

async function fetchToFile(url: string, dest: string, opts: DownloadOptions): Promise<void> {
  const attempts = opts.attempts ?? 5;
  const part = `${dest}.part`;
  let expected: Expected = { ...opts.expected };
  const running: { hash?: RunningHash } = {};
  for (let attempt = 1; ; attempt++) {
    try {
      expected = await transfer(url, part, expected, opts, running);
      break;
    } catch (err) {
      if (opts.signal?.aborted) throw aborted(dest, opts.signal);
      if (!(err instanceof Retryable) || attempt >= attempts) {
        if (err instanceof Retryable)
          throw new Llama2Error("ERR_DOWNLOAD", `downloading ${url} failed after ${attempts} attempts: ${err.message}; run the same command again to resume`, { cause: err });
        throw err;
      }
      await sleep(opts.backoffMs ? opts.backoffMs(attempt) : 1000 * 2 ** (attempt - 1), opts.signal).catch(() => {
        throw aborted(dest, opts.signal!);
      });
    }
  }
  await verify(part, dest, expected, running.hash);
  await rename(part, dest);
}

function aborted(dest: string, signal: AbortSignal): Llama2Error {
  return new Llama2Error("ERR_ABORTED", `download of ${path.basename(dest)} aborted; the part downloaded so far is kept and the same command resumes it`, {
    cause: signal.reason,
  });
}

/** One request (plus its redirects) appending to `part`; returns what the server said the file is. */
async function transfer(url: string, part: string, expected: Expected, opts: DownloadOptions, running: { hash?: RunningHash }): Promise<Expected> {
  let have = await stat(part).then((s) => s.size, () => 0);
  if (expected.size !== undefined && have > expected.size) {
    await unlink(part);
    have = 0;
  }
  const ctl = new AbortController();
  const onAbort = () => ctl.abort(opts.signal!.reason);
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  let stall: NodeJS.Timeout | undefined;
  const stallMs = opts.stallMs ?? 60_000;
  const arm = () => {
    clearTimeout(stall);
    stall = setTimeout(() => ctl.abort(new Retryable(`no data for ${stallMs / 1000} s`)), stallMs);
  };
  try {
    arm();
    const { res, info } = await request(url, have, opts.token, ctl.signal);
    const size = info.size ?? expected.size;
    const exp: Expected = { size, sha256: info.sha256 ?? expected.sha256, gitSha1: expected.gitSha1 };
    if (res.status === 416) {
      // The part is already whole (or longer than the file): start over, the checksum decides.
      await res.body?.cancel();
      await unlink(part).catch(() => {});
      throw new Retryable("range not satisfiable");
    }
    let append = false;
    if (res.status === 206) {
      const m = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
      if (!m || Number(m[1]) !== have) {
        await res.body?.cancel();
        await unlink(part).catch(() => {});
        throw new Retryable(`unexpected Content-Range '${res.headers.get("content-range")}'`);
      }
      append = true;
    }
    const total = size ?? (res.status === 200 && res.headers.get("content-length") ? Number(res.headers.get("content-length")) : undefined);
    if (exp.size === undefined && total !== undefined) exp.size = total;
    await checkFreeSpace(part, total !== undefined ? total - (append ? have : 0) : undefined);
    let hash: RunningHash | undefined;
    if (exp.sha256) {
      const start = append ? have : 0;
      hash = running.hash?.bytes === start ? running.hash : await hashPrefix(part, start);
      running.hash = hash;
    }
    const fh = await open(part, append ? "a" : "w");
    let bytes = append ? have : 0;
    try {
      opts.onBytes?.(bytes, total);
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        arm();
        await fh.write(chunk);
        if (hash) {
          hash.h.update(chunk);
          hash.bytes += chunk.length;
        }
        bytes += chunk.length;
        opts.onBytes?.(bytes, total);
      }
      await fh.sync();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (isDiskFull(err)) throw writeError(err, `${part} (${bytes} bytes written)`);
      if (ctl.signal.aborted && ctl.signal.reason instanceof Retryable) throw ctl.signal.reason;
      if (opts.signal?.aborted) throw err;
      throw new Retryable(`connection lost after ${bytes} bytes (${(err as Error).message})`);
    } finally {
      await fh.close();
    }
    if (exp.size !== undefined && bytes < exp.size) throw new Retryable(`connection closed at ${bytes} of ${exp.size} bytes`);
    return exp;
  } catch (err) {
    if (ctl.signal.aborted && ctl.signal.reason instanceof Retryable) throw ctl.signal.reason;
    throw err;
  } finally {
    clearTimeout(stall);
    opts.signal?.removeEventListener("abort", onAbort);
  }
}

interface RemoteInfo {
  size?: number;
  sha256?: string;
}

/**
 * GET with Range from `from`; follows redirects by hand so that the Hub's headers (X-Linked-Size and
 * X-Linked-Etag: the LFS file's size and sha256) are read before the CDN answers, and so that the token
 * is sent to the Hub's own origin only.
 */
async function request(url: string, from: number, token: string | undefined, signal: AbortSignal): Promise<{ res: Response; info: RemoteInfo }> {
  const origin = new URL(url).origin;
  const info: RemoteInfo = {};
  let at = url;
  for (let hop = 0; hop < 10; hop++) {
    const sameOrigin = new URL(at).origin === origin;
    const headers: Record<string, string> = { "user-agent": USER_AGENT, "accept-encoding": "identity" };
    if (from > 0) headers.range = `bytes=${from}-`;
    if (token && sameOrigin) headers.authorization = `Bearer ${token}`;
    let res: Response;
    try {
      res = await fetch(at, { headers, redirect: "manual", signal });
    } catch (err) {
      if (signal.aborted) throw signal.reason instanceof Retryable ? signal.reason : err;
      throw new Retryable(`${(err as Error).message}${(err as { cause?: Error }).cause ? `: ${(err as { cause: Error }).cause.message}` : ""}`);
    }
    const linkedSize = res.headers.get("x-linked-size");
    if (linkedSize && /^\d+$/.test(linkedSize)) info.size = Number(linkedSize);
    const linked = etagHex(res.headers.get("x-linked-etag"));
    if (linked?.length === 64) info.sha256 = linked;
    if (res.status >= 300 && res.status < 400 && res.headers.get("location")) {
      await res.body?.cancel();
      at = new URL(res.headers.get("location")!, at).toString();
      continue;
    }
    if (res.status === 200 || res.status === 206 || res.status === 416) return { res, info };
    await res.body?.cancel();
    throw httpError(url, res.status, !!token);
  }
  throw new Llama2Error("ERR_DOWNLOAD", `${url}: too many redirects`);
}

export function httpError(url: string, status: number, hadToken: boolean): Error {
  const { repo } = repoOfUrl(url);
  if (status === 401 || status === 403) {
    return new Llama2Error(
      "ERR_DOWNLOAD_AUTH",
      `${url}: HTTP ${status}: ${hadToken ? "this token has no access to" : "no token was sent for"} ${repo ?? "this repo"} (gated or private)`,
      {
        suggestion: `accept the model's license on https://huggingface.co/${repo ?? ""} with your account, then set HF_TOKEN to a read token (https://huggingface.co/settings/tokens)`,
      },
    );
  }
  if (status === 404) return new Llama2Error("ERR_FILE_NOT_FOUND", `${url}: HTTP 404: no such repo, revision or file on the Hub`);
  if (status === 429 || status >= 500) return new Retryable(`HTTP ${status}`);
  return new Llama2Error("ERR_DOWNLOAD", `${url}: HTTP ${status}`);
}

function repoOfUrl(url: string): { repo?: string } {
  const m = /^https?:\/\/[^/]+\/(?:api\/models\/)?([^/]+\/[^/]+)\//.exec(url);
  return { repo: m?.[1] };
}

/** A running sha256 of the part's first `n` bytes (read from disk when n > 0). */
async function hashPrefix(part: string, n: number): Promise<RunningHash> {
  const h = createHash("sha256");
  if (n > 0) {
    hashReads.prefix++;
    for await (const chunk of createReadStream(part, { start: 0, end: n - 1, highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  }
  return { h, bytes: n };
}

async function verify(part: string, dest: string, exp: Expected, running: RunningHash | undefined): Promise<void> {
  const { size } = await stat(part);
  const fail = (what: string) => {
    return unlink(part)
      .catch(() => {})
      .then(() => {
        throw new Llama2Error("ERR_DOWNLOAD_CORRUPT", `${path.basename(dest)}: ${what}; the download was deleted, run the same command to fetch it again`);
      });
  };
  if (exp.size !== undefined && size !== exp.size) return fail(`${size} bytes where the Hub says ${exp.size}`);
  if (!exp.sha256 && !exp.gitSha1) return;
  let got: string;
  if (exp.sha256 && running?.bytes === size) got = running.h.digest("hex");
  else {
    // Small files (git blob sha1, whose header needs the final size), or a part the running hash lost track of.
    hashReads.whole++;
    const h: Hash = createHash(exp.sha256 ? "sha256" : "sha1");
    if (!exp.sha256) h.update(`blob ${size}\0`);
    for await (const chunk of createReadStream(part, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
    got = h.digest("hex");
  }
  const want = (exp.sha256 ?? exp.gitSha1)!;
  if (got !== want) return fail(`${exp.sha256 ? "sha256" : "git blob sha1"} ${got} where the Hub says ${want}`);
}
