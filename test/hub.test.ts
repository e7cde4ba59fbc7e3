// Pulling models from the Hugging Face Hub (lib/hub), against a local server that answers like the Hub:
// /api/models/<repo>/tree/<rev> listings (paginated), /<repo>/resolve/<rev>/<file> with small files served
// directly (ETag = git blob sha1) and LFS files redirected to a "CDN" path with X-Linked-Size /
// X-Linked-Etag (sha256), Range requests, gated repos (401 without the token). Faults are injected per
// test: a connection dropped mid-file, a stalled one, wrong bytes, a dead process's lock.
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Llama2Error } from "../lib/errors.js";
import { hashReads } from "../lib/hub/download.js";
import { localPathOf, pullModel } from "../lib/hub/pull.js";
import { isHubRef, parseHubRef, unsupportedQuant } from "../lib/hub/refs.js";
import { Llama2 } from "../lib/llama2.js";
import { cancelJob } from "../lib/runner/cancel.js";
import type { Job } from "../lib/runner/job.js";
import { runJob } from "../lib/runner/run.js";
import { parseRunSpec } from "../lib/runner/spec.js";
import { makeSyntheticModel } from "../lib/synth/model.js";
import { ensureDist } from "./helpers/dist.js";
import { postJson, waitFor } from "./helpers/fake-backend.js";
import { llamaTokenizerJson } from "./helpers/llama-tokenizer-json.js";
import { projectRoot } from "./helpers/shared.js";

const TOKEN = "hf_test_token";

interface Logged {
  url: string;
  auth?: string;
  range?: string;
}

/** A fake Hub: repos of files (name -> bytes), some stored as LFS, some gated. */
class FakeHub {
  server!: http.Server;
  cdnServer!: http.Server; // another origin, as the Hub's CDN is: the token must not follow the redirect
  endpoint = "";
  cdnEndpoint = "";
  repos = new Map<string, Map<string, { data: Buffer; lfs: boolean }>>();
  gated = new Set<string>();
  log: Logged[] = [];
  /** CDN faults for the next request of a file: drop the connection after N bytes, stall after N bytes, or serve bad bytes. */
  faults = new Map<string, { kind: "drop" | "stall" | "corrupt"; after: number }>();

