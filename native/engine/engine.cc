#include "engine.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <set>

#include "../common/error.h"
#include "cpu/weight_pages.h"

namespace l2 {

// The rotary table: (cos, sin) per (position, pair), with the model's scaling folded in (config.h). The
// frequencies follow transformers' `_compute_linear_scaling_rope_parameters` / `_compute_yarn_parameters`
// and llama.cpp's `rope_yarn` (the two agree for these types), in float like both.
static std::vector<float> rope_frequencies(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  const RopeScalingConfig& rs = c.rope_scaling;
  std::vector<float> freq((size_t)half);
  for (int i = 0; i < half; ++i) freq[(size_t)i] = 1.0f / powf(c.rope_theta, (float)(2 * i) / (float)c.head_dim);
  if (rs.type == RopeScaling::Linear) {
    for (float& f : freq) f /= rs.factor;
  } else if (rs.type == RopeScaling::Yarn) {
    // Pairs that turn fewer than beta_slow times over the original context are interpolated (divided by
    // the factor), those that turn more than beta_fast times kept, a linear ramp between.
    const float orig = (float)c.rope_original_ctx();
    const float d = (float)c.head_dim, log_base = logf(c.rope_theta);
    auto corr_dim = [&](float rotations) { return d * logf(orig / (rotations * 2.f * 3.14159265358979f)) / (2.f * log_base); };
    const float low = std::max(floorf(corr_dim(rs.beta_fast)), 0.f);
    float high = std::min(ceilf(corr_dim(rs.beta_slow)), d - 1.f);
    if (high == low) high += 0.001f;
    for (int i = 0; i < half; ++i) {
      const float ramp = std::min(std::max(((float)i - low) / (high - low), 0.f), 1.f);
      const float keep = 1.f - ramp;  // the share of the original (extrapolated) frequency
      const float f = freq[(size_t)i];
      freq[(size_t)i] = f / rs.factor * (1.f - keep) + f * keep;
    }
  }
  return freq;
}

std::vector<float> rope_table(const ModelConfig& c, int context_length) {
  const int half = c.head_dim / 2;
  const float mscale = c.rope_attention_factor();
  const std::vector<float> freq = rope_frequencies(c);
  std::vector<float> t((size_t)context_length * half * 2);
  for (int i = 0; i < half; ++i) {
    for (int p = 0; p < context_length; ++p) {
      float a = (float)p * freq[(size_t)i];
      t[((size_t)p * half + i) * 2] = cosf(a) * mscale;
      t[((size_t)p * half + i) * 2 + 1] = sinf(a) * mscale;
    }
  }
  return t;
}

void host_top_k(const float* logits, int n_out, int V, int k, int32_t* ids, float* vals) {
  k = std::min(k, V);
  std::vector<int32_t> idx((size_t)V);
  for (int o = 0; o < n_out; ++o) {
    const float* lg = logits + (size_t)o * V;
    auto key = [&](int32_t i) { return std::isnan(lg[i]) ? -INFINITY : lg[i]; };
    for (int i = 0; i < V; ++i) idx[(size_t)i] = i;
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
      const float va = key(a), vb = key(b);
      return va > vb || (va == vb && a < b);
    });
    for (int j = 0; j < k; ++j) {
      ids[(size_t)o * k + j] = idx[(size_t)j];
      vals[(size_t)o * k + j] = lg[idx[(size_t)j]];
    }
  }
}

