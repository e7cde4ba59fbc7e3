// llama2.c's legacy .bin: a header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
// vocab_size, seq_len; vocab_size > 0 means the classifier shares the embedding), then fp32 weights:
// embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, two unused RoPE tables, [wcls].
#include <cstdint>
#include <cstring>

#include "../common/error.h"
#include "model_source.h"

namespace l2 {

std::unique_ptr<ModelSource> open_llama2c(const std::string& path) {
  auto src = std::make_unique<ModelSource>();
  src->format = "llama2c";
  src->path = path;
  src->files.push_back(std::make_unique<MappedFile>(path));
  const MappedFile& f = *src->files.back();
  src->file_bytes = f.size();
  if (f.size() < 28) fail(code::kFormatCorrupt, path + ": file too small for a llama2.c header (" + std::to_string(f.size()) + " bytes)");
  int32_t h[7];
  std::memcpy(h, f.data(), 28);
  ModelConfig& c = src->config;
  c.dim = h[0];
  c.ffn_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  bool shared = h[5] > 0;
  c.vocab_size = h[5] == INT32_MIN ? INT32_MAX : h[5] < 0 ? -h[5] : h[5];  // (-INT32_MIN overflows; validate rejects it)
  c.max_seq_len = h[6];
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  c.rope_layout = RopeLayout::Interleaved;
  c.tied_output = shared;
  c.validate(path + " (llama2.c header)");
  if (c.head_dim * c.n_heads != c.dim) fail(code::kConfig, path + ": dim is not a multiple of n_heads");

  const int64_t D = c.dim, L = c.n_layers, V = c.vocab_size, F = c.ffn_dim, KV = c.kv_dim(), HS = c.head_dim;
  struct Part {
    const char* name;
    int64_t layers;  // 0 = a single tensor
    int64_t rows, cols;
  };
  const Part parts[] = {
      {"tok_embeddings", 0, V, D}, {"attn_norm", L, 1, D}, {"wq", L, D, D},  {"wk", L, KV, D},
      {"wv", L, KV, D},            {"wo", L, D, D},        {"ffn_norm", L, 1, D}, {"w1", L, F, D},
      {"w2", L, D, F},             {"w3", L, F, D},        {"output_norm", 0, 1, D},
      {"", 0, c.max_seq_len, HS / 2}, {"", 0, c.max_seq_len, HS / 2},  // freq_cis_real/imag (unused)
      {"output", 0, shared ? 0 : V, D}};
  uint64_t expected = 28;
  for (const Part& p : parts) expected += (uint64_t)(p.layers ? p.layers : 1) * p.rows * p.cols * 4;
  if (f.size() != expected)
    fail(code::kFormatCorrupt, path + ": expected " + std::to_string(expected) + " bytes for this header, the file has " +
                                   std::to_string(f.size()) + " (truncated or not a llama2.c model)");
  uint64_t off = 28;
  for (const Part& p : parts) {
    for (int64_t l = 0; l < (p.layers ? p.layers : 1); ++l) {
      size_t n = (size_t)(p.rows * p.cols * 4);
      if (*p.name && n > 0) {
        TensorView t;
        t.name = p.layers ? "layers." + std::to_string(l) + "." + p.name : p.name;
        t.file_name = t.name;
        t.dtype = DType::F32;
        t.shape = p.rows == 1 ? std::vector<int64_t>{p.cols} : std::vector<int64_t>{p.rows, p.cols};
        t.data = f.data() + off;
        t.nbytes = n;
        t.file = &f;
        src->tensors[t.name] = t;
      }
      off += n;
    }
  }
  src->name = path.substr(path.find_last_of('/') + 1);
  return src;
}

}  // namespace l2
