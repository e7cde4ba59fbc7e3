// The fp32 path's operations (dtype 'f32' on CUDA): one output element (or one token, one head) per
// call of a functor, compiled for the GPU (native/engine/cuda/cuda_f32_backend.cu, one thread per call)
// and for the host (native/engine/cpu/f32_emulated.cc, a loop: the same code, tested without a GPU).
//
// Why: llama2.c's reference runs in fp32, and a few of its greedy choices are near-ties (stories260K:
// top-2 logits 1e-5 apart) that the fp16 path cannot resolve. Here every sum is sequential and every
// operation rounds on its own, in llama2.c's order (products then sums, `score /= sqrt(hs)`, softmax
// then weighted sum, silu as x * (1 / (1 + exp(-x)))). The IEEE intrinsics below are never contracted
// into FMAs or flushed to zero, on either side, so the GPU and the host emulation give the same bits
// (exp, taken in double and rounded once, could differ in the last bit in very rare cases). Measured
// on the host emulation: every greedy id of llama2.c's stories260K fixture, logits within 4e-6.
// Not a fast path: for small models and for checking the fast ones.
#pragma once
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define L2_HD __host__ __device__ __forceinline__
#else
#define L2_HD inline
#endif

namespace l2::f32ops {

// Separately rounded IEEE operations (device intrinsics are never fused or flushed; the host build
// targets x86-64 without FMA, so its expressions cannot be contracted either).
L2_HD float mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
L2_HD float add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
L2_HD float sub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
L2_HD float div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
L2_HD float sqrt(float a) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
L2_HD float exp(float a) { return (float)::exp((double)a); }

// Paged KV cache of this path: per layer, K and V pools [n_blocks * 16 slots][kv_dim] fp32.
constexpr int kBlock = 16;

// x[t][d] = emb[tokens[t]][d]
struct Embed {
  const float* emb;
  const int32_t* tokens;
  float* x;
  int dim;
  L2_HD void operator()(int64_t i) const { x[i] = emb[(int64_t)tokens[i / dim] * dim + i % dim]; }
};

// out[t] = x[row t] / rms * w, one call per token; row t is rows[t] when given (the output rows).
struct RmsNorm {
  const float* x;
  const int32_t* rows;
  const float* w;
  float* out;
  int dim;
  float eps;
  L2_HD void operator()(int64_t t) const {
    const float* xr = x + (int64_t)(rows ? rows[t] : t) * dim;
    float ss = 0.f;
    for (int j = 0; j < dim; ++j) ss = add(ss, mul(xr[j], xr[j]));
    ss = div(1.f, sqrt(add(div(ss, (float)dim), eps)));
    float* o = out + t * dim;
    for (int j = 0; j < dim; ++j) o[j] = mul(w[j], mul(ss, xr[j]));
  }
};

// out[t][r] (+)= sum_j W[r][j] * x[t][j], W stored transposed (wt[j][r]) so that the threads of a
// warp, consecutive r, read consecutive words.
struct MatVec {
  const float* wt;
  const float* x;
  float* out;
  int n, k;
  bool accumulate;  // out += (the residual stream), as llama2.c adds a finished product
  L2_HD void operator()(int64_t i) const {
    const int64_t t = i / n, r = i % n;
    const float* xt = x + t * k;
    float acc = 0.f;
    for (int j = 0; j < k; ++j) acc = add(acc, mul(wt[(int64_t)j * n + r], xt[j]));
    out[i] = accumulate ? add(out[i], acc) : acc;
  }
};

// Rotary embedding of one pair: (a, b) = (2i, 2i + 1) interleaved (Meta, llama2.c, GGUF) or
// (i, i + hd / 2) (Hugging Face), angles from the shared table ([pos][hd / 2] of cos, sin).
struct Rope {
  float* v;  // [T][n_heads * hd]
  const int32_t* positions;
  const float* table;
  int n_heads, hd;
  bool halves;
  L2_HD void operator()(int64_t i) const {
    const int half = hd / 2;
    const int64_t t = i / ((int64_t)n_heads * half);
    const int h = (int)(i / half % n_heads), p = (int)(i % half);
    float* x = v + (t * n_heads + h) * hd;
    const int a = halves ? p : 2 * p, b = halves ? p + half : 2 * p + 1;
    const float* cs = table + ((int64_t)positions[t] * half + p) * 2;
    const float c = cs[0], s = cs[1], x0 = x[a], x1 = x[b];
    x[a] = sub(mul(x0, c), mul(x1, s));
    x[b] = add(mul(x0, s), mul(x1, c));
  }
};

// K and V rows of each token into its cache slot (block * 16 + position % 16).
struct KvWrite {
  const float *k, *v;
  const int32_t* slots;
  float *k_cache, *v_cache;
  int kv_dim;
  L2_HD void operator()(int64_t i) const {
    const int64_t t = i / kv_dim, d = i % kv_dim, at = (int64_t)slots[t] * kv_dim + d;
    k_cache[at] = k[i];
    v_cache[at] = v[i];
  }
};

// Causal attention of one (token, query head) over positions 0..pos of its sequence, llama2.c's way:
// scores, softmax (max, exp, sum, divide), then the weighted sum of V. The scores are recomputed in
// each pass (same operations, same bits) instead of kept in a context-sized scratch buffer.
struct Attention {
  const float* q;  // [T][n_heads * hd]
  const float *k_cache, *v_cache;
  float* out;  // [T][n_heads * hd]
  const int32_t *positions, *seg_of, *tables;  // tables: [segments][max_blocks]
  int max_blocks, n_heads, n_kv_heads, hd;
  L2_HD float score(const float* qh, int64_t row) const {
    const float* kr = k_cache + row;
    float s = 0.f;
    for (int i = 0; i < hd; ++i) s = add(s, mul(qh[i], kr[i]));
    return div(s, sqrt((float)hd));
  }
  L2_HD void operator()(int64_t i) const {
    const int64_t t = i / n_heads;
    const int h = (int)(i % n_heads), kvh = h / (n_heads / n_kv_heads), kv_dim = n_kv_heads * hd;
    const int n_pos = positions[t] + 1;
    const int32_t* table = tables + (int64_t)seg_of[t] * max_blocks;
    const float* qh = q + (t * n_heads + h) * hd;
    auto row = [&](int p) { return ((int64_t)table[p / kBlock] * kBlock + p % kBlock) * kv_dim + (int64_t)kvh * hd; };
    float mx = score(qh, row(0));
    for (int p = 1; p < n_pos; ++p) {
      const float s = score(qh, row(p));
      mx = s > mx ? s : mx;
    }
    float sum = 0.f;
    for (int p = 0; p < n_pos; ++p) sum = add(sum, exp(sub(score(qh, row(p)), mx)));
    float* o = out + (t * n_heads + h) * hd;
    for (int d = 0; d < hd; ++d) o[d] = 0.f;
    for (int p = 0; p < n_pos; ++p) {
      const float a = div(exp(sub(score(qh, row(p)), mx)), sum);
      const float* vr = v_cache + row(p);
      for (int d = 0; d < hd; ++d) o[d] = add(o[d], mul(a, vr[d]));
    }
  }
};

// gate[i] = silu(gate[i]) * up[i], silu(x) = x * (1 / (1 + exp(-x))).
struct SwiGlu {
  float* gate;
  const float* up;
  L2_HD void operator()(int64_t i) const {
    const float g = gate[i];
    gate[i] = mul(mul(g, div(1.f, add(1.f, exp(-g)))), up[i]);
  }
};

}  // namespace l2::f32ops
