// Token sampling in TypeScript, in llama.cpp's order: logit bias -> penalties -> (greedy | top-k ->
// temperature -> softmax -> top-p -> min-p -> draw). Input is either the full logits or the top
// candidates the device selected; `needs` says which one gives exactly the same distribution.
import { InvalidArgumentError, Llama2Error, showValue } from "./errors.js";
import type { TokenFilter } from "./grammar/token-constraint.js";
import { Rng } from "./rng.js";
import type { SamplingOptions } from "./types.js";

export const SAMPLING_DEFAULTS = {
  temperature: 0.8,
  topK: 40,
  topP: 0.95,
  minP: 0.05,
  repetitionPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
  penaltyLastN: 64,
} as const;

/** The most candidates `needs` ever asks the device for; beyond that it asks for full logits. */
export const MAX_CANDIDATES = 256;

/** Device-selected top candidates: sorted by logit descending (ties: lower id first). */
export interface Candidates {
  ids: Int32Array;
  logits: Float32Array;
}

export interface SamplerNeeds {
  /** The sampler needs all vocabSize logits. */
  fullLogits: boolean;
  /** Otherwise: how many top candidates suffice (0 when fullLogits). */
  candidates: number;
}

export interface ResolvedSamplingOptions {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repetitionPenalty: number;
  presencePenalty: number;
  frequencyPenalty: number;
  penaltyLastN: number;
  /** Non-zero biases only. */
  logitBias: ReadonlyMap<number, number>;
  seed: number | undefined;
}

type Opts = Record<string, unknown>;
function num(o: Opts, field: keyof typeof SAMPLING_DEFAULTS, ok: (v: number) => boolean, rule: string): number {
  const v = o[field];
  if (v === undefined) return SAMPLING_DEFAULTS[field];
  if (typeof v !== "number" || !ok(v)) throw new InvalidArgumentError(field, `must be ${rule} (got ${showValue(v)})`);
  return v;
}

// Shared scratch buffers: sample() is synchronous and never re-entered, so all samplers can share them
// instead of each allocating ~600 KB at vocab 32000.
const buf = {
  copy: new Float32Array(0), // modified full logits
  w: new Float64Array(0), // per-token weights (full distribution path)
  bucket: new Uint16Array(0),
  kept: new Int32Array(0), // kept token ids (full distribution path)
  counts: new Int32Array(0), // penalty counts, all zero between calls
  listIds: new Int32Array(0),
  listVals: new Float32Array(0),
  listW: new Float64Array(0),
  mask: new Uint8Array(0), // allowed tokens (constrained path)
};
function ensureVocab(n: number): void {
  if (buf.copy.length >= n) return;
  buf.copy = new Float32Array(n);
  buf.w = new Float64Array(n);
  buf.bucket = new Uint16Array(n);
  buf.kept = new Int32Array(n);
  buf.counts = new Int32Array(n);
  buf.mask = new Uint8Array(n);
}
function ensureList(n: number): void {
  if (buf.listIds.length >= n) return;
  buf.listIds = new Int32Array(n);
  buf.listVals = new Float32Array(n);
  buf.listW = new Float64Array(n);
}

