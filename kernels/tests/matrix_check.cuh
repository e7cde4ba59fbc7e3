// What the matrix-kernel families (test_gemv.cu, test_w4.cu) share: the output's initial state, the
// epilogue that stores or adds into it, its scoring against a double-precision dot product, and the
// inputs and reference of the RMSNorm-fused GEMV.
#pragma once
#include "../kernels.h"
#include "harness.cuh"

namespace l2test {

// The output [T][N] before a matrix kernel runs: the residual it adds to (add), else poison.
inline std::vector<float> initial_out(Rng& rng, int T, int N, bool add) {
  std::vector<float> pre((size_t)T * N);
  for (auto& v : pre) v = add ? rng.sym(1.f) : poison_f();
  return pre;
}

inline l2::kernels::Epilogue store_or_add(float* out, int N, bool add) {
  l2::kernels::Epilogue e;
  e.kind = add ? l2::kernels::Epi::AddF32 : l2::kernels::Epi::StoreF32;
  e.out = out;
  e.ldo = N;
  return e;
}

// Scores the output against pre + dot(t, n) (add) or dot(t, n): columns >= n_valid must be untouched,
// and a stored value must have been written.
template <class Dot>
ErrStats score_out(const std::vector<float>& out, const std::vector<float>& pre, int T, int N, int n_valid, bool add, Dot dot) {
  ErrStats st;
  for (int t = 0; t < T; ++t)
    for (int n = 0; n < N; ++n) {
      const float o = out[(size_t)t * N + n];
      if (n >= n_valid) {
        if (fbits(o) != fbits(pre[(size_t)t * N + n])) ++st.clobbered;
        continue;
      }
      if (!add && fbits(o) == kPoisonF) ++st.unwritten;
      else st.add(o, (add ? pre[(size_t)t * N + n] : 0.0) + dot(t, n));
    }
  return st;
}

// The input of a GEMV with RMSNorm fused in (gemv_*_norm): x fp32 [T][K] (columns >= dim zero, rows of
// different scales) and norm weights g[dim], on the device as `in`; the reference input of row t, column k
// is x[t][k] * g[k] * inv_rms[t], inv_rms[t] = rsqrt(mean_k<dim x[t][k]^2 + eps) in double.
struct NormRows {
  std::vector<float> x, g;
  std::vector<double> inv_rms;
  DevBuf<float> dx, dg;
  l2::kernels::NormInput in;
  double ref(int K, int t, int k) const { return (double)x[(size_t)t * K + k] * g[(size_t)k] * inv_rms[(size_t)t]; }
};

inline NormRows make_norm_rows(Rng& rng, int T, int K, int dim, float eps = 1e-5f) {
  NormRows r;
  r.x.assign((size_t)T * K, 0.f);
  r.g.resize((size_t)dim);
  for (int t = 0; t < T; ++t)
    for (int kk = 0; kk < dim; ++kk) r.x[(size_t)t * K + kk] = rng.sym(3.f) * (t + 1);
  for (auto& v : r.g) v = 0.5f + rng.uniform();
  r.inv_rms.resize((size_t)T);
  for (int t = 0; t < T; ++t) {
    double ss = 0;
    for (int kk = 0; kk < dim; ++kk) ss += (double)r.x[(size_t)t * K + kk] * r.x[(size_t)t * K + kk];
    r.inv_rms[(size_t)t] = 1.0 / std::sqrt(ss / dim + eps);
  }
  r.dx.alloc(r.x.size());
  r.dg.alloc(r.g.size());
  r.dx.upload(r.x);
  r.dg.upload(r.g);
  r.in.x = r.dx.p;
  r.in.ldx = K;
  r.in.w = r.dg.p;
  r.in.dim = dim;
  r.in.eps = eps;
  return r;
}

}  // namespace l2test
