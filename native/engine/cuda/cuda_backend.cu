// The CUDA backend: weights uploaded once (fp16, int8 with per-32 scales, or GGUF's 4-bit blocks as they are),
// a paged fp16 KV cache,
// and the Llama forward as a sequence of fused kernels (kernels/). Decode steps of up to 64 sequences
// replay a captured CUDA graph (one launch, one host sync to hand the tokens back); other steps
// (prefill, bigger batches) run eagerly. Each matrix runs on the GEMV, the tensor-core decode kernel
// or the tiled GEMM by the step's token count (mat_dispatch.cuh).
//
// Layout conventions (see kernels/kernels.h): matrices padded to N % 128 and K % 64 with zeros,
// activations row-major with padded row strides whose pad columns stay zero forever; Q/K rows of
// Hugging Face checkpoints are permuted at upload into the interleaved rotary layout; gate/up rows
// are interleaved (2i = gate i, 2i+1 = up i) so SwiGLU fuses into the matrix epilogue.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <thread>

#include "../../../kernels/kernels.h"
#include "../../../kernels/launch.cuh"
#include "../../common/error.h"
#include "../../common/half.h"
#include "../../common/thread_pool.h"
#include "../../model/ggml_blocks.h"
#include "../backend.h"
#include "../cuda_plan.h"
#include "../sub_batch.h"
#include "cuda_util.cuh"
#include "mat_dispatch.cuh"

namespace l2 {

namespace k = kernels;
static_assert(kCudaPadN == k::kPadN && kCudaPadK == k::kPadK, "cuda_plan.h pads as the kernels do");

namespace {

#define CK(x) check_cuda((x), #x, ": try dtype 'int8', kvCacheType 'int8', a smaller contextLength or maxSequences, or device 'cpu'")

// Where device row r of a matrix comes from: row `row` of `m` (nullptr: a zero pad row).
struct RowSrc {
  const Matrix* m;
  int64_t row;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(const ModelConfig& c, LlamaWeights w, const BackendOptions& o) : c_(c), ctx_(o.context_length), n_blocks_(o.n_kv_blocks) {
    props_ = use_cuda_device(o.device_index);
    dev_ = o.device_index;
    if (c_.dim % 8 != 0 || c_.dim > 16384)
      fail(code::kConfig, "the CUDA backend needs dim to be a multiple of 8 and at most 16384 (dim = " + std::to_string(c_.dim) + ")");
    if (c_.head_dim != 8 && c_.head_dim != 16 && c_.head_dim != 32 && c_.head_dim != 64 && c_.head_dim != 128 && c_.head_dim != 256)
      fail(code::kConfig, "the CUDA backend supports head_dim 8, 16, 32, 64, 128 or 256 (head_dim = " + std::to_string(c_.head_dim) + ")");
    if (c_.n_heads / c_.n_kv_heads > 8)
      fail(code::kConfig, "the CUDA backend supports up to 8 query heads per KV head");
    k::set_pdl(props_.major >= 9);  // programmatic dependent launch: Hopper and newer
    if (o.dtype != "auto" && o.dtype != "f16" && o.dtype != "int8" && o.dtype != "q4")
      fail(code::kInvalidArgument, "dtype: the CUDA backend runs 'f32', 'f16', 'int8' or 'q4' weights (got '" + o.dtype + "')");
    dtype_ = o.dtype;
    kv_int8_ = o.kv_int8;
    try {
      setup(w, o);
    } catch (...) {
      release_all();
      throw;
    }
  }

  ~CudaBackend() override { release_all(); }

  BackendInfo info() const override {
    BackendInfo i;
    i.device = "cuda";
    i.name = std::string(props_.name) + " (sm_" + std::to_string(props_.major * 10 + props_.minor) + ", " + std::to_string(props_.multiProcessorCount) + " SMs)";
    i.dtype = dtype_name_;
    i.kv_dtype = kv_int8_ ? "int8" : "f16";
    i.weight_bytes = weight_bytes_;
    i.kv_bytes = kv_bytes_;
    i.device_memory_used = allocated_;
    i.device_memory_total = props_.totalGlobalMem;
    return i;
  }

  void forward(const ForwardBatch& b) override {
    CK(cudaSetDevice(dev_));
    n_out_total_ = 0;
    out_chunks_.clear();
    for_each_sub_batch(b, M_, S_, [&](const SubBatch& sub) { run_sub(b, sub); });
  }

  void read_logits(float* dst) override {
    const int V = c_.vocab_size;
    for (size_t i = 0; i < out_chunks_.size(); ++i) {
      const OutChunk& oc = out_chunks_[i];
      CK(cudaMemcpy2DAsync(dst + (size_t)oc.first * V, (size_t)V * 4, oc.logits, (size_t)Vpad_ * 4, (size_t)V * 4, oc.n, cudaMemcpyDeviceToHost, stream_));
    }
    CK(cudaStreamSynchronize(stream_));
  }

  // xo_ keeps the output rows' final residual un-normed (the classifier's GEMV fuses the norm): the last
  // RMSNorm runs here, in fp32 like the CPU backend's.
  void read_hidden(float* dst) override {
    const int D = c_.dim;
    std::vector<float> rows((size_t)n_out_total_ * D);
    if (n_out_total_ > 0)
      CK(cudaMemcpy2DAsync(rows.data(), (size_t)D * 4, xo_, (size_t)Dpad_ * 4, (size_t)D * 4, n_out_total_, cudaMemcpyDeviceToHost, stream_));
    CK(cudaStreamSynchronize(stream_));
    for (int o = 0; o < n_out_total_; ++o) host_rmsnorm(dst + (size_t)o * D, &rows[(size_t)o * D], final_norm_host_.data(), D, c_.rms_eps);
  }

