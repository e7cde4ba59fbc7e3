#include "cpu_ops.h"

#include <cpuid.h>
#include <immintrin.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../../common/half.h"
#include "../../common/thread_pool.h"
#include "../../model/ggml_blocks.h"
#include "../backend.h"

namespace l2::cpu {

namespace {

// Rows are processed in groups of up to kGroup, sharing each activation load.
constexpr int kGroup = 4;

// ---- scalar path (any x86-64) ----
// 8 interleaved partial sums, like the AVX2 path, then the same pairwise reduction.
void dot_rows_scalar(const float* const* rows, int R, const float* x, int64_t K, float* out) {
  for (int r = 0; r < R; ++r) {
    float acc[8] = {0};
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
      for (int l = 0; l < 8; ++l) acc[l] += rows[r][k + l] * x[k + l];
    float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (; k < K; ++k) s += rows[r][k] * x[k];
    out[r] = s;
  }
}

__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);                    // (0+4, 1+5, 2+6, 3+7)
  __m128 sh = _mm_movehl_ps(s, s);                  // (2+6, 3+7, ...)
  __m128 s2 = _mm_add_ps(s, sh);                    // (0+4)+(2+6), (1+5)+(3+7)
  __m128 s3 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
  return _mm_cvtss_f32(s3);
}

__attribute__((target("avx2,fma"))) void dot_rows_avx2(const float* const* rows, int R, const float* x, int64_t K, float* out) {
  __m256 acc[kGroup];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 xv = _mm256_loadu_ps(x + k);
    for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(rows[r] + k), xv, acc[r]);
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(acc[r]);
    for (int64_t j = k; j < K; ++j) s = std::fma(rows[r][j], x[j], s);  // explicit: the same in every path
    out[r] = s;
  }
}

// Row k-vector of 8 as fp32: fp32 rows are read as they are, fp16 rows widened in the register (F16C).
template <bool F16>
__attribute__((target("avx2,f16c"))) inline __m256 load8(const void* row, int64_t k) {
  if constexpr (F16) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + k)));
  else return _mm256_loadu_ps(static_cast<const float*>(row) + k);
}

