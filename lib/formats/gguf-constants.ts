// GGUF v3 constants (ggml/include/gguf.h, ggml.h). Only what this project writes and reads.

export const GGUF_MAGIC = "GGUF";
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** gguf_type: the type tag of a metadata value. */
export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;
export type GgufValueTypeName = keyof typeof GgufValueType;

/** ggml_type of a tensor (the subset used here: the engine runs F32/F16/BF16/Q8_0 and decodes the rest at load). */
export const GgmlType = { F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q5_0: 6, Q5_1: 7, Q8_0: 8, Q2_K: 10, Q3_K: 11, Q4_K: 12, Q5_K: 13, Q6_K: 14, BF16: 30 } as const;
export type GgmlTypeName = keyof typeof GgmlType;

/** Elements per block and bytes per block of each tensor type. */
export const GGML_BLOCK: Record<GgmlTypeName, { elements: number; bytes: number }> = {
  F32: { elements: 1, bytes: 4 },
  F16: { elements: 1, bytes: 2 },
  BF16: { elements: 1, bytes: 2 },
  Q8_0: { elements: 32, bytes: 34 }, // fp16 scale + 32 x int8
  Q4_0: { elements: 32, bytes: 18 },
  Q4_1: { elements: 32, bytes: 20 },
  Q5_0: { elements: 32, bytes: 22 },
  Q5_1: { elements: 32, bytes: 24 },
  Q2_K: { elements: 256, bytes: 84 },
  Q3_K: { elements: 256, bytes: 110 },
  Q4_K: { elements: 256, bytes: 144 },
  Q5_K: { elements: 256, bytes: 176 },
  Q6_K: { elements: 256, bytes: 210 },
};

/** general.file_type (llama_ftype): the type of most of the file's matrices. */
export const LlamaFileType = { ALL_F32: 0, MOSTLY_F16: 1, MOSTLY_Q4_1: 3, MOSTLY_Q8_0: 7, MOSTLY_BF16: 32 } as const;

/** Bytes of a tensor of `type` with ggml dims `ne` (ne[0] = the contiguous row). */
export function ggmlTensorBytes(type: GgmlTypeName, ne: readonly number[]): number {
  const { elements, bytes } = GGML_BLOCK[type];
  const n = ne.reduce((a, b) => a * b, 1);
  return (n / elements) * bytes;
}
