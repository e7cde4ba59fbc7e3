// Decode matrix-vector (and small batch, T <= 8) for fp16, int8 (W8A16) and 4-bit (W4A16) weights.
// Memory-bound: every weight byte is read once per step with 16-byte streaming loads, all of a
// block's loads in flight at once; the T activation rows are read through L1 (tiny, shared by the
// block). fp32 accumulation, fused epilogue.
#include <atomic>
#include <type_traits>

#include "common.cuh"
#include "epilogue.cuh"
#include "kernels.h"
#include "launch.cuh"
#include "mma.cuh"

namespace l2::kernels {

namespace {

// One block of kThreads owns R adjacent rows (R / 2 epilogue pairs) and splits K across all its
// threads: a lane loads 16 bytes per row per step, U steps unrolled, so a 4096-wide row is read in a
// single round of loads in flight. Short rows (7B: 8 KB in fp16) then cost one memory latency per block,
// and many small blocks keep every SM full. Warp partial sums meet in shared memory.
// R = 2 for fp16 (measured, H100: 86% of copy bandwidth at batch 1). int8 rows are half the bytes: a
// 2-row int8 block has 8 KB in flight, and at 79 registers 6 blocks fit an SM (48 KB in flight, against
// fp16's 5 x 16 KB); int8 at batch 1 reaches 68% of bandwidth, about that ratio of fp16's 86%, as if
// latency-bound. So batch 1 int8 uses 4-row blocks (127 registers, 4 x 16 KB per SM): a prediction until
// measured (kernel_tests --only=gemv --bench, the "rows" lines); at T >= 2 4-row blocks need 168+ registers.
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

// NORM: the block also summed x^2 of each token's row (ss); outputs are scaled by rsqrt(mean + eps).
template <bool NORM, int T, int R>
__device__ __forceinline__ void finish(float (&acc)[T][R], const float (&ss)[T], const NormInput& nin, const Epilogue& epi, int n0,
                                       int n_valid) {
  static_assert(R % 2 == 0 && T * (R / 2) <= kThreads, "pairs");
  __shared__ float red[kWarps][T][R];
  __shared__ float red_ss[kWarps][NORM ? T : 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int t = 0; t < T; ++t)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float v = warp_sum(acc[t][r]);
      if (lane == 0) red[warp][t][r] = v;
    }
  if constexpr (NORM) {
#pragma unroll
    for (int t = 0; t < T; ++t) {
      float v = warp_sum(ss[t]);
      if (lane == 0) red_ss[warp][t] = v;
    }
  }
  __syncthreads();
  constexpr int P = R / 2;
  const int t = threadIdx.x / P, p = threadIdx.x % P;
  const int n = n0 + 2 * p;
  if (threadIdx.x < T * P && n < n_valid) {  // (pairs of the last block's pad rows skip)
    float v0 = 0.f, v1 = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      v0 += red[w][t][2 * p];
      v1 += red[w][t][2 * p + 1];
    }
    if constexpr (NORM) {
      float sum = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += red_ss[w][t];
      const float scale = rsqrtf(sum / (float)nin.dim + nin.eps);  // as rmsnorm_kernel
      v0 *= scale;
      v1 *= scale;
    }
    epilogue_pair(epi, t, n, v0, v1);
  }
  __syncthreads();  // red is reused by the block's next row group
}

// NORM: 8 inputs of token t at column k (k % 8 == 0) as x * w (the norm weight), their x^2 added to ss.
// dim % 8 == 0, so a chunk of 8 lies wholly inside the row or wholly in its zero padding.
__device__ __forceinline__ void load_normed8(const NormInput& nin, int t, int k, float* xg, float& ss) {
  if (k >= nin.dim) {
#pragma unroll
    for (int i = 0; i < 8; ++i) xg[i] = 0.f;
    return;
  }
  const float4* xp = reinterpret_cast<const float4*>(nin.x + (size_t)t * nin.ldx + k);
  const float4* gp = reinterpret_cast<const float4*>(nin.w + k);
  const float4 x0 = __ldg(xp), x1 = __ldg(xp + 1), g0 = __ldg(gp), g1 = __ldg(gp + 1);
  const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
  const float gv[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    ss = fmaf(xv[i], xv[i], ss);
    xg[i] = xv[i] * gv[i];
  }
}

