// Small device helpers shared by the kernel files.
#pragma once
#include <cuda_fp16.h>
#include <cstdint>

namespace l2::kernels {

// 16-byte streaming load that bypasses L1 allocation (weights are read once per step).
__device__ __forceinline__ uint4 ld_stream(const void* p) {
#ifdef L2_SIMT_EMU
  if (reinterpret_cast<uintptr_t>(p) % 16) l2emu::fail("misaligned 16-byte load from %p", p);
  return *reinterpret_cast<const uint4*>(p);
#else
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
#endif
}

__device__ __forceinline__ uint4 ld_cached(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// 8 halves packed in a uint4 -> dot with 8 halves, accumulated in fp32.
__device__ __forceinline__ float dot8(uint4 w, uint4 x, float acc) {
  const half2* wh = reinterpret_cast<const half2*>(&w);
  const half2* xh = reinterpret_cast<const half2*>(&x);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 a = __half22float2(wh[i]);
    float2 b = __half22float2(xh[i]);
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
  }
  return acc;
}

// int8 -> float without I2F: put the (biased) byte in the mantissa of 2^23 and subtract.
__device__ __forceinline__ float i8_to_f(uint32_t biased_word, int byte) {
  uint32_t bits = __byte_perm(biased_word, 0x4B000000u, 0x7440u | (uint32_t)byte);
  return __uint_as_float(bits) - 8388736.0f;  // 2^23 + 128
}

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace l2::kernels
