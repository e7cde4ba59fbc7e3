// GGUF's 4-6 bit block types (llama.cpp's Q4_0 ... Q6_K), decoded to fp32. The matrix kernels do not
// run these: each backend decodes such matrices once at load into a type they run (int8 by default, or
// the dtype asked for), so a Q4_K_M file from the Hub loads without a converter. The arithmetic follows
// ggml's reference dequantizers operation for operation, so the values are the ones llama.cpp computes
// (bit-equal: test/native/ggml-blocks.cc against blocks quantized and decoded by ggml itself).
#pragma once
#include <cstdint>

namespace l2 {

enum class DType : uint8_t;

struct BlockLayout {
  int elements;  // values per block, along a row
  int bytes;     // bytes per block
};

// The layout of a block type; {1, element bytes} for F32/F16/BF16.
BlockLayout block_layout(DType t);
// True for the types decoded at load (not run by any backend).
bool is_load_only(DType t);
// Decodes `cols` values (a whole number of blocks) of load-only type `t`.
void decode_blocks(DType t, const uint8_t* src, float* dst, int64_t cols);
// Rewrites Q4_0 / Q5_0 blocks as Q8_0 blocks holding the same values exactly ((q - 8) or (q - 16) times
// the same fp16 scale); false for the other types, whose values need requantizing.
bool blocks_to_q8_0(DType t, const uint8_t* src, uint8_t* dst, int64_t cols);

}  // namespace l2
