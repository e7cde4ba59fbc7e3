// Stop strings matched across token boundaries. Text that might be the start of a stop string is held
// back until it either completes one (then it is dropped with everything after it) or cannot anymore.
import { InvalidArgumentError } from "./errors.js";

export const MAX_STOP_STRINGS = 16;
export const MAX_STOP_LENGTH = 256;

export interface StopPush {
  /** Text that is safe to emit now. */
  text: string;
  /** A stop string completed: `text` is everything before it, and nothing more will be emitted. */
  stopped: boolean;
}

export class StopMatcher {
  private readonly stops: readonly string[];
  private held = "";
  private done = false;
  /** The stop string that ended generation, once one has. */
  matched: string | undefined;

  /**
   * `stops`: the `stop` option (undefined or [] = no stop strings: everything passes through);
   * `extra`: stop strings checked elsewhere (a chat template's), not counted against the option's limit.
   */
  constructor(stops: readonly string[] | undefined, extra: readonly string[] = []) {
    this.stops = [...StopMatcher.validate(stops), ...extra];
  }

  static validate(stops: unknown): string[] {
    if (stops === undefined) return [];
    if (!Array.isArray(stops)) throw new InvalidArgumentError("stop", `must be an array of strings (got ${typeof stops})`);
    if (stops.length > MAX_STOP_STRINGS)
      throw new InvalidArgumentError("stop", `at most ${MAX_STOP_STRINGS} stop strings (got ${stops.length})`);
    stops.forEach((s: unknown, i) => {
      if (typeof s !== "string") throw new InvalidArgumentError("stop", `stop[${i}] must be a string (got ${s === null ? "null" : typeof s})`);
      if (s.length === 0) throw new InvalidArgumentError("stop", `stop[${i}] must not be empty`);
      if (s.length > MAX_STOP_LENGTH)
        throw new InvalidArgumentError("stop", `stop[${i}] is ${s.length} characters long (at most ${MAX_STOP_LENGTH})`);
      // Decoded text never contains lone surrogates, so such a stop string could never match.
      if (/\p{Surrogate}/u.test(s)) throw new InvalidArgumentError("stop", `stop[${i}] contains a lone UTF-16 surrogate`);
    });
    return [...stops];
  }

  get stopped(): boolean {
    return this.done;
  }

  push(delta: string): StopPush {
    if (this.done) return { text: "", stopped: true };
    if (this.stops.length === 0) return { text: delta, stopped: false };
    const buf = this.held + delta;
    // Everything already emitted was checked not to start a match, so the earliest match is in `buf`.
    let at = -1;
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (at < 0 || i < at)) {
        at = i;
        this.matched = s;
      }
    }
    if (at >= 0) {
      this.done = true;
      this.held = "";
      return { text: buf.slice(0, at), stopped: true };
    }
    const keep = this.partialSuffix(buf);
    this.held = buf.slice(buf.length - keep);
    return { text: buf.slice(0, buf.length - keep), stopped: false };
  }

  /** Releases held-back text at the end of generation (nothing after a stop). */
  flush(): string {
    const text = this.held;
    this.held = "";
    return text;
  }

  /** Length of the longest suffix of `buf` that is a proper prefix of some stop string. */
  private partialSuffix(buf: string): number {
    let best = 0;
    for (const s of this.stops) {
      // Longest candidates first: the first start position whose rest is a prefix of `s` wins.
      for (let i = Math.max(0, buf.length - s.length + 1); i < buf.length - best; i++) {
        if (buf.charCodeAt(i) === s.charCodeAt(0) && s.startsWith(buf.slice(i))) {
          best = buf.length - i;
          break;
        }
      }
    }
    return best;
  }
}
