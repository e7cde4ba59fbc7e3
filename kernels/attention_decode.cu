// Flash-decoding over the paged KV cache: one query token per (token, kv head, split of 128
// positions) CTA, all query heads of the kv head (GQA) together so K/V are read once; 4 warps x 32
// positions per split. Scores: a lane owns a position (its K row); values: a lane owns head dims
// (coalesced V rows). Splits beyond a token's length exit at once, so the grid can be sized for the
// whole context (fixed launch shape, capturable in a CUDA graph). A second kernel merges splits.
// The int8 cache (Q8) reads a byte per value plus a group scale: a score is sum over groups of
// scale * (q . k_int8), a value row is weighted by p * scale; the bytes widen without I2F (i8_to_f).
#include <cfloat>

#include "common.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace l2::kernels {

namespace {

constexpr int kSplit = 128;  // positions per CTA
constexpr int kWarps = 4;
constexpr int kMaxGroup = 8;  // query heads per kv head (70B: 64 / 8); kernels are built for 1, 2, 4, 8

__device__ __forceinline__ int token_segment(const AttentionParams& p, int t) {
  for (int s = 0; s < p.n_segments; ++s)
    if (t >= p.seg_start[s] && t < p.seg_start[s] + p.seg_count[s]) return s;
  return -1;
}

// Values per int8-cache scale for a head dim (backend.h kv_quant_group).
template <int HD>
constexpr int kQGroup = HD % 32 == 0 ? 32 : HD;

// 4 signed bytes -> the biased word i8_to_f reads.
__device__ __forceinline__ uint32_t bias8(uint32_t w) { return w ^ 0x80808080u; }

// Scores of one cache row (element offset `row`) against the group's G query heads, accumulated in sc.
template <int HD, int kMaxG>
__device__ __forceinline__ void score_row_f16(const AttentionParams& p, size_t row, const float (*qs)[HD], int G, float (&sc)[kMaxG]) {
  const half* k = p.k_cache + row;
  uint4 kv[(HD + 7) / 8];
#pragma unroll
  for (int c = 0; c < (HD + 7) / 8; ++c) kv[c] = *reinterpret_cast<const uint4*>(k + c * 8);
#pragma unroll
  for (int c = 0; c < (HD + 7) / 8; ++c) {
    const half2* kh = reinterpret_cast<const half2*>(&kv[c]);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float2 kf = __half22float2(kh[j]);
#pragma unroll
      for (int g = 0; g < kMaxG; ++g)
        if (g < G) sc[g] = fmaf(qs[g][c * 8 + 2 * j], kf.x, fmaf(qs[g][c * 8 + 2 * j + 1], kf.y, sc[g]));
    }
  }
}

template <int HD, int kMaxG>
__device__ __forceinline__ void score_row_q8(const AttentionParams& p, size_t row, const float (*qs)[HD], int G, float (&sc)[kMaxG]) {
  constexpr int QG = kQGroup<HD>;
  // The row's HD bytes (16-byte loads, 8 for HD 8) and its HD / QG scales, all in flight together.
  uint32_t kw[HD / 4];
  if constexpr (HD % 16 == 0) {
#pragma unroll
    for (int c = 0; c < HD / 16; ++c) {
      uint4 raw = *reinterpret_cast<const uint4*>(p.k_q + row + c * 16);
      kw[4 * c] = raw.x;
      kw[4 * c + 1] = raw.y;
      kw[4 * c + 2] = raw.z;
      kw[4 * c + 3] = raw.w;
    }
  } else {
    uint2 raw = *reinterpret_cast<const uint2*>(p.k_q + row);
    kw[0] = raw.x;
    kw[1] = raw.y;
  }
  float ksc[HD / QG];
#pragma unroll
  for (int g = 0; g < HD / QG; ++g) ksc[g] = __half2float(p.k_scale[row / QG + g]);
#pragma unroll
  for (int gi = 0; gi < HD / QG; ++gi) {
    float part[kMaxG];
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) part[g] = 0.f;
#pragma unroll
    for (int d = gi * QG; d < (gi + 1) * QG; ++d) {
      const float kf = i8_to_f(bias8(kw[d / 4]), d % 4);
#pragma unroll
      for (int g = 0; g < kMaxG; ++g)
        if (g < G) part[g] = fmaf(qs[g][d], kf, part[g]);
    }
#pragma unroll
    for (int g = 0; g < kMaxG; ++g)
      if (g < G) sc[g] = fmaf(ksc[gi], part[g], sc[g]);
  }
}