/** A bounded heap keeping the k best (logit desc, then id asc); root = the worst kept entry. */
class TopK {
  ids = new Int32Array(256);
  vals = new Float32Array(256);
  size = 0;
  k = 0;
  reset(k: number): void {
    if (k > this.ids.length) {
      this.ids = new Int32Array(k);
      this.vals = new Float32Array(k);
    }
    this.k = k;
    this.size = 0;
  }
  /** Offers an entry in any id order (full tie-breaking comparison). */
  offer(v: number, id: number): void {
    if (this.size < this.k) {
      let i = this.size++;
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (!worse(v, id, this.vals[p]!, this.ids[p]!)) break;
        this.vals[i] = this.vals[p]!;
        this.ids[i] = this.ids[p]!;
        i = p;
      }
      this.vals[i] = v;
      this.ids[i] = id;
    } else if (this.k > 0 && worse(this.vals[0]!, this.ids[0]!, v, id)) {
      this.replaceRoot(v, id);
    }
  }
  replaceRoot(v: number, id: number): void {
    const n = this.size;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && worse(this.vals[r]!, this.ids[r]!, this.vals[l]!, this.ids[l]!) ? r : l;
      if (!worse(this.vals[c]!, this.ids[c]!, v, id)) break;
      this.vals[i] = this.vals[c]!;
      this.ids[i] = this.ids[c]!;
      i = c;
    }
    this.vals[i] = v;
    this.ids[i] = id;
  }
  /** Empties the heap into buf.list*, best first; returns the count. */
  drain(): number {
    const n = this.size;
    ensureList(n);
    for (let j = n - 1; j >= 0; j--) {
      buf.listIds[j] = this.ids[0]!;
      buf.listVals[j] = this.vals[0]!;
      const last = --this.size;
      if (last > 0) this.replaceRoot(this.vals[last]!, this.ids[last]!);
    }
    return n;
  }
}
function worse(va: number, ia: number, vb: number, ib: number): boolean {
  return va < vb || (va === vb && ia > ib);
}
const top = new TopK();

// Full-distribution path: tokens are bucketed by their scaled log-weight so that only the bucket where
// the top-p mass is crossed has to be sorted (instead of sorting the whole vocabulary).
const NBUCKETS = 1024;
const NO_BUCKET = 0xffff;
const bucketMass = new Float64Array(NBUCKETS);
const bucketCount = new Int32Array(NBUCKETS);
const EXP_RES = 16;
const EXP_LIMIT = 746 * EXP_RES; // exp(-746) underflows to 0
const EXP_TABLE = new Float64Array(EXP_LIMIT);
for (let j = 0; j < EXP_LIMIT; j++) EXP_TABLE[j] = Math.exp(-j / EXP_RES);

export class Sampler {
  readonly options: ResolvedSamplingOptions;
  readonly vocabSize: number;
  private readonly rng: Rng;
  /** A draft token for the current sampleDraft() call (-1: none). */
  private draft = -1;
  private readonly _needs: Readonly<SamplerNeeds>;
  private readonly penalties: boolean;
  /** Temperature 0, or so small that 1/T overflows (denormals): argmax. */
  private readonly greedy: boolean;

  /** Whether sample() is given a TokenFilter (constrained output): the sampler then needs full logits. */
  private readonly constrained: boolean;

  constructor(opts: SamplingOptions | undefined, vocabSize: number, { constrained = false }: { constrained?: boolean } = {}) {
    this.options = Sampler.validate(opts === undefined ? {} : opts, vocabSize);
    this.constrained = constrained;
    this.vocabSize = vocabSize;
    this.rng = new Rng(this.options.seed);
    const o = this.options;
    this.greedy = !(o.temperature >= 1e-300);
    this.penalties =
      o.penaltyLastN !== 0 && (o.repetitionPenalty !== 1 || o.presencePenalty !== 0 || o.frequencyPenalty !== 0);
    this._needs = Object.freeze(this.computeNeeds());
  }