// 8 fp16 weights . 8 fp32 inputs, accumulated in fp32.
__device__ __forceinline__ float dot8f(uint4 w, const float* x, float acc) {
  const half2* wh = reinterpret_cast<const half2*>(&w);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 a = __half22float2(wh[i]);
    acc = fmaf(a.x, x[2 * i], acc);
    acc = fmaf(a.y, x[2 * i + 1], acc);
  }
  return acc;
}

// 8 fp16 activations -> fp32.
__device__ __forceinline__ void load_x8f(const half* p, float* xf) {
  const uint4 x = ld_cached(p);
  const half2* h = reinterpret_cast<const half2*>(&x);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(h[i]);
    xf[2 * i] = v.x;
    xf[2 * i + 1] = v.y;
  }
}

// 16 fp16 activations -> fp32 (both loads issued before either converts).
__device__ __forceinline__ void load_x16f(const half* p, float* xf) {
  const uint4 xa = ld_cached(p), xb = ld_cached(p + 8);
  const half2* h0 = reinterpret_cast<const half2*>(&xa);
  const half2* h1 = reinterpret_cast<const half2*>(&xb);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 a = __half22float2(h0[j]), b = __half22float2(h1[j]);
    xf[2 * j] = a.x;
    xf[2 * j + 1] = a.y;
    xf[8 + 2 * j] = b.x;
    xf[8 + 2 * j + 1] = b.y;
  }
}

// 16 int8 weights . 16 fp32 inputs (unscaled), accumulated in fp32.
__device__ __forceinline__ float dot16_i8(uint4 w, const float* x) {
  const uint32_t* q = reinterpret_cast<const uint32_t*>(&w);
  float part = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {  // 4 words x 4 int8
    const uint32_t bw = q[j] ^ 0x80808080u;
#pragma unroll
    for (int b = 0; b < 4; ++b) part = fmaf(i8_to_f(bw, b), x[4 * j + b], part);
  }
  return part;
}

// Both kernels walk row groups (kR rows) grid-stride: with the grid capped at what fits the SMs at once
// (launch_*), a block issues its next group's first loads before it reduces and stores the current one,
// so the memory pipe stays full across groups instead of draining at every wave of blocks (the N = 4096
// matrices had only ~2 waves: H200 batch 1, 2.5 TB/s against 3.6-4.0 for the wide ones).
template <bool NORM, int T, int U, int kR>
__global__ void __launch_bounds__(kThreads) gemv_f16_kernel(const half* __restrict__ A, int lda, const half* __restrict__ W, int ldw,
                                                            int K, int n_valid, Epilogue epi, NormInput nin) {
  const int n_groups = (n_valid + kR - 1) / kR;
  float acc[T][kR], ss[T];
  auto reset = [&] {
#pragma unroll
    for (int t = 0; t < T; ++t) {
      ss[t] = 0.f;
#pragma unroll
      for (int r = 0; r < kR; ++r) acc[t][r] = 0.f;
    }
  };
  reset();
  constexpr int kStep = kThreads * 8;  // halves per block per step
  const int kfirst = threadIdx.x * 8;
  auto load = [&](uint4 (&w)[U][kR], int g, int k0) {
    const half* w0 = W + (size_t)g * kR * ldw;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * kStep;
#pragma unroll
      for (int r = 0; r < kR; ++r) w[u][r] = k < K ? ld_stream(w0 + (size_t)r * ldw + k) : make_uint4(0, 0, 0, 0);
    }
  };
  // The first round of weights needs nothing from the previous kernel: load it before waiting.
  uint4 w[U][kR];
  int g = blockIdx.x, k0 = kfirst;
  load(w, g, k0);
  pdl_trigger();
  pdl_wait();
  for (;;) {
    uint4 cur[U][kR];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < kR; ++r) cur[u][r] = w[u][r];
    // The next round (this group's next K chunk, or the next group's first) is in flight while this one is used.
    int gn = g, kn = k0 + kStep * U;
    if (kn >= K) gn = g + gridDim.x, kn = kfirst;
    if (gn < n_groups) load(w, gn, kn);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * kStep;
      if (k < K) {
#pragma unroll
        for (int t = 0; t < T; ++t) {
          if constexpr (NORM) {
            float xg[8];
            load_normed8(nin, t, k, xg, ss[t]);
#pragma unroll
            for (int r = 0; r < kR; ++r) acc[t][r] = dot8f(cur[u][r], xg, acc[t][r]);
          } else {
            uint4 x = ld_cached(A + (size_t)t * lda + k);
#pragma unroll
            for (int r = 0; r < kR; ++r) acc[t][r] = dot8(cur[u][r], x, acc[t][r]);
          }
        }
      }
    }
    if (gn != g) {
      finish<NORM, T, kR>(acc, ss, nin, epi, g * kR, n_valid);
      if (gn >= n_groups) break;
      reset();
    }
    g = gn, k0 = kn;
  }
}

