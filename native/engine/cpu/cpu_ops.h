// CPU math kernels of the reference backend. fp32 arithmetic; weights of any DType are widened to
// fp32 row by row. Every output element is computed the same way whatever the batch size or thread
// count, so a sequence gives bit-identical results alone or batched with others.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "../../common/thread_pool.h"
#include "../../model/weights.h"

namespace l2 {

namespace cpu {

// out[t * W.rows + n] = dot(W.row(n), in + t * W.cols), for t < T.
void matmul(const Matrix& W, const float* in, int T, float* out, ThreadPool& pool);
float dot(const float* a, const float* b, int64_t n);
// out[i] += a * v[i] (a multiply then an add, as the scalar loop rounds: vectorized, same bits).
void axpy(float a, const float* v, float* out, int n);
// out = x / rms(x) * w
void rmsnorm(float* out, const float* x, const float* w, int n, float eps);
// Widens one row of any dtype to fp32 (vectorized where the CPU allows).
void row_to_f32(const Matrix& m, int64_t r, float* out);
const char* simd_name();

// Attention of heads [h0, h1) of one token over positions 0..n_pos-1: for each head h,
// out[h] = softmax(q[h] . K_h^T * scale) . V_h, where key_row(p) / value_row(p) give position p's row of
// all KV heads ([n_kv_heads][hs]) and head h reads KV head h / group. Positions are the outer loop, so
// each cache row is read once, contiguously, for all the heads (not once per head at a page-sized
// stride); each head's arithmetic, and so its result, does not depend on [h0, h1).
// q and out are the token's [n_heads][hs] rows; `scores` is scratch.
template <typename KeyRow, typename ValueRow>
void attend_heads(const float* q, int h0, int h1, int group, int n_pos, int hs, float scale, KeyRow key_row, ValueRow value_row, float* out,
                  std::vector<float>& scores) {
  const int nh = h1 - h0;
  scores.resize((size_t)nh * n_pos + nh);
  float* sums = scores.data() + (size_t)nh * n_pos;
  for (int p = 0; p < n_pos; ++p) {
    const float* k = key_row(p);
    for (int h = h0; h < h1; ++h) scores[(size_t)(h - h0) * n_pos + p] = dot(q + (size_t)h * hs, k + (size_t)(h / group) * hs, hs) * scale;
  }
  for (int i = 0; i < nh; ++i) {
    float* sc = scores.data() + (size_t)i * n_pos;
    float mx = -INFINITY;
    for (int p = 0; p < n_pos; ++p) mx = sc[p] > mx ? sc[p] : mx;
    float sum = 0.f;
    for (int p = 0; p < n_pos; ++p) {
      sc[p] = expf(sc[p] - mx);
      sum += sc[p];
    }
    sums[i] = sum;
    for (int d = 0; d < hs; ++d) out[(size_t)(h0 + i) * hs + d] = 0.f;
  }
  for (int p = 0; p < n_pos; ++p) {
    const float* v = value_row(p);
    for (int h = h0; h < h1; ++h) {
      const int i = h - h0;
      axpy(scores[(size_t)i * n_pos + p] / sums[i], v + (size_t)(h / group) * hs, out + (size_t)h * hs, hs);
    }
  }
}

// Attention of n_tokens tokens, each over its own positions 0..n_pos(t)-1, in work items of (token,
// chunk of heads) spread over the pool: enough chunks to keep every thread busy, whole tokens when
// there are enough tokens (whole rows per item read the cache best). q and out are [n_tokens][n_heads
// * hs]; key_row(t, p) / value_row(t, p) give token t's cache row at position p. The one loop of the
// CPU backend and of its attention micro-benchmark.
template <typename NPos, typename KeyRow, typename ValueRow>
void attention(ThreadPool& pool, int n_tokens, int n_heads, int group, int hs, const float* q, float* out, NPos n_pos, KeyRow key_row,
               ValueRow value_row) {
  const float scale = 1.0f / sqrtf((float)hs);
  const int threads = pool.size();
  int chunks = (2 * threads + n_tokens - 1) / n_tokens;
  chunks = chunks < 1 ? 1 : chunks > n_heads ? n_heads : chunks;
  const int per = (n_heads + chunks - 1) / chunks;
  const size_t ld = (size_t)n_heads * hs;
  pool.parallel_for((int64_t)n_tokens * chunks, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    for (int64_t i = begin; i < end; ++i) {
      const int t = (int)(i / chunks), h0 = (int)(i % chunks) * per, h1 = h0 + per < n_heads ? h0 + per : n_heads;
      if (h0 >= h1) continue;
      attend_heads(
          q + (size_t)t * ld, h0, h1, group, n_pos(t), hs, scale, [&](int p) { return key_row(t, p); }, [&](int p) { return value_row(t, p); },
          out + (size_t)t * ld, scores);
    }
  });
}

}  // namespace cpu
}  // namespace l2
