// The int8 KV cache's writer: the QKV epilogue leaves the step's K and V rows in fp16 (a staging
// buffer), and this kernel quantizes each head's row in groups (Q8_0's rule, the same as the CPU
// backend's int8 cache) into the paged cache. A group's amax spans outputs of many GEMV blocks, so the
// quantization cannot live in the matrix epilogue itself. One CTA per token; a thread per group.
#include "common.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace l2::kernels {

namespace {

template <int G>
__global__ void __launch_bounds__(128) kv_quantize_kernel(const half* __restrict__ stage, int ld_stage, const int32_t* __restrict__ kv_slot,
                                                          int n_kv_heads, int head_dim, int8_t* __restrict__ k_q, half* __restrict__ k_scale,
                                                          int8_t* __restrict__ v_q, half* __restrict__ v_scale) {
  pdl_trigger();
  pdl_wait();
  const int t = blockIdx.x;
  const int kv_dim = n_kv_heads * head_dim;
  const int groups = kv_dim / G;  // per K (or V) row
  const int slot = kv_slot[t];
  for (int g = threadIdx.x; g < 2 * groups; g += blockDim.x) {
    const int is_v = g >= groups;
    const int c0 = (g - is_v * groups) * G;  // first column in the row
    const int kvh = c0 / head_dim, d0 = c0 % head_dim;
    float x[G];
    const half* src = stage + (size_t)t * ld_stage + is_v * kv_dim + c0;
#pragma unroll
    for (int i = 0; i < G; i += 8) {
      uint4 raw = *reinterpret_cast<const uint4*>(src + i);
      const half2* h = reinterpret_cast<const half2*>(&raw);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float2 f = __half22float2(h[j]);
        x[i + 2 * j] = f.x;
        x[i + 2 * j + 1] = f.y;
      }
    }
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < G; ++i) amax = fmaxf(amax, fabsf(x[i]));
    // Exactly native/common/q8.h's float operations: IEEE division and reciprocal by intrinsics, which stay
    // exact under --use_fast_math (plain `/` would become an approximate divide there).
    const float d = __fdiv_rn(amax, 127.f);
    const float id = d != 0.f ? __frcp_rn(d) : 0.f;
    uint32_t packed[G / 4];
#pragma unroll
    for (int i = 0; i < G / 4; ++i) {
      uint32_t w = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) w |= ((uint32_t)(uint8_t)(int8_t)roundf(__fmul_rn(x[4 * i + j], id))) << (8 * j);
      packed[i] = w;
    }
    const size_t row = kv_cache_row(slot / kKvBlock, slot % kKvBlock, n_kv_heads, kvh);
    int8_t* dst = (is_v ? v_q : k_q) + row * head_dim + d0;
    if constexpr (G == 8) {
      *reinterpret_cast<uint2*>(dst) = make_uint2(packed[0], packed[1]);
    } else {
#pragma unroll
      for (int i = 0; i < G / 16; ++i)
        *reinterpret_cast<uint4*>(dst + 16 * i) = make_uint4(packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]);
    }
    (is_v ? v_scale : k_scale)[row * (head_dim / G) + d0 / G] = __float2half_rn(d);
  }
}

}  // namespace

void kv_quantize(const half* stage, int ld_stage, const int32_t* kv_slot, int T, int n_kv_heads, int head_dim, int group, int8_t* k_q,
                 half* k_scale, int8_t* v_q, half* v_scale, cudaStream_t stream) {
  if (T <= 0) return;
  auto go = [&](auto kernel) {
    launch(kernel, dim3(T), dim3(128), 0, stream, stage, ld_stage, kv_slot, n_kv_heads, head_dim, k_q, k_scale, v_q, v_scale);
  };
  switch (group) {
    case 8: go(kv_quantize_kernel<8>); break;
    case 16: go(kv_quantize_kernel<16>); break;
    case 32: go(kv_quantize_kernel<32>); break;
    default: break;  // the backend only asks for kv_quant_group(head_dim) of a supported head_dim
  }
}

}  // namespace l2::kernels
