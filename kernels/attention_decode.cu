// Flash-decoding over the paged KV cache: one query token per (token, kv head, split of 128
// positions) CTA, all query heads of the kv head (GQA) together so K/V are read once; 4 warps x 32
// positions per split. Scores: a lane owns a position (its K row); values: a lane owns head dims
// (coalesced V rows). Splits beyond a token's length exit at once, so the grid can be sized for the
// whole context (fixed launch shape, capturable in a CUDA graph). The last split CTA of a (token, kv head)
// to finish merges the splits (a counter per (token, kv head) in the workspace; no second kernel).
// Cache rows written by earlier steps (positions < the segment's seg_pos0) are loaded before the
// programmatic-dependent-launch wait, so their DRAM latency overlaps the previous kernel; only this
// step's rows (written by the QKV epilogue / kv_quantize) and q are read after it.
// The int8 cache (Q8) reads a byte per value plus a group scale: a score is sum over groups of
// scale * (q . k_int8), a value row is weighted by p * scale; the bytes widen without I2F (i8_to_f).
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cstdlib>
#include <type_traits>

#include "common.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace l2::kernels {

namespace {

constexpr int kSplit = 128;  // positions per CTA
constexpr int kWarps = 4;
constexpr int kMaxGroup = 8;  // query heads per kv head (70B: 64 / 8); kernels are built for 1, 2, 4, 8

// The segment holding token t (s = -1: none) with its start token and first position. Called by whole
// warps with a warp-uniform t: each lane tests one segment, so a batch of up to 32 sequences costs one
// load latency, not one per segment before t's (a serial scan cost ~2-4 us per CTA at batch 32-64).
struct TokenSeg {
  int s, start, pos0;
};
__device__ __forceinline__ TokenSeg token_segment(const AttentionParams& p, int t) {
  const int lane = threadIdx.x & 31;
  for (int s0 = 0; s0 < p.n_segments; s0 += 32) {
    const int s = s0 + lane;
    int start = 0, pos0 = 0;
    bool hit = false;
    if (s < p.n_segments) {
      start = p.seg_start[s];
      pos0 = p.seg_pos0[s];  // loaded with the test: no second round trip once the segment is known
      hit = t >= start && t < start + p.seg_count[s];
    }
    const unsigned b = __ballot_sync(0xffffffffu, hit);
    if (b) {
      const int src = __ffs(b) - 1;
      return {s0 + src, __shfl_sync(0xffffffffu, start, src), __shfl_sync(0xffffffffu, pos0, src)};
    }
  }
  return {-1, 0, 0};
}

// Values per int8-cache scale for a head dim (backend.h kv_quant_group).
template <int HD>
constexpr int kQGroup = HD % 32 == 0 ? 32 : HD;

// 4 signed bytes -> the biased word i8_to_f reads.
__device__ __forceinline__ uint32_t bias8(uint32_t w) { return w ^ 0x80808080u; }

// One fp16 cache K row (element offset `row`) into registers.
template <int HD>
struct KRowF16 {
  uint4 w[(HD + 7) / 8];
};
template <int HD>
__device__ __forceinline__ void load_k_f16(const AttentionParams& p, size_t row, KRowF16<HD>& k) {
  const half* src = p.k_cache + row;
#pragma unroll
  for (int c = 0; c < (HD + 7) / 8; ++c) k.w[c] = *reinterpret_cast<const uint4*>(src + c * 8);
}

// Scores of a K row against the group's G query heads, accumulated in sc.
template <int HD, int kMaxG>
__device__ __forceinline__ void score_f16(const KRowF16<HD>& k, const float (*qs)[HD], int G, float (&sc)[kMaxG]) {
#pragma unroll
  for (int c = 0; c < (HD + 7) / 8; ++c) {
    const half2* kh = reinterpret_cast<const half2*>(&k.w[c]);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float2 kf = __half22float2(kh[j]);
#pragma unroll
      for (int g = 0; g < kMaxG; ++g)
        if (g < G) sc[g] = fmaf(qs[g][c * 8 + 2 * j], kf.x, fmaf(qs[g][c * 8 + 2 * j + 1], kf.y, sc[g]));
    }
  }
}

