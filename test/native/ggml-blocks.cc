// Decodes rows of one GGUF block type with native/model/ggml_blocks.cc and compares them bit for bit
// with ggml's own decoding (test/fixtures/ggml-blocks.json, written by scripts/ggml-oracle/).
//   ggml-blocks TYPE COLS ROWS blocks.bin expected.bin   -> "ok N" (" +q8" / " +w4" when also checked as Q8_0 / as W4)
//   or the first differences
#include <cstdio>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "native/common/half.h"
#include "native/model/ggml_blocks.h"
#include "native/model/model_source.h"

using namespace l2;

static std::vector<char> slurp(const char* path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

int main(int argc, char** argv) {
  if (argc != 6) return 2;
  const std::string name = argv[1];
  const std::pair<const char*, DType> all[] = {{"Q4_0", DType::Q4_0}, {"Q4_1", DType::Q4_1}, {"Q5_0", DType::Q5_0},
                                               {"Q5_1", DType::Q5_1}, {"Q2_K", DType::Q2_K}, {"Q3_K", DType::Q3_K},
                                               {"Q4_K", DType::Q4_K}, {"Q5_K", DType::Q5_K}, {"Q6_K", DType::Q6_K}};
  const DType* t = nullptr;
  for (const auto& [n, d] : all)
    if (name == n) t = &d;
  if (!t || !is_load_only(*t)) {
    std::printf("no load-only type %s\n", name.c_str());
    return 1;
  }
  const long cols = std::stol(argv[2]), rows = std::stol(argv[3]);
  std::vector<char> blocks = slurp(argv[4]), expected = slurp(argv[5]);
  const BlockLayout L = block_layout(*t);
  const size_t rb = (size_t)(cols / L.elements) * (size_t)L.bytes;
  if (blocks.size() != rb * (size_t)rows || expected.size() != (size_t)(cols * rows) * 4) {
    std::printf("sizes: %zu block bytes (row %zu), %zu expected bytes\n", blocks.size(), rb, expected.size());
    return 1;
  }
  std::vector<float> got((size_t)cols);
  int bad = 0;
  for (long r = 0; r < rows; ++r) {
    std::fill(got.begin(), got.end(), -12345.f);
    decode_blocks(*t, reinterpret_cast<const uint8_t*>(blocks.data()) + rb * (size_t)r, got.data(), cols);
    for (long i = 0; i < cols; ++i) {
      uint32_t a, b;
      std::memcpy(&a, &got[(size_t)i], 4);
      std::memcpy(&b, expected.data() + (size_t)(r * cols + i) * 4, 4);
      if (a != b && bad++ < 8) {
        float e;
        std::memcpy(&e, &b, 4);
        std::printf("%s row %ld value %ld: got %.9g, ggml %.9g\n", name.c_str(), r, i, got[(size_t)i], e);
      }
    }
  }
  // Q4_0 / Q5_0 are also rewritten as Q8_0 blocks, which must hold the same values.
  std::vector<uint8_t> q8((size_t)(cols / 32) * 34);
  long transcoded = 0;
  for (long r = 0; r < rows; ++r) {
    if (!blocks_to_q8_0(*t, reinterpret_cast<const uint8_t*>(blocks.data()) + rb * (size_t)r, q8.data(), cols)) break;
    for (long i = 0; i < cols; ++i, ++transcoded) {
      const uint8_t* blk = q8.data() + (size_t)(i / 32) * 34;
      uint16_t dh;
      std::memcpy(&dh, blk, 2);
      const float v = fp16_to_f32(dh) * (float)(int8_t)blk[2 + i % 32];
      float e;
      std::memcpy(&e, expected.data() + (size_t)(r * cols + i) * 4, 4);
      if (std::memcmp(&v, &e, 4) != 0 && bad++ < 8) std::printf("%s as Q8_0 row %ld value %ld: got %.9g, ggml %.9g\n", name.c_str(), r, i, v, e);
    }
  }
  // Q4_0 / Q4_1 / Q4_K are also rewritten as W4 groups (a GPU runs them as they are): scale * q + bias gives
  // ggml's value exactly for Q4_0 / Q4_1, and for Q4_K within the fp16 rounding of the scale and the bias
  // (2^-11 of each, relative; the bound allows 2^-10).
  std::vector<uint8_t> wq((size_t)cols / 2);
  std::vector<uint16_t> meta((size_t)cols / 32 * 2);
  long as_w4 = 0;
  double worst = 0;
  for (long r = 0; r < rows; ++r) {
    if (!blocks_to_w4(*t, reinterpret_cast<const uint8_t*>(blocks.data()) + rb * (size_t)r, wq.data(), meta.data(), cols)) break;
    for (long i = 0; i < cols; ++i, ++as_w4) {
      const long g = i / 32, j = i % 32;
      const uint8_t byte = wq[(size_t)(g * 16 + j % 16)];
      const int q = j < 16 ? byte & 0xF : byte >> 4;
      const float sc = fp16_to_f32(meta[(size_t)g * 2]), bias = fp16_to_f32(meta[(size_t)g * 2 + 1]);
      const float v = sc * (float)q + bias;
      float e;
      std::memcpy(&e, expected.data() + (size_t)(r * cols + i) * 4, 4);
      const double err = std::fabs((double)v - e), bound = *t == DType::Q4_K ? (15.0 * std::fabs(sc) + std::fabs(bias)) / 1024.0 : 0.0;
      if (*t == DType::Q4_K && 15.0 * std::fabs(sc) + std::fabs(bias) > 0) worst = std::max(worst, err / (15.0 * std::fabs(sc) + std::fabs(bias)));
      // (compared as numbers: Q4_0's 0 * d comes out +0 here where ggml's (q - 8) * d with d < 0 gives -0)
      const bool same = v == e || (std::isnan(v) && std::isnan(e));
      if ((*t == DType::Q4_K ? !(err <= bound) && !same : !same) && bad++ < 8)
        std::printf("%s as W4 row %ld value %ld: got %.9g, ggml %.9g\n", name.c_str(), r, i, v, e);
    }
  }
  // dtype 'q4' quantizes other types by the Q4_1 rule: requantizing ggml's Q4_1 values must land within half a
  // step (plus the fp16 rounding of the new scale and minimum) of each.
  long requant = 0;
  if (*t == DType::Q4_1) {
    std::vector<uint8_t> blk((size_t)cols / 32 * 20);
    std::vector<float> back((size_t)cols);
    for (long r = 0; r < rows; ++r) {
      const float* x = reinterpret_cast<const float*>(expected.data()) + r * cols;
      q4_1_quantize_row(x, cols, blk.data());
      decode_blocks(DType::Q4_1, blk.data(), back.data(), cols);
      for (long i = 0; i < cols; ++i, ++requant) {
        uint16_t dh, mh;
        std::memcpy(&dh, blk.data() + (i / 32) * 20, 2);
        std::memcpy(&mh, blk.data() + (i / 32) * 20 + 2, 2);
        const double d = fp16_to_f32(dh), m = fp16_to_f32(mh);
        const double bound = 0.5 * d + (std::fabs(m) + 15 * d) / 1024.0 + 1e-30;
        if (std::isfinite(x[i]) && !(std::fabs((double)back[(size_t)i] - x[i]) <= bound) && bad++ < 8)
          std::printf("Q4_1 requantized row %ld value %ld: %.9g -> %.9g (d %.3g)\n", r, i, x[i], back[(size_t)i], d);
      }
    }
  }
  if (bad) {
    std::printf("%d values differ\n", bad);
    return 1;
  }
  std::printf("ok %ld%s%s%s\n", cols * rows, transcoded ? " +q8" : "", as_w4 ? " +w4" : "", requant ? " +q4_1" : "");
  if (as_w4 && *t == DType::Q4_K) std::fprintf(stderr, "Q4_K as W4: worst error %.3g of the group's range\n", worst);
  return 0;
}
