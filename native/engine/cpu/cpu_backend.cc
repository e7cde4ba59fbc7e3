// The CPU reference backend: the whole Llama forward in fp32, threaded over matrix rows and
// attention heads. Simple and exactly right first; it is the oracle for every other backend.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>

#include "../../common/error.h"
#include "../../common/q8.h"
#include "../../common/thread_pool.h"
#include "../../model/ggml_blocks.h"
#include "../backend.h"
#include "cpu_ops.h"
#include "weight_pages.h"

namespace l2 {

namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(const ModelConfig& c, LlamaWeights w, const BackendOptions& o)
      : c_(c), w_(std::move(w)), ctx_(o.context_length),
        pool_(default_threads(o.threads)), act_(o.int8_activations ? cpu::Activations::Int8 : cpu::Activations::F32) {
    const bool convert = o.dtype != "auto";
    DType to = o.dtype == "f32"    ? DType::F32
               : o.dtype == "f16"  ? DType::F16
               : o.dtype == "bf16" ? DType::BF16
               : o.dtype == "q4"   ? DType::Q4_1  // 4-bit groups: GGUF 4-bit blocks rewritten, other types quantized
                                   : DType::Q8_0;
    // The type each matrix gets when a dtype is asked for (q4: the classifier in int8, q4_targets).
    const MatrixTarget target = o.dtype == "q4" ? q4_targets(w_) : uniform_target(to);
    if (has_load_only(w_)) {
      // 4-6 bit GGUF blocks (Q4_K_M files ...), decoded once. "auto": the 4-bit ones (Q4_0 / Q4_1 / Q4_K) run
      // as Q4_1 blocks (cpu_ops widens them in registers as it does Q8_0), the others become int8 (Q8_0
      // groups of 32: at most 1/254 of a group's largest value of added error); a dtype asked for: all into it.
      const uint64_t file_bytes = w_.matrix_bytes();
      const int n = (int)w_.matrices().size();
      int visited = 0;
      const ConvertProgress progress = [&](uint64_t done) {
        if (o.progress) o.progress({"decode", done, file_bytes, ++visited, n});
      };
      if (convert) decode_load_only(w_, target, pool_, progress, cpu::WeightPages::allocate);
      else decode_keeping_q4(w_, pool_, progress, cpu::WeightPages::allocate);
    }
    if (!convert) to = w_.layers[0].wq.dtype;
    for (Matrix* m : w_.matrices()) q4_ = q4_ || m->dtype == DType::Q4_1;
    requested_q4_ = o.dtype == "q4";
    uint64_t total = w_.matrix_bytes();
    if (o.progress) o.progress({"weights", 0, total, 0, (int)w_.matrices().size()});
    if (convert) {
      int n = 0;
      int total_t = (int)w_.matrices().size();
      const ConvertProgress progress = [&](uint64_t done) {
        if (o.progress) o.progress({"weights", done, total, ++n, total_t});
      };
      convert_weights(w_, target, pool_, progress, cpu::WeightPages::allocate);
    }
    dtype_ = to;
    const int n_matrices = (int)w_.matrices().size();
    int copied = 0;
    pages_.place(w_, pool_, [&](uint64_t done) {
      if (o.progress) o.progress({"weights", done, total, ++copied, n_matrices});
    });
    rope_ = rope_table(c_, ctx_);
    kv_int8_ = o.kv_int8;
    kv_group_ = kv_quant_group(c_.head_dim);
    // A cache row is one token's K or V for all KV heads: fp32, or int8 values then fp16 group scales.
    kv_row_bytes_ = kv_int8_ ? (size_t)c_.kv_dim() + (size_t)(c_.kv_dim() / kv_group_) * 2 : (size_t)c_.kv_dim() * 4;
    block_bytes_ = (size_t)c_.n_layers * 2 * kKvBlockSize * kv_row_bytes_;
    blocks_.resize((size_t)o.n_kv_blocks);
    if (o.progress) o.progress({"ready", total, total, (int)w_.matrices().size(), (int)w_.matrices().size()});
  }

