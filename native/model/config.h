// The model's shape and options: one struct, filled by each format's loader and validated once.
#pragma once
#include <string>

namespace l2 {

// How Q/K rows pair up for rotary embeddings. Meta's checkpoints, llama2.c and GGUF rotate adjacent
// pairs (2i, 2i+1); Hugging Face checkpoints permute Q/K rows so that pairs are (i, i + head_dim/2).
enum class RopeLayout { Interleaved, Halves };

struct ModelConfig {
  int dim = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int ffn_dim = 0;
  int vocab_size = 0;
  int max_seq_len = 0;  // trained context length
  float rms_eps = 1e-5f;
  float rope_theta = 10000.f;
  RopeLayout rope_layout = RopeLayout::Interleaved;
  bool tied_output = false;  // the classifier reuses the token embedding

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  // Throws ERR_MODEL_CONFIG naming `source` and the bad field.
  void validate(const std::string& source) const;
};

}  // namespace l2