// int8 weights: a lane reads 16 int8 (half a 32-group) per row per step; scales[n][k / 32].
// Batch-1 4-row blocks are pinned to 4 per SM (<= 128 registers), the occupancy their choice rests on.
template <bool NORM, int T, int U, int kR>
__global__ void __launch_bounds__(kThreads, (kR == 4 && T == 1) ? 4 : 1) gemv_w8_kernel(const half* __restrict__ A, int lda, const int8_t* __restrict__ Wq,
                                                           const half* __restrict__ S, int ldw, int K, int n_valid, Epilogue epi,
                                                           NormInput nin) {
  const int n_groups = (n_valid + kR - 1) / kR;
  const int lds = ldw / 32;
  float acc[T][kR], ss[T];
  auto reset = [&] {
#pragma unroll
    for (int t = 0; t < T; ++t) {
      ss[t] = 0.f;
#pragma unroll
      for (int r = 0; r < kR; ++r) acc[t][r] = 0.f;
    }
  };
  reset();
  constexpr int kStep = kThreads * 16;
  const int kfirst = threadIdx.x * 16;
  auto load = [&](uint4 (&w)[U][kR], float (&sc)[U][kR], int g, int k0) {
    const int8_t* w0 = Wq + (size_t)g * kR * ldw;
    const half* s0 = S + (size_t)g * kR * lds;
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
  int g = blockIdx.x, k0 = kfirst;
  load(w, sc, g, k0);
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
    int gn = g, kn = k0 + kStep * U;
    if (kn >= K) gn = g + gridDim.x, kn = kfirst;
    if (gn < n_groups) load(w, sc, gn, kn);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k0 + u * kStep;
      if (k < K) {
#pragma unroll
        for (int t = 0; t < T; ++t) {
          float xf[16];
          if constexpr (NORM) {
            load_normed8(nin, t, k, xf, ss[t]);
            load_normed8(nin, t, k + 8, xf + 8, ss[t]);
          } else {
            load_x16f(A + (size_t)t * lda + k, xf);
          }
#pragma unroll
          for (int r = 0; r < kR; ++r) acc[t][r] = fmaf(dot16_i8(cur[u][r], xf), csc[u][r], acc[t][r]);
        }
      }
    }
    if (gn != g) {
      finish<NORM, T, kR>(acc, ss, nin, epi, g * kR, n_valid);
      if (gn >= n_groups) break;
      reset();
    }
    g = gn, k0 = kn;
  }
}