  void top_k(int kk, int32_t* ids, float* vals) override {
    const int V = c_.vocab_size;
    kk = std::min(kk, V);
    if (kk > 256) {  // beyond the device kernel: sort on the host
      std::vector<float> all((size_t)n_out_total_ * V);
      read_logits(all.data());
      host_top_k(all.data(), n_out_total_, V, kk, ids, vals);
      return;
    }
    for (const OutChunk& oc : out_chunks_) {
      k::topk(oc.logits, Vpad_, oc.n, V, kk, topk_ids_ + (size_t)oc.first * kk, topk_vals_ + (size_t)oc.first * kk, nullptr, stream_);
    }
    CK(cudaGetLastError());
    CK(cudaMemcpyAsync(pinned_out_, topk_ids_, (size_t)n_out_total_ * kk * 4, cudaMemcpyDeviceToHost, stream_));
    CK(cudaMemcpyAsync(pinned_out_ + (size_t)n_out_total_ * kk * 4, topk_vals_, (size_t)n_out_total_ * kk * 4, cudaMemcpyDeviceToHost, stream_));
    CK(cudaStreamSynchronize(stream_));
    std::memcpy(ids, pinned_out_, (size_t)n_out_total_ * kk * 4);
    std::memcpy(vals, pinned_out_ + (size_t)n_out_total_ * kk * 4, (size_t)n_out_total_ * kk * 4);
  }

  int max_step_sequences() const override { return S_; }

  void copy_block(int32_t src, int32_t dst) override {
    CK(cudaSetDevice(dev_));
    each_kv_part([&](uint8_t* pool, uint64_t b) { CK(cudaMemcpyAsync(pool + dst * b, pool + src * b, b, cudaMemcpyDeviceToDevice, stream_)); });
  }

  // Host layout: per layer, the block's K values, V values, then (int8) K scales, V scales.
  uint64_t kv_block_bytes() const override {
    uint64_t n = 0;
    each_kv_part([&](uint8_t*, uint64_t b) { n += b; });
    return n;
  }

  void read_block(int32_t b, uint8_t* dst) override { move_block(b, dst, true); }
  void write_block(int32_t b, const uint8_t* src) override { move_block(b, const_cast<uint8_t*>(src), false); }

 private:
  struct OutChunk {
    int first, n;
    float* logits;
  };

  // Calls f(pool, bytes of one block) for each layer's K values, V values, then (int8) K scales, V scales:
  // the pools of layer l's part are [n_blocks][block bytes].
  template <class F>
  void each_kv_part(F&& f) const {
    const uint64_t vb = plan_.kv_layer_k / n_blocks_, sb = plan_.kv_layer_scales / n_blocks_;
    for (int l = 0; l < c_.n_layers; ++l)
      for (int part = 0; part < (kv_int8_ ? 4 : 2); ++part) f(kv_part(l, part), part < 2 ? vb : sb);
  }

  // One block between the pools and host memory (read: device -> host), in kv_block_bytes()'s layout.
  void move_block(int32_t blk, uint8_t* host, bool read) {
    CK(cudaSetDevice(dev_));
    each_kv_part([&](uint8_t* pool, uint64_t b) {
      if (read) CK(cudaMemcpyAsync(host, pool + blk * b, b, cudaMemcpyDeviceToHost, stream_));
      else CK(cudaMemcpyAsync(pool + blk * b, host, b, cudaMemcpyHostToDevice, stream_));
      host += b;
    });
    CK(cudaStreamSynchronize(stream_));
  }

