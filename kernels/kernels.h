// Host-callable entry points of the CUDA kernels (one family per .cu file). Shapes and layouts:
// - Weights are row-major [N, K] (output rows, input cols), stored PADDED: N to a multiple of 128 and
//   K to a multiple of 64, zero-filled, so kernels need no ragged edges (`n_valid` says how many
//   output columns are real). int8 weights ("W8", per-32 group scales): q[N][K] int8 + scales[N][K/32] fp16.
//   4-bit weights ("W4", from GGUF Q4_0 / Q4_1 / Q4_K blocks): q[N][K/2] bytes, 16 per 32-group of a row
//   (byte i: value i in the low nibble, value i + 16 in the high one), + meta[N][K/32] half2 (scale, bias):
//   w = scale * q + bias, q in 0..15.
// - Activations are row-major [T tokens, K] fp16 with row stride `lda` (the padded K; pad columns are 0).
// - The KV cache is paged: per layer, K and V pools [n_blocks][n_kv_heads][kKvBlock][head_dim] fp16, or
//   (int8 KV cache) int8 values in that layout plus fp16 scales [n_blocks][n_kv_heads][kKvBlock][head_dim / group],
//   one per `group` values of a head's row (Q8_0's rule; group = 32, or head_dim when that is smaller or
//   not a multiple of 32).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace l2::kernels {

constexpr int kKvBlock = 16;  // tokens per KV block (= l2::kKvBlockSize)

// Row of the paged cache (the one definition of its layout) holding KV head `kvh` of the token at
// position `in_block` of block `block`: values start at row * head_dim, int8 scales at row * (head_dim / group).
__host__ __device__ inline size_t kv_cache_row(int32_t block, int in_block, int n_kv_heads, int kvh) {
  return ((size_t)block * n_kv_heads + kvh) * kKvBlock + in_block;
}
constexpr int kPadN = 128;
constexpr int kPadK = 64;

// What a matrix kernel does with each output value v = dot(A row t, W row n). Applied to adjacent pairs
// (n, n + 1), n even, so that SwiGLU (interleaved gate/up rows) and RoPE (interleaved pairs) fuse in.
enum class Epi : int {
  StoreF32 = 0,  // ((float*)out)[t * ldo + n] = v
  StoreF16 = 1,  // ((half*)out)[t * ldo + n] = v
  AddF32 = 2,    // ((float*)out)[t * ldo + n] += v          (residual stream)
  SwiGLU = 3,    // ((half*)out)[t * ldo + n / 2] = silu(v[n]) * v[n + 1]   (row 2i = gate i, 2i+1 = up i)
  QkvRope = 4,   // columns [0, q_dim) = Q, then K [kv_dim], then V [kv_dim]: RoPE on Q and K pairs,
                 // Q -> ((half*)out)[t * ldo + n]; K, V -> this layer's cache at kv_slot[t]
};

struct Epilogue {
  Epi kind = Epi::StoreF32;
  void* out = nullptr;
  int ldo = 0;
  // QkvRope only:
  int q_dim = 0, kv_dim = 0, head_dim = 0, n_kv_heads = 0;
  const int32_t* positions = nullptr;  // [T]
  const float2* rope = nullptr;        // [context][head_dim / 2] = (cos, sin)
  const int32_t* kv_slot = nullptr;    // [T] = block * kKvBlock + slot within the block
  half* k_cache = nullptr;
  half* v_cache = nullptr;
  // int8 KV cache: K and V rows go to kv_stage [T][ld_stage] instead (K at columns [0, kv_dim), V at
  // [kv_dim, 2 kv_dim)), for kv_quantize to quantize into the cache.
  half* kv_stage = nullptr;
  int ld_stage = 0;
};

// ---- gemm.cu: prefill / large-batch matrix multiply on tensor cores (mma.sync, fp32 accumulate) ----
// C = A[M, K] . W[N, K]^T, any M >= 1, N % 128 == 0, K % 64 == 0; columns >= n_valid are not written.
// With a split-K workspace (optional; one per stream: launches on it must not overlap), small-M shapes
// that would leave SMs idle split K across CTAs. Zero the counters once when allocated; every launch
// leaves them at zero. kGemmSplitKBytes / kGemmSplitKCounters: what the backend allocates.
struct GemmSplitK {
  float* ws = nullptr;
  size_t ws_bytes = 0;
  int* counters = nullptr;
  int n_counters = 0;
};
// Partial tiles: ~2 CTAs per SM of 32 x 64 mma.sync tiles take 2.1 MB on 132 SMs; the 64 x 128 wgmma tiles'
// wave-chosen splits up to 16.1 MB (7B gate_up at M = 64: 172 tiles x 3 splits x 32 KB).
constexpr size_t kGemmSplitKBytes = 20u << 20;
constexpr int kGemmSplitKCounters = 4096;
void gemm_f16(const half* A, int lda, const half* W, int ldw, int M, int N, int n_valid, int K,
              const Epilogue& epi, cudaStream_t stream, const GemmSplitK* sk = nullptr);
