// CPU math kernels of the reference backend. fp32 arithmetic; weights of any DType are widened to
// fp32 row by row. Every output element is computed the same way whatever the batch size or thread
// count, so a sequence gives bit-identical results alone or batched with others.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../../common/thread_pool.h"
#include "../../model/weights.h"

namespace l2 {

namespace cpu {

// How the matrix products take their input. F32: as it is (every weight widened to fp32; the reference).
// Int8: for Q8_0 / Q4_1 weights, each token's input is quantized to int8 per 32 values (scale = max |x| /
// 127, as llama.cpp's Q8_0 / Q8_1 activations) and the blocks are dotted in integers, with one multiply-add
// per block: about 3x fewer instructions per weight, so decoding runs at memory speed, for the rounding of
// the input to 8 bits (other weight types stay F32). Either way a token's result does not depend on the
// batch, the thread count or whether it was prefilled or stepped.
enum class Activations { F32, Int8 };

// out[t * W.rows + n] = dot(W.row(n), in + t * W.cols), for t < T.
void matmul(const Matrix& W, const float* in, int T, float* out, ThreadPool& pool, Activations act = Activations::F32);
// matmul of n matrices with the same input (and cols) in one parallel loop over all their rows (q, k, v).
void matmul_multi(const Matrix* const* W, float* const* out, int n, const float* in, int T, ThreadPool& pool,
                  Activations act = Activations::F32);
// h1 = silu(W1 . in) * (W3 . in), h3 = W3 . in (the FFN's gate and up), each thread doing both matrices
// and the product for its rows: the same per-element arithmetic as three separate loops.
void matmul_swiglu(const Matrix& W1, const Matrix& W3, const float* in, int T, float* h1, float* h3, ThreadPool& pool,
                   Activations act = Activations::F32);

// Rows of K values quantized to int8 per 32-block (Activations::Int8): q [T][K]; per block d (x ~ q * d)
// and s = d * sum(q) (Q4_1's bias term). K % 32 == 0.
struct QuantRows {
  std::vector<int8_t> q;
  std::vector<float> d, s;
  int64_t K = 0;
  // Blocks are independent: with a pool they are split over its threads (the same bytes either way).
  void quantize(const float* in, int T, int64_t K, ThreadPool* pool = nullptr);