  add(repo: string, name: string, data: Buffer, lfs = data.length > 4096): void {
    if (!this.repos.has(repo)) this.repos.set(repo, new Map());
    this.repos.get(repo)!.set(name, { data, lfs });
  }

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.cdnServer = http.createServer((req, res) => this.handle(req, res));
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    await new Promise<void>((r) => this.cdnServer.listen(0, "127.0.0.1", r));
    this.endpoint = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    this.cdnEndpoint = `http://127.0.0.1:${(this.cdnServer.address() as AddressInfo).port}`;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url!, this.endpoint);
    this.log.push({ url: url.pathname + url.search, ...(req.headers.authorization && { auth: req.headers.authorization }), ...(req.headers.range && { range: req.headers.range }) });
    const tree = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/.exec(url.pathname);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    const cdn = /^\/cdn\/([^/]+\/[^/]+)\/(.+)$/.exec(url.pathname);
    const repoName = tree?.[1] ?? resolve?.[1];
    if (repoName && this.gated.has(repoName) && req.headers.authorization !== `Bearer ${TOKEN}`) {
      res.writeHead(401).end("gated");
      return;
    }
    if (tree) {
      const files = this.repos.get(tree[1]!);
      if (!files) return void res.writeHead(404).end();
      const all = [...files.entries()].map(([p, f]) => ({
        type: "file",
        path: p,
        size: f.lfs ? 134 : f.data.length,
        oid: gitSha1(f.lfs ? Buffer.from(`pointer ${p}`) : f.data),
        ...(f.lfs && { lfs: { oid: sha256(f.data), size: f.data.length, pointerSize: 134 } }),
      }));
      all.unshift({ type: "directory", path: "original", size: 0, oid: "0".repeat(40) } as never);
      const start = Number(url.searchParams.get("cursor") ?? 0);
      const page = all.slice(start, start + 3);
      if (start + 3 < all.length) res.setHeader("link", `<${this.endpoint}${url.pathname}?cursor=${start + 3}>; rel="next"`);
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify(page));
      return;
    }
    if (resolve) {
      const f = this.repos.get(resolve[1]!)?.get(decodeURIComponent(resolve[3]!));
      if (!f) return void res.writeHead(404).end("Entry not found");
      if (f.lfs) {
        res.writeHead(302, {
          location: `${this.cdnEndpoint}/cdn/${resolve[1]}/${resolve[3]}`,
          "x-linked-size": String(f.data.length),
          "x-linked-etag": `"${sha256(f.data)}"`,
        });
        res.end();
        return;
      }
      res.setHeader("etag", `"${gitSha1(f.data)}"`);
      return this.serve(req, res, f.data, undefined);
    }
    if (cdn) {
      const key = `${cdn[1]}/${decodeURIComponent(cdn[2]!)}`;
      const f = this.repos.get(cdn[1]!)?.get(decodeURIComponent(cdn[2]!));
      if (!f) return void res.writeHead(404).end();
      return this.serve(req, res, f.data, key);
    }
    res.writeHead(404).end();
  }

  private serve(req: http.IncomingMessage, res: http.ServerResponse, data: Buffer, key: string | undefined): void {
    let start = 0;
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    if (m) {
      start = Number(m[1]);
      if (start >= data.length) return void res.writeHead(416, { "content-range": `bytes */${data.length}` }).end();
    }
    const fault = key ? this.faults.get(key) : undefined;
    if (fault) this.faults.delete(key!); // each fault hits one request
    let body = data.subarray(start);
    if (fault?.kind === "corrupt") {
      body = Buffer.from(body);
      body[body.length - 1] ^= 0xff;
    }
    res.writeHead(m ? 206 : 200, {
      "content-length": String(body.length),
      "accept-ranges": "bytes",
      ...(m && { "content-range": `bytes ${start}-${data.length - 1}/${data.length}` }),
    });
    if (fault && fault.kind !== "corrupt") {
      res.write(body.subarray(0, fault.after));
      if (fault.kind === "drop") setTimeout(() => res.socket?.destroy(), 20);
      return; // stall: nothing more comes; the client's stall timer must give up on this connection
    }
    res.end(body);
  }

  cdnGets(file: string): Logged[] {
    return this.log.filter((l) => l.url.startsWith("/cdn/") && l.url.endsWith(file));
  }
}

function sha256(b: Buffer): string {
  return createHash("sha256").update(b).digest("hex");
}
function gitSha1(b: Buffer): string {
  return createHash("sha1").update(`blob ${b.length}\0`).update(b).digest("hex");
}

const hub = new FakeHub();
let work: string;
let gguf: Buffer;
let hfDir: string;
const fast = { attempts: 4, stallMs: 300, backoffMs: () => 10 };

beforeAll(async () => {
  work = mkdtempSync(path.join(os.tmpdir(), "l2-hub-"));
  await makeSyntheticModel({ preset: "tiny", format: "gguf", out: path.join(work, "tiny.gguf"), seed: 3 });
  gguf = readFileSync(path.join(work, "tiny.gguf"));
  hfDir = path.join(work, "tiny-hf");
  await makeSyntheticModel({ preset: "tiny", format: "hf", out: hfDir, seed: 3, maxShardBytes: 3 << 20 });
  // The model's own chat template comes with the folder (and is then the model's default).
  writeFileSync(path.join(hfDir, "tokenizer.json"), JSON.stringify(llamaTokenizerJson())); // fetched too: it says where "▁" goes
  writeFileSync(path.join(hfDir, "chat_template.jinja"), "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}");
  hub.add("acme/tiny-GGUF", "tiny.Q8_0.gguf", gguf);
  hub.add("acme/tiny-GGUF", "README.md", Buffer.from("# tiny\n"));
  hub.add("gated/tiny-GGUF", "tiny.f16.gguf", gguf);
  hub.gated.add("gated/tiny-GGUF");
  for (const f of readdirSync(hfDir)) hub.add("acme/tiny-hf", f, readFileSync(path.join(hfDir, f)));
  hub.add("acme/tiny-hf", "pytorch_model.bin", Buffer.alloc(10000, 7)); // must not be fetched
  hub.add("acme/tiny-hf", "README.md", Buffer.from("# tiny hf\n"));
  // A folder saved from a "fast" tokenizer: tokenizer.json and no tokenizer.model.
  for (const f of readdirSync(hfDir)) if (f !== "tokenizer.model") hub.add("acme/tiny-fast", f, readFileSync(path.join(hfDir, f)));
  hub.add("acme/only-pt", "config.json", Buffer.from("{}"));
  hub.add("acme/only-pt", "pytorch_model.bin", Buffer.alloc(10000, 1));
  hub.add("acme/ggufs", "a.IQ2_XS.gguf", Buffer.alloc(5000, 1));
  hub.add("acme/ggufs", "a.Q8_0.gguf", Buffer.alloc(5000, 2));
  await hub.start();
}, 120_000);

