// Shared pieces of the tensor-core GEMMs (gemm.cu: mma.sync for sm_80+, gemm_sm90a.cu: wgmma for sm_90a):
// the kernel arguments, the cp.async stage loader (A tile + fp16 or int8 weight tile + group scales, into
// 128-byte-row XOR-swizzled shared memory) and the int8 -> fp16 dequantization of a staged weight tile.
// A configuration type CF provides: BM, BN, BK, C (= BK / 8), kThreads, W8, A_BYTES, WST_BYTES, STAGE_BYTES, and
// optionally W4 (with W8: a 4-bit tile + (scale, bias) pairs instead of int8 + scales).
#pragma once
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels.h"
#include "mma.cuh"

namespace l2::kernels::gemm_common {

using namespace l2::kernels::mma;

// CF::W4 where the configuration declares it (gemm.cu's), else false (the sm_90a ones: no 4-bit variant).
template <class CF, class = void>
struct IsW4 : std::false_type {};
template <class CF>
struct IsW4<CF, std::void_t<decltype(CF::W4)>> : std::bool_constant<CF::W4> {};

struct GemmArgs {
  const half* A;
  const void* W;        // half [N][ldw], int8 [N][ldw] or (W4) 4-bit [N][ldw / 2]
  const half* scales;   // W8: [N][ldw / 32]; W4: half2 (scale, bias) [N][ldw / 32]
  int lda, ldw, M, N, n_valid, K;
  Epilogue epi;
  // Split-K (gridDim.z > 1; splitk_merge below): partial tiles [tile][split][BM * BN floats] and a counter per
  // tile (zero between launches); the last split CTA of a tile sums them in split order and stores.
  float* sk_ws = nullptr;
  int* sk_counters = nullptr;
  // wgmma kernel only: it was launched with PDL, so it lets its successor start early (the mma.sync kernels
  // always do; the wgmma prefill launches stay as measured, without PDL).
  bool pdl = false;
};

// Calls f(i) for this thread's items i = tid, tid + kThreads, ... below kCount: the CTA's kThreads threads
// share kCount items (copies, conversions) evenly, unrolled, with no bound test when kThreads divides kCount.
template <int kCount, int kThreads, class F>
__device__ __forceinline__ void for_each_item(int tid, F&& f) {
#pragma unroll
  for (int j = 0; j < (kCount + kThreads - 1) / kThreads; ++j) {
    const int i = tid + j * kThreads;
    if (kCount % kThreads == 0 || i < kCount) f(i);
  }
}

// A stage's activation tile: BM rows x C chunks, swizzled.
template <class CF>
__device__ __forceinline__ void load_stage_a(const GemmArgs& g, unsigned char* smem, int slot, int kt, int m0, int tid) {
  unsigned char* st = smem + slot * CF::STAGE_BYTES;
  const int k0 = kt * CF::BK;
  {
    const uint32_t sA = smem_u32(st);
    constexpr int kChunks = CF::BM * CF::C;
    for_each_item<kChunks, CF::kThreads>(tid, [&](int i) {
      int row = i / CF::C, ch = i % CF::C;
      int grow = m0 + row;
      bool ok = grow < g.M;
      const half* src = g.A + (size_t)(ok ? grow : 0) * g.lda + k0 + ch * 8;
      cp_async_16(sA + swz<CF::C>(row, ch) * 2, src, ok);
    });
  }
}

// A stage's weight tile (fp16, or int8 + its group scales). Weights are constants: this part may be issued
// before the kernel's programmatic-dependent-launch wait.
template <class CF>
__device__ __forceinline__ void load_stage_w(const GemmArgs& g, unsigned char* smem, int slot, int kt, int n0, int tid) {
  unsigned char* st = smem + slot * CF::STAGE_BYTES;
  const int k0 = kt * CF::BK;
  if constexpr (!CF::W8) {
    const uint32_t sW = smem_u32(st + CF::A_BYTES);
    const half* W = static_cast<const half*>(g.W);
    constexpr int kChunks = CF::BN * CF::C;
    for_each_item<kChunks, CF::kThreads>(tid, [&](int i) {
      int row = i / CF::C, ch = i % CF::C;
      int grow = n0 + row;
      bool ok = grow < g.N;
      const half* src = W + (size_t)(ok ? grow : 0) * g.ldw + k0 + ch * 8;
      cp_async_16(sW + swz<CF::C>(row, ch) * 2, src, ok);
    });
  } else if constexpr (IsW4<CF>::value) {
    // 4-bit tile: BN rows x (BK / 32) 16-byte groups, linear; meta: the groups' (scale, bias) pairs, 8 bytes per
    // row (two 4-byte copies: cp.async takes 4, 8 or 16, and the emulator models 4 and 16).
    const uint32_t sQ = smem_u32(st + CF::A_BYTES);
    const uint8_t* Wq = static_cast<const uint8_t*>(g.W);
    constexpr int C4 = CF::BK / 32;
    constexpr int kChunks = CF::BN * C4;
    for_each_item<kChunks, CF::kThreads>(tid, [&](int i) {
      int row = i / C4, ch = i % C4;
      int grow = n0 + row;
      bool ok = grow < g.N;
      const uint8_t* src = Wq + (size_t)(ok ? grow : 0) * (g.ldw / 2) + k0 / 2 + ch * 16;
      cp_async_16(sQ + i * 16, src, ok);
    });
    const uint32_t sS = smem_u32(st + CF::A_BYTES + CF::WST_BYTES);
    const int ldm = g.ldw / 32;
    constexpr int kPairs = CF::BN * C4;
    for_each_item<kPairs, CF::kThreads>(tid, [&](int i) {
      int row = i / C4, ch = i % C4;
      int grow = n0 + row;
      bool ok = grow < g.N;
      const half* src = g.scales + ((size_t)(ok ? grow : 0) * ldm + kt * C4 + ch) * 2;
      cp_async_4(sS + i * 4, src, ok);
    });
  } else {
    // int8 tile: BN rows x (BK / 16) chunks, linear; scales: one 4-byte pair per row.
    const uint32_t sQ = smem_u32(st + CF::A_BYTES);
    const int8_t* Wq = static_cast<const int8_t*>(g.W);
    constexpr int C8 = CF::BK / 16;
    constexpr int kChunks = CF::BN * C8;
    for_each_item<kChunks, CF::kThreads>(tid, [&](int i) {
      int row = i / C8, ch = i % C8;
      int grow = n0 + row;
      bool ok = grow < g.N;
      const int8_t* src = Wq + (size_t)(ok ? grow : 0) * g.ldw + k0 + ch * 16;
      cp_async_16(sQ + i * 16, src, ok);
    });
    const uint32_t sS = smem_u32(st + CF::A_BYTES + CF::WST_BYTES);
    const int lds = g.ldw / 32;
    for_each_item<CF::BN, CF::kThreads>(tid, [&](int row) {
      int grow = n0 + row;
      bool ok = grow < g.N;
      const half* src = g.scales + (size_t)(ok ? grow : 0) * lds + kt * 2;
      cp_async_4(sS + row * 4, src, ok);
    });
  }
}

template <class CF>
__device__ __forceinline__ void load_stage(const GemmArgs& g, unsigned char* smem, int slot, int kt, int m0, int n0,
                                           int tid) {
  load_stage_a<CF>(g, smem, slot, kt, m0, tid);
  load_stage_w<CF>(g, smem, slot, kt, n0, tid);
}

// int8 x 4 (one 32-bit word, k order low byte first) -> two half2 = (q0, q1), (q2, q3), exactly.
__device__ __forceinline__ void i8x4_to_half2x2(uint32_t w, __half2& lo, __half2& hi) {
  uint32_t u = w ^ 0x80808080u;                       // signed byte x -> unsigned x + 128
  uint32_t l = __byte_perm(u, 0x64646464u, 0x4140);   // halves 0x64XX = 1024 + (x + 128)
  uint32_t h = __byte_perm(u, 0x64646464u, 0x4342);
  const __half2 bias = __half2half2(__ushort_as_half((unsigned short)0x6480));  // 1152
  lo = __hsub2(*reinterpret_cast<__half2*>(&l), bias);
  hi = __hsub2(*reinterpret_cast<__half2*>(&h), bias);
}

// 4 nibbles (bytes of `nib`, each 0..15) -> two half2 = (q0, q1) * s + b, (q2, q3) * s + b: q exact, one rounding.
__device__ __forceinline__ void u4x4_to_half2x2(uint32_t nib, __half2 s, __half2 b, __half2& lo, __half2& hi) {
  uint32_t l = __byte_perm(nib, 0x64646464u, 0x4140);  // halves 0x64XX = 1024 + q
  uint32_t h = __byte_perm(nib, 0x64646464u, 0x4342);
  const __half2 k1024 = __half2half2(__ushort_as_half((unsigned short)0x6400));
  lo = __hfma2(__hsub2(*reinterpret_cast<__half2*>(&l), k1024), s, b);
  hi = __hfma2(__hsub2(*reinterpret_cast<__half2*>(&h), k1024), s, b);
}

// Dequantizes the staged int8 (or 4-bit) tile of `slot` into the fp16 tile X (swizzled like an fp16 weight tile).
template <class CF>
__device__ __forceinline__ void dequant_stage(unsigned char* smem, int slot, half* X, int tid) {
  const unsigned char* st = smem + slot * CF::STAGE_BYTES;
  if constexpr (IsW4<CF>::value) {
    const uint8_t* q = st + CF::A_BYTES;
    const __half2* mt = reinterpret_cast<const __half2*>(st + CF::A_BYTES + CF::WST_BYTES);
    constexpr int C4 = CF::BK / 32;
    constexpr int kChunks = CF::BN * C4;
    for_each_item<kChunks, CF::kThreads>(tid, [&](int i) {
      int row = i / C4, ch = i % C4;  // group ch of the row: k = 32 ch .. 32 ch + 31 = fp16 chunks 4 ch .. 4 ch + 3
      const uint4 w = *reinterpret_cast<const uint4*>(q + i * 16);
      const __half2 sb = mt[i];
      const __half2 sc = __low2half2(sb), bi = __high2half2(sb);
      const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
      uint32_t o[16];  // o[2 j], o[2 j + 1]: values 4 j .. 4 j + 3 (low nibbles); o[8 + ...]: 16 + 4 j ... (high)
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        __half2 a, b;
        u4x4_to_half2x2(ws[jj] & 0x0F0F0F0Fu, sc, bi, a, b);
        o[2 * jj] = *reinterpret_cast<uint32_t*>(&a);
        o[2 * jj + 1] = *reinterpret_cast<uint32_t*>(&b);
        u4x4_to_half2x2((ws[jj] >> 4) & 0x0F0F0F0Fu, sc, bi, a, b);
        o[8 + 2 * jj] = *reinterpret_cast<uint32_t*>(&a);
        o[8 + 2 * jj + 1] = *reinterpret_cast<uint32_t*>(&b);
      }
#pragma unroll
      for (int c = 0; c < 4; ++c)
        *reinterpret_cast<uint4*>(X + swz<CF::C>(row, 4 * ch + c)) = make_uint4(o[4 * c], o[4 * c + 1], o[4 * c + 2], o[4 * c + 3]);
    });
    return;
  }
  const int8_t* q = reinterpret_cast<const int8_t*>(st + CF::A_BYTES);
  const __half* sc = reinterpret_cast<const __half*>(st + CF::A_BYTES + CF::WST_BYTES);
  constexpr int C8 = CF::BK / 16;
  constexpr int kChunks = CF::BN * C8;
  for_each_item<kChunks, CF::kThreads>(tid, [&](int i) {
    int row = i / C8, ch = i % C8;  // 16 int8 at k = 16 ch .. 16 ch + 15: group (16 ch) / 32 = ch / 2
    uint4 w = *reinterpret_cast<const uint4*>(q + i * 16);
    __half2 s = __half2half2(sc[row * (CF::BK / 32) + (ch >> 1)]);
    __half2 h[8];
    i8x4_to_half2x2(w.x, h[0], h[1]);
    i8x4_to_half2x2(w.y, h[2], h[3]);
    i8x4_to_half2x2(w.z, h[4], h[5]);
    i8x4_to_half2x2(w.w, h[6], h[7]);
#pragma unroll
    for (int e = 0; e < 8; ++e) h[e] = __hmul2(h[e], s);
    uint4 o0, o1;
    o0.x = *reinterpret_cast<uint32_t*>(&h[0]);
    o0.y = *reinterpret_cast<uint32_t*>(&h[1]);
    o0.z = *reinterpret_cast<uint32_t*>(&h[2]);
    o0.w = *reinterpret_cast<uint32_t*>(&h[3]);
    o1.x = *reinterpret_cast<uint32_t*>(&h[4]);
    o1.y = *reinterpret_cast<uint32_t*>(&h[5]);
    o1.z = *reinterpret_cast<uint32_t*>(&h[6]);
    o1.w = *reinterpret_cast<uint32_t*>(&h[7]);
    *reinterpret_cast<uint4*>(X + swz<CF::C>(row, 2 * ch)) = o0;
    *reinterpret_cast<uint4*>(X + swz<CF::C>(row, 2 * ch + 1)) = o1;
  });
}

