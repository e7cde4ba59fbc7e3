// Hopper (sm_90a only) GEMM path for gemm_f16 / gemm_w8: wgmma.mma_async (warpgroup MMA, A and B straight
// from shared memory through matrix descriptors), fed by the same cp.async stage loader as the mma.sync path
// (gemm_common.cuh). Built in its own translation unit with -gencode arch=compute_90a,code=sm_90a; gemm.cu
// reaches it through weak symbols and uses it only on compute capability 9.0 when it is linked in.
//
// CTA: WGS warpgroups (128 threads each), warpgroup w computing rows [64 w, 64 w + 64) x all BN columns with
// one m64nBNk16 wgmma per k16 step; BK = 64 so a tile row is exactly one 128-byte swizzle row: the loader's
// XOR swizzle (chunk ^ row % 8, tiles 1024-byte aligned) is the hardware's 128B swizzle, descriptors use
// SBO = 1024 (8 rows), LBO unused, and the k16 step advances the start address by 32 bytes.
// Pipeline (STAGES slots, STAGES - 2 k-tiles in flight): iteration kt waits for tile kt, fences the generic
// -> async proxy, barriers, refills the slot of tile kt - 2 (its wgmma retired by wait_group 1 in iteration
// kt - 1), issues 4 async wgmmas and keeps one wgmma group in flight across the next barrier.
// W8: int8 tiles are dequantized one k-tile ahead into a 3-deep ring of fp16 tiles, while the wgmmas run.
// The one-warpgroup (64-row) tiles also serve batched decode (M <= 64, gemm.cu's LLAMA2_GEMM_WGMMA_MIN_M):
// there they split K over gridDim.z (gemm_common.cuh's splitk_merge, as the mma.sync tiles), and are launched
// with PDL, their first weight tiles loaded before the wait on the previous kernel.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "epilogue.cuh"
#include "gemm_common.cuh"
#include "kernels.h"
#include "launch.cuh"
#include "mma.cuh"

namespace l2::kernels {
namespace sm90a {

using namespace l2::kernels::mma;
using namespace l2::kernels::gemm_common;

namespace {

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "gemm_sm90a.cu must be compiled for sm_90a only (-gencode arch=compute_90a,code=sm_90a)"
#endif

__device__ __forceinline__ uint64_t make_desc(uint32_t saddr) {
  return (uint64_t)((saddr & 0x3FFFFu) >> 4)  // start address
         | ((uint64_t)1 << 16)                 // leading byte offset (unused for swizzled K-major)
         | ((uint64_t)(1024 >> 4) << 32)       // stride byte offset: 8 rows x 128 B
         | ((uint64_t)1 << 62);                // 128-byte swizzle
}
#ifdef L2_SIMT_EMU
// Host emulation (kernels/emu/simt.cc): wgmma queued per thread and performed at the wait_group retiring it.
inline void fence_proxy_async() {}
inline void wgmma_fence() {}
inline void wgmma_commit() { l2emu::wgmma_commit(); }
template <int N>
inline void wgmma_wait() {
  l2emu::wgmma_wait(N);
}
template <int N>
inline void fence_acc(float (&)[N]) {}
template <int BN>
inline void wgmma_k16(float (&d)[BN / 2], uint64_t da, uint64_t db) {
  l2emu::wgmma_f16(d, BN / 2, da, db, true);
}
#else
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from touching the accumulators across an in-flight wgmma (no instruction emitted).
template <int N>
__device__ __forceinline__ void fence_acc(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D[64 x 128] += A[64 x 16] (smem, K-major) . B[128 x 16]^T (smem, K-major), f16 in, f32 accumulate.
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(1));
}

// D[64 x 256] += A[64 x 16] (smem, K-major) . B[256 x 16]^T (smem, K-major), f16 in, f32 accumulate.
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(da), "l"(db), "r"(1));
}

template <int BN>
__device__ __forceinline__ void wgmma_k16(float (&d)[BN / 2], uint64_t da, uint64_t db) {
  if constexpr (BN == 128)
    wgmma_m64n128k16(d, da, db);
  else
    wgmma_m64n256k16(d, da, db);
}
#endif  // L2_SIMT_EMU

