// Prefill / large-batch GEMM on tensor cores: C[M, N] = A[M, K] . W[N, K]^T (fp16 in, fp32 accumulate),
// the result handed pairwise to epilogue_pair(). mma.sync m16n8k16 + ldmatrix + a multi-stage cp.async
// pipeline over XOR-swizzled shared memory (conflict-free 16-byte stores and ldmatrix reads).
//
// Kernel shape (template GemmKernel<BM, BN, BK, WM, WN, WK, STAGES, W8>):
//   CTA tile BM x BN, k-tile BK; WM x WN x WK warps. Warp (wm, wn, wk) owns the (BM/WM) x (BN/WN) output
//   sub-tile and the k16 steps ks = wk, wk + WK, ... of every k-tile ("intra-CTA split-K"): WK > 1 keeps the
//   64 x 64 warp tile (best ldmatrix : mma ratio) while giving the SM more warps, or keeps a small-M CTA busy.
//   The WK partial sums are added through shared memory once at the end. No global workspace is used.
//   W8: the int8 weight tile (+ its fp16 group scales) is staged by cp.async (half the bytes of fp16), then
//   dequantized once per CTA into an fp16 tile (double buffered, one k-tile ahead of the mma loop).
// Grid: x = M tiles (fastest, so the CTAs that run together share the same weight tile: weights are read
// from DRAM about once and the activations stay in L2), y = N tiles.
//
// On sm_90 (H100 / H200), when gemm_sm90a.cu is linked in (it is reached through weak symbols), shapes with
// M >= 128 and enough CTAs run on its wgmma kernels instead (see kTuning and that file).
//
// Requirements (the padding rules of kernels.h): N % 128 == 0, K % 64 == 0, lda and ldw multiples of 8
// (16-byte rows), n_valid even; W8: scales[N][ldw / 32] (ldw == K for the padded layout).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "epilogue.cuh"
#include "kernels.h"
#include "gemm_common.cuh"
#include "launch.cuh"
#include "mma.cuh"

