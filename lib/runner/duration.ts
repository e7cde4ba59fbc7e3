// Durations for --auto-release / --grace: "500ms", "30s", "30m", "2h", "1d" (a single number + unit).
import { InvalidArgumentError } from "../errors.js";

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
// setTimeout fires at once for delays above 2^31-1 ms (~24.8 days), so longer is refused.
const MAX_MS = 2 ** 31 - 1;

export function parseDuration(field: string, raw: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(raw.trim());
  if (!m) throw new InvalidArgumentError(field, `expected a duration like 30s, 30m or 2h, got '${raw}'`);
  const ms = Math.round(Number(m[1]) * UNIT_MS[m[2]!]!);
  if (ms <= 0) throw new InvalidArgumentError(field, `must be greater than 0, got '${raw}'`);
  if (ms > MAX_MS) throw new InvalidArgumentError(field, `must be at most 24d, got '${raw}'`);
  return ms;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${+(ms / 1000).toFixed(1)}s`;
  const s = Math.round(ms / 1000);
  const [h, m, sec] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  return h ? `${h}h${m ? `${m}m` : ""}` : `${m}m${sec ? `${sec}s` : ""}`;
}
