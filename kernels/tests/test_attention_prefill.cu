// Tests and benchmarks of attention_prefill (kernels/attention_prefill.cu): causal flash attention over the
// paged KV cache with GQA. The CPU reference (fp64 softmax) reads K / V through the same block tables.
// Layout checks: every output row of a segment with count > 1 is fully written (columns < n_heads * D);
// rows of count-1 segments, rows in gaps between segments and pad columns keep their poison. Cache slots
// that no query may see (unused blocks, slots past the sequence end) hold NaN, so reading one shows up.
#include <numeric>

#include "../kernels.h"
#include "harness.cuh"

namespace {

using namespace l2test;
using l2::kernels::AttentionParams;
using l2::kernels::kKvBlock;

struct Seg {
  int count, pos0;
};
struct AttnCase {
  std::string name;
  int D, n_heads, n_kv;
  std::vector<Seg> segs;
  float q_amp = 2.f;
  int token_stride = 1;  // reference on every token_stride-th token of a segment (plus its last); 1 = all
};

struct AttnSetup {
  int n_tokens = 0, max_blocks = 0, n_blocks = 0, max_count = 0, ldq = 0, ldo = 0;
  std::vector<int32_t> start, count, pos0, table;
  DevBuf<half> q, out, kc, vc;
  DevBuf<int32_t> dstart, dcount, dpos0, dtable;
  std::vector<half> hq, hk, hv;
  AttentionParams p;
};

// Builds segments (a 3-token gap before the last one), shuffled block ids, NaN in every cache slot that is
// not a position < pos0 + count of its sequence.
void build(AttnSetup& S, const AttnCase& c, uint64_t seed, bool host_copy) {
  Rng rng(seed);
  const int D = c.D, nseg = (int)c.segs.size();
  int tok = 0, total_blocks = 0;
  for (int s = 0; s < nseg; ++s) {
    if (s == nseg - 1 && nseg > 1) tok += 3;
    S.start.push_back(tok);
    S.count.push_back(c.segs[s].count);
    S.pos0.push_back(c.segs[s].pos0);
    tok += c.segs[s].count;
    int nb = (c.segs[s].pos0 + c.segs[s].count + kKvBlock - 1) / kKvBlock;
    S.max_blocks = std::max(S.max_blocks, nb + 2);
    total_blocks += nb;
    S.max_count = std::max(S.max_count, c.segs[s].count);
  }
  S.n_tokens = tok + 2;  // 2 trailing rows that belong to no segment
  S.n_blocks = total_blocks + 5;
  std::vector<int32_t> ids(S.n_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  for (int i = S.n_blocks - 1; i > 0; --i) std::swap(ids[i], ids[rng.below(i + 1)]);
  S.table.assign((size_t)nseg * S.max_blocks, -1);  // entries past a sequence's blocks: invalid ids
  std::vector<int> owner_len(S.n_blocks, 0);        // valid slots of each physical block
  int next = 0;
  for (int s = 0; s < nseg; ++s) {
    int L = c.segs[s].pos0 + c.segs[s].count;
    int nb = (L + kKvBlock - 1) / kKvBlock;
    for (int b = 0; b < nb; ++b) {
      int id = ids[next++];
      S.table[(size_t)s * S.max_blocks + b] = id;
      owner_len[id] = std::min(kKvBlock, L - b * kKvBlock);
    }
  }
  S.ldq = c.n_heads * D + 8;
  S.ldo = c.n_heads * D + 16;
  const size_t pool = (size_t)S.n_blocks * c.n_kv * kKvBlock * D;
  S.q.alloc((size_t)S.n_tokens * S.ldq);
  S.out.alloc((size_t)S.n_tokens * S.ldo);
  S.kc.alloc(pool);
  S.vc.alloc(pool);
  if (host_copy) {
    S.hq.resize((size_t)S.n_tokens * S.ldq);
    for (int t = 0; t < S.n_tokens; ++t)
      for (int i = 0; i < S.ldq; ++i) S.hq[(size_t)t * S.ldq + i] = i < c.n_heads * D ? f2h(rng.sym(c.q_amp)) : poison_h();
    S.hk.resize(pool);
    S.hv.resize(pool);
    for (int b = 0; b < S.n_blocks; ++b)
      for (int kh = 0; kh < c.n_kv; ++kh)
        for (int sl = 0; sl < kKvBlock; ++sl)
          for (int d = 0; d < D; ++d) {
            size_t i = (((size_t)b * c.n_kv + kh) * kKvBlock + sl) * D + d;
            bool used = sl < owner_len[b];
            S.hk[i] = used ? f2h(rng.sym(2.f)) : poison_h();
            S.hv[i] = used ? f2h(rng.sym(1.f)) : poison_h();
          }
    S.q.upload(S.hq);
    S.kc.upload(S.hk);
    S.vc.upload(S.hv);
  } else {
    fill_rand_half(S.q.p, S.q.n, seed + 1, c.q_amp, nullptr);
    fill_rand_half(S.kc.p, S.kc.n, seed + 2, 2.f, nullptr);
    fill_rand_half(S.vc.p, S.vc.n, seed + 3, 1.f, nullptr);
  }
  S.out.poison();
  S.dstart.alloc(nseg), S.dstart.upload(S.start);
  S.dcount.alloc(nseg), S.dcount.upload(S.count);
  S.dpos0.alloc(nseg), S.dpos0.upload(S.pos0);
  S.dtable.alloc(S.table.size()), S.dtable.upload(S.table);
  CK(cudaDeviceSynchronize());
  AttentionParams& p = S.p;
  p.q = S.q.p, p.ldq = S.ldq, p.out = S.out.p, p.ldo = S.ldo;
  p.k_cache = S.kc.p, p.v_cache = S.vc.p;
  p.block_tables = S.dtable.p, p.max_blocks = S.max_blocks;
  p.seg_start = S.dstart.p, p.seg_count = S.dcount.p, p.seg_pos0 = S.dpos0.p, p.n_segments = nseg;
  p.n_heads = c.n_heads, p.n_kv_heads = c.n_kv, p.head_dim = D;
  p.scale = 1.f / std::sqrt((float)D);
}

bool run_case(Context& ctx, const AttnCase& c) {
  AttnSetup S;
  build(S, c, ctx.next_seed(), true);
  bool launched = l2::kernels::attention_prefill(S.p, S.max_count, ctx.stream);
  CK(cudaGetLastError());
  CK(cudaStreamSynchronize(ctx.stream));
  std::vector<half> out = S.out.download();
  const int D = c.D, H = c.n_heads, group = c.n_heads / c.n_kv;
  std::string name = fmt("%s D%d h%d/%d segs", c.name.c_str(), D, H, c.n_kv);
  for (auto& s : c.segs) name += fmt(" %d@%d", s.count, s.pos0);
  ErrStats st;
  if (!launched) {
    for (auto& h : out) st.clobbered += hbits(h) != kPoisonH;
    return ctx.check(name, false, 0, 0, "attention_prefill returned false for a supported head_dim");
  }
  // Which rows must be written.
  std::vector<int> row_seg(S.n_tokens, -1);
  for (int s = 0; s < (int)c.segs.size(); ++s)
    if (S.count[s] > 1)
      for (int j = 0; j < S.count[s]; ++j) row_seg[S.start[s] + j] = s;
  for (int t = 0; t < S.n_tokens; ++t)
    for (int i = 0; i < S.ldo; ++i) {
      bool valid = row_seg[t] >= 0 && i < H * D;
      uint16_t b = hbits(out[(size_t)t * S.ldo + i]);
      if (valid && b == kPoisonH) ++st.unwritten;
      if (!valid && b != kPoisonH) ++st.clobbered;
    }
  // Reference on the selected (token, head) pairs.
  struct Job {
    int s, j;
  };
  std::vector<Job> jobs;
  for (int s = 0; s < (int)c.segs.size(); ++s)
    if (S.count[s] > 1)
      for (int j = 0; j < S.count[s]; ++j)
        if (j % c.token_stride == 0 || j == S.count[s] - 1 || j % 64 == 63) jobs.push_back({s, j});
  std::vector<double> ref((size_t)jobs.size() * H * D);
  parallel_for((int)jobs.size() * H, [&](int task) {
    const Job jb = jobs[task / H];
    const int h = task % H, kh = h / group;
    const int t = S.start[jb.s] + jb.j, P = S.pos0[jb.s] + jb.j;
    std::vector<double> sc(P + 1);
    const half* q = &S.hq[(size_t)t * S.ldq + h * D];
    double mx = -1e300;
    for (int p = 0; p <= P; ++p) {
      int blk = S.table[(size_t)jb.s * S.max_blocks + p / kKvBlock];
      const half* k = &S.hk[(((size_t)blk * c.n_kv + kh) * kKvBlock + p % kKvBlock) * D];
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += (double)h2f(q[d]) * h2f(k[d]);
      sc[p] = dot * (1.0 / std::sqrt((double)D));
      mx = std::max(mx, sc[p]);
    }
    double sum = 0;
    for (int p = 0; p <= P; ++p) sum += (sc[p] = std::exp(sc[p] - mx));
    double* o = &ref[(size_t)task * D];
    for (int d = 0; d < D; ++d) o[d] = 0;
    for (int p = 0; p <= P; ++p) {
      int blk = S.table[(size_t)jb.s * S.max_blocks + p / kKvBlock];
      const half* v = &S.hv[(((size_t)blk * c.n_kv + kh) * kKvBlock + p % kKvBlock) * D];
      double w = sc[p] / sum;
      for (int d = 0; d < D; ++d) o[d] += w * h2f(v[d]);
    }
  });
  for (size_t task = 0; task < jobs.size() * H; ++task) {
    const Job jb = jobs[task / H];
    const int h = task % H, t = S.start[jb.s] + jb.j;
    for (int d = 0; d < D; ++d) {
      half v = out[(size_t)t * S.ldo + h * D + d];
      if (hbits(v) == kPoisonH) continue;  // counted as unwritten above
      st.add(h2f(v), ref[task * D + d]);
    }
  }
  return ctx.check(name, st.ok(), st.rel_l2(), st.max_norm(),
                   fmt("%zu tokens ref, %s", jobs.size(), st.detail().c_str()));
}

void correctness(Context& ctx) {
  // Unsupported head dim: returns false, launches nothing, output untouched.
  {
    AttnCase c{"unsupported", 96, 4, 2, {{20, 0}}};
    AttnSetup S;
    build(S, c, ctx.next_seed(), true);
    bool r = l2::kernels::attention_prefill(S.p, S.max_count, ctx.stream);
    CK(cudaStreamSynchronize(ctx.stream));
    CK(cudaGetLastError());
    long touched = 0;
    for (auto& h : S.out.download()) touched += hbits(h) != kPoisonH;
    ctx.check("head_dim 96 -> false, nothing written", !r && touched == 0, 0, 0, fmt("returned %d, %ld written", r, touched));
  }
  const std::vector<Seg> mixed = {{300, 200}, {1, 50}, {17, 0}, {64, 0}, {65, 63}, {2, 1000}, {1, 0}, {130, 31}};
  if (ctx.opt.quick) {
    for (int D : {64, 128}) {
      run_case(ctx, {"quick", D, 4, 2, {{70, 30}, {1, 5}, {17, 0}, {2, 77}}});
      run_case(ctx, {"quick", D, 2, 2, {{65, 0}, {1, 40}}});
    }
    return;
  }
  for (int D : {64, 128}) {
    run_case(ctx, {"mixed", D, 32, 32, mixed});
    run_case(ctx, {"mixed gqa", D, 32, 8, mixed});
  }
  run_case(ctx, {"peaky", 128, 8, 2, {{130, 7}, {1, 3}, {33, 100}}, 8.f});
  run_case(ctx, {"peaky", 64, 8, 1, {{200, 0}, {1, 3}, {5, 16}}, 8.f});
  run_case(ctx, {"7b prompt", 128, 32, 32, {{512, 0}}, 2.f, 3});
  run_case(ctx, {"7b chunk", 128, 32, 32, {{512, 1536}}, 2.f, 7});
}

// ---- benchmarks ----
void bench_case(Context& ctx, const char* name, const AttnCase& c, const char* metric) {
  AttnSetup S;
  build(S, c, ctx.next_seed(), false);
  double flops = 0, kv_bytes = 0, rows = 0;
  for (auto& s : c.segs) {
    if (s.count <= 1) continue;
    for (int j = 0; j < s.count; ++j) flops += 4.0 * c.D * (s.pos0 + j + 1) * c.n_heads;
    kv_bytes += 2.0 * (s.pos0 + s.count) * c.n_kv * c.D * 2;
    rows += s.count;
  }
  double bytes = kv_bytes + rows * c.n_heads * c.D * 2 * 2;
  double ms = time_ms(ctx.stream, ctx.opt.reps, [&](int) { l2::kernels::attention_prefill(S.p, S.max_count, ctx.stream); });
  ctx.bench(name, ms, flops, bytes, "causal FLOPs");
  if (metric) ctx.metrics[metric] = ms;
}

void benchmarks(Context& ctx) {
  bench_case(ctx, "7b: 512 tok, 32 heads hd128", {"", 128, 32, 32, {{512, 0}}}, "attn.7b.512");
  if (ctx.opt.quick) return;
  bench_case(ctx, "7b: 2048 tok, 32 heads hd128", {"", 128, 32, 32, {{2048, 0}}}, nullptr);
  bench_case(ctx, "7b: 512 tok after 1536 cached", {"", 128, 32, 32, {{512, 1536}}}, nullptr);
  bench_case(ctx, "7b: 8 seqs x 128 tok", {"", 128, 32, 32, {{128, 0}, {128, 0}, {128, 0}, {128, 0}, {128, 0}, {128, 0}, {128, 0}, {128, 0}}}, nullptr);
  bench_case(ctx, "70b-like: 512 tok, 64/8 heads hd128", {"", 128, 64, 8, {{512, 0}}}, nullptr);
  bench_case(ctx, "hd64: 512 tok, 32 heads", {"", 64, 32, 32, {{512, 0}}}, nullptr);
}

}  // namespace

void test_attention_prefill(l2test::Context& ctx) {
  if (ctx.opt.host_only) return;
  if (!ctx.opt.no_check) correctness(ctx);
  if (ctx.opt.bench) benchmarks(ctx);
}
