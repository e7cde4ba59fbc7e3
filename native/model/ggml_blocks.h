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

// The 4-bit block types a GPU runs as they are (kernels.h "W4"): Q4_0, Q4_1 and Q4_K.
bool runs_as_w4(DType t);
// Rewrites `cols` values (whole blocks) of a runs_as_w4 type as W4 groups of 32: q gets cols / 2 bytes (byte i of
// a group: value i in the low nibble, value i + 16 in the high one), meta cols / 32 fp16 pairs (scale, bias),
// value = scale * q + bias. Q4_0 (d, -8 d) and Q4_1 (d, m) keep their values exactly; Q4_K's sub-block scale
// d * sc and bias -dmin * m are rounded once to fp16 (relative 2^-11 each). False for other types.
bool blocks_to_w4(DType t, const uint8_t* src, uint8_t* q, uint16_t* meta, int64_t cols);
// The same groups as Q4_1 blocks (fp16 d = scale, fp16 m = bias, 16 nibble bytes): the form the CPU backend runs
// 4-bit matrices in. Q4_1 is copied, Q4_0 rewritten exactly, Q4_K as blocks_to_w4. False for other types.
bool blocks_to_q4_1(DType t, const uint8_t* src, uint8_t* dst, int64_t cols);
// Quantizes `cols` (a multiple of 32) fp32 values into Q4_1 blocks by llama.cpp's reference rule (per 32: d =
// (max - min) / 15, m = min, q = round((x - min) / d) clamped to 0..15): dtype "q4" of other types.
void q4_1_quantize_row(const float* x, int64_t cols, uint8_t* dst);
// The scalar version (q4_1_quantize_row runs an AVX2 one with the same bits where the CPU has it), for tests.
void q4_1_quantize_row_scalar(const float* x, int64_t cols, uint8_t* dst);

}  // namespace l2
