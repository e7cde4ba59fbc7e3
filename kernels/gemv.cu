// Decode matrix-vector (and small batch, T <= 8) for fp16 and int8 (W8A16) weights.
// Memory-bound: every weight byte is read once per step with 16-byte streaming loads, all of a
// block's loads in flight at once; the T activation rows are read through L1 (tiny, shared by the
// block). fp32 accumulation, fused epilogue.
#include "common.cuh"
#include "epilogue.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace l2::kernels {

namespace {

// One block of kThreads owns a pair of adjacent rows (one epilogue pair) and splits K across all its
// threads: a lane loads 16 bytes per row per step, U steps unrolled, so a 4096-wide row is read in a
// single round of loads in flight. Short rows (7B: 8 KB) then cost one memory latency per block, and
// many small blocks keep every SM full. Warp partial sums meet in shared memory.
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kR = 2;

template <int T>
__device__ __forceinline__ void finish(float (&acc)[T][kR], const Epilogue& epi, int n0) {
  __shared__ float red[kWarps][T][kR];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int t = 0; t < T; ++t)
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      float v = warp_sum(acc[t][r]);
      if (lane == 0) red[warp][t][r] = v;
    }
  __syncthreads();
  if (threadIdx.x < T) {
    const int t = threadIdx.x;
    float v[kR];
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      v[r] = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) v[r] += red[w][t][r];
    }
    epilogue_pair(epi, t, n0, v[0], v[1]);
  }
}

template <int T, int U>
__global__ void __launch_bounds__(kThreads) gemv_f16_kernel(const half* __restrict__ A, int lda, const half* __restrict__ W, int ldw,
                                                            int K, Epilogue epi) {
  const int n0 = blockIdx.x * kR;
  float acc[T][kR];
#pragma unroll
  for (int t = 0; t < T; ++t)
#pragma unroll
    for (int r = 0; r < kR; ++r) acc[t][r] = 0.f;
  const half* w0 = W + (size_t)n0 * ldw;
  constexpr int kStep = kThreads * 8;  // halves per block per step
  auto load = [&](uint4 (&w)[U][kR], int k0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * kStep;
#pragma unroll
      for (int r = 0; r < kR; ++r) w[u][r] = k < K ? ld_stream(w0 + (size_t)r * ldw + k) : make_uint4(0, 0, 0, 0);
    }
  };
  // The first round of weights needs nothing from the previous kernel: load it before waiting.
  uint4 w[U][kR];
  int k0 = threadIdx.x * 8;
  load(w, k0);
  pdl_trigger();
  pdl_wait();
  for (;;) {
    uint4 cur[U][kR];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < kR; ++r) cur[u][r] = w[u][r];
    const int next = k0 + kStep * U;
    if (next < K) load(w, next);  // the next round is in flight while this one is used
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * kStep;
      if (k < K) {
#pragma unroll
        for (int t = 0; t < T; ++t) {
          uint4 x = ld_cached(A + (size_t)t * lda + k);
#pragma unroll
          for (int r = 0; r < kR; ++r) acc[t][r] = dot8(cur[u][r], x, acc[t][r]);
        }
      }
    }
    if (next >= K) break;
    k0 = next;
  }
  finish<T>(acc, epi, n0);
}

