// Decode matrix kernels: the CUDA-core GEMV (gemv.cu) and the tensor-core small-batch kernel
// (gemv_mma.cu) against a double-precision CPU reference, and (--bench) both next to the tiled GEMM at
// the 7B decode shapes for batches of 1..32 tokens: the numbers that decide which one the backend uses.
#include "../kernels.h"
#include "harness.cuh"
#include "matrix_check.cuh"

namespace l2::kernels::gemv_detail {
void set_rows(int f16_rows, int w8_rows);  // rows per GEMV block (2 or 4; 0 = the kernel's defaults)
void set_grid_cap(int blocks);             // GEMV and gemv_mma: 0 fit the SMs (default), -1 a block per row group, > 0 that many
void set_staged(int on);                   // one-token GEMV through the cp.async ring (LLAMA2_GEMV_STAGED): 1 on, 0 off
}

using namespace l2test;
namespace k = l2::kernels;

namespace {

// Emulates gemv_mma_f16_kernel's fragment loads (lane (g, q) holds columns [16q, 16q + 16) of rows g,
// g + 8 and of token g; step s uses words 2s, 2s + 1) feeding mma.m16n8k16 as PTX defines its operands,
// on small integers (exact in fp32), for a 16-row x 8-token x 64-column chunk. Returns the number of
// wrong outputs plus logical operand slots filled twice or never.
int emulate_gemv_mma() {
  Rng rng(42);
  int W[16][64], X[8][64];
  for (auto& r : W)
    for (int& v : r) v = rng.below(7) - 3;
  for (auto& r : X)
    for (int& v : r) v = rng.below(7) - 3;
  long D[16][8] = {};
  int errors = 0;
  for (int s = 0; s < 4; ++s) {
    int A[16][16], B[16][8], fa[16][16] = {}, fb[16][8] = {};
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, q = lane % 4;
      // word j of a lane's 16 columns = physical columns (16q + 2j, 16q + 2j + 1)
      auto word = [&](const int* row, int j, int e) { return row[16 * q + 2 * j + e]; };
      for (int e = 0; e < 2; ++e) {
        // a0 = A[g][2q+e], a1 = A[g+8][2q+e], a2 = A[g][2q+8+e], a3 = A[g+8][2q+8+e]
        A[g][2 * q + e] = word(W[g], 2 * s, e), ++fa[g][2 * q + e];
        A[g + 8][2 * q + e] = word(W[g + 8], 2 * s, e), ++fa[g + 8][2 * q + e];
        A[g][2 * q + 8 + e] = word(W[g], 2 * s + 1, e), ++fa[g][2 * q + 8 + e];
        A[g + 8][2 * q + 8 + e] = word(W[g + 8], 2 * s + 1, e), ++fa[g + 8][2 * q + 8 + e];
        // b0 = B[2q+e][g], b1 = B[2q+8+e][g]
        B[2 * q + e][g] = word(X[g], 2 * s, e), ++fb[2 * q + e][g];
        B[2 * q + 8 + e][g] = word(X[g], 2 * s + 1, e), ++fb[2 * q + 8 + e][g];
      }
    }
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j) errors += fa[i][j] != 1;
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 8; ++j) errors += fb[i][j] != 1;
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n)
        for (int kk = 0; kk < 16; ++kk) D[m][n] += (long)A[m][kk] * B[kk][n];
  }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      long ref = 0;
      for (int kk = 0; kk < 64; ++kk) ref += (long)W[m][kk] * X[n][kk];
      errors += D[m][n] != ref;  // the kernel stores D[g][2q..] / D[g+8][2q..] as (row, token) directly
    }
  return errors;
}

enum class Kern { Gemv, Mma, Gemm };
const char* kname(Kern k) { return k == Kern::Gemv ? "gemv" : k == Kern::Mma ? "gemv_mma" : "gemm"; }

// W: fp16 [N][ldw], or (w8) int8 [N][ldw] with scales [N][ldw / 32].
bool run(Kern kern, bool w8, const half* A, int lda, const void* W, const half* S, int ldw, int T, int N, int n_valid, int K,
         const k::Epilogue& e, cudaStream_t s) {
  const half* wh = static_cast<const half*>(W);
  const int8_t* wq = static_cast<const int8_t*>(W);
  switch (kern) {
    case Kern::Gemv:
      if (T > k::kGemvMaxT) return false;
      if (w8) k::gemv_w8(A, lda, wq, S, ldw, T, N, n_valid, K, e, s);
      else k::gemv_f16(A, lda, wh, ldw, T, N, n_valid, K, e, s);
      return true;
    case Kern::Mma: return w8 ? k::gemv_mma_w8(A, lda, wq, S, ldw, T, N, n_valid, K, e, s) : k::gemv_mma_f16(A, lda, wh, ldw, T, N, n_valid, K, e, s);
    case Kern::Gemm:
      if (w8) k::gemm_w8(A, lda, wq, S, ldw, T, N, n_valid, K, e, s);
      else k::gemm_f16(A, lda, wh, ldw, T, N, n_valid, K, e, s);
      return true;
  }
  return false;
}