// 4-bit weights (W4, kernels.h): a lane reads 16 bytes = one whole 32-group (value i in the low nibble of
// byte i, value i + 16 in the high one) and its (scale, bias) pair per row per step. Per group,
// dot(w, x) = scale * dot(q, x) + bias * sum(x): the integer dot is taken in fp32 (a nibble becomes a float
// through the 2^23 mantissa trick), and sum(x) is shared by the block's rows. Half the int8 kernel's bytes
// per weight for about its instructions; one token takes 8-row blocks (8 x 16 B in flight per thread, as
// int8's 4 rows x 2 steps), larger steps 2-row ones. Not measured on a GPU yet (NOTES "Stop 27").
__device__ __forceinline__ float u4_to_f(uint32_t nibbles, int byte) {  // byte `byte` of nibbles & 0x0F0F0F0F
  return __uint_as_float(__byte_perm(nibbles, 0x4B000000u, 0x7440u | (uint32_t)byte)) - 8388608.0f;
}

// The 16 values of one nibble plane (0: low, 1: high) of a group's 4 words, dotted with 16 inputs.
__device__ __forceinline__ float dot16_u4(uint4 w, int plane, const float* x) {
  const uint32_t* q = reinterpret_cast<const uint32_t*>(&w);
  float part = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t v = (plane ? q[j] >> 4 : q[j]) & 0x0F0F0F0Fu;
#pragma unroll
    for (int b = 0; b < 4; ++b) part = fmaf(u4_to_f(v, b), x[4 * j + b], part);
  }
  return part;
}

template <bool NORM, int T, int kR>
__global__ void __launch_bounds__(kThreads) gemv_w4_kernel(const half* __restrict__ A, int lda, const uint8_t* __restrict__ Wq,
                                                           const half2* __restrict__ Mt, int ldw, int K, int n_valid, Epilogue epi,
                                                           NormInput nin) {
  const int n_groups = (n_valid + kR - 1) / kR;
  const int ldq = ldw / 2, ldm = ldw / 32;
  float acc[T][kR], ss[T];
  auto reset = [&] {
#pragma unroll
    for (int t = 0; t < T; ++t) {
      ss[t] = 0.f;
#pragma unroll
      for (int r = 0; r < kR; ++r) acc[t][r] = 0.f;
    }
  };
  reset();
  constexpr int kStep = kThreads * 32;
  const int kfirst = threadIdx.x * 32;
  auto load = [&](uint4 (&w)[kR], half2 (&m)[kR], int g, int k0) {
    const uint8_t* w0 = Wq + (size_t)g * kR * ldq;
    const half2* m0 = Mt + (size_t)g * kR * ldm;
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      w[r] = k0 < K ? ld_stream(w0 + (size_t)r * ldq + k0 / 2) : make_uint4(0, 0, 0, 0);
      m[r] = k0 < K ? __ldg(m0 + (size_t)r * ldm + k0 / 32) : __floats2half2_rn(0.f, 0.f);
    }
  };
  uint4 w[kR];
  half2 m[kR];
  int g = blockIdx.x, k0 = kfirst;
  load(w, m, g, k0);
  pdl_trigger();
  pdl_wait();
  for (;;) {
    uint4 cur[kR];
    half2 cm[kR];
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      cur[r] = w[r];
      cm[r] = m[r];
    }
    int gn = g, kn = k0 + kStep;
    if (kn >= K) gn = g + gridDim.x, kn = kfirst;
    if (gn < n_groups) load(w, m, gn, kn);
    if (k0 < K) {
#pragma unroll
      for (int t = 0; t < T; ++t) {
        float qd[kR], xsum = 0.f;
#pragma unroll
        for (int r = 0; r < kR; ++r) qd[r] = 0.f;
#pragma unroll
        for (int plane = 0; plane < 2; ++plane) {  // values k0 .. k0 + 15, then k0 + 16 .. k0 + 31
          const int k = k0 + 16 * plane;
          float xf[16];
          if constexpr (NORM) {
            load_normed8(nin, t, k, xf, ss[t]);
            load_normed8(nin, t, k + 8, xf + 8, ss[t]);
          } else {
            load_x16f(A + (size_t)t * lda + k, xf);
          }
#pragma unroll
          for (int i = 0; i < 16; ++i) xsum += xf[i];
#pragma unroll
          for (int r = 0; r < kR; ++r) qd[r] += dot16_u4(cur[r], plane, xf);
        }
#pragma unroll
        for (int r = 0; r < kR; ++r) {
          const float2 sb = __half22float2(cm[r]);
          acc[t][r] = fmaf(sb.x, qd[r], fmaf(sb.y, xsum, acc[t][r]));
        }
      }
    }
    if (gn != g) {
      finish<NORM, T, kR>(acc, ss, nin, epi, g * kR, n_valid);
      if (gn >= n_groups) break;
      reset();
    }
    g = gn, k0 = kn;
  }
}

