// l2emu: the tensor-core PTX our kernels use (kernels/mma.cuh), emulated on the host from the PTX ISA's
// definitions, not from mma.cuh's comments (so the emulation checks the kernels' fragment bookkeeping):
// - ldmatrix.sync.aligned.m8n8.x{2,4}[.trans].shared.b16: lane 8j + r gives the 16-byte-aligned address of
//   row r of matrix j; register j of lane 4g + q receives row g, elements 2q and 2q+1 of matrix j (.trans:
//   elements (2q, g) and (2q+1, g)).
// - mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: with lane = 4g + q, A (16x16) register i holds
//   row g + 8 (i & 1), columns 2q + 8 (i >> 1) and the next; B (16x8, k x n) register i holds rows
//   2q + 8 i and the next of column g; C/D register i holds row g + 8 (i >> 1), column 2q + (i & 1).
//   Products are exact and summed in double, rounded once (tensor cores differ in the last bits).
// - cp.async: queued, performed at the covering cp.async.wait_group (simt.cc).
#pragma once
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "simt.h"

namespace l2emu::ops {

inline uint32_t smem_u32(const void* p) { return l2emu::smem_addr(p); }

inline uint32_t slot_u32(const unsigned char* slots, int lane) {
  uint32_t v;
  std::memcpy(&v, slots + lane * l2emu::kSlot, 4);
  return v;
}

inline uint16_t smem_half_bits(uint32_t row_addr, int elem) {
  uint16_t v;
  std::memcpy(&v, l2emu::smem_ptr(row_addr + 2u * (uint32_t)elem, 2), 2);
  return v;
}

template <int NM, bool TRANS>
inline void ldmatrix(uint32_t* r, uint32_t addr) {
  if (addr % 16) l2emu::fail("ldmatrix row address %#x is not 16-byte aligned", addr);
  const unsigned char* s = l2emu::warp_exchange(0xffffffffu, &addr, 4);
  const int l = l2emu::lane(), g = l / 4, q = l % 4;
  for (int j = 0; j < NM; ++j) {
    uint16_t lo, hi;
    if (!TRANS) {
      const uint32_t row = slot_u32(s, 8 * j + g);
      lo = smem_half_bits(row, 2 * q);
      hi = smem_half_bits(row, 2 * q + 1);
    } else {
      lo = smem_half_bits(slot_u32(s, 8 * j + 2 * q), g);
      hi = smem_half_bits(slot_u32(s, 8 * j + 2 * q + 1), g);
    }
    r[j] = (uint32_t)lo | ((uint32_t)hi << 16);
  }
}

inline void ldsm_x4(uint32_t (&r)[4], uint32_t addr) { ldmatrix<4, false>(r, addr); }
inline void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) { ldmatrix<4, true>(r, addr); }
inline void ldsm_x2(uint32_t (&r)[2], uint32_t addr) { ldmatrix<2, false>(r, addr); }
inline void ldsm_x2_trans(uint32_t (&r)[2], uint32_t addr) { ldmatrix<2, true>(r, addr); }

inline float half_lo(uint32_t v) { return __half2float(__ushort_as_half((unsigned short)(v & 0xffff))); }
inline float half_hi(uint32_t v) { return __half2float(__ushort_as_half((unsigned short)(v >> 16))); }

inline void mma_f16f32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  struct In {
    uint32_t a[4], b[2];
  } in{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  const unsigned char* s = l2emu::warp_exchange(0xffffffffu, &in, (int)sizeof in);
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    In x;
    std::memcpy(&x, s + l * l2emu::kSlot, sizeof x);
    const int g = l / 4, q = l % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i & 1), col = 2 * q + 8 * (i >> 1);
      A[row][col] = half_lo(x.a[i]);
      A[row][col + 1] = half_hi(x.a[i]);
    }
    for (int i = 0; i < 2; ++i) {
      B[2 * q + 8 * i][g] = half_lo(x.b[i]);
      B[2 * q + 8 * i + 1][g] = half_hi(x.b[i]);
    }
  }
  const int l = l2emu::lane(), g = l / 4, q = l % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >> 1), col = 2 * q + (i & 1);
    double acc = c[i];
    for (int k = 0; k < 16; ++k) acc += (double)A[row][k] * (double)B[k][col];
    c[i] = (float)acc;
  }
}
inline void mma_f16f32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { mma_f16f32(c, a, b[0], b[1]); }

inline void cp_async_16(uint32_t dst, const void* src, bool valid) {
  if (dst % 16 || reinterpret_cast<uintptr_t>(src) % 16) l2emu::fail("cp.async 16: misaligned (shared %#x, global %p)", dst, src);
  l2emu::cp_async(dst, src, 16, valid);
}
inline void cp_async_4(uint32_t dst, const void* src, bool valid) {
  if (dst % 4 || reinterpret_cast<uintptr_t>(src) % 4) l2emu::fail("cp.async 4: misaligned (shared %#x, global %p)", dst, src);
  l2emu::cp_async(dst, src, 4, valid);
}
inline void cp_async_commit() { l2emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  l2emu::cp_async_wait(N);
}

}  // namespace l2emu::ops
