#include "half_row.h"

#include "half.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace l2 {

void fp16_row_to_f32_scalar(const uint16_t* h, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = fp16_to_f32(h[i]);
}

void f32_row_to_fp16_scalar(const float* x, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = f32_to_fp16(x[i]);
}

#if defined(__x86_64__)
namespace {

// vcvtph2ps is exact for every fp16 (subnormals included); vcvtps2ph with imm 0 rounds to nearest even,
// overflows to infinity and rounds into fp16 subnormals as the scalar rule does (MXCSR's DAZ / FTZ are off
// in Node). Tails go through the scalar rules.
__attribute__((target("avx,f16c"))) void to_f32_f16c(const uint16_t* h, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
  fp16_row_to_f32_scalar(h + i, out + i, n - i);
}

__attribute__((target("avx,f16c"))) void to_fp16_f16c(const float* x, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  f32_row_to_fp16_scalar(x + i, out + i, n - i);
}

bool f16c() {
  static const bool has = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return has;
}

}  // namespace
#endif

void fp16_row_to_f32(const uint16_t* h, float* out, int64_t n) {
#if defined(__x86_64__)
  if (f16c()) return to_f32_f16c(h, out, n);
#endif
  fp16_row_to_f32_scalar(h, out, n);
}

void f32_row_to_fp16(const float* x, uint16_t* out, int64_t n) {
#if defined(__x86_64__)
  if (f16c()) return to_fp16_f16c(x, out, n);
#endif
  f32_row_to_fp16_scalar(x, out, n);
}

}  // namespace l2