  /** Validates and resolves options (defaults filled in); throws InvalidArgumentError naming the field. */
  static validate(opts: SamplingOptions, vocabSize: number): ResolvedSamplingOptions {
    if (!Number.isSafeInteger(vocabSize) || vocabSize < 1)
      throw new InvalidArgumentError("vocabSize", `must be a positive integer (got ${showValue(vocabSize)})`);
    if (typeof opts !== "object" || opts === null || Array.isArray(opts))
      throw new InvalidArgumentError("options", `must be an object (got ${showValue(opts)})`);
    const o = opts as Opts;
    const finite = Number.isFinite;
    const resolved: ResolvedSamplingOptions = {
      temperature: num(o, "temperature", (v) => finite(v) && v >= 0, "a finite number >= 0"),
      topK: num(o, "topK", (v) => Number.isSafeInteger(v) && v >= 0, "an integer >= 0"),
      topP: num(o, "topP", (v) => v > 0 && v <= 1, "in (0, 1]"),
      minP: num(o, "minP", (v) => v >= 0 && v < 1, "in [0, 1)"),
      repetitionPenalty: num(o, "repetitionPenalty", (v) => finite(v) && v > 0, "a finite number > 0"),
      presencePenalty: num(o, "presencePenalty", finite, "a finite number"),
      frequencyPenalty: num(o, "frequencyPenalty", finite, "a finite number"),
      penaltyLastN: num(o, "penaltyLastN", (v) => Number.isSafeInteger(v) && v >= -1, "an integer >= -1"),
      logitBias: new Map(),
      seed: undefined,
    };
    if (o.seed !== undefined) {
      if (!Number.isSafeInteger(o.seed)) throw new InvalidArgumentError("seed", `must be a safe integer (got ${showValue(o.seed)})`);
      resolved.seed = o.seed as number;
    }
    const lb = o.logitBias;
    if (lb !== undefined) {
      if (typeof lb !== "object" || lb === null || Array.isArray(lb))
        throw new InvalidArgumentError("logitBias", `must be an object mapping token ids to biases (got ${showValue(lb)})`);
      const map = resolved.logitBias as Map<number, number>;
      for (const [key, value] of Object.entries(lb)) {
        const id = /^(0|[1-9][0-9]*)$/.test(key) ? Number(key) : NaN;
        if (!(id < vocabSize))
          throw new InvalidArgumentError("logitBias", `key ${showValue(key)} is not a token id in [0, ${vocabSize})`);
        if (typeof value !== "number" || !(finite(value) || value === -Infinity))
          throw new InvalidArgumentError("logitBias", `bias for token ${key} must be a finite number or -Infinity (got ${showValue(value)})`);
        if (value !== 0) map.set(id, value);
      }
      let banned = 0;
      for (const v of map.values()) if (v === -Infinity) banned++;
      if (banned >= vocabSize) throw new InvalidArgumentError("logitBias", `bans every token of the vocabulary (${vocabSize} at -Infinity): nothing could be sampled`);
    }
    return resolved;
  }

  /** What the engine must hand to sample(): full logits, or this many top candidates. */
  get needs(): Readonly<SamplerNeeds> {
    return this._needs;
  }

  private computeNeeds(): SamplerNeeds {
    const o = this.options;
    const V = this.vocabSize;
    const full = { fullLogits: true, candidates: 0 };
    // A constraint may reject any number of the best tokens.
    if (this.constrained) return full;
    // Modifications that only LOWER logits keep the result exact with extra candidates: at most `extra`
    // tokens are lowered, so among the top k+extra at least k are untouched, and nothing outside them
    // can climb into the modified top-k. Anything that may raise a logit needs every logit.
    let extra = 0;
    if (this.penalties) {
      const lowering = o.repetitionPenalty >= 1 && o.presencePenalty >= 0 && o.frequencyPenalty >= 0;
      if (!lowering || o.penaltyLastN === -1) return full;
      extra += o.penaltyLastN; // distinct penalized tokens <= window length
    }
    for (const b of o.logitBias.values()) {
      if (b > 0) return full;
      extra++;
    }
    const k = this.greedy ? 1 : o.topK === 0 ? V : Math.min(o.topK, V);
    const c = k + extra;
    return c > MAX_CANDIDATES || c >= V ? full : { fullLogits: false, candidates: c };
  }

  /**
   * sample() with a draft token (speculative sampling with a deterministic draft): the draft is kept
   * with its probability p(draft) under the final distribution, and otherwise the token is drawn from
   * that distribution without the draft. The result follows exactly the distribution sample() draws
   * from; greedy samplers simply return the argmax.
   */
  sampleDraft(input: Float32Array | Candidates, history: ArrayLike<number>, draft: number, filter?: TokenFilter): number {
    this.draft = draft;
    try {
      return this.sample(input, history, filter);
    } finally {
      this.draft = -1;
    }
  }