// ---- One token, weights staged through shared memory (LLAMA2_GEMV_STAGED=1; stop 24, not measured) ----
// The kernels above hold a round of weights in registers while the previous one is used, so registers bound
// what is in flight: ~64 KB per SM for int8 (4 blocks x 16 KB), ~80 KB for fp16, where int8 reaches 57% of
// the H200's copy bandwidth and fp16 82% at batch 1. Here every thread keeps kStages 16-byte pieces in flight
// with cp.async into its own ring slots in shared memory and reads back only what it copied itself, so no
// barrier orders the ring (a slot is refilled after its piece was used: consume, then issue): 256 B per
// thread (plus int8 scales) for a few registers, 32-40 KB per block, as many blocks as shared memory allows.
// Blocks walk row groups grid-stride; a block's stages run on across its groups, so the pipeline does not
// drain at a group's reduction. Stages go column chunk outer, row inner: a chunk's activations are loaded
// once for the group's rows.
constexpr int kStages = 16;

template <bool W8>
struct Staged {
  static constexpr int E = W8 ? 16 : 8;                                // weights per 16-byte piece
  static constexpr int kStep = kThreads * E;                           // columns per stage
  static constexpr int SLOT = kThreads * 16 + (W8 ? kThreads * 4 : 0);  // a stage's bytes: pieces, then scale words
  static constexpr int SMEM = kStages * SLOT;
};

