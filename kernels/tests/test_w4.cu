// 4-bit weights (W4: nibbles + a (scale, bias) pair per 32-group, kernels.h): the GEMV (gemv_w4, gemv_w4_norm)
// and the GEMM's 4-bit tiles (gemm_w4) against a double-precision CPU reference, every block height, the
// grid-stride walk, every GEMM configuration with and without split-K; --bench times them beside int8 at the
// 7B decode shapes (the numbers that decide whether a Q4 file runs 4-bit or int8 on a GPU).
#include "../kernels.h"
#include "harness.cuh"
#include "matrix_check.cuh"

namespace l2::kernels::gemv_detail {
void set_rows_w4(int rows);  // rows per 4-bit GEMV block (2, 4 or 8; 0 = the defaults)
void set_grid_cap(int blocks);
}
namespace l2::kernels::gemm_detail {
void set_splits(int n);
void set_w4_config(int i);  // -1: the library's choice
int num_w4_configs();
const char* w4_config_name(int i);
int pick_w4_config(int M, int N);
}

using namespace l2test;
namespace k = l2::kernels;

namespace {

// A random N x K W4 matrix: rows >= n_valid and columns >= dim are zero (q = 0, scale = bias = 0, as the
// loader pads). Scales and biases look like Q4_K's (a positive scale, a bias of about -8 scales); wf holds
// scale * q + bias exactly (the GEMV's arithmetic; the GEMM's fp16 widening rounds once more).
struct W4 {
  std::vector<uint8_t> q;
  std::vector<half> meta;  // (scale, bias) pairs
  std::vector<double> wf;
  DevBuf<uint8_t> dq;
  DevBuf<half> dm;
  const half2* m() const { return reinterpret_cast<const half2*>(dm.p); }
};

W4 make_w4(Rng& rng, int N, int n_valid, int K, int dim) {
  W4 w;
  w.q.assign((size_t)N * K / 2, 0);
  w.meta.assign((size_t)N * (K / 32) * 2, f2h(0.f));
  w.wf.assign((size_t)N * K, 0.0);
  for (int n = 0; n < n_valid; ++n)
    for (int g = 0; g < K / 32 && g * 32 < dim; ++g) {
      const half s = f2h(0.002f * (1.f + rng.uniform())), b = f2h(-h2f(s) * (8.f + rng.sym(4.f)));
      w.meta[((size_t)n * (K / 32) + g) * 2] = s;
      w.meta[((size_t)n * (K / 32) + g) * 2 + 1] = b;
      for (int i = 0; i < 32; ++i) {
        const int kk = g * 32 + i;
        if (kk >= dim) break;
        const int q = rng.below(16);
        uint8_t& byte = w.q[(size_t)n * (K / 2) + g * 16 + i % 16];
        byte |= (uint8_t)(i < 16 ? q : q << 4);
        w.wf[(size_t)n * K + kk] = (double)h2f(s) * q + (double)h2f(b);
      }
    }
  w.dq.alloc(w.q.size());
  w.dm.alloc(w.meta.size());
  w.dq.upload(w.q);
  w.dm.upload(w.meta);
  return w;
}

enum class Kern { Gemv, Gemm };

void check(Context& ctx, Kern kern, int N, int n_valid, int K, int T, bool add, const std::string& tag) {
  Rng rng(ctx.next_seed());
  const W4 w = make_w4(rng, N, n_valid, K, K);
  std::vector<half> a((size_t)T * K);
  for (auto& v : a) v = f2h(rng.sym(1.f));
  const std::vector<float> pre = initial_out(rng, T, N, add);
  DevBuf<half> da(a.size());
  DevBuf<float> dout(pre.size());
  da.upload(a);
  dout.upload(pre);
  const k::Epilogue e = store_or_add(dout.p, N, add);
  if (kern == Kern::Gemv) k::gemv_w4(da.p, K, w.dq.p, w.m(), K, T, N, n_valid, K, e, ctx.stream);
  else k::gemm_w4(da.p, K, w.dq.p, w.m(), K, T, N, n_valid, K, e, ctx.stream);
  CK(cudaStreamSynchronize(ctx.stream));
  CK(cudaGetLastError());
  const ErrStats st = score_out(dout.download(), pre, T, N, n_valid, add, [&](int t, int n) {
    double dot = 0;
    for (int kk = 0; kk < K; ++kk) dot += w.wf[(size_t)n * K + kk] * h2f(a[(size_t)t * K + kk]);
    return dot;
  });
  ctx.check(fmt("%s w4%s T%d N%d/%d K%d %s", kern == Kern::Gemv ? "gemv" : "gemm", tag.c_str(), T, n_valid, N, K, add ? "add" : "store"),
            st.ok(2e-3), st.rel_l2(), st.max_norm(), st.detail());
}

// gemv_w4_norm: the input is rmsnorm(x[t]) * g, taken from fp32 rows (columns >= dim zero).
void check_norm(Context& ctx, int N, int n_valid, int K, int dim, int T, bool add, const std::string& tag) {
  Rng rng(ctx.next_seed());
  const W4 w = make_w4(rng, N, n_valid, K, dim);
  const NormRows x = make_norm_rows(rng, T, K, dim);
  const std::vector<float> pre = initial_out(rng, T, N, add);
  DevBuf<float> dout(pre.size());
  dout.upload(pre);
  const k::Epilogue e = store_or_add(dout.p, N, add);
  k::gemv_w4_norm(x.in, w.dq.p, w.m(), K, T, N, n_valid, K, e, ctx.stream);
  CK(cudaStreamSynchronize(ctx.stream));
  CK(cudaGetLastError());
  const ErrStats st = score_out(dout.download(), pre, T, N, n_valid, add, [&](int t, int n) {
    double dot = 0;
    for (int kk = 0; kk < dim; ++kk) dot += w.wf[(size_t)n * K + kk] * x.ref(K, t, kk);
    return dot;
  });
  ctx.check(fmt("gemv+norm w4%s T%d N%d/%d K%d dim%d %s", tag.c_str(), T, n_valid, N, K, dim, add ? "add" : "store"), st.ok(2e-3), st.rel_l2(),
            st.max_norm(), st.detail());
}

void correctness(Context& ctx) {
  namespace gv = k::gemv_detail;
  namespace gm = k::gemm_detail;
  // The GEMV at every T it is built for, the default block heights; rows past n_valid, K not a power of two
  // (1088: a partial last step of 4096 columns), a residual add.
  for (int T = 1; T <= k::kGemvMaxT; ++T) {
    check(ctx, Kern::Gemv, 256, 256, 512, T, false, "");
    check(ctx, Kern::Gemv, 384, 300, 1088, T, T % 2 == 1, "");
    if (!ctx.opt.quick && T <= 2) check(ctx, Kern::Gemv, 4096, 4096, 11008 / 64 * 64 + 64, T, false, "");
  }
  // Every block height where it is built (8 rows: one token; 4: up to two), with a last group of padding rows,
  // walking a capped grid (several groups per block) and with a block per group.
  for (int rows : {2, 4, 8})
    for (int cap : {0, 3, -1}) {
      gv::set_rows_w4(rows);
      gv::set_grid_cap(cap);
      const std::string tag = fmt(" r%d%s", rows, cap == 0 ? "" : cap < 0 ? " grid=groups" : " grid=3");
      for (int T : {1, 2}) {
        if (rows == 8 && T > 1) continue;
        check(ctx, Kern::Gemv, 384, 298, 1088, T, T == 1, tag);
      }
      check_norm(ctx, 384, 298, 1088, 1000, 1, true, tag);
    }
  gv::set_rows_w4(0);
  gv::set_grid_cap(0);
  for (int T = 1; T <= k::kGemvNormMaxT; ++T) {
    check_norm(ctx, 256, 256, 512, 512, T, false, "");
    check_norm(ctx, 384, 298, 1088, 1000, T, T % 2 == 1, "");  // dim 1000: a group straddles the row's end
  }
  // The GEMM: every configuration, M from one row to several tiles, split-K off and forced to 2 (the
  // configurations that build it), then the library's choice.
  for (int c = 0; c < gm::num_w4_configs(); ++c) {
    gm::set_w4_config(c);
    for (int splits : {1, 2}) {
      gm::set_splits(splits);
      const std::string tag = fmt(" %s%s", gm::w4_config_name(c), splits == 2 ? " split2" : "");
      for (int M : {1, 17, 64, 130}) {
        if (ctx.opt.quick && M == 130 && splits == 2) continue;
        check(ctx, Kern::Gemm, 384, 300, 1088, M, M % 2 == 1, tag);
      }
    }
  }
  gm::set_splits(0);
  gm::set_w4_config(-1);
  for (int M : {9, 33, 200}) check(ctx, Kern::Gemm, 256, 256, 512, M, false, fmt(" (%s)", gm::w4_config_name(gm::pick_w4_config(M, 256))));
  if (!ctx.opt.quick) check(ctx, Kern::Gemm, 4096, 4096, 4096, 64, true, "");
}

void benchmarks(Context& ctx) {
  struct Shape {
    const char* name;
    int N, K;
  };
  const Shape shapes[] = {{"qkv", 12288, 4096}, {"wo", 4096, 4096}, {"gate+up", 22016, 4096}, {"down", 4096, 11008}, {"logits", 32000, 4096}};
  std::map<int, double> layer_w4, layer_w8;  // T -> us for a 7B layer's four matrices
  for (const Shape& s : shapes) {
    const size_t w8_bytes = (size_t)s.N * s.K;
    const int copies = (int)std::min<size_t>(16, std::max<size_t>(2, (3 * ctx.l2_bytes + w8_bytes / 2 - 1) / (w8_bytes / 2)));
    std::vector<DevBuf<int8_t>> q4, q8;
    std::vector<DevBuf<half>> m4, s8;
    for (int c = 0; c < copies; ++c) {
      q4.emplace_back(w8_bytes / 2);
      q8.emplace_back(w8_bytes);
      m4.emplace_back((size_t)s.N * (s.K / 32) * 2);
      s8.emplace_back((size_t)s.N * (s.K / 32));
      fill_rand_i8(q4.back().p, q4.back().n, ctx.next_seed(), ctx.stream);
      fill_rand_i8(q8.back().p, q8.back().n, ctx.next_seed(), ctx.stream);
      fill_rand_half(m4.back().p, m4.back().n, ctx.next_seed(), 0.002f, ctx.stream);
      fill_rand_half(s8.back().p, s8.back().n, ctx.next_seed(), 0.0005f, ctx.stream);
    }
    DevBuf<half> a((size_t)64 * s.K);
    DevBuf<float> out((size_t)64 * s.N);
    fill_rand_half(a.p, a.n, ctx.next_seed(), 1.f, ctx.stream);
    k::Epilogue e;
    e.kind = k::Epi::StoreF32;
    e.out = out.p;
    e.ldo = s.N;
    const bool in_layer = std::string(s.name) != "logits";
    for (int T : {1, 2, 4, 8, 16, 32, 64}) {
      const bool gemv = T <= k::kGemvMaxT;
      auto run4 = [&](int i) {
        const uint8_t* q = reinterpret_cast<const uint8_t*>(q4[i % copies].p);
        const half2* m = reinterpret_cast<const half2*>(m4[i % copies].p);
        if (gemv) k::gemv_w4(a.p, s.K, q, m, s.K, T, s.N, s.N, s.K, e, ctx.stream);
        else k::gemm_w4(a.p, s.K, q, m, s.K, T, s.N, s.N, s.K, e, ctx.stream);
      };
      auto run8 = [&](int i) {
        if (gemv) k::gemv_w8(a.p, s.K, q8[i % copies].p, s8[i % copies].p, s.K, T, s.N, s.N, s.K, e, ctx.stream);
        else k::gemm_w8(a.p, s.K, q8[i % copies].p, s8[i % copies].p, s.K, T, s.N, s.N, s.K, e, ctx.stream);
      };
      const double ms4 = time_ms(ctx.stream, ctx.opt.reps, run4), ms8 = time_ms(ctx.stream, ctx.opt.reps, run8);
      const char* kn = gemv ? "gemv" : "gemm";
      ctx.bench(fmt("%s w4 %-7s N%-5d K%-5d T%-2d", kn, s.name, s.N, s.K, T), ms4, 2.0 * s.N * s.K * T, (double)s.N * s.K * (0.5 + 4.0 / 32));
      ctx.bench(fmt("%s w8 %-7s N%-5d K%-5d T%-2d", kn, s.name, s.N, s.K, T), ms8, 2.0 * s.N * s.K * T, (double)s.N * s.K * (1 + 2.0 / 32));
      if (in_layer) layer_w4[T] += ms4 * 1e3, layer_w8[T] += ms8 * 1e3;
    }
  }
  for (auto& [T, us] : layer_w4)
    ctx.summary.push_back(fmt("7B decode matrices per layer, T=%d: w4 %.1f us, w8 %.1f us (the engine's W4 dispatch: GEMV to 8 tokens, then the GEMM)", T,
                              us, layer_w8[T]));
}

}  // namespace

void test_w4(Context& ctx) {
  if (!ctx.opt.no_check) correctness(ctx);
  if (ctx.opt.bench) benchmarks(ctx);
}