// One int8 cache K row: its HD bytes (16-byte loads, 8 for HD 8) and its HD / QG group scales.
template <int HD>
struct KRowQ8 {
  uint32_t w[HD / 4];
  float scale[HD / kQGroup<HD>];
};
template <int HD>
__device__ __forceinline__ void load_k_q8(const AttentionParams& p, size_t row, KRowQ8<HD>& k) {
  constexpr int QG = kQGroup<HD>;
  if constexpr (HD % 16 == 0) {
#pragma unroll
    for (int c = 0; c < HD / 16; ++c) {
      uint4 raw = *reinterpret_cast<const uint4*>(p.k_q + row + c * 16);
      k.w[4 * c] = raw.x;
      k.w[4 * c + 1] = raw.y;
      k.w[4 * c + 2] = raw.z;
      k.w[4 * c + 3] = raw.w;
    }
  } else {
    uint2 raw = *reinterpret_cast<const uint2*>(p.k_q + row);
    k.w[0] = raw.x;
    k.w[1] = raw.y;
  }
#pragma unroll
  for (int g = 0; g < HD / QG; ++g) k.scale[g] = __half2float(p.k_scale[row / QG + g]);
}

template <int HD, int kMaxG>
__device__ __forceinline__ void score_q8(const KRowQ8<HD>& k, const float (*qs)[HD], int G, float (&sc)[kMaxG]) {
  constexpr int QG = kQGroup<HD>;
#pragma unroll
  for (int gi = 0; gi < HD / QG; ++gi) {
    float part[kMaxG];
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) part[g] = 0.f;
#pragma unroll
    for (int d = gi * QG; d < (gi + 1) * QG; ++d) {
      const float kf = i8_to_f(bias8(k.w[d / 4]), d % 4);
#pragma unroll
      for (int g = 0; g < kMaxG; ++g)
        if (g < G) part[g] = fmaf(qs[g][d], kf, part[g]);
    }
#pragma unroll
    for (int g = 0; g < kMaxG; ++g)
      if (g < G) sc[g] = fmaf(k.scale[gi], part[g], sc[g]);
  }
}

// The (token, kv head)'s G query heads, scaled, into shared memory (the caller syncs).
template <int HD>
__device__ __forceinline__ void stage_q(const AttentionParams& p, int t, int kvh, int G, float (*qs)[HD]) {
  for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
    int g = i / HD, d = i % HD;
    qs[g][d] = __half2float(p.q[(size_t)t * p.ldq + (size_t)(kvh * G + g) * HD + d]) * p.scale;
  }
}

