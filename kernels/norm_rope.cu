// RMSNorm (fp32 residual -> fp16 matrix input), embedding gather, row gather. Rows have dim % 8 == 0.
#include "common.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace l2::kernels {

namespace {

// These run once per token per layer in decode, so they are latency-bound: one block per row, 16-byte
// accesses, and every load issued before the arithmetic that needs it.
constexpr int kNormThreads = 1024;
constexpr int kMaxVec = 4;  // float4 per thread kept in registers: dim <= 16384

__global__ void __launch_bounds__(kNormThreads) rmsnorm_kernel(const float* __restrict__ x, int ldx, const float* __restrict__ w,
                                                               half* __restrict__ out, int ldo, int dim, float eps) {
  pdl_trigger();
  pdl_wait();
  const float4* xr = reinterpret_cast<const float4*>(x + (size_t)blockIdx.x * ldx);
  const float4* wr = reinterpret_cast<const float4*>(w);
  const int n4 = dim / 4;
  float4 v[kMaxVec];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxVec; ++i) {
    const int j = threadIdx.x + i * kNormThreads;
    v[i] = j < n4 ? xr[j] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
#pragma unroll
  for (int i = 0; i < kMaxVec; ++i) ss += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
  __shared__ float red[32];
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float t = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    t = warp_sum(t);
    if (threadIdx.x == 0) red[0] = t;
  }
  __syncthreads();
  const float scale = rsqrtf(red[0] / (float)dim + eps);
  half2* o = reinterpret_cast<half2*>(out + (size_t)blockIdx.x * ldo);
#pragma unroll
  for (int i = 0; i < kMaxVec; ++i) {
    const int j = threadIdx.x + i * kNormThreads;
    if (j < n4) {
      const float4 g = wr[j];
      o[2 * j] = __floats2half2_rn(g.x * (scale * v[i].x), g.y * (scale * v[i].y));
      o[2 * j + 1] = __floats2half2_rn(g.z * (scale * v[i].z), g.w * (scale * v[i].w));
    }
  }
}

__global__ void embed_f16_kernel(const half* __restrict__ table, int ld, const int32_t* __restrict__ tokens, float* __restrict__ x,
                                 int ldx, int dim) {
  pdl_trigger();
  pdl_wait();
  const half* row = table + (size_t)tokens[blockIdx.x] * ld;
  float* o = x + (size_t)blockIdx.x * ldx;
  for (int i = threadIdx.x * 8; i < dim; i += blockDim.x * 8) {  // dim % 8 == 0
    uint4 raw = *reinterpret_cast<const uint4*>(row + i);
    const half2* h = reinterpret_cast<const half2*>(&raw);
    float2 a = __half22float2(h[0]), b = __half22float2(h[1]), c = __half22float2(h[2]), d = __half22float2(h[3]);
    reinterpret_cast<float4*>(o + i)[0] = make_float4(a.x, a.y, b.x, b.y);
    reinterpret_cast<float4*>(o + i)[1] = make_float4(c.x, c.y, d.x, d.y);
  }
}

__global__ void embed_w8_kernel(const int8_t* __restrict__ q, const half* __restrict__ scales, int ld, const int32_t* __restrict__ tokens,
                                float* __restrict__ x, int ldx, int dim) {
  pdl_trigger();
  pdl_wait();
  size_t r = (size_t)tokens[blockIdx.x];
  float* o = x + (size_t)blockIdx.x * ldx;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = (float)q[r * ld + i] * __half2float(scales[r * (ld / 32) + i / 32]);
}

// 4-bit table (W4): value i of a row's group g is scale * nibble + bias (byte i % 16, low nibble for i < 16).
__global__ void embed_w4_kernel(const uint8_t* __restrict__ q, const half2* __restrict__ meta, int ld, const int32_t* __restrict__ tokens,
                                float* __restrict__ x, int ldx, int dim) {
  pdl_trigger();
  pdl_wait();
  size_t r = (size_t)tokens[blockIdx.x];
  float* o = x + (size_t)blockIdx.x * ldx;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const int g = i / 32, j = i % 32;
    const uint8_t b = q[r * (ld / 2) + (size_t)g * 16 + (j & 15)];
    const float2 sb = __half22float2(meta[r * (ld / 32) + g]);
    o[i] = fmaf(sb.x, (float)(j < 16 ? b & 15 : b >> 4), sb.y);
  }
}

__global__ void gather_rows_kernel(const float* __restrict__ x, int ldx, const int32_t* __restrict__ rows, float* __restrict__ out,
                                   int ldo, int dim) {
  pdl_trigger();
  pdl_wait();
  const float4* src = reinterpret_cast<const float4*>(x + (size_t)rows[blockIdx.x] * ldx);
  float4* o = reinterpret_cast<float4*>(out + (size_t)blockIdx.x * ldo);
  for (int i = threadIdx.x; i < dim / 4; i += blockDim.x) o[i] = src[i];
}

}  // namespace

namespace {
bool g_pdl = false;
}
bool pdl_enabled() { return g_pdl; }
void set_pdl(bool on) { g_pdl = on; }

void rmsnorm_f16(const float* x, int ldx, const float* w, half* out, int ldo, int T, int dim, float eps, cudaStream_t s) {
  // dim % 4 == 0 and dim <= 16384 (checked by the backend at load).
  if (T > 0) launch(rmsnorm_kernel, T, kNormThreads, 0, s, x, ldx, w, out, ldo, dim, eps);
}
void embed_f16(const half* table, int ld, const int32_t* tokens, float* x, int ldx, int T, int dim, cudaStream_t s) {
  if (T > 0) launch(embed_f16_kernel, T, 512, 0, s, table, ld, tokens, x, ldx, dim);
}
void embed_w8(const int8_t* q, const half* scales, int ld, const int32_t* tokens, float* x, int ldx, int T, int dim, cudaStream_t s) {
  if (T > 0) launch(embed_w8_kernel, T, 256, 0, s, q, scales, ld, tokens, x, ldx, dim);
}
void embed_w4(const uint8_t* q, const half2* meta, int ld, const int32_t* tokens, float* x, int ldx, int T, int dim, cudaStream_t s) {
  if (T > 0) launch(embed_w4_kernel, T, 256, 0, s, q, meta, ld, tokens, x, ldx, dim);
}
void gather_rows(const float* x, int ldx, const int32_t* rows, float* out, int ldo, int n, int dim, cudaStream_t s) {
  if (n > 0) launch(gather_rows_kernel, n, 256, 0, s, x, ldx, rows, out, ldo, dim);
}

}  // namespace l2::kernels
