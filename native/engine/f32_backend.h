// The fp32 path (dtype 'f32' on CUDA) as a backend, written once over a device policy `Dev`: the GPU
// (cuda/cuda_f32_backend.cu) or the host running the same operations in a loop (cpu/f32_emulated.cc,
// which tests this file and kernels/f32_ops.h on machines without a GPU). Weights are widened to fp32
// and stored transposed ([cols][rows]: kernels/f32_ops.h MatVec), the KV cache is paged fp32, and
// every step runs the operations of f32_ops.h in llama2.c's order (see there why).
//
// Dev provides:
//   void* alloc(uint64_t bytes)                    zeroed device memory, ERR_OUT_OF_MEMORY when short
//   uint64_t free_bytes()                          for the budget check before the weights go up
//   void upload(void* dst, const void* src, size_t n), download(...), copy(...)   (stream-ordered)
//   template <class F> void run(int64_t n, const F& f)  f(i) for i in [0, n), in any order or at once
//   void sync()                                    waits for everything enqueued
//   void activate()                                makes the device current on the calling thread
//   std::string name(); uint64_t total_bytes()
#pragma once
#include <algorithm>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../../kernels/f32_ops.h"
#include "../common/error.h"
#include "../common/thread_pool.h"
#include "backend.h"
#include "cuda_plan.h"
#include "sub_batch.h"

namespace l2 {

template <class Dev>
class F32Backend final : public Backend {
 public:
  // Dev is built in place from dev_args (it owns device memory: never copied or moved).
  template <class... DevArgs>
  F32Backend(const ModelConfig& c, const LlamaWeights& w, const BackendOptions& o, DevArgs&&... dev_args)
      : dev_(std::forward<DevArgs>(dev_args)...), c_(c), ctx_(o.context_length), n_blocks_(o.n_kv_blocks) {
    if (o.kv_int8) fail(code::kInvalidArgument, "kvCacheType: 'int8' is not available with dtype 'f32' on CUDA (the fp32 path keeps an fp32 cache)");
    if (c_.head_dim % 2 != 0) fail(code::kConfig, "the fp32 CUDA path needs an even head_dim (head_dim = " + std::to_string(c_.head_dim) + ")");
    plan_ = plan_f32(c_, ctx_, n_blocks_);
    if (plan_.total() + (256ull << 20) > dev_.free_bytes())
      fail(code::kOutOfMemory, "dtype 'f32' needs " + gib(plan_.total()) + " of GPU memory (weights " + gib(plan_.weights) + ", KV cache " +
                                   gib(plan_.kv_cache) + ") but " + dev_.name() + " has " + gib(dev_.free_bytes()) +
                                   " free: try dtype 'f16' or 'int8', a smaller contextLength or maxSequences, or device 'cpu'");
    upload_weights(w, o);
    kv_ = falloc((uint64_t)n_blocks_ * kKvBlockSize * c_.kv_dim() * 2 * c_.n_layers);
    const std::vector<float> rope = rope_table(c_, ctx_);
    rope_ = static_cast<float*>(alloc(plan_.rope));
    dev_.upload(rope_, rope.data(), plan_.rope);
    for (auto [buf, bytes] : {std::pair{&x_, plan_.x}, {&xb_, plan_.xb}, {&q_, plan_.q}, {&att_, plan_.att}, {&k_, plan_.k}, {&v_, plan_.v},
                              {&h1_, plan_.h1}, {&h3_, plan_.h3}, {&xo_, plan_.xo}, {&logits_, plan_.logits}})
      *buf = static_cast<float*>(alloc(bytes));
    in_host_.resize(plan_.inputs / 4);
    in_dev_ = static_cast<int32_t*>(alloc(plan_.inputs));
    dev_.sync();
    if (o.progress) o.progress({"ready", plan_.weights, plan_.weights, total_tensors_, total_tensors_});
  }

