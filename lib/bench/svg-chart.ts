// A self-contained horizontal bar chart in SVG (no dependencies, no external fonts or scripts):
// measured bars solid, predicted bars hatched with a dashed outline, a legend and a labelled axis.

export type BarKind = "measured" | "peer" | "predicted";

export interface Bar {
  label: string;
  /** null: no bar (e.g. the model does not fit); `note` is shown instead. */
  value: number | null;
  kind: BarKind;
  note?: string;
}

export interface ChartOptions {
  title: string;
  /** A smaller line under the title (e.g. the models shown); wrapped to the chart's width. */
  subtitle?: string;
  xLabel: string;
  width?: number;
}

const COLORS: Record<BarKind, string> = { measured: "#2563eb", peer: "#059669", predicted: "#f59e0b" };
const LEGEND: Record<BarKind, string> = {
  measured: "measured (llama2-native)",
  peer: "measured (other engine)",
  predicted: "predicted (roofline estimate, not measured)",
};

export function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c]!);
}

/** 1, 2 or 5 times a power of ten, giving about `target` ticks up to `max`. */
export function niceStep(max: number, target = 5): number {
  if (!(max > 0)) return 1;
  const raw = max / target;
  const p = 10 ** Math.floor(Math.log10(raw));
  const m = raw / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

/** Average glyph width, px, at 12 px (labels) and at the title's 15 px semibold: SVG text never wraps, so lines are sized by it. */
const CHAR_W = 6.6;
const TITLE_CHAR_W = 9;

/** Splits text at spaces into lines of at most `max` characters (a longer word is cut). */
export function wrapText(text: string, max: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (let word of text.split(/\s+/).filter(Boolean)) {
    while (word.length > max) {
      if (line) lines.push(line);
      lines.push(word.slice(0, max));
      word = word.slice(max);
      line = "";
    }
    if (!line) line = word;
    else if (line.length + 1 + word.length <= max) line += ` ${word}`;
    else {
      lines.push(line);
      line = word;
    }
  }
  if (line) lines.push(line);
  return lines;
}

function fmt(v: number): string {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

export function barChartSvg(bars: Bar[], opts: ChartOptions): string {
  // the chart widens rather than clipping long labels
  const labelW = 16 + CHAR_W * Math.max(10, ...bars.map((b) => b.label.length));
  const width = Math.max(opts.width ?? 960, labelW + 480);
  // titles wrap instead: their length grows with the number of models, not with one label
  const titleLines = wrapText(opts.title, Math.floor((width - 40) / TITLE_CHAR_W));
  const subtitleLines = wrapText(opts.subtitle ?? "", Math.floor((width - 40) / CHAR_W));
  const headerH = 10 + titleLines.length * 20 + subtitleLines.length * 16;
  const left = labelW + 10;
  const right = 70;
  const rowH = 24;
  const top = headerH + 18;
  const kinds = (Object.keys(LEGEND) as BarKind[]).filter((k) => bars.some((b) => b.kind === k));
  const plotH = Math.max(1, bars.length) * rowH;
  const axisY = top + plotH;
  const height = axisY + 46 + kinds.length * 18 + 10;
  const max = Math.max(0, ...bars.map((b) => (b.value !== null && Number.isFinite(b.value) ? b.value : 0)));
  const step = niceStep(max);
  const xMax = Math.max(step, Math.ceil(max / step) * step);
  const plotW = width - left - right;
  const x = (v: number) => left + (v / xMax) * plotW;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, -apple-system, 'Segoe UI', sans-serif" font-size="12">`,
    `<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="${COLORS.predicted}" fill-opacity="0.25"/><line x1="0" y1="0" x2="0" y2="6" stroke="${COLORS.predicted}" stroke-width="2.5"/></pattern></defs>`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    ...titleLines.map((l, i) => `<text x="${width / 2}" y="${24 + i * 20}" text-anchor="middle" font-size="15" font-weight="600">${escapeXml(l)}</text>`),
    ...subtitleLines.map(
      (l, i) => `<text x="${width / 2}" y="${10 + titleLines.length * 20 + 10 + i * 16}" text-anchor="middle" fill="#374151">${escapeXml(l)}</text>`,
    ),
  ];
  for (let v = 0; v <= xMax + 1e-9; v += step) {
    const px = x(v).toFixed(1);
    out.push(`<line x1="${px}" y1="${top - 4}" x2="${px}" y2="${axisY}" stroke="#e5e7eb"/>`);
    out.push(`<text x="${px}" y="${axisY + 16}" text-anchor="middle" fill="#374151">${Number(v.toPrecision(6))}</text>`);
  }
  out.push(`<line x1="${left}" y1="${axisY}" x2="${left + plotW}" y2="${axisY}" stroke="#6b7280"/>`);
  out.push(`<line x1="${left}" y1="${top - 4}" x2="${left}" y2="${axisY}" stroke="#6b7280"/>`);
  out.push(`<text x="${left + plotW / 2}" y="${axisY + 34}" text-anchor="middle" fill="#111827">${escapeXml(opts.xLabel)}</text>`);
  bars.forEach((b, i) => {
    const y = top + i * rowH;
    out.push(`<text x="${labelW}" y="${y + rowH / 2 + 4}" text-anchor="end" fill="#111827">${escapeXml(b.label)}</text>`);
    if (b.value === null || !Number.isFinite(b.value)) {
      out.push(`<text x="${left + 6}" y="${y + rowH / 2 + 4}" fill="#b91c1c" font-style="italic">${escapeXml(b.note ?? "no data")}</text>`);
      return;
    }
    const w = Math.max(1, x(b.value) - left);
    const style =
      b.kind === "predicted"
        ? `fill="url(#hatch)" stroke="${COLORS.predicted}" stroke-width="1.5" stroke-dasharray="4 3"`
        : `fill="${COLORS[b.kind]}"`;
    out.push(`<rect x="${left}" y="${y + 4}" width="${w.toFixed(1)}" height="${rowH - 8}" ${style}><title>${escapeXml(`${b.label}: ${fmt(b.value)}${b.kind === "predicted" ? " (predicted)" : ""}`)}</title></rect>`);
    const label = `${b.kind === "predicted" ? "≈" : ""}${fmt(b.value)}`;
    out.push(`<text x="${(left + w + 4).toFixed(1)}" y="${y + rowH / 2 + 4}" fill="#111827">${escapeXml(label)}</text>`);
  });
  kinds.forEach((k, i) => {
    const y = axisY + 50 + i * 18;
    const style = k === "predicted" ? `fill="url(#hatch)" stroke="${COLORS.predicted}" stroke-dasharray="4 3"` : `fill="${COLORS[k]}"`;
    out.push(`<rect x="${left}" y="${y - 10}" width="18" height="12" ${style}/>`);
    out.push(`<text x="${left + 24}" y="${y}" fill="#111827">${escapeXml(LEGEND[k])}</text>`);
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}
