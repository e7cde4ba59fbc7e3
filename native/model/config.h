// The model's shape and options: one struct, filled by each format's loader and validated once.
#pragma once
#include <cstdint>
#include <string>

namespace l2 {

// How Q/K rows pair up for rotary embeddings. Meta's checkpoints, llama2.c and GGUF rotate adjacent
// pairs (2i, 2i+1); Hugging Face checkpoints permute Q/K rows so that pairs are (i, i + head_dim/2).
enum class RopeLayout { Interleaved, Halves };
// The Q/K row of the other layout that a row holds (head_dim `hd`): interleaved row h*hd + 2i + p is Hugging
// Face's (halves) row h*hd + p*hd/2 + i (head h, pair i, half p), as llama.cpp's converter permutes them.
inline int64_t halves_row_of_interleaved(int64_t r, int64_t hd) {
  const int64_t j = r % hd;
  return r - j + (j % 2) * (hd / 2) + j / 2;
}
inline int64_t interleaved_row_of_halves(int64_t r, int64_t hd) {
  const int64_t j = r % hd, half = hd / 2;
  return r - j + 2 * (j % half) + j / half;
}

// Rotary position scaling for context extension (fine-tunes such as Vicuna-16k, LLaMA-2-32K, YaRN-Llama-2).
// Linear: every angle divided by `factor` (position interpolation). YaRN: low frequencies interpolated,
// high ones kept, a linear ramp between (beta_fast / beta_slow rotations over `original_ctx` positions),
// and cos/sin multiplied by `mscale`. Both are static, so one rotary table serves every backend.
enum class RopeScaling { None, Linear, Yarn };

struct RopeScalingConfig {
  RopeScaling type = RopeScaling::None;
  float factor = 1.f;
  int original_ctx = 0;  // YaRN: the context before extension (0: max_seq_len, as both references default)
  float beta_fast = 32.f;
  float beta_slow = 1.f;
  float mscale = 0.f;  // cos/sin scale; 0: derived (YaRN 0.1 ln(factor) + 1, as transformers and llama.cpp; linear 1)
};

const char* rope_scaling_name(RopeScaling t);
// YaRN's attention scale for a context extension `factor`: 0.1 ln(factor) + 1 (1 for factor <= 1), as
// transformers' get_mscale and llama.cpp's rope_yarn derive it.
float yarn_mscale(float factor);
// "none" / "default" / "linear" / "yarn" (the names transformers and llama.cpp use); false for others.
bool parse_rope_scaling(const std::string& name, RopeScaling* out);

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
  RopeScalingConfig rope_scaling;
  bool tied_output = false;  // the classifier reuses the token embedding

  // The context rope scaling extends (YaRN's original context, else the trained one).
  int rope_original_ctx() const { return rope_scaling.original_ctx > 0 ? rope_scaling.original_ctx : max_seq_len; }
  // What the rotary table's cos and sin are multiplied by: the file's factor, else YaRN's derived one, else 1.
  float rope_attention_factor() const {
    if (rope_scaling.type == RopeScaling::None) return 1.f;
    if (rope_scaling.mscale != 0.f) return rope_scaling.mscale;
    return rope_scaling.type == RopeScaling::Yarn ? yarn_mscale(rope_scaling.factor) : 1.f;
  }
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  // Throws ERR_MODEL_CONFIG naming `source` and the bad field.
  void validate(const std::string& source) const;
};

}  // namespace l2