  BackendInfo info() const override {
    BackendInfo i;
    i.device = "cuda";
    i.name = dev_.name();
    i.dtype = "f32";
    i.kv_dtype = "f32";
    i.weight_bytes = plan_.weights;
    i.kv_bytes = plan_.kv_cache;
    i.device_memory_used = allocated_;
    i.device_memory_total = dev_.total_bytes();
    return i;
  }

  int max_step_sequences() const override { return plan_.max_segments; }

  void forward(const ForwardBatch& b) override {
    dev_.activate();
    if (b.max_blocks > plan_.max_blocks) fail(code::kInternal, "fp32 path: a block table is longer than the context");
    n_out_ = 0;
    for_each_sub_batch(b, plan_.max_tokens, plan_.max_segments, [&](const SubBatch& sub) { run_sub(b, sub); });
  }

  void read_logits(float* dst) override {
    dev_.activate();
    dev_.download(dst, logits_, (size_t)n_out_ * c_.vocab_size * 4);
    dev_.sync();
  }

  void read_hidden(float* dst) override {
    dev_.activate();
    dev_.download(dst, xo_, (size_t)n_out_ * c_.dim * 4);
    dev_.sync();
  }

  void top_k(int k, int32_t* ids, float* vals) override {
    std::vector<float> all((size_t)n_out_ * c_.vocab_size);
    read_logits(all.data());
    host_top_k(all.data(), n_out_, c_.vocab_size, k, ids, vals);
  }

  void copy_block(int32_t src, int32_t dst) override {
    dev_.activate();
    const size_t rows = (size_t)kKvBlockSize * c_.kv_dim();
    for (int l = 0; l < c_.n_layers; ++l)
      for (float* pool : {k_cache(l), v_cache(l)}) dev_.copy(pool + (size_t)dst * rows, pool + (size_t)src * rows, rows * 4);
  }

  // A block is [layer][k|v][slot][kv_dim] floats.
  uint64_t kv_block_bytes() const override { return (uint64_t)c_.n_layers * 2 * kKvBlockSize * c_.kv_dim() * 4; }

  void read_block(int32_t b, uint8_t* dst) override {
    dev_.activate();
    const size_t bytes = (size_t)kKvBlockSize * c_.kv_dim() * 4;
    for (int l = 0; l < c_.n_layers; ++l)
      for (int kv = 0; kv < 2; ++kv) dev_.download(dst + ((size_t)l * 2 + kv) * bytes, (kv ? v_cache(l) : k_cache(l)) + (size_t)b * bytes / 4, bytes);
    dev_.sync();
  }

  void write_block(int32_t b, const uint8_t* src) override {
    dev_.activate();
    const size_t bytes = (size_t)kKvBlockSize * c_.kv_dim() * 4;
    for (int l = 0; l < c_.n_layers; ++l)
      for (int kv = 0; kv < 2; ++kv) dev_.upload((kv ? v_cache(l) : k_cache(l)) + (size_t)b * bytes / 4, src + ((size_t)l * 2 + kv) * bytes, bytes);
    dev_.sync();
  }

 private:
  struct Layer {
    float *wq, *wk, *wv, *wo, *w1, *w2, *w3, *attn_norm, *ffn_norm;
  };

  void* alloc(uint64_t bytes) {
    void* p = dev_.alloc(bytes);
    allocated_ += bytes;
    return p;
  }
  float* falloc(uint64_t n) { return static_cast<float*>(alloc(n * 4)); }

  float* k_cache(int l) const { return kv_ + (size_t)l * 2 * n_blocks_ * kKvBlockSize * c_.kv_dim(); }
  float* v_cache(int l) const { return k_cache(l) + (size_t)n_blocks_ * kKvBlockSize * c_.kv_dim(); }

