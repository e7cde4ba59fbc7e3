#include "ggml_blocks.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../common/half.h"
#include "model_source.h"

// ggml's reference rounds each product and each sum. Every product here is exact: an fp16 scale (11
// significant bits) times the block's integer factors (at most 12 bits together, Q6_K's 127 x 31) fits
// fp32's 24-bit mantissa, so a fused multiply-add would round the same; contraction stays off anyway so
// that the operations are the ones written.
#pragma GCC optimize("fp-contract=off")

namespace l2 {

namespace {

constexpr int kK = 256;  // values per K-quant super-block

float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_f32(h);
}

// The 32 integers of a Q4_0 / Q4_1 / Q5_0 / Q5_1 block before its scale: nibbles (low nibbles are values
// 0..15, high nibbles 16..31), with a fifth bit per value from a 32-bit word for Q5 (bit j for value j),
// less `centre` (8 for Q4_0, 16 for Q5_0, 0 where the block has a minimum instead).
void ints32(const uint8_t* qs, const uint8_t* qh_p, int centre, int* v) {
  uint32_t qh = 0;
  if (qh_p) std::memcpy(&qh, qh_p, 4);
  for (int j = 0; j < 16; ++j) {
    v[j] = (int)((qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - centre;
    v[j + 16] = (int)((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - centre;
  }
}

// Q4_0 (fp16 d, nibbles) and Q5_0 (fp16 d, fifth bits, nibbles): v * d. Q4_1 / Q5_1 add an fp16 minimum
// after d: v * d + m.
void q_0(const uint8_t* qs, const uint8_t* qh, int centre, float d, float* y) {
  int v[32];
  ints32(qs, qh, centre, v);
  for (int j = 0; j < 32; ++j) y[j] = (float)v[j] * d;
}

void q_1(const uint8_t* qs, const uint8_t* qh, float d, float m, float* y) {
  int v[32];
  ints32(qs, qh, 0, v);
  for (int j = 0; j < 32; ++j) y[j] = (float)v[j] * d + m;
}

// Q2_K (84 bytes): 16 bytes of (scale | min << 4) per 16 values, 64 bytes of 2-bit values, fp16 d, dmin.
// Values come in two halves of 128; within a half, 2-bit plane p of byte l holds value 32 p + l.
void q2_k(const uint8_t* b, float* y) {
  const uint8_t* sc = b;
  const uint8_t* qs = b + 16;
  const float d = half_at(b + 80), dmin = half_at(b + 82);
  for (int half = 0; half < 2; ++half, qs += 32) {
    for (int plane = 0; plane < 4; ++plane) {
      for (int part = 0; part < 2; ++part) {
        const uint8_t s = *sc++;
        const float dl = d * (float)(s & 0xF), ml = dmin * (float)(s >> 4);
        const uint8_t* q = qs + 16 * part;
        for (int l = 0; l < 16; ++l) *y++ = dl * (float)((q[l] >> (2 * plane)) & 3) - ml;
      }
    }
  }
}

// Q3_K (110 bytes): 32 bytes of high bits (bit p of byte l: value 32 p + l of each half, p counting
// planes across both halves), 64 bytes of 2-bit values laid out as Q2_K's, 12 bytes packing sixteen
// 6-bit scales (offset 32), fp16 d. A value is ((2 low bits) - (high bit clear ? 4 : 0)) * d * scale.
void q3_k(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* packed = b + 96;
  const float d = half_at(b + 108);
  int8_t scales[16];
  for (int i = 0; i < 16; ++i) {
    // Low 4 bits: the low nibble of byte i (i < 8) or the high nibble of byte i - 8; high 2 bits: bit
    // pair i / 4 of byte 8 + i % 4.
    const int low = i < 8 ? packed[i] & 0xF : packed[i - 8] >> 4;
    const int high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
    scales[i] = (int8_t)((low | (high << 4)) - 32);
  }
  int s = 0;
  for (int half = 0; half < 2; ++half, qs += 32) {
    for (int plane = 0; plane < 4; ++plane) {
      const uint8_t bit = (uint8_t)(1u << (4 * half + plane));
      for (int part = 0; part < 2; ++part) {
        const float dl = d * (float)scales[s++];
        const uint8_t* q = qs + 16 * part;
        const uint8_t* hm = hmask + 16 * part;
        for (int l = 0; l < 16; ++l) {
          const int v = (int)((q[l] >> (2 * plane)) & 3) - ((hm[l] & bit) ? 0 : 4);
          *y++ = dl * (float)v;
        }
      }
    }
  }
}

// The 6-bit scale and min of sub-block j (0..7) of Q4_K / Q5_K, packed in 12 bytes: j < 4 in the low
// 6 bits of bytes j and j + 4; j >= 4 in the nibbles of byte j + 4 with their top 2 bits in the top 2
// bits of bytes j - 4 (scale) and j (min).
void scale_min_k4(int j, const uint8_t* p, float* sc, float* mn) {
  int s, m;
  if (j < 4) {
    s = p[j] & 63;
    m = p[j + 4] & 63;
  } else {
    s = (p[j + 4] & 0xF) | ((p[j - 4] >> 6) << 4);
    m = (p[j + 4] >> 4) | ((p[j] >> 6) << 4);
  }
  *sc = (float)s;
  *mn = (float)m;
}

// Q4_K (144 bytes): fp16 d, dmin, 12 scale bytes, 128 bytes of nibbles. Each 64 values are 32 bytes:
// low nibbles the first 32 (sub-block 2 i), high nibbles the next (2 i + 1). value = d*sc * q - dmin*m.
// Q5_K (176 bytes) adds 32 bytes of fifth bits before the nibbles: bit 2 i (low) / 2 i + 1 (high) of byte l.
void q45_k(const uint8_t* b, bool five, float* y) {
  const float d = half_at(b), dmin = half_at(b + 2);
  const uint8_t* packed = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + (five ? 48 : 16);
  for (int i = 0; i < 4; ++i, qs += 32) {
    float sc, mn;
    for (int nib = 0; nib < 2; ++nib) {
      scale_min_k4(2 * i + nib, packed, &sc, &mn);
      const float dl = d * sc, ml = dmin * mn;
      const int bit = 2 * i + nib;
      for (int l = 0; l < 32; ++l) {
        int q = nib ? qs[l] >> 4 : qs[l] & 0xF;
        if (five && ((qh[l] >> bit) & 1)) q += 16;
        *y++ = dl * (float)q - ml;
      }
    }
  }
}

// Q6_K (210 bytes): 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 int8 scales (one per
// 16 values), fp16 d. Per half of 128 values (64 nibble bytes, 32 pair bytes): value 32 g + l takes the
// low (g < 2) or high nibble of byte l + 32 (g & 1), and bit pair g of qh[l]; value = d * scale * (q - 32).
void q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half_at(b + 208);
  for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128) {
    for (int l = 0; l < 32; ++l) {
      for (int g = 0; g < 4; ++g) {
        const uint8_t lo = ql[l + 32 * (g & 1)];
        const int q = (int)(((g < 2 ? lo & 0xF : lo >> 4)) | (((qh[l] >> (2 * g)) & 3) << 4)) - 32;
        y[l + 32 * g] = d * (float)sc[l / 16 + 2 * g] * (float)q;
      }
    }
  }
}

}  // namespace

BlockLayout block_layout(DType t) {
  switch (t) {
    case DType::F32: return {1, 4};
    case DType::F16:
    case DType::BF16: return {1, 2};
    case DType::Q8_0: return {32, 34};
    case DType::Q4_0: return {32, 18};
    case DType::Q4_1: return {32, 20};
    case DType::Q5_0: return {32, 22};
    case DType::Q5_1: return {32, 24};
    case DType::Q2_K: return {kK, 84};
    case DType::Q3_K: return {kK, 110};
    case DType::Q4_K: return {kK, 144};
    case DType::Q5_K: return {kK, 176};
    case DType::Q6_K: return {kK, 210};
  }
  return {1, 0};
}

bool is_load_only(DType t) {
  return t != DType::F32 && t != DType::F16 && t != DType::BF16 && t != DType::Q8_0;
}

void decode_blocks(DType t, const uint8_t* src, float* dst, int64_t cols) {
  const BlockLayout L = block_layout(t);
  for (int64_t i = 0; i < cols / L.elements; ++i, src += L.bytes, dst += L.elements) {
    switch (t) {
      case DType::Q4_0: q_0(src + 2, nullptr, 8, half_at(src), dst); break;
      case DType::Q4_1: q_1(src + 4, nullptr, half_at(src), half_at(src + 2), dst); break;
      case DType::Q5_0: q_0(src + 6, src + 2, 16, half_at(src), dst); break;
      case DType::Q5_1: q_1(src + 8, src + 4, half_at(src), half_at(src + 2), dst); break;
      case DType::Q2_K: q2_k(src, dst); break;
      case DType::Q3_K: q3_k(src, dst); break;
      case DType::Q4_K: q45_k(src, false, dst); break;
      case DType::Q5_K: q45_k(src, true, dst); break;
      case DType::Q6_K: q6_k(src, dst); break;
      default: return;
    }
  }
}

bool blocks_to_q8_0(DType t, const uint8_t* src, uint8_t* dst, int64_t cols) {
  if (t != DType::Q4_0 && t != DType::Q5_0) return false;
  const BlockLayout L = block_layout(t);
  for (int64_t i = 0; i < cols / 32; ++i, src += L.bytes, dst += 34) {
    std::memcpy(dst, src, 2);  // the fp16 scale
    int v[32];
    if (t == DType::Q4_0) ints32(src + 2, nullptr, 8, v);
    else ints32(src + 6, src + 2, 16, v);
    for (int j = 0; j < 32; ++j) dst[2 + j] = (uint8_t)(int8_t)v[j];
  }
  return true;
}

bool runs_as_w4(DType t) { return t == DType::Q4_0 || t == DType::Q4_1 || t == DType::Q4_K; }

namespace {
// fp16 of a finite scale or bias, saturated at +-65504 instead of overflowing to infinity.
uint16_t fp16_sat(float v) { return f32_to_fp16(v > 65504.f ? 65504.f : v < -65504.f ? -65504.f : v); }
}  // namespace

bool blocks_to_w4(DType t, const uint8_t* src, uint8_t* q, uint16_t* meta, int64_t cols) {
  if (!runs_as_w4(t)) return false;
  const BlockLayout L = block_layout(t);
  for (int64_t b = 0; b < cols / L.elements; ++b, src += L.bytes) {
    if (t != DType::Q4_K) {
      // Q4_0 / Q4_1 nibbles are already in the W4 order. Q4_0: d * (q - 8) = d * q + (-8 d), exact in fp16
      // (a power-of-two multiple) unless -8 d overflows, which no finite weight of |value| <= 8 |d| reaches
      // below 65504 / 8 = 8188 (saturated beyond).
      std::memcpy(q, src + (t == DType::Q4_0 ? 2 : 4), 16);
      std::memcpy(&meta[0], src, 2);  // d
      meta[1] = t == DType::Q4_0 ? fp16_sat(-8.f * half_at(src)) : (uint16_t)(src[2] | src[3] << 8);
      q += 16, meta += 2;
      continue;
    }
    // Q4_K: sub-block j (32 values) of 64-value chunk i = 2 i + nib takes nibble plane `nib` of qs[32 i ..].
    const float d = half_at(src), dmin = half_at(src + 2);
    const uint8_t* qs = src + 16;
    for (int j = 0; j < 8; ++j, q += 16, meta += 2) {
      float sc, mn;
      scale_min_k4(j, src + 4, &sc, &mn);
      meta[0] = fp16_sat(d * sc);
      meta[1] = fp16_sat(-(dmin * mn));
      const uint8_t* p = qs + 32 * (j / 2);
      const int shift = 4 * (j % 2);
      for (int i = 0; i < 16; ++i) q[i] = (uint8_t)(((p[i] >> shift) & 0xF) | (((p[i + 16] >> shift) & 0xF) << 4));
    }
  }
  return true;
}

void q4_1_quantize_row_scalar(const float* x, int64_t cols, uint8_t* dst) {
  for (int64_t b = 0; b < cols / 32; ++b, x += 32, dst += 20) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < 32; ++i) {
      lo = x[i] < lo ? x[i] : lo;
      hi = x[i] > hi ? x[i] : hi;
    }
    const float d = (hi - lo) / 15.f, id = d != 0.f ? 1.f / d : 0.f;
    const uint16_t dh = fp16_sat(d), mh = fp16_sat(lo);
    std::memcpy(dst, &dh, 2);
    std::memcpy(dst + 2, &mh, 2);
    auto q = [&](float v) {
      const float t = (v - lo) * id + 0.5f;
      return t >= 15.f ? 15 : t >= 0.f ? (int)t : 0;  // (NaN -> 0)
    };
    for (int i = 0; i < 16; ++i) dst[4 + i] = (uint8_t)(q(x[i]) | q(x[i + 16]) << 4);
  }
}