// R rows (<= kGroup) x TT tokens (<= 3) at once: 12 accumulators in registers, so each weight load feeds
// TT FMAs and each activation load R (prefill is FMA-bound instead of load-bound). Per (row, token) the
// lanes accumulate over k exactly as dot_rows_avx2 does, so results are bit-identical to it. fp16 rows
// (F16) are widened in the register as they are loaded, like the decode path: widening a row group into a
// buffer first cost a store per 8 weights, a third of the FMA time at 16 tokens.
template <int TT, bool F16>
__attribute__((target("avx2,fma,f16c"))) void dot_tile_avx2(const void* const* rows, int R, const float* x, int64_t ldx, int64_t K, float* out,
                                                            int64_t ldo) {
  __m256 acc[kGroup][TT];
  for (int r = 0; r < kGroup; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
  int64_t k = 0;
  if (R == kGroup) {  // constant bounds: fully unrolled, all accumulators in registers (the usual case)
    for (; k + 8 <= K; k += 8) {
      __m256 xv[TT];
      for (int t = 0; t < TT; ++t) xv[t] = _mm256_loadu_ps(x + t * ldx + k);
      for (int r = 0; r < kGroup; ++r) {
        const __m256 w = load8<F16>(rows[r], k);
        for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_fmadd_ps(w, xv[t], acc[r][t]);
      }
    }
  } else {
    for (; k + 8 <= K; k += 8) {
      __m256 xv[TT];
      for (int t = 0; t < TT; ++t) xv[t] = _mm256_loadu_ps(x + t * ldx + k);
      for (int r = 0; r < R; ++r) {
        const __m256 w = load8<F16>(rows[r], k);
        for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_fmadd_ps(w, xv[t], acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) {
      float s = hsum(acc[r][t]);
      for (int64_t j = k; j < K; ++j) {  // explicit fma: the same in every path
        const float w = F16 ? fp16_to_f32(static_cast<const uint16_t*>(rows[r])[j]) : static_cast<const float*>(rows[r])[j];
        s = std::fma(w, x[t * ldx + j], s);
      }
      out[t * ldo + r] = s;
    }
}

// Fused widen + dot for few tokens (decode): weights converted in registers, never stored. Each product
// and each lane's accumulation order are those of widening first and then dot_rows_avx2, so the results
// are bit-identical to that path (which prefill keeps, to widen a row once for many tokens).
__attribute__((target("avx2,fma,f16c"))) void dot_rows_f16_avx2(const uint8_t* const* rows, int R, const float* x, int64_t K, float* out) {
  __m256 acc[kGroup];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 xv = _mm256_loadu_ps(x + k);
    for (int r = 0; r < R; ++r) {
      __m256 w = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[r] + 2 * k)));
      acc[r] = _mm256_fmadd_ps(w, xv, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(acc[r]);
    const uint16_t* h = reinterpret_cast<const uint16_t*>(rows[r]);
    for (int64_t j = k; j < K; ++j) s = std::fma(fp16_to_f32(h[j]), x[j], s);
    out[r] = s;
  }
}

// One Q8_0 block (fp16 scale d, 32 int8 q) as four vectors of d * (float)q: the one conversion that both
// the widening path and the fused decode path use, so they compute the same weights. d * q is exact in fp32
// (11 + 8 significant bits). The scale goes through F16C and each quarter is sign-extended straight from
// memory: no scalar fp16 decode, no extract / byte-shift shuffles competing with vpmovsxbd for the port.
__attribute__((target("avx2,f16c"))) inline void q8_block_avx2(const uint8_t* blk, __m256 (&w)[4]) {
  uint16_t dh;
  std::memcpy(&dh, blk, 2);
  const __m256 d = _mm256_set1_ps(_cvtsh_ss(dh));
  for (int j = 0; j < 4; ++j)
    w[j] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * j)))));
}

// R rows at once with R a constant, so the R accumulators stay in registers (a runtime R left them on the
// stack, a store-to-load round trip in every FMA chain). Per row, the lanes accumulate over k in order. Rows
// are blocks of 32 values, `kBytes` each, widened by `Widen` (Q8_0, Q4_1).
template <int R, int kBytes, void (*Widen)(const uint8_t*, __m256 (&)[4])>
__attribute__((target("avx2,fma,f16c"))) inline void dot_rows_blocks_r(const uint8_t* const* rows, const float* x, int64_t K, float* out) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < K / 32; ++b) {
    const float* xb = x + b * 32;
    const __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8), x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
    for (int r = 0; r < R; ++r) {
      __m256 w[4];
      Widen(rows[r] + b * kBytes, w);
      __m256 a = acc[r];
      a = _mm256_fmadd_ps(w[0], x0, a);
      a = _mm256_fmadd_ps(w[1], x1, a);
      a = _mm256_fmadd_ps(w[2], x2, a);
      acc[r] = _mm256_fmadd_ps(w[3], x3, a);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
}

template <int kBytes, void (*Widen)(const uint8_t*, __m256 (&)[4])>
__attribute__((target("avx2,fma,f16c"))) void dot_rows_blocks_avx2(const uint8_t* const* rows, int R, const float* x, int64_t K, float* out) {
  if (R == kGroup) return dot_rows_blocks_r<kGroup, kBytes, Widen>(rows, x, K, out);
  for (int r = 0; r < R; ++r) dot_rows_blocks_r<1, kBytes, Widen>(rows + r, x, K, out + r);
}

// The same widening into a row buffer (prefill), so both paths see the same weights.
template <int kBytes, void (*Widen)(const uint8_t*, __m256 (&)[4])>
__attribute__((target("avx2,fma,f16c"))) void blocks_to_f32_avx2(const uint8_t* p, float* out, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; ++b) {
    __m256 w[4];
    Widen(p + b * kBytes, w);
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(out + b * 32 + 8 * j, w[j]);
  }
}

