// q4_1_quantize_row (AVX2 where the CPU has it) against q4_1_quantize_row_scalar, the rule dtype "q4" and
// `llama2 convert --dtype q4_1` quantize by: the same bytes for random rows of many scales, rows with ties at
// half steps, constant blocks, signed zeros as minimum or maximum, NaN / inf blocks and values past fp16's
// range. Prints "q4_1 ok N blocks" or the first differences.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "native/model/ggml_blocks.h"

using namespace l2;

int main() {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::mt19937 rng(1234);
  std::vector<float> x;
  auto block = [&](auto f) {
    for (int i = 0; i < 32; ++i) x.push_back(f(i));
  };
  // Edge-case blocks.
  block([](int) { return 0.f; });
  block([](int) { return -0.f; });
  block([](int i) { return i % 3 == 0 ? -0.f : i % 3 == 1 ? 0.f : 1.f; });   // zero minimum, first zero -0
  block([](int i) { return i % 3 == 0 ? 0.f : i % 3 == 1 ? -0.f : 2.f; });   // zero minimum, first zero +0
  block([](int i) { return i % 2 ? -0.f : i == 0 ? 0.f : -3.f; });           // zero maximum
  block([](int i) { return i == 5 ? -0.f : i == 9 ? 0.f : -1.f - i; });      // zero maximum, first zero -0
  block([](int) { return 7.25f; });
  block([&](int i) { return i == 0 ? nan : (float)i; });
  block([&](int i) { return i == 17 ? nan : (float)i; });
  block([&](int i) { return i == 31 ? inf : (float)i; });
  block([&](int i) { return i == 3 ? -inf : (float)i; });
  block([](int i) { return i * 1e6f - 1e7f; });                              // d past fp16: saturated
  block([](int i) { return (float)i / 15.f * 2.f; });                        // steps of exactly d
  block([](int i) { return (float)(i % 16) + 0.5f; });                       // ties at half steps
  block([](int i) { return 1e-40f * (float)i; });                            // denormals
  // Random blocks over many scales and offsets.
  std::normal_distribution<float> g(0.f, 1.f);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int b = 0; b < 200000; ++b) {
    const float scale = std::pow(10.f, (float)(b % 13) - 8.f), offset = (b % 5 == 0) ? u(rng) * scale * 4 : 0.f;
    const bool ints = b % 7 == 0;  // small integers: many exact ties
    block([&](int) { return ints ? (float)(int)(u(rng) * 20.f) : g(rng) * scale + offset; });
  }
  const int64_t n = (int64_t)x.size(), blocks = n / 32;
  std::vector<uint8_t> a((size_t)blocks * 20), s((size_t)blocks * 20);
  q4_1_quantize_row(x.data(), n, a.data());
  q4_1_quantize_row_scalar(x.data(), n, s.data());
  int bad = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    if (std::memcmp(&a[(size_t)b * 20], &s[(size_t)b * 20], 20) != 0 && bad++ < 8) {
      std::printf("block %ld differs:", (long)b);
      for (int i = 0; i < 20; ++i) std::printf(" %02x/%02x", a[(size_t)b * 20 + i], s[(size_t)b * 20 + i]);
      std::printf("\n");
    }
  }
  if (bad) {
    std::printf("%d blocks differ\n", bad);
    return 1;
  }
  std::printf("q4_1 ok %ld blocks\n", (long)blocks);
  return 0;
}