template <int HD, int kMaxG, bool Q8>
__global__ void __launch_bounds__(kWarps * 32) attn_decode_kernel(const __grid_constant__ AttentionParams p, int n_splits, float* __restrict__ ws_ml,
                                                                  float* __restrict__ ws_acc) {
  constexpr int DPL = HD >= 32 ? HD / 32 : 1;  // dims per lane in the value phase
  constexpr int kVB = DPL >= 8 ? 8 : 32;       // V rows prefetched per lane (registers: kVB * DPL halves)
  constexpr int QG = kQGroup<HD>;
  constexpr int VW = (DPL + 3) / 4;  // int8 V: words per lane and row
  pdl_trigger();
  pdl_wait();
  const int split = blockIdx.x, kvh = blockIdx.y, z = blockIdx.z;
  const int t = p.decode_tokens ? p.decode_tokens[z] : z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int G = p.n_heads / p.n_kv_heads;
  const int s = token_segment(p, t);
  if (s < 0) return;
  const int L = p.seg_pos0[s] + (t - p.seg_start[s]) + 1;
  const int begin = split * kSplit;
  if (begin >= L) return;
  const int end = min(L, begin + kSplit);
  const int32_t* table = p.block_tables + (size_t)s * p.max_blocks;

  __shared__ float qs[kMaxG][HD];
  __shared__ float sm_m[kWarps][kMaxG], sm_l[kWarps][kMaxG];
  __shared__ float sm_acc[kWarps][kMaxG][HD];
  for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
    int g = i / HD, d = i % HD;
    qs[g][d] = __half2float(p.q[(size_t)t * p.ldq + (size_t)(kvh * G + g) * HD + d]) * p.scale;
  }
  __syncthreads();

  float m[kMaxG], l[kMaxG], acc[kMaxG][DPL];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    m[g] = -FLT_MAX;
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[g][i] = 0.f;
  }

  const int pos = begin + warp * 32 + lane;
  if (begin + warp * 32 < end) {
    const bool valid = pos < end;
    // Each lane resolves its own position's cache row once (one block-table lookup per position).
    const size_t row = valid ? kv_cache_row(table[pos / kKvBlock], pos % kKvBlock, p.n_kv_heads, kvh) * HD : 0;
    // V rows of this warp's positions for the lane's dims: they do not depend on the scores, so their
    // loads go out now and overlap the K loads below.
    const int n_pos = min(32, end - (begin + warp * 32));
    const bool has_dims = lane * DPL < HD;
    half vbuf[Q8 ? 1 : kVB][DPL];
    uint32_t vw[Q8 ? kVB : 1][VW];  // int8: the lane's DPL bytes of each row
    float vsc[Q8 ? kVB : 1];        // int8: their group's scale
    auto load_v = [&](int j0) {
#pragma unroll
      for (int jj = 0; jj < kVB; ++jj) {
        const size_t r = (size_t)__shfl_sync(0xffffffffu, (unsigned long long)row, (j0 + jj) & 31);
        const bool ok = has_dims && j0 + jj < n_pos;
        if constexpr (Q8) {
          const int8_t* src = p.v_q + r + lane * DPL;
          if constexpr (DPL == 8) {
            uint2 raw = ok ? *reinterpret_cast<const uint2*>(src) : make_uint2(0, 0);
            vw[jj][0] = raw.x;
            vw[jj][1] = raw.y;
          } else if constexpr (DPL == 4) {
            vw[jj][0] = ok ? *reinterpret_cast<const uint32_t*>(src) : 0u;
          } else if constexpr (DPL == 2) {
            vw[jj][0] = ok ? *reinterpret_cast<const uint16_t*>(src) : 0u;
          } else {
            vw[jj][0] = ok ? (uint32_t)*reinterpret_cast<const uint8_t*>(src) : 0u;
          }
          vsc[jj] = ok ? __half2float(p.v_scale[r / QG + (lane * DPL) / QG]) : 0.f;
        } else {
          const half* src = p.v_cache + r + lane * DPL;
          if constexpr (DPL == 8) {
            uint4 raw = ok ? *reinterpret_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int i = 0; i < 8; ++i) vbuf[jj][i] = reinterpret_cast<const half*>(&raw)[i];
          } else if constexpr (DPL == 4) {
            uint2 raw = ok ? *reinterpret_cast<const uint2*>(src) : make_uint2(0, 0);
#pragma unroll
            for (int i = 0; i < 4; ++i) vbuf[jj][i] = reinterpret_cast<const half*>(&raw)[i];
          } else if constexpr (DPL == 2) {
            half2 raw = ok ? *reinterpret_cast<const half2*>(src) : __float2half2_rn(0.f);
            vbuf[jj][0] = raw.x;
            vbuf[jj][1] = raw.y;
          } else {
            vbuf[jj][0] = ok ? *src : __float2half(0.f);
          }
        }
      }
    };
    load_v(0);
    // Scores: this lane's position against every query head of the group; all K loads in flight.
    float sc[kMaxG];
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) sc[g] = 0.f;
    if (valid) {
      if constexpr (Q8) score_row_q8<HD, kMaxG>(p, row, qs, G, sc);
      else score_row_f16<HD, kMaxG>(p, row, qs, G, sc);
    }
    float pr[kMaxG];
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) {
      if (g >= G) continue;
      float mx = warp_max(valid ? sc[g] : -FLT_MAX);
      m[g] = mx;
      pr[g] = valid ? __expf(sc[g] - mx) : 0.f;
      l[g] = warp_sum(pr[g]);
    }
    // Values: lane owns dims [lane * DPL, +DPL) (HD < 32: lanes >= HD idle). The rows were loaded
    // before the scores (vbuf); only HD = 256 (DPL 8) needs a second batch loop.
    const int n = min(32, end - (begin + warp * 32));