// W8: Wv is int8 q[N][ldw] with scales S[N][ldw / 32] (ldw % 64 == 0: a thread's scale sits in an aligned
// 4-byte pair); else fp16 [N][ldw]. Rows up to the last group's end are read (as the kernels above).
template <bool W8, int kR>
__global__ void __launch_bounds__(kThreads) gemv_staged_kernel(const half* __restrict__ A, const void* __restrict__ Wv,
                                                               const half* __restrict__ S, int ldw, int K, int n_valid, Epilogue epi) {
  using C = Staged<W8>;
  L2_DYNAMIC_SMEM(smem);
  const int t = threadIdx.x;
  const int KC = (K + C::kStep - 1) / C::kStep;
  const int P = KC * kR;  // stages per row group
  const int n_groups = (n_valid + kR - 1) / kR;
  const int my_groups = (int)blockIdx.x < n_groups ? (n_groups - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
  const int total = my_groups * P;
  const int lds = ldw / 32;
  // Stage s of this block: its j-th group, column chunk kc, row r of the group.
  auto issue = [&](int s) {
    if (s < total) {
      const int j = s / P, rem = s % P, kc = rem / kR, r = rem % kR;
      const size_t row = (size_t)(blockIdx.x + j * gridDim.x) * kR + r;
      const int k = kc * C::kStep + t * C::E;
      const bool ok = k < K;
      const int kk = ok ? k : 0;
      unsigned char* slot = smem + (s % kStages) * C::SLOT;
      if constexpr (W8) {
        mma::cp_async_16(mma::smem_u32(slot + t * 16), static_cast<const int8_t*>(Wv) + row * ldw + kk, ok);
        mma::cp_async_4(mma::smem_u32(slot + kThreads * 16 + t * 4), S + row * lds + ((kk / 32) & ~1), ok);
      } else {
        mma::cp_async_16(mma::smem_u32(slot + t * 16), static_cast<const half*>(Wv) + row * ldw + kk, ok);
      }
    }
    mma::cp_async_commit();  // one group per stage, empty past the end: the wait below counts stages
  };
  for (int s = 0; s < kStages; ++s) issue(s);  // weights need nothing from the previous kernel
  pdl_trigger();
  pdl_wait();
  float acc[1][kR], ss[1] = {0.f};
#pragma unroll
  for (int r = 0; r < kR; ++r) acc[0][r] = 0.f;
  float xf[C::E];
  for (int s = 0; s < total; ++s) {
    mma::cp_async_wait<kStages - 1>();  // stage s has landed (this thread's copies: all it reads)
    const int j = s / P, rem = s % P, kc = rem / kR, r = rem % kR;
    const int k = kc * C::kStep + t * C::E;
    if (r == 0) {  // the chunk's activations, for every row of the group
      if (k < K) {
        if constexpr (W8) load_x16f(A + k, xf);
        else load_x8f(A + k, xf);
      } else {
#pragma unroll
        for (int i = 0; i < C::E; ++i) xf[i] = 0.f;
      }
    }
    const unsigned char* slot = smem + (s % kStages) * C::SLOT;
    const uint4 w = *reinterpret_cast<const uint4*>(slot + t * 16);
    float v;
    if constexpr (W8) {
      const uint32_t sw = *reinterpret_cast<const uint32_t*>(slot + kThreads * 16 + t * 4);
      const float sc = __half2float(__ushort_as_half((unsigned short)(((k / 32) & 1) ? sw >> 16 : sw & 0xffffu)));
      v = dot16_i8(w, xf) * sc;
    } else {
      v = dot8f(w, xf, 0.f);
    }
    // r is the same for every thread: a runtime index into acc would put it in local memory.
#pragma unroll
    for (int rr = 0; rr < kR; ++rr)
      if (rr == r) acc[0][rr] += v;
    issue(s + kStages);  // into the slot just read (its value is in registers)
    if (rem == P - 1) {
      finish<false, 1, kR>(acc, ss, NormInput{}, epi, (int)(blockIdx.x + j * gridDim.x) * kR, n_valid);
#pragma unroll
      for (int rr = 0; rr < kR; ++rr) acc[0][rr] = 0.f;
    }
  }
  mma::cp_async_wait<0>();
}

// The staged kernel instead of the register one (one token): 0 off (default), 1 on; LLAMA2_GEMV_STAGED=1 or tests.
std::atomic<int> g_staged{kKnobUnread};
bool staged_on() {
  return env_knob(g_staged, "LLAMA2_GEMV_STAGED", [](const char* e) { return e && *e == '1' ? 1 : 0; }) == 1;
}

template <bool W8, int kR>
void launch_staged(const half* A, const void* W, const half* S, int ldw, int n_valid, int K, const Epilogue& epi, cudaStream_t s) {
  auto* kernel = gemv_staged_kernel<W8, kR>;
  const int grid = walk_grid(kernel, kThreads, ceil_div(n_valid, kR), true, Staged<W8>::SMEM);
  launch(kernel, grid, kThreads, Staged<W8>::SMEM, s, A, W, S, ldw, K, n_valid, epi);
}

// Rows per block: 0 = the defaults above; tests set 2 or 4 to compare (gemv_detail::set_rows).
int g_rows_f16 = 0, g_rows_w8 = 0;

// Blocks of `kernel` (T tokens) for n_groups row groups (walk_grid, launch.cuh). The grid-stride walk only at
// T = 1, where the GEMV is memory-bound (H200, 7B: +4.4% fp16 and +5.7% int8 tok/s at batch 1); from T = 2 the
// kernel is arithmetic-bound and the capped grid cost occupancy (int8 batch 4: 859 against 945 tok/s with a
// block per group).
template <class Kernel>
int gemv_grid(Kernel kernel, int T, int n_groups) {
  return walk_grid(kernel, kThreads, n_groups, T == 1);
}

template <bool NORM, int T>
void launch_f16(const half* A, int lda, const NormInput& nin, const half* W, int ldw, int n_valid, int K, const Epilogue& epi, cudaStream_t s) {
  if constexpr (T == 1 && !NORM) {
    if (K % 8 == 0 && staged_on()) return launch_staged<false, 2>(A, W, nullptr, ldw, n_valid, K, epi, s);
  }
  if constexpr (T <= 4) {  // 4-row fp16 blocks only where registers allow (tests compare them)
    if (g_rows_f16 == 4) {
      launch(gemv_f16_kernel<NORM, T, 4, 4>, gemv_grid(gemv_f16_kernel<NORM, T, 4, 4>, T, ceil_div(n_valid, 4)), kThreads, 0, s, A, lda, W, ldw, K, n_valid, epi, nin);
      return;
    }
  }
  launch(gemv_f16_kernel<NORM, T, 4, 2>, gemv_grid(gemv_f16_kernel<NORM, T, 4, 2>, T, ceil_div(n_valid, 2)), kThreads, 0, s, A, lda, W, ldw, K, n_valid, epi, nin);
}

template <bool NORM, int T>
void launch_w8(const half* A, int lda, const NormInput& nin, const int8_t* Wq, const half* S, int ldw, int n_valid, int K, const Epilogue& epi,
               cudaStream_t s) {
  if constexpr (T == 1 && !NORM) {
    if (K % 16 == 0 && ldw % 64 == 0 && staged_on()) return launch_staged<true, 4>(A, Wq, S, ldw, n_valid, K, epi, s);
  }
  if constexpr (T <= 4) {  // 4-row int8 blocks: the default at T = 1, tests compare them up to 4
    if ((g_rows_w8 ? g_rows_w8 : (T == 1 ? 4 : 2)) == 4) {
      launch(gemv_w8_kernel<NORM, T, 2, 4>, gemv_grid(gemv_w8_kernel<NORM, T, 2, 4>, T, ceil_div(n_valid, 4)), kThreads, 0, s, A, lda, Wq, S, ldw, K, n_valid, epi, nin);
      return;
    }
  }
  launch(gemv_w8_kernel<NORM, T, 2, 2>, gemv_grid(gemv_w8_kernel<NORM, T, 2, 2>, T, ceil_div(n_valid, 2)), kThreads, 0, s, A, lda, Wq, S, ldw, K, n_valid, epi, nin);
}

// Rows per 4-bit block: 8 at one token, 2 from two tokens (tests set 2, 4 or 8: gemv_detail::set_rows_w4; 4 is
// built for T <= 2, 8 for T = 1).
int g_rows_w4 = 0;

template <bool NORM, int T>
void launch_w4(const half* A, int lda, const NormInput& nin, const uint8_t* Wq, const half2* Mt, int ldw, int n_valid, int K, const Epilogue& epi,
               cudaStream_t s) {
  const int rows = g_rows_w4 ? g_rows_w4 : (T == 1 ? 8 : 2);
  if constexpr (T == 1) {  // (8-row blocks spill from two tokens on, 4-row ones from four with the norm)
    if (rows == 8) {
      auto* kern = gemv_w4_kernel<NORM, T, 8>;
      return launch(kern, gemv_grid(kern, T, ceil_div(n_valid, 8)), kThreads, 0, s, A, lda, Wq, Mt, ldw, K, n_valid, epi, nin);
    }
  }
  if constexpr (T <= 2) {
    if (rows == 4) {
      auto* kern = gemv_w4_kernel<NORM, T, 4>;
      return launch(kern, gemv_grid(kern, T, ceil_div(n_valid, 4)), kThreads, 0, s, A, lda, Wq, Mt, ldw, K, n_valid, epi, nin);
    }
  }
  auto* kern = gemv_w4_kernel<NORM, T, 2>;
  launch(kern, gemv_grid(kern, T, ceil_div(n_valid, 2)), kThreads, 0, s, A, lda, Wq, Mt, ldw, K, n_valid, epi, nin);
}

// Calls f(std::integral_constant<int, T>{}) for the token counts the kernels are built for (1..kGemvMaxT).
static_assert(kGemvMaxT == 8, "with_t lists T = 1..8");
template <class F>
void with_t(int T, F&& f) {
  switch (T) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    default: break;
  }
}