// int8 weights: a lane reads 16 int8 (half a 32-group) per row per step; scales[n][k / 32].
template <int T, int U>
__global__ void __launch_bounds__(kThreads) gemv_w8_kernel(const half* __restrict__ A, int lda, const int8_t* __restrict__ Wq,
                                                           const half* __restrict__ S, int ldw, int K, Epilogue epi) {
  const int n0 = blockIdx.x * kR;
  const int lds = ldw / 32;
  float acc[T][kR];
#pragma unroll
  for (int t = 0; t < T; ++t)
#pragma unroll
    for (int r = 0; r < kR; ++r) acc[t][r] = 0.f;
  const int8_t* w0 = Wq + (size_t)n0 * ldw;
  const half* s0 = S + (size_t)n0 * lds;
  constexpr int kStep = kThreads * 16;
  auto load = [&](uint4 (&w)[U][kR], float (&sc)[U][kR], int k0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * kStep;
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        w[u][r] = k < K ? ld_stream(w0 + (size_t)r * ldw + k) : make_uint4(0, 0, 0, 0);
        sc[u][r] = k < K ? __half2float(__ldg(s0 + (size_t)r * lds + k / 32)) : 0.f;
      }
    }
  };
  uint4 w[U][kR];
  float sc[U][kR];
  int k0 = threadIdx.x * 16;
  load(w, sc, k0);
  pdl_trigger();
  pdl_wait();
  for (;;) {
    uint4 cur[U][kR];
    float csc[U][kR];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        cur[u][r] = w[u][r];
        csc[u][r] = sc[u][r];
      }
    const int next = k0 + kStep * U;
    if (next < K) load(w, sc, next);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * kStep;
      if (k < K) {
#pragma unroll
        for (int t = 0; t < T; ++t) {
          uint4 xa = ld_cached(A + (size_t)t * lda + k);
          uint4 xb = ld_cached(A + (size_t)t * lda + k + 8);
          float xf[16];
          const half2* xh0 = reinterpret_cast<const half2*>(&xa);
          const half2* xh1 = reinterpret_cast<const half2*>(&xb);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            float2 a = __half22float2(xh0[j]), b = __half22float2(xh1[j]);
            xf[2 * j] = a.x;
            xf[2 * j + 1] = a.y;
            xf[8 + 2 * j] = b.x;
            xf[8 + 2 * j + 1] = b.y;
          }
#pragma unroll
          for (int r = 0; r < kR; ++r) {
            const uint32_t* q = reinterpret_cast<const uint32_t*>(&cur[u][r]);
            float part = 0.f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {  // 4 words x 4 int8
              const uint32_t bw = q[j] ^ 0x80808080u;
#pragma unroll
              for (int b = 0; b < 4; ++b) part = fmaf(i8_to_f(bw, b), xf[4 * j + b], part);
            }
            acc[t][r] = fmaf(part, csc[u][r], acc[t][r]);
          }
        }
      }
    }
    if (next >= K) break;
    k0 = next;
  }
  finish<T>(acc, epi, n0);
}

template <int T>
void launch_f16(const half* A, int lda, const half* W, int ldw, int n_valid, int K, const Epilogue& epi, cudaStream_t s) {
  launch(gemv_f16_kernel<T, 4>, ceil_div(n_valid, kR), kThreads, 0, s, A, lda, W, ldw, K, epi);
}

template <int T>
void launch_w8(const half* A, int lda, const int8_t* Wq, const half* S, int ldw, int n_valid, int K, const Epilogue& epi, cudaStream_t s) {
  launch(gemv_w8_kernel<T, 2>, ceil_div(n_valid, kR), kThreads, 0, s, A, lda, Wq, S, ldw, K, epi);
}

}  // namespace

void gemv_f16(const half* A, int lda, const half* W, int ldw, int T, int N, int n_valid, int K, const Epilogue& epi, cudaStream_t s) {
  switch (T) {
    case 1: launch_f16<1>(A, lda, W, ldw, n_valid, K, epi, s); break;
    case 2: launch_f16<2>(A, lda, W, ldw, n_valid, K, epi, s); break;
    case 3: launch_f16<3>(A, lda, W, ldw, n_valid, K, epi, s); break;
    case 4: launch_f16<4>(A, lda, W, ldw, n_valid, K, epi, s); break;
    case 5: launch_f16<5>(A, lda, W, ldw, n_valid, K, epi, s); break;
    case 6: launch_f16<6>(A, lda, W, ldw, n_valid, K, epi, s); break;
    case 7: launch_f16<7>(A, lda, W, ldw, n_valid, K, epi, s); break;
    case 8: launch_f16<8>(A, lda, W, ldw, n_valid, K, epi, s); break;
    default: break;
  }
}

void gemv_w8(const half* A, int lda, const int8_t* Wq, const half* S, int ldw, int T, int N, int n_valid, int K, const Epilogue& epi,
             cudaStream_t s) {
  switch (T) {
    case 1: launch_w8<1>(A, lda, Wq, S, ldw, n_valid, K, epi, s); break;
    case 2: launch_w8<2>(A, lda, Wq, S, ldw, n_valid, K, epi, s); break;
    case 3: launch_w8<3>(A, lda, Wq, S, ldw, n_valid, K, epi, s); break;
    case 4: launch_w8<4>(A, lda, Wq, S, ldw, n_valid, K, epi, s); break;
    case 5: launch_w8<5>(A, lda, Wq, S, ldw, n_valid, K, epi, s); break;
    case 6: launch_w8<6>(A, lda, Wq, S, ldw, n_valid, K, epi, s); break;
    case 7: launch_w8<7>(A, lda, Wq, S, ldw, n_valid, K, epi, s); break;
    case 8: launch_w8<8>(A, lda, Wq, S, ldw, n_valid, K, epi, s); break;
    default: break;
  }
}

}  // namespace l2::kernels