#pragma unroll
    for (int j0 = 0; j0 < 32; j0 += kVB) {
      if (j0 >= n) break;
      if (j0 > 0) load_v(j0);
#pragma unroll
      for (int jj = 0; jj < kVB; ++jj) {
#pragma unroll
        for (int g = 0; g < kMaxG; ++g) {
          if (g >= G) continue;
          const float w = __shfl_sync(0xffffffffu, pr[g], j0 + jj);
          if constexpr (Q8) {
            const float ws = w * vsc[jj];
#pragma unroll
            for (int i = 0; i < DPL; ++i) acc[g][i] = fmaf(ws, i8_to_f(bias8(vw[jj][i / 4]), i % 4), acc[g][i]);
          } else {
#pragma unroll
            for (int i = 0; i < DPL; ++i) acc[g][i] = fmaf(w, __half2float(vbuf[jj][i]), acc[g][i]);
          }
        }
      }
    }
  }
  // Merge the warps.
  // (loops over kMaxG with a guard, so the register arrays are never indexed at run time)
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    if (g >= G) continue;
    if (lane == 0) {
      sm_m[warp][g] = m[g];
      sm_l[warp][g] = l[g];
    }
    if (lane * DPL < HD)
#pragma unroll
      for (int i = 0; i < DPL; ++i) sm_acc[warp][g][lane * DPL + i] = acc[g][i];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
    int g = i / HD, d = i % HD;
    float M = -FLT_MAX;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w][g]);
    float Ls = 0.f, A = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      if (begin + w * 32 >= end) continue;  // warp had no positions
      float f = __expf(sm_m[w][g] - M);
      Ls += sm_l[w][g] * f;
      A += sm_acc[w][g][d] * f;
    }
    int h = kvh * G + g;
    if (n_splits == 1) {
      p.out[(size_t)t * p.ldo + (size_t)h * HD + d] = __float2half(A / Ls);
    } else {
      size_t idx = ((size_t)z * p.n_heads + h) * n_splits + split;
      ws_acc[idx * HD + d] = A;
      if (d == 0) {
        ws_ml[idx * 2] = M;
        ws_ml[idx * 2 + 1] = Ls;
      }
    }
  }
}