  BackendInfo info() const override {
    BackendInfo i;
    i.device = "cpu";
    i.name = "CPU (" + std::to_string(pool_.size()) + " threads, " + cpu::simd_name() +
             (pages_.description().empty() ? "" : ", " + pages_.description()) +
             (act_ == cpu::Activations::Int8 ? ", int8 activations" : "") + ")";
    switch (dtype_) {
      case DType::F32: i.dtype = "f32"; break;
      case DType::F16: i.dtype = "f16"; break;
      case DType::BF16: i.dtype = "bf16"; break;
      case DType::Q8_0: i.dtype = "int8"; break;
      default: i.dtype = "int8"; break;  // layer 0's wq is 4-bit: q4_ below
    }
    // dtype "q4": every matrix 4-bit (rows not of whole 32-groups stay fp16). Else 4-bit matrices beside int8
    // ones (a GGUF's 4-bit blocks with dtype "auto"; the CUDA backend's name for the same load).
    if (requested_q4_) i.dtype = "q4";
    else if (q4_) i.dtype = "q4+" + i.dtype;
    i.weight_bytes = const_cast<LlamaWeights&>(w_).matrix_bytes();
    i.kv_dtype = kv_int8_ ? "int8" : "f32";
    i.kv_bytes = allocated_blocks_.load() * block_bytes_;
    return i;
  }

  void forward(const ForwardBatch& b) override {
    const int T = b.n_tokens(), D = c_.dim, Q = c_.q_dim(), KV = c_.kv_dim(), F = c_.ffn_dim;
    x_.resize((size_t)T * D);
    xb_.resize((size_t)T * D);
    q_.resize((size_t)T * Q);
    k_.resize((size_t)T * KV);
    v_.resize((size_t)T * KV);
    att_.resize((size_t)T * Q);
    h1_.resize((size_t)T * F);
    h3_.resize((size_t)T * F);
    for (int t = 0; t < T; ++t) cpu::row_to_f32(w_.tok_embeddings, b.tokens[(size_t)t], &x_[(size_t)t * D]);
    // Segment and slot of each token, for the cache writes and attention.
    seg_of_.resize((size_t)T);
    for (size_t s = 0; s < b.segments.size(); ++s)
      for (int j = 0; j < b.segments[s].count; ++j) seg_of_[(size_t)(b.segments[s].start + j)] = (int)s;
    for (int t = 0; t < T; ++t) ensure_block(block_of(b, t));

    for (int l = 0; l < c_.n_layers; ++l) {
      const LayerWeights& L = w_.layers[(size_t)l];
      for (int t = 0; t < T; ++t) cpu::rmsnorm(&xb_[(size_t)t * D], &x_[(size_t)t * D], L.attn_norm.data(), D, c_.rms_eps);
      const Matrix* qkv[3] = {&L.wq, &L.wk, &L.wv};
      float* qkv_out[3] = {q_.data(), k_.data(), v_.data()};
      cpu::matmul_multi(qkv, qkv_out, 3, xb_.data(), T, pool_, act_);
      for (int t = 0; t < T; ++t) {
        int pos = b.positions[(size_t)t];
        rope(&q_[(size_t)t * Q], c_.n_heads, pos);
        rope(&k_[(size_t)t * KV], c_.n_kv_heads, pos);
        store_kv(kv_slot(b, t, l, 0), &k_[(size_t)t * KV]);
        store_kv(kv_slot(b, t, l, 1), &v_[(size_t)t * KV]);
      }
      attention(b, l);
      cpu::matmul(L.wo, att_.data(), T, xb_.data(), pool_, act_);
      for (size_t i = 0; i < (size_t)T * D; ++i) x_[i] += xb_[i];
      for (int t = 0; t < T; ++t) cpu::rmsnorm(&xb_[(size_t)t * D], &x_[(size_t)t * D], L.ffn_norm.data(), D, c_.rms_eps);
      cpu::matmul_swiglu(L.w1, L.w3, xb_.data(), T, h1_.data(), h3_.data(), pool_, act_);
      cpu::matmul(L.w2, h1_.data(), T, xb_.data(), pool_, act_);
      for (size_t i = 0; i < (size_t)T * D; ++i) x_[i] += xb_[i];
    }
    wide_.clear();  // up to a context of fp32 rows per prefill segment: not kept between steps
    const int n_out = (int)b.output_rows.size();
    xo_.resize((size_t)n_out * D);
    for (int o = 0; o < n_out; ++o)
      cpu::rmsnorm(&xo_[(size_t)o * D], &x_[(size_t)b.output_rows[(size_t)o] * D], w_.output_norm.data(), D, c_.rms_eps);
    logits_.resize((size_t)n_out * c_.vocab_size);
    n_out_ = n_out;
    if (n_out > 0) cpu::matmul(w_.output, xo_.data(), n_out, logits_.data(), pool_, act_);
  }