// Split-K merge (gridDim.z = S > 1 CTAs per output tile, each over its own share of K). Every split stores its
// partial tile: kOwners `holder` threads of kAcc floats each (kOwners * kAcc = the tile), at
// sk_ws[tile][split][kAcc][kOwners] (consecutive owners adjacent: coalesced). The last split CTA of the tile to
// arrive adds all of them in split order (the same sum whichever CTA came last), leaves the tile's counter at
// zero for the next launch (graph replays), and returns true in its holder threads, which then run the
// epilogue. Every thread of the CTA calls it (barriers inside). `last` is a __shared__ int of the kernel: one
// declared inside an inlined helper cost the decode attention 35 registers on sm_90 (stop 17).
template <int kOwners, int kAcc>
__device__ __forceinline__ bool splitk_merge(const GemmArgs& g, float (&acc)[kAcc], bool holder, int owner,
                                             int& last) {
  const int S = gridDim.z;
  const int tile = blockIdx.y * gridDim.x + blockIdx.x;
  float* part = g.sk_ws + (size_t)tile * S * (kOwners * kAcc);
  if (holder) {
    float* mine = part + (size_t)blockIdx.z * (kOwners * kAcc) + owner;
#pragma unroll
    for (int e = 0; e < kAcc; ++e) mine[e * kOwners] = acc[e];
  }
  __threadfence();  // the partial is visible device-wide before this CTA counts itself
  __syncthreads();
  if (threadIdx.x == 0) {
    const bool is_last = atomicAdd(g.sk_counters + tile, 1) == S - 1;
    if (is_last) atomicExch(g.sk_counters + tile, 0);
    last = is_last;
  }
  __syncthreads();
  if (!last || !holder) return false;
  __threadfence();
  // In place, split by split (its own partial read back too): no second accumulator set in registers.
  for (int z = 0; z < S; ++z) {
    const float* src = part + (size_t)z * (kOwners * kAcc) + owner;
#pragma unroll
    for (int e = 0; e < kAcc; ++e) {
      const float v = __ldcg(src + e * kOwners);
      acc[e] = z == 0 ? v : acc[e] + v;
    }
  }
  return true;
}