// Random weights of an N x K matrix: rows >= n_valid and columns >= dim zero; fp16, or (w8) int8 with
// per-32 fp16 scales. wf holds each weight as the kernels see it (fp16-rounded q * scale for the
// tensor-core path; the CUDA-core GEMV's fp32 products differ by less), for the references; the device
// copies are uploaded.
struct Weights {
  std::vector<half> w, sc;
  std::vector<int8_t> q;
  std::vector<float> wf;
  DevBuf<half> dw, ds;
  DevBuf<int8_t> dq;
  const void* dev(bool w8) const { return w8 ? static_cast<const void*>(dq.p) : static_cast<const void*>(dw.p); }
};

Weights make_weights(Rng& rng, bool w8, int N, int n_valid, int K, int dim) {
  Weights m;
  m.w.resize(w8 ? 0 : (size_t)N * K);
  m.sc.resize(w8 ? (size_t)N * (K / 32) : 0);
  m.q.resize(w8 ? (size_t)N * K : 0);
  m.wf.resize((size_t)N * K);
  for (int n = 0; n < N; ++n) {
    for (int g = 0; w8 && g < K / 32; ++g) m.sc[(size_t)n * (K / 32) + g] = f2h(n < n_valid ? 0.0004f * (1.f + rng.uniform()) : 0.f);
    for (int kk = 0; kk < K; ++kk) {
      const size_t i = (size_t)n * K + kk;
      const bool real = n < n_valid && kk < dim;
      if (w8) {
        m.q[i] = (int8_t)(real ? rng.below(255) - 127 : 0);
        m.wf[i] = h2f(f2h((float)m.q[i] * h2f(m.sc[(size_t)n * (K / 32) + kk / 32])));
      } else {
        m.w[i] = f2h(real ? rng.sym(0.05f) : 0.f);
        m.wf[i] = h2f(m.w[i]);
      }
    }
  }
  m.dw.alloc(m.w.size()), m.ds.alloc(m.sc.size()), m.dq.alloc(m.q.size());
  if (w8) {
    m.dq.upload(m.q);
    m.ds.upload(m.sc);
  } else {
    m.dw.upload(m.w);
  }
  return m;
}

void check_shape(Context& ctx, Kern kern, bool w8, int N, int n_valid, int K, int T, bool add, const char* tag = "") {
  Rng rng(ctx.next_seed());
  const Weights m = make_weights(rng, w8, N, n_valid, K, K);
  const std::vector<float>& wf = m.wf;
  std::vector<half> a((size_t)T * K);
  for (auto& v : a) v = f2h(rng.sym(1.f));
  const std::vector<float> pre = initial_out(rng, T, N, add);
  DevBuf<half> da(a.size());
  DevBuf<float> dout(pre.size());
  da.upload(a);
  dout.upload(pre);
  const k::Epilogue e = store_or_add(dout.p, N, add);
  if (!run(kern, w8, da.p, K, m.dev(w8), m.ds.p, K, T, N, n_valid, K, e, ctx.stream)) return;
  CK(cudaStreamSynchronize(ctx.stream));
  CK(cudaGetLastError());
  ErrStats st = score_out(dout.download(), pre, T, N, n_valid, add, [&](int t, int n) {
    double dot = 0;
    for (int kk = 0; kk < K; ++kk) dot += (double)wf[(size_t)n * K + kk] * h2f(a[(size_t)t * K + kk]);
    return dot;
  });
  ctx.check(fmt("%s%s %s T%d N%d/%d K%d %s", kname(kern), tag, w8 ? "w8" : "f16", T, n_valid, N, K, add ? "add" : "store"), st.ok(2e-3), st.rel_l2(),
            st.max_norm(), st.detail());
}

