// Tests and benchmarks of gemm_f16 / gemm_w8 (kernels/gemm.cu).
//  1. Host emulation of the ldmatrix / mma fragment index math and the swizzle (no GPU needed).
//  2. Correctness against a CPU fp64 reference, all 5 epilogues, tiny ragged shapes, every tile
//     configuration forced, and the Llama-2-7B shapes at several M (rows sampled for the big ones; every
//     output still checked for being written / not NaN, and every pad row / column / cache slot for its poison).
//  3. --bench: TFLOP/s and GB/s of the 7B shapes (rotating weight copies, larger than L2); --tune: every
//     configuration per shape; the 7B prefill estimate (with attention_prefill's timing when it ran).
#include <numeric>

#include "../epilogue.cuh"
#include "../kernels.h"
#include "../mma.cuh"
#include "harness.cuh"

namespace l2::kernels::gemm_detail {  // test hooks defined in gemm.cu
int num_configs(bool w8);
const char* config_name(bool w8, int i);
int config_smem(bool w8, int i);
bool config_fits(bool w8, int i);
int pick_config(bool w8, int M, int N);
const char* tuning_name();
void run_config(bool w8, int cfg, const half* A, int lda, const void* W, const half* scales, int ldw, int M, int N,
                int n_valid, int K, const Epilogue& epi, cudaStream_t stream, const GemmSplitK* sk);
void set_splits(int n);  // split-K: 0 = the library's choice, 1 = never, n = forced where allowed
bool config_splits(bool w8, int i);  // the configuration has split-K built in (the small tiles)
void set_wgmma_min_m(int m);         // LLAMA2_GEMM_WGMMA_MIN_M's setting (0 = off)
int chosen_splits(bool w8, int i, int M, int N, int K);  // the split count run() would use
}  // namespace l2::kernels::gemm_detail

namespace {

using namespace l2test;
using l2::kernels::Epi;
using l2::kernels::Epilogue;
namespace gd = l2::kernels::gemm_detail;
namespace mm = l2::kernels::mma;

// =====================================================================================================
// 1. Host emulation of fragments
// =====================================================================================================
// ldmatrix.x4 emulation: lane 8j + r gives the element offset of row r of matrix j; returns per lane the
// 4 registers as (lo, hi) element pairs.
struct Frag {
  uint32_t v[32][4][2];
};
Frag emu_ldsm_x4(const std::vector<uint32_t>& smem, const int (&addr)[32], bool trans) {
  Frag f;
  for (int lane = 0; lane < 32; ++lane) {
    int g = lane >> 2, q = lane & 3;
    for (int j = 0; j < 4; ++j) {
      if (!trans) {  // element (g, 2q), (g, 2q+1) of matrix j: row g's address is lane 8j + g
        f.v[lane][j][0] = smem[addr[8 * j + g] + 2 * q];
        f.v[lane][j][1] = smem[addr[8 * j + g] + 2 * q + 1];
      } else {  // element (2q, g), (2q+1, g)
        f.v[lane][j][0] = smem[addr[8 * j + 2 * q] + g];
        f.v[lane][j][1] = smem[addr[8 * j + 2 * q + 1] + g];
      }
    }
  }
  return f;
}
inline uint32_t id_of(int r, int c) { return (uint32_t)(r * 4096 + c); }

// Checks that 8 consecutive lanes' 16-byte accesses hit 8 distinct bank groups (4 phases per warp).
template <int C>
bool phases_conflict_free(const int (&addr)[32]) {
  for (int ph = 0; ph < 4; ++ph) {
    int seen = 0;
    for (int l = 8 * ph; l < 8 * ph + 8; ++l) seen |= 1 << ((addr[l] * 2 / 16) % 8);
    if (seen != 0xFF) return false;
  }
  return true;
}

// Emulates the A / B / B-trans fragment loads of a [rows][C * 8] swizzled tile and checks them against the
// mma.m16n8k16 fragment layout (see mma.cuh), plus bank-conflict freedom. Returns the number of errors.
template <int C>
int emulate_tile_fragments(int rows) {
  const int cols = C * 8;
  std::vector<uint32_t> smem((size_t)rows * cols);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) smem[mm::swz<C>(r, c / 8) + c % 8] = id_of(r, c);
  int errors = 0;
  // Swizzle is a bijection within each row.
  for (int r = 0; r < rows; ++r) {
    std::vector<int> hit(C, 0);
    for (int ch = 0; ch < C; ++ch) {
      int off = mm::swz<C>(r, ch) - r * cols;
      if (off % 8 || off < 0 || off >= cols) ++errors;
      else ++hit[off / 8];
    }
    for (int ch = 0; ch < C; ++ch) errors += hit[ch] != 1;
  }
  for (int rb = 0; rb + 16 <= rows; rb += 16) {
    for (int ks = 0; ks < C / 2; ++ks) {
      int addr[32];
      // A operand (rows = m, k contiguous).
      for (int l = 0; l < 32; ++l) addr[l] = mm::swz<C>(rb + mm::ldsm_a_row(l), 2 * ks + mm::ldsm_a_chunk(l));
      errors += !phases_conflict_free<C>(addr);
      Frag a = emu_ldsm_x4(smem, addr, false);
      for (int l = 0; l < 32; ++l) {
        int g = l >> 2, q = l & 3, k0 = 16 * ks;
        const int er[4] = {g, g + 8, g, g + 8}, ec[4] = {2 * q, 2 * q, 2 * q + 8, 2 * q + 8};
        for (int j = 0; j < 4; ++j)
          for (int e = 0; e < 2; ++e) errors += a.v[l][j][e] != id_of(rb + er[j], k0 + ec[j] + e);
      }
      // B operand stored [n][k] (rows = n): x4 covers n tiles rb..rb+7 and rb+8..rb+15.
      for (int l = 0; l < 32; ++l) addr[l] = mm::swz<C>(rb + mm::ldsm_b_row(l), 2 * ks + mm::ldsm_b_chunk(l));
      errors += !phases_conflict_free<C>(addr);
      Frag b = emu_ldsm_x4(smem, addr, false);
      for (int l = 0; l < 32; ++l) {
        int g = l >> 2, q = l & 3, k0 = 16 * ks;
        for (int nt = 0; nt < 2; ++nt)
          for (int r = 0; r < 2; ++r)  // b_r = B[k = 2q + 8r (+1)][n = g]
            for (int e = 0; e < 2; ++e)
              errors += b.v[l][2 * nt + r][e] != id_of(rb + 8 * nt + g, k0 + 2 * q + 8 * r + e);
      }
    }
  }
  // B operand stored [k][n] (rows = k, like V[pos][d]) with .trans: 16 k rows x 16 n columns per x4.
  for (int kb = 0; kb + 16 <= rows; kb += 16) {
    for (int dj = 0; dj < C / 2; ++dj) {
      int addr[32];
      for (int l = 0; l < 32; ++l) addr[l] = mm::swz<C>(kb + mm::ldsm_bt_row(l), 2 * dj + mm::ldsm_bt_chunk(l));
      errors += !phases_conflict_free<C>(addr);
      Frag b = emu_ldsm_x4(smem, addr, true);
      for (int l = 0; l < 32; ++l) {
        int g = l >> 2, q = l & 3;
        for (int nt = 0; nt < 2; ++nt)
          for (int r = 0; r < 2; ++r)  // b_r = B[k = 2q + 8r (+1)][n = g] = V[kb + ...][16 dj + 8 nt + g]
            for (int e = 0; e < 2; ++e)
              errors += b.v[l][2 * nt + r][e] != id_of(kb + 2 * q + 8 * r + e, 16 * dj + 8 * nt + g);
      }
    }
  }
  // cp.async store pattern (thread i -> row i / C, chunk i % C): conflict-free per 8 threads.
  for (int base = 0; base + 32 <= rows * C; base += 32) {
    int addr[32];
    for (int l = 0; l < 32; ++l) addr[l] = mm::swz<C>((base + l) / C, (base + l) % C);
    errors += !phases_conflict_free<C>(addr);
  }
  return errors;
}