std::unique_ptr<Engine> Engine::load(const std::string& path, const EngineOptions& o, const ProgressFn& progress) {
  if (o.device != "auto" && o.device != "cpu" && o.device != "cuda")
    fail(code::kInvalidArgument, "device: expected 'auto', 'cpu' or 'cuda', got '" + o.device + "'");
  static const char* kDtypes[] = {"auto", "f32", "f16", "bf16", "int8", "q4"};
  if (std::none_of(std::begin(kDtypes), std::end(kDtypes), [&](const char* d) { return o.dtype == d; }))
    fail(code::kInvalidArgument, "dtype: expected auto, f32, f16, bf16, int8 or q4, got '" + o.dtype + "'");
  if (o.kv_cache_type != "auto" && o.kv_cache_type != "int8")
    fail(code::kInvalidArgument, "kvCacheType: expected 'auto' or 'int8', got '" + o.kv_cache_type + "'");
  if (o.max_sequences < 1 || o.max_sequences > 4096)
    fail(code::kInvalidArgument, "maxSequences: " + std::to_string(o.max_sequences) + " is out of range (1..4096)");
  if (o.threads < 0 || o.threads > 1024) fail(code::kInvalidArgument, "threads: " + std::to_string(o.threads) + " is out of range");
  if (o.cpu_activations != "f32" && o.cpu_activations != "int8")
    fail(code::kInvalidArgument, "cpuActivations: expected 'f32' or 'int8', got '" + o.cpu_activations + "'");

  auto e = std::unique_ptr<Engine>(new Engine());
  e->src_ = open_model(path);
  if (o.rope_override) e->src_->config.rope_scaling = o.rope_scaling;  // validated with the rest by map_weights
  const ModelConfig& c = e->src_->config;
  LlamaWeights w = map_weights(*e->src_);
  std::string why;
  const bool use_cuda = o.device == "cuda" || (o.device == "auto" && cuda_available(&why));
  // Merged matrices on the CPU go where its converted weights go (huge pages: no 4 KB fault per page).
  e->lora_ = apply_lora(w, c, o.lora, o.threads, use_cuda ? OwnedAlloc(heap_owned) : OwnedAlloc(cpu::WeightPages::allocate));
  int ctx = o.context_length > 0 ? o.context_length : std::min(c.max_seq_len, 4096);
  if (ctx < 1 || ctx > std::max(c.max_seq_len, 1) * 8 || ctx > (1 << 20))
    fail(code::kInvalidArgument, "contextLength: " + std::to_string(o.context_length) + " is out of range (1.." +
                                     std::to_string(std::max(c.max_seq_len, 1) * 8) + " for this model)");
  e->ctx_ = ctx;
  e->max_seqs_ = o.max_sequences;
  e->n_blocks_ = o.max_sequences * ((ctx + kKvBlockSize - 1) / kKvBlockSize);
  e->pool_ = std::make_unique<KvBlockPool>(e->n_blocks_);

  BackendOptions bo;
  bo.context_length = ctx;
  bo.n_kv_blocks = e->n_blocks_;
  bo.threads = o.threads;
  bo.device_index = o.device_index;
  bo.dtype = o.dtype;
  bo.kv_int8 = o.kv_cache_type == "int8";
  bo.int8_activations = o.cpu_activations == "int8";
  bo.progress = progress;
  const char* emulate = std::getenv("LLAMA2_CUDA_F32_EMULATE");  // test hook: see cpu/f32_emulated.cc
  if (use_cuda && o.dtype == "f32" && emulate && std::string(emulate) == "1") e->backend_ = make_f32_emulated_backend(c, std::move(w), bo);
  else e->backend_ = use_cuda ? make_cuda_backend(c, std::move(w), bo) : make_cpu_backend(c, std::move(w), bo);
  return e;
}

Engine::Sequence& Engine::seq(int32_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end() || it->second.free_pending) fail(code::kUnknownSequence, "sequence " + std::to_string(id) + " does not exist");
  return it->second;
}

int32_t Engine::create_sequence() {
  std::lock_guard<std::mutex> lk(mu_);
  int32_t id = next_id_++;
  seqs_[id] = Sequence();
  return id;
}

void Engine::release(Sequence& s, size_t keep_blocks) {
  while (s.blocks.size() > keep_blocks) {
    pool_->release(s.blocks.back());
    s.blocks.pop_back();
  }
}

void Engine::free_sequence(int32_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  Sequence& s = seq(id);
  if (s.busy) {
    s.free_pending = true;
    return;
  }
  release(s, 0);
  seqs_.erase(id);
}

int32_t Engine::fork_sequence(int32_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  Sequence& s = seq(id);
  if (s.busy) fail(code::kInvalidArgument, "sequence " + std::to_string(id) + " is in a running step and cannot be forked");
  if (s.restore_length >= 0) fail(code::kInvalidArgument, "sequence " + std::to_string(id) + " is being restored and cannot be forked");
  Sequence copy;
  copy.length = s.length;
  copy.blocks = s.blocks;
  for (int32_t b : copy.blocks) pool_->retain(b);
  int32_t nid = next_id_++;
  seqs_[nid] = std::move(copy);
  return nid;
}