// The end of a split CTA: combines its kParts partial softmaxes (shared memory; a part that saw no
// position has m = -FLT_MAX) and writes the output (one split) or the split's partial to the workspace;
// then the last of the (token, kv head)'s `used` splits to get here (told through the caller's shared
// sm_last) merges them all:
// out = sum_s acc_s e^{m_s - M} / sum_s l_s e^{m_s - M}. The counter goes back to 0 for the next launch.
template <int HD, int kMaxG, int kParts>
__device__ __forceinline__ void finish_split(const AttentionParams& p, int t, int z, int kvh, int split, int n_splits, int used,
                                             const float (*sm_m)[kMaxG], const float (*sm_l)[kMaxG], const float (*sm_acc)[kMaxG][HD],
                                             int* __restrict__ counters, float* __restrict__ ws_ml, float* __restrict__ ws_acc, int& sm_last) {
  const int G = p.n_heads / p.n_kv_heads;
  for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
    int g = i / HD, d = i % HD;
    float M = -FLT_MAX;
    for (int w = 0; w < kParts; ++w) M = fmaxf(M, sm_m[w][g]);
    float Ls = 0.f, A = 0.f;
    for (int w = 0; w < kParts; ++w) {
      if (sm_m[w][g] == -FLT_MAX) continue;  // part had no positions
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
  if (n_splits == 1) return;

  __threadfence();  // this CTA's partials are visible device-wide before its count is
  __syncthreads();
  used = min(n_splits, used);
  if (threadIdx.x == 0) {
    int* c = counters + (size_t)z * p.n_kv_heads + kvh;
    const bool last = atomicAdd(c, 1) == used - 1;
    if (last) atomicExch(c, 0);
    sm_last = last;
  }
  __syncthreads();
  if (!sm_last) return;
  __threadfence();
  for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
    const int g = i / HD, d = i % HD, h = kvh * G + g;
    const size_t base = ((size_t)z * p.n_heads + h) * n_splits;
    float M = -FLT_MAX;
    for (int j = 0; j < used; ++j) M = fmaxf(M, __ldcg(ws_ml + (base + j) * 2));
    float Ls = 0.f, A = 0.f;
    for (int j = 0; j < used; ++j) {
      const float f = __expf(__ldcg(ws_ml + (base + j) * 2) - M);
      Ls += __ldcg(ws_ml + (base + j) * 2 + 1) * f;
      A += __ldcg(ws_acc + (base + j) * HD + d) * f;
    }
    p.out[(size_t)t * p.ldo + (size_t)h * HD + d] = __float2half(A / Ls);
  }
}

