// A progress line on stderr: redrawn in place on a terminal, otherwise one line per 10% step
// (so logs captured to a file stay short).
export class ProgressLine {
  private lastStep = -1;
  private lastLabel = "";
  private drawn = false;
  constructor(
    private readonly out: NodeJS.WritableStream,
    private readonly tty = (out as { isTTY?: boolean }).isTTY === true,
  ) {}

  update(label: string, done: number, total: number, extra = ""): void {
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    const width = 24;
    const fill = Math.round(frac * width);
    const line = `${label} [${"#".repeat(fill)}${"-".repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}%${extra ? ` ${extra}` : ""}`;
    if (this.tty) {
      this.out.write(`\r\x1b[2K${line}`);
      this.drawn = true;
      return;
    }
    const step = Math.floor(frac * 10);
    if (step === this.lastStep && label === this.lastLabel) return;
    this.lastStep = step;
    this.lastLabel = label;
    this.out.write(line + "\n");
  }

  /** Ends the redrawn line so that the next output starts on its own line. */
  end(): void {
    if (this.tty && this.drawn) this.out.write("\n");
    this.drawn = false;
    this.lastStep = -1;
  }
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}