  void read_logits(float* dst) override { std::memcpy(dst, logits_.data(), logits_.size() * 4); }

  void read_hidden(float* dst) override { std::memcpy(dst, xo_.data(), xo_.size() * 4); }

  void top_k(int k, int32_t* ids, float* vals) override { host_top_k(logits_.data(), n_out_, c_.vocab_size, k, ids, vals); }

  void copy_block(int32_t src, int32_t dst) override {
    uint8_t* to = ensure_block(dst);
    if (blocks_[(size_t)src]) std::memcpy(to, blocks_[(size_t)src].get(), block_bytes_);
  }

  uint64_t kv_block_bytes() const override { return block_bytes_; }

  void read_block(int32_t b, uint8_t* dst) override {
    if (blocks_[(size_t)b]) std::memcpy(dst, blocks_[(size_t)b].get(), block_bytes_);
    else std::memset(dst, 0, block_bytes_);
  }

  void write_block(int32_t b, const uint8_t* src) override { std::memcpy(ensure_block(b), src, block_bytes_); }

 private:
  // A block's memory, allocated (zeroed) on its first use: the cache grows as sequences fill it.
  uint8_t* ensure_block(int32_t b) {
    if (!blocks_[(size_t)b]) {
      blocks_[(size_t)b].reset(new uint8_t[block_bytes_]());
      ++allocated_blocks_;
    }
    return blocks_[(size_t)b].get();
  }

  int32_t block_of(const ForwardBatch& b, int t) const {
    int pos = b.positions[(size_t)t];
    return b.block_tables[(size_t)seg_of_[(size_t)t] * b.max_blocks + pos / kKvBlockSize];
  }
  // K (kv = 0) or V (kv = 1) row of token t in layer l: a block is [layer][k|v][slot] rows.
  uint8_t* kv_slot(const ForwardBatch& b, int t, int l, int kv) {
    int pos = b.positions[(size_t)t];
    return blocks_[(size_t)block_of(b, t)].get() + (((size_t)l * 2 + kv) * kKvBlockSize + pos % kKvBlockSize) * kv_row_bytes_;
  }
  const uint8_t* kv_at(const int32_t* table, int pos, int l, int kv) const {
    return blocks_[(size_t)table[pos / kKvBlockSize]].get() + (((size_t)l * 2 + kv) * kKvBlockSize + pos % kKvBlockSize) * kv_row_bytes_;
  }
  void store_kv(uint8_t* row, const float* x) const {
    if (!kv_int8_) {
      std::memcpy(row, x, (size_t)c_.kv_dim() * 4);
      return;
    }
    const int n = c_.kv_dim(), G = kv_group_;
    int8_t* q = reinterpret_cast<int8_t*>(row);
    uint8_t* scales = row + n;
    for (int g = 0; g < n / G; ++g) {
      uint16_t d = q8_quantize_group(x + (size_t)g * G, G, q + (size_t)g * G);
      std::memcpy(scales + (size_t)g * 2, &d, 2);
    }
  }
  // An int8 cache row widened to fp32 (value * its group's scale).
  void widen_kv(const uint8_t* row, float* out) const {
    const int n = c_.kv_dim(), G = kv_group_;
    const int8_t* q = reinterpret_cast<const int8_t*>(row);
    for (int g = 0; g < n / G; ++g) {
      uint16_t dh;
      std::memcpy(&dh, row + n + (size_t)g * 2, 2);
      const float d = fp16_to_f32(dh);
      for (int i = g * G; i < (g + 1) * G; ++i) out[i] = (float)q[i] * d;
    }
  }
  // A cache row as fp32: the row itself, or (int8) widened into `buf`.
  const float* load_kv(const uint8_t* row, std::vector<float>& buf) const {
    if (!kv_int8_) return reinterpret_cast<const float*>(row);
    buf.resize((size_t)c_.kv_dim());
    widen_kv(row, buf.data());
    return buf.data();
  }