  // A matrix widened to fp32: rows as they are (`transpose` false: the embedding, gathered by row) or
  // transposed, converted on host threads and uploaded.
  float* upload_matrix(const Matrix& m, bool transpose, ThreadPool& pool, const BackendOptions& o) {
    const int64_t N = m.rows, K = m.cols;
    std::vector<float> host((size_t)(N * K));
    pool.parallel_for(N, 16, [&](int64_t r0, int64_t r1) {
      std::vector<float> row((size_t)K);
      for (int64_t r = r0; r < r1; ++r) {
        convert_row(m.dtype, m.row(r), DType::F32, reinterpret_cast<uint8_t*>(transpose ? row.data() : &host[(size_t)(r * K)]), K);
        if (transpose)
          for (int64_t j = 0; j < K; ++j) host[(size_t)(j * N + r)] = row[(size_t)j];
      }
    });
    float* d = falloc(host.size());
    dev_.upload(d, host.data(), host.size() * 4);
    dev_.sync();  // `host` is freed on return
    uploaded_ += host.size() * 4;
    if (o.progress) o.progress({"upload", uploaded_, plan_.weights, ++tensors_done_, total_tensors_});
    return d;
  }

  float* upload_vector(const std::vector<float>& v) {
    float* d = falloc(v.size());
    dev_.upload(d, v.data(), v.size() * 4);
    dev_.sync();
    uploaded_ += v.size() * 4;
    return d;
  }

  void upload_weights(const LlamaWeights& w, const BackendOptions& o) {
    ThreadPool pool(o.threads > 0 ? o.threads : std::min(8, default_threads()));
    total_tensors_ = 2 + 7 * c_.n_layers;
    emb_ = upload_matrix(w.tok_embeddings, false, pool, o);
    out_t_ = upload_matrix(c_.tied_output ? w.tok_embeddings : w.output, true, pool, o);
    for (const LayerWeights& lw : w.layers) {
      Layer L;
      L.wq = upload_matrix(lw.wq, true, pool, o);
      L.wk = upload_matrix(lw.wk, true, pool, o);
      L.wv = upload_matrix(lw.wv, true, pool, o);
      L.wo = upload_matrix(lw.wo, true, pool, o);
      L.w1 = upload_matrix(lw.w1, true, pool, o);
      L.w2 = upload_matrix(lw.w2, true, pool, o);
      L.w3 = upload_matrix(lw.w3, true, pool, o);
      L.attn_norm = upload_vector(lw.attn_norm);
      L.ffn_norm = upload_vector(lw.ffn_norm);
      layers_.push_back(L);
    }
    final_norm_ = upload_vector(w.output_norm);
  }