void gemm_w8(const half* A, int lda, const int8_t* Wq, const half* scales, int ldw, int M, int N, int n_valid,
             int K, const Epilogue& epi, cudaStream_t stream, const GemmSplitK* sk = nullptr);
// W4 runs the W8 kernels' mma.sync tiles (the 4-bit tile is staged, then widened to fp16 in shared memory),
// chosen by the mma.sync rows of the W8 tuning; no wgmma variant.
void gemm_w4(const half* A, int lda, const uint8_t* Wq, const half2* meta, int ldw, int M, int N, int n_valid, int K,
             const Epilogue& epi, cudaStream_t stream, const GemmSplitK* sk = nullptr);

// ---- gemv.cu: decode matrix-vector / small batch (T <= kGemvMaxT), memory-bound ----
constexpr int kGemvMaxT = 8;
void gemv_f16(const half* A, int lda, const half* W, int ldw, int T, int N, int n_valid, int K,
              const Epilogue& epi, cudaStream_t stream);
void gemv_w8(const half* A, int lda, const int8_t* Wq, const half* scales, int ldw, int T, int N, int n_valid,
             int K, const Epilogue& epi, cudaStream_t stream);
void gemv_w4(const half* A, int lda, const uint8_t* Wq, const half2* meta, int ldw, int T, int N, int n_valid,
             int K, const Epilogue& epi, cudaStream_t stream);

// RMSNorm fused into the GEMV's input (decode): the matrix input of token t is rmsnorm(x[t]) * w, read from
// the fp32 rows x [T][ldx] (dim columns, dim % 8 == 0; columns dim .. K-1 are zero) instead of an fp16 A.
// Every block streams whole rows, so it sums x^2 on the way, dots W with x * w in fp32 and scales by
// rsqrt(mean + eps) before the epilogue: no separate norm kernel, no fp16 rounding of the input.
struct NormInput {
  const float* x = nullptr;
  int ldx = 0;
  const float* w = nullptr;  // [dim]
  int dim = 0;
  float eps = 0.f;
};
// Steps of 1..kGemvNormMaxT tokens only, callers check (registers grow with T: at T = 7 the fp16 kernel spilled).
constexpr int kGemvNormMaxT = 4;
void gemv_f16_norm(const NormInput& in, const half* W, int ldw, int T, int N, int n_valid, int K, const Epilogue& epi, cudaStream_t stream);
void gemv_w8_norm(const NormInput& in, const int8_t* Wq, const half* scales, int ldw, int T, int N, int n_valid, int K,
                  const Epilogue& epi, cudaStream_t stream);
void gemv_w4_norm(const NormInput& in, const uint8_t* Wq, const half2* meta, int ldw, int T, int N, int n_valid, int K,
                  const Epilogue& epi, cudaStream_t stream);

// ---- gemv_mma.cu: decode batches of 1..kGemvMmaMaxT tokens, fp16 or int8 weights, on tensor cores (weights as
// the MMA's M side, tokens as its N side); K % 64 == 0, N % 16 == 0. Returns false (launching nothing)
// outside that. The backend takes it for int8 steps of 2..16 tokens (measured on H200; see cuda_backend.cu).
constexpr int kGemvMmaMaxT = 32;
bool gemv_mma_f16(const half* A, int lda, const half* W, int ldw, int T, int N, int n_valid, int K,
                  const Epilogue& epi, cudaStream_t stream);
bool gemv_mma_w8(const half* A, int lda, const int8_t* Wq, const half* scales, int ldw, int T, int N, int n_valid,
                 int K, const Epilogue& epi, cudaStream_t stream);