  /**
   * Picks the next token. `history`: the sequence's tokens so far (prompt included), for the penalties.
   * Never mutates `input`. Throws ERR_MODEL_CORRUPT when no token is possible (all logits NaN/-Infinity/banned),
   * ERR_INTERNAL when the input does not match `needs`.
   * `filter` (samplers made with `constrained: true`) restricts the choice to the tokens it allows: the
   * result is the one sampling would give from the logits with every other token at -Infinity.
   */
  sample(input: Float32Array | Candidates, history: ArrayLike<number>, filter?: TokenFilter): number {
    const V = this.vocabSize;
    const isFull = input instanceof Float32Array;
    if (isFull) {
      if (input.length !== V) throw internal(`sampler got ${input.length} logits for a vocabulary of ${V}`);
    } else {
      const n = input.ids.length;
      if (input.logits.length !== n) throw internal(`sampler got ${n} candidate ids but ${input.logits.length} logits`);
      const need = this._needs.fullLogits ? V : this._needs.candidates;
      if (n < Math.min(need, V))
        throw internal(`sampler needs ${this._needs.fullLogits ? "full logits" : need + " candidates"} but got ${n} candidates`);
    }
    if (filter && !(this.constrained && isFull)) throw internal("a token filter needs a sampler made with constrained: true and full logits");
    ensureVocab(V);
    const touched: number[] = [];
    try {
      if (this.penalties) this.countHistory(history, touched);
      const mods = this.penalties || this.options.logitBias.size > 0;
      if (filter) return this.sampleFiltered(input as Float32Array, mods, touched, filter);
      if (!isFull) return this.fromCandidates(input, mods);
      const logits = mods ? this.modifiedCopy(input, touched) : input;
      const o = this.options;
      if (this.greedy) return argmax(logits);
      const k = o.topK === 0 ? V : Math.min(o.topK, V);
      if (k < V) return this.finish(selectTopK(logits, k));
      return this.fromDistribution(logits);
    } finally {
      for (const t of touched) buf.counts[t] = 0;
    }
  }

  /**
   * Constrained sampling. The top-k of the masked logits are the first k allowed tokens in the
   * unmasked order (logit descending, id ascending), so the best candidates are checked one by one,
   * and the whole vocabulary is masked only when too few of them pass (or when the options need the
   * full distribution). One batch of candidates, not growing ones: where few tokens pass (between
   * JSON values) the mask is cheap, as the trie walk prunes early; inside strings, where it is not
   * (~5 ms at vocabulary 32000), nearly every candidate passes.
   */
  private sampleFiltered(input: Float32Array, mods: boolean, touched: number[], filter: TokenFilter): number {
    const V = this.vocabSize;
    let logits: Float32Array;
    if (mods) logits = this.modifiedCopy(input, touched);
    else {
      logits = buf.copy.length === V ? buf.copy : buf.copy.subarray(0, V);
      logits.set(input);
    }
    const o = this.options;
    const k = this.greedy ? 1 : o.topK === 0 ? V : Math.min(o.topK, V);
    if (k <= MAX_CANDIDATES) {
      const M = Math.min(Math.max(64, 4 * k), V);
      const n = selectTopK(logits, M);
      let j = 0;
      let exhausted = M === V;
      for (let i = 0; i < n && j < k; i++) {
        const id = buf.listIds[i]!;
        const v = buf.listVals[i]!;
        if (!(v > -Infinity)) {
          exhausted = true; // sorted: every token from here on is -Infinity (or NaN) and cannot be drawn
          break;
        }
        if (filter.allows(id)) {
          buf.listIds[j] = id;
          buf.listVals[j++] = v;
        }
      }
      if (j === k || exhausted) {
        if (j === 0) {
          filter.fillMask(buf.mask.length === V ? buf.mask : buf.mask.subarray(0, V));
          throw noAllowedToken(input, buf.mask.subarray(0, V));
        }
        return this.greedy ? buf.listIds[0]! : this.finish(j);
      }
    }
    const mask = buf.mask.length === V ? buf.mask : buf.mask.subarray(0, V);
    filter.fillMask(mask);
    let any = false;
    for (let i = 0; i < V; i++) {
      if (mask[i] === 0) logits[i] = -Infinity;
      else if (logits[i]! > -Infinity) any = true;
    }
    if (!any) throw noAllowedToken(input, mask);
    if (this.greedy) return argmax(logits);
    if (k < V) return this.finish(selectTopK(logits, k));
    return this.fromDistribution(logits);
  }