namespace l2::kernels {
namespace {

using namespace l2::kernels::mma;
using namespace l2::kernels::gemm_common;

// =====================================================================================================
// Tile configurations. Every mma.sync configuration is compiled for every architecture; on sm_90 the
// wgmma configurations of gemm_sm90a.cu (ids 100 + i) join them when that file is linked in. The
// per-architecture table kTuning below chooses among them by M and by how many CTAs the shape yields.
//   id  BM   BN   BK  WM WN WK STG   warp tile   smem (f16 / w8)
// =====================================================================================================
#define L2_GEMM_CONFIGS(X)                                                                                  \
  X(0, 128, 128, 32, 2, 4, 1, 4)  /* 8 warps 64x32: 64 KB; M > 128 (H100: 223-275 TFLOP/s)                */ \
  X(1, 64, 64, 64, 1, 2, 4, 4)    /* 8 warps 64x32 (4-way k split): 64 KB; M ~ 128 with many N tiles      */ \
  X(2, 32, 64, 64, 1, 2, 4, 4)    /* 8 warps 32x32 (4-way k split): 48 KB; M <= 64, memory-bound          */ \
  X(3, 32, 128, 64, 1, 4, 2, 4)   /* 8 warps 32x32 (2-way k split): 80 KB; M <= 64 alternative            */ \
  X(4, 32, 32, 64, 1, 1, 4, 6)    /* 4 warps 32x32 (4-way k split): 48 KB; M <= 32 when N is small (more CTAs) */

// W8 variants need BK == 64 (one 4-byte cp.async of 2 group scales per weight row and k-tile) and STAGES >= 3;
// smem = STAGES x (A + int8 W + scales) + 2 dequantized fp16 W tiles.
#define L2_GEMM_W8_CONFIGS(X)                                                                               \
  X(0, 64, 64, 64, 1, 2, 4, 4)    /* 65 KB: M ~ 64-128 with many N tiles                                  */ \
  X(1, 32, 64, 64, 1, 2, 4, 4)    /* 49 KB: M <= 64, memory-bound                                         */ \
  X(2, 64, 128, 64, 1, 2, 4, 3)   /* 81 KB: A10 / L4 big M                                                */ \
  X(3, 128, 128, 64, 2, 4, 1, 4)  /* 130 KB: 64x32 warps; M > 128 on A100 / H100 (H100: 200-248 TFLOP/s)  */ \
  X(4, 32, 32, 64, 1, 1, 4, 6)    /* 45 KB: M <= 32 when N is small (more CTAs)                           */

// Tuning history (H100 SXM, --tune): 128x256x32 2x4x1, 128x128x32 2x2x2, 64x128x64 1x2x4, 128x128x64 2x2x2
// (f16) and 128x128x64 2x2x2, 128x256x64 2x4x1, 64x128x64 1x2x4 s4 (w8) were never the best choice and were
// dropped to keep the build small; the 64x64 warp tiles lost to 64x32 ones throughout.
constexpr int kNumF16Configs = 5;
constexpr int kNumW8Configs = 5;
constexpr int kSm90aBase = 100;  // config id 100 + i = gemm_sm90a.cu configuration i

// Per-architecture choice by M. The first row whose compute capability matches (and, for needs_sm90a,
// whose wgmma path is linked in) is used; the last row matches anything. Within a row, the first rule with
// M <= max_m applies: `cfg`, unless it would launch fewer than min_waves x SMs CTAs, then `alt`; and when
// `small` is set and `alt` too would launch fewer CTAs than SMs, `small`.
struct Rule {
  int max_m, cfg, alt;
  float min_waves;
  int small;
  constexpr Rule(int max_m_ = 0, int cfg_ = 0, int alt_ = 0, float min_waves_ = 0, int small_ = -1)
      : max_m(max_m_), cfg(cfg_), alt(alt_), min_waves(min_waves_), small(small_) {}
};
constexpr int kMaxRules = 6;
struct ArchTuning {
  int cc_major, cc_minor;  // -1: any
  bool needs_sm90a;
  const char* gpu;
  Rule f16[kMaxRules], w8[kMaxRules];
};
constexpr int kAnyM = 1 << 30;
// clang-format off
constexpr ArchTuning kTuning[] = {
  // H100 / H200 (sm_90: 132 SMs, 227 KB smem/SM, 50 MB L2) with the wgmma path (gemm_sm90a.cu; ids 100+:
  // f16 100 = 128x128x64 s6, 101 = 128x256x64 s4, 102 = 64x128x64 s6, 103 = 64x128x64 s4; w8 100 = 128x128x64 s5, 101 = 64x128x64
  // s6). Measured on H100 SXM (--tune): M <= 64 is memory-bound and best on the small mma.sync tiles; wgmma
  // wins from M = 128 once the shape gives >= ~0.7 waves of 128x128 tiles.
  // f16 at M = 512: qkv 356, o 340, gate_up 402, down 442, logits 457 TFLOP/s (mma.sync best: 223-268);
  // w8 at M = 512: 265, 264, 286, 361, 323 (a deeper 6-stage w8 pipeline measured the same as 5).
  // M <= 64 (batched decode), measured on H200 (--tune, stop 14; ms per matrix, best / before): the 32x32 tile
  // (#4) wins wherever the 32x64 one (#2 f16, #1 w8) gives under 2 waves at M <= 32 (qkv f16 0.0384 / 0.0414,
  // w8 0.0403 / 0.0473 at M = 32; N = 4096 already took it) and under 1 wave at M = 33..64 (f16 o 0.0233 /
  // 0.0280, down 0.0468 / 0.0608; w8 o 0.0282 / 0.0330, down 0.0580 / 0.0755); gate_up (344 CTAs of 32x64)
  // stays on the 32x64 tile (f16 0.0512 against 0.0635 on #4). Not changed: logits at M <= 64 (#3 / #4 or
  // wgmma 64x128 measured 19-22% faster than #2, once per step).
  {9, 0, true, "H100 sm_90a wgmma",
   {{32, 2, 4, 2.0f}, {64, 2, 4, 1.0f}, {128, 100, 2, 0.7f}, {384, 100, 102, 0.9f}, {kAnyM, 100, 100, 0}},
   {{32, 1, 4, 2.0f}, {64, 0, 1, 2.5f, 4}, {128, 100, 1, 0.7f}, {kAnyM, 100, 100, 0}}},
  // H100 / H200 without the sm_90a translation unit: mma.sync only (measured on H100 SXM).
  {9, 0, false, "H100 sm_90 mma.sync",
   {{32, 2, 4, 0.9f}, {64, 2, 2, 0}, {128, 1, 2, 4.0f}, {kAnyM, 0, 0, 0}},
   {{32, 1, 4, 0.9f}, {64, 0, 1, 2.5f}, {128, 3, 1, 0.7f}, {kAnyM, 3, 3, 0}}},
  // A100 (sm_80: 108 SMs, 164 KB smem/SM, 163 KB per block, 40 MB L2): the H100 mma.sync choices (not measured
  // on an A100; every configuration used fits its shared memory).
  {8, 0, false, "A100 sm_80",
   {{32, 2, 4, 0.9f}, {64, 2, 2, 0}, {128, 1, 2, 4.0f}, {kAnyM, 0, 0, 0}},
   {{32, 1, 4, 0.9f}, {64, 0, 1, 2.5f}, {128, 3, 1, 0.7f}, {kAnyM, 3, 3, 0}}},
  // A10 / RTX 30xx (sm_86: 72-84 SMs, 100 KB smem/SM, 99 KB per block): configurations <= 81 KB (not measured).
  {8, 6, false, "A10 sm_86",
   {{32, 2, 4, 0.9f}, {64, 2, 2, 0}, {128, 1, 2, 4.0f}, {kAnyM, 0, 0, 0}},
   {{32, 1, 4, 0.9f}, {64, 0, 1, 2.5f}, {128, 0, 1, 4.0f}, {kAnyM, 2, 2, 0}}},
  // L4 / RTX 40xx (sm_89: 58-128 SMs, 100 KB smem/SM, 99 KB per block): as sm_86 (not measured).
  {8, 9, false, "L4 sm_89",
   {{32, 2, 4, 0.9f}, {64, 2, 2, 0}, {128, 1, 2, 4.0f}, {kAnyM, 0, 0, 0}},
   {{32, 1, 4, 0.9f}, {64, 0, 1, 2.5f}, {128, 0, 1, 4.0f}, {kAnyM, 2, 2, 0}}},
  // Anything else (other 8.x, newer GPUs through the compute_90 PTX): the A100 choices; a configuration that
  // does not fit the device's shared memory falls back to the alternative, then to the smallest one.
  {-1, -1, false, "default (sm_80 table)",
   {{32, 2, 4, 0.9f}, {64, 2, 2, 0}, {128, 1, 2, 4.0f}, {kAnyM, 0, 0, 0}},
   {{32, 1, 4, 0.9f}, {64, 0, 1, 2.5f}, {128, 3, 1, 0.7f}, {kAnyM, 3, 3, 0}}},
};
// clang-format on

// =====================================================================================================
// The kernel
// =====================================================================================================
// W4_: 4-bit weights through the W8 pipeline (a staged quantized tile widened into X), half its tile bytes.
template <int BM_, int BN_, int BK_, int WM_, int WN_, int WK_, int STAGES_, bool W8_, bool W4_ = false>
struct Cfg {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_, WK = WK_, STAGES = STAGES_;
  static constexpr bool W8 = W8_ || W4_, W4 = W4_;
  // Split-K is built into the small tiles only (the decode shapes'); the big ones sit at the register limit.
  static constexpr bool kSplitK = BM_ * BN_ <= 64 * 64;
  static constexpr int kWarps = WM * WN * WK, kThreads = kWarps * 32;
  static constexpr int TM = BM / WM, TN = BN / WN;  // warp tile
  static constexpr int MI = TM / 16, NI = TN / 8;   // mma tiles per warp
  static constexpr int KS = BK / 16;                // k16 steps per k-tile
  static constexpr int C = BK / 8;                  // 16-byte chunks per fp16 smem row
  static constexpr int A_BYTES = BM * BK * 2;
  static constexpr int WST_BYTES = W4 ? BN * BK / 2 : W8 ? BN * BK : BN * BK * 2;  // staged weight tile
  static constexpr int SC_BYTES = W4 ? BN * (BK / 32) * 4 : W8 ? BN * (BK / 32) * 2 : 0;
  static constexpr int STAGE_BYTES = A_BYTES + WST_BYTES + SC_BYTES;
  static constexpr int X_BYTES = W8 ? 2 * BN * BK * 2 : 0;  // dequantized fp16 tiles (double buffer)
  static constexpr int PIPE_BYTES = STAGES * STAGE_BYTES + X_BYTES;
  static constexpr int RED_BYTES = (WK - 1) * BM * BN * 4;
  static constexpr int SMEM = PIPE_BYTES > RED_BYTES ? PIPE_BYTES : RED_BYTES;