  void rope(float* v, int n_heads, int pos) const {
    const int hs = c_.head_dim, half = hs / 2;
    const float* cs = &rope_[(size_t)pos * half * 2];
    for (int h = 0; h < n_heads; ++h) {
      float* x = v + (size_t)h * hs;
      for (int i = 0; i < half; ++i) {
        int a = c_.rope_layout == RopeLayout::Interleaved ? 2 * i : i;
        int bb = c_.rope_layout == RopeLayout::Interleaved ? 2 * i + 1 : i + half;
        float c = cs[2 * i], s = cs[2 * i + 1];
        float x0 = x[a], x1 = x[bb];
        x[a] = x0 * c - x1 * s;
        x[bb] = x0 * s + x1 * c;
      }
    }
  }

  // Causal attention of every batch token over its sequence's cache (positions 0..pos).
  void attention(const ForwardBatch& b, int l) {
    auto table = [&](int t) { return &b.block_tables[(size_t)seg_of_[(size_t)t] * b.max_blocks]; };
    // int8 cache: a segment of several tokens (a prefill chunk) has its rows widened once for the layer,
    // since every one of its tokens reads them; single tokens widen each row as they read it
    // (attend_chunk uses a row before asking for the next: one scratch row per thread and K/V). The
    // same values either way, so results stay bit-identical across batching.
    const size_t KV = (size_t)c_.kv_dim();
    wide_.resize(b.segments.size());
    for (size_t s = 0; s < b.segments.size(); ++s) {
      const Segment& sg = b.segments[s];
      if (!kv_int8_ || sg.count < 2) {
        wide_[s].clear();
        continue;
      }
      const int n = sg.pos0 + sg.count;
      const int32_t* tb = &b.block_tables[s * (size_t)b.max_blocks];
      wide_[s].resize((size_t)n * 2 * KV);
      float* w = wide_[s].data();
      pool_.parallel_for(n, 64, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          widen_kv(kv_at(tb, (int)p, l, 0), w + (size_t)p * 2 * KV);
          widen_kv(kv_at(tb, (int)p, l, 1), w + (size_t)p * 2 * KV + KV);
        }
      });
    }
    cpu::attention(
        pool_, b.n_tokens(), c_.n_heads, c_.n_heads / c_.n_kv_heads, c_.head_dim, q_.data(), att_.data(),
        [&](int t) { return b.positions[(size_t)t] + 1; },
        [&](int t, int p) -> const float* {
          const auto& w = wide_[(size_t)seg_of_[(size_t)t]];
          if (!w.empty()) return w.data() + (size_t)p * 2 * KV;
          thread_local std::vector<float> kbuf;
          return load_kv(kv_at(table(t), p, l, 0), kbuf);
        },
        [&](int t, int p) -> const float* {
          const auto& w = wide_[(size_t)seg_of_[(size_t)t]];
          if (!w.empty()) return w.data() + (size_t)p * 2 * KV + KV;
          thread_local std::vector<float> vbuf;
          return load_kv(kv_at(table(t), p, l, 1), vbuf);
        });
  }

  ModelConfig c_;
  LlamaWeights w_;
  cpu::WeightPages pages_;  // owns the weights when place() copied them (declared after w_: freed first)
  int ctx_;
  mutable ThreadPool pool_;
  cpu::Activations act_;
  DType dtype_ = DType::F32;
  bool q4_ = false;  // some matrices run as Q4_1 (a GGUF's 4-bit blocks, dtype auto)
  bool requested_q4_ = false;  // dtype "q4"
  std::vector<float> rope_;
  bool kv_int8_ = false;
  int kv_group_ = 32;
  size_t kv_row_bytes_ = 0, block_bytes_ = 0;
  std::vector<std::unique_ptr<uint8_t[]>> blocks_;  // allocated on first use
  std::atomic<size_t> allocated_blocks_{0};       // read by info() from other threads
  std::vector<float> x_, xb_, q_, k_, v_, att_, h1_, h3_, logits_;
  std::vector<float> xo_;  // the output rows after the last RMSNorm (read_hidden)
  std::vector<int> seg_of_;
  std::vector<std::vector<float>> wide_;  // int8 cache: widened rows of multi-token segments (one layer)
  int n_out_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const ModelConfig& c, LlamaWeights weights, const BackendOptions& o) {
  return std::make_unique<CpuBackend>(c, std::move(weights), o);
}

}  // namespace l2