afterAll(async () => {
  for (const s of [hub.server, hub.cdnServer]) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
  rmSync(work, { recursive: true, force: true });
});

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(work, "store-"));
  hub.log = [];
  hub.faults.clear();
});

const pull = (ref: string, extra: Parameters<typeof pullModel>[1] = {}) => pullModel(ref, { endpoint: hub.endpoint, dir, token: "", retry: fast, ...extra });

async function expectCode(p: Promise<unknown>, code: string): Promise<Llama2Error> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}`).toBeInstanceOf(Llama2Error);
  expect((err as Llama2Error).code, (err as Error).message).toBe(code);
  return err as Llama2Error;
}

describe("Hub references", () => {
  it("parses hf: refs, revisions, huggingface.co URLs and aliases, and refuses what cannot load", () => {
    expect(parseHubRef("hf:acme/tiny-GGUF/tiny.Q8_0.gguf")).toEqual({ repo: "acme/tiny-GGUF", revision: "main", file: "tiny.Q8_0.gguf" });
    expect(parseHubRef("hf:acme/tiny-hf@v1.0")).toEqual({ repo: "acme/tiny-hf", revision: "v1.0" });
    expect(parseHubRef("hf:acme/tiny-hf", "model", "abc123")).toEqual({ repo: "acme/tiny-hf", revision: "abc123" });
    expect(parseHubRef("https://huggingface.co/acme/x-GGUF/blob/main/sub/m.f16.gguf?download=true")).toEqual({ repo: "acme/x-GGUF", revision: "main", file: "sub/m.f16.gguf" });
    expect(parseHubRef("llama2-7b-chat")).toEqual({ repo: "TheBloke/Llama-2-7B-Chat-GGUF", revision: "main", file: "llama-2-7b-chat.Q8_0.gguf" });
    expect(parseHubRef("llama2-7b-chat-q4")).toEqual({ repo: "TheBloke/Llama-2-7B-Chat-GGUF", revision: "main", file: "llama-2-7b-chat.Q4_K_M.gguf" });
    expect(isHubRef("llama2-7b-chat") && isHubRef("hf:a/b") && !isHubRef("./models/x.gguf") && !isHubRef("demo")).toBe(true);
    for (const ok of ["llama-2-7b-chat.Q4_K_M.gguf", "x.Q5_K_S.gguf", "x.Q3_K_L.gguf", "x.Q2_K.gguf", "x.Q6_K.gguf", "x-q4_0.gguf", "x.Q5_1.gguf"])
      expect(unsupportedQuant(ok), ok).toBeUndefined();
    expect(unsupportedQuant("m-IQ2_XS.gguf")).toBe("IQ2_XS");
    expect(unsupportedQuant("m.IQ4_NL.gguf")).toBe("IQ4_NL");
    expect(unsupportedQuant("m.TQ1_0.gguf")).toBe("TQ1_0");
    expect(unsupportedQuant("m.Q4_0_4_4.gguf")).toBe("Q4_0_4_4");
    expect(unsupportedQuant("llama-2-7b-chat.Q8_0.gguf")).toBeUndefined();
    expect(unsupportedQuant("model-f16.gguf")).toBeUndefined();
    for (const bad of ["hf:acme", "hf:../x/y.gguf", "hf:acme/x/../../etc/passwd.gguf", "hf:acme/x/model.safetensors", "hf:acme/x@../y", "hf:acme/x/a.IQ3_XXS.gguf", "hf:a b/c"]) {
      expect(() => parseHubRef(bad), bad).toThrow(/model: /);
    }
    expect(() => parseHubRef("hf:acme/x@dev", "model", "main")).toThrow(/--revision/);
  });
});

describe("pullModel against a fake Hub", () => {
  it("downloads an LFS file through the redirect, checks its sha256, and reuses it offline afterwards", async () => {
    const reads = { ...hashReads };
    const local = await pull("hf:acme/tiny-GGUF/tiny.Q8_0.gguf", { token: TOKEN });
    // The sha256 was computed while the bytes streamed in: the file was not read back.
    expect(hashReads).toEqual(reads);
    expect(local).toBe(localPathOf(parseHubRef("hf:acme/tiny-GGUF/tiny.Q8_0.gguf"), dir));
    expect(readFileSync(local).equals(gguf)).toBe(true);
    expect(existsSync(`${local}.part`) || existsSync(`${local}.lock`)).toBe(false);
    // The token went to the Hub's resolve URL, never to the CDN the Hub redirected to.
    expect(hub.log.find((l) => l.url.includes("/resolve/"))?.auth).toBe(`Bearer ${TOKEN}`);
    expect(hub.cdnGets("tiny.Q8_0.gguf").every((l) => l.auth === undefined)).toBe(true);
    hub.log = [];
    expect(await pull("hf:acme/tiny-GGUF/tiny.Q8_0.gguf")).toBe(local);
    expect(hub.log).toEqual([]);
    const m = await Llama2.load(local, { device: "cpu" });
    try {
      expect((await m.generate([1, 15043], { maxTokens: 3, temperature: 0 }).result).tokenIds).toHaveLength(3);
    } finally {
      await m.dispose();
    }
  });

  it("resumes with a Range request after a dropped connection and after a stall", async () => {
    hub.faults.set("acme/tiny-GGUF/tiny.Q8_0.gguf", { kind: "drop", after: 1 << 20 });
    const reads = { ...hashReads };
    const local = await pull("hf:acme/tiny-GGUF/tiny.Q8_0.gguf");
    expect(readFileSync(local).equals(gguf)).toBe(true);
    expect(hashReads).toEqual(reads); // the running hash carried over the resumed request
    const gets = hub.cdnGets("tiny.Q8_0.gguf");
    expect(gets.length).toBe(2);
    expect(gets[1]!.range).toMatch(/^bytes=[1-9]\d*-$/);

    rmSync(local);
    hub.log = [];
    hub.faults.set("acme/tiny-GGUF/tiny.Q8_0.gguf", { kind: "stall", after: 500_000 });
    const t0 = Date.now();
    await pull("hf:acme/tiny-GGUF/tiny.Q8_0.gguf");
    expect(readFileSync(local).equals(gguf)).toBe(true);
    expect(hub.cdnGets("tiny.Q8_0.gguf")[1]?.range).toBe("bytes=500000-");
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it("keeps the part when it gives up, and the next pull resumes from it", async () => {
    hub.faults.set("acme/tiny-GGUF/tiny.Q8_0.gguf", { kind: "drop", after: 2 << 20 });
    const err = await expectCode(pull("hf:acme/tiny-GGUF/tiny.Q8_0.gguf", { retry: { ...fast, attempts: 1 } }), "ERR_DOWNLOAD");
    expect(err.message).toMatch(/run the same command again to resume/);
    const local = localPathOf(parseHubRef("hf:acme/tiny-GGUF/tiny.Q8_0.gguf"), dir);
    expect(existsSync(local)).toBe(false);
    const kept = statSync(`${local}.part`).size;
    expect(kept).toBeGreaterThan(0);
    hub.log = [];
    const reads = { ...hashReads };
    await pull("hf:acme/tiny-GGUF/tiny.Q8_0.gguf");
    expect(hub.cdnGets("tiny.Q8_0.gguf")[0]!.range).toBe(`bytes=${kept}-`);
    expect(readFileSync(local).equals(gguf)).toBe(true);
    // A part from an earlier run is hashed once up to where it resumes, never read whole.
    expect(hashReads).toEqual({ prefix: reads.prefix + 1, whole: reads.whole });
  });

  it("a checksum mismatch deletes the download (ERR_DOWNLOAD_CORRUPT); the next pull fetches it whole", async () => {
    hub.faults.set("acme/tiny-GGUF/tiny.Q8_0.gguf", { kind: "corrupt", after: 0 });
    const err = await expectCode(pull("hf:acme/tiny-GGUF/tiny.Q8_0.gguf"), "ERR_DOWNLOAD_CORRUPT");
    expect(err.message).toMatch(/sha256/);
    const local = localPathOf(parseHubRef("hf:acme/tiny-GGUF/tiny.Q8_0.gguf"), dir);
    expect(existsSync(local) || existsSync(`${local}.part`)).toBe(false);
    await pull("hf:acme/tiny-GGUF/tiny.Q8_0.gguf");
    expect(readFileSync(local).equals(gguf)).toBe(true);
  });

  it("gated repos: 401 without a token is ERR_DOWNLOAD_AUTH with the way out; HF_TOKEN opens them", async () => {
    const err = await expectCode(pull("hf:gated/tiny-GGUF/tiny.f16.gguf"), "ERR_DOWNLOAD_AUTH");
    expect(err.message).toMatch(/gated\/tiny-GGUF/);
    expect(err.suggestion).toMatch(/HF_TOKEN/);
    const saved = process.env.HF_TOKEN;
    process.env.HF_TOKEN = TOKEN;
    try {
      const local = await pullModel("hf:gated/tiny-GGUF/tiny.f16.gguf", { endpoint: hub.endpoint, dir, retry: fast });
      expect(readFileSync(local).equals(gguf)).toBe(true);
    } finally {
      if (saved === undefined) delete process.env.HF_TOKEN;
      else process.env.HF_TOKEN = saved;
    }
  });

  it("404s, unsupported files and repos are typed errors, refused before any download where the name tells", async () => {
    await expectCode(pull("hf:acme/tiny-GGUF/missing.gguf"), "ERR_FILE_NOT_FOUND");
    await expectCode(pull("hf:acme/nope"), "ERR_FILE_NOT_FOUND");
    hub.log = [];
    await expectCode(pull("hf:acme/ggufs/a.IQ2_XS.gguf"), "ERR_INVALID_ARGUMENT");
    expect(hub.log).toEqual([]);
    const many = await expectCode(pull("hf:acme/ggufs"), "ERR_INVALID_ARGUMENT");
    expect(many.message).toContain("hf:acme/ggufs/a.Q8_0.gguf");
    const pt = await expectCode(pull("hf:acme/only-pt"), "ERR_FORMAT_UNSUPPORTED");
    expect(pt.message).toMatch(/PyTorch/);
    const saved = process.env.HF_HUB_OFFLINE;
    process.env.HF_HUB_OFFLINE = "1";
    try {
      await expectCode(pull("hf:acme/tiny-GGUF/tiny.Q8_0.gguf"), "ERR_FILE_NOT_FOUND");
    } finally {
      if (saved === undefined) delete process.env.HF_HUB_OFFLINE;
      else process.env.HF_HUB_OFFLINE = saved;
    }
  });

  it("a Hugging Face model folder: the listing's config, tokenizer, index and the shards it names, each checksummed; loads like the original", async () => {
    const local = await pull("hf:acme/tiny-hf");
    const want = readdirSync(hfDir).sort();
    expect(want.filter((f) => f.endsWith(".safetensors")).length).toBeGreaterThan(1);
    expect(readdirSync(local).filter((f) => !f.startsWith(".")).sort()).toEqual(want);
    for (const f of want) expect(readFileSync(path.join(local, f)).equals(readFileSync(path.join(hfDir, f))), f).toBe(true);
    expect(hub.log.some((l) => l.url.includes("pytorch_model.bin") || l.url.includes("README"))).toBe(false);
    expect(hub.log.filter((l) => l.url.includes("/tree/")).length).toBeGreaterThan(1); // followed the Link pages
    const ids = async (p: string) => {
      const m = await Llama2.load(p, { device: "cpu" });
      try {
        return (await m.generate("Hello", { maxTokens: 6, temperature: 0 }).result).tokenIds;
      } finally {
        await m.dispose();
      }
    };
    expect(await ids(local)).toEqual(await ids(hfDir));
    const m = await Llama2.load(local, { device: "cpu" });
    expect(m.info.chatTemplate).toBe("model");
    await m.dispose();
    hub.log = [];
    expect(await pull("hf:acme/tiny-hf")).toBe(local);
    expect(hub.log).toEqual([]);
  }, 60_000);

  it("a folder with tokenizer.json and no tokenizer.model: fetches tokenizer.json, and the model encodes as with tokenizer.model", async () => {
    const local = await pull("hf:acme/tiny-fast");
    expect(readdirSync(local)).toContain("tokenizer.json");
    expect(readdirSync(local)).not.toContain("tokenizer.model");
    const m = await Llama2.load(local, { device: "cpu" });
    const original = await Llama2.load(hfDir, { device: "cpu" });
    try {
      expect(m.tokenizer!.source).toBe(path.join(local, "tokenizer.json"));
      const text = "Hello, how are you?  Fine:\n\t1234 🦙";
      expect(m.tokenizer!.encode(text)).toEqual(original.tokenizer!.encode(text));
    } finally {
      await m.dispose();
      await original.dispose();
    }
  }, 60_000);

  it("concurrent pulls of one file share one download; a dead process's lock is taken over", async () => {
    const [a, b] = await Promise.all([pull("hf:acme/tiny-GGUF/tiny.Q8_0.gguf"), pull("hf:acme/tiny-GGUF/tiny.Q8_0.gguf")]);
    expect(a).toBe(b);
    expect(hub.cdnGets("tiny.Q8_0.gguf").length).toBe(1);
    const other = mkdtempSync(path.join(work, "store-"));
    const local = localPathOf(parseHubRef("hf:acme/tiny-GGUF/tiny.Q8_0.gguf"), other);
    mkdirSync(path.dirname(local), { recursive: true });
    const dead = spawnSync(process.execPath, ["-e", "console.log(process.pid)"], { encoding: "utf8" }).stdout.trim();
    writeFileSync(`${local}.lock`, dead);
    await pullModel("hf:acme/tiny-GGUF/tiny.Q8_0.gguf", { endpoint: hub.endpoint, dir: other, retry: fast });
    expect(readFileSync(local).equals(gguf)).toBe(true);
    expect(existsSync(`${local}.lock`)).toBe(false);
  });

  it("an abort stops the download with ERR_ABORTED and keeps the part", async () => {
    hub.faults.set("acme/tiny-GGUF/tiny.Q8_0.gguf", { kind: "stall", after: 300_000 });
    const ac = new AbortController();
    const p = pull("hf:acme/tiny-GGUF/tiny.Q8_0.gguf", { signal: ac.signal, retry: { ...fast, stallMs: 60_000 } });
    setTimeout(() => ac.abort(), 300);
    await expectCode(p, "ERR_ABORTED");
    const local = localPathOf(parseHubRef("hf:acme/tiny-GGUF/tiny.Q8_0.gguf"), dir);
    expect(statSync(`${local}.part`).size).toBe(300_000);
    expect(existsSync(`${local}.lock`)).toBe(false);
  });
});

describe("the CLI with Hub references", () => {
  beforeAll(() => ensureDist(path.join(projectRoot, "dist/cli/main.js")), 120_000);
  it("llama2 pull prints the local path; --model hf:... pulls on first use in generate", async () => {
    const env = { ...process.env, HF_ENDPOINT: hub.endpoint, LLAMA2_HOME: dir, HF_TOKEN: "" };
    // Asynchronously: the fake Hub answers from this process's event loop.
    const cli = (args: string[]) =>
      new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, [path.join(projectRoot, "dist/cli/main.js"), ...args], { env });
        let stdout = "";
        let stderr = "";
        child.stdout.on("data", (d) => (stdout += d));
        child.stderr.on("data", (d) => (stderr += d));
        child.on("close", (status) => resolve({ status, stdout, stderr }));
      });
    const p = await cli(["pull", "hf:acme/tiny-GGUF/tiny.Q8_0.gguf", "--json"]);
    expect(p.status, p.stderr).toBe(0);
    const local = JSON.parse(p.stdout).path as string;
    expect(local).toBe(path.join(dir, "models", "hf", "acme", "tiny-GGUF", "main", "tiny.Q8_0.gguf"));
    expect(p.stderr).toMatch(/downloading tiny\.Q8_0\.gguf/);
    const g = await cli(["generate", "--model", "hf:acme/tiny-hf", "--prompt-ids", "1,15043", "--max-tokens", "3", "--temperature", "0", "--json"]);
    expect(g.status, g.stderr).toBe(0);
    expect(JSON.parse(g.stdout).ids).toHaveLength(3);
    expect(existsSync(path.join(dir, "models", "hf", "acme", "tiny-hf", "main", "config.json"))).toBe(true);
    const bad = await cli(["pull", "hf:acme/ggufs/a.IQ2_XS.gguf"]);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/^error \[ERR_INVALID_ARGUMENT\]: MODEL: .*IQ2_XS/);
    const gated = await cli(["pull", "hf:gated/tiny-GGUF/tiny.f16.gguf"]);
    expect(gated.status).toBe(1);
    expect(gated.stderr).toMatch(/error \[ERR_DOWNLOAD_AUTH\][^]*hint: .*HF_TOKEN/);
  }, 120_000);
});

describe("a job on a Hub model", () => {
  it("llama2 run --model hf:... pulls the model while the job is preparing, then serves it", async () => {
    const saved = { home: process.env.LLAMA2_HOME, endpoint: process.env.HF_ENDPOINT, token: process.env.HF_TOKEN };
    process.env.LLAMA2_HOME = dir;
    process.env.HF_ENDPOINT = hub.endpoint;
    process.env.HF_TOKEN = "";
    const jobs = mkdtempSync(path.join(work, "jobs-"));
    let job: Job | undefined;
    const stderr = new PassThrough();
    let log = "";
    stderr.on("data", (d) => (log += d));
    try {
      const spec = parseRunSpec({ model: "https://huggingface.co/acme/tiny-GGUF/resolve/main/tiny.Q8_0.gguf", device: "cpu", context: 128, port: 0 });
      expect(spec.model).toBe("hf:acme/tiny-GGUF/tiny.Q8_0.gguf");
      const done = runJob(spec, { stderr, jobsDir: jobs, onJob: (j) => (job = j), controlPollMs: 50 });
      done.catch(() => {});
      await waitFor(() => job?.record.url !== undefined || job?.state === "failed", 60_000, "the job to serve");
      expect(job!.record.error).toBeUndefined();
      const res = await postJson(`${job!.record.url}v1/completions`, { prompt: "Hello", max_tokens: 3, temperature: 0 });
      expect(res.status).toBe(200);
      expect(log).toMatch(/downloading tiny\.Q8_0\.gguf/);
      expect(readFileSync(localPathOf(parseHubRef(spec.model), path.join(dir, "models", "hf"))).equals(gguf)).toBe(true);
      await cancelJob(jobs, job!.id, { waitMs: 10_000 });
      await done;
    } finally {
      for (const [k, v] of [["LLAMA2_HOME", saved.home], ["HF_ENDPOINT", saved.endpoint], ["HF_TOKEN", saved.token]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  }, 90_000);
});