void Engine::truncate_sequence(int32_t id, int32_t length) {
  std::lock_guard<std::mutex> lk(mu_);
  Sequence& s = seq(id);
  if (s.busy) fail(code::kInvalidArgument, "sequence " + std::to_string(id) + " is in a running step and cannot be truncated");
  if (length < 0 || length > s.length)
    fail(code::kInvalidArgument, "truncate: length " + std::to_string(length) + " is out of range (0.." + std::to_string(s.length) + ")");
  s.length = length;
  release(s, (size_t)((length + kKvBlockSize - 1) / kKvBlockSize));
  s.restore_length = -1;  // truncating a sequence being restored (to 0) abandons the restore
  s.restored.clear();
}

// Blocks [first, first + count) of a sequence that no step is using.
static void check_block_range(int32_t id, bool busy, size_t n_blocks, int32_t first, int32_t count) {
  if (busy) fail(code::kInvalidArgument, "sequence " + std::to_string(id) + " is in a running step");
  if (first < 0 || count < 0 || (size_t)first + (size_t)count > n_blocks)
    fail(code::kInvalidArgument, "blocks " + std::to_string(first) + "+" + std::to_string(count) + " are out of range (the sequence has " + std::to_string(n_blocks) + ")");
}

void Engine::read_sequence_blocks(int32_t id, int32_t first, int32_t count, uint8_t* dst) {
  std::lock_guard<std::mutex> lk(mu_);
  Sequence& s = seq(id);
  if (s.restore_length >= 0) fail(code::kInvalidArgument, "sequence " + std::to_string(id) + " is being restored");
  check_block_range(id, s.busy, (size_t)((s.length + kKvBlockSize - 1) / kKvBlockSize), first, count);
  const uint64_t bb = backend_->kv_block_bytes();
  for (int32_t i = 0; i < count; ++i) backend_->read_block(s.blocks[(size_t)(first + i)], dst + (uint64_t)i * bb);
}

void Engine::begin_restore(int32_t id, int32_t length) {
  std::lock_guard<std::mutex> lk(mu_);
  Sequence& s = seq(id);
  if (s.busy) fail(code::kInvalidArgument, "sequence " + std::to_string(id) + " is in a running step");
  if (s.length != 0 || !s.blocks.empty() || s.restore_length >= 0)
    fail(code::kInvalidArgument, "sequence " + std::to_string(id) + " is not empty");
  if (length <= 0 || length > ctx_)
    fail(code::kContextOverflow, "a sequence of " + std::to_string(length) + " positions does not fit the context of " + std::to_string(ctx_));
  const size_t need = (size_t)((length + kKvBlockSize - 1) / kKvBlockSize);
  if (need > (size_t)pool_->free_count())
    fail(code::kKvCacheFull, "the KV cache is full: " + std::to_string(length) + " positions need " + std::to_string(need) + " blocks of " +
                                 std::to_string(kKvBlockSize) + " and " + std::to_string(pool_->free_count()) + " are free");
  for (size_t i = 0; i < need; ++i) s.blocks.push_back(pool_->alloc());
  s.restore_length = length;
  s.restored.assign(need, 0);
}

void Engine::write_sequence_blocks(int32_t id, int32_t first, int32_t count, const uint8_t* src) {
  std::lock_guard<std::mutex> lk(mu_);
  Sequence& s = seq(id);
  if (s.restore_length < 0) fail(code::kInvalidArgument, "sequence " + std::to_string(id) + " is not being restored (begin_restore)");
  check_block_range(id, s.busy, s.blocks.size(), first, count);
  const uint64_t bb = backend_->kv_block_bytes();
  for (int32_t i = 0; i < count; ++i) {
    backend_->write_block(s.blocks[(size_t)(first + i)], src + (uint64_t)i * bb);
    s.restored[(size_t)(first + i)] = 1;
  }
}

void Engine::finish_restore(int32_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  Sequence& s = seq(id);
  if (s.restore_length < 0) fail(code::kInvalidArgument, "sequence " + std::to_string(id) + " is not being restored (begin_restore)");
  for (size_t i = 0; i < s.restored.size(); ++i)
    if (!s.restored[i]) fail(code::kInvalidArgument, "sequence " + std::to_string(id) + ": block " + std::to_string(i) + " was not written");
  s.length = s.restore_length;
  s.restore_length = -1;
  s.restored.clear();
}

int32_t Engine::sequence_length(int32_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  return seq(id).length;
}

int Engine::free_blocks() {
  std::lock_guard<std::mutex> lk(mu_);
  return pool_->free_count();
}

int64_t Engine::free_token_capacity() {
  std::lock_guard<std::mutex> lk(mu_);
  return (int64_t)pool_->free_count() * kKvBlockSize;
}

