// native/common/half_row.h's F16C rows against half.h's scalar rules: every fp16 value to fp32, and fp32 to
// fp16 for every float whose exponent fp16 can reach or round into (|x| < 2^17: normals, subnormals, the
// rounding boundaries, overflow to infinity) in steps of 97 units plus every rounding tie and its neighbours, both signs, and
// infinities. NaN only as NaN. Row lengths 1..40 check the scalar tails. Prints "half ok" or the misses.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "native/common/half.h"
#include "native/common/half_row.h"

int main() {
  uint64_t bad = 0;
  std::vector<uint16_t> h(65536);
  for (uint32_t i = 0; i < 65536; ++i) h[i] = (uint16_t)i;
  std::vector<float> a(65536), b(65536);
  l2::fp16_row_to_f32(h.data(), a.data(), 65536);
  l2::fp16_row_to_f32_scalar(h.data(), b.data(), 65536);
  for (uint32_t i = 0; i < 65536; ++i) {
    const bool nan = std::isnan(b[i]);
    if (nan ? !std::isnan(a[i]) : std::memcmp(&a[i], &b[i], 4) != 0) {
      if (bad++ < 5) std::printf("fp16 %04x -> %a, scalar %a\n", i, a[i], b[i]);
    }
  }
  std::vector<float> x;
  for (uint32_t bits = 0; bits < 0x48000000u; bits += 97) x.push_back(0), std::memcpy(&x.back(), &bits, 4);
  for (uint32_t e = 0; e < 0x48000000u; e += 0x1000) {  // every multiple of 2^-13 ulp: ties and their neighbours
    for (uint32_t d : {0xfffu, 0x1000u, 0x1001u, 0u}) {
      uint32_t bits = e + d;
      x.push_back(0);
      std::memcpy(&x.back(), &bits, 4);
    }
  }
  x.push_back(INFINITY);
  x.push_back(65519.f);
  x.push_back(65520.f);
  const size_t n = x.size();
  for (size_t i = 0; i < n; ++i) x.push_back(-x[i]);
  std::vector<uint16_t> p(x.size()), q(x.size());
  l2::f32_row_to_fp16(x.data(), p.data(), (int64_t)x.size());
  l2::f32_row_to_fp16_scalar(x.data(), q.data(), (int64_t)x.size());
  for (size_t i = 0; i < x.size(); ++i)
    if (p[i] != q[i] && bad++ < 10) std::printf("fp32 %a -> %04x, scalar %04x\n", x[i], p[i], q[i]);
  for (int len = 1; len <= 40; ++len) {  // tails
    std::vector<uint16_t> r((size_t)len), s((size_t)len);
    l2::f32_row_to_fp16(x.data() + 1000, r.data(), len);
    l2::f32_row_to_fp16_scalar(x.data() + 1000, s.data(), len);
    if (r != s && bad++ < 15) std::printf("tail %d differs\n", len);
  }
  if (bad) {
    std::printf("%llu misses\n", (unsigned long long)bad);
    return 1;
  }
  std::printf("half ok (%zu floats)\n", x.size());
  return 0;
}
