// The fused epilogue shared by the matrix kernels (gemv.cu, gemm.cu): applied to an adjacent pair of
// outputs (n, n + 1), n even, of token t. See Epi in kernels.h.
#pragma once
#include <cuda_fp16.h>

#include "kernels.h"

namespace l2::kernels {

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

__device__ __forceinline__ void epilogue_pair(const Epilogue& e, int t, int n, float v0, float v1) {
  switch (e.kind) {
    case Epi::StoreF32: {
      float* o = static_cast<float*>(e.out) + (size_t)t * e.ldo + n;
      o[0] = v0;
      o[1] = v1;
      break;
    }
    case Epi::StoreF16: {
      *reinterpret_cast<half2*>(static_cast<half*>(e.out) + (size_t)t * e.ldo + n) = __floats2half2_rn(v0, v1);
      break;
    }
    case Epi::AddF32: {
      float* o = static_cast<float*>(e.out) + (size_t)t * e.ldo + n;
      o[0] += v0;
      o[1] += v1;
      break;
    }
    case Epi::SwiGLU: {
      static_cast<half*>(e.out)[(size_t)t * e.ldo + n / 2] = __float2half(silu(v0) * v1);
      break;
    }
    case Epi::QkvRope: {
      int col = n;
      if (col < e.q_dim + e.kv_dim) {  // Q or K: rotate the pair
        int i = (col % e.head_dim) / 2;
        float2 cs = e.rope[(size_t)e.positions[t] * (e.head_dim / 2) + i];
        float r0 = v0 * cs.x - v1 * cs.y;
        float r1 = v0 * cs.y + v1 * cs.x;
        v0 = r0;
        v1 = r1;
      }
      if (col < e.q_dim) {
        *reinterpret_cast<half2*>(static_cast<half*>(e.out) + (size_t)t * e.ldo + col) = __floats2half2_rn(v0, v1);
      } else if (e.kv_stage) {  // int8 cache: rows for kv_quantize
        *reinterpret_cast<half2*>(e.kv_stage + (size_t)t * e.ld_stage + (col - e.q_dim)) = __floats2half2_rn(v0, v1);
      } else {
        bool is_k = col < e.q_dim + e.kv_dim;
        int c = col - e.q_dim - (is_k ? 0 : e.kv_dim);
        int kvh = c / e.head_dim, d = c % e.head_dim;
        int slot = e.kv_slot[t];
        size_t idx = kv_cache_row(slot / kKvBlock, slot % kKvBlock, e.n_kv_heads, kvh) * e.head_dim + d;
        *reinterpret_cast<half2*>((is_k ? e.k_cache : e.v_cache) + idx) = __floats2half2_rn(v0, v1);
      }
      break;
    }
  }
}

}  // namespace l2::kernels
