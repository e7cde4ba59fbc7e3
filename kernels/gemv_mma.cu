// Decode matrix multiply for small batches (2..32 tokens; fp16 weights, or int8 with per-32 scales
// dequantized to fp16 in registers as the GEMM does) on tensor cores: the weights
// are mma's A operand (16 rows per warp), the tokens its N operand (8 per mma.m16n8k16). Tensor cores
// make the arithmetic free, so the kernel stays a weight stream at every batch size up to 32, where the
// CUDA-core GEMV (gemv.cu) spends T FMAs per weight and the tiled GEMM wastes most of each MMA on
// padding rows.
//
// Fragments come straight from global memory with 16-byte loads, no shared memory: within a 64-column
// chunk, lane (g = lane / 4, q = lane % 4) loads columns [16q, 16q + 16) of weight rows g and g + 8 and of
// token g of each 8-token tile, as 8 half2 words; mma step s (0..3) uses its words 2s and 2s + 1 where
// the fragment layout (mma.cuh) asks for logical columns (2q, 2q + 1) and (2q + 8, 2q + 9). That maps
// the chunk's 64 columns one-to-one onto the 4 steps' logical columns, identically for A and B, and a
// dot product does not depend on the order of its terms. The 4 warps of a block split K and meet in
// shared memory for the fused epilogue.
//
// Checked and measured on H200 (stop 14): int8 weights, where the GEMV is ALU-bound from 2 tokens, gain
// most (7B qkv at T = 8: 0.0204 ms against the GEMV's 0.0531 and the GEMM's 0.0384), so the backend takes it
// for int8 steps of 2..16 tokens; for fp16 the GEMV (T <= 4) or the GEMM measured faster (cuda_backend.cu).
// At one token it walks its row blocks grid-stride like the GEMV (stop 24; LLAMA2_GEMV_MMA_T1=1 selects it
// there for A/B runs, not measured yet).
#include "common.cuh"
#include "epilogue.cuh"
#include "gemm_common.cuh"
#include "kernels.h"
#include "launch.cuh"
#include "mma.cuh"

namespace l2::kernels {

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 16;   // weight rows per block (one mma M)
constexpr int kChunk = 64;  // columns per chunk (4 mma k-steps)

struct Frag {  // one lane's 16 columns of a row (or a token): 8 half2 words
  uint4 lo, hi;
  __device__ __forceinline__ uint32_t word(int j) const {
    const uint32_t* a = reinterpret_cast<const uint32_t*>(&lo);
    const uint32_t* b = reinterpret_cast<const uint32_t*>(&hi);
    return j < 4 ? a[j] : b[j - 4];
  }
};

// A lane's raw weights of one chunk for rows g and g + 8: fp16: two uint4 per row; int8: one uint4 (16
// int8) per row and that group's scale (columns 16q..16q+15 lie in group 2 * chunk + q / 2).
template <bool W8>
struct Raw {
  uint4 v[2][W8 ? 1 : 2];
  half s[2];
};

template <bool W8>
__device__ __forceinline__ Frag to_frag(const Raw<W8>& r, int row) {
  Frag f;
  if constexpr (!W8) {
    f.lo = r.v[row][0];
    f.hi = r.v[row][W8 ? 0 : 1];
  } else {
    const __half2 sc = __half2half2(r.s[row]);
    __half2 h[8];
    gemm_common::i8x4_to_half2x2(r.v[row][0].x, h[0], h[1]);
    gemm_common::i8x4_to_half2x2(r.v[row][0].y, h[2], h[3]);
    gemm_common::i8x4_to_half2x2(r.v[row][0].z, h[4], h[5]);
    gemm_common::i8x4_to_half2x2(r.v[row][0].w, h[6], h[7]);
#pragma unroll
    for (int e = 0; e < 8; ++e) h[e] = __hmul2(h[e], sc);
    uint32_t* lo = reinterpret_cast<uint32_t*>(&f.lo);
    uint32_t* hi = reinterpret_cast<uint32_t*>(&f.hi);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      lo[e] = *reinterpret_cast<uint32_t*>(&h[e]);
      hi[e] = *reinterpret_cast<uint32_t*>(&h[4 + e]);
    }
  }
  return f;
}