  private countHistory(history: ArrayLike<number>, touched: number[]): void {
    const n = history.length;
    const lastN = this.options.penaltyLastN;
    const counts = buf.counts;
    for (let i = lastN < 0 ? 0 : Math.max(0, n - lastN); i < n; i++) {
      const t = history[i]!;
      if (!(Number.isInteger(t) && t >= 0 && t < this.vocabSize))
        throw new InvalidArgumentError("history", `token ${showValue(t)} at index ${i} is not in [0, ${this.vocabSize})`);
      if (counts[t]++ === 0) touched.push(t);
    }
  }

  /** Bias then penalties for one token; both input paths use exactly this (float32-rounded) value. */
  private modify(id: number, v: number): number {
    if (v !== v) v = -Infinity;
    const b = this.options.logitBias.get(id);
    if (b !== undefined) v += b;
    const c = this.penalties ? buf.counts[id]! : 0;
    if (c > 0) {
      const o = this.options;
      v = v > 0 ? v / o.repetitionPenalty : v * o.repetitionPenalty;
      v -= c * o.frequencyPenalty + o.presencePenalty;
    }
    return v !== v ? -Infinity : v; // +Infinity logit with a -Infinity ban: banned
  }

  private modifiedCopy(input: Float32Array, touched: number[]): Float32Array {
    const copy = buf.copy.length === input.length ? buf.copy : buf.copy.subarray(0, input.length);
    copy.set(input);
    // Recomputed from `input`, so a token both biased and penalized is modified once.
    for (const id of this.options.logitBias.keys()) copy[id] = this.modify(id, input[id]!);
    for (const id of touched) copy[id] = this.modify(id, input[id]!);
    return copy;
  }

  private fromCandidates(c: Candidates, mods: boolean): number {
    const o = this.options;
    const n = c.ids.length;
    const k = this.greedy ? 1 : o.topK === 0 ? n : Math.min(o.topK, n);
    top.reset(k);
    for (let j = 0; j < n; j++) {
      const id = c.ids[j]!;
      if (!(id >= 0 && id < this.vocabSize)) throw internal(`candidate token id ${id} is out of range`);
      const v = c.logits[j]!;
      // Float32 rounding as in the full path's copy, so both paths see bit-identical values.
      top.offer(mods ? Math.fround(this.modify(id, v)) : v !== v ? -Infinity : v, id);
    }
    const m = top.drain();
    if (this.greedy) {
      if (buf.listVals[0] === -Infinity) throw allMasked();
      return buf.listIds[0]!;
    }
    return this.finish(m);
  }