// The attention P-reuse: S accumulator tiles (2kk, 2kk+1) must sit where the A fragment of k16 step kk wants
// them: checked by positions. Also the mma C layout used by the epilogue.
int emulate_p_reuse() {
  int errors = 0;
  for (int l = 0; l < 32; ++l) {
    int g = l >> 2, q = l & 3;
    for (int kk = 0; kk < 4; ++kk) {
      // C fragment of n8 tile t: c0,c1 = (g, 8t + 2q + e), c2,c3 = (g + 8, 8t + 2q + e).
      auto cpos = [&](int t, int e) { return std::make_pair(g + ((e >> 1) << 3), 8 * t + 2 * q + (e & 1)); };
      // A fragment of k16 step kk: a0 = (g, 16kk + 2q + e), a1 = (g+8, ..), a2 = (g, 16kk + 8 + 2q + e), a3 = (g+8, ..)
      auto apos = [&](int j, int e) {
        return std::make_pair(g + ((j & 1) << 3), 16 * kk + ((j >> 1) << 3) + 2 * q + e);
      };
      // kernel: a[0] = sc[2kk][0,1], a[1] = sc[2kk][2,3], a[2] = sc[2kk+1][0,1], a[3] = sc[2kk+1][2,3]
      const int src_t[4] = {2 * kk, 2 * kk, 2 * kk + 1, 2 * kk + 1}, src_e[4] = {0, 2, 0, 2};
      for (int j = 0; j < 4; ++j)
        for (int e = 0; e < 2; ++e) errors += cpos(src_t[j], src_e[j] + e) != apos(j, e);
    }
  }
  return errors;
}

// Host model of the device int8 -> half trick (gemm.cu i8x4_to_half2x2): __byte_perm per the CUDA docs.
uint32_t host_byte_perm(uint32_t x, uint32_t y, uint32_t s) {
  uint64_t v = ((uint64_t)y << 32) | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    uint32_t sel = (s >> (4 * i)) & 7;
    r |= (uint32_t)((v >> (8 * sel)) & 0xFF) << (8 * i);
  }
  return r;
}
int emulate_i8_convert() {
  int errors = 0;
  for (int x = -128; x < 128; ++x) {
    uint32_t w = (uint32_t)(uint8_t)x * 0x01010101u;
    w = (w & 0x00FF00FFu) | ((uint32_t)(uint8_t)(x == 127 ? -128 : x + 1) << 8) | ((uint32_t)(uint8_t)(-x - 1) << 24);
    int8_t bytes[4];
    std::memcpy(bytes, &w, 4);
    uint32_t u = w ^ 0x80808080u;
    uint32_t lo = host_byte_perm(u, 0x64646464u, 0x4140), hi = host_byte_perm(u, 0x64646464u, 0x4342);
    uint16_t hv[4] = {(uint16_t)(lo & 0xFFFF), (uint16_t)(lo >> 16), (uint16_t)(hi & 0xFFFF), (uint16_t)(hi >> 16)};
    for (int i = 0; i < 4; ++i) {
      half h;
      std::memcpy(&h, &hv[i], 2);
      float f = h2f(h) - 1152.f;  // __hsub2 with 1152 is exact here (integers < 2048)
      errors += f != (float)bytes[i];
    }
  }
  uint16_t b1152 = 0x6480;
  half hb;
  std::memcpy(&hb, &b1152, 2);
  errors += h2f(hb) != 1152.f;
  return errors;
}