// NT tiles of 8 tokens; U chunks per warp per round (their weight loads are in flight together).
// W8: Wv is int8 q[N][ldw] and S its scales [N][ldw / 32]; otherwise Wv is fp16 [N][ldw] and S unused.
// Blocks walk the 16-row blocks grid-stride (walk_grid: capped at one token, as the GEMV): a block's next
// row block's first round is in flight while it reduces and stores the current one.
template <bool W8, int NT, int U>
__global__ void __launch_bounds__(kThreads) gemv_mma_kernel(const half* __restrict__ A, int lda, const void* __restrict__ Wv,
                                                            const half* __restrict__ S, int ldw, int T, int n_valid, int K, Epilogue epi) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  constexpr int kElem = W8 ? 1 : 2;  // bytes per weight
  const int n_chunks = K / kChunk;
  const int n_blocks = (n_valid + kRows - 1) / kRows;
  const int rounds = (n_chunks + U * kWarps - 1) / (U * kWarps);

  float acc[NT][4];
  auto reset = [&] {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;
  };
  reset();

  // Chunks of this warp: warp, warp + kWarps, ...; round r holds chunks r * U * kWarps + u * kWarps + warp.
  auto chunk_of = [&](int round, int u) { return (round * U + u) * kWarps + warp; };
  auto load_w = [&](Raw<W8> (&w)[U], int rb, int round) {
    const int n0 = rb * kRows;
    const uint8_t* w_lo = static_cast<const uint8_t*>(Wv) + ((size_t)(n0 + g) * ldw + 16 * q) * kElem;  // row g
    const uint8_t* w_hi = w_lo + (size_t)8 * ldw * kElem;                                               // row g + 8
    const half* s_lo = W8 ? S + (size_t)(n0 + g) * (ldw / 32) + q / 2 : nullptr;
    const half* s_hi = W8 ? s_lo + (size_t)8 * (ldw / 32) : nullptr;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = chunk_of(round, u);
      const bool ok = c < n_chunks;
      const size_t off = (size_t)(ok ? c : 0) * kChunk * kElem;
#pragma unroll
      for (int i = 0; i < (W8 ? 1 : 2); ++i) {
        w[u].v[0][i] = ok ? ld_stream(w_lo + off + 16 * i) : make_uint4(0, 0, 0, 0);
        w[u].v[1][i] = ok ? ld_stream(w_hi + off + 16 * i) : make_uint4(0, 0, 0, 0);
      }
      if constexpr (W8) {
        w[u].s[0] = ok ? __ldg(s_lo + 2 * c) : __float2half(0.f);
        w[u].s[1] = ok ? __ldg(s_hi + 2 * c) : __float2half(0.f);
      }
    }
  };

  // acc[nt][0..1] = C[row g][tokens nt*8 + 2q, +1], acc[nt][2..3] = C[row g + 8][same tokens]; the warps'
  // K shares meet in shared memory, then epilogue pairs (rows 2i, 2i + 1) x tokens.
  __shared__ float red[kWarps][kRows][NT * 8];
  auto finish = [&](int rb) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      red[warp][g][nt * 8 + 2 * q] = acc[nt][0];
      red[warp][g][nt * 8 + 2 * q + 1] = acc[nt][1];
      red[warp][g + 8][nt * 8 + 2 * q] = acc[nt][2];
      red[warp][g + 8][nt * 8 + 2 * q + 1] = acc[nt][3];
    }
    __syncthreads();
    for (int p = threadIdx.x; p < (kRows / 2) * T; p += kThreads) {
      const int t = p / (kRows / 2), r = 2 * (p % (kRows / 2));
      const int n = rb * kRows + r;
      if (n >= n_valid) continue;
      float v0 = 0.f, v1 = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        v0 += red[w][r][t];
        v1 += red[w][r + 1][t];
      }
      epilogue_pair(epi, t, n, v0, v1);
    }
    __syncthreads();  // red is rewritten by the block's next row block
  };

  Raw<W8> wr[U];
  int rb = blockIdx.x, round = 0;
  if (rb >= n_blocks) return;
  load_w(wr, rb, 0);  // weights need nothing from the previous kernel
  pdl_trigger();
  pdl_wait();
  for (;;) {
    Raw<W8> cur[U];
#pragma unroll
    for (int u = 0; u < U; ++u) cur[u] = wr[u];
    // The next round (this row block's, or the next row block's first) is in flight while this one computes.
    int rbn = rb, rn = round + 1;
    if (rn == rounds) rbn = rb + gridDim.x, rn = 0;
    if (rbn < n_blocks) load_w(wr, rbn, rn);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = chunk_of(round, u);
      if (c >= n_chunks) continue;
      const Frag cl = to_frag<W8>(cur[u], 0), ch = to_frag<W8>(cur[u], 1);
      const size_t k = (size_t)c * kChunk + 16 * q;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int t = nt * 8 + g;
        Frag x;
        if (t < T) {
          x.lo = ld_cached(A + (size_t)t * lda + k);
          x.hi = ld_cached(A + (size_t)t * lda + k + 8);
        } else {
          x.lo = x.hi = make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          const uint32_t a[4] = {cl.word(2 * s), ch.word(2 * s), cl.word(2 * s + 1), ch.word(2 * s + 1)};
          mma::mma_f16f32(acc[nt], a, x.word(2 * s), x.word(2 * s + 1));
        }
      }
    }
    if (rbn != rb) {
      finish(rb);
      if (rbn >= n_blocks) break;
      reset();
    }
    rb = rbn, round = rn;
  }
}