  // ---------------------------------------------------------------- setup
  void* dalloc(size_t bytes) {
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 256));
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail(code::kOutOfMemory, "out of GPU memory allocating " + gib(bytes) + " (" + gib(free_b) + " free of " + gib(total_b) +
                                   " on " + props_.name + "): try dtype 'int8', kvCacheType 'int8', a smaller contextLength or maxSequences, or device 'cpu'");
    }
    allocs_.push_back(p);
    allocated_ += bytes;
    return p;
  }

  void release_all() {
    cudaSetDevice(dev_);
    for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g.exec);
    graphs_.clear();
    for (void* p : allocs_) cudaFree(p);
    allocs_.clear();
    if (pinned_in_) cudaFreeHost(pinned_in_);
    if (pinned_out_) cudaFreeHost(pinned_out_);
    for (auto* p : staging_) if (p) cudaFreeHost(p);
    pinned_in_ = nullptr;
    pinned_out_ = nullptr;
    staging_[0] = staging_[1] = nullptr;
    for (auto& e : staging_done_) if (e) cudaEventDestroy(e);
    staging_done_[0] = staging_done_[1] = nullptr;
    if (stream_) cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }

  void setup(LlamaWeights& w, const BackendOptions& o) {
    CK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    const int D = c_.dim, Q = c_.q_dim(), KV = c_.kv_dim(), F = c_.ffn_dim, V = c_.vocab_size, L = c_.n_layers;
    // Every buffer's size comes from the plan (cuda_plan.h), which predicts GPU memory without a GPU.
    kinds_ = cuda_matrix_kinds(c_, file_types(w), dtype_);
    // Reported dtype: "int8" where the file's quantized blocks (Q8_0, or decoded 4-6 bit ones) or dtype 'int8'
    // made the matrices int8, else "f16"; "q4+" before it when some run as 4-bit (a Q4_K_M file: "q4+int8").
    {
      const DType wq0 = w.layers[0].wq.dtype;
      const bool int8 = dtype_ == "int8" || (dtype_ == "auto" && (wq0 == DType::Q8_0 || is_load_only(wq0)));
      bool w4 = kinds_.out == CudaFmt::W4;
      for (const CudaLayerKinds& k : kinds_.layers) w4 = w4 || k.qkv == CudaFmt::W4 || k.wo == CudaFmt::W4 || k.w13 == CudaFmt::W4 || k.w2 == CudaFmt::W4;
      dtype_name_ = dtype_ == "q4" ? "q4" : std::string(w4 ? "q4+" : "") + (int8 ? "int8" : "f16");
    }
    plan_ = plan_cuda(c_, kinds_, kv_int8_, ctx_, n_blocks_);
    Dpad_ = plan_.dpad;
    Qpad_ = plan_.qpad;
    Fpad_ = plan_.fpad;
    Vpad_ = plan_.vpad;
    M_ = plan_.max_tokens;
    S_ = plan_.max_segments;
    max_blocks_ = plan_.max_blocks;
    prefill_attn_ = plan_.prefill_attn;
    if (plan_.gemm_ws < k::kGemmSplitKBytes + k::kGemmSplitKCounters * sizeof(int))
      fail(code::kInternal, "cuda_plan: GEMM split-K workspace smaller than the kernels need");
    if (plan_.attn_ws < k::attention_decode_counter_bytes(plan_.decode_counter_tokens, c_.n_heads) +
                            k::attention_decode_partial_bytes(plan_.decode_chunk, c_.n_heads, c_.head_dim, ctx_))
      fail(code::kInternal, "cuda_plan: decode-attention workspace smaller than the kernels need");

    // Check the whole budget before allocating anything large.
    const uint64_t weights = plan_.weights;
    kv_bytes_ = plan_.kv_cache;
    const uint64_t acts = plan_.buffers();
    size_t free_b = 0, total_b = 0;
    CK(cudaMemGetInfo(&free_b, &total_b));
    uint64_t need = weights + kv_bytes_ + acts;
    if (need + (256ull << 20) > free_b)
      fail(code::kOutOfMemory, "the model needs " + gib(need) + " of GPU memory (weights " + gib(weights) + ", KV cache " + gib(kv_bytes_) +
                                   " for " + std::to_string(n_blocks_ * kKvBlockSize) + " tokens, buffers " + gib(acts) + ") but " + props_.name +
                                   " has " + gib(free_b) + " free: try dtype 'int8', kvCacheType 'int8', a smaller contextLength or maxSequences, or device 'cpu'");

    // Staging for uploads: two pinned buffers, converted by host threads while the other copies.
    for (int i = 0; i < 2; ++i) {
      CK(cudaMallocHost(&staging_[i], kStaging));
      CK(cudaEventCreateWithFlags(&staging_done_[i], cudaEventDisableTiming));
    }
    ThreadPool pool(std::min(8, default_threads()));
    progress_ = o.progress;
    total_bytes_ = weights;
    total_tensors_ = 3 + 4 * L;

    // Embedding and classifier.
    emb_ = upload(pool, "token embeddings", V, D, rows_of(w.tok_embeddings), kinds_.emb);
    out_ = c_.tied_output ? emb_ : upload(pool, "output", V, D, rows_of(w.output), kinds_.out);
    layers_.resize((size_t)L);
    for (int l = 0; l < L; ++l) {
      LayerWeights& lw = w.layers[(size_t)l];
      DevLayer& dl = layers_[(size_t)l];
      std::string p = "layer " + std::to_string(l) + " ";
      const CudaLayerKinds& lk = kinds_.layers[(size_t)l];
      dl.qkv = upload(pool, p + "qkv", Q + 2 * KV, D, qkv_rows(lw), lk.qkv);
      dl.wo = upload(pool, p + "wo", D, Q, rows_of(lw.wo), lk.wo);
      dl.w13 = upload(pool, p + "w13", 2 * F, D, interleaved_rows(lw.w1, lw.w3), lk.w13);
      dl.w2 = upload(pool, p + "w2", D, F, rows_of(lw.w2), lk.w2);
      dl.attn_norm = upload_f32(lw.attn_norm);
      dl.ffn_norm = upload_f32(lw.ffn_norm);
    }
    final_norm_ = upload_f32(w.output_norm);
    final_norm_host_.assign(w.output_norm.begin(), w.output_norm.end());
    CK(cudaStreamSynchronize(stream_));
    for (int i = 0; i < 2; ++i) {
      cudaFreeHost(staging_[i]);
      staging_[i] = nullptr;
    }

    // KV cache, rotary table, activations.
    kv_ = static_cast<uint8_t*>(dalloc(kv_bytes_));
    std::vector<float> rope = rope_table(c_, ctx_);
    rope_ = static_cast<float2*>(dalloc(rope.size() * 4));
    CK(cudaMemcpy(rope_, rope.data(), rope.size() * 4, cudaMemcpyHostToDevice));
    x_ = static_cast<float*>(dalloc(plan_.x));
    xn_ = static_cast<half*>(dalloc(plan_.xn));
    q_ = static_cast<half*>(dalloc(plan_.q));
    att_ = static_cast<half*>(dalloc(plan_.att));
    h_ = static_cast<half*>(dalloc(plan_.h));
    // int8 KV: the QKV epilogue's K/V rows, quantized into the cache by kv_quantize.
    if (kv_int8_) kv_stage_ = plan_.stage_in_h ? h_ : static_cast<half*>(dalloc(plan_.stage));
    xo_ = static_cast<float*>(dalloc(plan_.xo));
    logits_ = static_cast<float*>(dalloc(plan_.logits));
    topk_ids_ = static_cast<int32_t*>(dalloc(plan_.topk / 2));
    topk_vals_ = static_cast<float*>(dalloc(plan_.topk / 2));
    attn_ws_ = dalloc(plan_.attn_ws);
    {
      char* g = static_cast<char*>(dalloc(plan_.gemm_ws));
      split_k_.ws = reinterpret_cast<float*>(g);
      split_k_.ws_bytes = k::kGemmSplitKBytes;
      split_k_.counters = reinterpret_cast<int*>(g + k::kGemmSplitKBytes);
      split_k_.n_counters = k::kGemmSplitKCounters;
    }
    // Pad columns must stay zero (they meet zero weight columns, but NaN * 0 would not be 0).
    CK(cudaMemsetAsync(x_, 0, plan_.x, stream_));
    CK(cudaMemsetAsync(xn_, 0, plan_.xn, stream_));
    CK(cudaMemsetAsync(q_, 0, plan_.q, stream_));
    CK(cudaMemsetAsync(att_, 0, plan_.att, stream_));
    CK(cudaMemsetAsync(h_, 0, plan_.h, stream_));
    CK(cudaMemsetAsync(xo_, 0, plan_.xo, stream_));
    CK(cudaMemsetAsync(kv_, 0, kv_bytes_, stream_));
    CK(cudaMemsetAsync(attn_ws_, 0, plan_.attn_ws, stream_));  // decode attention's merge counters start at 0
    CK(cudaMemsetAsync(split_k_.counters, 0, k::kGemmSplitKCounters * sizeof(int), stream_));  // GEMM split-K tile counters
    in_bytes_ = plan_.inputs;
    in_dev_ = static_cast<int32_t*>(dalloc(in_bytes_));
    CK(cudaMallocHost(&pinned_in_, in_bytes_));
    CK(cudaMallocHost(&pinned_out_, (size_t)S_ * 256 * 4 * 2));
    CK(cudaStreamSynchronize(stream_));
    if (progress_) progress_({"ready", total_bytes_, total_bytes_, total_tensors_, total_tensors_});
  }

  // The file's matrix types, for cuda_matrix_kinds (the one rule of which device format each matrix gets).
  static FileMatrixTypes file_types(const LlamaWeights& w) {
    FileMatrixTypes t;
    t.emb = w.tok_embeddings.dtype;
    t.out = w.output.dtype;
    for (const LayerWeights& lw : w.layers) t.layers.push_back({lw.wq.dtype, lw.wk.dtype, lw.wv.dtype, lw.wo.dtype, lw.w1.dtype, lw.w2.dtype, lw.w3.dtype});
    return t;
  }

  std::vector<RowSrc> rows_of(const Matrix& m) {
    std::vector<RowSrc> r((size_t)m.rows);
    for (int64_t i = 0; i < m.rows; ++i) r[(size_t)i] = {&m, i};
    return r;
  }

  // Q and K rows in the interleaved rotary layout (HF checkpoints permuted back), then V.
  std::vector<RowSrc> qkv_rows(const LayerWeights& lw) {
    std::vector<RowSrc> r;
    auto add = [&](const Matrix& m, bool rotary) {
      const int hd = c_.head_dim;
      for (int64_t i = 0; i < m.rows; ++i) {
        int64_t src = i;
        if (rotary && c_.rope_layout == RopeLayout::Halves) {
          int64_t h = i / hd, j = i % hd;  // device row j of the head <- pair member j / 2
          src = h * hd + (j % 2 == 0 ? j / 2 : j / 2 + hd / 2);
        }
        r.push_back({&m, src});
      }
    };
    add(lw.wq, true);
    add(lw.wk, true);
    add(lw.wv, false);
    return r;
  }

  std::vector<RowSrc> interleaved_rows(const Matrix& gate, const Matrix& up) {
    std::vector<RowSrc> r;
    for (int64_t i = 0; i < gate.rows; ++i) {
      r.push_back({&gate, i});
      r.push_back({&up, i});
    }
    return r;
  }

  float* upload_f32(const std::vector<float>& v) {
    float* d = static_cast<float*>(dalloc(v.size() * 4));
    CK(cudaMemcpy(d, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
    return d;
  }

  // Converts rows on host threads into a pinned staging buffer and copies them up, double-buffered.
  DevMat upload(ThreadPool& pool, const std::string& what, int n, int kk, const std::vector<RowSrc>& rows, CudaFmt fmt) {
    DevMat m;
    m.fmt = fmt;
    m.n = n;
    m.k = kk;
    m.npad = round_up(n, k::kPadN);
    m.ldw = round_up(kk, k::kPadK);
    const bool int8 = fmt == CudaFmt::W8, w4 = fmt == CudaFmt::W4;
    const size_t row_bytes_dev = int8 ? (size_t)m.ldw + (size_t)m.ldw / 32 * 2 : w4 ? (size_t)m.ldw / 2 + (size_t)m.ldw / 32 * 4 : (size_t)m.ldw * 2;
    if (int8) {
      m.q = static_cast<int8_t*>(dalloc((size_t)m.npad * m.ldw));
      m.s = static_cast<half*>(dalloc((size_t)m.npad * (m.ldw / 32) * 2));
    } else if (w4) {
      m.q4 = static_cast<uint8_t*>(dalloc((size_t)m.npad * m.ldw / 2));
      m.m = static_cast<half2*>(dalloc((size_t)m.npad * (m.ldw / 32) * 4));
    } else {
      m.w = static_cast<half*>(dalloc((size_t)m.npad * m.ldw * 2));
    }
    const int rows_per_chunk = (int)std::max<size_t>(1, kStaging / row_bytes_dev);
    for (int r0 = 0; r0 < m.npad; r0 += rows_per_chunk) {
      const int nr = std::min(rows_per_chunk, m.npad - r0);
      const int buf = stage_++ % 2;
      CK(cudaEventSynchronize(staging_done_[buf]));
      uint8_t* st = staging_[buf];
      // int8: [nr][ldw] quants, then [nr][ldw/32] scales; 4-bit: [nr][ldw/2] nibbles, then [nr][ldw/32] pairs;
      // fp16: [nr][ldw].
      pool.parallel_for(nr, 8, [&](int64_t b, int64_t e) {
        std::vector<uint8_t> blocks;
        for (int64_t i = b; i < e; ++i) {
          int r = r0 + (int)i;
          const RowSrc* src = r < (int)rows.size() ? &rows[(size_t)r] : nullptr;
          if (w4) {
            uint8_t* q = st + (size_t)i * (m.ldw / 2);
            uint16_t* mp = reinterpret_cast<uint16_t*>(st + (size_t)nr * (m.ldw / 2)) + (size_t)i * (m.ldw / 32) * 2;
            std::memset(q, 0, (size_t)m.ldw / 2);
            std::memset(mp, 0, (size_t)(m.ldw / 32) * 4);  // pad groups: scale 0, bias 0
            if (!src) continue;
            // Q4_0 / Q4_1 / Q4_K blocks as they are; other types (dtype 'q4') quantized into Q4_1 blocks first.
            const Matrix& sm = *src->m;
            const uint8_t* row = sm.row(src->row);
            DType t = sm.dtype;
            if (!runs_as_w4(t)) {
              blocks.resize(row_bytes(DType::Q4_1, sm.cols));
              convert_row(t, row, DType::Q4_1, blocks.data(), sm.cols);
              row = blocks.data(), t = DType::Q4_1;
            }
            blocks_to_w4(t, row, q, mp, sm.cols);
          } else if (int8) {
            int8_t* q = reinterpret_cast<int8_t*>(st) + (size_t)i * m.ldw;
            uint16_t* s = reinterpret_cast<uint16_t*>(st + (size_t)nr * m.ldw) + (size_t)i * (m.ldw / 32);
            std::memset(q, 0, (size_t)m.ldw);
            std::memset(s, 0, (size_t)(m.ldw / 32) * 2);
            if (!src) continue;
            const Matrix& sm = *src->m;
            // Q8_0 blocks: the file's, or converted exactly as the CPU backend converts (llama.cpp's Q8_0
            // rule; Q4_0 / Q5_0 blocks rewritten with their own values); then split into quants and scales.
            const uint8_t* row = sm.row(src->row);
            if (sm.dtype != DType::Q8_0) {
              blocks.resize(row_bytes(DType::Q8_0, sm.cols));
              convert_row(sm.dtype, row, DType::Q8_0, blocks.data(), sm.cols);
              row = blocks.data();
            }
            for (int64_t g = 0; g < sm.cols / kQ8Block; ++g) {
              std::memcpy(&s[g], row + g * kQ8BlockBytes, 2);
              std::memcpy(q + g * kQ8Block, row + g * kQ8BlockBytes + 2, kQ8Block);
            }
          } else {
            uint16_t* h = reinterpret_cast<uint16_t*>(st) + (size_t)i * m.ldw;
            std::memset(h, 0, (size_t)m.ldw * 2);
            if (!src) continue;
            const Matrix& sm = *src->m;
            convert_row(sm.dtype, sm.row(src->row), DType::F16, reinterpret_cast<uint8_t*>(h), sm.cols);
          }
        }
      });
      if (w4) {
        CK(cudaMemcpyAsync(m.q4 + (size_t)r0 * (m.ldw / 2), st, (size_t)nr * (m.ldw / 2), cudaMemcpyHostToDevice, stream_));
        CK(cudaMemcpyAsync(m.m + (size_t)r0 * (m.ldw / 32), st + (size_t)nr * (m.ldw / 2), (size_t)nr * (m.ldw / 32) * 4, cudaMemcpyHostToDevice,
                           stream_));
      } else if (int8) {
        CK(cudaMemcpyAsync(m.q + (size_t)r0 * m.ldw, st, (size_t)nr * m.ldw, cudaMemcpyHostToDevice, stream_));
        CK(cudaMemcpyAsync(m.s + (size_t)r0 * (m.ldw / 32), st + (size_t)nr * m.ldw, (size_t)nr * (m.ldw / 32) * 2, cudaMemcpyHostToDevice, stream_));
      } else {
        CK(cudaMemcpyAsync(m.w + (size_t)r0 * m.ldw, st, (size_t)nr * m.ldw * 2, cudaMemcpyHostToDevice, stream_));
      }
      CK(cudaEventRecord(staging_done_[buf], stream_));
      uploaded_ += (uint64_t)nr * row_bytes_dev;
      if (progress_) progress_({"upload", uploaded_, total_bytes_, tensors_done_, total_tensors_});
    }
    ++tensors_done_;
    weight_bytes_ += m.bytes();
    (void)what;
    return m;
  }

  // ---------------------------------------------------------------- forward
  // Layer l's part of the cache: K values, V values (fp16 or int8), then (int8) K scales, V scales.
  uint8_t* kv_layer(int l) const { return kv_ + (size_t)l * 2 * (plan_.kv_layer_k + plan_.kv_layer_scales); }
  // Layer l's pool of K values (part 0), V values (1), K scales (2), V scales (3): [n_blocks][block bytes].
  uint8_t* kv_part(int l, int part) const {
    return kv_layer(l) + (part < 2 ? part * plan_.kv_layer_k : 2 * plan_.kv_layer_k + (part - 2) * plan_.kv_layer_scales);
  }
  half* k_pool(int l) const { return reinterpret_cast<half*>(kv_layer(l)); }
  half* v_pool(int l) const { return reinterpret_cast<half*>(kv_layer(l) + plan_.kv_layer_k); }
  int8_t* k_q(int l) const { return reinterpret_cast<int8_t*>(kv_layer(l)); }
  int8_t* v_q(int l) const { return reinterpret_cast<int8_t*>(kv_layer(l) + plan_.kv_layer_k); }
  half* k_scale(int l) const { return reinterpret_cast<half*>(kv_layer(l) + 2 * plan_.kv_layer_k); }
  half* v_scale(int l) const { return reinterpret_cast<half*>(kv_layer(l) + 2 * plan_.kv_layer_k + plan_.kv_layer_scales); }

  // The matrix kernel for a step of T tokens: mat_dispatch.cuh (shared with the CUDA op benches).
  void matmul(const DevMat& m, const half* A, int lda, int T, const k::Epilogue& e) { mats_.run(m, A, lda, T, e, &split_k_, stream_); }

  // m applied to RMSNorm(x rows) * norm_w: fused into the GEMV's input for steps of up to fused_norm_max_t_
  // tokens on the GEMV path, else the norm kernel writes xn_ for the matrix kernel.
  void matmul_normed(const DevMat& m, const float* norm_w, const float* x, int T, const k::Epilogue& e) {
    if (T <= fused_norm_max_t_ && mats_.kind(m.fmt, T, m.npad) == MatDispatch::Kind::Gemv) {
      k::NormInput in;
      in.x = x;
      in.ldx = Dpad_;
      in.w = norm_w;
      in.dim = c_.dim;
      in.eps = c_.rms_eps;
      if (m.fmt == CudaFmt::W4) k::gemv_w4_norm(in, m.q4, m.m, m.ldw, T, m.npad, m.n, m.ldw, e, stream_);
      else if (m.int8()) k::gemv_w8_norm(in, m.q, m.s, m.ldw, T, m.npad, m.n, m.ldw, e, stream_);
      else k::gemv_f16_norm(in, m.w, m.ldw, T, m.npad, m.n, m.ldw, e, stream_);
      return;
    }
    k::rmsnorm_f16(x, Dpad_, norm_w, xn_, Dpad_, T, c_.dim, c_.rms_eps, stream_);
    matmul(m, xn_, Dpad_, T, e);
  }

  // Offsets (in int32) of the step inputs inside in_dev_ / pinned_in_ for T tokens and S segments.
  struct Layout {
    size_t tokens, positions, slots, decode_list, seg_start, seg_count, seg_pos0, out_rows, tables, total;
  };
  // R: rows of out_rows, max(S, the sub-batch's outputs) (see f32_backend.h: scoring has one per token).
  Layout layout(int T, int S, int R) const {
    Layout l;
    size_t o = 0;
    l.tokens = o; o += T;
    l.positions = o; o += T;
    l.slots = o; o += T;
    l.decode_list = o; o += T;
    l.seg_start = o; o += S;
    l.seg_count = o; o += S;
    l.seg_pos0 = o; o += S;
    l.out_rows = o; o += R;
    l.tables = o; o += (size_t)S * max_blocks_;
    l.total = o;
    return l;
  }

  void run_sub(const ForwardBatch& b, const SubBatch& sub) {
    const int S = (int)sub.segs.size();
    int T = 0;
    for (auto& sg : sub.segs) T += sg.count;
    const Layout lay = layout(T, S, std::max(S, sub_outputs(b, sub)));
    int32_t* in = pinned_in_;
    // Graph replays read pinned_in_ when they run: wait for the previous step before rewriting it.
    CK(cudaStreamSynchronize(stream_));
    int t = 0, n_dec = 0, n_out = 0, max_count = 0, max_len = 1;
    bool all_single = true;
    for (int s = 0; s < S; ++s) {
      const Segment& sg = sub.segs[(size_t)s];
      in[lay.seg_start + s] = t;
      in[lay.seg_count + s] = sg.count;
      in[lay.seg_pos0 + s] = sg.pos0;
      max_count = std::max(max_count, sg.count);
      max_len = std::max(max_len, sg.pos0 + sg.count);
      all_single = all_single && sg.count == 1;
      const int32_t* table = &b.block_tables[(size_t)sub.table_rows[(size_t)s] * b.max_blocks];
      for (int j = 0; j < max_blocks_; ++j) in[lay.tables + (size_t)s * max_blocks_ + j] = j < b.max_blocks ? std::max(table[j], 0) : 0;
      for (int j = 0; j < sg.count; ++j, ++t) {
        int bt = sg.start + j;  // index in the ForwardBatch
        int pos = b.positions[(size_t)bt];
        in[lay.tokens + t] = b.tokens[(size_t)bt];
        in[lay.positions + t] = pos;
        in[lay.slots + t] = table[pos / kKvBlockSize] * kKvBlockSize + pos % kKvBlockSize;
        if (sg.count == 1 || !prefill_attn_) in[lay.decode_list + n_dec++] = t;
        if (std::binary_search(b.output_rows.begin(), b.output_rows.end(), bt)) in[lay.out_rows + n_out++] = t;
      }
    }
    // Outputs of this sub-batch land after the previous ones.
    OutChunk oc{n_out_total_, n_out, nullptr};
    if (n_out > 0) {
      if (n_out_total_ + n_out > S_) fail(code::kInternal, "too many outputs in one step");
      oc.logits = logits_ + (size_t)n_out_total_ * Vpad_;
    }
    // Attention launches cover the longest sequence rounded up to a power of two (>= 128), so short
    // contexts launch few splits and need no reduce; a graph exists per such bucket.
    int span = 128;
    while (span < max_len) span *= 2;
    span = std::min(span, ctx_);
    // A decode step (every sequence adds one token, one sub-batch) replays a graph captured for its shape.
    auto work = [&] { enqueue(lay, T, S, n_dec, n_out, oc.first, max_count, span); };
    cudaGraphExec_t exec = nullptr;
    if (all_single && T <= graph_max_t_ && n_out_total_ == 0)
      exec = decode_graph(((int64_t)T * 1024 + n_out) * (int64_t(1) << 24) + span, T, work);  // span <= ctx_ < 2^24: exact
    if (exec) CK(cudaGraphLaunch(exec, stream_));
    else work();
    CK(cudaGetLastError());
    if (n_out > 0) out_chunks_.push_back(oc);
    n_out_total_ += n_out;
  }

  // The graph of a decode-step shape: cached (least recently used dropped beyond kMaxGraphs), captured on
  // first use. nullptr when capture fails (the step then runs eagerly; the shape is not tried again).
  cudaGraphExec_t decode_graph(int64_t key, int T, const std::function<void()>& work) {
    ++graph_clock_;
    auto it = graphs_.find(key);
    if (it != graphs_.end()) {
      it->second.used = graph_clock_;
      return it->second.exec;
    }
    if (graph_failed_.count(key)) return nullptr;
    // Any failure (begin, an exception inside work(), end, instantiate) leaves capture mode, marks the
    // shape and runs it eagerly; a real device error then surfaces from the eager run.
    cudaGraph_t g = nullptr;
    cudaGraphExec_t exec = nullptr;
    std::string why;
    cudaError_t e = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
    if (e == cudaSuccess) {
      try {
        work();
      } catch (const std::exception& ex) {
        why = ex.what();
      } catch (...) {
        why = "an exception";
      }
      const cudaError_t end = cudaStreamEndCapture(stream_, &g);  // leave capture mode whatever happened
      e = why.empty() ? end : cudaErrorStreamCaptureInvalidated;
    }
    if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, g, 0);
    if (g) cudaGraphDestroy(g);
    if (e != cudaSuccess) {
      cudaGetLastError();
      graph_failed_.insert(key);
      if (!graph_warned_) {  // once per backend: a driver that cannot capture would otherwise print per shape
        graph_warned_ = true;
        std::fprintf(stderr, "llama2-native: CUDA graph capture of a %d-token decode step failed (%s); such steps run without a graph (not reported again)\n",
                     T, why.empty() ? cudaGetErrorString(e) : why.c_str());
      }
      return nullptr;
    }
    if (graphs_.size() >= kMaxGraphs) {
      auto lru = std::min_element(graphs_.begin(), graphs_.end(), [](const auto& a, const auto& b) { return a.second.used < b.second.used; });
      cudaGraphExecDestroy(lru->second.exec);  // freed once any launch in flight completes
      graphs_.erase(lru);
    }
    graphs_.emplace(key, Graph{exec, graph_clock_});
    return exec;
  }

  // Decode attention for n_dec tokens (listed at `list`), in chunks whose split partials fit attn_ws_ after
  // its counters. Every launch passes the same counter count (the plan's), whatever its chunk: the partials
  // of a small launch must not land on counters a larger one reads later.
  void decode_attention(k::AttentionParams ap, const int32_t* list, int n_dec, int span) {
    const int ct = plan_.decode_counter_tokens;
    const size_t per_token = k::attention_decode_partial_bytes(1, c_.n_heads, c_.head_dim, span);
    const size_t room = plan_.attn_ws - k::attention_decode_counter_bytes(ct, c_.n_heads);
    const int chunk = std::max(1, (int)std::min<size_t>({(size_t)n_dec, (size_t)ct, room / per_token}));
    for (int i = 0; i < n_dec; i += chunk) {
      ap.decode_tokens = list + i;
      k::attention_decode(ap, std::min(chunk, n_dec - i), span, attn_ws_, stream_, ct);
    }
  }

  // Everything one sub-batch does on the stream (also what a decode graph captures).
  void enqueue(const Layout& lay, int T, int S, int n_dec, int n_out, int out_first, int max_count, int span) {
    const int32_t* in = in_dev_;
    CK(cudaMemcpyAsync(in_dev_, pinned_in_, lay.total * 4, cudaMemcpyHostToDevice, stream_));
    const int D = c_.dim;
    if (emb_.fmt == CudaFmt::W4) k::embed_w4(emb_.q4, emb_.m, emb_.ldw, in + lay.tokens, x_, Dpad_, T, D, stream_);
    else if (emb_.int8()) k::embed_w8(emb_.q, emb_.s, emb_.ldw, in + lay.tokens, x_, Dpad_, T, D, stream_);
    else k::embed_f16(emb_.w, emb_.ldw, in + lay.tokens, x_, Dpad_, T, D, stream_);
    k::AttentionParams ap;
    ap.q = q_;
    ap.ldq = Qpad_;
    ap.out = att_;
    ap.ldo = Qpad_;
    ap.block_tables = in + lay.tables;
    ap.max_blocks = max_blocks_;
    ap.seg_start = in + lay.seg_start;
    ap.seg_count = in + lay.seg_count;
    ap.seg_pos0 = in + lay.seg_pos0;
    ap.n_segments = S;
    ap.n_heads = c_.n_heads;
    ap.n_kv_heads = c_.n_kv_heads;
    ap.head_dim = c_.head_dim;
    ap.scale = 1.0f / sqrtf((float)c_.head_dim);
    ap.decode_tokens = in + lay.decode_list;
    for (int l = 0; l < c_.n_layers; ++l) {
      const DevLayer& L = layers_[(size_t)l];
      k::Epilogue qkv;
      qkv.kind = k::Epi::QkvRope;
      qkv.out = q_;
      qkv.ldo = Qpad_;
      qkv.q_dim = c_.q_dim();
      qkv.kv_dim = c_.kv_dim();
      qkv.head_dim = c_.head_dim;
      qkv.n_kv_heads = c_.n_kv_heads;
      qkv.positions = in + lay.positions;
      qkv.rope = rope_;
      qkv.kv_slot = in + lay.slots;
      if (kv_int8_) {
        qkv.kv_stage = kv_stage_;
        qkv.ld_stage = plan_.ld_stage;
        ap.k_q = k_q(l);
        ap.v_q = v_q(l);
        ap.k_scale = k_scale(l);
        ap.v_scale = v_scale(l);
        ap.kv_group = plan_.kv_group;
      } else {
        qkv.k_cache = k_pool(l);
        qkv.v_cache = v_pool(l);
        ap.k_cache = k_pool(l);
        ap.v_cache = v_pool(l);
      }
      matmul_normed(L.qkv, L.attn_norm, x_, T, qkv);
      if (kv_int8_)
        k::kv_quantize(kv_stage_, plan_.ld_stage, in + lay.slots, T, c_.n_kv_heads, c_.head_dim, plan_.kv_group, k_q(l), k_scale(l), v_q(l),
                       v_scale(l), stream_);
      if (prefill_attn_ && max_count > 1) k::attention_prefill(ap, max_count, stream_);
      decode_attention(ap, in + lay.decode_list, n_dec, span);
      k::Epilogue add;
      add.kind = k::Epi::AddF32;
      add.out = x_;
      add.ldo = Dpad_;
      matmul(L.wo, att_, Qpad_, T, add);
      k::Epilogue glu;
      glu.kind = k::Epi::SwiGLU;
      glu.out = h_;
      glu.ldo = Fpad_;
      matmul_normed(L.w13, L.ffn_norm, x_, T, glu);
      matmul(L.w2, h_, Fpad_, T, add);
    }
    if (n_out > 0) {
      // This sub-batch's rows land after the step's earlier ones (read_hidden reads them all).
      float* xo = xo_ + (size_t)out_first * Dpad_;
      k::gather_rows(x_, Dpad_, in + lay.out_rows, xo, Dpad_, n_out, D, stream_);
      k::Epilogue st;
      st.kind = k::Epi::StoreF32;
      st.out = logits_ + (size_t)out_first * Vpad_;
      st.ldo = Vpad_;
      matmul_normed(out_, final_norm_, xo, n_out, st);
    }
  }

  struct DevLayer {
    DevMat qkv, wo, w13, w2;
    float* attn_norm = nullptr;
    float* ffn_norm = nullptr;
  };

  static constexpr size_t kStaging = 64u << 20;

  ModelConfig c_;
  int ctx_, n_blocks_;
  int dev_ = 0;
  cudaDeviceProp props_{};
  std::string dtype_ = "auto";  // the dtype option: "auto", "f16" or "int8"
  std::string dtype_name_;      // what info() reports: the layers' formats, "q4+int8" ...
  cudaStream_t stream_ = nullptr;
  std::vector<void*> allocs_;
  uint64_t allocated_ = 0, weight_bytes_ = 0, kv_bytes_ = 0;
  bool kv_int8_ = false;
  CudaMatrixKinds kinds_;
  CudaPlan plan_;
  int Dpad_ = 0, Qpad_ = 0, Fpad_ = 0, Vpad_ = 0, M_ = 0, S_ = 0, max_blocks_ = 0;
  size_t in_bytes_ = 0;
  bool prefill_attn_ = false;
  DevMat emb_, out_;
  std::vector<DevLayer> layers_;
  float* final_norm_ = nullptr;
  std::vector<float> final_norm_host_;  // read_hidden's last RMSNorm
  uint8_t* kv_ = nullptr;
  half* kv_stage_ = nullptr;
  float2* rope_ = nullptr;
  float *x_ = nullptr, *xo_ = nullptr, *logits_ = nullptr, *topk_vals_ = nullptr;
  half *xn_ = nullptr, *q_ = nullptr, *att_ = nullptr, *h_ = nullptr;
  int32_t* topk_ids_ = nullptr;
  void* attn_ws_ = nullptr;
  k::GemmSplitK split_k_;  // the GEMM's split-K partial tiles and counters (this backend's stream only)
  const MatDispatch mats_;  // the matrix kernel per step (its env switches are read when the model loads)
  int32_t* in_dev_ = nullptr;
  int32_t* pinned_in_ = nullptr;
  uint8_t* pinned_out_ = nullptr;
  uint8_t* staging_[2] = {nullptr, nullptr};
  cudaEvent_t staging_done_[2] = {nullptr, nullptr};
  int stage_ = 0;
  ProgressFn progress_;
  uint64_t total_bytes_ = 0, uploaded_ = 0;
  int tensors_done_ = 0, total_tensors_ = 0;
  // Decode steps of up to graph_max_t_ sequences replay CUDA graphs keyed by (tokens, outputs, context
  // bucket): 64, or LLAMA2_GRAPH_MAX_T=0..64 (0: never; for A/B runs and to rule graphs out when debugging).
  const int graph_max_t_ = env_int("LLAMA2_GRAPH_MAX_T", 0, 64, 64);
  static constexpr size_t kMaxGraphs = 256;
  struct Graph {
    cudaGraphExec_t exec;
    uint64_t used;
  };
  std::map<int64_t, Graph> graphs_;
  std::set<int64_t> graph_failed_;
  bool graph_warned_ = false;
  uint64_t graph_clock_ = 0;
  // RMSNorm fused into the GEMV for steps of up to this many tokens (LLAMA2_FUSED_NORM=0..4; default 0, off:
  // measured slower on H200 at batch 1, fp16 228.4 against 234.1 tok/s, int8 279.4 against 325.3).
  const int fused_norm_max_t_ = env_int("LLAMA2_FUSED_NORM", 0, k::kGemvNormMaxT, 0);
  std::vector<OutChunk> out_chunks_;
  int n_out_total_ = 0;
};