// =====================================================================================================
// 2. Correctness
// =====================================================================================================
struct GemmCase {
  std::string name;
  int M, N, n_valid, K, lda;
  Epi kind;
  bool w8;
  int cfg = -1;         // -1: the library's choice
  int sample_rows = 0;  // 0: every row against the reference
  int head_dim = 0, q_dim = 0, kv_dim = 0;  // QkvRope
  int splits = 0;       // split-K: 0 = the library's choice, n = forced
};

// The split-K workspace every launch gets (as the backend's): allocated and zeroed once.
const l2::kernels::GemmSplitK* split_k_workspace() {
  static DevBuf<float> ws(l2::kernels::kGemmSplitKBytes / sizeof(float));
  static DevBuf<int32_t> counters(l2::kernels::kGemmSplitKCounters);
  static l2::kernels::GemmSplitK sk = [] {
    CK(cudaMemset(counters.p, 0, counters.bytes()));
    return l2::kernels::GemmSplitK{ws.p, ws.bytes(), counters.p, l2::kernels::kGemmSplitKCounters};
  }();
  return &sk;
}

// Every split-K counter is back at zero (a launch that left one set would break the next).
bool split_counters_clear() {
  const l2::kernels::GemmSplitK* sk = split_k_workspace();
  std::vector<int32_t> c(sk->n_counters);
  CK(cudaMemcpy(c.data(), sk->counters, c.size() * 4, cudaMemcpyDeviceToHost));
  for (int32_t v : c)
    if (v != 0) return false;
  return true;
}

const char* epi_name(Epi k) {
  switch (k) {
    case Epi::StoreF32: return "f32";
    case Epi::StoreF16: return "f16";
    case Epi::AddF32: return "add";
    case Epi::SwiGLU: return "swiglu";
    case Epi::QkvRope: return "qkvrope";
  }
  return "?";
}

// Fills [rows][cols] in parallel, each row from its own seeded stream.
template <class T, class F>
void par_fill(std::vector<T>& v, int rows, size_t ld, uint64_t seed, F gen) {
  parallel_for(rows, [&](int r) {
    Rng rng(seed ^ (0xA24BAED4963EE407ull * (uint64_t)(r + 1)));
    for (size_t c = 0; c < ld; ++c) v[(size_t)r * ld + c] = gen(rng, c);
  });
}

