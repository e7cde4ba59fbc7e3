// Tests and benchmarks of the int8 KV cache (Q8_0 groups per head):
// - kv_quantize (kernels/kv_quant.cu) against the host's rule, l2::q8_quantize_group (native/common/q8.h):
//   int8 values and fp16 scale bits must be identical, and every cache slot not addressed by kv_slot keeps
//   its poison (values 0x80 = -128, which the quantizer never writes; scales 0xFFFF = NaN).
// - attention_decode (split-K + reduce, GQA, decode_tokens) and attention_prefill (tensor cores) reading the
//   int8 cache, against a double-precision reference that dequantizes the SAME int8 cache (value =
//   q * float(scale)), so the only error is the kernels' fp16 / fp32 arithmetic: the tolerance is the one of
//   the fp16-cache attention tests (ErrStats::ok(), rel L2 1e-2). Decode also runs on the fp16 cache, same
//   shapes, as a control (a q8-only failure points at the int8 path).
// - End to end: random fp16 K/V rows -> kv_quantize -> attention, checked against the dequantized cache
//   (strict) and against the fp16 rows themselves (loose: the quantization error itself).
// - --bench: decode attention at the 7B shape (32 heads, head_dim 128, context 4096), fp16 vs int8 cache,
//   batch 1 and 16, with the cache rotated over enough copies that it streams from memory as in a decode
//   step; prefill 512 tokens after 1536 cached, fp16 vs int8.
// Layouts (kernels.h): values [n_blocks][n_kv_heads][kKvBlock][head_dim], scales [...][head_dim / group],
// kv_slot = block * kKvBlock + slot; token t of segment s attends to positions 0 .. seg_pos0[s] + t - seg_start[s]
// through block_tables[s]. Unused cache slots hold NaN (fp16 cache) or NaN scales (int8 cache), so a read of
// a slot no query may see shows up in the output.
#include <memory>
#include <numeric>

#include "../../native/common/q8.h"
#include "../kernels.h"
#include "harness.cuh"

namespace l2::kernels::attention_detail {  // test hook defined in attention_decode.cu
void force_early(int mode);
void force_stream(int mode);
}  // namespace l2::kernels::attention_detail