// One Q4_1 block (fp16 d, fp16 m, 16 bytes: value i in the low nibble of byte i, value i + 16 in the high one)
// as four vectors of d * q + m. The product is exact (11 + 4 bits), so one fused multiply-add rounds the same
// sum as ggml's dequantizer and the scalar path (decode_blocks: a product, then a rounded sum) do, one
// instruction fewer: every path sees the same weights. 4-bit matrices (GGUF
// Q4_0 / Q4_1 / Q4_K) run in this form: 20 bytes per 32 weights against Q8_0's 34.
__attribute__((target("avx2,fma,f16c"))) inline void q41_block_avx2(const uint8_t* blk, __m256 (&w)[4]) {
  uint32_t dm;  // (d, m) widened by one conversion
  std::memcpy(&dm, blk, 4);
  const __m128 dmf = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dm));
  const __m256 d = _mm256_broadcastss_ps(dmf), m = _mm256_broadcastss_ps(_mm_movehdup_ps(dmf));
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 4));
  const __m128i lo = _mm_and_si128(raw, _mm_set1_epi8(0x0F)), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0F));
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int j = 0; j < 4; ++j) w[j] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[j])), m);
}

// ---- int8 activations (Activations::Int8) ----
// One token's quantized input: K / 32 blocks.
struct QuantRow {
  const int8_t* q;
  const float* d;
  const float* s;
};

// Q8_0 / Q4_1 rows dotted with an activation row quantized to int8 per 32-block (QuantRows): integer products
// summed exactly, then per block one multiply-add by (weight scale x activation scale), and for Q4_1 its
// bias times the block's quantized sum. The layout of the sums is AVX2's: lane l of 8 holds values 4l..4l+3
// of each block (maddubs + madd), folded by hsum's pairwise order; the scalar path repeats it exactly.

// A block's fp16 scale (and Q4_1's bias: 20-byte blocks) as stored.
template <int kBytes>
inline void block_halves(const uint8_t* blk, uint16_t& dh, uint16_t& mh) {
  std::memcpy(&dh, blk, 2);
  mh = 0;
  if constexpr (kBytes == 20) std::memcpy(&mh, blk + 2, 2);
}

template <int kBytes>
float dot_q8act_scalar(const uint8_t* row, const QuantRow& x, int64_t n_blocks) {
  float acc[8] = {0}, bias = 0.f;
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* blk = row + b * kBytes;
    const int8_t* xq = x.q + b * 32;
    uint16_t dh, mh;
    block_halves<kBytes>(blk, dh, mh);
    const float dw = fp16_to_f32(dh);
    for (int l = 0; l < 8; ++l) {
      int32_t p = 0;
      for (int j = 4 * l; j < 4 * l + 4; ++j) {
        const int w = kBytes == 20 ? (j < 16 ? blk[4 + j] & 0x0F : blk[4 + j - 16] >> 4) : (int)(int8_t)blk[2 + j];
        p += w * xq[j];
      }
      acc[l] = std::fma(dw * x.d[b], (float)p, acc[l]);
    }
    if constexpr (kBytes == 20) bias = std::fma(fp16_to_f32(mh), x.s[b], bias);
  }
  return (((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))) + bias;
}

// R rows x T tokens, out[t * ldo + r].
template <int kBytes>
void dot_rows_q8act_scalar(const uint8_t* const* rows, int R, const QuantRow* x, int T, int64_t n_blocks, float* out, int64_t ldo) {
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) out[t * ldo + r] = dot_q8act_scalar<kBytes>(rows[r], x[t], n_blocks);
}

