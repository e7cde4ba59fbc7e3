// Prometheus text exposition (format 0.0.4) for the server: a few counters, gauges and histograms.
// Labels come from fixed sets (endpoint names, status codes), never from raw URLs, so cardinality is bounded.

type Labels = Record<string, string>;

function labelKey(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

function fmt(v: number): string {
  return Number.isFinite(v) ? String(v) : v > 0 ? "+Inf" : v < 0 ? "-Inf" : "NaN";
}

class Counter {
  private readonly values = new Map<string, number>();
  constructor(readonly name: string, readonly help: string) {}
  inc(labels: Labels = {}, by = 1): void {
    const k = labelKey(labels);
    this.values.set(k, (this.values.get(k) ?? 0) + by);
  }
  get(labels: Labels = {}): number {
    return this.values.get(labelKey(labels)) ?? 0;
  }
  render(): string[] {
    const out = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    if (this.values.size === 0) out.push(`${this.name} 0`);
    for (const [k, v] of this.values) out.push(`${this.name}${k} ${fmt(v)}`);
    return out;
  }
}

class Histogram {
  private readonly series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(readonly name: string, readonly help: string, readonly buckets: number[]) {}
  observe(value: number, labels: Labels = {}): void {
    const k = labelKey(labels);
    let s = this.series.get(k);
    if (!s) this.series.set(k, (s = { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 }));
    this.buckets.forEach((b, i) => {
      if (value <= b) s!.counts[i]!++;
    });
    s.sum += value;
    s.count++;
  }
  render(): string[] {
    const out = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const s of this.series.values()) {
      this.buckets.forEach((b, i) => out.push(`${this.name}_bucket${labelKey({ ...s.labels, le: fmt(b) })} ${s.counts[i]}`));
      out.push(`${this.name}_bucket${labelKey({ ...s.labels, le: "+Inf" })} ${s.count}`);
      out.push(`${this.name}_sum${labelKey(s.labels)} ${fmt(s.sum)}`);
      out.push(`${this.name}_count${labelKey(s.labels)} ${s.count}`);
    }
    return out;
  }
}

function gauge(name: string, help: string, value: number, labels: Labels = {}): string[] {
  return [`# HELP ${name} ${help}`, `# TYPE ${name} gauge`, `${name}${labelKey(labels)} ${fmt(value)}`];
}

export interface GaugeSources {
  queueDepth(): number;
  inFlight(): number;
  deviceMemoryBytes(): number | undefined;
  model: { id: string; device: string; dtype: string };
}

export class Metrics {
  readonly requests = new Counter("llama2_http_requests_total", "HTTP requests by endpoint and status code.");
  readonly promptTokens = new Counter("llama2_prompt_tokens_total", "Prompt tokens processed.");
  readonly generatedTokens = new Counter("llama2_generated_tokens_total", "Tokens generated.");
  readonly latency = new Histogram(
    "llama2_request_duration_seconds",
    "Time from request to the end of the response, by endpoint.",
    [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
  );
  readonly ttft = new Histogram(
    "llama2_time_to_first_token_seconds",
    "Time from request to the first generated token.",
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  );
  private readonly started = Date.now();

  constructor(private readonly sources: GaugeSources) {}

  render(): string {
    const mem = this.sources.deviceMemoryBytes();
    const lines = [
      ...this.requests.render(),
      ...this.promptTokens.render(),
      ...this.generatedTokens.render(),
      ...this.latency.render(),
      ...this.ttft.render(),
      ...gauge("llama2_queue_depth", "Generation requests waiting or running in the model.", this.sources.queueDepth()),
      ...gauge("llama2_http_requests_in_flight", "HTTP requests being served.", this.sources.inFlight()),
      ...(mem !== undefined ? gauge("llama2_gpu_memory_bytes", "GPU memory in use by the model.", mem) : []),
      ...gauge("llama2_model_info", "The loaded model.", 1, this.sources.model),
      ...gauge("llama2_uptime_seconds", "Seconds since the server started.", Math.round((Date.now() - this.started) / 1000)),
    ];
    return lines.join("\n") + "\n";
  }
}
