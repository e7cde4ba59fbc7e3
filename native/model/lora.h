// LoRA adapters merged into the weights at load: W' = W + scale * B A for each adapted matrix (PEFT's
// `merge_and_unload`), so the backends run the merged model at the base model's speed.
#pragma once
#include <string>
#include <vector>

#include "weights.h"

namespace l2 {

struct LoraSpec {
  std::string path;  // a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)
  float scale = 1.f;  // multiplies the adapter's own alpha / r
};

struct LoraInfo {
  std::string path;
  int rank = 0;
  float alpha = 0.f;
  float scale = 0.f;  // the factor B A is merged with: user scale x alpha / r (or / sqrt(r) for rsLoRA)
  std::vector<std::string> modules;  // adapted matrices, e.g. "q_proj", "v_proj"
  int matrices = 0;
};

// Merges each adapter in order into `w` (the merged matrices become owned storage, in the base matrix's
// type: F32 / F16 / BF16 / Q8_0 as they are, other block types as Q8_0). Validates the adapter against the
// model (ERR_TENSOR_SHAPE, ERR_FORMAT_UNSUPPORTED, ... naming the adapter file and tensor).
// `alloc` gives the merged matrices' storage (the CPU backend's huge pages, or the heap).
std::vector<LoraInfo> apply_lora(LlamaWeights& w, const ModelConfig& c, const std::vector<LoraSpec>& adapters, int threads,
                                 const OwnedAlloc& alloc = heap_owned);

}  // namespace l2