// The GEMV with RMSNorm fused into its input (gemv_*_norm): x fp32 [T][K] (columns >= dim zero), norm
// weights [dim]; reference: sum_k W[n][k] * x[t][k] * g[k] * rsqrt(mean_k<dim x[t][k]^2 + eps), in double.
void check_norm_shape(Context& ctx, bool w8, int N, int n_valid, int K, int dim, int T, bool add) {
  Rng rng(ctx.next_seed());
  const Weights m = make_weights(rng, w8, N, n_valid, K, dim);
  const NormRows x = make_norm_rows(rng, T, K, dim);
  const std::vector<float> pre = initial_out(rng, T, N, add);
  DevBuf<float> dout(pre.size());
  dout.upload(pre);
  const k::Epilogue e = store_or_add(dout.p, N, add);
  if (w8) k::gemv_w8_norm(x.in, m.dq.p, m.ds.p, K, T, N, n_valid, K, e, ctx.stream);
  else k::gemv_f16_norm(x.in, m.dw.p, K, T, N, n_valid, K, e, ctx.stream);
  CK(cudaStreamSynchronize(ctx.stream));
  CK(cudaGetLastError());
  ErrStats st = score_out(dout.download(), pre, T, N, n_valid, add, [&](int t, int n) {
    double dot = 0;
    for (int kk = 0; kk < dim; ++kk) dot += (double)m.wf[(size_t)n * K + kk] * x.ref(K, t, kk);
    return dot;
  });
  ctx.check(fmt("gemv+norm %s T%d N%d/%d K%d dim%d %s", w8 ? "w8" : "f16", T, n_valid, N, K, dim, add ? "add" : "store"), st.ok(2e-3),
            st.rel_l2(), st.max_norm(), st.detail());
}

void correctness(Context& ctx) {
  const int Ts[] = {1, 2, 3, 5, 8, 9, 13, 16, 17, 24, 32};
  for (int T : Ts) {
    for (Kern kern : {Kern::Gemv, Kern::Mma})
      for (bool w8 : {false, true}) {
        check_shape(ctx, kern, w8, 256, 256, 512, T, false);
        check_shape(ctx, kern, w8, 384, 300, 1088, T, T % 2 == 1);  // n_valid < N, K not a power of two, residual add
        if (!ctx.opt.quick) check_shape(ctx, kern, w8, 4096, 4096, 4096, T, false);
      }
  }
  // Both GEMV block heights (2 and 4 rows) wherever either can be chosen, including a row count that
  // leaves half of the last 4-row block as padding.
  for (int rows : {2, 4}) {
    k::gemv_detail::set_rows(rows, rows);
    const char* tag = rows == 2 ? " r2" : " r4";
    for (int T : {1, 2, 3, 4})
      for (bool w8 : {false, true}) {
        check_shape(ctx, Kern::Gemv, w8, 256, 256, 512, T, false, tag);
        check_shape(ctx, Kern::Gemv, w8, 384, 298, 1088, T, T % 2 == 1, tag);
        if (!ctx.opt.quick && T == 1) check_shape(ctx, Kern::Gemv, w8, 4096, 4096, 4096, T, true, tag);
      }
  }
  k::gemv_detail::set_rows(0, 0);
  // The grid-stride walk over row groups: a few blocks walking many groups (each block's next group is
  // loaded before it stores the current one), and one block per group (LLAMA2_GEMV_PERSIST=0).
  for (int cap : {3, 7, -1}) {
    k::gemv_detail::set_grid_cap(cap);
    const std::string tag = cap < 0 ? " grid=groups" : fmt(" grid=%d", cap);
    for (int rows : {2, 4}) {
      k::gemv_detail::set_rows(rows, rows);
      for (int T : {1, 3, 8})
        for (bool w8 : {false, true}) {
          if (rows == 4 && T > 4) continue;
          check_shape(ctx, Kern::Gemv, w8, 384, 298, 1088, T, T % 2 == 1, (tag + fmt(" r%d", rows)).c_str());
        }
    }
    for (bool w8 : {false, true}) check_norm_shape(ctx, w8, 384, 298, 1088, 1000, 1, true);
    // gemv_mma walks its 16-row blocks the same way (the cap applies at every T when a test sets it).
    for (int T : {1, 3, 17})
      for (bool w8 : {false, true}) check_shape(ctx, Kern::Mma, w8, 384, 298, 1088, T, T % 2 == 1, tag.c_str());
  }
  k::gemv_detail::set_grid_cap(0);
  k::gemv_detail::set_rows(0, 0);
  // The staged one-token GEMV (shared-memory ring): its own grid (fits the SMs by shared memory), a few blocks
  // walking many groups (stages run on across groups), one block per group; K with a partial last chunk,
  // rows past n_valid, a residual add; and the 7B width.
  k::gemv_detail::set_staged(1);
  for (int cap : {0, 3, 7, -1}) {
    k::gemv_detail::set_grid_cap(cap);
    const std::string tag = cap == 0 ? " staged" : cap < 0 ? " staged grid=groups" : fmt(" staged grid=%d", cap);
    for (bool w8 : {false, true}) {
      check_shape(ctx, Kern::Gemv, w8, 256, 256, 512, 1, false, tag.c_str());
      check_shape(ctx, Kern::Gemv, w8, 384, 298, 1088, 1, true, tag.c_str());
      if (!ctx.opt.quick && cap == 0) check_shape(ctx, Kern::Gemv, w8, 4096, 4096, 4096, 1, false, tag.c_str());
    }
  }
  k::gemv_detail::set_grid_cap(0);
  k::gemv_detail::set_staged(0);
  // RMSNorm fused into the input: every T it is built for, both weight types and block heights, a row shorter than K
  // (dim 1000 of K 1088: its last chunk straddles dim for int8's 16-column steps), and the 7B width.
  for (int rows : {0, 2, 4}) {
    k::gemv_detail::set_rows(rows, rows);
    for (int T = 1; T <= k::kGemvNormMaxT; ++T)
      for (bool w8 : {false, true}) {
        check_norm_shape(ctx, w8, 256, 256, 512, 512, T, false);
        check_norm_shape(ctx, w8, 384, 298, 1088, 1000, T, T % 2 == 1);
        if (!ctx.opt.quick && rows == 0 && T <= 2) check_norm_shape(ctx, w8, 4096, 4096, 4096, 4096, T, false);
      }
  }
  k::gemv_detail::set_rows(0, 0);
}

