// fp16 <-> fp32 conversion of whole rows, the loop of every load-time conversion (dtype changes, LoRA
// merges). Bit-identical to half.h's scalar rules (round to nearest even; NaN stays NaN, its payload
// aside); F16C's converters run where the CPU has them (one core of this 2-core VM, 64 MiB rows: 0.9-1.0 G
// values/s scalar, 5.5-7.1 G values/s with F16C, either direction).
#pragma once
#include <cstdint>

namespace l2 {

void fp16_row_to_f32(const uint16_t* h, float* out, int64_t n);
void f32_row_to_fp16(const float* x, uint16_t* out, int64_t n);

// The scalar versions, for tests.
void fp16_row_to_f32_scalar(const uint16_t* h, float* out, int64_t n);
void f32_row_to_fp16_scalar(const float* x, uint16_t* out, int64_t n);

}  // namespace l2
