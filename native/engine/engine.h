// The engine: a loaded model on one backend, its sequences (each a KV cache of paged blocks) and
// the forward step over any mix of sequences: prefill chunks and decode tokens in one batch.
// Thread-safe: forward() runs the backend outside the bookkeeping lock, so cheap calls (create,
// free, info) never wait for a running step.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../model/lora.h"
#include "../model/model_source.h"
#include "backend.h"
#include "kv_blocks.h"

namespace l2 {

struct EngineOptions {
  std::string device = "auto";  // "cpu" | "cuda" | "auto"
  int device_index = 0;
  std::string dtype = "auto";   // "auto" | "f32" | "f16" | "bf16" | "int8"
  std::string kv_cache_type = "auto";  // "auto" (CPU fp32, CUDA fp16) | "int8"
  int context_length = 0;       // 0: the model's trained context, at most 4096
  int max_sequences = 4;        // the KV pool holds this many full-context sequences
  int threads = 0;              // CPU threads; 0: all cores
  std::string cpu_activations = "f32";  // CPU backend: "f32" | "int8" (cpu::Activations)
  // Replaces the file's rope scaling when set (llama.cpp's --rope-scaling / --rope-scale).
  bool rope_override = false;
  RopeScalingConfig rope_scaling;
  std::vector<LoraSpec> lora;  // merged into the weights in order before the backend sees them
};

// One sequence's part of a step: tokens to append, and what to return for its last token.
struct SeqRequest {
  int32_t seq = 0;
  std::vector<int32_t> tokens;
  // 0: nothing, -1: full logits of the last token, -2: full logits of every token (scoring a text),
  // -3: the last token's final hidden state (after the last RMSNorm; embeddings), k > 0: top-k candidates
  // of the last token.
  int32_t output = 0;
  // The output (-1, -3 or k) for every token instead of the last, rows in token order (verifying drafts,
  // pooling embeddings).
  bool every = false;
  bool every_token() const { return output == -2 || (every && output != 0); }
};

struct SeqOutput {
  std::vector<float> logits;  // output == -1: [vocab]; every token (output -2): [tokens][vocab]
  std::vector<float> hidden;  // output == -3: [dim]; every token: [tokens][dim]
  std::vector<int32_t> ids;   // output > 0: [k], every token: [tokens][k]
  std::vector<float> vals;
};

class Engine {
 public:
  static std::unique_ptr<Engine> load(const std::string& path, const EngineOptions& o, const ProgressFn& progress);

  const ModelConfig& config() const { return src_->config; }
  const ModelSource& source() const { return *src_; }
  BackendInfo backend_info() const { return backend_->info(); }
  int context_length() const { return ctx_; }
  const std::vector<LoraInfo>& lora() const { return lora_; }
  int max_sequences() const { return max_seqs_; }
  int max_step_sequences() const { return backend_->max_step_sequences(); }

  int32_t create_sequence();
  // A sequence in a running step is freed when the step ends.
  void free_sequence(int32_t id);
  // A new sequence sharing `id`'s cache (blocks are shared, copied on write).
  int32_t fork_sequence(int32_t id);
  // Drops cached tokens beyond `length`.
  void truncate_sequence(int32_t id, int32_t length);
  int32_t sequence_length(int32_t id);
  // Saved sessions: a sequence's KV blocks to / from host memory, `count` blocks from block `first`, each
  // kv_block_bytes() in the backend's layout. A restore: begin_restore gives an empty sequence the blocks
  // of `length` positions (ERR_KV_CACHE_FULL when they are not free), write_sequence_blocks fills them,
  // finish_restore makes them its cache once every block was written; until then the sequence holds
  // nothing a step could read (steps and forks refuse it; truncating it to 0 abandons the restore).
  uint64_t kv_block_bytes() const { return backend_->kv_block_bytes(); }
  void read_sequence_blocks(int32_t id, int32_t first, int32_t count, uint8_t* dst);
  void begin_restore(int32_t id, int32_t length);
  void write_sequence_blocks(int32_t id, int32_t first, int32_t count, const uint8_t* src);
  void finish_restore(int32_t id);
  int free_blocks();
  int total_blocks() const { return n_blocks_; }
  // Tokens that fit in the free KV blocks (a conservative admission check for schedulers).
  int64_t free_token_capacity();

  std::vector<SeqOutput> forward(const std::vector<SeqRequest>& reqs);

 private:
  struct Sequence {
    int32_t length = 0;
    std::vector<int32_t> blocks;
    bool busy = false;
    bool free_pending = false;
    int32_t restore_length = -1;   // >= 0 while a restore fills the blocks (begin_restore)
    std::vector<uint8_t> restored;  // per block: written by the restore
  };
  Sequence& seq(int32_t id);  // ERR_UNKNOWN_SEQUENCE
  void release(Sequence& s, size_t keep_blocks);

  std::unique_ptr<ModelSource> src_;
  std::vector<LoraInfo> lora_;
  std::unique_ptr<Backend> backend_;
  int ctx_ = 0, max_seqs_ = 0, n_blocks_ = 0;
  std::mutex mu_;       // sequences and blocks
  std::mutex step_mu_;  // one backend step at a time
  std::unordered_map<int32_t, Sequence> seqs_;
  int32_t next_id_ = 1;
  std::unique_ptr<KvBlockPool> pool_;
};

}  // namespace l2
