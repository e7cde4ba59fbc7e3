// native/common/q8.h against llama.cpp's Q8_0 rule written with std::lround (what q8.h used before its
// rounding was made vectorizable): q8_round for every float with |v| <= 128 (every value x / d can take),
// and q8_quantize_group on random, constant, zero and NaN-holding groups; q8_quantize_row (AVX2) against
// the scalar rule. Prints "q8 ok" or the first misses.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>

#include "native/common/q8.h"
#include "native/common/q8_row.h"

static uint16_t reference_group(const float* x, int n, int8_t* q) {
  float amax = 0.f;
  for (int i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  for (int i = 0; i < n; ++i) q[i] = std::isnan(x[i]) ? (int8_t)0 : (int8_t)std::lround(x[i] * id);
  return l2::f32_to_fp16(d);
}

int main() {
  uint64_t bad = 0;
  for (uint32_t bits = 0; bits <= 0x43000000u; ++bits) {  // 0 .. 128.0, both signs
    for (uint32_t sign : {0u, 0x80000000u}) {
      uint32_t b = bits | sign;
      float v;
      std::memcpy(&v, &b, 4);
      if (l2::q8_round(v) != std::lround(v) && bad++ < 5) std::printf("q8_round(%a) = %d, lround %ld\n", v, l2::q8_round(v), std::lround(v));
    }
  }
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int g = 0; g < 200000; ++g) {
    const int n = g % 3 == 0 ? 8 : 32;
    float x[32];
    const float scale = std::ldexp(1.f, (int)(rng() % 40) - 30);
    for (int i = 0; i < n; ++i) x[i] = g % 101 == 0 ? 0.f : g % 103 == 0 ? 0.25f : nd(rng) * scale;
    if (g % 107 == 0) x[rng() % n] = NAN;
    int8_t q1[32], q2[32];
    const uint16_t s1 = l2::q8_quantize_group(x, n, q1), s2 = reference_group(x, n, q2);
    if ((s1 != s2 || std::memcmp(q1, q2, n) != 0) && bad++ < 10) std::printf("group %d differs\n", g);
  }
  // q8_quantize_row (AVX2 where the CPU has it) against the scalar rule, block for block, on rows holding
  // every kind of value: normal, tiny, huge, subnormal, +-0, NaN, +-inf, constant and all-zero blocks.
  const float specials[] = {0.f, -0.f, NAN, -NAN, INFINITY, -INFINITY, 1e-40f, -1e-45f, 3e38f, -3e38f, 127.f, 0.5f, -0.5f};
  for (int row = 0; row < 4000; ++row) {
    float x[256];
    const float scale = std::ldexp(1.f, (int)(rng() % 60) - 40);
    for (int i = 0; i < 256; ++i) x[i] = nd(rng) * scale;
    if (row % 3 == 0) x[rng() % 256] = specials[rng() % (sizeof specials / sizeof specials[0])];
    if (row % 17 == 0) for (int i = 32; i < 64; ++i) x[i] = 0.f;
    if (row % 19 == 0) for (int i = 64; i < 96; ++i) x[i] = -2.5f;
    uint8_t a[8 * 34], b[8 * 34];
    l2::q8_quantize_row(x, 256, a);
    l2::q8_quantize_row_scalar(x, 256, b);
    if (std::memcmp(a, b, sizeof a) != 0 && bad++ < 15) std::printf("q8_quantize_row differs from the scalar rule on row %d\n", row);
  }
  if (bad) std::printf("q8 FAIL: %llu mismatches\n", (unsigned long long)bad);
  else std::printf("q8 ok\n");
  return bad ? 1 : 0;
}