// kEarly (small grids, where latency rules): the cache rows of earlier steps load before the PDL wait
// (K and V together: ~200 registers). Otherwise (many CTAs: occupancy rules, ~100 registers) everything
// loads after the wait and q, V rows first.
template <int HD, int kMaxG, bool Q8, bool kEarly>
__global__ void __launch_bounds__(kWarps * 32) attn_decode_kernel(const __grid_constant__ AttentionParams p, int n_splits, int* __restrict__ counters,
                                                                  float* __restrict__ ws_ml, float* __restrict__ ws_acc) {
  constexpr int DPL = HD >= 32 ? HD / 32 : 1;  // dims per lane in the value phase
  constexpr int kVB = DPL >= 8 ? 8 : 32;       // V rows prefetched per lane
  constexpr int QG = kQGroup<HD>;
  // Words per lane and V row: int8 DPL bytes, fp16 DPL halves (DPL 1: one half in the low bits).
  constexpr int VW = Q8 ? (DPL + 3) / 4 : (DPL + 1) / 2;
  pdl_trigger();
  // Before pdl_wait: only the step's inputs (copied before its first kernel) and cache rows of earlier
  // steps, positions < seg_pos0 (this step writes positions >= seg_pos0 only).
  const int split = blockIdx.x, kvh = blockIdx.y, z = blockIdx.z;
  const int t = p.decode_tokens ? p.decode_tokens[z] : z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int G = p.n_heads / p.n_kv_heads;
  const TokenSeg ts = token_segment(p, t);
  const int s = ts.s;
  if (s < 0) return;
  const int pos0 = ts.pos0;
  const int L = pos0 + (t - ts.start) + 1;
  const int begin = split * kSplit;
  if (begin >= L) return;
  const int end = min(L, begin + kSplit);
  const int32_t* table = p.block_tables + (size_t)s * p.max_blocks;

  __shared__ float qs[kMaxG][HD];
  __shared__ float sm_m[kWarps][kMaxG], sm_l[kWarps][kMaxG];
  __shared__ float sm_acc[kWarps][kMaxG][HD];
  __shared__ int sm_last;  // (declared here, not in finish_split: inside it, sm_90 gave this kernel 130 registers, not 95)

  float m[kMaxG], l[kMaxG], acc[kMaxG][DPL];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    m[g] = -FLT_MAX;
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[g][i] = 0.f;
  }

  const int wbegin = begin + warp * 32;
  const int pos = wbegin + lane;
  const bool active = wbegin < end;  // warp-uniform
  const bool valid = pos < end;
  const bool early = valid && pos < pos0;
  // Each lane resolves its own position's cache row once (one block-table lookup per position).
  const size_t row = valid ? kv_cache_row(table[pos / kKvBlock], pos % kKvBlock, p.n_kv_heads, kvh) * HD : 0;
  const int n_pos = active ? min(32, end - wbegin) : 0;
  const bool has_dims = lane * DPL < HD;
  // V rows of this warp's positions for the lane's dims (they do not depend on the scores, so they load
  // together with K), kept as raw words.
  uint32_t vw[kVB][VW];
  float vsc[Q8 ? kVB : 1];  // int8: the rows' group scales
  auto load_v = [&](int j0, int phase) {  // phase 0: all rows, 1: earlier steps' rows, 2: this step's rows
#pragma unroll
    for (int jj = 0; jj < kVB; ++jj) {
      const size_t r = (size_t)__shfl_sync(0xffffffffu, (unsigned long long)row, (j0 + jj) & 31);
      const bool in = has_dims && j0 + jj < n_pos;
      const bool cur = wbegin + j0 + jj >= pos0;
      if (phase == 2 && !(in && cur)) continue;
      const bool ok = in && (phase == 0 || (phase == 2) == cur);
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
          vw[jj][0] = raw.x, vw[jj][1] = raw.y, vw[jj][2] = raw.z, vw[jj][3] = raw.w;
        } else if constexpr (DPL == 4) {
          uint2 raw = ok ? *reinterpret_cast<const uint2*>(src) : make_uint2(0, 0);
          vw[jj][0] = raw.x, vw[jj][1] = raw.y;
        } else if constexpr (DPL == 2) {
          vw[jj][0] = ok ? *reinterpret_cast<const uint32_t*>(src) : 0u;
        } else {
          vw[jj][0] = ok ? (uint32_t)*reinterpret_cast<const uint16_t*>(src) : 0u;
        }
      }
    }
  };
  std::conditional_t<Q8, KRowQ8<HD>, KRowF16<HD>> krow;
  auto load_k = [&] {
    if constexpr (Q8) load_k_q8<HD>(p, row, krow);
    else load_k_f16<HD>(p, row, krow);
  };
  if constexpr (kEarly) {
    if (active) {
      if (early) load_k();
      load_v(0, 1);
    }
  }
  pdl_wait();
  // The predecessor's writes are visible from here: this step's cache rows, and q.
  if constexpr (kEarly) {
    if (active && wbegin + n_pos > pos0) {  // warp-uniform: the warp has rows of this step
      if (valid && !early) load_k();
      load_v(0, 2);
    }
  }
  stage_q<HD>(p, t, kvh, G, qs);
  __syncthreads();

  if (active) {
    if constexpr (!kEarly) {
      load_v(0, 0);
      if (valid) load_k();
    }
    // Scores: this lane's position against every query head of the group.
    float sc[kMaxG];
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) sc[g] = 0.f;
    if (valid) {
      if constexpr (Q8) score_q8<HD, kMaxG>(krow, qs, G, sc);
      else score_f16<HD, kMaxG>(krow, qs, G, sc);
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
    // Values: lane owns dims [lane * DPL, +DPL) (HD < 32: lanes >= HD idle). The first kVB rows are in
    // registers already; only HD = 256 (DPL 8) needs a second batch loop.
#pragma unroll
    for (int j0 = 0; j0 < 32; j0 += kVB) {
      if (j0 >= n_pos) break;
      if (j0 > 0) load_v(j0, 0);
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
            for (int i = 0; i < DPL; ++i) {
              const uint32_t wd = vw[jj][i / 2];
              const float v = __half2float(__ushort_as_half((unsigned short)(i % 2 ? wd >> 16 : wd & 0xffffu)));
              acc[g][i] = fmaf(w, v, acc[g][i]);
            }
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
  finish_split<HD, kMaxG, kWarps>(p, t, z, kvh, split, n_splits, (L + kSplit - 1) / kSplit, sm_m, sm_l, sm_acc, counters, ws_ml, ws_acc, sm_last);
}

// The streaming variant (LLAMA2_ATTN_STREAM=1, for many CTAs; not yet measured on a GPU). The kernel above
// makes one round trip per CTA for 128 positions (and before it the segment, block table and q: ~4
// dependent latencies per 64 KB of cache at 7B), and each lane loads its own K row 16 bytes at a time (32
// rows per instruction, half of every sector). Here a CTA takes kStreamSplit positions and the lanes split
// each row (8 dims per lane: 16 bytes fp16, 8 bytes int8), so one warp instruction reads RPI = 32 / (HD / 8)
// whole consecutive rows; each warp walks its rows in rounds of kStreamU instructions (K and V of a round
// in flight together) with an online softmax per row stream (RPI streams per warp, kWarps * RPI per CTA).
constexpr int kStreamSplit = 256;
constexpr int kStreamU = 4;
constexpr int kStreamMaxG = 4;  // query heads per kv head it is built for (more: the kernel above)

template <bool Q8>
struct RowPart;  // a lane's 8 values of a cache row
template <>
struct RowPart<false> {
  uint4 w;
};
template <>
struct RowPart<true> {
  uint2 w;
};

template <bool Q8>
__device__ __forceinline__ void row_part_floats(const RowPart<Q8>& r, float (&f)[8]) {
  if constexpr (Q8) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      f[j] = i8_to_f(bias8(r.w.x), j);
      f[4 + j] = i8_to_f(bias8(r.w.y), j);
    }
  } else {
    const half2* h = reinterpret_cast<const half2*>(&r.w);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 v = __half22float2(h[j]);
      f[2 * j] = v.x;
      f[2 * j + 1] = v.y;
    }
  }
}