template <bool W8, int NT>
void launch_mma(const half* A, int lda, const void* W, const half* S, int ldw, int T, int n_valid, int K, const Epilogue& epi, cudaStream_t s) {
  constexpr int U = NT <= 2 ? 2 : 1;  // registers: U chunks of weights in flight, NT * 8 words of activations
  auto* kernel = gemv_mma_kernel<W8, NT, U>;
  launch(kernel, walk_grid(kernel, kThreads, ceil_div(n_valid, kRows), T == 1), kThreads, 0, s, A, lda, W, S, ldw, T, n_valid, K, epi);
}

template <bool W8>
bool dispatch(const half* A, int lda, const void* W, const half* S, int ldw, int T, int N, int n_valid, int K, const Epilogue& epi, cudaStream_t s) {
  if (T < 1 || T > kGemvMmaMaxT || K % kChunk != 0 || N % kRows != 0 || n_valid > N) return false;
  if (T <= 8) launch_mma<W8, 1>(A, lda, W, S, ldw, T, n_valid, K, epi, s);
  else if (T <= 16) launch_mma<W8, 2>(A, lda, W, S, ldw, T, n_valid, K, epi, s);
  else launch_mma<W8, 4>(A, lda, W, S, ldw, T, n_valid, K, epi, s);
  return true;
}

}  // namespace

bool gemv_mma_f16(const half* A, int lda, const half* W, int ldw, int T, int N, int n_valid, int K, const Epilogue& epi, cudaStream_t s) {
  return dispatch<false>(A, lda, W, nullptr, ldw, T, N, n_valid, K, epi, s);
}

bool gemv_mma_w8(const half* A, int lda, const int8_t* Wq, const half* S, int ldw, int T, int N, int n_valid, int K, const Epilogue& epi,
                 cudaStream_t s) {
  return dispatch<true>(A, lda, Wq, S, ldw, T, N, n_valid, K, epi, s);
}

}  // namespace l2::kernels
