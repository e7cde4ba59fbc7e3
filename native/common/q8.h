// Q8_0 quantization of one group of values, llama.cpp's rule: d = amax / 127 (stored as fp16),
// q = round(x / d), halves away from zero. Used for int8 weights (groups of 32 along a row) and for
// the int8 KV cache (groups within one head's row), so both quantize identically.
#pragma once
#include <cmath>
#include <cstdint>

#include "half.h"

namespace l2 {

// Quantizes x[0..n) into q[0..n); returns the fp16 bits of the group's scale.
inline uint16_t q8_quantize_group(const float* x, int n, int8_t* q) {
  float amax = 0.f;
  for (int i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  for (int i = 0; i < n; ++i) q[i] = (int8_t)std::lround(x[i] * id);
  return f32_to_fp16(d);
}

}  // namespace l2