template <int HD, int kMaxG, bool Q8>
__global__ void __launch_bounds__(kWarps * 32) attn_decode_stream_kernel(const __grid_constant__ AttentionParams p, int n_splits, int* __restrict__ counters,
                                                                         float* __restrict__ ws_ml, float* __restrict__ ws_acc) {
  constexpr int LPR = HD / 8;        // lanes per cache row
  constexpr int RPI = 32 / LPR;      // rows per warp instruction = row streams per warp
  constexpr int kStreams = kWarps * RPI;
  constexpr int kRound = kStreams * kStreamU;  // positions per CTA round
  constexpr int QG = kQGroup<HD>;
  pdl_trigger();
  const int split = blockIdx.x, kvh = blockIdx.y, z = blockIdx.z;
  const int t = p.decode_tokens ? p.decode_tokens[z] : z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sg = lane / LPR, sl = lane % LPR;  // the lane's row stream in the warp, its dims [sl * 8, +8)
  const int G = p.n_heads / p.n_kv_heads;
  const TokenSeg ts = token_segment(p, t);
  if (ts.s < 0) return;
  const int L = ts.pos0 + (t - ts.start) + 1;
  const int begin = split * kStreamSplit;
  if (begin >= L) return;
  const int n = min(L, begin + kStreamSplit) - begin;

  __shared__ int sm_blk[kStreamSplit / kKvBlock];
  __shared__ __align__(16) float qs[kMaxG][HD];
  __shared__ float sm_m[kStreams][kMaxG], sm_l[kStreams][kMaxG];
  __shared__ float sm_acc[kStreams][kMaxG][HD];
  __shared__ int sm_last;
  // The split's block-table entries (a step input: readable before the PDL wait).
  const int32_t* table = p.block_tables + (size_t)ts.s * p.max_blocks + begin / kKvBlock;
  for (int i = threadIdx.x; i < (n + kKvBlock - 1) / kKvBlock; i += blockDim.x) sm_blk[i] = table[i];
  pdl_wait();
  stage_q<HD>(p, t, kvh, G, qs);
  __syncthreads();

  float m[kMaxG], l[kMaxG], acc[kMaxG][8];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    m[g] = -FLT_MAX;
    l[g] = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[g][j] = 0.f;
  }
  for (int r0 = 0; r0 < n; r0 += kRound) {
    // The warp's kStreamU * RPI consecutive positions of this round; instruction u reads rows
    // [u * RPI, (u + 1) * RPI) of them, this lane's stream row u * RPI + sg.
    RowPart<Q8> kr[kStreamU], vr[kStreamU];
    float ksc[kStreamU], vsc[kStreamU];
    bool ok[kStreamU];
#pragma unroll
    for (int u = 0; u < kStreamU; ++u) {
      const int i = r0 + (warp * kStreamU + u) * RPI + sg;
      ok[u] = i < n;
      ksc[u] = vsc[u] = 0.f;
      if (!ok[u]) {
        kr[u] = vr[u] = RowPart<Q8>{};
        continue;
      }
      const size_t row = kv_cache_row(sm_blk[i / kKvBlock], (begin + i) % kKvBlock, p.n_kv_heads, kvh);
      const size_t off = row * HD + sl * 8;
      if constexpr (Q8) {
        kr[u].w = *reinterpret_cast<const uint2*>(p.k_q + off);
        vr[u].w = *reinterpret_cast<const uint2*>(p.v_q + off);
        ksc[u] = __half2float(p.k_scale[off / QG]);
        vsc[u] = __half2float(p.v_scale[off / QG]);
      } else {
        kr[u].w = *reinterpret_cast<const uint4*>(p.k_cache + off);
        vr[u].w = *reinterpret_cast<const uint4*>(p.v_cache + off);
      }
    }
    // Scores: the lane's 8-dim part, summed over the row's LPR lanes (xor within the aligned lane group).
    float s[kStreamU][kMaxG];
#pragma unroll
    for (int u = 0; u < kStreamU; ++u) {
      float kf[8];
      row_part_floats<Q8>(kr[u], kf);
#pragma unroll
      for (int g = 0; g < kMaxG; ++g) {
        s[u][g] = 0.f;
        if (g >= G) continue;
        const float4 q0 = *reinterpret_cast<const float4*>(&qs[g][sl * 8]);
        const float4 q1 = *reinterpret_cast<const float4*>(&qs[g][sl * 8 + 4]);
        float d = q0.x * kf[0];
        d = fmaf(q0.y, kf[1], d);
        d = fmaf(q0.z, kf[2], d);
        d = fmaf(q0.w, kf[3], d);
        d = fmaf(q1.x, kf[4], d);
        d = fmaf(q1.y, kf[5], d);
        d = fmaf(q1.z, kf[6], d);
        d = fmaf(q1.w, kf[7], d);
        if constexpr (Q8) d *= ksc[u];  // the lane's 8 dims lie in one scale group
#pragma unroll
        for (int o = LPR / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        s[u][g] = d;
      }
    }
    if (!ok[0]) continue;  // the stream has no rows this round (nor later: rows only grow with u)
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) {
      if (g >= G) continue;
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < kStreamU; ++u)
        if (ok[u]) mx = fmaxf(mx, s[u][g]);
      const float c = __expf(m[g] - mx);
      m[g] = mx;
      l[g] *= c;
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[g][j] *= c;
    }
