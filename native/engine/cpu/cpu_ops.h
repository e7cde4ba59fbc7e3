// CPU math kernels of the reference backend. fp32 arithmetic; weights of any DType are widened to
// fp32 row by row. Every output element is computed the same way whatever the batch size or thread
// count, so a sequence gives bit-identical results alone or batched with others.
#pragma once
#include <cstdint>

#include "../../model/weights.h"

namespace l2 {

class ThreadPool;

namespace cpu {

// out[t * W.rows + n] = dot(W.row(n), in + t * W.cols), for t < T.
void matmul(const Matrix& W, const float* in, int T, float* out, ThreadPool& pool);
float dot(const float* a, const float* b, int64_t n);
// out = x / rms(x) * w
void rmsnorm(float* out, const float* x, const float* w, int n, float eps);
// Widens one row of any dtype to fp32 (vectorized where the CPU allows).
void row_to_f32(const Matrix& m, int64_t r, float* out);
const char* simd_name();

}  // namespace cpu
}  // namespace l2