  static_assert(BM % (WM * 16) == 0 && BN % (WN * 16) == 0, "warp tile must be a multiple of 16 x 16");
  static_assert(KS % WK == 0, "k16 steps must split evenly across the WK warps");
  static_assert(C == 4 || C == 8, "BK 32 or 64");
  static_assert(STAGE_BYTES % 128 == 0, "stage alignment");
  static_assert(!W8 || (BK == 64 && STAGES >= 3), "W8 needs BK 64 and >= 3 stages");
  static_assert(STAGES >= 2, "stages");
};

// One k-tile of mma for this warp: A tile sA ([BM][BK] swizzled), B tile sB ([BN][BK] swizzled).
template <class CF>
__device__ __forceinline__ void mma_tile(uint32_t sA, uint32_t sB, int wm, int wn, int wk, int lane,
                                         float (&acc)[CF::MI][CF::NI][4]) {
#pragma unroll
  for (int kk = 0; kk < CF::KS / CF::WK; ++kk) {
    const int ks = kk * CF::WK + wk;
    uint32_t a[CF::MI][4];
    uint32_t b[CF::NI][2];
#pragma unroll
    for (int mi = 0; mi < CF::MI; ++mi) {
      int row = wm * CF::TM + mi * 16 + ldsm_a_row(lane);
      ldsm_x4(a[mi], sA + swz<CF::C>(row, 2 * ks + ldsm_a_chunk(lane)) * 2);
    }
#pragma unroll
    for (int nj = 0; nj < CF::NI / 2; ++nj) {
      int row = wn * CF::TN + nj * 16 + ldsm_b_row(lane);
      uint32_t r[4];
      ldsm_x4(r, sB + swz<CF::C>(row, 2 * ks + ldsm_b_chunk(lane)) * 2);
      b[2 * nj][0] = r[0];
      b[2 * nj][1] = r[1];
      b[2 * nj + 1][0] = r[2];
      b[2 * nj + 1][1] = r[3];
    }
#pragma unroll
    for (int mi = 0; mi < CF::MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < CF::NI; ++ni) mma_f16f32(acc[mi][ni], a[mi], b[ni]);
  }
}

template <class CF>
__global__ void __launch_bounds__(CF::kThreads, 1) gemm_kernel(const __grid_constant__ GemmArgs g) {
  L2_DYNAMIC_SMEM(smem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wk = warp / (CF::WM * CF::WN);
  const int wmn = warp % (CF::WM * CF::WN);
  const int wm = wmn / CF::WN, wn = wmn % CF::WN;
  const int m0 = blockIdx.x * CF::BM, n0 = blockIdx.y * CF::BN;
  // Split-K over gridDim.z: this CTA's k-tiles [kb, kb + KT).
  const int S = gridDim.z;
  int kb, KT;
  splitk_range(g.K / CF::BK, kb, KT);

  float acc[CF::MI][CF::NI][4];
#pragma unroll
  for (int mi = 0; mi < CF::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < CF::NI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

  half* X = reinterpret_cast<half*>(smem + CF::STAGES * CF::STAGE_BYTES);  // W8 only
  constexpr int X_ELEMS = CF::BN * CF::BK;

  // Prologue: stages 0 .. STAGES-2 in flight (one commit group each, empty ones included). Their weight
  // tiles go out before the programmatic-dependent-launch wait (they need nothing from the previous
  // kernel), so they land while it finishes; they join commit group 0, which makes the first wait below
  // cover all of them.
#pragma unroll
  for (int s = 0; s < CF::STAGES - 1; ++s)
    if (s < KT) load_stage_w<CF>(g, smem, s, kb + s, n0, tid);
  pdl_trigger();
  pdl_wait();
#pragma unroll
  for (int s = 0; s < CF::STAGES - 1; ++s) {
    if (s < KT) load_stage_a<CF>(g, smem, s, kb + s, m0, tid);
    cp_async_commit();
  }
  if constexpr (CF::W8) {
    cp_async_wait<CF::STAGES - 2>();  // stage 0 landed
    __syncthreads();
    dequant_stage<CF>(smem, 0, X, tid);
  }

  for (int kt = 0; kt < KT; ++kt) {
    // f16: stage kt landed. W8: stage kt + 1 landed (stage kt was dequantized into X[kt & 1] already).
    if constexpr (CF::W8)
      cp_async_wait<CF::STAGES - 3>();
    else
      cp_async_wait<CF::STAGES - 2>();
    __syncthreads();
    {
      // Refill the slot of stage kt - 1: its A was read by the mma of iteration kt - 1 and (W8) its int8
      // tile by the dequantization in iteration kt - 2, both before the barrier above.
      int ktn = kt + CF::STAGES - 1;
      if (ktn < KT) load_stage<CF>(g, smem, ktn % CF::STAGES, kb + ktn, m0, n0, tid);
      cp_async_commit();
    }
    const int slot = kt % CF::STAGES;
    const uint32_t sA = smem_u32(smem + slot * CF::STAGE_BYTES);
    uint32_t sB;
    if constexpr (CF::W8)
      sB = smem_u32(X + (kt & 1) * X_ELEMS);
    else
      sB = sA + CF::A_BYTES;
    mma_tile<CF>(sA, sB, wm, wn, wk, lane, acc);
    if constexpr (CF::W8) {
      // X[(kt + 1) & 1] was last read by the mma of iteration kt - 1 (before this iteration's barrier).
      if (kt + 1 < KT) dequant_stage<CF>(smem, (kt + 1) % CF::STAGES, X + ((kt + 1) & 1) * X_ELEMS, tid);
    }
  }

  // Intra-CTA split-K: warps wk > 0 hand their partial sums to warp wk == 0 through shared memory.
  if constexpr (CF::WK > 1) {
    cp_async_wait<0>();
    __syncthreads();  // everyone is done with the pipeline buffers
    float* red = reinterpret_cast<float*>(smem);
    constexpr int kAcc = CF::MI * CF::NI * 4;
    constexpr int kWmn = CF::WM * CF::WN;
    if (wk > 0) {
      float* dst = red + ((size_t)(wk - 1) * kWmn + wmn) * kAcc * 32 + lane;
#pragma unroll
      for (int mi = 0; mi < CF::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < CF::NI; ++ni)
#pragma unroll
          for (int e = 0; e < 4; ++e) dst[((mi * CF::NI + ni) * 4 + e) * 32] = acc[mi][ni][e];
    }
    __syncthreads();
    if (wk > 0 && (!CF::kSplitK || S == 1)) return;  // (with split-K they still take part in its barriers below)
    if (wk == 0)
#pragma unroll
    for (int w = 1; w < CF::WK; ++w) {
      const float* src = red + ((size_t)(w - 1) * kWmn + wmn) * kAcc * 32 + lane;
#pragma unroll
      for (int mi = 0; mi < CF::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < CF::NI; ++ni)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mi][ni][e] += src[((mi * CF::NI + ni) * 4 + e) * 32];
    }
  }

  // Split-K: the wk == 0 warps hold the tile; the last split CTA of the tile merges and runs the epilogue.
  if constexpr (CF::kSplitK) if (S > 1) {
    constexpr int kAcc = CF::MI * CF::NI * 4, kOwners = CF::WM * CF::WN * 32;  // kOwners * kAcc = BM * BN
    __shared__ int sk_last;
    if (!splitk_merge<kOwners, kAcc>(g, reinterpret_cast<float(&)[kAcc]>(acc), wk == 0, wmn * 32 + lane, sk_last))
      return;
  }

  // Epilogue: thread (g, q) holds (row g, cols 2q, 2q+1) and (row g + 8, same cols) of each 16 x 8 tile.
  const int gq = lane >> 2, qq = lane & 3;
#pragma unroll
  for (int mi = 0; mi < CF::MI; ++mi) {
    const int r0 = m0 + wm * CF::TM + mi * 16 + gq;
#pragma unroll
    for (int ni = 0; ni < CF::NI; ++ni) {
      const int col = n0 + wn * CF::TN + ni * 8 + 2 * qq;
      if (col < g.n_valid) {
        if (r0 < g.M) epilogue_pair(g.epi, r0, col, acc[mi][ni][0], acc[mi][ni][1]);
        if (r0 + 8 < g.M) epilogue_pair(g.epi, r0 + 8, col, acc[mi][ni][2], acc[mi][ni][3]);
      }
    }
  }
}

// =====================================================================================================
// Host side: launch helpers, device properties, selection.
// =====================================================================================================
constexpr int kMaxDevices = 64;

struct DeviceInfo {
  int sms = 0, cc_major = 0, cc_minor = 0, smem_optin = 0, smem_per_sm = 0;
};
DeviceInfo g_dev[kMaxDevices];
std::atomic<int> g_dev_ready[kMaxDevices];

const DeviceInfo& device_info(int& dev) {
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= kMaxDevices) dev = 0;
  if (!g_dev_ready[dev].load(std::memory_order_acquire)) {
    DeviceInfo d;
    cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev);
    cudaDeviceGetAttribute(&d.cc_major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&d.cc_minor, cudaDevAttrComputeCapabilityMinor, dev);
    cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
    g_dev[dev] = d;  // benign race: every writer stores the same values
    g_dev_ready[dev].store(1, std::memory_order_release);
  }
  return g_dev[dev];
}

template <class CF>
struct Launcher {
  static std::atomic<int> attr_set[kMaxDevices];
  static bool fits(const DeviceInfo& d) { return CF::SMEM <= d.smem_optin; }
  static void launch(const GemmArgs& g, int splits, int dev, cudaStream_t stream) {
    if (!attr_set[dev].load(std::memory_order_acquire)) {
      cudaFuncSetAttribute(gemm_kernel<CF>, cudaFuncAttributeMaxDynamicSharedMemorySize, CF::SMEM);
      attr_set[dev].store(1, std::memory_order_release);
    }
    dim3 grid((g.M + CF::BM - 1) / CF::BM, (g.N + CF::BN - 1) / CF::BN, splits);
    kernels::launch(gemm_kernel<CF>, grid, CF::kThreads, CF::SMEM, stream, g);
  }
  static long ctas(int M, int N) { return (long)((M + CF::BM - 1) / CF::BM) * ((N + CF::BN - 1) / CF::BN); }
};
template <class CF>
std::atomic<int> Launcher<CF>::attr_set[kMaxDevices];

struct ConfigEntry {
  const char* name;
  int bm, bn, bk, smem;
  bool split_k;  // Cfg::kSplitK: the split-K merge is compiled in
  bool (*fits)(const DeviceInfo&);
  void (*launch)(const GemmArgs&, int, int, cudaStream_t);
  long (*ctas)(int, int);
};

#define L2_F16_ENTRY(id, BM, BN, BK, WM, WN, WK, S)                                                      \
  {"f16#" #id " " #BM "x" #BN "x" #BK " w" #WM "x" #WN "x" #WK " s" #S, BM, BN, BK,                      \
   Cfg<BM, BN, BK, WM, WN, WK, S, false>::SMEM, Cfg<BM, BN, BK, WM, WN, WK, S, false>::kSplitK,          \
   &Launcher<Cfg<BM, BN, BK, WM, WN, WK, S, false>>::fits,                                               \
   &Launcher<Cfg<BM, BN, BK, WM, WN, WK, S, false>>::launch, &Launcher<Cfg<BM, BN, BK, WM, WN, WK, S, false>>::ctas},
#define L2_W8_ENTRY(id, BM, BN, BK, WM, WN, WK, S)                                                     \
  {"w8#" #id " " #BM "x" #BN "x" #BK " w" #WM "x" #WN "x" #WK " s" #S, BM, BN, BK,                     \
   Cfg<BM, BN, BK, WM, WN, WK, S, true>::SMEM, Cfg<BM, BN, BK, WM, WN, WK, S, true>::kSplitK,          \
   &Launcher<Cfg<BM, BN, BK, WM, WN, WK, S, true>>::fits,                                              \
   &Launcher<Cfg<BM, BN, BK, WM, WN, WK, S, true>>::launch, &Launcher<Cfg<BM, BN, BK, WM, WN, WK, S, true>>::ctas},

#define L2_W4_ENTRY(id, BM, BN, BK, WM, WN, WK, S)                                                     \
  {"w4#" #id " " #BM "x" #BN "x" #BK " w" #WM "x" #WN "x" #WK " s" #S, BM, BN, BK,                     \
   Cfg<BM, BN, BK, WM, WN, WK, S, false, true>::SMEM, Cfg<BM, BN, BK, WM, WN, WK, S, false, true>::kSplitK, \
   &Launcher<Cfg<BM, BN, BK, WM, WN, WK, S, false, true>>::fits,                                       \
   &Launcher<Cfg<BM, BN, BK, WM, WN, WK, S, false, true>>::launch, &Launcher<Cfg<BM, BN, BK, WM, WN, WK, S, false, true>>::ctas},

const ConfigEntry kF16Configs[] = {L2_GEMM_CONFIGS(L2_F16_ENTRY)};
// The W8 geometries with 4-bit tiles: same ids, so the W8 tuning rules (mma.sync rows) choose among them.
const ConfigEntry kW4Configs[] = {L2_GEMM_W8_CONFIGS(L2_W4_ENTRY)};
const ConfigEntry kW8Configs[] = {L2_GEMM_W8_CONFIGS(L2_W8_ENTRY)};
static_assert(sizeof(kF16Configs) / sizeof(kF16Configs[0]) == kNumF16Configs, "f16 config count");
static_assert(sizeof(kW8Configs) / sizeof(kW8Configs[0]) == kNumW8Configs, "w8 config count");

// The weight formats of the host-side selection. Each has its mma.sync table; f16 and int8 also have the
// wgmma configurations of gemm_sm90a.cu on sm_90 (4-bit has none, so it takes the tuning row without
// them). 4-bit uses int8's geometries (same ids) and so int8's rules.
enum class WFmt { F16, W8, W4 };
WFmt fmt_of(bool w8) { return w8 ? WFmt::W8 : WFmt::F16; }

// Configurations as one flat list per weight format: [0, num_mma) mma.sync, then the sm_90a ones.
bool have_sm90a() { return &sm90a::num_configs != nullptr && &sm90a::config != nullptr && &sm90a::launch != nullptr; }
bool has_wgmma(WFmt f) { return f != WFmt::W4 && have_sm90a(); }
const ConfigEntry* mma_table(WFmt f) { return f == WFmt::F16 ? kF16Configs : f == WFmt::W8 ? kW8Configs : kW4Configs; }
int num_mma(WFmt f) { return f == WFmt::F16 ? kNumF16Configs : kNumW8Configs; }
int num_all(WFmt f) { return num_mma(f) + (has_wgmma(f) ? sm90a::num_configs(f == WFmt::W8) : 0); }
sm90a::ConfigInfo wgmma_config(WFmt f, int id) { return sm90a::config(f == WFmt::W8, id - num_mma(f)); }
const char* cfg_name(WFmt f, int id) { return id < num_mma(f) ? mma_table(f)[id].name : wgmma_config(f, id).name; }
int cfg_smem(WFmt f, int id) { return id < num_mma(f) ? mma_table(f)[id].smem : wgmma_config(f, id).smem; }
long cfg_ctas(WFmt f, int id, int M, int N) {
  int bm, bn;
  if (id < num_mma(f)) {
    bm = mma_table(f)[id].bm, bn = mma_table(f)[id].bn;
  } else {
    const sm90a::ConfigInfo c = wgmma_config(f, id);
    bm = c.bm, bn = c.bn;
  }
  return (long)((M + bm - 1) / bm) * ((N + bn - 1) / bn);
}
bool cfg_fits(WFmt f, int id, const DeviceInfo& d) {
  if (id < 0 || id >= num_all(f)) return false;
  if (id >= num_mma(f) && !(d.cc_major == 9 && d.cc_minor == 0)) return false;  // sm_90a code runs on 9.0 only
  return cfg_smem(f, id) <= d.smem_optin;
}
// Table id (100 + i = sm_90a config i) -> flat id; -1 when that path is absent.
int flat_id(WFmt f, int table_id) {
  if (table_id < kSm90aBase) return table_id;
  int i = table_id - kSm90aBase;
  return has_wgmma(f) && i < sm90a::num_configs(f == WFmt::W8) ? num_mma(f) + i : -1;
}

const ArchTuning& tuning_for(const DeviceInfo& d, WFmt f) {
  for (const ArchTuning& t : kTuning) {
    bool cc = (t.cc_major == d.cc_major && t.cc_minor == d.cc_minor) || t.cc_major < 0;
    if (cc && (!t.needs_sm90a || has_wgmma(f))) return t;
  }
  return kTuning[sizeof(kTuning) / sizeof(kTuning[0]) - 1];
}

// LLAMA2_GEMM_WGMMA_MIN_M=m (A/B switch, unset = 0 = off; not measured yet): on sm_90a, batches of m..64
// rows take the 64-row wgmma tile (f16 102, w8 101) with split-K chosen by waves. Why it may win at 33..64:
// the 32-row mma.sync tiles read every weight tile twice from L2 (two M tiles) and the activations once per
// 64 columns (H200 f16 down at M = 64: ~270 MB of L2 reads for 90 MB of weights, 0.044 ms = 2.05 TB/s), and
// streaming weights at 4.2 TB/s at M = 64 takes ~270 TFLOP/s, above what this file's mma.sync kernels reach
// at any M (223-275 measured on the H100); one 64 x 128 wgmma tile reads each weight once and the
// activations once per 128 columns.
std::atomic<int> g_wgmma_min_m{kKnobUnread};
int wgmma_min_m() {
  return env_knob(g_wgmma_min_m, "LLAMA2_GEMM_WGMMA_MIN_M", [](const char* v) {
    const int m = v ? std::atoi(v) : 0;
    return m >= 1 && m <= 64 ? m : 0;
  });
}

int pick(WFmt f, int M, int N, const DeviceInfo& d) {
  const int small_min = wgmma_min_m();
  if (small_min > 0 && M >= small_min && M <= 64) {
    const int id = flat_id(f, f == WFmt::W8 ? kSm90aBase + 1 : kSm90aBase + 2);
    if (id >= 0 && cfg_fits(f, id, d)) return id;
  }
  const ArchTuning& t = tuning_for(d, f);
  const Rule* rules = f == WFmt::F16 ? t.f16 : t.w8;
  const Rule* r = nullptr;
  for (int i = 0; i < kMaxRules && rules[i].max_m > 0; ++i)
    if (M <= rules[i].max_m) {
      r = &rules[i];
      break;
    }
  int id = -1;
  if (r) {
    int first = flat_id(f, r->cfg), alt = flat_id(f, r->alt);
    id = first;
    if (first >= 0 && cfg_ctas(f, first, M, N) < (long)(r->min_waves * d.sms)) id = alt;
    if (id == alt && r->small >= 0 && alt >= 0 && cfg_ctas(f, alt, M, N) < d.sms) id = flat_id(f, r->small);
    if (!cfg_fits(f, id, d)) id = cfg_fits(f, first, d) ? first : (cfg_fits(f, alt, d) ? alt : -1);
  }
  if (id < 0) {  // nothing chosen fits this device: the smallest-smem mma.sync configuration
    id = 0;
    for (int i = 1; i < num_mma(f); ++i)
      if (cfg_smem(f, i) < cfg_smem(f, id)) id = i;
  }
  return id;
}

// Split-K for a memory-bound shape whose tiles would leave SMs idle, so more weight bytes are in flight; only
// with a workspace that holds the partial tiles (the backend passes none under LLAMA2_GEMM_SPLITK=1) and
// never leaving a split under 4 k-tiles or empty. g_splits (tests): 0 = this choice, 1 = never, n = n.
//  - mma.sync tiles (the N = 4096 matrices at decode batches: 128-256 CTAs of 32 x 32 on 132 SMs): up to 4
//    splits, to ~2 CTAs per SM (measured, stop 15).
//  - 64-row wgmma tiles (one CTA per SM: 145-155 KB of shared memory): by waves, the s in 1..8 that minimizes
//    the k-tiles the busiest SM streams, ceil(tiles * s / slots) * ceil(KT / s), smallest s on ties
//    (H200 at M = 64: qkv 96 tiles -> 4 splits, o 32 -> 4, gate_up 172 -> 3, down 32 -> 4, logits 250 -> 1).
std::atomic<int> g_splits{0};
struct TileShape {
  int bm, bn, bk, smem;
  bool split_k, by_waves;
};
int choose_splits(const TileShape& c, int M, int N, int K, const DeviceInfo& d, const GemmSplitK* sk) {
  if (!sk || !sk->ws || !sk->counters || !c.split_k) return 1;
  const long tiles = (long)((M + c.bm - 1) / c.bm) * ((N + c.bn - 1) / c.bn);
  const int KT = K / c.bk;
  auto ok = [&](int s) {  // >= 4 k-tiles per split, the last one not empty, the workspace big enough
    if (s < 2) return false;
    const int per = (KT + s - 1) / s;
    return per >= 4 && (long)per * (s - 1) < KT && tiles <= sk->n_counters &&
           (size_t)tiles * s * c.bm * c.bn * sizeof(float) <= sk->ws_bytes;
  };
  const int forced = g_splits.load(std::memory_order_relaxed);
  if (forced > 0) return ok(forced) ? forced : 1;
  if (M > 64) return 1;
  if (!c.by_waves) {
    if (tiles >= 2L * d.sms) return 1;
    int s = (int)std::min<long>(4, (2L * d.sms + tiles - 1) / tiles);
    s = std::min(s, KT / 4);
    return ok(s) ? s : 1;
  }
  const long slots = (long)d.sms * std::max(1, d.smem_per_sm / (c.smem + 1024));  // + the 1 KB the driver keeps per CTA
  int best = 1;
  long best_cost = KT * ((tiles + slots - 1) / slots);
  for (int s = 2; s <= 8; ++s) {
    if (!ok(s)) continue;
    const long cost = ((tiles * s + slots - 1) / slots) * ((KT + s - 1) / s);
    if (cost < best_cost) best = s, best_cost = cost;
  }
  return best;
}

// The split count configuration `cfg` launches with for this shape.
int splits_for(WFmt f, int cfg, int M, int N, int K, const DeviceInfo& d, const GemmSplitK* sk) {
  if (cfg < num_mma(f)) {
    const ConfigEntry& c = mma_table(f)[cfg];
    return choose_splits({c.bm, c.bn, c.bk, c.smem, c.split_k, false}, M, N, K, d, sk);
  }
  const sm90a::ConfigInfo c = wgmma_config(f, cfg);
  return choose_splits({c.bm, c.bn, 64, c.smem, c.split_k, true}, M, N, K, d, sk);
}

// W: fp16 [N][ldw] (F16), int8 [N][ldw] (W8) or 4-bit [N][ldw / 2] (W4); scales: W8's fp16 group scales or
// W4's (scale, bias) pairs. cfg < 0 (the engine): the tuning's choice.
void run(WFmt f, int cfg, const half* A, int lda, const void* W, const half* scales, int ldw, int M, int N,
         int n_valid, int K, const Epilogue& epi, cudaStream_t stream, const GemmSplitK* sk = nullptr) {
  if (M <= 0 || N <= 0 || K <= 0 || n_valid <= 0) return;
  int dev = 0;
  const DeviceInfo& d = device_info(dev);
  if (!cfg_fits(f, cfg, d)) cfg = pick(f, M, N, d);
  GemmArgs g;
  g.A = A;
  g.W = W;
  g.scales = scales;
  g.lda = lda;
  g.ldw = ldw;
  g.M = M;
  g.N = N;
  g.n_valid = n_valid < N ? n_valid : N;
  g.K = K;
  g.epi = epi;
  const int splits = splits_for(f, cfg, M, N, K, d, sk);
  if (splits > 1) g.sk_ws = sk->ws, g.sk_counters = sk->counters;
  if (cfg < num_mma(f))
    mma_table(f)[cfg].launch(g, splits, dev, stream);
  else  // decode-sized launches use PDL, as the mma.sync kernels do; the prefill ones stay plain (as measured)
    sm90a::launch(f == WFmt::W8, cfg - num_mma(f), g, splits, M <= 64, dev, stream);
}

std::atomic<int> g_w4_cfg{-1};  // tests: a fixed 4-bit configuration (-1: the tuning's choice)

}  // namespace

