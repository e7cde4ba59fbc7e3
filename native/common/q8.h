// Q8_0 quantization of one group of values, llama.cpp's rule: d = amax / 127 (stored as fp16),
// q = round(x / d), halves away from zero. Used for int8 weights (groups of 32 along a row) and for
// the int8 KV cache (groups within one head's row), so both quantize identically.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "half.h"

namespace l2 {

// Round half away from zero, equal to std::lround for every float |v| <= 128 (test/native/q8-round.cc checks
// each one: adding the largest float below 0.5 never carries a value below k + 0.5 past k + 1), without
// lround's libm call, so the loops below vectorize (an int8 load of a 7B model quantizes 6.7e9 values on the
// host). NaN gives 0 (what lround's result became in an int8 on x86-64).
inline int q8_round(float v) { return v == v ? (int)(v + std::copysign(0.49999997f, v)) : 0; }  // the cast truncates

// Quantizes x[0..n) into q[0..n); returns the fp16 bits of the group's scale.
inline uint16_t q8_quantize_group(const float* x, int n, int8_t* q) {
  float amax = 0.f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));  // NaN is skipped, as by fmax
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  for (int i = 0; i < n; ++i) q[i] = (int8_t)q8_round(x[i] * id);
  return f32_to_fp16(d);
}

}  // namespace l2