#pragma unroll
    for (int u = 0; u < kStreamU; ++u) {
      if (!ok[u]) continue;
      float vf[8];
      row_part_floats<Q8>(vr[u], vf);
#pragma unroll
      for (int g = 0; g < kMaxG; ++g) {
        if (g >= G) continue;
        const float pr = __expf(s[u][g] - m[g]);
        l[g] += pr;
        const float w = Q8 ? pr * vsc[u] : pr;
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[g][j] = fmaf(w, vf[j], acc[g][j]);
      }
    }
  }
  const int st = warp * RPI + sg;
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    if (g >= G) continue;
    if (sl == 0) {
      sm_m[st][g] = m[g];
      sm_l[st][g] = l[g];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) sm_acc[st][g][sl * 8 + j] = acc[g][j];
  }
  __syncthreads();
  finish_split<HD, kMaxG, kStreams>(p, t, z, kvh, split, n_splits, (L + kStreamSplit - 1) / kStreamSplit, sm_m, sm_l, sm_acc, counters, ws_ml,
                                    ws_acc, sm_last);
}

// Workspace layout: the merge counters (counter_tokens x heads ints, 16-byte padded; a (token, kv head)
// uses one), then m/l pairs and the accumulators of every (token, head, split). The partials start after
// counter_tokens' counters whatever n_tokens is, so a smaller launch never writes over a larger one's.
struct Workspace {
  int* counters;
  float* ml;
  float* acc;
};
// (Counters are sized by query heads, an upper bound of kv heads, so the size needs no kv-head count.)
inline size_t counter_bytes(int n_tokens, int n_heads) { return ((size_t)n_tokens * n_heads * sizeof(int) + 15) / 16 * 16; }
inline Workspace split_workspace(void* ws, int n_tokens, int counter_tokens, int n_heads, int n_splits) {
  Workspace w;
  w.counters = static_cast<int*>(ws);
  w.ml = reinterpret_cast<float*>(static_cast<char*>(ws) + counter_bytes(counter_tokens, n_heads));
  w.acc = w.ml + (size_t)n_tokens * n_heads * n_splits * 2;
  return w;
}