template <int WGS_, int BN_, int STAGES_, bool W8_>
struct Cfg {
  static constexpr int WGS = WGS_, BM = 64 * WGS_, BN = BN_, BK = 64, C = 8, STAGES = STAGES_;
  static constexpr bool W8 = W8_;
  // Split-K is built into the one-warpgroup (64-row) tiles only: the batched-decode shapes (M <= 64).
  static constexpr bool kSplitK = WGS_ == 1;
  static constexpr int kThreads = 128 * WGS;
  static constexpr int A_BYTES = BM * BK * 2;
  static constexpr int WST_BYTES = W8 ? BN * BK : BN * BK * 2;
  static constexpr int SC_BYTES = W8 ? BN * (BK / 32) * 2 : 0;
  static constexpr int STAGE_BYTES = (A_BYTES + WST_BYTES + SC_BYTES + 1023) / 1024 * 1024;
  static constexpr int X_TILE = BN * BK * 2;  // bytes of one dequantized fp16 tile
  static constexpr int X_BYTES = W8 ? 3 * X_TILE : 0;
  static constexpr int SMEM = STAGES * STAGE_BYTES + X_BYTES + 1024;  // + alignment slack
  static_assert(BN == 128 || BN == 256, "wgmma n");
  static_assert(STAGES >= (W8 ? 4 : 3), "stages");
  static_assert(A_BYTES % 1024 == 0 && (W8 || WST_BYTES % 1024 == 0), "1024-byte aligned tiles");
};

template <class CF>
__global__ void __launch_bounds__(CF::kThreads, 1) gemm_wgmma_kernel(const __grid_constant__ GemmArgs g) {
  L2_DYNAMIC_SMEM(smem_raw);
  unsigned char* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, wq = (tid >> 5) & 3;
  const int m0 = blockIdx.x * CF::BM, n0 = blockIdx.y * CF::BN;
  // Split-K over gridDim.z (kSplitK configurations): this CTA's k-tiles [kb, kb + KT).
  int kb = 0, KT = g.K / CF::BK;
  if constexpr (CF::kSplitK) splitk_range(g.K / CF::BK, kb, KT);
  constexpr int NS = CF::STAGES;

  float acc[CF::BN / 2];
#pragma unroll
  for (int i = 0; i < CF::BN / 2; ++i) acc[i] = 0.f;
  half* X = reinterpret_cast<half*>(smem + NS * CF::STAGE_BYTES);
  constexpr int X_ELEMS = CF::X_TILE / 2;

  // Prologue: the weight tiles first, before the programmatic-dependent-launch wait (a no-op unless launched
  // with PDL: they need nothing from the previous kernel); they join commit group 0 with the first A tile.
#pragma unroll
  for (int s = 0; s < NS - 2; ++s)
    if (s < KT) load_stage_w<CF>(g, smem, s, kb + s, n0, tid);
  if (g.pdl) pdl_trigger();
  pdl_wait();
#pragma unroll
  for (int s = 0; s < NS - 2; ++s) {
    if (s < KT) load_stage_a<CF>(g, smem, s, kb + s, m0, tid);
    cp_async_commit();
  }
  if constexpr (CF::W8) {
    cp_async_wait<NS - 3>();  // tile 0 landed
    __syncthreads();
    dequant_stage<CF>(smem, 0, X, tid);
  }

  for (int kt = 0; kt < KT; ++kt) {
    // f16: tile kt landed. W8: tile kt + 1 landed (tile kt is already dequantized into X[kt % 3]).
    if constexpr (CF::W8)
      cp_async_wait<NS - 4>();
    else
      cp_async_wait<NS - 3>();
    fence_proxy_async();  // this thread's cp.async / dequant writes -> visible to the async proxy (wgmma)
    __syncthreads();
    {
      const int ktn = kt + NS - 2;  // slot of tile kt - 2: its wgmma retired (wait_group 1 in iteration kt - 1)
      if (ktn < KT) load_stage<CF>(g, smem, ktn % NS, kb + ktn, m0, n0, tid);
      cp_async_commit();
    }
    const int slot = kt % NS;
    const uint32_t a_base = smem_u32(smem + slot * CF::STAGE_BYTES) + wg * (64 * 128);
    uint32_t b_base;
    if constexpr (CF::W8)
      b_base = smem_u32(X + (kt % 3) * X_ELEMS);
    else
      b_base = smem_u32(smem + slot * CF::STAGE_BYTES + CF::A_BYTES);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < 4; ++k) wgmma_k16<CF::BN>(acc, make_desc(a_base + 32 * k), make_desc(b_base + 32 * k));
    wgmma_commit();
    if constexpr (CF::W8) {
      // X[(kt + 1) % 3] was last read by the wgmmas of tile kt - 2 (retired before this iteration's barrier).
      if (kt + 1 < KT) dequant_stage<CF>(smem, (kt + 1) % NS, X + ((kt + 1) % 3) * X_ELEMS, tid);
    }
    wgmma_wait<1>();
    fence_acc(acc);
  }
  wgmma_wait<0>();
  fence_acc(acc);

  // Split-K: every thread holds a slice of the tile; the last split CTA of the tile merges and runs the epilogue.
  if constexpr (CF::kSplitK) if (gridDim.z > 1) {
    cp_async_wait<0>();  // (empty groups only: every tile was consumed)
    __shared__ int sk_last;
    if (!splitk_merge<CF::kThreads, CF::BN / 2>(g, acc, true, tid, sk_last)) return;
  }

  // Accumulator layout (per warp, like mma.sync's C): d[4j + 0, 1] = (row g, cols 8j + 2q, +1), d[4j + 2, 3] = row g + 8.
  const int gq = lane >> 2, qq = lane & 3;
  const int r0 = m0 + wg * 64 + wq * 16 + gq;