// Merges the splits of one (token, head): out = sum_s acc_s e^{m_s - M} / sum_s l_s e^{m_s - M}.
template <int HD>
__global__ void attn_reduce_kernel(const __grid_constant__ AttentionParams p, int n_splits, const float* __restrict__ ws_ml, const float* __restrict__ ws_acc) {
  pdl_trigger();
  pdl_wait();
  const int z = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  const int t = p.decode_tokens ? p.decode_tokens[z] : z;
  const int s = token_segment(p, t);
  if (s < 0 || d >= HD) return;
  const int L = p.seg_pos0[s] + (t - p.seg_start[s]) + 1;
  const int used = min(n_splits, (L + kSplit - 1) / kSplit);
  const size_t base = ((size_t)z * p.n_heads + h) * n_splits;
  float M = -FLT_MAX;
  for (int i = 0; i < used; ++i) M = fmaxf(M, ws_ml[(base + i) * 2]);
  float Ls = 0.f, A = 0.f;
  for (int i = 0; i < used; ++i) {
    float f = __expf(ws_ml[(base + i) * 2] - M);
    Ls += ws_ml[(base + i) * 2 + 1] * f;
    A += ws_acc[(base + i) * HD + d] * f;
  }
  p.out[(size_t)t * p.ldo + (size_t)h * HD + d] = __float2half(A / Ls);
}

template <int HD, bool Q8>
void launch_kind(const AttentionParams& p, dim3 grid, int n_splits, float* ws_ml, float* ws_acc, cudaStream_t stream) {
  const int g = p.n_heads / p.n_kv_heads;  // registers scale with the group: build per group size
  if (g == 1) launch(attn_decode_kernel<HD, 1, Q8>, grid, kWarps * 32, 0, stream, p, n_splits, ws_ml, ws_acc);
  else if (g == 2) launch(attn_decode_kernel<HD, 2, Q8>, grid, kWarps * 32, 0, stream, p, n_splits, ws_ml, ws_acc);
  else if (g <= 4) launch(attn_decode_kernel<HD, 4, Q8>, grid, kWarps * 32, 0, stream, p, n_splits, ws_ml, ws_acc);
  else launch(attn_decode_kernel<HD, kMaxGroup, Q8>, grid, kWarps * 32, 0, stream, p, n_splits, ws_ml, ws_acc);
}

template <int HD>
void launch(const AttentionParams& p, int n_tokens, int max_ctx, void* workspace, cudaStream_t stream) {
  int n_splits = ceil_div(max_ctx, kSplit);
  float* ws_ml = static_cast<float*>(workspace);
  float* ws_acc = ws_ml + (size_t)n_tokens * p.n_heads * n_splits * 2;
  dim3 grid(n_splits, p.n_kv_heads, n_tokens);
  if (p.k_q) {
    if (p.kv_group != kQGroup<HD>) return;  // the cache was written with another grouping
    launch_kind<HD, true>(p, grid, n_splits, ws_ml, ws_acc, stream);
  } else {
    launch_kind<HD, false>(p, grid, n_splits, ws_ml, ws_acc, stream);
  }
  if (n_splits > 1) launch(attn_reduce_kernel<HD>, dim3(n_tokens, p.n_heads), HD < 32 ? 32 : HD, 0, stream, p, n_splits, (const float*)ws_ml, (const float*)ws_acc);
}

}  // namespace

size_t attention_decode_workspace(int n_tokens, int n_heads, int head_dim, int max_ctx) {
  size_t splits = (size_t)ceil_div(max_ctx, kSplit);
  return (size_t)n_tokens * n_heads * splits * (head_dim + 2) * sizeof(float);
}

void attention_decode(const AttentionParams& p, int n_tokens, int max_ctx, void* workspace, cudaStream_t stream) {
  if (n_tokens <= 0) return;
  switch (p.head_dim) {
    case 8: launch<8>(p, n_tokens, max_ctx, workspace, stream); break;
    case 16: launch<16>(p, n_tokens, max_ctx, workspace, stream); break;
    case 32: launch<32>(p, n_tokens, max_ctx, workspace, stream); break;
    case 64: launch<64>(p, n_tokens, max_ctx, workspace, stream); break;
    case 128: launch<128>(p, n_tokens, max_ctx, workspace, stream); break;
    case 256: launch<256>(p, n_tokens, max_ctx, workspace, stream); break;
    default: break;
  }
}

}  // namespace l2::kernels