namespace {

using namespace l2test;
using l2::kernels::AttentionParams;
using l2::kernels::kKvBlock;
namespace k = l2::kernels;

// Values per scale for a head dim (backend.h kv_quant_group).
int qgroup(int D) { return D % 32 == 0 ? 32 : D; }
constexpr uint8_t kPoisonQ = 0x80;  // int8 -128: q8 quantization only produces [-127, 127]

// ---------------------------------------------------------------------------------------------------
// Segments, block tables
// ---------------------------------------------------------------------------------------------------
struct Seg {
  int count, pos0;
};

// Segments in token order with a 3-token gap before the last one and 2 trailing rows that belong to no
// segment; each sequence's blocks are drawn from a shuffled pool (5 blocks never used); table entries
// past a sequence's blocks are -1.
struct Layout {
  int n_tokens = 0, max_blocks = 0, n_blocks = 0, max_count = 0;
  std::vector<int32_t> start, count, pos0, table;
  std::vector<int> owner_len;  // valid slots of each physical block (0: unused)
  int nseg() const { return (int)start.size(); }
  int seg_of(int t) const {
    for (int s = 0; s < nseg(); ++s)
      if (t >= start[s] && t < start[s] + count[s]) return s;
    return -1;
  }
  int len(int s) const { return pos0[s] + count[s]; }  // cached positions of sequence s
  int block(int s, int pos) const { return table[(size_t)s * max_blocks + pos / kKvBlock]; }
};

Layout make_layout(const std::vector<Seg>& segs, Rng& rng) {
  Layout L;
  const int nseg = (int)segs.size();
  int tok = 0, total_blocks = 0;
  for (int s = 0; s < nseg; ++s) {
    if (s == nseg - 1 && nseg > 1) tok += 3;
    L.start.push_back(tok);
    L.count.push_back(segs[s].count);
    L.pos0.push_back(segs[s].pos0);
    tok += segs[s].count;
    const int nb = (segs[s].pos0 + segs[s].count + kKvBlock - 1) / kKvBlock;
    L.max_blocks = std::max(L.max_blocks, nb + 2);
    total_blocks += nb;
    L.max_count = std::max(L.max_count, segs[s].count);
  }
  L.n_tokens = tok + 2;
  L.n_blocks = total_blocks + 5;
  std::vector<int32_t> ids(L.n_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  for (int i = L.n_blocks - 1; i > 0; --i) std::swap(ids[i], ids[rng.below(i + 1)]);
  L.table.assign((size_t)nseg * L.max_blocks, -1);
  L.owner_len.assign(L.n_blocks, 0);
  int next = 0;
  for (int s = 0; s < nseg; ++s) {
    const int len = L.len(s), nb = (len + kKvBlock - 1) / kKvBlock;
    for (int b = 0; b < nb; ++b) {
      const int id = ids[next++];
      L.table[(size_t)s * L.max_blocks + b] = id;
      L.owner_len[id] = std::min(kKvBlock, len - b * kKvBlock);
    }
  }
  return L;
}

// ---------------------------------------------------------------------------------------------------
// Cache (host image and device pools)
// ---------------------------------------------------------------------------------------------------
struct HostCache {
  int D = 0, n_kv = 0, group = 0, n_blocks = 0;
  bool q8 = false;
  std::vector<half> k, v;      // fp16 pools
  std::vector<int8_t> kq, vq;  // int8 pools (same layout)
  std::vector<half> ks, vs;    // int8: scales [n_blocks][n_kv][kKvBlock][D / group]
  size_t row(int blk, int kh, int slot) const { return ((size_t)blk * n_kv + kh) * kKvBlock + slot; }
  // A K or V row as the reference uses it: the fp16 values, or q * float(scale) (exact in double).
  void get(size_t r, bool is_v, double* dst) const {
    if (q8) {
      const int8_t* q = (is_v ? vq : kq).data() + r * D;
      const half* s = (is_v ? vs : ks).data() + r * (D / group);
      for (int d = 0; d < D; ++d) dst[d] = (double)q[d] * (double)h2f(s[d / group]);
    } else {
      const half* x = (is_v ? v : k).data() + r * D;
      for (int d = 0; d < D; ++d) dst[d] = h2f(x[d]);
    }
  }
};

struct CacheBufs {
  DevBuf<half> kc, vc, ks, vs;
  DevBuf<int8_t> kq, vq;
  void alloc(bool q8, size_t values, size_t scales) {
    if (q8) {
      kq.alloc(values), vq.alloc(values), ks.alloc(scales), vs.alloc(scales);
    } else {
      kc.alloc(values), vc.alloc(values);
    }
  }
  void set(AttentionParams& p, bool q8, int group) const {
    if (q8) {
      p.k_q = kq.p, p.v_q = vq.p, p.k_scale = ks.p, p.v_scale = vs.p, p.kv_group = group;
      p.k_cache = p.v_cache = nullptr;
    } else {
      p.k_cache = kc.p, p.v_cache = vc.p;
      p.k_q = p.v_q = nullptr, p.k_scale = p.v_scale = nullptr;
    }
  }
  void poison_q8() {  // values -128, scales NaN: what an unwritten int8 slot looks like
    CK(cudaMemset(kq.p, kPoisonQ, kq.bytes()));
    CK(cudaMemset(vq.p, kPoisonQ, vq.bytes()));
    ks.poison(), vs.poison();
  }
  void fill_device(bool q8, uint64_t seed) {  // bench data
    if (q8) {
      fill_rand_i8(kq.p, kq.n, seed + 1, nullptr);
      fill_rand_i8(vq.p, vq.n, seed + 2, nullptr);
      fill_rand_half(ks.p, ks.n, seed + 3, 2.f / 127, nullptr);
      fill_rand_half(vs.p, vs.n, seed + 4, 1.f / 127, nullptr);
    } else {
      fill_rand_half(kc.p, kc.n, seed + 1, 2.f, nullptr);
      fill_rand_half(vc.p, vc.n, seed + 2, 1.f, nullptr);
    }
  }
};

struct CaseSpec {
  int D, H, n_kv;
  std::vector<Seg> segs;
  bool q8;
  float q_amp = 2.f;
};

enum class Fill { Host, Device, Poison };  // random data with a host copy / device random (bench) / q8 poison

struct Setup {
  int D = 0, H = 0, n_kv = 0, group = 0, ldq = 0, ldo = 0;
  bool q8 = false;
  Layout L;
  std::vector<half> hq;
  HostCache hc;
  DevBuf<half> q, out;
  CacheBufs cache;
  DevBuf<int32_t> dstart, dcount, dpos0, dtable;
  AttentionParams p;
  size_t pool_values() const { return (size_t)L.n_blocks * n_kv * kKvBlock * D; }
  size_t pool_scales() const { return (size_t)L.n_blocks * n_kv * kKvBlock * (D / group); }
  void download_cache() {  // device int8 cache -> hc (after kv_quantize)
    hc.kq = cache.kq.download(), hc.vq = cache.vq.download();
    hc.ks = cache.ks.download(), hc.vs = cache.vs.download();
  }
};

void build(Setup& S, const CaseSpec& c, uint64_t seed, Fill fill) {
  Rng rng(seed);
  S.D = c.D, S.H = c.H, S.n_kv = c.n_kv, S.q8 = c.q8, S.group = qgroup(c.D);
  S.L = make_layout(c.segs, rng);
  S.ldq = c.H * c.D + 8;
  S.ldo = c.H * c.D + 16;
  const int D = c.D, ng = D / S.group;
  S.q.alloc((size_t)S.L.n_tokens * S.ldq);
  S.out.alloc((size_t)S.L.n_tokens * S.ldo);
  S.cache.alloc(c.q8, S.pool_values(), S.pool_scales());
  HostCache& hc = S.hc;
  hc.D = D, hc.n_kv = c.n_kv, hc.group = S.group, hc.n_blocks = S.L.n_blocks, hc.q8 = c.q8;
  if (fill == Fill::Device) {
    fill_rand_half(S.q.p, S.q.n, seed + 1, c.q_amp, nullptr);
    S.cache.fill_device(c.q8, seed + 2);
  } else {
    S.hq.resize((size_t)S.L.n_tokens * S.ldq);
    for (int t = 0; t < S.L.n_tokens; ++t)
      for (int i = 0; i < S.ldq; ++i) S.hq[(size_t)t * S.ldq + i] = i < c.H * D ? f2h(rng.sym(c.q_amp)) : poison_h();
    S.q.upload(S.hq);
    if (fill == Fill::Poison) {
      S.cache.poison_q8();  // kv_quantize writes it; the test downloads it into hc
    } else {
      // Every cache row (block, kv head, slot) in order, and whether a sequence's length covers it.
      auto each_row = [&](auto&& fill_row) {
        for (int b = 0; b < S.L.n_blocks; ++b)
          for (int kh = 0; kh < c.n_kv; ++kh)
            for (int sl = 0; sl < kKvBlock; ++sl) fill_row(hc.row(b, kh, sl), sl < S.L.owner_len[b]);
      };
      if (c.q8) {
        hc.kq.resize(S.pool_values()), hc.vq.resize(S.pool_values());
        hc.ks.resize(S.pool_scales()), hc.vs.resize(S.pool_scales());
        each_row([&](size_t r, bool used) {
          for (int d = 0; d < D; ++d) {
            hc.kq[r * D + d] = (int8_t)(rng.below(255) - 127);
            hc.vq[r * D + d] = (int8_t)(rng.below(255) - 127);
          }
          // Positive scales that differ between groups (0.25x .. 1.75x), so a wrong scale index shows;
          // K values up to ~3.5 (the fp16 tests use 2), V up to ~1.75.
          for (int g = 0; g < ng; ++g) {
            hc.ks[r * ng + g] = used ? f2h(2.f / 127 * (0.25f + 1.5f * rng.uniform())) : poison_h();
            hc.vs[r * ng + g] = used ? f2h(1.f / 127 * (0.25f + 1.5f * rng.uniform())) : poison_h();
          }
        });
        S.cache.kq.upload(hc.kq), S.cache.vq.upload(hc.vq);
        S.cache.ks.upload(hc.ks), S.cache.vs.upload(hc.vs);
      } else {
        hc.k.resize(S.pool_values()), hc.v.resize(S.pool_values());
        each_row([&](size_t r, bool used) {
          for (int d = 0; d < D; ++d) {
            hc.k[r * D + d] = used ? f2h(rng.sym(2.f)) : poison_h();
            hc.v[r * D + d] = used ? f2h(rng.sym(1.f)) : poison_h();
          }
        });
        S.cache.kc.upload(hc.k), S.cache.vc.upload(hc.v);
      }
    }
  }
  S.out.poison();
  const int nseg = S.L.nseg();
  S.dstart.alloc(nseg), S.dstart.upload(S.L.start);
  S.dcount.alloc(nseg), S.dcount.upload(S.L.count);
  S.dpos0.alloc(nseg), S.dpos0.upload(S.L.pos0);
  S.dtable.alloc(S.L.table.size()), S.dtable.upload(S.L.table);
  CK(cudaDeviceSynchronize());
  AttentionParams& p = S.p;
  p.q = S.q.p, p.ldq = S.ldq, p.out = S.out.p, p.ldo = S.ldo;
  S.cache.set(p, c.q8, S.group);
  p.block_tables = S.dtable.p, p.max_blocks = S.L.max_blocks;
  p.seg_start = S.dstart.p, p.seg_count = S.dcount.p, p.seg_pos0 = S.dpos0.p, p.n_segments = nseg;
  p.n_heads = c.H, p.n_kv_heads = c.n_kv, p.head_dim = D;
  p.scale = 1.f / std::sqrt((float)D);
  p.decode_tokens = nullptr;
}

// ---------------------------------------------------------------------------------------------------
// Reference attention (fp64 softmax), K / V rows through a callback
// ---------------------------------------------------------------------------------------------------
// src(s, kv_head, position, is_v, dst[D]): the row of sequence s as the reference should see it.
using RowSrc = std::function<void(int, int, int, bool, double*)>;

RowSrc cache_rows(const Setup& S) {
  return [&S](int s, int kh, int pos, bool is_v, double* dst) {
    S.hc.get(S.hc.row(S.L.block(s, pos), kh, pos % kKvBlock), is_v, dst);
  };
}

// Output of head h of token t (segment s): softmax over positions 0 .. pos0 + (t - start) of q . k / sqrt(D).
void ref_head(const Setup& S, const RowSrc& src, int s, int t, int h, double* o) {
  const int D = S.D, kh = h / (S.H / S.n_kv), P = S.L.pos0[s] + (t - S.L.start[s]);
  std::vector<double> sc(P + 1), row(D), q(D);
  for (int d = 0; d < D; ++d) q[d] = h2f(S.hq[(size_t)t * S.ldq + (size_t)h * D + d]);
  const double scale = 1.0 / std::sqrt((double)D);
  double mx = -1e300;
  for (int p = 0; p <= P; ++p) {
    src(s, kh, p, false, row.data());
    double dot = 0;
    for (int d = 0; d < D; ++d) dot += q[d] * row[d];
    sc[p] = dot * scale;
    mx = std::max(mx, sc[p]);
  }
  double sum = 0;
  for (int p = 0; p <= P; ++p) sum += (sc[p] = std::exp(sc[p] - mx));
  for (int d = 0; d < D; ++d) o[d] = 0;
  for (int p = 0; p <= P; ++p) {
    src(s, kh, p, true, row.data());
    const double w = sc[p] / sum;
    for (int d = 0; d < D; ++d) o[d] += w * row[d];
  }
}

// Compares the heads of `tokens` (rows of out [n_tokens][ldo]) with the reference; `written[t]` says
// which rows must be fully written (columns < H * D); every other value must keep its poison.
// tol: ErrStats::ok(tol) (the kernels' own error); tol_max >= 0: instead rel L2 <= tol and the normalized max
// <= tol_max (the end-to-end comparison with the fp16 rows, whose max is dominated by the quantization error
// of short contexts, where an output is one or two V rows: up to amax / 254 against an rms that long
// contexts' averaging makes small).
bool compare(Context& ctx, const Setup& S, const std::vector<half>& out, const std::vector<char>& written, const std::vector<int>& tokens,
             const RowSrc& src, double tol, const std::string& name, const std::string& what, double tol_max = -1) {
  const int D = S.D, H = S.H, HD = H * D;
  ErrStats st;
  for (int t = 0; t < S.L.n_tokens; ++t)
    for (int i = 0; i < S.ldo; ++i) {
      const bool valid = written[t] && i < HD;
      const uint16_t b = hbits(out[(size_t)t * S.ldo + i]);
      if (valid && b == kPoisonH) ++st.unwritten;
      if (!valid && b != kPoisonH) ++st.clobbered;
    }
  std::vector<double> ref((size_t)tokens.size() * HD);
  parallel_for((int)tokens.size() * H, [&](int task) {
    const int t = tokens[task / H], h = task % H;
    ref_head(S, src, S.L.seg_of(t), t, h, &ref[(size_t)task * D]);
  });
  for (size_t i = 0; i < tokens.size(); ++i)
    for (int c = 0; c < HD; ++c) {
      const half v = out[(size_t)tokens[i] * S.ldo + c];
      if (hbits(v) == kPoisonH) continue;  // counted as unwritten above
      st.add(h2f(v), ref[i * HD + c]);
    }
  const bool ok = tol_max < 0 ? st.ok(tol) : st.ok(1e30) && st.rel_l2() <= tol && st.max_norm() <= tol_max;
  return ctx.check(name, ok, st.rel_l2(), st.max_norm(), fmt("%s, %s", what.c_str(), st.detail().c_str()));
}

// ---------------------------------------------------------------------------------------------------
// Launch helpers
// ---------------------------------------------------------------------------------------------------
std::vector<half> run_decode(Context& ctx, Setup& S, const std::vector<int>& list, bool null_list, int max_ctx) {
  S.out.poison();
  std::vector<int32_t> l32(list.begin(), list.end());
  DevBuf<int32_t> dl(std::max<size_t>(1, l32.size()));
  dl.upload(l32);
  const int n = (int)list.size();
  DevBuf<float> ws(k::attention_decode_workspace(n, S.H, S.D, max_ctx) / sizeof(float) + 1);
  ws.poison();  // a split the merge reads but nobody wrote: NaN
  const size_t counters = k::attention_decode_counter_bytes(n, S.H);
  CK(cudaMemset(ws.p, 0, counters));  // the merge counters start at zero
  CK(cudaDeviceSynchronize());
  AttentionParams p = S.p;
  p.decode_tokens = null_list ? nullptr : dl.p;
  k::attention_decode(p, n, max_ctx, ws.p, ctx.stream);
  CK(cudaGetLastError());
  CK(cudaStreamSynchronize(ctx.stream));
  // Every call must leave the counters at zero (a graph replays the same workspace).
  std::vector<int32_t> cnt(counters / 4);
  CK(cudaMemcpy(cnt.data(), ws.p, counters, cudaMemcpyDeviceToHost));
  std::vector<half> out = S.out.download();
  for (size_t i = 0; i < cnt.size(); ++i)
    if (cnt[i] != 0) {  // fail the caller's comparison: every output NaN
      std::printf("    attention_decode left merge counter %zu at %d\n", i, (int)cnt[i]);
      for (half& v : out) v = __float2half(NAN);
      break;
    }
  return out;
}

// Returns false when attention_prefill does (nothing launched).
bool run_prefill(Context& ctx, Setup& S, std::vector<half>& out) {
  S.out.poison();
  CK(cudaDeviceSynchronize());
  const bool r = k::attention_prefill(S.p, S.L.max_count, ctx.stream);
  CK(cudaGetLastError());
  CK(cudaStreamSynchronize(ctx.stream));
  out = S.out.download();
  return r;
}

std::string segs_str(const std::vector<Seg>& segs) {
  std::string r;
  for (auto& s : segs) r += fmt(" %d@%d", s.count, s.pos0);
  return r;
}

// ---------------------------------------------------------------------------------------------------
// kv_quantize
// ---------------------------------------------------------------------------------------------------
// The expected int8 pools after quantizing staged rows (K at [0, kv_dim), V at [kv_dim, 2 kv_dim) of each
// row of `stage`) into slots[r]: the host rule per group, from the same fp16 inputs as floats, into a
// poisoned image.
struct Q8Image {
  std::vector<int8_t> kq, vq;
  std::vector<uint16_t> ks, vs;
};
Q8Image quantize_host(const std::vector<half>& stage, int ld, const std::vector<int32_t>& slots, int n_blocks, int n_kv, int D) {
  const int G = qgroup(D), ng = D / G, kv_dim = n_kv * D;
  const size_t rows = (size_t)n_blocks * n_kv * kKvBlock;
  Q8Image im;
  im.kq.assign(rows * D, (int8_t)kPoisonQ), im.vq.assign(rows * D, (int8_t)kPoisonQ);
  im.ks.assign(rows * ng, kPoisonH), im.vs.assign(rows * ng, kPoisonH);
  std::vector<float> x(G);
  for (size_t t = 0; t < slots.size(); ++t) {
    const int slot = slots[t];
    for (int is_v = 0; is_v < 2; ++is_v)
      for (int kh = 0; kh < n_kv; ++kh) {
        const size_t r = ((size_t)(slot / kKvBlock) * n_kv + kh) * kKvBlock + slot % kKvBlock;
        for (int g = 0; g < ng; ++g) {
          for (int i = 0; i < G; ++i) x[i] = h2f(stage[t * ld + is_v * kv_dim + kh * D + g * G + i]);
          (is_v ? im.vs : im.ks)[r * ng + g] = l2::q8_quantize_group(x.data(), G, (is_v ? im.vq : im.kq).data() + r * D + g * G);
        }
      }
  }
  return im;
}

// Exact comparison: the kernel performs the host rule's float operations one for one (amax with fmaxf,
// d = amax / 127.f, id = 1.f / d by IEEE intrinsics (exact under --use_fast_math too), roundf(x * id), which
// rounds halves away from zero as std::lround does, and __float2half_rn(d) = f32_to_fp16(d), both RNE
// including subnormals), so there is no legitimate source of a one-step difference: |dq| must be 0.
bool compare_q8(Context& ctx, const std::string& name, const Q8Image& want, const std::vector<int8_t>& kq, const std::vector<int8_t>& vq,
                const std::vector<half>& ks, const std::vector<half>& vs) {
  long q_bad = 0, s_bad = 0, clobbered = 0, unwritten = 0, n = 0;
  int max_dq = 0;
  for (int is_v = 0; is_v < 2; ++is_v) {
    const auto& wq = is_v ? want.vq : want.kq;
    const auto& gq = is_v ? vq : kq;
    for (size_t i = 0; i < wq.size(); ++i) {
      const bool poison_w = (uint8_t)wq[i] == kPoisonQ, poison_g = (uint8_t)gq[i] == kPoisonQ;
      if (poison_w) {
        clobbered += !poison_g;
        continue;
      }
      ++n;
      if (poison_g) ++unwritten;
      else if (gq[i] != wq[i]) ++q_bad, max_dq = std::max(max_dq, std::abs((int)gq[i] - (int)wq[i]));
    }
    const auto& ws = is_v ? want.vs : want.ks;
    const auto& gs = is_v ? vs : ks;
    for (size_t i = 0; i < ws.size(); ++i) {
      const uint16_t g = hbits(gs[i]);
      if (ws[i] == kPoisonH) clobbered += g != kPoisonH;
      else if (g == kPoisonH) ++unwritten;  // (a real scale is never 0xFFFF: NaN)
      else s_bad += g != ws[i];
    }
  }
  const bool ok = n > 0 && q_bad == 0 && s_bad == 0 && clobbered == 0 && unwritten == 0;
  return ctx.check(name, ok, 0, max_dq,
                   fmt("%ld values: %ld wrong (max |dq| %d), %ld wrong scales, %ld unwritten, %ld poison clobbered", n, q_bad, max_dq, s_bad,
                       unwritten, clobbered));
}

// One group of G staged values, of a kind that exercises a corner of the rule.
void fill_group(Rng& rng, half* x, int G) {
  const int kind = rng.below(10);
  if (kind <= 3) {  // plain random, amplitudes from "scale is an fp16 subnormal" to large
    static const float amps[] = {2e-4f, 3e-3f, 0.5f, 4.f, 300.f, 3e4f};
    const float a = amps[rng.below(6)];
    for (int i = 0; i < G; ++i) x[i] = f2h(rng.sym(a));
  } else if (kind == 4) {  // all zero (+0 / -0): d = 0, id = 0, q = 0
    for (int i = 0; i < G; ++i) x[i] = f2h(rng.below(2) ? 0.f : -0.f);
  } else if (kind == 5) {  // ties: amax = 127/16 -> d = 1/16 exactly, x = (k + 1/2) / 16 -> x * id = k + 1/2
    for (int i = 0; i < G; ++i) x[i] = f2h((rng.below(2) ? 1.f : -1.f) * (rng.below(127) + 0.5f) / 16.f);
    x[rng.below(G)] = f2h((rng.below(2) ? 1.f : -1.f) * 127.f / 16.f);
  } else if (kind == 6) {  // a single non-zero value: +-127
    for (int i = 0; i < G; ++i) x[i] = f2h(0.f);
    x[rng.below(G)] = f2h(rng.sym(10.f));
  } else if (kind == 7) {  // fp16 subnormal inputs: d underflows to a tiny / zero fp16 scale, q still full range
    for (int i = 0; i < G; ++i) x[i] = f2h(rng.sym(3e-6f));
  } else {  // the amax repeated with both signs, plus random values
    const float a = 1.f + rng.uniform();
    for (int i = 0; i < G; ++i) x[i] = f2h(rng.below(4) == 0 ? (rng.below(2) ? a : -a) : rng.sym(a));
  }
}

void check_quantize(Context& ctx, int D, int n_kv, int T) {
  Rng rng(ctx.next_seed());
  const int G = qgroup(D), ng = D / G, kv_dim = n_kv * D, ld = 2 * kv_dim + 8;
  const int n_blocks = 3 * ((T + kKvBlock - 1) / kKvBlock) + 3;
  // T distinct slots scattered over the pool: blocks neither contiguous nor in order, slots not in order.
  std::vector<int32_t> all(n_blocks * kKvBlock);
  std::iota(all.begin(), all.end(), 0);
  for (int i = (int)all.size() - 1; i > 0; --i) std::swap(all[i], all[rng.below(i + 1)]);
  std::vector<int32_t> slots(all.begin(), all.begin() + T);
  std::vector<half> stage((size_t)T * ld);
  for (int t = 0; t < T; ++t) {
    for (int g = 0; g < 2 * kv_dim / G; ++g) fill_group(rng, &stage[(size_t)t * ld + g * G], G);
    for (int c = 2 * kv_dim; c < ld; ++c) stage[(size_t)t * ld + c] = poison_h();  // pad: never read
  }
  const size_t rows = (size_t)n_blocks * n_kv * kKvBlock;
  DevBuf<half> dstage(stage.size());
  DevBuf<int32_t> dslots(T);
  CacheBufs cb;
  cb.alloc(true, rows * D, rows * ng);
  dstage.upload(stage);
  dslots.upload(slots);
  cb.poison_q8();
  CK(cudaDeviceSynchronize());
  k::kv_quantize(dstage.p, ld, dslots.p, T, n_kv, D, G, cb.kq.p, cb.ks.p, cb.vq.p, cb.vs.p, ctx.stream);
  CK(cudaGetLastError());
  CK(cudaStreamSynchronize(ctx.stream));
  const Q8Image want = quantize_host(stage, ld, slots, n_blocks, n_kv, D);
  compare_q8(ctx, fmt("kv_quantize D%d group %d kv heads %d T%d (%d blocks)", D, G, n_kv, T, n_blocks), want, cb.kq.download(), cb.vq.download(),
             cb.ks.download(), cb.vs.download());
}

// ---------------------------------------------------------------------------------------------------
// Decode / prefill over a random cache
// ---------------------------------------------------------------------------------------------------
struct DecodeCase {
  const char* name;
  int D, H, n_kv;
  std::vector<int> contexts;  // one count-1 segment per context length (position = context - 1)
  int max_ctx;                // >= every context
  bool null_list = false;     // decode_tokens = nullptr (tokens 0 .. n - 1)
};

// Segments: one per context (count 1), plus (unless null_list) a 5-token segment at positions 40..44 in the
// middle whose token 3 alone is listed (attends to 0..43). Listed tokens go in shuffled order; the rest of the
// rows (unlisted tokens, the gap, trailing rows) must stay untouched.
void decode_case(Context& ctx, const DecodeCase& dc, bool q8) {
  std::vector<Seg> segs;
  const int mid = (int)dc.contexts.size() / 2;
  for (int i = 0; i < (int)dc.contexts.size(); ++i) {
    if (i == mid && !dc.null_list) segs.push_back({5, 40});
    segs.push_back({1, dc.contexts[i] - 1});
  }
  Setup S;
  build(S, {dc.D, dc.H, dc.n_kv, segs, q8}, ctx.next_seed(), Fill::Host);
  std::vector<int> list;
  if (dc.null_list) {
    // tokens 0 .. n - 1: every segment before the gap (the last segment is not processed)
    const int n = S.L.nseg() > 1 ? S.L.start[S.L.nseg() - 1] - 3 : S.L.count[0];
    for (int t = 0; t < n; ++t) list.push_back(t);
  } else {
    Rng rng(ctx.next_seed());
    for (int s = 0; s < S.L.nseg(); ++s) list.push_back(S.L.count[s] == 1 ? S.L.start[s] : S.L.start[s] + 3);
    for (int i = (int)list.size() - 1; i > 0; --i) std::swap(list[i], list[rng.below(i + 1)]);
  }
  std::string name = fmt("decode %s %s D%d h%d/%d max_ctx %d%s ctx", q8 ? "q8 " : "f16", dc.name, dc.D, dc.H, dc.n_kv, dc.max_ctx,
                         dc.null_list ? " (no list)" : "");
  for (size_t i = 0; i < dc.contexts.size() && i < 6; ++i) name += fmt(" %d", dc.contexts[i]);
  if (dc.contexts.size() > 6) name += fmt(" ... (%zu)", dc.contexts.size());
  std::vector<char> written(S.L.n_tokens, 0);
  for (int t : list) written[t] = 1;
  // Every kernel variant: the split kernel with the rows of earlier steps loaded before the PDL wait
  // (kEarly) or all after it, and the streaming kernel (256-position splits; groups <= 4 only).
  const int group = dc.H / dc.n_kv;
  for (int v = 0; v < 3; ++v) {
    if (v == 2 && group > 4) continue;
    k::attention_detail::force_early(v == 1);
    k::attention_detail::force_stream(v == 2);
    std::vector<half> out = run_decode(ctx, S, list, dc.null_list, dc.max_ctx);
    const int split = v == 2 ? 256 : 128;
    compare(ctx, S, out, written, list, cache_rows(S), 1e-2, name + (v == 1 ? " [early loads]" : v == 2 ? " [stream]" : ""),
            fmt("%d splits", (dc.max_ctx + split - 1) / split));
  }
  k::attention_detail::force_early(-1);
  k::attention_detail::force_stream(-1);
}

// Launches of different sizes on one workspace, as the backend makes them (a layer's decode tokens in chunks,
// steps of changing batch): all pass the same counter_tokens, so a small launch's split partials never land on
// the merge counters of a larger launch that follows (sized per launch, the 2-token launch's partials sit on
// the 6-token launch's counters, which then never reach their count: unmerged rows, found on the emulator
// with a 129-token prompt of stories260K). Each launch checks its own rows; the counters end at zero.
void shared_workspace(Context& ctx, bool q8) {
  const std::vector<Seg> segs = {{1, 299}, {1, 140}, {1, 200}, {1, 129}, {1, 350}, {1, 260}};
  Setup S;
  build(S, {64, 8, 4, segs, q8}, ctx.next_seed(), Fill::Host);
  const int n = S.L.nseg(), max_ctx = 400;
  DevBuf<float> ws(k::attention_decode_workspace(n, S.H, S.D, max_ctx) / sizeof(float) + 1);
  CK(cudaMemset(ws.p, 0, ws.bytes()));
  CK(cudaDeviceSynchronize());
  DevBuf<int32_t> dl(n);
  for (int size : {2, n, 1, n - 1, n}) {
    std::vector<int> list;
    for (int i = 0; i < size; ++i) list.push_back(S.L.start[(i * 5 + size) % n]);  // a different choice per launch
    dl.upload(std::vector<int32_t>(list.begin(), list.end()));
    S.out.poison();
    AttentionParams p = S.p;
    p.decode_tokens = dl.p;
    k::attention_decode(p, size, max_ctx, ws.p, ctx.stream, n);
    CK(cudaGetLastError());
    CK(cudaStreamSynchronize(ctx.stream));
    std::vector<char> written(S.L.n_tokens, 0);
    for (int t : list) written[t] = 1;
    compare(ctx, S, S.out.download(), written, list, cache_rows(S), 1e-2, fmt("decode %s shared workspace, launch of %d then more", q8 ? "q8 " : "f16", size),
            "4 splits");
  }
  std::vector<int32_t> cnt(k::attention_decode_counter_bytes(n, S.H) / 4);
  CK(cudaMemcpy(cnt.data(), ws.p, cnt.size() * 4, cudaMemcpyDeviceToHost));
  int left = 0;
  for (int32_t c : cnt) left += c != 0;
  ctx.check(fmt("decode %s shared workspace: merge counters back at zero", q8 ? "q8 " : "f16"), left == 0, left, 0, fmt("%d nonzero", left));
}

struct PrefillCase {
  const char* name;
  int D, H, n_kv;
  std::vector<Seg> segs;
  float q_amp = 2.f;
  int token_stride = 1;  // reference on every token_stride-th token of a segment (plus its last); 1 = all
};

// Rows of segments with count > 1 must be written, everything else untouched (count-1 segments are
// attention_decode's). Reference on the sampled tokens of those segments.
void prefill_compare(Context& ctx, const Setup& S, const std::vector<half>& out, int token_stride, const RowSrc& src, double tol,
                     const std::string& name, double tol_max = -1) {
  std::vector<char> written(S.L.n_tokens, 0);
  std::vector<int> tokens;
  for (int s = 0; s < S.L.nseg(); ++s)
    if (S.L.count[s] > 1)
      for (int j = 0; j < S.L.count[s]; ++j) {
        written[S.L.start[s] + j] = 1;
        if (j % token_stride == 0 || j == S.L.count[s] - 1 || j % 64 == 63) tokens.push_back(S.L.start[s] + j);
      }
  compare(ctx, S, out, written, tokens, src, tol, name, fmt("%zu tokens ref", tokens.size()), tol_max);
}

void prefill_case(Context& ctx, const PrefillCase& pc) {
  Setup S;
  build(S, {pc.D, pc.H, pc.n_kv, pc.segs, true, pc.q_amp}, ctx.next_seed(), Fill::Host);
  const std::string name = fmt("prefill q8 %s D%d h%d/%d segs%s", pc.name, pc.D, pc.H, pc.n_kv, segs_str(pc.segs).c_str());
  std::vector<half> out;
  if (!run_prefill(ctx, S, out)) {
    ctx.check(name, false, 0, 0, "attention_prefill returned false for the int8 cache, group 32");
    return;
  }
  prefill_compare(ctx, S, out, pc.token_stride, cache_rows(S), 1e-2, name);
}

// An int8 cache written with a grouping the kernels were not built for: decode launches nothing, prefill
// returns false; the output keeps its poison either way.
void group_mismatch(Context& ctx) {
  Setup S;
  build(S, {64, 4, 2, {{20, 0}, {1, 30}}, true}, ctx.next_seed(), Fill::Host);
  S.p.kv_group = 16;
  std::vector<half> out;
  const bool r = run_prefill(ctx, S, out);
  long touched = 0;
  for (auto& h : out) touched += hbits(h) != kPoisonH;
  ctx.check("prefill q8 kv_group 16 (D64) -> false, nothing written", !r && touched == 0, 0, 0, fmt("returned %d, %ld written", r, touched));
  out = run_decode(ctx, S, {S.L.start[1], S.L.start[0] + 19}, false, 128);
  touched = 0;
  for (auto& h : out) touched += hbits(h) != kPoisonH;
  ctx.check("decode q8 kv_group 16 (D64) -> nothing written", touched == 0, 0, 0, fmt("%ld written", touched));
}

// ---------------------------------------------------------------------------------------------------
// End to end: fp16 rows -> kv_quantize -> attention
// ---------------------------------------------------------------------------------------------------
// Every cached position of every sequence gets a random fp16 K/V row, quantized by kv_quantize in launches of
// 1, 7, 40 and 256 rows (decode steps, prefill chunks) into the poisoned cache. Checks: the cache equals the
// host quantization exactly (unused slots untouched); prefill (D 64 / 128) and decode (the count-1 segments and
// the last token of every other one) against the dequantized cache (strict) and against the fp16 rows
// (rel L2 <= 3e-2, normalized max <= 0.2: the int8 rounding error, |dx| <= d / 2 = amax / 254, ~0.5% rel L2
// here, adds to the kernel's own; see compare()).
void end_to_end(Context& ctx, int D, int H, int n_kv, const std::vector<Seg>& segs) {
  Setup S;
  build(S, {D, H, n_kv, segs, true}, ctx.next_seed(), Fill::Poison);
  Rng rng(ctx.next_seed());
  const int G = qgroup(D), kv_dim = n_kv * D, ld = 2 * kv_dim + 16;
  const int nseg = S.L.nseg();
  std::vector<int> base(nseg);
  int R = 0;
  for (int s = 0; s < nseg; ++s) base[s] = R, R += S.L.len(s);
  std::vector<half> rows((size_t)R * ld);
  std::vector<int32_t> slots(R);
  for (int s = 0; s < nseg; ++s)
    for (int pos = 0; pos < S.L.len(s); ++pos) {
      const int r = base[s] + pos;
      slots[r] = S.L.block(s, pos) * kKvBlock + pos % kKvBlock;
      for (int c = 0; c < ld; ++c) rows[(size_t)r * ld + c] = c < kv_dim ? f2h(rng.sym(2.f)) : c < 2 * kv_dim ? f2h(rng.sym(1.f)) : poison_h();
    }
  DevBuf<half> drows(rows.size());
  DevBuf<int32_t> dslots(R);
  drows.upload(rows);
  dslots.upload(slots);
  CK(cudaDeviceSynchronize());
  static const int chunks[] = {1, 7, 40, 256};
  for (int off = 0, i = 0; off < R; ++i) {
    const int n = std::min(chunks[i % 4], R - off);
    k::kv_quantize(drows.p + (size_t)off * ld, ld, dslots.p + off, n, n_kv, D, G, S.cache.kq.p, S.cache.ks.p, S.cache.vq.p, S.cache.vs.p,
                   ctx.stream);
    off += n;
  }
  CK(cudaGetLastError());
  CK(cudaStreamSynchronize(ctx.stream));
  S.download_cache();
  const std::string tag = fmt("e2e D%d h%d/%d", D, H, n_kv);
  compare_q8(ctx, fmt("%s kv_quantize %d rows in chunks", tag.c_str(), R), quantize_host(rows, ld, slots, S.L.n_blocks, n_kv, D), S.hc.kq, S.hc.vq,
             S.hc.ks, S.hc.vs);
  const RowSrc fp16_rows = [&](int s, int kh, int pos, bool is_v, double* dst) {
    const half* x = &rows[(size_t)(base[s] + pos) * ld + (is_v ? kv_dim : 0) + kh * D];
    for (int d = 0; d < D; ++d) dst[d] = h2f(x[d]);
  };
  if (D == 64 || D == 128) {
    std::vector<half> out;
    const std::string name = fmt("%s prefill segs%s", tag.c_str(), segs_str(segs).c_str());
    if (!run_prefill(ctx, S, out)) {
      ctx.check(name, false, 0, 0, "attention_prefill returned false");
    } else {
      prefill_compare(ctx, S, out, 1, cache_rows(S), 1e-2, name + " vs int8 cache");
      prefill_compare(ctx, S, out, 1, fp16_rows, 3e-2, name + " vs fp16 rows", 0.2);
    }
  }
  std::vector<int> list;
  int longest = 0;
  for (int s = 0; s < nseg; ++s) list.push_back(S.L.start[s] + S.L.count[s] - 1), longest = std::max(longest, S.L.len(s));
  const int max_ctx = longest + 200;
  std::vector<half> out = run_decode(ctx, S, list, false, max_ctx);
  std::vector<char> written(S.L.n_tokens, 0);
  for (int t : list) written[t] = 1;
  const std::string name = fmt("%s decode max_ctx %d", tag.c_str(), max_ctx);
  compare(ctx, S, out, written, list, cache_rows(S), 1e-2, name + " vs int8 cache", "last token of every segment");
  compare(ctx, S, out, written, list, fp16_rows, 3e-2, name + " vs fp16 rows", "last token of every segment", 0.2);
}

// ---------------------------------------------------------------------------------------------------
// Host-only checks (no GPU): the reference rule and the reference attention.
// ---------------------------------------------------------------------------------------------------
void host_checks(Context& ctx) {
  // q8_quantize_group is the rule the kernels are held to: ties away from zero, amax -> +-127, zeros -> 0.
  int bad = 0;
  {
    float x[8] = {127.f / 16, 0.5f / 16, -0.5f / 16, 1.5f / 16, -2.5f / 16, 0.f, -127.f / 16, 126.5f / 16};
    const int8_t want[8] = {127, 1, -1, 2, -3, 0, -127, 127};
    int8_t q[8];
    const uint16_t s = l2::q8_quantize_group(x, 8, q);
    for (int i = 0; i < 8; ++i) bad += q[i] != want[i];
    bad += s != 0x2C00;  // fp16 1/16
    float z[8] = {0.f, -0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    bad += l2::q8_quantize_group(z, 8, q) != 0;
    for (int i = 0; i < 8; ++i) bad += q[i] != 0;
  }
  ctx.check("host: q8 rule (ties away from zero, amax -> 127, zeros)", bad == 0, 0, 0, fmt("%d errors", bad));
  // Reference attention: equal K rows -> uniform weights -> the mean of the V rows.
  {
    Setup S;
    S.D = 8, S.H = 2, S.n_kv = 1, S.ldq = 16;
    S.L.start = {0}, S.L.count = {1}, S.L.pos0 = {9};
    S.hq.assign(16, f2h(0.5f));
    const RowSrc src = [](int, int, int pos, bool is_v, double* dst) {
      for (int d = 0; d < 8; ++d) dst[d] = is_v ? pos * 8 + d : 1.0;
    };
    double o[8], err = 0;
    ref_head(S, src, 0, 0, 1, o);
    for (int d = 0; d < 8; ++d) err = std::max(err, std::fabs(o[d] - (4.5 * 8 + d)));
    ctx.check("host: reference attention (uniform weights -> mean V)", err < 1e-9, 0, err, "");
  }
}

// ---------------------------------------------------------------------------------------------------
void correctness(Context& ctx) {
  const bool quick = ctx.opt.quick;
  // kv_quantize: head_dim 8 (group 8), 16 (group 16), 64, 128, 256 (group 32); GQA kv head counts.
  {
    struct QS {
      int D, n_kv;
    };
    const std::vector<QS> shapes = quick ? std::vector<QS>{{8, 4}, {64, 8}, {128, 8}}
                                         : std::vector<QS>{{8, 4}, {8, 1}, {16, 2}, {64, 8}, {64, 4}, {128, 32}, {128, 8}, {256, 2}};
    for (const QS& q : shapes)
      for (int T : {1, 7, 40}) check_quantize(ctx, q.D, q.n_kv, T);
  }
  group_mismatch(ctx);
  // Decode: fp16 control and int8, same shapes.
  std::vector<DecodeCase> dec;
  std::vector<int> many;  // 70 sequences of 1..199 positions
  for (int i = 0; i < 70; ++i) many.push_back(1 + (i * 37) % 199);
  if (quick) {
    dec = {{"tiny", 8, 8, 4, {1, 17, 129, 300}, 400},
           {"gqa", 64, 8, 4, {1, 17, 129, 300}, 400},
           {"gqa", 128, 4, 2, {1, 17, 129, 300}, 400},
           {"1 split", 128, 4, 4, {1, 17, 100, 128}, 128},
           {"70 seqs", 64, 4, 2, many, 200}};  // more segments than a warp's lanes (the segment search)
  } else {
    const std::vector<int> ctxs = {1, 17, 128, 129, 1000, 4096};
    dec = {{"7b", 128, 32, 32, ctxs, 4096 + 200},
           {"7b 1 split", 128, 32, 32, {1, 17, 100, 128}, 128},
           {"gqa", 128, 32, 8, ctxs, 4096 + 200},
           {"gqa", 64, 8, 4, ctxs, 4096},
           {"hd64", 64, 32, 32, {1, 17, 128, 129, 1000}, 1100, true},
           {"70b-like", 128, 64, 8, {1, 129, 1000}, 1024},
           {"tiny", 8, 8, 4, {1, 17, 128, 129, 1000}, 1100},
           {"tiny", 8, 4, 4, {1, 17, 200}, 256, true},
           {"hd16", 16, 4, 2, {1, 17, 129, 700}, 800},
           {"hd32", 32, 8, 8, {1, 17, 129, 700}, 800},
           {"hd256", 256, 8, 2, {1, 17, 129, 700}, 800},
           {"70 seqs", 128, 32, 32, many, 200}};
  }
  for (const DecodeCase& dc : dec)
    for (bool q8 : {false, true}) decode_case(ctx, dc, q8);
  for (bool q8 : {false, true}) shared_workspace(ctx, q8);
  // Prefill on the int8 cache (head_dim 64 / 128, group 32).
  const std::vector<Seg> mixed = {{300, 200}, {1, 50}, {17, 0}, {64, 0}, {65, 63}, {2, 1000}, {1, 0}, {130, 31}};
  const std::vector<Seg> small = {{2, 0}, {3, 0}, {2, 15}, {4, 16}, {31, 33}, {33, 0}, {1, 7}, {16, 16}};
  if (quick) {
    for (int D : {64, 128}) {
      prefill_case(ctx, {"quick", D, 4, 2, {{70, 30}, {1, 5}, {17, 0}, {2, 77}}});
      prefill_case(ctx, {"quick", D, 2, 2, {{65, 0}, {1, 40}}});
    }
  } else {
    for (int D : {64, 128}) {
      prefill_case(ctx, {"mixed", D, 32, 32, mixed});
      prefill_case(ctx, {"mixed gqa", D, 32, 8, mixed});
      prefill_case(ctx, {"small counts", D, 8, 4, small});
    }
    prefill_case(ctx, {"peaky", 128, 8, 2, {{130, 7}, {1, 3}, {33, 100}}, 8.f});
    prefill_case(ctx, {"peaky", 64, 8, 1, {{200, 0}, {1, 3}, {5, 16}}, 8.f});
    prefill_case(ctx, {"7b chunk", 128, 32, 32, {{512, 1536}}, 2.f, 7});
  }
  // End to end.
  if (quick) {
    end_to_end(ctx, 64, 4, 2, {{40, 0}, {1, 99}, {17, 20}});
  } else {
    end_to_end(ctx, 128, 32, 8, {{150, 0}, {1, 999}, {40, 100}, {1, 0}, {1, 63}});
    end_to_end(ctx, 64, 8, 8, {{70, 30}, {1, 300}, {2, 0}});
    end_to_end(ctx, 8, 4, 2, {{1, 200}, {1, 16}, {3, 0}});  // tiny model: decode only (prefill needs 64 / 128)
  }
}

// ---------------------------------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------------------------------
// Decode attention, 7B shape, B sequences of context `len` (max_ctx = len, as the backend's power-of-two
// span). The cache of one call is `kv` bytes; calls rotate over enough copies that together they are >= 3x
// L2, so every call streams its cache from memory (a decode step reads each layer's cache once).
void bench_decode(Context& ctx, int B, int len, bool q8, bool stream) {
  k::attention_detail::force_stream(stream);
  const int D = 128, H = 32, n_kv = 32;
  Setup S;
  build(S, {D, H, n_kv, std::vector<Seg>(B, Seg{1, len - 1}), q8}, ctx.next_seed(), Fill::Device);
  const double per_value = q8 ? 1.0 + 2.0 / qgroup(D) : 2.0;
  const double kv = 2.0 * B * len * n_kv * D * per_value;
  const int copies = std::max(1, std::min(16, (int)std::ceil(3.0 * (double)ctx.l2_bytes / kv)));
  std::vector<std::unique_ptr<CacheBufs>> extra;
  for (int i = 1; i < copies; ++i) {
    extra.emplace_back(new CacheBufs);
    extra.back()->alloc(q8, S.pool_values(), S.pool_scales());
    extra.back()->fill_device(q8, ctx.next_seed());
  }
  std::vector<int32_t> list(S.L.start.begin(), S.L.start.end());
  DevBuf<int32_t> dl(list.size());
  dl.upload(list);
  DevBuf<float> ws(k::attention_decode_workspace(B, H, D, len) / sizeof(float) + 1);
  CK(cudaDeviceSynchronize());
  const double ms = time_ms(ctx.stream, ctx.opt.reps, [&](int i) {
    AttentionParams p = S.p;
    (i % copies == 0 ? S.cache : *extra[i % copies - 1]).set(p, q8, S.group);
    p.decode_tokens = dl.p;
    k::attention_decode(p, B, len, ws.p, ctx.stream);
  });
  const double flops = 4.0 * D * len * H * B;
  ctx.bench(fmt("decode %-3s 7b b%-2d ctx %d%s", q8 ? "q8" : "f16", B, len, stream ? " [stream]" : ""), ms, flops, kv, fmt("%d cache copies", copies));
  ctx.metrics[fmt("kv_int8.decode.%s.b%d.ctx%d%s", q8 ? "q8" : "f16", B, len, stream ? ".stream" : "")] = ms;
  k::attention_detail::force_stream(-1);
}

void bench_prefill(Context& ctx, bool q8) {
  const int D = 128, H = 32, n_kv = 32, count = 512, pos0 = 1536;
  Setup S;
  build(S, {D, H, n_kv, {{count, pos0}}, q8}, ctx.next_seed(), Fill::Device);
  double flops = 0;
  for (int j = 0; j < count; ++j) flops += 4.0 * D * (pos0 + j + 1) * H;
  const double bytes = 2.0 * (pos0 + count) * n_kv * D * (q8 ? 1.0 + 2.0 / 32 : 2.0) + 2.0 * count * H * D * 2;
  const double ms = time_ms(ctx.stream, ctx.opt.reps, [&](int) { k::attention_prefill(S.p, count, ctx.stream); });
  ctx.bench(fmt("prefill %-3s 7b: 512 tok after 1536 cached", q8 ? "q8" : "f16"), ms, flops, bytes, "causal FLOPs");
}

void benchmarks(Context& ctx) {
  // Long contexts at small batches, and the serving shape at 32 / 64 sequences (256 positions: where the
  // bench's 128-token prompts + 128 generated end); the split kernel and the streaming one.
  struct Shape {
    int B, len;
  };
  const Shape shapes[] = {{1, 4096}, {16, 4096}, {32, 256}, {64, 256}};
  for (const Shape& s : shapes)
    for (bool q8 : {false, true})
      for (bool stream : {false, true}) bench_decode(ctx, s.B, s.len, q8, stream);
  for (bool q8 : {false, true}) bench_prefill(ctx, q8);
  ctx.finalizers.push_back([shapes](Context& c) {
    auto ms = [&](const std::string& key) {
      auto it = c.metrics.find(key);
      return it == c.metrics.end() ? -1.0 : it->second;
    };
    std::string kv = "decode attention 7B, int8 / fp16 cache time:", st = "decode attention 7B, stream / split kernel time:";
    for (const Shape& s : shapes) {
      const std::string f = fmt("kv_int8.decode.f16.b%d.ctx%d", s.B, s.len), q = fmt("kv_int8.decode.q8.b%d.ctx%d", s.B, s.len);
      if (ms(f) > 0 && ms(q) > 0) kv += fmt("  b%d/%d %.2f (%.1f vs %.1f us)", s.B, s.len, ms(q) / ms(f), ms(q) * 1e3, ms(f) * 1e3);
      if (ms(f) > 0 && ms(f + ".stream") > 0)
        st += fmt("  f16 b%d/%d %.2f (%.1f vs %.1f us)", s.B, s.len, ms(f + ".stream") / ms(f), ms(f + ".stream") * 1e3, ms(f) * 1e3);
      if (ms(q) > 0 && ms(q + ".stream") > 0)
        st += fmt("  q8 b%d/%d %.2f", s.B, s.len, ms(q + ".stream") / ms(q));
    }
    c.summary.push_back(kv);
    c.summary.push_back(st);
  });
}

}  // namespace

void test_kv_int8(l2test::Context& ctx) {
  if (!ctx.opt.no_check) {
    host_checks(ctx);
    if (ctx.opt.host_only) return;
    correctness(ctx);
  }
  if (ctx.opt.host_only) return;
  if (ctx.opt.bench) benchmarks(ctx);
}
