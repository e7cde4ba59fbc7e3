// Prompt lookup decoding's drafts: text often repeats what came before it (a quoted passage, code being
// edited, names, a list's pattern), so the tokens that followed the last earlier occurrence of the
// history's final n-gram are a cheap guess of what comes next. The generation evaluates the guesses with
// the token before them in one step (a batch-1 step reads the weights once for any few tokens) and keeps
// those that greedy sampling confirms, so the output is unchanged.

/** The longest and shortest n-grams matched (longest first: a longer match predicts better). */
const MAX_NGRAM = 4;
const MIN_NGRAM = 2;

/**
 * Up to `max` tokens that followed the most recent earlier occurrence of `history`'s last n tokens
 * (n from MAX_NGRAM down to MIN_NGRAM), or [] when none occurs.
 */
export function lookupDraft(history: readonly number[], max: number): number[] {
  const len = history.length;
  if (max <= 0) return [];
  for (let n = Math.min(MAX_NGRAM, len - 1); n >= MIN_NGRAM; n--) {
    const tail = len - n;
    // An occurrence at `start` ends before the tail starts overlapping itself only when start < tail.
    for (let start = tail - 1; start >= 0; start--) {
      let k = 0;
      while (k < n && history[start + k] === history[tail + k]) k++;
      if (k < n) continue;
      const from = start + n;
      return history.slice(from, Math.min(from + max, len));
    }
  }
  return [];
}