void benchmarks(Context& ctx) {
  struct Shape {
    const char* name;
    int N, K;
  };
  const Shape shapes[] = {{"qkv", 12288, 4096}, {"wo", 4096, 4096}, {"gate+up", 22016, 4096}, {"down", 4096, 11008}, {"logits", 32000, 4096}};
  for (const Shape& s : shapes) {
    // Enough weight copies (rotated run by run) to exceed L2 three times: every run streams its weights
    // from memory, as in a decode step (one copy of wo, 34 MB in fp16, would sit in the H100's 50 MB L2).
    const size_t f16_bytes = (size_t)s.N * s.K * 2;
    const int copies = (int)std::min<size_t>(16, std::max<size_t>(2, (3 * ctx.l2_bytes + f16_bytes / 2 - 1) / (f16_bytes / 2)));
    std::vector<DevBuf<half>> w, sc;
    std::vector<DevBuf<int8_t>> q;
    for (int c = 0; c < copies; ++c) {
      w.emplace_back((size_t)s.N * s.K);
      sc.emplace_back((size_t)s.N * (s.K / 32));
      q.emplace_back((size_t)s.N * s.K);
      fill_rand_half(w.back().p, w.back().n, ctx.next_seed(), 0.05f, ctx.stream);
      fill_rand_half(sc.back().p, sc.back().n, ctx.next_seed(), 0.0005f, ctx.stream);
      fill_rand_i8(q.back().p, q.back().n, ctx.next_seed(), ctx.stream);
    }
    DevBuf<half> a((size_t)32 * s.K);
    DevBuf<float> out((size_t)32 * s.N);
    fill_rand_half(a.p, a.n, ctx.next_seed(), 1.f, ctx.stream);
    k::Epilogue e;
    e.kind = k::Epi::StoreF32;
    e.out = out.p;
    e.ldo = s.N;
    for (bool w8 : {false, true}) {
      auto W = [&](int i) { return w8 ? static_cast<const void*>(q[i % copies].p) : static_cast<const void*>(w[i % copies].p); };
      auto S = [&](int i) { return sc[i % copies].p; };
      const double bytes = w8 ? (double)s.N * s.K * (1 + 2.0 / 32) : (double)s.N * s.K * 2;
      // Times `kern` on T tokens (weight copies rotated run by run): bench line "<label> <dtype> <shape> ...",
      // metric "<key>.<dtype>.<shape>.<T>" (the per-layer sums below read them).
      auto measure = [&](Kern kern, int T, const std::string& label, const std::string& key) {
        const double ms = time_ms(ctx.stream, ctx.opt.reps, [&](int i) { run(kern, w8, a.p, s.K, W(i), S(i), s.K, T, s.N, s.N, s.K, e, ctx.stream); });
        ctx.bench(fmt("%s %-3s %-7s N%-5d K%-5d T%-2d", label.c_str(), w8 ? "w8" : "f16", s.name, s.N, s.K, T), ms, 2.0 * s.N * s.K * T, bytes);
        ctx.metrics[fmt("%s.%s.%s.%d", key.c_str(), w8 ? "w8" : "f16", s.name, T)] = ms;
      };
      for (int T : {1, 2, 4}) {  // GEMV block heights: 2 and 4 rows
        for (int rows : {2, 4}) {
          k::gemv_detail::set_rows(rows, rows);
          measure(Kern::Gemv, T, fmt("gemv r%d", rows), fmt("gemv_rows.%d", rows));
        }
        k::gemv_detail::set_rows(0, 0);
        // The default block height with one block per row group (the launch before the grid-stride walk).
        k::gemv_detail::set_grid_cap(-1);
        measure(Kern::Gemv, T, "gemv grid=groups", "gemv_groups");
        k::gemv_detail::set_grid_cap(0);
        if (T == 1) {
          // The staged GEMV (cp.async ring in shared memory) against the register one.
          k::gemv_detail::set_staged(1);
          measure(Kern::Gemv, T, "gemv staged", "gemv_staged");
          k::gemv_detail::set_staged(0);
          // gemv_mma's walk at one token, against a block per 16 rows.
          k::gemv_detail::set_grid_cap(-1);
          measure(Kern::Mma, T, "gemv_mma grid=groups", "gemv_mma_groups");
          k::gemv_detail::set_grid_cap(0);
        }
      }
      for (int T : {1, 2, 4, 8, 16, 32}) {
        for (Kern kern : {Kern::Gemv, Kern::Mma, Kern::Gemm}) {
          if (kern == Kern::Gemv && T > k::kGemvMaxT) continue;
          if (kern == Kern::Gemm && T < 8) continue;
          measure(kern, T, fmt("%-8s", kname(kern)), fmt("gemv.%s", kname(kern)));
        }
      }
    }
  }
  ctx.finalizers.push_back([](Context& c) {
    // A 7B layer's four decode matrices summed for one metric key (see measure above), in us; absent ones count 0.
    auto layer_us = [&c](const std::string& key, const char* dt, int T) {
      double sum = 0;
      for (const char* sh : {"qkv", "wo", "gate+up", "down"}) {
        auto it = c.metrics.find(fmt("%s.%s.%s.%d", key.c_str(), dt, sh, T));
        if (it != c.metrics.end()) sum += it->second;
      }
      return sum * 1e3;
    };
    for (const char* dt : {"f16", "w8"})
      for (int T : {1, 2, 4}) {
        std::string line = fmt("7B decode matrices per layer, GEMV rows per block, %s, T=%d:", dt, T);
        for (int rows : {2, 4}) line += fmt("  r%d %.1f us", rows, layer_us(fmt("gemv_rows.%d", rows), dt, T));
        c.summary.push_back(line);
      }
    for (const char* dt : {"f16", "w8"})
      for (int T : {1, 2, 4})
        c.summary.push_back(fmt("7B decode matrices per layer, GEMV %s T=%d: grid-stride (fits the SMs) %.1f us, a block per row group %.1f us", dt, T,
                                layer_us("gemv.gemv", dt, T), layer_us("gemv_groups", dt, T)));
    for (const char* dt : {"f16", "w8"}) {
      c.summary.push_back(fmt("7B decode matrices per layer, gemv_mma %s T=1: grid-stride (fits the SMs) %.1f us, a block per 16 rows %.1f us", dt,
                              layer_us("gemv.gemv_mma", dt, 1), layer_us("gemv_mma_groups", dt, 1)));
      c.summary.push_back(fmt("7B decode matrices per layer, GEMV %s T=1: registers %.1f us, staged through shared memory %.1f us", dt,
                              layer_us("gemv.gemv", dt, 1), layer_us("gemv_staged", dt, 1)));
    }
    for (const char* dt : {"f16", "w8"})
    for (int T : {1, 2, 4, 8, 16, 32}) {
      std::string line = fmt("7B decode matrices per layer, %s, T=%d:", dt, T);
      for (const char* kn : {"gemv", "gemv_mma", "gemm"}) {
        double sum = 0;
        bool all = true;
        for (const char* sh : {"qkv", "wo", "gate+up", "down"}) {
          auto it = c.metrics.find(fmt("gemv.%s.%s.%s.%d", kn, dt, sh, T));
          if (it == c.metrics.end()) all = false;
          else sum += it->second;
        }
        if (all) line += fmt("  %s %.1f us", kn, sum * 1e3);
      }
      c.summary.push_back(line);
    }
  });
}

}  // namespace

void test_gemv(Context& ctx) {
  if (!ctx.opt.no_check) {
    const int e = emulate_gemv_mma();
    ctx.check("host emulation: gemv_mma fragments (k permutation, mma operands)", e == 0, 0, 0, fmt("%d errors", e));
    if (ctx.opt.host_only) return;
    correctness(ctx);
  }
  if (ctx.opt.bench) benchmarks(ctx);
}