  // One sub-batch: inputs up, then llama2.c's forward for every token at once.
  void run_sub(const ForwardBatch& b, const SubBatch& sub) {
    namespace f = f32ops;
    const int T = sub.n_tokens(), S = (int)sub.segs.size(), MB = plan_.max_blocks;
    const int D = c_.dim, Q = c_.q_dim(), KV = c_.kv_dim(), F = c_.ffn_dim, V = c_.vocab_size, H = c_.n_heads, HKV = c_.n_kv_heads,
              HD = c_.head_dim;
    // Inputs: tokens, positions, slots, segment of each token [T each], output rows [R], tables [S][MB], where
    // R = max(S, this sub-batch's outputs): scoring (every token an output) may have more outputs than
    // segments, never more than max_segments in all, which the buffer's S-sized region covers.
    const int R = std::max(S, sub_outputs(b, sub));
    int32_t* in = in_host_.data();
    int32_t *tokens = in, *positions = in + T, *slots = in + 2 * T, *seg_of = in + 3 * T, *out_rows = in + 4 * T, *tables = out_rows + R;
    int t = 0, n_out = 0;
    for (int s = 0; s < S; ++s) {
      const Segment& sg = sub.segs[(size_t)s];
      const int32_t* table = &b.block_tables[(size_t)sub.table_rows[(size_t)s] * b.max_blocks];
      for (int j = 0; j < MB; ++j) tables[(size_t)s * MB + j] = j < b.max_blocks ? std::max(table[j], 0) : 0;
      for (int j = 0; j < sg.count; ++j, ++t) {
        const int bt = sg.start + j, pos = b.positions[(size_t)bt];
        tokens[t] = b.tokens[(size_t)bt];
        positions[t] = pos;
        slots[t] = table[pos / kKvBlockSize] * kKvBlockSize + pos % kKvBlockSize;
        seg_of[t] = s;
        if (std::binary_search(b.output_rows.begin(), b.output_rows.end(), bt)) out_rows[n_out++] = t;
      }
    }
    if (n_out_ + n_out > plan_.max_segments) fail(code::kInternal, "fp32 path: too many outputs in one step");
    dev_.upload(in_dev_, in, (size_t)(4 * T + R + S * MB) * 4);
    const int32_t* d = in_dev_;
    const int32_t *d_tokens = d, *d_positions = d + T, *d_slots = d + 2 * T, *d_seg_of = d + 3 * T, *d_out_rows = d + 4 * T,
                  *d_tables = d_out_rows + R;
    const bool halves = c_.rope_layout == RopeLayout::Halves;

    dev_.run((int64_t)T * D, f::Embed{emb_, d_tokens, x_, D});
    for (int l = 0; l < c_.n_layers; ++l) {
      const Layer& L = layers_[(size_t)l];
      dev_.run(T, f::RmsNorm{x_, nullptr, L.attn_norm, xb_, D, c_.rms_eps});
      dev_.run((int64_t)T * Q, f::MatVec{L.wq, xb_, q_, Q, D, false});
      dev_.run((int64_t)T * KV, f::MatVec{L.wk, xb_, k_, KV, D, false});
      dev_.run((int64_t)T * KV, f::MatVec{L.wv, xb_, v_, KV, D, false});
      dev_.run((int64_t)T * H * (HD / 2), f::Rope{q_, d_positions, rope_, H, HD, halves});
      dev_.run((int64_t)T * HKV * (HD / 2), f::Rope{k_, d_positions, rope_, HKV, HD, halves});
      dev_.run((int64_t)T * KV, f::KvWrite{k_, v_, d_slots, k_cache(l), v_cache(l), KV});
      dev_.run((int64_t)T * H, f::Attention{q_, k_cache(l), v_cache(l), att_, d_positions, d_seg_of, d_tables, MB, H, HKV, HD});
      dev_.run((int64_t)T * D, f::MatVec{L.wo, att_, x_, D, Q, true});
      dev_.run(T, f::RmsNorm{x_, nullptr, L.ffn_norm, xb_, D, c_.rms_eps});
      dev_.run((int64_t)T * F, f::MatVec{L.w1, xb_, h1_, F, D, false});
      dev_.run((int64_t)T * F, f::MatVec{L.w3, xb_, h3_, F, D, false});
      dev_.run((int64_t)T * F, f::SwiGlu{h1_, h3_});
      dev_.run((int64_t)T * D, f::MatVec{L.w2, h1_, x_, D, F, true});
    }
    if (n_out > 0) {
      float* xo = xo_ + (size_t)n_out_ * D;  // the step's rows stay for read_hidden
      dev_.run(n_out, f::RmsNorm{x_, d_out_rows, final_norm_, xo, D, c_.rms_eps});
      dev_.run((int64_t)n_out * V, f::MatVec{out_t_, xo, logits_ + (size_t)n_out_ * V, V, D, false});
    }
    n_out_ += n_out;
    dev_.sync();  // in_host_ is rewritten by the next sub-batch
  }

  Dev dev_;
  ModelConfig c_;
  int ctx_, n_blocks_;
  F32Plan plan_;
  uint64_t allocated_ = 0, uploaded_ = 0;
  int tensors_done_ = 0, total_tensors_ = 0;
  float *emb_ = nullptr, *out_t_ = nullptr, *final_norm_ = nullptr;
  std::vector<Layer> layers_;
  float *kv_ = nullptr, *rope_ = nullptr;
  float *x_ = nullptr, *xb_ = nullptr, *q_ = nullptr, *att_ = nullptr, *k_ = nullptr, *v_ = nullptr, *h1_ = nullptr, *h3_ = nullptr,
        *xo_ = nullptr, *logits_ = nullptr;
  std::vector<int32_t> in_host_;
  int32_t* in_dev_ = nullptr;
  int n_out_ = 0;
};

}  // namespace l2