bool run_gemm_case(Context& ctx, const GemmCase& cs) {
  const uint64_t seed = ctx.next_seed();
  const int M = cs.M, N = cs.N, K = cs.K, lda = cs.lda, nv = cs.n_valid;
  const int ldw = K;
  const float wamp = 2.f / std::sqrt((float)K);
  // ---- inputs: A (pad columns NaN: must not be read), W (fp16 or int8 + scales) ----
  std::vector<half> hA((size_t)M * lda);
  par_fill(hA, M, lda, seed + 1, [&](Rng& r, size_t c) { return c < (size_t)K ? f2h(r.sym(1.f)) : poison_h(); });
  std::vector<float> Af((size_t)M * K);
  parallel_for(M, [&](int t) {
    for (int k = 0; k < K; ++k) Af[(size_t)t * K + k] = h2f(hA[(size_t)t * lda + k]);
  });
  std::vector<float> Wf((size_t)N * K);
  DevBuf<half> dA(hA.size()), dW, dS;
  DevBuf<int8_t> dQ;
  dA.upload(hA);
  if (!cs.w8) {
    std::vector<half> hW((size_t)N * ldw);
    par_fill(hW, N, ldw, seed + 2, [&](Rng& r, size_t) { return f2h(r.sym(wamp)); });
    parallel_for(N, [&](int n) {
      for (int k = 0; k < K; ++k) Wf[(size_t)n * K + k] = h2f(hW[(size_t)n * ldw + k]);
    });
    dW.alloc(hW.size());
    dW.upload(hW);
  } else {
    std::vector<int8_t> hQ((size_t)N * ldw);
    std::vector<half> hS((size_t)N * (ldw / 32));
    par_fill(hQ, N, ldw, seed + 3, [&](Rng& r, size_t) { return (int8_t)(r.below(255) - 127); });
    par_fill(hS, N, ldw / 32, seed + 4, [&](Rng& r, size_t) { return f2h((0.5f + r.uniform()) * wamp / 127.f); });
    parallel_for(N, [&](int n) {  // the dequantized weight, rounded to fp16 exactly like the kernel: half(q * s)
      for (int k = 0; k < K; ++k)
        Wf[(size_t)n * K + k] =
            h2f(f2h((float)hQ[(size_t)n * ldw + k] * h2f(hS[(size_t)n * (ldw / 32) + k / 32])));
    });
    dQ.alloc(hQ.size());
    dQ.upload(hQ);
    dS.alloc(hS.size());
    dS.upload(hS);
  }

  // ---- epilogue buffers (output poisoned, 2 extra rows and extra columns to catch stray writes) ----
  Epilogue e;
  e.kind = cs.kind;
  const int out_rows = M + 2;
  const bool f32out = cs.kind == Epi::StoreF32 || cs.kind == Epi::AddF32;
  int out_cols = 0, valid_cols = 0;
  switch (cs.kind) {
    case Epi::StoreF32:
    case Epi::StoreF16:
    case Epi::AddF32: out_cols = N + 8, valid_cols = nv; break;
    case Epi::SwiGLU: out_cols = N / 2 + 8, valid_cols = nv / 2; break;
    case Epi::QkvRope: out_cols = cs.q_dim + 8, valid_cols = cs.q_dim; break;
  }
  e.ldo = out_cols;
  DevBuf<float> dOutF;
  DevBuf<half> dOutH;
  std::vector<float> resid;
  if (f32out) {
    dOutF.alloc((size_t)out_rows * out_cols);
    std::vector<float> init((size_t)out_rows * out_cols, poison_f());
    if (cs.kind == Epi::AddF32) {
      resid.assign((size_t)M * valid_cols, 0.f);
      Rng r(seed + 5);
      for (int t = 0; t < M; ++t)
        for (int n = 0; n < valid_cols; ++n) init[(size_t)t * out_cols + n] = resid[(size_t)t * valid_cols + n] = r.sym(1.f);
    }
    dOutF.upload(init);
    e.out = dOutF.p;
  } else {
    dOutH.alloc((size_t)out_rows * out_cols);
    dOutH.poison();
    e.out = dOutH.p;
  }
  // QkvRope: random positions, rope table, distinct kv slots (shuffled), poisoned caches.
  const int hd = cs.head_dim, n_kv = cs.kv_dim > 0 && hd > 0 ? cs.kv_dim / hd : 0;
  const int ctx_len = 4096;
  int n_blocks = 0;
  std::vector<int32_t> pos, slot;
  std::vector<float2> rope;
  DevBuf<int32_t> dPos, dSlot;
  DevBuf<float2> dRope;
  DevBuf<half> dKc, dVc;
  if (cs.kind == Epi::QkvRope) {
    Rng r(seed + 6);
    n_blocks = (M + 15) / 16 + 3;
    pos.resize(M);
    for (auto& p : pos) p = r.below(ctx_len);
    std::vector<int32_t> perm(n_blocks * 16);
    std::iota(perm.begin(), perm.end(), 0);
    for (int i = (int)perm.size() - 1; i > 0; --i) std::swap(perm[i], perm[r.below(i + 1)]);
    slot.assign(perm.begin(), perm.begin() + M);
    rope.resize((size_t)ctx_len * (hd / 2));
    for (auto& cs2 : rope) {
      float th = r.sym(3.14159265f);
      cs2 = make_float2(std::cos(th), std::sin(th));
    }
    dPos.alloc(M);
    dPos.upload(pos);
    dSlot.alloc(M);
    dSlot.upload(slot);
    dRope.alloc(rope.size());
    dRope.upload(rope);
    size_t cache_elems = (size_t)n_blocks * n_kv * 16 * hd;
    dKc.alloc(cache_elems);
    dVc.alloc(cache_elems);
    dKc.poison();
    dVc.poison();
    e.q_dim = cs.q_dim;
    e.kv_dim = cs.kv_dim;
    e.head_dim = hd;
    e.n_kv_heads = n_kv;
    e.positions = dPos.p;
    e.rope = dRope.p;
    e.kv_slot = dSlot.p;
    e.k_cache = dKc.p;
    e.v_cache = dVc.p;
  }

  // ---- run ----
  const int cfg_used = cs.cfg >= 0 ? cs.cfg : gd::pick_config(cs.w8, M, N);
  gd::set_splits(cs.splits);
  gd::run_config(cs.w8, cs.cfg, dA.p, lda, cs.w8 ? (const void*)dQ.p : (const void*)dW.p, dS.p, ldw, M, N, nv, K, e,
                 ctx.stream, split_k_workspace());
  gd::set_splits(0);
  CK(cudaGetLastError());
  CK(cudaStreamSynchronize(ctx.stream));
  const bool counters_clear = split_counters_clear();

  // ---- reference on the checked rows ----
  std::vector<int> rows;
  if (cs.sample_rows <= 0 || cs.sample_rows >= M) {
    rows.resize(M);
    std::iota(rows.begin(), rows.end(), 0);
  } else {
    Rng r(seed + 7);
    std::vector<int> cand = {0, M - 1, std::min(M - 1, 127), std::min(M - 1, 128), std::min(M - 1, 63),
                             std::min(M - 1, 64), M / 2};
    for (int i = 0; i < cs.sample_rows; ++i) cand.push_back(r.below(M));
    std::sort(cand.begin(), cand.end());
    cand.erase(std::unique(cand.begin(), cand.end()), cand.end());
    rows = cand;
  }
  const int R = (int)rows.size();
  std::vector<double> V((size_t)R * nv);
  const int kChunkN = 256;
  const int nchunks = (nv + kChunkN - 1) / kChunkN;
  parallel_for(R * nchunks, [&](int task) {
    int ri = task / nchunks, c0 = (task % nchunks) * kChunkN;
    const float* a = &Af[(size_t)rows[ri] * K];
    for (int n = c0; n < std::min(nv, c0 + kChunkN); ++n) {
      const float* w = &Wf[(size_t)n * K];
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int k = 0; k < K; k += 4) {
        s0 += (double)a[k] * w[k];
        s1 += (double)a[k + 1] * w[k + 1];
        s2 += (double)a[k + 2] * w[k + 2];
        s3 += (double)a[k + 3] * w[k + 3];
      }
      V[(size_t)ri * nv + n] = (s0 + s1) + (s2 + s3);
    }
  });

  // ---- compare ----
  ErrStats st;
  std::vector<char> is_checked(M, 0);
  for (int t : rows) is_checked[t] = 1;
  std::vector<float> outF;
  std::vector<half> outH;
  if (f32out) outF = dOutF.download();
  else outH = dOutH.download();
  auto out_is_poison = [&](size_t i) { return f32out ? fbits(outF[i]) == kPoisonF : hbits(outH[i]) == kPoisonH; };
  auto out_val = [&](size_t i) { return f32out ? (double)outF[i] : (double)h2f(outH[i]); };
  // (a) layout: valid region written & finite, everything else untouched.
  for (int t = 0; t < out_rows; ++t)
    for (int c = 0; c < out_cols; ++c) {
      size_t i = (size_t)t * out_cols + c;
      bool valid = t < M && c < valid_cols;
      if (valid) {
        if (cs.kind != Epi::AddF32 && out_is_poison(i)) ++st.unwritten;
        else if (!is_checked[t] && !std::isfinite(out_val(i))) ++st.nan;
      } else if (!out_is_poison(i)) {
        ++st.clobbered;
      }
    }
  // (b) values on the reference rows.
  for (int ri = 0; ri < R; ++ri) {
    int t = rows[ri];
    const double* v = &V[(size_t)ri * nv];
    for (int n = 0; n < nv; n += 2) {
      double v0 = v[n], v1 = v[n + 1];
      switch (cs.kind) {
        case Epi::StoreF32:
        case Epi::StoreF16:
          st.add(out_val((size_t)t * out_cols + n), v0);
          st.add(out_val((size_t)t * out_cols + n + 1), v1);
          break;
        case Epi::AddF32:
          st.add(out_val((size_t)t * out_cols + n), v0 + resid[(size_t)t * valid_cols + n]);
          st.add(out_val((size_t)t * out_cols + n + 1), v1 + resid[(size_t)t * valid_cols + n + 1]);
          break;
        case Epi::SwiGLU: {
          double silu = v0 / (1.0 + std::exp(-v0));
          st.add(out_val((size_t)t * out_cols + n / 2), silu * v1);
          break;
        }
        case Epi::QkvRope: {
          double r0 = v0, r1 = v1;
          if (n < cs.q_dim + cs.kv_dim) {
            float2 c = rope[(size_t)pos[t] * (hd / 2) + (n % hd) / 2];
            r0 = v0 * c.x - v1 * c.y;
            r1 = v0 * c.y + v1 * c.x;
          }
          if (n < cs.q_dim) {
            st.add(out_val((size_t)t * out_cols + n), r0);
            st.add(out_val((size_t)t * out_cols + n + 1), r1);
          }
          break;
        }
      }
    }
  }
  // (c) QkvRope caches: the M slots hold K / V of their token, every other slot keeps its poison.
  if (cs.kind == Epi::QkvRope) {
    std::vector<half> kc = dKc.download(), vc = dVc.download();
    std::vector<int> slot_token(n_blocks * 16, -1);
    for (int t = 0; t < M; ++t) slot_token[slot[t]] = t;
    std::vector<int> ri_of(M, -1);
    for (int ri = 0; ri < R; ++ri) ri_of[rows[ri]] = ri;
    for (int sl = 0; sl < n_blocks * 16; ++sl)
      for (int kvh = 0; kvh < n_kv; ++kvh)
        for (int d = 0; d < hd; d += 2) {
          size_t idx = (((size_t)(sl / 16) * n_kv + kvh) * 16 + sl % 16) * hd + d;
          int t = slot_token[sl];
          for (int which = 0; which < 2; ++which) {
            const std::vector<half>& c = which ? vc : kc;
            if (t < 0) {
              st.clobbered += (hbits(c[idx]) != kPoisonH) + (hbits(c[idx + 1]) != kPoisonH);
              continue;
            }
            if (hbits(c[idx]) == kPoisonH || hbits(c[idx + 1]) == kPoisonH) {
              ++st.unwritten;
              continue;
            }
            int ri = ri_of[t];
            if (ri < 0) {
              if (!std::isfinite(h2f(c[idx])) || !std::isfinite(h2f(c[idx + 1]))) ++st.nan;
              continue;
            }
            int n = cs.q_dim + which * cs.kv_dim + kvh * hd + d;
            double v0 = V[(size_t)ri * nv + n], v1 = V[(size_t)ri * nv + n + 1];
            if (!which) {
              float2 cc = rope[(size_t)pos[t] * (hd / 2) + d / 2];
              double r0 = v0 * cc.x - v1 * cc.y, r1 = v0 * cc.y + v1 * cc.x;
              v0 = r0, v1 = r1;
            }
            st.add(h2f(c[idx]), v0);
            st.add(h2f(c[idx + 1]), v1);
          }
        }
  }
  std::string name = fmt("%s %s M%d N%d/%d K%d lda%d %s%s", cs.name.c_str(), cs.w8 ? "w8" : "f16", M, N, nv, K, lda,
                         epi_name(cs.kind), cs.splits > 1 ? fmt(" split-K %d", cs.splits).c_str() : "");
  std::string det = fmt("cfg %d, %d/%d rows ref, %s%s", cfg_used, R, M, st.detail().c_str(), counters_clear ? "" : ", split-K counters left set");
  return ctx.check(name, st.ok() && counters_clear, st.rel_l2(), st.max_norm(), det);
}

