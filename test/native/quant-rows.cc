// cpu::QuantRows (the CPU backend's int8 activations, native/engine/cpu/cpu_ops.cc): the quantization rule and
// its edge cases, and a whole int8-activation matvec against a double-precision reference of the same rule.
// Prints "quant-rows ok" or the first failure.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "native/common/half.h"
#include "native/common/thread_pool.h"
#include "native/engine/cpu/cpu_ops.h"

using namespace l2;

static int fails = 0;
#define CHECK(c, ...)                          \
  do {                                         \
    if (!(c)) {                                \
      if (fails++ < 10) {                      \
        std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
        std::printf(__VA_ARGS__);              \
        std::printf("\n");                     \
      }                                        \
    }                                          \
  } while (0)

int main() {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  // Blocks: ordinary, with a NaN, with an inf, all zero, all denormal (127 / amax would overflow).
  std::vector<float> x(5 * 32);
  for (int i = 0; i < 32; ++i) x[i] = std::sin(0.7f * i) * (i == 5 ? 3.f : 1.f);
  for (int i = 32; i < 64; ++i) x[i] = 0.5f;
  x[40] = nan;
  for (int i = 64; i < 96; ++i) x[i] = -0.25f;
  x[70] = -inf;
  for (int i = 128; i < 160; ++i) x[i] = 1e-40f * (i % 3);
  cpu::QuantRows q;
  q.quantize(x.data(), 1, 5 * 32);
  {  // ordinary: q = round-half-even(x * 127 / amax), |q| <= 127, the largest at +-127, s = d * sum(q)
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[i]));
    int sum = 0, top = 0;
    for (int i = 0; i < 32; ++i) {
      const int want = (int)std::nearbyint(x[i] * (127.f / amax));
      CHECK(q.q[i] == want, "q[%d] = %d, want %d", i, q.q[i], want);
      sum += q.q[i];
      top = std::max(top, std::abs((int)q.q[i]));
    }
    CHECK(top == 127, "largest |q| %d", top);
    CHECK(q.d[0] == amax / 127.f, "d %g", q.d[0]);
    CHECK(q.s[0] == q.d[0] * (float)sum, "s %g", q.s[0]);
  }
  CHECK(std::isnan(q.d[1]) && std::isnan(q.s[1]), "a NaN input must make its block NaN");
  CHECK(std::isnan(q.d[2]) && std::isnan(q.s[2]), "an inf input must make its block NaN");
  for (int b : {3, 4}) {
    CHECK(q.d[b] == 0.f && q.s[b] == 0.f, "block %d: d %g s %g, want 0", b, q.d[b], q.s[b]);
    for (int i = 0; i < 32; ++i) CHECK(q.q[b * 32 + i] == 0, "block %d q[%d] = %d", b, i, q.q[b * 32 + i]);
  }

  // A Q8_0 matrix (7 rows: a group of 4 and 3 single rows) times 3 tokens: each output is the same rule in
  // double precision, sum_b d_w d_x sum_i q_w q_x (the int sums are exact; only the float accumulation
  // differs), and a NaN token gives NaN.
  const int R = 7, K = 96, T = 3, nb = K / 32;
  std::vector<uint8_t> w((size_t)R * nb * 34);
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < nb; ++b) {
      uint8_t* blk = w.data() + ((size_t)r * nb + b) * 34;
      const uint16_t dh = f32_to_fp16(0.01f * (1 + r + b));
      std::memcpy(blk, &dh, 2);
      for (int i = 0; i < 32; ++i) blk[2 + i] = (uint8_t)(int8_t)(((r * 31 + b * 17 + i * 7) % 255) - 127);
    }
  Matrix m;
  m.dtype = DType::Q8_0;
  m.rows = R;
  m.cols = K;
  m.data = w.data();
  std::vector<float> in((size_t)T * K), out((size_t)T * R);
  for (int i = 0; i < T * K; ++i) in[i] = std::cos(0.37f * i) * (1 + i % 5);
  in[2 * K + 50] = nan;
  ThreadPool pool(2);
  cpu::matmul(m, in.data(), T, out.data(), pool, cpu::Activations::Int8);
  cpu::QuantRows qi;
  qi.quantize(in.data(), T, K);
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) {
      const float o = out[(size_t)t * R + r];
      if (t == 2) {
        CHECK(std::isnan(o), "token with a NaN: row %d gave %g", r, o);
        continue;
      }
      double ref = 0;
      for (int b = 0; b < nb; ++b) {
        const uint8_t* blk = w.data() + ((size_t)r * nb + b) * 34;
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        long dot = 0;
        for (int i = 0; i < 32; ++i) dot += (long)(int8_t)blk[2 + i] * qi.q[(size_t)t * K + b * 32 + i];
        ref += (double)fp16_to_f32(dh) * qi.d[(size_t)t * nb + b] * dot;
      }
      CHECK(std::fabs(o - ref) <= 1e-5 * (1 + std::fabs(ref)), "token %d row %d: %.9g, want %.9g", t, r, o, ref);
    }
  {  // a prefill-sized input is split over the pool's threads: the same bytes as one thread's
    const int TT = 24, KK = 4096;
    std::vector<float> big((size_t)TT * KK);
    for (size_t i = 0; i < big.size(); ++i) big[i] = std::sin(0.013f * (float)i) * (1.f + (float)(i % 7));
    big[12345] = nan;
    cpu::QuantRows one, many;
    one.quantize(big.data(), TT, KK);
    many.quantize(big.data(), TT, KK, &pool);
    CHECK(one.q == many.q, "pool: q differs");
    CHECK(std::memcmp(one.d.data(), many.d.data(), one.d.size() * 4) == 0, "pool: d differs");
    CHECK(std::memcmp(one.s.data(), many.s.data(), one.s.size() * 4) == 0, "pool: s differs");
  }
  if (fails) return 1;
  std::printf("quant-rows ok\n");
  return 0;
}