template <bool NORM>
void dispatch_f16(const half* A, int lda, const NormInput& nin, const half* W, int ldw, int T, int n_valid, int K, const Epilogue& epi,
                  cudaStream_t s) {
  with_t(T, [&](auto t) {
    if constexpr (!NORM || decltype(t)::value <= kGemvNormMaxT) launch_f16<NORM, decltype(t)::value>(A, lda, nin, W, ldw, n_valid, K, epi, s);
  });
}

template <bool NORM>
void dispatch_w8(const half* A, int lda, const NormInput& nin, const int8_t* Wq, const half* S, int ldw, int T, int n_valid, int K,
                 const Epilogue& epi, cudaStream_t s) {
  with_t(T, [&](auto t) {
    if constexpr (!NORM || decltype(t)::value <= kGemvNormMaxT) launch_w8<NORM, decltype(t)::value>(A, lda, nin, Wq, S, ldw, n_valid, K, epi, s);
  });
}

template <bool NORM>
void dispatch_w4(const half* A, int lda, const NormInput& nin, const uint8_t* Wq, const half2* Mt, int ldw, int T, int n_valid, int K,
                 const Epilogue& epi, cudaStream_t s) {
  with_t(T, [&](auto t) {
    if constexpr (!NORM || decltype(t)::value <= kGemvNormMaxT) launch_w4<NORM, decltype(t)::value>(A, lda, nin, Wq, Mt, ldw, n_valid, K, epi, s);
  });
}

}  // namespace