// The Llama-2-7B matrices, with their natural epilogue.
struct Shape {
  const char* name;
  int N, n_valid, K;
  Epi kind;
  int head_dim, q_dim, kv_dim;
};
const Shape kShapes7B[] = {
    {"qkv", 12288, 12288, 4096, Epi::QkvRope, 128, 4096, 4096},
    {"o", 4096, 4096, 4096, Epi::AddF32, 0, 0, 0},
    {"gate_up", 22016, 22016, 4096, Epi::SwiGLU, 0, 0, 0},
    {"down", 4096, 4096, 11008, Epi::AddF32, 0, 0, 0},
    {"logits", 32000, 32000, 4096, Epi::StoreF32, 0, 0, 0},
};

void correctness(Context& ctx) {
  // Tiny ragged shapes, every epilogue, both weight formats.
  struct Tiny {
    int N, nv, K, lda;
  };
  const Tiny tiny[] = {{128, 64, 64, 64}, {256, 172, 192, 256}, {128, 128, 64, 72}};
  for (int w8 = 0; w8 < 2; ++w8)
    for (int M : {1, 3, 17})
      for (const Tiny& t : tiny)
        for (int k = 0; k < 5; ++k) {
          GemmCase c{"tiny", M, t.N, t.nv, t.K, t.lda, (Epi)k, w8 != 0};
          if (c.kind == Epi::QkvRope) {  // head_dim N / 8: Q 4 heads, K / V 2 heads each -> n_valid = N
            c.head_dim = t.N / 8;
            c.q_dim = 4 * c.head_dim;
            c.kv_dim = 2 * c.head_dim;
            c.n_valid = c.q_dim + 2 * c.kv_dim;
          }
          run_gemm_case(ctx, c);
        }
  // Every configuration forced, ragged M / n_valid, multi-tile K, K smaller than the pipeline depth.
  for (int w8 = 0; w8 < 2; ++w8)
    for (int cfg = 0; cfg < gd::num_configs(w8); ++cfg) {
      if (!gd::config_fits(w8, cfg)) {
        if (std::strstr(gd::config_name(w8, cfg), "wgmma") && ctx.cc_major != 9)
          std::printf("  (skip %s: sm_90a only)\n", gd::config_name(w8, cfg));
        else
          std::printf("  (skip %s: %d B smem does not fit)\n", gd::config_name(w8, cfg), gd::config_smem(w8, cfg));
        continue;
      }
      GemmCase a{std::string("cfg ") + gd::config_name(w8, cfg), 200, 384, 300, 320, 384, Epi::StoreF16, w8 != 0, cfg};
      run_gemm_case(ctx, a);
      GemmCase b{std::string("cfg ") + gd::config_name(w8, cfg), 70, 256, 256, 64, 64, Epi::AddF32, w8 != 0, cfg};
      run_gemm_case(ctx, b);
      GemmCase q{std::string("cfg ") + gd::config_name(w8, cfg), 33, 768, 768, 128, 128, Epi::QkvRope, w8 != 0, cfg};
      q.head_dim = 64, q.q_dim = 256, q.kv_dim = 256;
      run_gemm_case(ctx, q);
      if (!ctx.opt.quick) {
        GemmCase s{std::string("cfg ") + gd::config_name(w8, cfg), 300, 640, 512, 1024, 1024, Epi::SwiGLU, w8 != 0, cfg};
        run_gemm_case(ctx, s);
      }
      // Split-K forced (the configurations that have it: mma.sync's small tiles, the 64-row wgmma ones): 17 or 34 k-tiles in 2-4 splits (uneven shares), the residual-add
      // and the RoPE epilogues after the merge; run twice (the counters must be back at zero for the second).
      if (!gd::config_splits(w8, cfg)) continue;
      for (int splits : {2, 3, 4})
        for (int rep = 0; rep < 2; ++rep) {
          GemmCase a2{std::string("cfg ") + gd::config_name(w8, cfg), 40, 384, 300, 1088, 1088, Epi::AddF32, w8 != 0, cfg};
          a2.splits = splits;
          run_gemm_case(ctx, a2);
        }
      GemmCase q2{std::string("cfg ") + gd::config_name(w8, cfg), 9, 768, 768, 1024, 1024, Epi::QkvRope, w8 != 0, cfg};
      q2.head_dim = 64, q2.q_dim = 256, q2.kv_dim = 256, q2.splits = 3;
      run_gemm_case(ctx, q2);
    }
  // The wave rule's split counts for the 64-row wgmma tile at the 7B shapes, M = 64, on a 132-SM sm_90 (H100 SXM /
  // H200, or the emulator's sm_90 model): qkv 4, o 4, gate_up 3, down 4, logits 1 (NOTES, stop 23).
  if (ctx.cc_major == 9 && ctx.sms == 132)
    for (int w8 = 0; w8 < 2; ++w8) {
      gd::set_wgmma_min_m(1);
      const int wg = gd::pick_config(w8, 64, 4096);
      gd::set_wgmma_min_m(0);
      if (!std::strstr(gd::config_name(w8, wg), "wgmma 64x")) continue;  // (the sm_90a file is not linked in)
      std::string got;
      for (const Shape& s : kShapes7B) got += fmt("%s%d", got.empty() ? "" : " ", gd::chosen_splits(w8, wg, 64, s.N, s.K));
      ctx.check(fmt("%s wgmma 64-row split-K by waves, 7B shapes at M=64 (qkv o gate_up down logits)", w8 ? "w8" : "f16"),
                got == "4 4 3 4 1", 0, 0, got);
    }
  if (ctx.opt.quick) return;
  // GQA-style QKV (Q 4096 + K/V 1024 each, 8 kv heads), ragged M.
  {
    GemmCase c{"qkv-gqa", 300, 6144, 6144, 4096, 4096, Epi::QkvRope, false};
    c.head_dim = 128, c.q_dim = 4096, c.kv_dim = 1024;
    run_gemm_case(ctx, c);
    c.w8 = true;
    run_gemm_case(ctx, c);
  }
  // The 7B shapes.
  for (int w8 = 0; w8 < 2; ++w8)
    for (const Shape& s : kShapes7B)
      for (int M : {16, 32, 64, 128, 512, 2048}) {
        GemmCase c{std::string("7b ") + s.name, M, s.N, s.n_valid, s.K, s.K, s.kind, w8 != 0, -1, 20, s.head_dim,
                   s.q_dim, s.kv_dim};
        run_gemm_case(ctx, c);
      }
  // The 64-row wgmma tile with its split-K chosen by waves (LLAMA2_GEMM_WGMMA_MIN_M; sm_90a only).
  for (int w8 = 0; w8 < 2; ++w8)
    for (const Shape& s : kShapes7B)
      for (int M : {9, 33, 64}) {
        gd::set_wgmma_min_m(1);
        const int wg = gd::pick_config(w8, M, s.N);
        gd::set_wgmma_min_m(0);
        if (wg == gd::pick_config(w8, M, s.N)) continue;
        GemmCase c{std::string("7b wgmma64 ") + s.name, M, s.N, s.n_valid, s.K, s.K, s.kind, w8 != 0, wg, 20,
                   s.head_dim, s.q_dim, s.kv_dim};
        run_gemm_case(ctx, c);
      }
  for (int w8 = 0; w8 < 2; ++w8) {  // logits of the last prompt row
    GemmCase c{"7b logits", 1, 32000, 32000, 4096, 4096, Epi::StoreF32, w8 != 0};
    run_gemm_case(ctx, c);
  }
}