// The int8-activation tiles, compiled twice: the AVX2 integer dot (maddubs + madd) and, where the CPU has
// AVX-VNNI, vpdpbusd (one instruction for the same exact int32 sums: the same bits, fewer instructions).
#define L2_Q8ACT_SUFFIX avx2
#define L2_Q8ACT_TARGET "avx2,fma,f16c"
#define L2_Q8ACT_DOT(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
#include "q8act_tile.inc"
#define L2_Q8ACT_SUFFIX vnni
#define L2_Q8ACT_TARGET "avx2,fma,f16c,avxvnni"
#define L2_Q8ACT_DOT(u, s) _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
#include "q8act_tile.inc"

// AVX-VNNI: CPUID leaf 7 sub-leaf 1, EAX bit 4 (GCC 12's __builtin_cpu_supports("avxvnni") misses it).
bool cpu_has_avxvnni() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return (a >> 4) & 1;
}

void axpy_scalar(float a, const float* v, float* out, int n) {
  for (int i = 0; i < n; ++i) out[i] += a * v[i];
}

__attribute__((target("avx2"))) void axpy_avx2(float a, const float* v, float* out, int n) {
  const __m256 av = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(out + i), _mm256_mul_ps(av, _mm256_loadu_ps(v + i))));
  for (; i < n; ++i) out[i] += a * v[i];
}

__attribute__((target("avx2,f16c"))) void f16_to_f32_f16c(const uint16_t* h, float* f, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
  for (; i < n; ++i) f[i] = fp16_to_f32(h[i]);
}

void f16_to_f32_scalar(const uint16_t* h, float* f, int64_t n) {
  for (int64_t i = 0; i < n; ++i) f[i] = fp16_to_f32(h[i]);
}

void bf16_to_f32_scalar(const uint16_t* h, float* f, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits = (uint32_t)h[i] << 16;
    std::memcpy(f + i, &bits, 4);
  }
}

__attribute__((target("avx2"))) void bf16_to_f32_avx2(const uint16_t* h, float* f, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i)));
    _mm256_storeu_ps(f + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  bf16_to_f32_scalar(h + i, f + i, n - i);
}

// Q8_0 blocks (fp16 scale d, 32 int8 q) -> d * (float)q, the same product either way (bit-identical).
void q8_to_f32_scalar(const uint8_t* p, float* out, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* blk = p + b * kQ8BlockBytes;
    uint16_t dh;
    std::memcpy(&dh, blk, 2);
    const float d = fp16_to_f32(dh);
    const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
    for (int i = 0; i < kQ8Block; ++i) out[b * kQ8Block + i] = d * (float)q[i];
  }
}


void q41_to_f32_scalar(const uint8_t* p, float* out, int64_t n_blocks) { decode_blocks(DType::Q4_1, p, out, n_blocks * 32); }


using Q8ActDot = void (*)(const uint8_t* const*, int, const QuantRow*, int, int64_t, float*, int64_t);

struct Dispatch {
  bool avx2, vnni;
  Q8ActDot q8act_q8, q8act_q41;  // int8 activations with Q8_0 / Q4_1 rows
  void (*dot_rows)(const float* const*, int, const float*, int64_t, float*);
  void (*f16)(const uint16_t*, float*, int64_t);
  void (*bf16)(const uint16_t*, float*, int64_t);
  void (*q8)(const uint8_t*, float*, int64_t);
  void (*q41)(const uint8_t*, float*, int64_t);
  void (*axpy)(float, const float*, float*, int);
  Dispatch() {
    __builtin_cpu_init();
    // LLAMA2_CPU_SIMD=scalar | avx2 (tests): the portable path, or AVX2 without AVX-VNNI, on any CPU that has
    // them, to check them against the fastest one.
    const char* simd = std::getenv("LLAMA2_CPU_SIMD");
    const std::string force = simd ? simd : "";
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") && force != "scalar";
    vnni = avx2 && cpu_has_avxvnni() && force != "avx2";
    q8act_q8 = vnni ? dot_rows_q8act_vnni<kQ8BlockBytes> : avx2 ? dot_rows_q8act_avx2<kQ8BlockBytes> : dot_rows_q8act_scalar<kQ8BlockBytes>;
    q8act_q41 = vnni ? dot_rows_q8act_vnni<20> : avx2 ? dot_rows_q8act_avx2<20> : dot_rows_q8act_scalar<20>;
    dot_rows = avx2 ? dot_rows_avx2 : dot_rows_scalar;
    f16 = avx2 ? f16_to_f32_f16c : f16_to_f32_scalar;
    bf16 = avx2 ? bf16_to_f32_avx2 : bf16_to_f32_scalar;
    q8 = avx2 ? blocks_to_f32_avx2<kQ8BlockBytes, q8_block_avx2> : q8_to_f32_scalar;
    q41 = avx2 ? blocks_to_f32_avx2<20, q41_block_avx2> : q41_to_f32_scalar;
    axpy = avx2 ? axpy_avx2 : axpy_scalar;
  }
};
const Dispatch& dispatch() {
  static Dispatch d;
  return d;
}

}  // namespace

