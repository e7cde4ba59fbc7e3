// Every device buffer of the CUDA backend, sized from the model's shape and the load options alone
// (no GPU needed): the backend allocates exactly these, and `llama2 inspect --cuda-plan` / the tests
// use the same figures to predict a model's GPU memory on machines without one.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "../model/config.h"
#include "../model/model_source.h"

namespace l2 {

// Matrix padding of the CUDA kernels (kernels/kernels.h kPadN / kPadK).
constexpr int kCudaPadN = 128;
constexpr int kCudaPadK = 64;

// How a device matrix is stored (kernels/kernels.h): fp16, int8 (Q8_0 values + fp16 scales per 32), or 4-bit
// (nibbles + an fp16 (scale, bias) pair per 32: GGUF Q4_0 / Q4_1 / Q4_K blocks as they are).
enum class CudaFmt : uint8_t { F16, W8, W4 };
struct CudaLayerKinds {
  CudaFmt qkv = CudaFmt::F16, wo = CudaFmt::F16, w13 = CudaFmt::F16, w2 = CudaFmt::F16;
};
struct CudaMatrixKinds {
  CudaFmt emb = CudaFmt::F16, out = CudaFmt::F16;
  std::vector<CudaLayerKinds> layers;  // one per layer
};

// A file's matrix types: the embedding, the classifier (the embedding's when tied), and per layer
// wq, wk, wv, wo, w1, w2, w3.
struct FileMatrixTypes {
  DType emb = DType::F16, out = DType::F16;
  std::vector<std::array<DType, 7>> layers;
};
// The kinds a load with `dtype` ("auto", "f16", "int8" or "q4") gives, matrix by matrix (one rule for the
// backend and the predictions):
//  - "auto": a fused matrix (qkv: wq wk wv; w13: w1 w3) is 4-bit where all its parts are Q4_0 / Q4_1 / Q4_K
//    (the embedding too: its rows are gathered from the 4-bit table); else int8 where all are Q8_0 or the file holds quantized
//    blocks (Q8_0 in layer 0's wq, or 4-6 bit blocks: decoded into int8 on upload); else fp16.
//  - "int8": int8 everywhere, "f16": fp16 everywhere (Q8_0 stays int8 under both: its rows are not widened
//    unless int8 cannot hold them), "q4": 4-bit everywhere (other types quantized into Q4_1 groups on upload)
//    but the classifier, int8 (the embedding too when tied: llama-quantize keeps it at 6+ bits).
// int8 and 4-bit need rows of whole 32-groups (others stay fp16, as llama.cpp's converter does).
CudaMatrixKinds cuda_matrix_kinds(const ModelConfig& c, const FileMatrixTypes& t, const std::string& dtype);
// From the shape alone (no file): every matrix `all` (int8 and 4-bit: where rows are whole 32-groups, else fp16;
// 4-bit: the classifier int8, as dtype "q4").
CudaMatrixKinds cuda_matrix_kinds(const ModelConfig& c, CudaFmt all);

struct CudaPlan {
  int dpad = 0, qpad = 0, fpad = 0, vpad = 0;  // padded widths of the activations
  int max_tokens = 0;    // tokens per sub-batch (prefill chunk)
  int max_segments = 0;  // sequences (and outputs) per sub-batch
  int max_blocks = 0;    // KV blocks per sequence
  bool prefill_attn = false;  // tensor-core prefill attention (head_dim 64 / 128)
  int decode_chunk = 0;  // decode-attention tokens per launch at the full context (workspace bound)
  int decode_counter_tokens = 0;  // decode attention's merge counters: the most decode tokens of a sub-batch
  bool kv_int8 = false;
  int kv_group = 0;      // int8 KV: values per scale
  uint64_t block_elems = 0;  // values of one KV block, one layer, K or V
  int ld_stage = 0;          // int8 KV: row stride of the K/V staging rows (halves)
  bool stage_in_h = false;   // int8 KV: the staging rows reuse the FFN buffer h

  uint64_t weights = 0;      // matrices + norms
  uint64_t kv_layer_k = 0;   // bytes of one layer's K values (V the same), all blocks
  uint64_t kv_layer_scales = 0;  // int8: bytes of one layer's K scales (V the same)
  uint64_t kv_cache = 0;     // all layers, K and V, values and scales
  uint64_t x = 0, xn = 0, q = 0, att = 0, h = 0, stage = 0, xo = 0, logits = 0, topk = 0, attn_ws = 0, gemm_ws = 0, rope = 0, inputs = 0;
  uint64_t buffers() const { return x + xn + q + att + h + stage + xo + logits + topk + attn_ws + gemm_ws + rope + inputs; }
  uint64_t total() const { return weights + kv_cache + buffers(); }
};

// n_kv_blocks: KV blocks of kKvBlockSize tokens in the pool (maxSequences x context / 16).
CudaPlan plan_cuda(const ModelConfig& c, const CudaMatrixKinds& kinds, bool kv_int8, int context_length, int n_kv_blocks);

// The fp32 path (dtype 'f32', engine/f32_backend.h): weights widened to fp32 (the classifier also
// transposed, a second copy when tied), an fp32 paged KV cache, unpadded buffers for sub-batches of
// max_tokens tokens and max_segments sequences.
struct F32Plan {
  int max_tokens = 512, max_segments = 256, max_blocks = 0;
  uint64_t weights = 0, kv_cache = 0;
  // Bytes: residual, normed, q, attention out, k, v, gate, up [max_tokens rows]; normed output rows and
  // logits [max_segments rows]; the rotary table; the step inputs (int32).
  uint64_t x = 0, xb = 0, q = 0, att = 0, k = 0, v = 0, h1 = 0, h3 = 0, xo = 0, logits = 0, rope = 0, inputs = 0;
  uint64_t buffers() const { return x + xb + q + att + k + v + h1 + h3 + xo + logits + rope + inputs; }
  uint64_t total() const { return weights + kv_cache + buffers(); }
};
F32Plan plan_f32(const ModelConfig& c, int context_length, int n_kv_blocks);

// "12.55 GiB": memory figures in the backends' messages.
std::string gib(uint64_t bytes);

// A device matrix's bytes: n x k padded, fp16, int8 + scales, or 4-bit + (scale, bias) pairs.
uint64_t cuda_matrix_bytes(int n, int k, CudaFmt f);

}  // namespace l2