void gemv_f16(const half* A, int lda, const half* W, int ldw, int T, int N, int n_valid, int K, const Epilogue& epi, cudaStream_t s) {
  dispatch_f16<false>(A, lda, NormInput{}, W, ldw, T, n_valid, K, epi, s);
}

void gemv_w8(const half* A, int lda, const int8_t* Wq, const half* S, int ldw, int T, int N, int n_valid, int K, const Epilogue& epi,
             cudaStream_t s) {
  dispatch_w8<false>(A, lda, NormInput{}, Wq, S, ldw, T, n_valid, K, epi, s);
}

void gemv_f16_norm(const NormInput& in, const half* W, int ldw, int T, int N, int n_valid, int K, const Epilogue& epi, cudaStream_t s) {
  dispatch_f16<true>(nullptr, 0, in, W, ldw, T, n_valid, K, epi, s);
}

void gemv_w8_norm(const NormInput& in, const int8_t* Wq, const half* S, int ldw, int T, int N, int n_valid, int K, const Epilogue& epi,
                  cudaStream_t s) {
  dispatch_w8<true>(nullptr, 0, in, Wq, S, ldw, T, n_valid, K, epi, s);
}

void gemv_w4(const half* A, int lda, const uint8_t* Wq, const half2* meta, int ldw, int T, int N, int n_valid, int K, const Epilogue& epi,
             cudaStream_t s) {
  dispatch_w4<false>(A, lda, NormInput{}, Wq, meta, ldw, T, n_valid, K, epi, s);
}

void gemv_w4_norm(const NormInput& in, const uint8_t* Wq, const half2* meta, int ldw, int T, int N, int n_valid, int K, const Epilogue& epi,
                  cudaStream_t s) {
  dispatch_w4<true>(nullptr, 0, in, Wq, meta, ldw, T, n_valid, K, epi, s);
}

// Test / tuning hook (declared by kernels/tests/test_gemv.cu; not part of the engine's interface).
namespace gemv_detail {
void set_rows(int f16_rows, int w8_rows) {
  g_rows_f16 = f16_rows;
  g_rows_w8 = w8_rows;
}
void set_grid_cap(int blocks) { set_walk_cap(blocks); }
void set_staged(int on) { g_staged.store(on); }
void set_rows_w4(int rows) { g_rows_w4 = rows; }
}  // namespace gemv_detail

}  // namespace l2::kernels