 private:
  void quantize_blocks(const float* in, int64_t b0, int64_t b1);  // blocks [b0, b1) of all the rows
};
float dot(const float* a, const float* b, int64_t n);
// out[i] += a * v[i] (a multiply then an add, as the scalar loop rounds: vectorized, same bits).
void axpy(float a, const float* v, float* out, int n);
// out = x / rms(x) * w
void rmsnorm(float* out, const float* x, const float* w, int n, float eps);
// Widens one row of any dtype to fp32 (vectorized where the CPU allows).
void row_to_f32(const Matrix& m, int64_t r, float* out);
const char* simd_name();

// Least work (multiply-adds) worth handing to another thread: a part costs a few microseconds to hand
// out and collect, so small models' matrices and attention run on the calling thread instead.
constexpr int64_t kMinWorkPerPart = 1 << 15;
// Grain (items per part) for `items` items of `total_work` multiply-adds together, at least `least`.
inline int64_t work_grain(int64_t items, int64_t total_work, int64_t least = 1) {
  const int64_t per_item = total_work / (items > 0 ? items : 1);
  const int64_t g = kMinWorkPerPart / (per_item > 0 ? per_item : 1);
  return g > least ? g : least;
}

// Positions per softmax chunk. Fixed (never derived from the thread count or the batch), so that a
// token's attention is computed the same way alone or batched, and whichever path below runs it.
constexpr int kAttnChunk = 256;

// Attention of heads [h0, h1) of one token over the positions [p0, p1) of one chunk: for each head h,
// m[h] = max_p s_p, l[h] = sum_p e_p with e_p = exp(s_p - m[h]), s_p = q[h] . k_p * scale, and
// out[h] = sum_p (e_p / l[h]) v_p; key_row(p) / value_row(p) give position p's row of all KV heads
// ([n_kv_heads][hs]) and head h reads KV head h / group. Positions are the outer loop, so each cache row
// is read once, contiguously, for all the heads; a row is used before the next is asked for (the int8
// cache widens into one scratch row). Each head's arithmetic does not depend on [h0, h1). q, out are the
// token's [n_heads][hs] rows, m and l [n_heads]; `scores` is scratch.
template <typename KeyRow, typename ValueRow>
void attend_chunk(const float* q, int h0, int h1, int group, int p0, int p1, int hs, float scale, KeyRow key_row, ValueRow value_row,
                  float* out, float* m, float* l, std::vector<float>& scores) {
  const int nh = h1 - h0, np = p1 - p0;
  scores.resize((size_t)nh * np);
  for (int p = p0; p < p1; ++p) {
    const float* k = key_row(p);
    for (int h = h0; h < h1; ++h) scores[(size_t)(h - h0) * np + (p - p0)] = dot(q + (size_t)h * hs, k + (size_t)(h / group) * hs, hs) * scale;
  }
  for (int h = h0; h < h1; ++h) {
    float* sc = scores.data() + (size_t)(h - h0) * np;
    float mx = -INFINITY;
    for (int i = 0; i < np; ++i) mx = sc[i] > mx ? sc[i] : mx;
    float sum = 0.f;
    for (int i = 0; i < np; ++i) {
      sc[i] = expf(sc[i] - mx);
      sum += sc[i];
    }
    m[h] = mx, l[h] = sum;
    for (int d = 0; d < hs; ++d) out[(size_t)h * hs + d] = 0.f;
  }
  for (int p = p0; p < p1; ++p) {
    const float* v = value_row(p);
    for (int h = h0; h < h1; ++h)
      axpy(scores[(size_t)(h - h0) * np + (p - p0)] / l[h], v + (size_t)(h / group) * hs, out + (size_t)h * hs, hs);
  }
}

// Folds the next chunk's (o, m, l) of heads [h0, h1) into the running (acc, am, al): the softmax over
// both, each side weighted by its share of the total. Chunks are folded in position order on every path.
inline void fold_chunk(int h0, int h1, int hs, float* acc, float* am, float* al, const float* o, const float* m, const float* l) {
  for (int h = h0; h < h1; ++h) {
    const float mx = am[h] > m[h] ? am[h] : m[h];
    const float sa = al[h] * expf(am[h] - mx), sc = l[h] * expf(m[h] - mx), sum = sa + sc;
    const float wa = sa / sum, wc = sc / sum;
    for (int d = 0; d < hs; ++d) acc[(size_t)h * hs + d] = acc[(size_t)h * hs + d] * wa + o[(size_t)h * hs + d] * wc;
    am[h] = mx, al[h] = sum;
  }
}

// Attention of n_tokens tokens, each over its own positions 0..n_pos(t)-1 in chunks of kAttnChunk. q and
// out are [n_tokens][n_heads * hs]; key_row(t, p) / value_row(t, p) give token t's cache row at
// position p. The one loop of the CPU backend and of its attention micro-benchmark. Two schedules, the
// same arithmetic (each chunk by attend_chunk, folded in order from the first):
//  - few tokens with many positions (decode): a work item per (token, chunk, head range), partial results
//    kept and folded afterwards, so a long context is split over the threads and each item streams whole
//    cache rows (split by heads only, each item read a 4 KB piece of every 16 KB row at 7B: 10-16 GB/s
//    at 2,048-4,096 positions on 2 cores, against 20-25 GB/s this way);
//  - otherwise a work item per (token, head range) that folds its chunks as it goes.
// Head ranges are added until there are >= 2 items per thread.
template <typename NPos, typename KeyRow, typename ValueRow>
void attention(ThreadPool& pool, int n_tokens, int n_heads, int group, int hs, const float* q, float* out, NPos n_pos, KeyRow key_row,
               ValueRow value_row) {
  const float scale = 1.0f / sqrtf((float)hs);
  const int threads = pool.size();
  const size_t ld = (size_t)n_heads * hs;
  auto head_ranges = [&](int64_t items) {
    int64_t r = (2 * threads + items - 1) / items;
    return (int)(r < 1 ? 1 : r > n_heads ? n_heads : r);
  };
  int max_chunks = 1;
  int64_t all_chunks = 0, work = 0;  // work: q.k and p.v multiply-adds of every head
  for (int t = 0; t < n_tokens; ++t) {
    const int c = (n_pos(t) + kAttnChunk - 1) / kAttnChunk;
    max_chunks = c > max_chunks ? c : max_chunks;
    all_chunks += c;
    work += (int64_t)n_pos(t) * n_heads * hs * 2;
  }
  // Partials [token][chunk]: o [n_heads * hs], then m and l [n_heads] each (capped at 64 MB).
  const size_t part = ld + 2 * (size_t)n_heads;
  if (n_tokens < 2 * threads && max_chunks > 1 && (size_t)n_tokens * max_chunks * part <= ((size_t)16 << 20)) {
    thread_local std::vector<float> parts_buf;  // the calling thread's; workers reach it through `parts`
    parts_buf.resize((size_t)n_tokens * max_chunks * part);
    float* const parts = parts_buf.data();
    const int hr = head_ranges(all_chunks), per = (n_heads + hr - 1) / hr;
    const int64_t items = (int64_t)n_tokens * max_chunks * hr;
    pool.parallel_for(items, work_grain(items, work), [&](int64_t begin, int64_t end) {
      thread_local std::vector<float> scores;
      for (int64_t i = begin; i < end; ++i) {
        const int t = (int)(i / ((int64_t)max_chunks * hr)), c = (int)(i / hr % max_chunks), h0 = (int)(i % hr) * per;
        const int h1 = h0 + per < n_heads ? h0 + per : n_heads, p0 = c * kAttnChunk, np = n_pos(t);
        if (h0 >= h1 || p0 >= np) continue;
        float* o = &parts[((size_t)t * max_chunks + c) * part];
        attend_chunk(
            q + (size_t)t * ld, h0, h1, group, p0, p0 + kAttnChunk < np ? p0 + kAttnChunk : np, hs, scale, [&](int p) { return key_row(t, p); },
            [&](int p) { return value_row(t, p); }, o, o + ld, o + ld + n_heads, scores);
      }
    });
    for (int t = 0; t < n_tokens; ++t) {
      float* acc = &parts[(size_t)t * max_chunks * part];
      const int nc = (n_pos(t) + kAttnChunk - 1) / kAttnChunk;
      for (int c = 1; c < nc; ++c) {
        const float* o = acc + (size_t)c * part;
        fold_chunk(0, n_heads, hs, acc, acc + ld, acc + ld + n_heads, o, o + ld, o + ld + n_heads);
      }
      std::copy(acc, acc + ld, out + (size_t)t * ld);
    }
    return;
  }
  const int hr = head_ranges(n_tokens), per = (n_heads + hr - 1) / hr;
  pool.parallel_for((int64_t)n_tokens * hr, work_grain((int64_t)n_tokens * hr, work), [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores, next;
    for (int64_t i = begin; i < end; ++i) {
      const int t = (int)(i / hr), h0 = (int)(i % hr) * per, h1 = h0 + per < n_heads ? h0 + per : n_heads, np = n_pos(t);
      if (h0 >= h1) continue;
      // The first chunk goes straight to out (its m, l to am, al); later ones through o, m, l. `next` holds
      // o [n_heads * hs], then m, l, am, al [n_heads] each.
      float* acc = out + (size_t)t * ld;
      next.resize(ld + 4 * (size_t)n_heads);
      float *am = next.data() + ld + 2 * n_heads, *al = am + n_heads;
      auto kr = [&](int p) { return key_row(t, p); };
      auto vr = [&](int p) { return value_row(t, p); };
      for (int p0 = 0; p0 < np; p0 += kAttnChunk) {
        const int p1 = p0 + kAttnChunk < np ? p0 + kAttnChunk : np;
        if (p0 == 0) {
          attend_chunk(q + (size_t)t * ld, h0, h1, group, p0, p1, hs, scale, kr, vr, acc, am, al, scores);
        } else {
          float *o = next.data(), *m = o + ld, *l = m + n_heads;
          attend_chunk(q + (size_t)t * ld, h0, h1, group, p0, p1, hs, scale, kr, vr, o, m, l, scores);
          fold_chunk(h0, h1, hs, acc, am, al, o, m, l);
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace l2