  /** Temperature, softmax, top-p, min-p and the draw over buf.list* (n entries, best first). */
  private finish(n: number): number {
    const { temperature, topP, minP } = this.options;
    const ids = buf.listIds;
    const vals = buf.listVals;
    const w = buf.listW;
    const m = vals[0]!;
    if (m === -Infinity) throw allMasked();
    const invT = 1 / temperature;
    let z = 0;
    for (let j = 0; j < n; j++) {
      // +Infinity logits (a broken model) share all the mass.
      w[j] = m === Infinity ? (vals[j] === Infinity ? 1 : 0) : Math.exp((vals[j]! - m) * invT);
      z += w[j]!;
    }
    let len = n;
    if (topP < 1) {
      const target = topP * z;
      let cum = 0;
      for (let j = 0; j < n; j++) {
        cum += w[j]!;
        if (cum >= target) {
          len = j + 1;
          break;
        }
      }
    }
    // p < minP * pmax  <=>  w < minP, since the best token has weight exactly 1.
    for (let j = 1; j < len; j++) {
      if (w[j]! < minP) {
        len = j;
        break;
      }
    }
    const d = this.draft >= 0 ? ids.subarray(0, len).indexOf(this.draft) : -1;
    if (d >= 0) {
      let sum = 0;
      for (let j = 0; j < len; j++) sum += w[j]!;
      if (this.rng.next() * sum < w[d]!) return this.draft;
      w[d] = 0; // rejected: drawn from the rest
    }
    return ids[draw(w, len, this.rng.next())]!;
  }

  /** No top-k limit: top-p/min-p over the whole vocabulary without sorting all of it. */
  private fromDistribution(logits: Float32Array): number {
    const { temperature, topP, minP } = this.options;
    const V = logits.length;
    let m = -Infinity;
    let lo = Infinity;
    for (let i = 0; i < V; i++) {
      const v = logits[i]!;
      if (v > m) m = v;
      if (v < lo && v > -Infinity) lo = v;
    }
    if (m === -Infinity) throw allMasked();
    if (m === Infinity) {
      // +Infinity logits (a broken model) share all the mass: rewrite them as 0, the rest as -Infinity.
      const copy = buf.copy.subarray(0, V);
      for (let i = 0; i < V; i++) copy[i] = logits[i] === Infinity ? 0 : -Infinity;
      return this.fromDistribution(copy);
    }
    const { w, bucket, kept } = buf;
    // t = -x * EXP_RES where x = (logit - max) / T <= 0 is the log-weight. Buckets span the t range
    // actually present (capped at 40 nats) so that even a flat distribution spreads over many buckets.
    const tScale = EXP_RES / temperature;
    const span = Math.min((m - lo) * tScale, 40 * EXP_RES);
    const bScale = span > 0 ? (NBUCKETS - 1) / span : 0;
    bucketMass.fill(0);
    bucketCount.fill(0);
    let z = 0;
    for (let i = 0; i < V; i++) {
      const t = (m - logits[i]!) * tScale; // NaN or Infinity for NaN / -Infinity logits: weight 0
      let wi = 0;
      if (t < EXP_LIMIT) {
        // exp(x) = exp(-j/EXP_RES) * exp(-r), r in [0, 1/EXP_RES): a table and a 5th-order Taylor
        // polynomial (relative error < 1e-10) instead of Math.exp, which dominates this loop otherwise.
        const j = t | 0;
        const r = (t - j) * (1 / EXP_RES);
        wi = EXP_TABLE[j]! * (1 - r * (1 - r * (1 / 2 - r * (1 / 6 - r * (1 / 24 - r * (1 / 120))))));
      }
      w[i] = wi;
      z += wi;
      if (wi > 0 && wi >= minP) {
        const b = Math.min(NBUCKETS - 1, (t * bScale) | 0);
        bucket[i] = b;
        bucketMass[b] += wi;
        bucketCount[b]++;
      } else bucket[i] = NO_BUCKET; // dropped by min-p (p < minP * pmax <=> w < minP), or weight 0
    }
    // Buckets are ordered by weight, so top-p keeps every bucket before `cut` and, from bucket `cut`,
    // a best-first prefix. Tokens failing min-p all weigh less than those passing it, so the mass of
    // the passing ones is the true cumulative mass of the sorted prefix.
    const target = topP * z;
    let cut = NBUCKETS;
    let below = 0;
    if (topP < 1) {
      for (let b = 0; b < NBUCKETS; b++) {
        if (below + bucketMass[b]! >= target) {
          cut = b;
          break;
        }
        below += bucketMass[b]!;
      }
    }
    let nk = 0;
    let s = 0;
    if (cut < NBUCKETS) top.reset(bucketCount[cut]!);
    for (let i = 0; i < V; i++) {
      const b = bucket[i]!;
      if (b < cut) {
        kept[nk++] = i;
        s += w[i]!;
      } else if (b === cut) top.offer(logits[i]!, i);
    }
    if (cut < NBUCKETS) {
      const n = top.drain();
      let cum = below;
      for (let j = 0; j < n; j++) {
        const id = buf.listIds[j]!;
        kept[nk++] = id;
        s += w[id]!;
        cum += w[id]!;
        if (cum >= target) break;
      }
    }
    const d = this.draft;
    if (d >= 0 && kept.subarray(0, nk).includes(d)) {
      if (this.rng.next() * s < w[d]!) return d;
      s -= w[d]!; // rejected: drawn from the rest
      w[d] = 0;
    }
    let r = this.rng.next() * s;
    for (let j = 0; j < nk; j++) {
      r -= w[kept[j]!]!;
      if (r < 0) return kept[j]!;
    }
    if (nk === 0) throw allMasked(); // not reachable: the best token always weighs 1
    // Rounding left r >= 0 after the last kept token: the last one with weight (never a rejected draft).
    for (let j = nk - 1; j > 0; j--) if (w[kept[j]!]! > 0) return kept[j]!;
    return kept[0]!;
  }
}