// This CTA's share of the K tiles under split-K over gridDim.z: [kb, kb + KT) of KT_all (KT may be 0 for a last
// split when S does not divide evenly; the host keeps >= 4 k-tiles per split).
__device__ __forceinline__ void splitk_range(int KT_all, int& kb, int& KT) {
  const int S = gridDim.z, per = (KT_all + S - 1) / S;
  kb = (int)blockIdx.z * per;
  KT = max(0, min(KT_all, kb + per) - kb);
}

}  // namespace l2::kernels::gemm_common

// The sm_90a wgmma path (gemm_sm90a.cu). Declared weak: gemm.cu works (mma.sync only) when that translation
// unit is not linked in, in which case &num_configs == nullptr.
namespace l2::kernels::sm90a {
struct ConfigInfo {
  const char* name;
  int bm, bn, smem;
  bool split_k;  // split-K built in (the 64-row tiles, for batched decode)
};
__attribute__((weak)) int num_configs(bool w8);
__attribute__((weak)) ConfigInfo config(bool w8, int i);
// splits: gridDim.z (> 1 only where config(w8, i).split_k and g.sk_ws / g.sk_counters are set); pdl: launch with
// programmatic dependent launch (the kernel loads its first weight tiles before waiting on its predecessor).
__attribute__((weak)) void launch(bool w8, int i, const gemm_common::GemmArgs& g, int splits, bool pdl, int dev,
                                  cudaStream_t stream);
}  // namespace l2::kernels::sm90a
