// A bounded load test: 16 concurrent streaming clients for a few seconds per round against the fake
// backend. No request may fail or hang, and the heap must not keep growing from round to round.
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, type RunningServer } from "../lib/server/http.js";
import { FakeBackend, postJson, readSse, streamedText } from "./helpers/fake-backend.js";

const CLIENTS = 16;
const ROUND_MS = 1500;
const ROUNDS = 3;
const TOKENS = 40;
const HEAP_GROWTH_LIMIT = 8 * 1024 * 1024;

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

let server: RunningServer;
const backend = new FakeBackend({ replyTokens: TOKENS, delayMs: 2 });

beforeAll(async () => {
  server = await startServer({ backend, port: 0 });
});
afterAll(() => server.shutdown({ graceMs: 100 }));

async function client(url: string, until: number, errors: string[]): Promise<number> {
  let n = 0;
  while (Date.now() < until) {
    try {
      const sse = await readSse(await postJson(`${url}v1/chat/completions`, { messages: [{ role: "user", content: `load ${n}` }], stream: true }));
      const text = streamedText(sse.events);
      if (sse.status !== 200 || !sse.done || text.split(" ").length !== TOKENS) errors.push(`status ${sse.status}, done ${sse.done}, text '${text.slice(0, 40)}'`);
      n++;
    } catch (err) {
      errors.push(String(err));
    }
  }
  return n;
}

describe("load", () => {
  it(`${CLIENTS} streaming clients, ${ROUNDS} rounds of ${ROUND_MS}ms: no errors, bounded heap`, async () => {
    const heap: number[] = [];
    let total = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const errors: string[] = [];
      const until = Date.now() + ROUND_MS;
      const counts = await Promise.all(Array.from({ length: CLIENTS }, () => client(server.url, until, errors)));
      expect(errors).toEqual([]);
      expect(counts.every((c) => c > 0)).toBe(true); // every client got served: fair queueing, no starvation
      total += counts.reduce((a, b) => a + b, 0);
      expect(server.inFlight).toBe(0);
      expect(backend.pending).toBe(0);
      backend.calls.length = 0; // the fake's own call log is not the server's memory
      gc();
      heap.push(process.memoryUsage().heapUsed);
    }
    expect(backend.maxActive).toBe(CLIENTS);
    const metrics = server.metrics.requests.get({ endpoint: "/v1/chat/completions", status: "200" });
    expect(metrics).toBe(total);
    // Round 1 warms up caches and JIT; after that the heap must stay flat (within the bound).
    expect(heap.at(-1)! - heap[0]!).toBeLessThan(HEAP_GROWTH_LIMIT);
    console.log(`load: ${total} streams, heap per round (MiB): ${heap.map((h) => (h / 2 ** 20).toFixed(1)).join(", ")}`);
  }, 30_000);
});
