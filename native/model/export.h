// A model opened to be written out as a GGUF file (`llama2 convert`): any source format the engine loads,
// with LoRA adapters merged and a rotary scaling override applied as at load, each tensor under its GGUF name
// in its GGUF type, read row range by row range (converted on the fly: nothing is held beyond the mapped
// source and the merged matrices). Q/K rows of a Hugging Face source are reordered into the interleaved
// rotary layout, as llama.cpp's convert_hf_to_gguf.py permutes them, so that llama.cpp reads the file too.
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../common/thread_pool.h"
#include "lora.h"
#include "model_source.h"

namespace l2 {

struct ExportOptions {
  // "auto" keeps each matrix's stored type (any block type GGUF holds, K-quants included); "f32", "f16",
  // "bf16", "q8_0" or "q4_1" converts every matrix (Q8_0 / Q4_1: a matrix whose rows do not split into
  // 32-blocks stays F16, as llama.cpp's converter does; Q4_1 by llama.cpp's reference rule, what dtype "q4"
  // does at load, with the classifier in Q8_0 as llama-quantize keeps it at 6+ bits). Norm vectors are F32.
  std::string dtype = "auto";
  std::vector<LoraSpec> lora;
  bool rope_override = false;
  RopeScalingConfig rope_scaling;
  int threads = 0;
};

struct ExportTensor {
  std::string name;  // GGUF name: "blk.3.attn_q.weight"
  DType dtype = DType::F32;
  int64_t rows = 1, cols = 0;  // a vector is one row
  const Matrix* matrix = nullptr;
  const std::vector<float>* vector = nullptr;
  bool rope_rows = false;  // Q/K of a Halves-layout source: rows permuted into the interleaved order
};

class ModelExport {
 public:
  static std::unique_ptr<ModelExport> open(const std::string& path, const ExportOptions& o);
  const ModelSource& source() const { return *src_; }
  const std::vector<LoraInfo>& lora() const { return lora_; }
  const std::vector<ExportTensor>& tensors() const { return tensors_; }
  // Rows [row0, row0 + n) of tensor i, in its type and GGUF row order, into `out` (n * row_bytes bytes).
  void read(size_t i, int64_t row0, int64_t n, uint8_t* out);

 private:
  std::unique_ptr<ModelSource> src_;
  LlamaWeights w_;
  std::vector<LoraInfo> lora_;
  std::vector<ExportTensor> tensors_;
  std::unique_ptr<ThreadPool> pool_;
  std::mutex mu_;  // one read at a time (the pool runs one loop at a time)
};

}  // namespace l2