#pragma unroll
  for (int j = 0; j < CF::BN / 8; ++j) {
    const int col = n0 + 8 * j + 2 * qq;
    if (col < g.n_valid) {
      if (r0 < g.M) epilogue_pair(g.epi, r0, col, acc[4 * j], acc[4 * j + 1]);
      if (r0 + 8 < g.M) epilogue_pair(g.epi, r0 + 8, col, acc[4 * j + 2], acc[4 * j + 3]);
    }
  }
}

constexpr int kMaxDevices = 64;
template <class CF>
struct Launcher {
  static std::atomic<int> attr_set[kMaxDevices];
  static void launch(const GemmArgs& g, int splits, bool pdl, int dev, cudaStream_t stream) {
    if (!attr_set[dev].load(std::memory_order_acquire)) {
      cudaFuncSetAttribute(gemm_wgmma_kernel<CF>, cudaFuncAttributeMaxDynamicSharedMemorySize, CF::SMEM);
      attr_set[dev].store(1, std::memory_order_release);
    }
    dim3 grid((g.M + CF::BM - 1) / CF::BM, (g.N + CF::BN - 1) / CF::BN, CF::kSplitK && splits > 1 ? splits : 1);
    GemmArgs a = g;
    a.pdl = pdl && pdl_enabled();
    if (a.pdl)
      kernels::launch(gemm_wgmma_kernel<CF>, grid, CF::kThreads, CF::SMEM, stream, a);
    else
      kernels::launch_plain(gemm_wgmma_kernel<CF>, grid, CF::kThreads, CF::SMEM, stream, a);
  }
};
template <class CF>
std::atomic<int> Launcher<CF>::attr_set[kMaxDevices];

struct Entry {
  ConfigInfo info;
  void (*launch)(const GemmArgs&, int, bool, int, cudaStream_t);
};
#define L2_SM90A_ENTRY(WGS, BN, S, W8, NAME) \
  {{NAME, 64 * WGS, BN, Cfg<WGS, BN, S, W8>::SMEM, Cfg<WGS, BN, S, W8>::kSplitK}, &Launcher<Cfg<WGS, BN, S, W8>>::launch},
// clang-format off
const Entry kF16[] = {  // ids as in gemm.cu's kTuning (100 + index)
  L2_SM90A_ENTRY(2, 128, 6, false, "f16 wgmma 128x128x64 s6")
  L2_SM90A_ENTRY(2, 256, 4, false, "f16 wgmma 128x256x64 s4")
  L2_SM90A_ENTRY(1, 128, 6, false, "f16 wgmma 64x128x64 s6")
  // 97 KB: two CTAs per SM, so with PDL the next GEMM's CTAs load their first weight tiles beside this one's
  // (batched decode: ~25 us per launch at M = 64); timed by --tune against s6, not chosen by any table yet.
  L2_SM90A_ENTRY(1, 128, 4, false, "f16 wgmma 64x128x64 s4")
};
const Entry kW8[] = {
  L2_SM90A_ENTRY(2, 128, 5, true, "w8 wgmma 128x128x64 s5")
  L2_SM90A_ENTRY(1, 128, 6, true, "w8 wgmma 64x128x64 s6")
};
// Tuning history (H100 SXM): f16 128x128 s4 (-3%), 64x256 s5; w8 64x256 s4, 128x128 s6 (= s5) were dropped.
// clang-format on

}  // namespace

int num_configs(bool w8) { return w8 ? (int)(sizeof(kW8) / sizeof(kW8[0])) : (int)(sizeof(kF16) / sizeof(kF16[0])); }
ConfigInfo config(bool w8, int i) { return (w8 ? kW8 : kF16)[i].info; }
void launch(bool w8, int i, const GemmArgs& g, int splits, bool pdl, int dev, cudaStream_t stream) {
  (w8 ? kW8 : kF16)[i].launch(g, splits, pdl, dev, stream);
}

}  // namespace sm90a
}  // namespace l2::kernels