// ---- attention.cu: causal attention over the paged cache, GQA ----
struct AttentionParams {
  const half* q = nullptr;  // [T][ldq], RoPE applied; head h at columns [h * head_dim, (h+1) * head_dim)
  int ldq = 0;
  half* out = nullptr;      // [T][ldo]
  int ldo = 0;
  const half* k_cache = nullptr;  // this layer's pools (fp16 cache)
  const half* v_cache = nullptr;
  // int8 cache (used instead when k_q is set): this layer's value pools and scale pools.
  const int8_t* k_q = nullptr;
  const int8_t* v_q = nullptr;
  const half* k_scale = nullptr;
  const half* v_scale = nullptr;
  int kv_group = 32;
  const int32_t* block_tables = nullptr;  // [n_segments][max_blocks]
  int max_blocks = 0;
  // Segment s covers tokens [seg_start[s], seg_start[s] + seg_count[s]) at positions seg_pos0[s]...;
  // token j of a segment attends to positions 0 .. seg_pos0[s] + j of its sequence.
  const int32_t* seg_start = nullptr;
  const int32_t* seg_count = nullptr;
  const int32_t* seg_pos0 = nullptr;
  int n_segments = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float scale = 1.f;  // 1 / sqrt(head_dim)
  // attention_decode only: the batch indices of the tokens to process (n_tokens of them), so its
  // workspace scales with decode tokens, not the batch; nullptr means tokens 0 .. n_tokens-1.
  const int32_t* decode_tokens = nullptr;
};
// Flash-attention style prefill on tensor cores (head_dim 64 or 128): segments with count > 1.
// Returns false (launching nothing) for head dims it does not support.
bool attention_prefill(const AttentionParams& p, int max_seg_count, cudaStream_t stream);
// Flash-decoding (split over the context; the last split CTA merges) for the n_tokens listed in
// p.decode_tokens, any head_dim in {8, 16, 32, 64, 128, 256}. `workspace` holds the merge counters (first)
// and the split partials after them: zero it once when allocated (cudaMemset); every call leaves the
// counters at zero. The counters are sized for `counter_tokens` tokens (0: n_tokens); calls that share a
// workspace with different n_tokens must all pass the same counter_tokens (>= each call's n_tokens), or a
// call's partials would land on the counters of a later, larger call, which then never merges.
// `max_ctx` bounds the positions (the grid is sized by it: a fixed max_ctx gives a fixed launch for graphs).
size_t attention_decode_workspace(int n_tokens, int n_heads, int head_dim, int max_ctx);
// The workspace's leading bytes that hold the merge counters (what must be zero before a call).
size_t attention_decode_counter_bytes(int n_tokens, int n_heads);
// The split partials' bytes after the counters (attention_decode_workspace = counters + partials).
size_t attention_decode_partial_bytes(int n_tokens, int n_heads, int head_dim, int max_ctx);
void attention_decode(const AttentionParams& p, int n_tokens, int max_ctx, void* workspace, cudaStream_t stream, int counter_tokens = 0);

// ---- kv_quant.cu: the int8 KV cache's writer ----
// Quantizes the step's K and V rows (stage [T][ld_stage], K then V, as the QkvRope epilogue wrote them)
// into the int8 cache at kv_slot[t] (block * kKvBlock + slot): per head, groups of `group` values,
// d = amax / 127 (fp16), q = round(x / d) half away from zero. group divides head_dim; 8 <= group <= 32.
void kv_quantize(const half* stage, int ld_stage, const int32_t* kv_slot, int T, int n_kv_heads, int head_dim, int group,
                 int8_t* k_q, half* k_scale, int8_t* v_q, half* v_scale, cudaStream_t stream);

// ---- norm_rope.cu: RMSNorm, embedding gather ----
// out[t] = half(x[t] / rms(x[t]) * w), rows of `dim` fp32 -> fp16 with row stride ldo.
void rmsnorm_f16(const float* x, int ldx, const float* w, half* out, int ldo, int T, int dim, float eps, cudaStream_t stream);
// x[t] = embedding row tokens[t] (fp16 table [V][ld] or Q8 table q[V][ld] + scales) as fp32.
void embed_f16(const half* table, int ld, const int32_t* tokens, float* x, int ldx, int T, int dim, cudaStream_t stream);
void embed_w8(const int8_t* q, const half* scales, int ld, const int32_t* tokens, float* x, int ldx, int T, int dim, cudaStream_t stream);
void embed_w4(const uint8_t* q, const half2* meta, int ld, const int32_t* tokens, float* x, int ldx, int T, int dim, cudaStream_t stream);
// Gathers rows: out[i] = x[rows[i]] (fp32), for the final norm of output rows.
void gather_rows(const float* x, int ldx, const int32_t* rows, float* out, int ldo, int n, int dim, cudaStream_t stream);

// ---- sampling.cu: top-k candidates on the device ----
// For each of n rows of logits [n][ld] (first `vocab` valid): the k largest (k <= 256), descending,
// ties broken by the lower id; NaN counts as -inf.
size_t topk_workspace(int n, int vocab, int k);
void topk(const float* logits, int ld, int n, int vocab, int k, int32_t* ids, float* vals, void* workspace, cudaStream_t stream);

}  // namespace l2::kernels
