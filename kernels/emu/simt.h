// l2emu: runs our CUDA kernels on the host, for machines without a GPU. Force-included (g++ -include) when
// kernels/*.cu and kernels/tests/*.cu are compiled as C++ with -DL2_SIMT_EMU (scripts/build-kernel-tests-emu.sh).
//
// What it models: every thread of a block is a fiber (its own stack, cooperative switches), blocks run one
// after another (shared memory is poisoned before each). __syncthreads waits for every live thread of the block; warp collectives (shuffles,
// ldmatrix, mma.sync) wait for every lane of the warp and exchange values as the PTX ISA defines them;
// cp.async copies land only at the cp.async.wait_group that covers them, so a kernel reading a stage before
// waiting sees stale data (L2EMU_CP_ASYNC=early: at issue instead, so refilling a stage that is still being
// read gives wrong numbers). Device memory is host memory between guard pages, so an out-of-bounds access
// stops the run with the kernel's block and thread. Shared memory: static __shared__ arrays become
// function statics in one section (blocks run one at a time), dynamic shared memory is one buffer; both
// are poisoned (NaN bytes) before every block.
// What it does not model: timing, memory ordering between blocks, races inside a barrier interval (the
// thread order inside an interval is forward, reverse or shuffled: L2EMU_ORDER=forward|reverse|shuffle, so
// running twice with different orders exposes most of them), the approximate math of --use_fast_math
// (host math is IEEE). The emulated device is an sm_80 (A100-like), or with L2EMU_CC=86 an sm_86 (A10-like), or
// with L2EMU_CC=90 an sm_90 (H100-like) that also runs the sm_90a wgmma GEMM (its wgmma, as the PTX ISA
// defines it, in simt.cc; TMA and mbarriers are not modelled: no kernel of ours uses them).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

// Static __shared__ arrays: function statics gathered in one section, which the emulator poisons (NaN
// bytes) before every block, so stale values of an earlier block or launch cannot hide a missing write.
#undef __shared__
#define __shared__ static __attribute__((section("l2emu_shared")))
#ifndef __grid_constant__
#define __grid_constant__
#endif
#undef __launch_bounds__
#define __launch_bounds__(...)

// fma.rn.f16x2 (cuda_fp16.hpp declares __hfma2 for the device only): the exact a * b + c in double, rounded once
// to fp16 (a double rounding only when the exponents of a * b and c lie more than ~30 apart).
inline __half2 __hfma2(const __half2 a, const __half2 b, const __half2 c) {
  const float2 x = __half22float2(a), y = __half22float2(b), z = __half22float2(c);
  return __halves2half2(__double2half((double)x.x * y.x + z.x), __double2half((double)x.y * y.y + z.y));
}

namespace l2emu {

// The running thread (fiber) of the current block.
int lane();
int warp_in_block();
void syncthreads();
// Warp collective: every live lane of the warp deposits `bytes` (<= 64) bytes; returns the 32 slots
// (slot i = lane i's bytes, kSlot apart) once every lane has arrived. `mask` must name the live lanes.
constexpr int kSlot = 64;
const unsigned char* warp_exchange(unsigned mask, const void* mine, int bytes);
[[noreturn]] void fail(const char* fmt, ...);

// Shared-memory "addresses" (the u32 of cvta.to.shared): an index into the shared objects the emulator knows.
uint32_t smem_addr(const void* p);
void* smem_ptr(uint32_t addr, int bytes);
unsigned char* dynamic_smem();

// cp.async: queued per thread, performed at the wait that covers its commit group.
void cp_async(uint32_t dst, const void* src, int bytes, bool valid);
void cp_async_commit();
void cp_async_wait(int n_pending);

// wgmma (sm_90a): queued per thread at issue, performed at the wait_group that retires its group.
void wgmma_f16(float* d, int n, uint64_t da, uint64_t db, bool scale_d);
void wgmma_commit();
void wgmma_wait(int n_pending);

// Runs fn on every thread of every block of the grid (blocks in order); returns false with the reason in
// last_error() when the kernel failed (deadlock, bad collective, ...).
bool run_grid(dim3 grid, dim3 block, size_t dyn_smem, const std::function<void()>& fn);

}  // namespace l2emu

// ---- CUDA built-ins ----
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

inline void __syncthreads() { l2emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  int z = 0;
  l2emu::warp_exchange(mask, &z, 4);
}

template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  static_assert(sizeof(T) <= l2emu::kSlot, "shuffle size");
  const unsigned char* s = l2emu::warp_exchange(mask, &v, (int)sizeof(T));
  const int l = l2emu::lane(), base = l & ~(width - 1);
  T r;
  std::memcpy(&r, s + (base + (src & (width - 1))) * l2emu::kSlot, sizeof(T));
  return r;
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return __shfl_sync(mask, v, (l2emu::lane() ^ lane_mask) & (width - 1), width);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int l = l2emu::lane() & (width - 1);
  return __shfl_sync(mask, v, l + (int)delta < width ? l + (int)delta : l, width);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int l = l2emu::lane() & (width - 1);
  return __shfl_sync(mask, v, l >= (int)delta ? l - (int)delta : l, width);
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
  const unsigned char* s = l2emu::warp_exchange(mask, &pred, (int)sizeof(int));
  unsigned r = 0;
  for (int l = 0; l < 32; ++l) {
    int v;
    std::memcpy(&v, s + l * l2emu::kSlot, sizeof v);
    if ((mask >> l) & 1u && v) r |= 1u << l;
  }
  return r;
}
inline int __ffs(unsigned x) { return x ? __builtin_ctz(x) + 1 : 0; }
inline int __ffs(int x) { return __ffs((unsigned)x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }

template <class T>
inline T __ldg(const T* p) {
  return *p;
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = ((uint64_t)y << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline int __float_as_int(float f) { return (int)__float_as_uint(f); }
inline float __int_as_float(int i) { return __uint_as_float((unsigned)i); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.f / a; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline size_t __cvta_generic_to_shared(const void* p) { return l2emu::smem_addr(p); }
using std::max;
using std::min;

// Atomics: fibers switch only at barriers and collectives, so a plain read-modify-write is atomic.
namespace l2emu {
template <class T, class F>
inline T rmw(T* p, F f) {
  const T old = *p;
  *p = f(old);
  return old;
}
}  // namespace l2emu
template <class T>
inline T atomicAdd(T* p, T v) {
  return l2emu::rmw(p, [&](T o) { return o + v; });
}
template <class T>
inline T atomicMax(T* p, T v) {
  return l2emu::rmw(p, [&](T o) { return o < v ? v : o; });
}
template <class T>
inline T atomicMin(T* p, T v) {
  return l2emu::rmw(p, [&](T o) { return v < o ? v : o; });
}
template <class T>
inline T atomicExch(T* p, T v) {
  return l2emu::rmw(p, [&](T) { return v; });
}
template <class T>
inline T atomicCAS(T* p, T cmp, T v) {
  return l2emu::rmw(p, [&](T o) { return o == cmp ? v : o; });
}
inline void __threadfence() {}
inline void __threadfence_block() {}

// Occupancy: the emulator has no registers to count; 4 blocks per SM (tests set their own grid caps).
template <class... P>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void (*)(P...), int, size_t) {
  *n = 4;
  return cudaSuccess;
}

// The runtime's C++ overload for kernel entry points (nvcc-only in cuda_runtime.h).
template <class... P>
inline cudaError_t cudaFuncSetAttribute(void (*f)(P...), cudaFuncAttribute a, int v) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(f), a, v);
}
