#include "q8_row.h"

#include <cstring>

#include "q8.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace l2 {

void q8_quantize_row_scalar(const float* x, int64_t n, uint8_t* blocks) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32, blocks += 34) {
    const uint16_t d = q8_quantize_group(x, 32, reinterpret_cast<int8_t*>(blocks + 2));
    std::memcpy(blocks, &d, 2);
  }
}

#if defined(__x86_64__)
namespace {

// q8_quantize_group's steps on 4 x 8 lanes, each giving the same bits:
// - amax: max_ps(|x|, m) returns m when |x| is NaN, as std::max(m, |x|) skips NaN; max is exact in any order;
// - d and 1/d: computed once in scalar, as there;
// - q8_round: x * id plus 0.49999997 with x * id's sign, truncated; NaN lanes (x * id unordered) give 0
//   where cvtt would give INT_MIN; every other value lies in [-127, 127], so the saturating packs are exact.
__attribute__((target("avx2"))) void row_avx2(const float* x, int64_t n, uint8_t* blocks) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  const __m256 half = _mm256_set1_ps(0.49999997f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < n / 32; ++b, x += 32, blocks += 34) {
    __m256 v[4], m = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + 8 * i);
      m = _mm256_max_ps(_mm256_andnot_ps(sign, v[i]), m);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    const float amax = _mm_cvtss_f32(h);
    const float d = amax / 127.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int i = 0; i < 4; ++i) {
      const __m256 r = _mm256_mul_ps(v[i], vid);
      const __m256 t = _mm256_add_ps(r, _mm256_or_ps(_mm256_and_ps(r, sign), half));
      const __m256i ordered = _mm256_castps_si256(_mm256_cmp_ps(r, r, _CMP_ORD_Q));
      q[i] = _mm256_and_si256(_mm256_cvttps_epi32(t), ordered);
    }
    const __m256i p01 = _mm256_packs_epi32(q[0], q[1]), p23 = _mm256_packs_epi32(q[2], q[3]);
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), order);
    const uint16_t dh = f32_to_fp16(d);
    std::memcpy(blocks, &dh, 2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(blocks + 2), bytes);
  }
}

}  // namespace
#endif

void q8_quantize_row(const float* x, int64_t n, uint8_t* blocks) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return row_avx2(x, n, blocks);
#endif
  q8_quantize_row_scalar(x, n, blocks);
}

}  // namespace l2