template <int HD, bool Q8, bool kEarly>
void launch_variant(const AttentionParams& p, dim3 grid, int n_splits, const Workspace& w, cudaStream_t stream) {
  const int g = p.n_heads / p.n_kv_heads;  // registers scale with the group: build per group size
  if (g == 1) launch(attn_decode_kernel<HD, 1, Q8, kEarly>, grid, kWarps * 32, 0, stream, p, n_splits, w.counters, w.ml, w.acc);
  else if (g == 2) launch(attn_decode_kernel<HD, 2, Q8, kEarly>, grid, kWarps * 32, 0, stream, p, n_splits, w.counters, w.ml, w.acc);
  else if (g <= 4) launch(attn_decode_kernel<HD, 4, Q8, kEarly>, grid, kWarps * 32, 0, stream, p, n_splits, w.counters, w.ml, w.acc);
  else launch(attn_decode_kernel<HD, kMaxGroup, Q8, kEarly>, grid, kWarps * 32, 0, stream, p, n_splits, w.counters, w.ml, w.acc);
}

// The early-load variant while (token, kv head) pairs x 2 splits fit in one wave of 2 CTAs per SM (batch 1
// and 2 of 7B); LLAMA2_ATTN_EARLY=0 / 1 forces it off / on (A/B runs).
std::atomic<int> g_force_early{kKnobUnread};  // -1: by grid size; 0 / 1: forced
bool use_early(int n_tokens, int n_kv_heads) {
  const int forced = env_knob(g_force_early, "LLAMA2_ATTN_EARLY", [](const char* e) { return e && *e ? (int)(std::atoi(e) != 0) : -1; });
  if (forced >= 0) return forced != 0;
  return (long)n_tokens * n_kv_heads * 2 <= 2L * device_sm_count();
}

// The streaming variant: off unless LLAMA2_ATTN_STREAM=1 (then for every grid and group size it is built for)
// until a GPU run has compared the two.
std::atomic<int> g_force_stream{kKnobUnread};  // 0 / 1
bool use_stream(int group) {
  const int on = env_knob(g_force_stream, "LLAMA2_ATTN_STREAM", [](const char* e) { return e && *e ? (int)(std::atoi(e) != 0) : 0; });
  return on == 1 && group <= kStreamMaxG;
}