// =====================================================================================================
// 3. Benchmarks
// =====================================================================================================
struct BenchBufs {
  std::vector<DevBuf<half>> W;
  std::vector<DevBuf<int8_t>> Q;
  std::vector<DevBuf<half>> S;
  DevBuf<half> A, outH, kc, vc;
  DevBuf<float> outF;
  DevBuf<int32_t> pos, slot;
  DevBuf<float2> rope;
  Epilogue e;
};

void bench_shape(Context& ctx, const Shape& s, int M, bool w8, bool tune) {
  const int N = s.N, K = s.K;
  const size_t wbytes = w8 ? (size_t)N * K + (size_t)N * (K / 32) * 2 : (size_t)N * K * 2;
  const int copies = (int)std::min<size_t>(16, std::max<size_t>(2, (3 * ctx.l2_bytes + wbytes - 1) / wbytes));
  BenchBufs b;
  uint64_t seed = ctx.next_seed();
  for (int c = 0; c < copies; ++c) {
    if (!w8) {
      b.W.emplace_back((size_t)N * K);
      fill_rand_half(b.W.back().p, (size_t)N * K, seed + c, 2.f / std::sqrt((float)K), ctx.stream);
    } else {
      b.Q.emplace_back((size_t)N * K);
      fill_rand_i8(b.Q.back().p, (size_t)N * K, seed + c, ctx.stream);
      b.S.emplace_back((size_t)N * (K / 32));
      fill_rand_half(b.S.back().p, (size_t)N * (K / 32), seed + 100 + c, 0.01f, ctx.stream);
    }
  }
  b.A.alloc((size_t)M * K);
  fill_rand_half(b.A.p, (size_t)M * K, seed + 1000, 1.f, ctx.stream);
  Epilogue& e = b.e;
  e.kind = s.kind;
  size_t out_bytes = 0;
  switch (s.kind) {
    case Epi::StoreF32:
    case Epi::AddF32:
      b.outF.alloc((size_t)M * N);
      CK(cudaMemsetAsync(b.outF.p, 0, b.outF.bytes(), ctx.stream));
      e.out = b.outF.p, e.ldo = N;
      out_bytes = (size_t)M * N * 4 * (s.kind == Epi::AddF32 ? 2 : 1);
      break;
    case Epi::StoreF16:
      b.outH.alloc((size_t)M * N);
      e.out = b.outH.p, e.ldo = N;
      out_bytes = (size_t)M * N * 2;
      break;
    case Epi::SwiGLU:
      b.outH.alloc((size_t)M * N / 2);
      e.out = b.outH.p, e.ldo = N / 2;
      out_bytes = (size_t)M * N;
      break;
    case Epi::QkvRope: {
      b.outH.alloc((size_t)M * s.q_dim);
      e.out = b.outH.p, e.ldo = s.q_dim;
      e.q_dim = s.q_dim, e.kv_dim = s.kv_dim, e.head_dim = s.head_dim, e.n_kv_heads = s.kv_dim / s.head_dim;
      int nb = (M + 15) / 16;
      std::vector<int32_t> pos(M), slot(M);
      for (int t = 0; t < M; ++t) pos[t] = t, slot[t] = t;
      std::vector<float2> rope((size_t)4096 * (s.head_dim / 2));
      for (size_t i = 0; i < rope.size(); ++i) rope[i] = make_float2(std::cos(0.001f * i), std::sin(0.001f * i));
      b.pos.alloc(M), b.pos.upload(pos), b.slot.alloc(M), b.slot.upload(slot), b.rope.alloc(rope.size());
      b.rope.upload(rope);
      b.kc.alloc((size_t)nb * 16 * s.kv_dim), b.vc.alloc((size_t)nb * 16 * s.kv_dim);
      e.positions = b.pos.p, e.rope = b.rope.p, e.kv_slot = b.slot.p, e.k_cache = b.kc.p, e.v_cache = b.vc.p;
      out_bytes = (size_t)M * (s.q_dim + 2 * s.kv_dim) * 2;
      break;
    }
  }
  CK(cudaStreamSynchronize(ctx.stream));
  const double flops = 2.0 * M * N * K;
  const double bytes = (double)wbytes + (double)M * K * 2 + (double)out_bytes;
  auto run = [&](int cfg, int i) {
    int c = i % copies;
    gd::run_config(w8, cfg, b.A.p, K, w8 ? (const void*)b.Q[c].p : (const void*)b.W[c].p, w8 ? b.S[c].p : nullptr, K,
                   M, N, s.n_valid, K, e, ctx.stream, split_k_workspace());
  };
  const int picked = gd::pick_config(w8, M, N);
  std::string base = fmt("%s %s M=%d (N=%d K=%d)", w8 ? "w8 " : "f16", s.name, M, N, K);
  double ms = time_ms(ctx.stream, ctx.opt.reps, [&](int i) { run(-1, i); });
  ctx.bench(base, ms, flops, bytes, fmt("#%d %s", picked, gd::config_name(w8, picked)));
  ctx.metrics[fmt("gemm.%s.%s.%d", w8 ? "w8" : "f16", s.name, M)] = ms;
  if (M <= 64) {  // the same configuration without split-K (A/B)
    gd::set_splits(1);
    double ms1 = time_ms(ctx.stream, ctx.opt.reps, [&](int i) { run(-1, i); });
    gd::set_splits(0);
    ctx.bench(base + " no split-K", ms1, flops, bytes, fmt("#%d %s", picked, gd::config_name(w8, picked)));
    // The 64-row wgmma tile with split-K by waves (LLAMA2_GEMM_WGMMA_MIN_M; sm_90a only), A/B.
    gd::set_wgmma_min_m(1);
    const int wg = gd::pick_config(w8, M, N);
    if (wg != picked) {
      double ms2 = time_ms(ctx.stream, ctx.opt.reps, [&](int i) { run(-1, i); });
      ctx.bench(base + " wgmma64", ms2, flops, bytes, fmt("#%d %s", wg, gd::config_name(w8, wg)));
      ctx.metrics[fmt("gemm.%s.%s.%d.wgmma64", w8 ? "w8" : "f16", s.name, M)] = ms2;
    }
    gd::set_wgmma_min_m(0);
  }
  if (tune) {
    int best = -1;
    double best_ms = 1e30;
    std::string line = "    tune:";
    for (int cfg = 0; cfg < gd::num_configs(w8); ++cfg) {
      if (!gd::config_fits(w8, cfg)) continue;
      double t = time_ms(ctx.stream, std::max(5, ctx.opt.reps / 2), [&](int i) { run(cfg, i); }, 2);
      line += fmt(" #%d %.1f", cfg, flops / (t * 1e-3) / 1e12);
      if (t < best_ms) best_ms = t, best = cfg;
    }
    std::printf("%s TFLOP/s -> best #%d (%s) %.4f ms vs picked #%d %.4f ms\n", line.c_str(), best,
                gd::config_name(w8, best), best_ms, picked, ms);
  }
}

