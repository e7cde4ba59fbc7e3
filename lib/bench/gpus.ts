// Datasheet figures of GPUs the comparison report predicts for (NVIDIA product pages). Decode of a
// Llama at small batch reads every weight once per step, so its speed is bounded by memory bandwidth.

export interface GpuSpec {
  name: string;
  /** Peak memory bandwidth, GB/s (1e9 bytes/s). */
  bandwidthGBs: number;
  /** Memory size, bytes. */
  memoryBytes: number;
  /** Recognizes this GPU in a device name reported by the driver (e.g. "NVIDIA H100 80GB HBM3"). */
  match: RegExp;
}

const GiB = 2 ** 30;

// findGpu takes the first match, so entries go most specific first: "A100 80GB PCIe" before the
// 40GB PCIe and 80GB SXM patterns that would also match it, H200 anchored so that "GH200" (another
// bandwidth) is not taken for it.
export const GPUS: GpuSpec[] = [
  { name: "A100 80GB PCIe", bandwidthGBs: 1935, memoryBytes: 80 * GiB, match: /A100.*(80GB.*PCIE|PCIE.*80GB)/i },
  { name: "A100 40GB PCIe", bandwidthGBs: 1555, memoryBytes: 40 * GiB, match: /A100.*(PCIE|40GB)/i },
  { name: "A100 80GB SXM", bandwidthGBs: 2039, memoryBytes: 80 * GiB, match: /A100.*(SXM|80GB)/i },
  { name: "H200", bandwidthGBs: 4800, memoryBytes: 141 * GiB, match: /\bH200\b/i },
  { name: "H100 SXM", bandwidthGBs: 3350, memoryBytes: 80 * GiB, match: /\bH100\b(?!.*(PCIE|NVL))/i },
  { name: "RTX 4090", bandwidthGBs: 1008, memoryBytes: 24 * GiB, match: /\b4090\b/ },
  { name: "A10", bandwidthGBs: 600, memoryBytes: 24 * GiB, match: /\bA10G?\b/i },
  { name: "L4", bandwidthGBs: 300, memoryBytes: 24 * GiB, match: /\bL4\b/i },
];

/** The datasheet entry of a reported device name, if it is one of GPUS. */
export function findGpu(deviceName: string): GpuSpec | undefined {
  return GPUS.find((g) => g.match.test(deviceName));
}