/** The k best entries of `logits` into buf.list*, best first (ties: lower id). */
function selectTopK(logits: Float32Array, k: number): number {
  const V = logits.length;
  top.reset(k);
  let i = 0;
  for (; i < V && top.size < k; i++) {
    const v = logits[i]!;
    top.offer(v !== v ? -Infinity : v, i);
  }
  // Ids arrive in ascending order, so an equal logit never beats the root: `>` is the exact test,
  // and NaN fails it.
  let root = top.vals[0]!;
  for (; i < V; i++) {
    const v = logits[i]!;
    if (v > root) {
      top.replaceRoot(v, i);
      root = top.vals[0]!;
    }
  }
  return top.drain();
}

/** Highest logit, lowest id on ties; NaN never wins. */
function argmax(logits: Float32Array): number {
  let best = -1;
  let bv = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    if (v > bv) {
      bv = v;
      best = i;
    }
  }
  if (best < 0) throw allMasked();
  return best;
}

/** Index j < len drawn with probability w[j] / sum(w[0..len)). */
function draw(w: Float64Array, len: number, u: number): number {
  let s = 0;
  for (let j = 0; j < len; j++) s += w[j]!;
  let r = u * s;
  let last = 0;
  for (let j = 0; j < len; j++) {
    if (w[j]! > 0) last = j;
    r -= w[j]!;
    if (r < 0) return j;
  }
  return last;
}

function internal(msg: string): Llama2Error {
  return new Llama2Error("ERR_INTERNAL", msg);
}
/** Constrained sampling found no allowed token with a finite logit. */
function noAllowedToken(input: Float32Array, mask: Uint8Array): Llama2Error {
  // The format itself allows nothing: a grammar that can neither go on nor end here.
  if (!mask.includes(1)) {
    return new InvalidArgumentError("responseFormat", "the response format allows no token here: the output so far can neither continue nor end (a grammar rule that matches nothing?)");
  }
  // With some finite logit, the model is fine: logitBias banned every token the format allows.
  for (let i = 0; i < input.length; i++) {
    if (Number.isFinite(input[i])) {
      return new InvalidArgumentError("responseFormat", "no token that the response format allows next can be sampled: logitBias bans all of them");
    }
  }
  return allMasked();
}

/** No token is possible: the model's output is unusable (NaN/Inf), not a bug of ours. Llama2 adds the model's path. */
function allMasked(): Llama2Error {
  return new Llama2Error("ERR_MODEL_CORRUPT", "sampling failed: every logit is NaN or -Infinity (or banned by logitBias)");
}
