#include "cuda_plan.h"

#include <algorithm>
#include <cstdio>
#include <initializer_list>

#include "../model/ggml_blocks.h"
#include "backend.h"

namespace l2 {

namespace {
uint64_t round_up(uint64_t a, uint64_t b) { return (a + b - 1) / b * b; }
}  // namespace

std::string gib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", (double)bytes / (1ull << 30));
  return buf;
}

uint64_t cuda_matrix_bytes(int n, int k, CudaFmt f) {
  const uint64_t npad = round_up((uint64_t)n, kCudaPadN), ldw = round_up((uint64_t)k, kCudaPadK);
  switch (f) {
    case CudaFmt::W8: return npad * ldw + npad * (ldw / 32) * 2;
    case CudaFmt::W4: return npad * ldw / 2 + npad * (ldw / 32) * 4;
    default: return npad * ldw * 2;
  }
}

CudaMatrixKinds cuda_matrix_kinds(const ModelConfig& c, CudaFmt all) {
  auto q = [&](int cols) { return all != CudaFmt::F16 && cols % 32 == 0 ? all : CudaFmt::F16; };
  CudaMatrixKinds k;
  k.emb = k.out = q(c.dim);
  k.layers.assign((size_t)c.n_layers, CudaLayerKinds{q(c.dim), q(c.q_dim()), q(c.dim), q(c.ffn_dim)});
  // dtype "q4": the classifier at 8 bits (the embedding too when tied), as the CPU's q4_targets.
  if (all == CudaFmt::W4) {
    k.out = c.dim % 32 == 0 ? CudaFmt::W8 : CudaFmt::F16;
    if (c.tied_output) k.emb = k.out;
  }
  return k;
}

CudaMatrixKinds cuda_matrix_kinds(const ModelConfig& c, const FileMatrixTypes& t, const std::string& dtype) {
  if (dtype == "q4") return cuda_matrix_kinds(c, CudaFmt::W4);
  const bool w4_ok = dtype == "auto";
  const DType wq0 = t.layers.empty() ? DType::F16 : t.layers[0][0];
  const bool want_int8 = dtype == "int8" || (dtype == "auto" && (wq0 == DType::Q8_0 || is_load_only(wq0)));
  auto kind = [&](std::initializer_list<DType> parts, int cols) {
    bool w4 = w4_ok, w8 = true;
    for (DType d : parts) {
      w4 = w4 && runs_as_w4(d);
      w8 = w8 && (d == DType::Q8_0 || (want_int8 && cols % 32 == 0));
    }
    return w4 ? CudaFmt::W4 : w8 ? CudaFmt::W8 : CudaFmt::F16;
  };
  CudaMatrixKinds k;
  k.emb = kind({t.emb}, c.dim);
  k.out = c.tied_output ? k.emb : kind({t.out}, c.dim);
  for (const auto& l : t.layers)  // wq wk wv wo w1 w2 w3
    k.layers.push_back({kind({l[0], l[1], l[2]}, c.dim), kind({l[3]}, c.q_dim()), kind({l[4], l[6]}, c.dim), kind({l[5]}, c.ffn_dim)});
  return k;
}