void gemm_w4(const half* A, int lda, const uint8_t* Wq, const half2* meta, int ldw, int M, int N, int n_valid, int K,
             const Epilogue& epi, cudaStream_t stream, const GemmSplitK* sk) {
  run(WFmt::W4, g_w4_cfg.load(std::memory_order_relaxed), A, lda, Wq, reinterpret_cast<const half*>(meta), ldw, M, N,
      n_valid, K, epi, stream, sk);
}

void gemm_f16(const half* A, int lda, const half* W, int ldw, int M, int N, int n_valid, int K, const Epilogue& epi,
              cudaStream_t stream, const GemmSplitK* sk) {
  run(WFmt::F16, -1, A, lda, W, nullptr, ldw, M, N, n_valid, K, epi, stream, sk);
}

void gemm_w8(const half* A, int lda, const int8_t* Wq, const half* scales, int ldw, int M, int N, int n_valid, int K,
             const Epilogue& epi, cudaStream_t stream, const GemmSplitK* sk) {
  run(WFmt::W8, -1, A, lda, Wq, scales, ldw, M, N, n_valid, K, epi, stream, sk);
}

// Test / tuning hooks (declared by kernels/tests/test_gemm.cu; not part of the engine's interface).
// Configuration ids are the flat ones: mma.sync first, then the sm_90a ones when linked.
namespace gemm_detail {
int num_configs(bool w8) { return num_all(fmt_of(w8)); }
const char* config_name(bool w8, int i) { return cfg_name(fmt_of(w8), i); }
int config_smem(bool w8, int i) { return cfg_smem(fmt_of(w8), i); }
bool config_fits(bool w8, int i) {
  int dev = 0;
  return cfg_fits(fmt_of(w8), i, device_info(dev));
}
int pick_config(bool w8, int M, int N) {
  int dev = 0;
  return pick(fmt_of(w8), M, N, device_info(dev));
}
const char* tuning_name() {
  int dev = 0;
  return tuning_for(device_info(dev), WFmt::F16).gpu;
}
void run_config(bool w8, int cfg, const half* A, int lda, const void* W, const half* scales, int ldw, int M, int N,
                int n_valid, int K, const Epilogue& epi, cudaStream_t stream, const GemmSplitK* sk) {
  run(fmt_of(w8), cfg, A, lda, W, scales, ldw, M, N, n_valid, K, epi, stream, sk);
}
void set_splits(int n) { g_splits.store(n); }
bool config_splits(bool w8, int i) {
  const WFmt f = fmt_of(w8);
  if (i < 0 || i >= num_all(f)) return false;
  return i < num_mma(f) ? mma_table(f)[i].split_k : wgmma_config(f, i).split_k;
}
void set_wgmma_min_m(int m) { g_wgmma_min_m.store(m); }
void set_w4_config(int i) { g_w4_cfg.store(i); }
int num_w4_configs() { return num_all(WFmt::W4); }
const char* w4_config_name(int i) { return i >= 0 && i < num_all(WFmt::W4) ? cfg_name(WFmt::W4, i) : "?"; }
int pick_w4_config(int M, int N) {
  int dev = 0;
  return pick(WFmt::W4, M, N, device_info(dev));
}
// The split count run() would launch configuration i with, given the backend's workspace sizes.
int chosen_splits(bool w8, int i, int M, int N, int K) {
  const WFmt f = fmt_of(w8);
  if (i < 0 || i >= num_all(f)) return 1;
  int dev = 0;
  GemmSplitK sk;  // sizes only: choose_splits never dereferences the pointers
  sk.ws = reinterpret_cast<float*>(alignof(float));
  sk.counters = reinterpret_cast<int*>(alignof(int));
  sk.ws_bytes = kGemmSplitKBytes;
  sk.n_counters = kGemmSplitKCounters;
  return splits_for(f, i, M, N, K, device_info(dev), &sk);
}
}  // namespace gemm_detail

}  // namespace l2::kernels