template <int HD, bool Q8>
void launch_stream(const AttentionParams& p, int n_tokens, int max_ctx, void* workspace, int counter_tokens, cudaStream_t stream) {
  const int n_splits = ceil_div(max_ctx, kStreamSplit);
  const Workspace w = split_workspace(workspace, n_tokens, counter_tokens, p.n_heads, n_splits);
  const dim3 grid(n_splits, p.n_kv_heads, n_tokens);
  const int g = p.n_heads / p.n_kv_heads;
  if (g == 1) launch(attn_decode_stream_kernel<HD, 1, Q8>, grid, kWarps * 32, 0, stream, p, n_splits, w.counters, w.ml, w.acc);
  else if (g == 2) launch(attn_decode_stream_kernel<HD, 2, Q8>, grid, kWarps * 32, 0, stream, p, n_splits, w.counters, w.ml, w.acc);
  else launch(attn_decode_stream_kernel<HD, kStreamMaxG, Q8>, grid, kWarps * 32, 0, stream, p, n_splits, w.counters, w.ml, w.acc);
}

template <int HD, bool Q8>
void launch_kind(const AttentionParams& p, int n_tokens, int max_ctx, void* workspace, int counter_tokens, cudaStream_t stream) {
  if (use_stream(p.n_heads / p.n_kv_heads)) return launch_stream<HD, Q8>(p, n_tokens, max_ctx, workspace, counter_tokens, stream);
  const int n_splits = ceil_div(max_ctx, kSplit);
  const Workspace w = split_workspace(workspace, n_tokens, counter_tokens, p.n_heads, n_splits);
  const dim3 grid(n_splits, p.n_kv_heads, n_tokens);
  if (use_early(n_tokens, p.n_kv_heads)) launch_variant<HD, Q8, true>(p, grid, n_splits, w, stream);
  else launch_variant<HD, Q8, false>(p, grid, n_splits, w, stream);
}

template <int HD>
void launch(const AttentionParams& p, int n_tokens, int max_ctx, void* workspace, int counter_tokens, cudaStream_t stream) {
  if (p.k_q) {
    if (p.kv_group != kQGroup<HD>) return;  // the cache was written with another grouping
    launch_kind<HD, true>(p, n_tokens, max_ctx, workspace, counter_tokens, stream);
  } else {
    launch_kind<HD, false>(p, n_tokens, max_ctx, workspace, counter_tokens, stream);
  }
}

}  // namespace

// Test hook (declared by kernels/tests/test_kv_int8.cu): -1 chooses the variant by grid size, 0 / 1 force it.
namespace attention_detail {
void force_early(int mode) { g_force_early.store(mode < 0 ? -1 : (mode != 0)); }
// 1: the streaming variant wherever it is built (group <= 4); 0: the split kernel; -1: the environment's choice.
void force_stream(int mode) { g_force_stream.store(mode < 0 ? kKnobUnread : (mode != 0)); }
}  // namespace attention_detail

size_t attention_decode_partial_bytes(int n_tokens, int n_heads, int head_dim, int max_ctx) {
  size_t splits = (size_t)ceil_div(max_ctx, kSplit);
  return (size_t)n_tokens * n_heads * splits * (head_dim + 2) * sizeof(float);
}

size_t attention_decode_workspace(int n_tokens, int n_heads, int head_dim, int max_ctx) {
  return counter_bytes(n_tokens, n_heads) + attention_decode_partial_bytes(n_tokens, n_heads, head_dim, max_ctx);
}

size_t attention_decode_counter_bytes(int n_tokens, int n_heads) { return counter_bytes(n_tokens, n_heads); }

void attention_decode(const AttentionParams& p, int n_tokens, int max_ctx, void* workspace, cudaStream_t stream, int counter_tokens) {
  if (n_tokens <= 0) return;
  const int ct = std::max(counter_tokens, n_tokens);
  switch (p.head_dim) {
    case 8: launch<8>(p, n_tokens, max_ctx, workspace, ct, stream); break;
    case 16: launch<16>(p, n_tokens, max_ctx, workspace, ct, stream); break;
    case 32: launch<32>(p, n_tokens, max_ctx, workspace, ct, stream); break;
    case 64: launch<64>(p, n_tokens, max_ctx, workspace, ct, stream); break;
    case 128: launch<128>(p, n_tokens, max_ctx, workspace, ct, stream); break;
    case 256: launch<256>(p, n_tokens, max_ctx, workspace, ct, stream); break;
    default: break;
  }
}

}  // namespace l2::kernels