const char* simd_name() { return dispatch().vnni ? "avx2+fma+f16c+avxvnni" : dispatch().avx2 ? "avx2+fma+f16c" : "scalar"; }

void row_to_f32(const Matrix& m, int64_t r, float* out) {
  const uint8_t* p = m.row(r);
  switch (m.dtype) {
    case DType::F32: std::memcpy(out, p, (size_t)m.cols * 4); break;
    case DType::F16: dispatch().f16(reinterpret_cast<const uint16_t*>(p), out, m.cols); break;
    case DType::BF16: dispatch().bf16(reinterpret_cast<const uint16_t*>(p), out, m.cols); break;
    case DType::Q8_0: dispatch().q8(p, out, m.cols / kQ8Block); break;
    case DType::Q4_1: dispatch().q41(p, out, m.cols / 32); break;
    default: decode_blocks(m.dtype, p, out, m.cols); break;  // the backend decodes these at load; correct anyway
  }
}

float dot(const float* a, const float* b, int64_t n) {
  float out;
  const float* rows[1] = {a};
  dispatch().dot_rows(rows, 1, b, n, &out);
  return out;
}

void axpy(float a, const float* v, float* out, int n) { dispatch().axpy(a, v, out, n); }

void rmsnorm(float* out, const float* x, const float* w, int n, float eps) {
  float ss = 0.f;
  for (int i = 0; i < n; ++i) ss += x[i] * x[i];
  ss = 1.0f / sqrtf(ss / (float)n + eps);
  for (int i = 0; i < n; ++i) out[i] = w[i] * (ss * x[i]);
}

}  // namespace l2::cpu

void l2::host_rmsnorm(float* out, const float* x, const float* w, int n, float eps) { cpu::rmsnorm(out, x, w, n, eps); }