std::vector<SeqOutput> Engine::forward(const std::vector<SeqRequest>& reqs) {
  const int V = config().vocab_size;
  if (reqs.empty()) fail(code::kInvalidArgument, "forward: no sequences given");
  if ((int64_t)reqs.size() > backend_->max_step_sequences())
    fail(code::kInvalidArgument, "forward: " + std::to_string(reqs.size()) + " sequences in one step; this backend takes at most " +
                                     std::to_string(backend_->max_step_sequences()));
  // Output rows: the backend keeps at most max_step_sequences() rows of logits per step.
  int64_t rows = 0;
  for (const SeqRequest& r : reqs) rows += r.every_token() ? (int64_t)r.tokens.size() : r.output != 0 ? 1 : 0;
  if (rows > backend_->max_step_sequences())
    fail(code::kInvalidArgument, "forward: " + std::to_string(rows) + " output rows in one step; this backend keeps at most " +
                                     std::to_string(backend_->max_step_sequences()));
  std::vector<std::vector<int32_t>> tables(reqs.size());
  std::vector<int32_t> pos0(reqs.size());
  std::vector<std::pair<int32_t, int32_t>> copies;  // copy-on-write (src, dst) block pairs
  {
    std::lock_guard<std::mutex> lk(mu_);
    std::set<int32_t> seen;
    int needed = 0;
    for (const SeqRequest& r : reqs) {
      Sequence& s = seq(r.seq);
      std::string name = "sequence " + std::to_string(r.seq);
      if (s.busy) fail(code::kInvalidArgument, name + " is already in a running step");
      if (s.restore_length >= 0) fail(code::kInvalidArgument, name + " is being restored");
      if (!seen.insert(r.seq).second) fail(code::kInvalidArgument, name + " appears twice in one step");
      if (r.tokens.empty()) fail(code::kInvalidArgument, name + ": no tokens to evaluate");
      if (r.output < -3 || r.output > V) fail(code::kInvalidArgument, name + ": output " + std::to_string(r.output) + " is out of range");
      for (int32_t t : r.tokens)
        if (t < 0 || t >= V) fail(code::kInvalidArgument, name + ": token id " + std::to_string(t) + " is out of range [0, " + std::to_string(V) + ")");
      int64_t total = (int64_t)s.length + (int64_t)r.tokens.size();
      if (total > ctx_)
        fail(code::kContextOverflow, name + " would hold " + std::to_string(total) + " tokens; the context length is " + std::to_string(ctx_));
      needed += (int)((total + kKvBlockSize - 1) / kKvBlockSize - (int64_t)s.blocks.size());
      if (s.length % kKvBlockSize && pool_->refs(s.blocks[(size_t)(s.length / kKvBlockSize)]) > 1) ++needed;
    }
    if (needed > pool_->free_count())
      fail(code::kKvCacheFull, "the KV cache is full: this step needs " + std::to_string(needed) + " blocks of " +
                                   std::to_string(kKvBlockSize) + " tokens, " + std::to_string(pool_->free_count()) +
                                   " are free (raise maxSequences or free sequences)");
    for (size_t i = 0; i < reqs.size(); ++i) {
      Sequence& s = seq(reqs[i].seq);
      if (s.length % kKvBlockSize) {
        int32_t& last = s.blocks[(size_t)(s.length / kKvBlockSize)];
        if (pool_->refs(last) > 1) {
          int32_t nb = pool_->alloc();
          // The source keeps this step's reference until copy_block has read it (released under mu_
          // after the copies): released here, a sharer could see itself sole owner and write its own
          // tokens into the block in place in a concurrent step that takes step_mu_ before this one,
          // and the copy would then carry them into this sequence's cache.
          copies.emplace_back(last, nb);
          last = nb;
        }
      }
      size_t need = (size_t)((s.length + (int64_t)reqs[i].tokens.size() + kKvBlockSize - 1) / kKvBlockSize);
      while (s.blocks.size() < need) s.blocks.push_back(pool_->alloc());
      s.busy = true;
      tables[i] = s.blocks;
      pos0[i] = s.length;
    }
  }

  // Drops the references the pending copies held on their source blocks (see above).
  auto release_copy_sources = [&] {
    for (auto& cp : copies) pool_->release(cp.first);
    copies.clear();
  };
  auto finish = [&](bool ok) {
    std::lock_guard<std::mutex> lk(mu_);
    release_copy_sources();  // when the step failed before its copies were released
    for (size_t i = 0; i < reqs.size(); ++i) {
      Sequence& s = seqs_[reqs[i].seq];
      s.busy = false;
      if (ok) {
        s.length = pos0[i] + (int32_t)reqs[i].tokens.size();
      } else {
        // A failed step keeps no blocks past the sequence's length: a later fork would share them, and a
        // step starting at that block boundary writes into its block in place (no copy-on-write check).
        release(s, (size_t)((s.length + kKvBlockSize - 1) / kKvBlockSize));
      }
      if (s.free_pending) {
        release(s, 0);
        seqs_.erase(reqs[i].seq);
      }
    }
  };

  std::vector<SeqOutput> out(reqs.size());
  try {
    std::lock_guard<std::mutex> step(step_mu_);
    for (auto& [src, dst] : copies) backend_->copy_block(src, dst);
    if (!copies.empty()) {
      std::lock_guard<std::mutex> lk(mu_);
      release_copy_sources();
    }
    // Build one batch of all requests.
    ForwardBatch b;
    size_t max_blocks = 0;
    for (auto& t : tables) max_blocks = std::max(max_blocks, t.size());
    b.max_blocks = (int32_t)max_blocks;
    b.block_tables.assign(reqs.size() * max_blocks, -1);
    std::vector<size_t> out_req;  // request index of each output row
    for (size_t i = 0; i < reqs.size(); ++i) {
      const SeqRequest& r = reqs[i];
      Segment sg;
      sg.start = b.n_tokens();
      sg.count = (int32_t)r.tokens.size();
      sg.pos0 = pos0[i];
      b.segments.push_back(sg);
      std::copy(tables[i].begin(), tables[i].end(), b.block_tables.begin() + (ptrdiff_t)(i * max_blocks));
      for (int32_t j = 0; j < sg.count; ++j) {
        b.tokens.push_back(r.tokens[(size_t)j]);
        b.positions.push_back(sg.pos0 + j);
      }
      if (r.every_token()) {
        for (int32_t j = 0; j < sg.count; ++j) {
          b.output_rows.push_back(sg.start + j);
          out_req.push_back(i);
        }
      } else if (r.output != 0) {
        b.output_rows.push_back(b.n_tokens() - 1);
        out_req.push_back(i);
      }
    }
    backend_->forward(b);
    const size_t n_out = out_req.size();
    int max_k = 0;
    bool any_full = false, any_hidden = false;
    for (size_t j : out_req) {
      if (reqs[j].output == -3) any_hidden = true;
      else if (reqs[j].output < 0) any_full = true;
      else max_k = std::max(max_k, reqs[j].output);
    }
    // Full rows, logits (outputs -1 and -2) or final hidden states (-3), to the requests that asked.
    // Rows come in token order, so a request's rows (every token: one per token) append in order.
    auto scatter = [&](size_t width, bool logits) {
      std::vector<float> SeqOutput::*field = logits ? &SeqOutput::logits : &SeqOutput::hidden;
      std::vector<float> rows(n_out * width);
      if (logits) backend_->read_logits(rows.data());
      else backend_->read_hidden(rows.data());
      for (size_t o = 0; o < n_out; ++o) {
        const int32_t code = reqs[out_req[o]].output;
        if (logits ? code == -1 || code == -2 : code == -3) {
          std::vector<float>& dst = out[out_req[o]].*field;
          dst.insert(dst.end(), rows.begin() + (ptrdiff_t)(o * width), rows.begin() + (ptrdiff_t)((o + 1) * width));
        }
      }
    };
    if (any_full) scatter((size_t)V, true);
    if (any_hidden) scatter((size_t)config().dim, false);
    if (max_k > 0) {
      std::vector<int32_t> ids(n_out * (size_t)max_k);
      std::vector<float> vals(n_out * (size_t)max_k);
      backend_->top_k(max_k, ids.data(), vals.data());
      for (size_t o = 0; o < n_out; ++o) {
        int k = reqs[out_req[o]].output;
        if (k <= 0) continue;
        SeqOutput& so = out[out_req[o]];
        so.ids.insert(so.ids.end(), ids.begin() + (ptrdiff_t)(o * max_k), ids.begin() + (ptrdiff_t)(o * max_k + k));
        so.vals.insert(so.vals.end(), vals.begin() + (ptrdiff_t)(o * max_k), vals.begin() + (ptrdiff_t)(o * max_k + k));
      }
    }
  } catch (...) {
    finish(false);
    throw;
  }
  finish(true);
  return out;
}

}  // namespace l2