void benchmarks(Context& ctx) {
  std::printf("  tuning table: %s\n", gd::tuning_name());
  const std::vector<int> ms = ctx.opt.quick ? std::vector<int>{8, 32, 64, 512} : std::vector<int>{8, 16, 32, 64, 128, 512, 2048};
  for (int w8 = 0; w8 < 2; ++w8) {
    for (const Shape& s : kShapes7B)
      for (int M : ms) bench_shape(ctx, s, M, w8 != 0, ctx.opt.tune);
    bench_shape(ctx, kShapes7B[4], 1, w8 != 0, false);  // logits of the last prompt row
  }
  ctx.finalizers.push_back([](Context& c) {
    for (const char* p : {"f16", "w8"}) {
      double layer = 0;
      bool all = true;
      for (const char* s : {"qkv", "o", "gate_up", "down"}) {
        auto it = c.metrics.find(fmt("gemm.%s.%s.512", p, s));
        if (it == c.metrics.end()) all = false;
        else layer += it->second;
      }
      auto lg = c.metrics.find(fmt("gemm.%s.logits.1", p));
      auto at = c.metrics.find("attn.7b.512");
      if (!all || lg == c.metrics.end()) continue;
      double attn = at == c.metrics.end() ? 0 : at->second;
      double total = 32 * (layer + attn) + lg->second;
      c.summary.push_back(fmt("7B prefill estimate (%s weights, 512 tokens): 32 x (GEMMs %.3f + attention %.3f%s) + "
                              "logits %.3f = %.2f ms -> %.0f tokens/s (matrix kernels and attention only)",
                              p, layer, attn, at == c.metrics.end() ? " [not run]" : "", lg->second, total,
                              512.0 / (total * 1e-3)));
    }
  });
}

}  // namespace

void test_gemm(l2test::Context& ctx) {
  if (!ctx.opt.no_check) {
    int e4 = emulate_tile_fragments<4>(64), e8 = emulate_tile_fragments<8>(128), e16 = emulate_tile_fragments<16>(64);
    ctx.check("host emulation: ldmatrix/mma fragments, swizzle, banks (C=4)", e4 == 0, 0, 0, fmt("%d errors", e4));
    ctx.check("host emulation: ldmatrix/mma fragments, swizzle, banks (C=8)", e8 == 0, 0, 0, fmt("%d errors", e8));
    ctx.check("host emulation: ldmatrix/mma fragments, swizzle, banks (C=16)", e16 == 0, 0, 0, fmt("%d errors", e16));
    int ep = emulate_p_reuse();
    ctx.check("host emulation: attention P (C frag) -> A frag reuse", ep == 0, 0, 0, fmt("%d errors", ep));
    int ei = emulate_i8_convert();
    ctx.check("host emulation: int8 -> fp16 byte_perm conversion", ei == 0, 0, 0, fmt("%d errors", ei));
    if (ctx.opt.host_only) return;
    correctness(ctx);
  }
  if (ctx.opt.bench) benchmarks(ctx);
}
