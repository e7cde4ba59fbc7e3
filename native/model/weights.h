// Llama weights as views into a ModelSource (no copies unless a dtype conversion is asked for),
// validated against the config. Backends read these; the CUDA backend repacks them on upload.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "model_source.h"

namespace l2 {

class ThreadPool;

struct Matrix {
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;
  std::string name;  // for messages

  size_t row_stride() const { return row_bytes(dtype, cols); }
  size_t bytes() const { return row_stride() * (size_t)rows; }
  const uint8_t* row(int64_t r) const { return data + row_stride() * (size_t)r; }
};

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;
  Matrix wq, wk, wv, wo, w1, w2, w3;  // w1 = gate, w2 = down, w3 = up
};

struct LlamaWeights {
  Matrix tok_embeddings;
  Matrix output;  // the classifier; same data as tok_embeddings when tied
  std::vector<float> output_norm;
  std::vector<LayerWeights> layers;
  // Storage of converted matrices, one buffer per matrix, uninitialized when allocated (a 7B conversion
  // writes every byte anyway; zero-filling first cost 12% of a Q4_K_M load).
  struct Owned {
    std::unique_ptr<uint8_t, std::function<void(uint8_t*)>> bytes;  // with its allocator's release
    size_t size = 0;
    bool huge_pages = false;  // the allocator placed it in transparent-huge-page memory
    bool holds(const uint8_t* p) const { return bytes && p >= bytes.get() && p < bytes.get() + size; }
  };
  std::vector<Owned> owned;

  // Every distinct matrix once (the tied classifier is not counted twice).
  std::vector<Matrix*> matrices();
  uint64_t matrix_bytes();
};

// Maps and validates (ERR_TENSOR_SHAPE / ERR_TENSOR_MISSING / ERR_TENSOR_DTYPE naming the tensor).
LlamaWeights map_weights(const ModelSource& src);

// Row `r` of `m` as fp32.
void dequantize_row(const Matrix& m, int64_t r, float* out);
// Converts a run of values of one row type to another (Q8_0 <-> float types included).
void convert_row(DType from, const uint8_t* src, DType to, uint8_t* dst, int64_t cols);

using ConvertProgress = std::function<void(uint64_t bytes_done)>;
// Where converted matrices go; the default is the heap (new[]).
using OwnedAlloc = std::function<LlamaWeights::Owned(size_t bytes)>;
LlamaWeights::Owned heap_owned(size_t bytes);
// The type each matrix of a load gets (a rule per matrix, for loads that mix types).
using MatrixTarget = std::function<DType(const Matrix&)>;
// Every matrix `to`; for Q8_0 / Q4_1, matrices whose rows do not split into 32-groups become F16 instead, as
// llama.cpp's converter does.
MatrixTarget uniform_target(DType to);
// dtype "q4": Q4_1 groups for every matrix but the classifier (output, or the embedding when tied), which gets
// Q8_0, as llama-quantize keeps it at 6+ bits (on stories260K a 4-bit classifier cost 0.5 nats per token).
// Rows that do not split into 32-groups stay F16. `w` must outlive the rule.
MatrixTarget q4_targets(const LlamaWeights& w);
// Converts every matrix whose dtype differs from its target into owned storage (parallel over rows).
void convert_weights(LlamaWeights& w, const MatrixTarget& to, ThreadPool& pool, const ConvertProgress& progress, const OwnedAlloc& alloc = heap_owned);
// True when some matrix has a load-only block type (Q4_K ...: ggml_blocks.h).
bool has_load_only(LlamaWeights& w);
// Decodes the matrices of load-only types into their targets (types the backends run), the others untouched.
// `progress` gets the file bytes of the matrices visited so far.
void decode_load_only(LlamaWeights& w, const MatrixTarget& to, ThreadPool& pool, const ConvertProgress& progress, const OwnedAlloc& alloc = heap_owned);
// dtype "auto" on the CPU: the 4-bit matrices (Q4_0 / Q4_1 / Q4_K) become Q4_1 blocks (Q4_1 kept as mapped,
// Q4_0 exactly, Q4_K with fp16 group scales: ggml_blocks.h blocks_to_q4_1), the other load-only ones int8.
void decode_keeping_q4(LlamaWeights& w, ThreadPool& pool, const ConvertProgress& progress, const OwnedAlloc& alloc = heap_owned);

}  // namespace l2
