// A model as found on disk: its config, named tensor views into mmap'd files, and the tokenizer when
// the format carries one. Every format loader (safetensors / GGUF / llama2.c) produces this, with
// tensors under the canonical names below, so nothing past the loaders knows the file format.
//
// Canonical names: tok_embeddings, output_norm, output (absent when tied),
//   layers.N.{attn_norm, wq, wk, wv, wo, ffn_norm, w1 (gate), w2 (down), w3 (up)}.
// Shapes are outermost-first (rows, cols) as in PyTorch; matrices are row-major [out, in].
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../common/mapped_file.h"
#include "config.h"

namespace l2 {

// The types the backends run, then GGUF's 4-6 bit block types, which the backends decode at load
// (ggml_blocks.h; is_load_only()).
enum class DType : uint8_t { F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K };

// Q8_0 (as GGUF): blocks of 32 weights along a row, each an fp16 scale followed by 32 int8.
constexpr int kQ8Block = 32;
constexpr int kQ8BlockBytes = 34;

const char* dtype_name(DType t);
// Bytes of one row of `cols` elements (block types need cols to be a multiple of their block).
size_t row_bytes(DType t, int64_t cols);
// Alignment the backends need for a tensor's data: its element (F32 4, F16/BF16 2, block types' fp16 scales 2).
size_t dtype_align(DType t);
// Elements and bytes of a tensor of `shape` (dims >= 0), false when either exceeds 2^62 (a corrupt
// header): loaders check this before anything multiplies a file's dimensions.
bool tensor_size(DType t, const std::vector<int64_t>& shape, int64_t* numel, uint64_t* bytes);
// A number from a file for messages: whole numbers in full ("4294967295"), others short ("1e+300", "nan").
std::string number_str(double v);

struct TensorView {
  std::string name;        // canonical name
  std::string file_name;   // the tensor's name in its file (for messages)
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // outermost first
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  const MappedFile* file = nullptr;

  int64_t numel() const;
  std::string describe() const;  // "blk.0.attn_q.weight (F16 [64, 64]) in /path"
};

struct TokenizerData {
  std::string model;  // "llama"
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  int bos_id = 1, eos_id = 2, unk_id = 0, pad_id = -1;
  bool add_bos = true;
  bool add_space_prefix = true;  // tokenizer.ggml.add_space_prefix: false puts no "▁" before text
  std::string chat_template;  // tokenizer.chat_template (Jinja), empty when absent
};

struct ModelSource {
  std::string format;  // "hf" | "gguf" | "llama2c"
  std::string path;
  std::string name;    // human-readable model name when the file has one
  ModelConfig config;
  std::vector<std::unique_ptr<MappedFile>> files;
  // Aligned copies of tensors whose bytes lie misaligned in their file (safetensors written without
  // header padding); their views point here.
  std::vector<std::unique_ptr<uint8_t[]>> owned;
  std::map<std::string, TensorView> tensors;
  std::optional<TokenizerData> tokenizer;  // GGUF
  std::string tokenizer_path;              // HF directory: its tokenizer.model, else its tokenizer.json
  uint64_t file_bytes = 0;

  const TensorView& get(const std::string& name) const;  // ERR_TENSOR_MISSING
  const TensorView* find(const std::string& name) const;
};

// Opens a model: a Hugging Face directory (or its config.json), a .gguf file, or a llama2.c .bin.
// Validates structure and bounds of everything it maps; throws l2::Error naming file and field.
std::unique_ptr<ModelSource> open_model(const std::string& path);

// Per-format loaders (used by open_model).
std::unique_ptr<ModelSource> open_safetensors_dir(const std::string& dir);
std::unique_ptr<ModelSource> open_gguf(const std::string& path);
std::unique_ptr<ModelSource> open_llama2c(const std::string& path);
// A llama.cpp LoRA adapter (GGUF, general.type "adapter"): tensors layers.N.<matrix>.A / .B, its alpha (0 when unset).
std::unique_ptr<ModelSource> open_gguf_lora(const std::string& path, float* alpha);
// A Hugging Face tensor name's canonical name ("model.layers.3.self_attn.q_proj.weight" -> "layers.3.wq"), ""
// for tensors the engine does not use.
std::string hf_canonical_name(const std::string& name);
// Whether a canonical name is one of a layer's seven projection matrices (layers.N.wq ... w3).
bool is_layer_matrix(const std::string& canon);
// Maps one safetensors file's tensors into `src` under canonical_name(file name) (skipped when it returns
// ""), validating every header entry; shared by the model and LoRA adapter loaders.
void read_safetensors(ModelSource& src, const std::string& path, const std::function<std::string(const std::string&)>& canonical_name);

}  // namespace l2
