// Shared PTX helpers for the tensor-core kernels (gemm.cu, attention_prefill.cu): sm_80+ only.
//
// mma.sync m16n8k16 (f16 x f16 -> f32) fragment layout (PTX ISA, "Matrix Fragments for mma.m16n8k16"),
// with lane = 4 * g + q (g = lane / 4 in 0..7, q = lane % 4 in 0..3):
//   A (16 x 16, row-major): a0 = A[g][2q, 2q+1], a1 = A[g+8][2q, 2q+1], a2 = A[g][2q+8, 2q+9], a3 = A[g+8][2q+8, 2q+9]
//   B (16 x 8, "col"):      b0 = B[2q, 2q+1][g],  b1 = B[2q+8, 2q+9][g]
//   C (16 x 8, f32):        c0, c1 = C[g][2q, 2q+1], c2, c3 = C[g+8][2q, 2q+1]
// ldmatrix.m8n8.x4: lane 8 * j + r supplies the shared address of row r of matrix j; afterwards register j of
// lane 4 * g + q holds elements (g, 2q), (g, 2q + 1) of matrix j (with .trans: elements (2q, g), (2q + 1, g)).
// The host-side emulation in tests/test_gemm.cu checks the index helpers below against these rules.
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

// The kernel's dynamic shared memory as `unsigned char name[]`, 128-byte aligned.
#ifdef L2_SIMT_EMU
#define L2_DYNAMIC_SMEM(name) unsigned char* name = l2emu::dynamic_smem()
#else
#define L2_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace l2::kernels::mma {

#ifdef L2_SIMT_EMU
// Host emulation (kernels/emu/warp_ops.h): the same operations, by the PTX ISA's definitions.
}  // namespace l2::kernels::mma
#include "emu/warp_ops.h"
namespace l2::kernels::mma {
using l2emu::ops::cp_async_16;
using l2emu::ops::cp_async_4;
using l2emu::ops::cp_async_commit;
using l2emu::ops::cp_async_wait;
using l2emu::ops::ldsm_x2;
using l2emu::ops::ldsm_x2_trans;
using l2emu::ops::ldsm_x4;
using l2emu::ops::ldsm_x4_trans;
using l2emu::ops::mma_f16f32;
using l2emu::ops::smem_u32;
#else
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- ldmatrix ----
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2_trans(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr));
}

// ---- mma.sync m16n8k16, f16 inputs, f32 accumulate: c += a * b ----
__device__ __forceinline__ void mma_f16f32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_f16f32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- cp.async (global -> shared, asynchronous) ----
// 16 bytes; src_bytes 0 writes 16 zero bytes without reading (src must still be a valid address).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
// 4 bytes (cached at all levels; .cg only takes 16).
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, bool valid) {
  int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#endif

// ---- small conversions ----
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);  // .x = lo (low 16 bits)
  return *reinterpret_cast<uint32_t*>(&h);
}
__device__ __forceinline__ float fast_exp2(float x) {  // ex2.approx: exp2(-inf) = +0
#ifdef L2_SIMT_EMU
  return exp2f(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#endif
}

// ---- shared-memory swizzle for tiles of rows of C 16-byte chunks (C = 4, 8 or 16) ----
// Returns the element (half) offset of chunk `chunk` of row `row`. Any 8 consecutive rows (starting at a
// multiple of 8) read at the same logical chunk land in 8 distinct 16-byte bank groups, so ldmatrix and
// row-wise 16-byte stores are conflict-free.
template <int C>
__host__ __device__ __forceinline__ int swz(int row, int chunk) {
  static_assert(C == 4 || C == 8 || C == 16, "chunks per row");
  if constexpr (C == 4) {
    return row * 32 + ((chunk ^ ((row >> 1) & 3)) << 3);
  } else {
    return row * (C * 8) + ((chunk ^ (row & 7)) << 3);
  }
}

// Lane -> (row, chunk) inside a 16 x 16 operand block for ldmatrix.x4 (non-trans), rows contiguous in k:
//  A operand (rows = m): matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15) -> a0..a3.
__host__ __device__ __forceinline__ int ldsm_a_row(int lane) { return lane & 15; }
__host__ __device__ __forceinline__ int ldsm_a_chunk(int lane) { return lane >> 4; }
//  B operand stored [n][k] (rows = n): matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
//  -> b[nt 0] = {r0, r1}, b[nt 1] = {r2, r3}.
__host__ __device__ __forceinline__ int ldsm_b_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
__host__ __device__ __forceinline__ int ldsm_b_chunk(int lane) { return (lane >> 3) & 1; }
//  B operand stored [k][n] (rows = k, e.g. V[pos][d]) with .trans: matrices (k 0-7, n 0-7), (k 8-15, n 0-7),
//  (k 0-7, n 8-15), (k 8-15, n 8-15) -> b[nt 0] = {r0, r1}, b[nt 1] = {r2, r3}.
__host__ __device__ __forceinline__ int ldsm_bt_row(int lane) { return lane & 15; }
__host__ __device__ __forceinline__ int ldsm_bt_chunk(int lane) { return lane >> 4; }

}  // namespace l2::kernels::mma