namespace l2::cpu {

namespace {

// Rows [r0, r1) of out[t * W.rows + n] = dot(W.row(n), in + t * W.cols): the body every matmul entry point
// splits over the threads. Each row's arithmetic does not depend on the range it falls in.
bool takes_int8(const Matrix& W) { return (W.dtype == DType::Q8_0 || W.dtype == DType::Q4_1) && W.cols % 32 == 0; }

// qin: the input quantized (Activations::Int8), used for the matrices that take it.
void matmul_rows(const Matrix& W, const float* in, const QuantRows* qin, int T, float* out, int64_t r0, int64_t r1) {
  const int64_t N = W.rows, K = W.cols;
  const auto& d = dispatch();
  if (qin && takes_int8(W)) {
    const bool q41 = W.dtype == DType::Q4_1;
    const Q8ActDot dot = q41 ? d.q8act_q41 : d.q8act_q8;
    const int64_t nb = K / 32;
    thread_local std::vector<QuantRow> xs;
    xs.resize((size_t)T);
    for (int t = 0; t < T; ++t) xs[(size_t)t] = {qin->q.data() + (size_t)t * K, qin->d.data() + (size_t)t * nb, qin->s.data() + (size_t)t * nb};
    const uint8_t* rows[kGroup];
    for (int64_t n0 = r0; n0 < r1; n0 += kGroup) {
      int R = (int)std::min<int64_t>(kGroup, r1 - n0);
      for (int r = 0; r < R; ++r) rows[r] = W.row(n0 + r);
      dot(rows, R, xs.data(), T, nb, out + n0, N);
    }
    return;
  }
  // Decode (few tokens): f16 / Q8_0 / Q4_1 rows are widened in registers; more tokens: widened once into a
  // buffer and reused for every token. Both give the same bits (see dot_rows_f16_avx2).
  auto fused = !d.avx2 || T > 2                ? nullptr
               : W.dtype == DType::F16         ? dot_rows_f16_avx2
               : W.dtype == DType::Q8_0        ? dot_rows_blocks_avx2<kQ8BlockBytes, q8_block_avx2>
               : W.dtype == DType::Q4_1        ? dot_rows_blocks_avx2<20, q41_block_avx2>
                                               : nullptr;
  if (fused) {
    const uint8_t* rows[kGroup];
    float res[kGroup];
    for (int64_t n0 = r0; n0 < r1; n0 += kGroup) {
      int R = (int)std::min<int64_t>(kGroup, r1 - n0);
      for (int r = 0; r < R; ++r) rows[r] = W.row(n0 + r);
      for (int t = 0; t < T; ++t) {
        fused(rows, R, in + (size_t)t * K, K, res);
        for (int r = 0; r < R; ++r) out[(size_t)t * N + n0 + r] = res[r];
      }
    }
    return;
  }
  // fp16 rows go to the tile as they are (widened in registers); bf16 / Q8_0 / Q4_1 rows are widened once per row
  // group into a buffer; fp32 rows are used in place.
  const bool in_place = W.dtype == DType::F32 || (d.avx2 && W.dtype == DType::F16);
  thread_local std::vector<float> buf;
  if (!in_place && buf.size() < (size_t)(kGroup * K)) buf.resize((size_t)(kGroup * K));
  const void* rows[kGroup];
  float res[kGroup];
  for (int64_t n0 = r0; n0 < r1; n0 += kGroup) {
    int R = (int)std::min<int64_t>(kGroup, r1 - n0);
    for (int r = 0; r < R; ++r) {
      if (in_place) {
        rows[r] = W.row(n0 + r);
      } else {
        row_to_f32(W, n0 + r, buf.data() + (size_t)r * K);
        rows[r] = buf.data() + (size_t)r * K;
      }
    }
    int t = 0;
    if (d.avx2) {
      const bool f16 = W.dtype == DType::F16;
      for (; t + 3 <= T; t += 3)
        (f16 ? dot_tile_avx2<3, true> : dot_tile_avx2<3, false>)(rows, R, in + (size_t)t * K, K, K, out + (size_t)t * N + n0, N);
      if (T - t == 2) (f16 ? dot_tile_avx2<2, true> : dot_tile_avx2<2, false>)(rows, R, in + (size_t)t * K, K, K, out + (size_t)t * N + n0, N), t += 2;
      if (T - t == 1) (f16 ? dot_tile_avx2<1, true> : dot_tile_avx2<1, false>)(rows, R, in + (size_t)t * K, K, K, out + (size_t)t * N + n0, N), t += 1;
      continue;
    }
    for (; t < T; ++t) {
      d.dot_rows(reinterpret_cast<const float* const*>(rows), R, in + (size_t)t * K, K, res);
      for (int r = 0; r < R; ++r) out[(size_t)t * N + n0 + r] = res[r];
    }
  }
}

}  // namespace

void QuantRows::quantize(const float* in, int T, int64_t K_, ThreadPool* pool) {
  K = K_;
  const int64_t nb = K / 32;
  q.resize((size_t)T * K);
  d.resize((size_t)T * nb);
  s.resize((size_t)T * nb);
  if (pool && pool->size() > 1 && T * K >= (1 << 16)) {  // prefill-sized inputs (a decode step's is ~10 us of work)
    pool->parallel_for(T * nb, 64, [&](int64_t b0, int64_t b1) { quantize_blocks(in, b0, b1); });
    return;
  }
  quantize_blocks(in, 0, T * nb);
}

void QuantRows::quantize_blocks(const float* in, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const float* x = in + b * 32;
    float amax = 0.f;
    bool finite = true;
    for (int i = 0; i < 32; ++i) {
      const float a = std::fabs(x[i]);
      finite = finite && a <= std::numeric_limits<float>::max();  // false for inf and NaN
      amax = std::max(amax, a);
    }
    int8_t* qb = q.data() + b * 32;
    if (!finite) {  // the products come out NaN, as the fp32 path's would
      std::memset(qb, 0, 32);
      d[b] = s[b] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    if (amax < 1e-30f) {  // zero, or too small for 127 / amax to stay finite: contributes nothing
      std::memset(qb, 0, 32);
      d[b] = s[b] = 0.f;
      continue;
    }
    const float scale = amax / 127.f, inv = 127.f / amax;
    int sum = 0;
    for (int i = 0; i < 32; ++i) {
      const int v = (int)std::nearbyint(std::min(127.f, std::max(-127.f, x[i] * inv)));
      qb[i] = (int8_t)v;
      sum += v;
    }
    d[b] = scale;
    s[b] = scale * (float)sum;
  }
}

namespace {
// The input quantized once per call, before the rows are split over the threads (only when a matrix takes it).
const QuantRows* quantized_input(const Matrix* const* W, int n, const float* in, int T, Activations act, QuantRows& buf, ThreadPool& pool) {
  if (act != Activations::Int8) return nullptr;
  for (int i = 0; i < n; ++i)
    if (takes_int8(*W[i])) {
      buf.quantize(in, T, W[0]->cols, &pool);
      return &buf;
    }
  return nullptr;
}
}  // namespace

void matmul(const Matrix& W, const float* in, int T, float* out, ThreadPool& pool, Activations act) {
  const Matrix* w[1] = {&W};
  float* o[1] = {out};
  matmul_multi(w, o, 1, in, T, pool, act);
}

void matmul_multi(const Matrix* const* W, float* const* out, int n, const float* in, int T, ThreadPool& pool, Activations act) {
  int64_t total = 0;
  for (int i = 0; i < n; ++i) total += W[i]->rows;
  const int64_t K = W[0]->cols;
  thread_local QuantRows qbuf;
  const QuantRows* qin = quantized_input(W, n, in, T, act, qbuf, pool);
  // Row ranges of the concatenation, cut at the matrices' edges.
  pool.parallel_for(total, work_grain(total, total * K * T, kGroup * 4), [&](int64_t begin, int64_t end) {
    int64_t base = 0;
    for (int i = 0; i < n && base < end; base += W[i]->rows, ++i) {
      const int64_t r0 = std::max(begin, base) - base, r1 = std::min(end, base + W[i]->rows) - base;
      if (r0 < r1) matmul_rows(*W[i], in, qin, T, out[i], r0, r1);
    }
  });
}

void matmul_swiglu(const Matrix& W1, const Matrix& W3, const float* in, int T, float* h1, float* h3, ThreadPool& pool,
                   Activations act) {
  const int64_t F = W1.rows, K = W1.cols;
  thread_local QuantRows qbuf;
  const Matrix* w[2] = {&W1, &W3};
  const QuantRows* qin = quantized_input(w, 2, in, T, act, qbuf, pool);
  pool.parallel_for(F, work_grain(F, 2 * F * K * T, kGroup * 4), [&](int64_t r0, int64_t r1) {
    matmul_rows(W1, in, qin, T, h1, r0, r1);
    matmul_rows(W3, in, qin, T, h3, r0, r1);
    for (int t = 0; t < T; ++t)
      for (int64_t i = (int64_t)t * F + r0; i < (int64_t)t * F + r1; ++i) {
        const float g = h1[i];
        h1[i] = g / (1.0f + expf(-g)) * h3[i];
      }
  });
}

}  // namespace l2::cpu
