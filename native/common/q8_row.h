// Q8_0 quantization of whole rows (blocks of 32: fp16 scale, then 32 int8), the loop of every int8 load.
// Bit-identical to q8_quantize_group (q8.h) block by block; an AVX2 version runs where the CPU has it (the
// scalar rule left a 7B load's requantization at 0.55 G values/s per core).
#pragma once
#include <cstdint>

namespace l2 {

// x[0..n) -> n / 32 blocks of 34 bytes at `blocks` (n a multiple of 32).
void q8_quantize_row(const float* x, int64_t n, uint8_t* blocks);

// The scalar version, for tests.
void q8_quantize_row_scalar(const float* x, int64_t n, uint8_t* blocks);

}  // namespace l2