CudaPlan plan_cuda(const ModelConfig& c, const CudaMatrixKinds& kinds, bool kv_int8, int ctx, int n_kv_blocks) {
  CudaPlan p;
  const int D = c.dim, Q = c.q_dim(), KV = c.kv_dim(), F = c.ffn_dim, V = c.vocab_size, L = c.n_layers, HD = c.head_dim;
  p.dpad = (int)round_up(D, kCudaPadN);
  p.qpad = (int)round_up(Q, kCudaPadN);
  p.fpad = (int)round_up(F, kCudaPadN);
  p.vpad = (int)round_up(V, kCudaPadN);
  p.max_tokens = 2048;
  p.max_segments = 256;
  p.max_blocks = (ctx + kKvBlockSize - 1) / kKvBlockSize;
  p.prefill_attn = HD == 64 || HD == 128;
  // Decode tokens of one step: every segment's token (prefill attention takes the rest), or all tokens.
  const int dec_max = p.prefill_attn ? p.max_segments : p.max_tokens;
  // The split-K workspace of decode attention grows with tokens x context: bound it, and launch the
  // decode tokens in chunks when a step has more than fit (only long contexts with big batches).
  p.decode_chunk = std::min(dec_max, 64);
  p.decode_counter_tokens = dec_max;

  uint64_t w = cuda_matrix_bytes(V, D, kinds.emb);
  if (!c.tied_output) w += cuda_matrix_bytes(V, D, kinds.out);
  for (int l = 0; l < L; ++l) {
    const CudaLayerKinds& k = kinds.layers.at((size_t)l);
    w += cuda_matrix_bytes(Q + 2 * KV, D, k.qkv) + cuda_matrix_bytes(D, Q, k.wo) + cuda_matrix_bytes(2 * F, D, k.w13) + cuda_matrix_bytes(D, F, k.w2) +
         2ull * D * 4;
  }
  p.weights = w + (uint64_t)D * 4;

  p.kv_int8 = kv_int8;
  p.kv_group = kv_quant_group(HD);
  p.block_elems = (uint64_t)c.n_kv_heads * kKvBlockSize * HD;
  p.kv_layer_k = (uint64_t)n_kv_blocks * p.block_elems * (kv_int8 ? 1 : 2);
  p.kv_layer_scales = kv_int8 ? (uint64_t)n_kv_blocks * (p.block_elems / p.kv_group) * 2 : 0;
  p.kv_cache = (uint64_t)L * 2 * (p.kv_layer_k + p.kv_layer_scales);

  const uint64_t M = (uint64_t)p.max_tokens, S = (uint64_t)p.max_segments;
  p.x = M * p.dpad * 4;
  p.xn = M * std::max(p.dpad, p.fpad) * 2;
  p.q = M * p.qpad * 2;
  p.att = M * p.qpad * 2;
  p.h = M * p.fpad * 2;
  if (kv_int8) {
    // The QKV epilogue's K/V rows wait in h (free until the FFN) when they fit in its real columns:
    // h's pad columns [ffn_dim, fpad) must stay zero for the down projection.
    p.ld_stage = (int)round_up(2 * KV, 8);
    p.stage_in_h = p.ld_stage <= F;
    if (p.stage_in_h) p.ld_stage = p.fpad;
    else p.stage = M * p.ld_stage * 2;
  }
  p.xo = S * p.dpad * 4;
  p.logits = S * p.vpad * 4;
  p.topk = S * 256 * 8;
  // kernels/attention_decode.cu: merge counters for every decode token a launch may take (heads ints each,
  // 16-byte padded; fixed, so that launches of different sizes never overlap them), then decode_chunk
  // tokens x heads x splits of 128 x (hd + 2) floats of partials.
  p.attn_ws = ((uint64_t)p.decode_counter_tokens * c.n_heads * 4 + 15) / 16 * 16 +
              (uint64_t)p.decode_chunk * c.n_heads * ((ctx + 127) / 128) * (HD + 2) * 4;
  // kernels.h kGemmSplitKBytes + kGemmSplitKCounters ints: the GEMM's split-K partial tiles and tile counters.
  p.gemm_ws = (20ull << 20) + 4096 * 4;
  p.rope = (uint64_t)ctx * (HD / 2) * 8;
  p.inputs = (M * 4 + S * 4 + S * (uint64_t)p.max_blocks) * 4;
  return p;
}

F32Plan plan_f32(const ModelConfig& c, int ctx, int n_kv_blocks) {
  F32Plan p;
  const uint64_t D = c.dim, Q = c.q_dim(), KV = c.kv_dim(), F = c.ffn_dim, V = c.vocab_size, L = c.n_layers;
  p.max_blocks = (ctx + kKvBlockSize - 1) / kKvBlockSize;
  // Embedding rows and the transposed classifier, the layers' matrices and norms, the final norm.
  p.weights = 4 * (V * D * 2 + L * (D * (Q + 2 * KV) + Q * D + 3 * D * F + 2 * D) + D);
  p.kv_cache = 4 * L * 2 * (uint64_t)n_kv_blocks * kKvBlockSize * KV;
  const uint64_t M = (uint64_t)p.max_tokens, S = (uint64_t)p.max_segments;
  p.x = p.xb = 4 * M * D;
  p.q = p.att = 4 * M * Q;
  p.k = p.v = 4 * M * KV;
  p.h1 = p.h3 = 4 * M * F;
  p.xo = 4 * S * D;
  p.logits = 4 * S * V;
  p.rope = 4 * (uint64_t)ctx * c.head_dim;
  // tokens, positions, slots, segment of each token; output rows; block tables
  p.inputs = 4 * (M * 4 + S + S * (uint64_t)p.max_blocks);
  return p;
}

}  // namespace l2
