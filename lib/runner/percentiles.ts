// Summary statistics for evaluation reports.
export interface Percentiles {
  p50: number | null;
  p90: number | null;
  p99: number | null;
  mean: number | null;
  max: number | null;
}

/** Nearest-rank percentiles, rounded to 0.01; nulls when there are no values. */
export function percentiles(values: number[]): Percentiles {
  if (values.length === 0) return { p50: null, p90: null, p99: null, mean: null, max: null };
  const s = [...values].sort((a, b) => a - b);
  const at = (p: number): number => r(s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)]!);
  return { p50: at(50), p90: at(90), p99: at(99), mean: r(s.reduce((a, b) => a + b, 0) / s.length), max: r(s[s.length - 1]!) };
}

function r(v: number): number {
  return Math.round(v * 100) / 100;
}
