// What a backend must do. The engine owns sequences and KV-block bookkeeping and hands each step to
// the backend as a ForwardBatch; the backend owns the weights on its device and the KV block pool.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../model/config.h"
#include "../model/weights.h"

namespace l2 {

// Tokens per KV-cache block (paged KV cache: a sequence's cache is a list of blocks).
constexpr int kKvBlockSize = 16;

// The int8 KV cache quantizes each token's K and V rows per head in groups of this many values
// (Q8_0's rule, common/q8.h): 32, or the whole head when head_dim is not a multiple of 32.
inline int kv_quant_group(int head_dim) { return head_dim % 32 == 0 ? 32 : head_dim; }

// Tokens [start, start + count) of the batch belong to one sequence, at positions pos0.. pos0+count-1,
// whose KV blocks are row `seg_index` of ForwardBatch::block_tables.
struct Segment {
  int32_t start = 0, count = 0, pos0 = 0;
};

struct ForwardBatch {
  std::vector<int32_t> tokens;      // [T]
  std::vector<int32_t> positions;   // [T]
  std::vector<Segment> segments;    // in token order, covering all T tokens
  std::vector<int32_t> block_tables;  // [segments.size() * max_blocks]
  int32_t max_blocks = 0;
  std::vector<int32_t> output_rows;  // token indices whose logits are wanted, ascending
  int n_tokens() const { return (int)tokens.size(); }
};

struct BackendInfo {
  std::string device;  // "cpu" | "cuda"
  std::string name;    // human-readable device name
  std::string dtype;   // weight precision used: "f32" | "f16" | "bf16" | "int8"
  std::string kv_dtype;  // KV cache precision: "f32" (CPU) | "f16" (CUDA) | "int8"
  uint64_t weight_bytes = 0;
  uint64_t kv_bytes = 0;
  uint64_t device_memory_used = 0;   // CUDA: bytes allocated by us
  uint64_t device_memory_total = 0;  // CUDA: the card's memory
};

struct LoadProgress {
  const char* phase;  // "decode" | "weights" | "upload"
  uint64_t bytes, total_bytes;
  int tensors, total_tensors;
};
using ProgressFn = std::function<void(const LoadProgress&)>;

struct BackendOptions {
  int context_length = 0;
  int n_kv_blocks = 0;
  int threads = 0;
  int device_index = 0;
  std::string dtype = "auto";  // requested weight precision
  bool kv_int8 = false;        // int8 KV cache (default: the backend's own precision)
  bool int8_activations = false;  // CPU: Q8_0 / Q4_1 matrices take int8-quantized inputs (cpu::Activations::Int8)
  ProgressFn progress;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual BackendInfo info() const = 0;
  // Runs the model over the batch, writing each token's K/V into its blocks; keeps the logits of
  // batch.output_rows for read_logits / top_k.
  virtual void forward(const ForwardBatch& batch) = 0;
  virtual void read_logits(float* dst) = 0;                  // [n_outputs, vocab]
  virtual void top_k(int k, int32_t* ids, float* vals) = 0;  // [n_outputs, k], logit descending, ties by id
  // The output rows' final hidden states, after the model's last RMSNorm (what the classifier reads, and
  // what embeddings pool): [n_outputs, dim].
  virtual void read_hidden(float* dst) = 0;
  // Copies one KV block (all layers) for copy-on-write of shared blocks.
  virtual void copy_block(int32_t src, int32_t dst) = 0;
  // One KV block (all layers, in the cache's storage type) to / from host memory: kv_block_bytes() bytes
  // in the backend's own layout, the same for both (saved sessions; a block never written reads as zeros).
  virtual uint64_t kv_block_bytes() const = 0;
  virtual void read_block(int32_t b, uint8_t* dst) = 0;
  virtual void write_block(int32_t b, const uint8_t* src) = 0;
  // Most sequences one forward may hold (the CUDA backend's output buffers are sized for this many).
  virtual int max_step_sequences() const { return 1 << 30; }
};

// Rotary tables shared by every backend so that all compute the same angles:
// table[pos * (head_dim/2) + i] = {cos, sin}(pos * theta^(-2i/head_dim)), computed in fp32 as
// llama2.c and transformers do.
std::vector<float> rope_table(const ModelConfig& c, int context_length);

// Top-k of each of n_out rows of `vocab` logits on the host: [n_out, k] ids and values, logit
// descending, ties by lower id, NaN last (what every backend's top_k returns).
void host_top_k(const float* logits, int n_out, int vocab, int k, int32_t* ids, float* vals);

// RMSNorm of one row on the host, in the CPU backend's arithmetic (cpu::rmsnorm): backends that keep the
// final residual un-normed on the device apply the last norm here for read_hidden.
void host_rmsnorm(float* out, const float* x, const float* w, int n, float eps);

std::unique_ptr<Backend> make_cpu_backend(const ModelConfig& c, LlamaWeights weights, const BackendOptions& o);
// Throws ERR_DEVICE_UNAVAILABLE when built without CUDA or when no usable GPU is present.
std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& c, LlamaWeights weights, const BackendOptions& o);
// The fp32 path (dtype 'f32' on CUDA; engine/f32_backend.h), reached through make_cuda_backend, and the
// same path emulated on the host (tests on machines without a GPU: LLAMA2_CUDA_F32_EMULATE=1).
std::unique_ptr<Backend> make_cuda_f32_backend(const ModelConfig& c, LlamaWeights weights, const BackendOptions& o);
std::unique_ptr<Backend> make_f32_emulated_backend(const ModelConfig& c, LlamaWeights weights, const BackendOptions& o);
// Whether a CUDA backend can be created; `why` says why not.
bool cuda_available(std::string* why);
// CUDA devices visible (for `llama2 doctor` and device selection); empty without CUDA.
struct CudaDeviceInfo {
  int index;
  std::string name;
  int cc_major, cc_minor;
  uint64_t memory_total, memory_free;
  int sm_count;
  int driver_version, runtime_version;
};
std::vector<CudaDeviceInfo> cuda_devices();
// Device-to-device copy bandwidth of a `bytes` buffer, GB/s counting read + write (the roofline the
// bench reports against). 0 without CUDA.
double cuda_copy_bandwidth(int device_index, size_t bytes);

}  // namespace l2