#if defined(__x86_64__)
namespace {

// The scalar rule on 4 x 8 lanes, with the same bits (dtype "q4" at load spent half its time here):
// - min / max: exact in any order, but the scalar fold keeps the first element equal to the minimum, so a
//   zero minimum takes the sign of the first zero; blocks holding a NaN (order-dependent in the fold) go to
//   the scalar code;
// - t = (v - lo) * id + 0.5 as separate multiply and add (this function is built without FMA: no contraction);
// - t >= 15 ? 15 : t >= 0 ? trunc(t) : 0 is cvtt(min(max(t, 0), 15)) (max_ps(NaN, 0) gives 0, as the rule).
__attribute__((target("avx2"))) void q4_1_row_avx2(const float* x, int64_t cols, uint8_t* dst) {
  const __m256 zero = _mm256_setzero_ps(), fifteen = _mm256_set1_ps(15.f), half = _mm256_set1_ps(0.5f);
  for (int64_t b = 0; b < cols / 32; ++b, x += 32, dst += 20) {
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + 8 * i);
    __m256 mn = _mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3]));
    __m256 mx = _mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3]));
    const __m256 unord = _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(v[0], v[1], _CMP_UNORD_Q), _mm256_cmp_ps(v[2], v[3], _CMP_UNORD_Q)),
                                      _mm256_cmp_ps(v[0], v[2], _CMP_UNORD_Q));
    if (_mm256_movemask_ps(unord)) {
      q4_1_quantize_row_scalar(x, 32, dst);
      continue;
    }
    __m128 l = _mm_min_ps(_mm256_castps256_ps128(mn), _mm256_extractf128_ps(mn, 1));
    l = _mm_min_ps(l, _mm_movehl_ps(l, l));
    l = _mm_min_ss(l, _mm_shuffle_ps(l, l, 1));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    float lo = _mm_cvtss_f32(l), hi = _mm_cvtss_f32(h);
    if (lo == 0.f) lo = *std::find(x, x + 32, 0.f);  // the first zero's sign, as the scalar fold
    if (hi == 0.f) hi = *std::find(x, x + 32, 0.f);
    const float d = (hi - lo) / 15.f, id = d != 0.f ? 1.f / d : 0.f;
    const uint16_t dh = fp16_sat(d), mh = fp16_sat(lo);
    std::memcpy(dst, &dh, 2);
    std::memcpy(dst + 2, &mh, 2);
    const __m256 vlo = _mm256_set1_ps(lo), vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int i = 0; i < 4; ++i) {
      const __m256 t = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v[i], vlo), vid), half);
      q[i] = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(t, zero), fifteen));
    }
    // Values 0..15: x[i] in the low nibble, x[i + 16] in the high one. packs works within 128-bit lanes, so the
    // 64-bit quarters are put back in order before the last pack.
    const __m256i low = _mm256_packs_epi32(q[0], q[1]), high = _mm256_packs_epi32(q[2], q[3]);
    const __m256i both = _mm256_permute4x64_epi64(_mm256_or_si256(low, _mm256_slli_epi16(high, 4)), 0xD8);
    const __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(both), _mm256_extracti128_si256(both, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 4), bytes);
  }
}

}  // namespace
#endif

void q4_1_quantize_row(const float* x, int64_t cols, uint8_t* dst) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return q4_1_row_avx2(x, cols, dst);
#endif
  q4_1_quantize_row_scalar(x, cols, dst);
}

bool blocks_to_q4_1(DType t, const uint8_t* src, uint8_t* dst, int64_t cols) {
  if (!runs_as_w4(t)) return false;
  if (t == DType::Q4_1) {
    std::memcpy(dst, src, (size_t)(cols / 32) * 20);
    return true;
  }
  const BlockLayout L = block_layout(t);
  uint8_t q[128];
  uint16_t meta[16];
  for (int64_t b = 0; b < cols / L.elements; ++b, src += L.bytes) {
    blocks_to_w4(t, src, q, meta, L.elements);
    for (int g = 0; g < L.elements / 32; ++g, dst += 20) {
      std::memcpy(dst, &meta[2 * g], 4);
      std::memcpy(dst + 4, q + 16 * g, 16);
    }
  }
  return true;
}

}  // namespace l2