std::string driver_problem(cudaError_t e) {
  if (e == cudaErrorInsufficientDriver)
    return "no usable NVIDIA driver (none is installed, or it is older than 580, which this CUDA 13.0 build needs)";
  if (e == cudaErrorNoDevice) return "no CUDA GPU was found";
  return std::string("CUDA is unavailable: ") + cudaGetErrorString(e);
}

}  // namespace

bool cuda_available(std::string* why) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    cudaGetLastError();
    if (why) *why = e != cudaSuccess ? driver_problem(e) : "no CUDA GPU was found";
    return false;
  }
  return true;
}

std::vector<CudaDeviceInfo> cuda_devices() {
  std::vector<CudaDeviceInfo> out;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return out;
  }
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    size_t free_b = 0, total_b = 0;
    int prev = 0;
    cudaGetDevice(&prev);
    if (cudaSetDevice(i) == cudaSuccess) cudaMemGetInfo(&free_b, &total_b);
    cudaSetDevice(prev);
    out.push_back({i, p.name, p.major, p.minor, (uint64_t)p.totalGlobalMem, (uint64_t)free_b, p.multiProcessorCount, drv, rt});
  }
  return out;
}

double cuda_copy_bandwidth(int device_index, size_t bytes) {
  std::string why;
  if (!cuda_available(&why)) return 0;
  CK(cudaSetDevice(device_index));
  void *a = nullptr, *b = nullptr;
  CK(cudaMalloc(&a, bytes));
  if (cudaMalloc(&b, bytes) != cudaSuccess) {
    cudaFree(a);
    fail(code::kOutOfMemory, "bandwidth test: out of GPU memory");
  }
  cudaMemset(a, 1, bytes);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int i = 0; i < 3; ++i) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  std::vector<float> ms;
  for (int i = 0; i < 10; ++i) {
    cudaEventRecord(e0);
    cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float t = 0;
    cudaEventElapsedTime(&t, e0, e1);
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * (double)bytes / (ms[ms.size() / 2] * 1e-3) / 1e9;
}

std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& c, LlamaWeights weights, const BackendOptions& o) {
  std::string why;
  if (!cuda_available(&why)) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    cudaGetLastError();
    fail(e == cudaErrorInsufficientDriver ? code::kDriver : code::kDeviceUnavailable, why);
  }
  if (o.dtype == "f32") return make_cuda_f32_backend(c, std::move(weights), o);
  return std::make_unique<CudaBackend>(c, std::move(weights), o);
}

}  // namespace l2
