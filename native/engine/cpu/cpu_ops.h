// CPU math kernels of the reference backend. fp32 arithmetic; weights of any DType are widened to
// fp32 row by row. Every output element is computed the same way whatever the batch size or thread
// count, so a sequence gives bit-identical results alone or batched with others.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "../../model/weights.h"

namespace l2 {

class ThreadPool;

namespace cpu {

// out[t * W.rows + n] = dot(W.row(n), in + t * W.cols), for t < T.
void matmul(const Matrix& W, const float* in, int T, float* out, ThreadPool& pool);
float dot(const float* a, const float* b, int64_t n);
// out = x / rms(x) * w
void rmsnorm(float* out, const float* x, const float* w, int n, float eps);
// Widens one row of any dtype to fp32 (vectorized where the CPU allows).
void row_to_f32(const Matrix& m, int64_t r, float* out);
const char* simd_name();

// One head's attention over positions 0..n_pos-1: out[hs] = softmax(q . key(p) * scale) . value(p),
// where key(p) / value(p) give position p's head row. `scores` is scratch (resized here).
template <typename KeyAt, typename ValueAt>
void attend(const float* q, int n_pos, int hs, float scale, KeyAt key, ValueAt value, float* out, std::vector<float>& scores) {
  scores.resize((size_t)n_pos);
  float mx = -INFINITY;
  for (int p = 0; p < n_pos; ++p) {
    scores[(size_t)p] = dot(q, key(p), hs) * scale;
    mx = scores[(size_t)p] > mx ? scores[(size_t)p] : mx;
  }
  float sum = 0.f;
  for (int p = 0; p < n_pos; ++p) {
    scores[(size_t)p] = expf(scores[(size_t)p] - mx);
    sum += scores[(size_t)p];
  }
  for (int d = 0; d < hs; ++d) out[d] = 0.f;
  for (int p = 0; p < n_pos; ++p) {
    const float* v = value(p);
    float a = scores[(size_t)p] / sum;
    for (int d = 0; d < hs; ++d) out[d] += a * v[d];
  }
}

}  // namespace cpu
}  // namespace l2
