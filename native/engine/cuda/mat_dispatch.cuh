// The matrix kernel a step of T tokens runs for one weight matrix, shared by the CUDA backend and the CUDA
// op benches (so `llama2 micro --device cuda` times what the engine runs at each batch).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "../../../kernels/kernels.h"
#include "../cuda_plan.h"

namespace l2 {

// A tuning switch from the environment: an integer clamped to [lo, hi], `dflt` when unset or empty.
inline int env_int(const char* name, int lo, int hi, int dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::clamp(std::atoi(v), lo, hi) : dflt;
}

// A matrix on the device: fp16 w[npad][ldw]; int8 q[npad][ldw] + scales s[npad][ldw / 32]; or 4-bit
// q4[npad][ldw / 2] + (scale, bias) pairs m[npad][ldw / 32] (kernels.h).
struct DevMat {
  CudaFmt fmt = CudaFmt::F16;
  int n = 0, k = 0, npad = 0, ldw = 0;
  half* w = nullptr;
  int8_t* q = nullptr;
  half* s = nullptr;
  uint8_t* q4 = nullptr;
  half2* m = nullptr;
  bool int8() const { return fmt == CudaFmt::W8; }
  uint64_t bytes() const { return cuda_matrix_bytes(n, k, fmt); }
};

// Which kernel: the CUDA-core GEMV (gemv.cu), the tensor-core decode kernel (gemv_mma.cu) or the tiled GEMM
// (gemm.cu). Chosen from per-matrix timings at the 7B shapes on H200 (kernel_tests --only=gemv --bench,
// stop 14; NOTES.md "H200 run"):
//  - fp16: the GEMV up to 4 tokens (it beat gemv_mma at T = 1, 2, 4 on every matrix), the GEMM from 5 (at
//    T = 8 the GEMM's 4 matrices of a layer took 0.138 ms, the GEMV 0.196, gemv_mma 0.152; the GEMV at T = 4
//    took 0.135, and the GEMM's time hardly moves with M up to 32).
//  - int8: the GEMV at T = 1; gemv_mma for 2..16 tokens (layer 0.101-0.115 ms against the GEMV's 0.103 at
//    T = 2, 0.132 at 4, 0.196 at 8 and the GEMM's 0.158 at 16), except the N = 4096 matrices (wo, down) up to
//    4 tokens, where the GEMV measured faster (down T = 2: 0.0219 against 0.0316 ms); the GEMM from 17 (T = 32:
//    0.161 against gemv_mma's 0.216).
// A100 / A10: the same choices, unmeasured (their CUDA cores have less arithmetic per byte than the H200's,
// which favours the tensor-core kernels further). For end-to-end A/B runs: LLAMA2_GEMV_MMA=0 never takes
// gemv_mma, =1 takes it for every step of 2..32 tokens; LLAMA2_GEMV_MAX_T=0..8 sets the GEMV's largest step
// for both weight types (LLAMA2_GEMV_MMA=0 LLAMA2_GEMV_MAX_T=8 is the dispatch before stop 14);
// LLAMA2_GEMM_SPLITK=1 turns the GEMM's split-K off; LLAMA2_GEMV_MMA_T1=1 runs one-token steps on gemv_mma
// (stop 24: it walks its row blocks grid-stride at one token now, as the GEMV does; its int8 conversion
// costs ~1.75 instructions per weight against the GEMV's ~3, and before either walked, the H200 measured it
// ahead of the GEMV on int8 qkv, 0.0192 against 0.0203 ms, but behind on the other 7B matrices, 100.2 against
// 80.4 us per layer: an A/B for the record, unmeasured end to end).
// 4-bit (W4): the GEMV up to kGemvMaxT tokens, the GEMM beyond (no gemv_mma variant; unmeasured, NOTES "Stop 27").
class MatDispatch {
 public:
  enum class Kind { Gemv, GemvMma, Gemm };

  int gemv_limit(CudaFmt f) const { return gemv_max_t_ >= 0 ? gemv_max_t_ : f != CudaFmt::F16 ? kernels::kGemvMaxT : 4; }
  Kind kind(CudaFmt f, int T, int N) const {
    if (f == CudaFmt::W4) return T <= gemv_limit(f) ? Kind::Gemv : Kind::Gemm;
    const bool int8 = f == CudaFmt::W8;
    if (T == 1 && gemv_mma_t1_) return Kind::GemvMma;
    if (gemv_mma_env_ == 1 && T >= 2 && T <= kernels::kGemvMmaMaxT) return Kind::GemvMma;
    if (int8 && gemv_mma_env_ != 0 && T >= 2 && T <= 16 && !(T <= 4 && N <= 4096)) return Kind::GemvMma;
    return T <= gemv_limit(f) ? Kind::Gemv : Kind::Gemm;
  }
  // out = A[T][lda] . m^T through the epilogue; sk: the GEMM's split-K workspace (nullptr: none).
  // Returns the kernel that ran.
  Kind run(const DevMat& m, const half* A, int lda, int T, const kernels::Epilogue& e, const kernels::GemmSplitK* sk,
           cudaStream_t stream) const {
    namespace k = kernels;
    Kind kd = kind(m.fmt, T, m.npad);
    // gemv_mma declines shapes it does not cover (K % 64, N % 16): then the GEMV or the GEMM.
    if (kd == Kind::GemvMma && (m.int8() ? k::gemv_mma_w8(A, lda, m.q, m.s, m.ldw, T, m.npad, m.n, m.ldw, e, stream)
                                         : k::gemv_mma_f16(A, lda, m.w, m.ldw, T, m.npad, m.n, m.ldw, e, stream)))
      return kd;
    if (kd == Kind::GemvMma) kd = T <= gemv_limit(m.fmt) ? Kind::Gemv : Kind::Gemm;
    if (kd == Kind::Gemv) {
      if (m.fmt == CudaFmt::W4) k::gemv_w4(A, lda, m.q4, m.m, m.ldw, T, m.npad, m.n, m.ldw, e, stream);
      else if (m.int8()) k::gemv_w8(A, lda, m.q, m.s, m.ldw, T, m.npad, m.n, m.ldw, e, stream);
      else k::gemv_f16(A, lda, m.w, m.ldw, T, m.npad, m.n, m.ldw, e, stream);
    } else {
      if (split_k_off_) sk = nullptr;
      if (m.fmt == CudaFmt::W4) k::gemm_w4(A, lda, m.q4, m.m, m.ldw, T, m.npad, m.n, m.ldw, e, stream, sk);
      else if (m.int8()) k::gemm_w8(A, lda, m.q, m.s, m.ldw, T, m.npad, m.n, m.ldw, e, stream, sk);
      else k::gemm_f16(A, lda, m.w, m.ldw, T, m.npad, m.n, m.ldw, e, stream, sk);
    }
    return kd;
  }
  static const char* name(Kind kd) { return kd == Kind::Gemv ? "gemv" : kd == Kind::GemvMma ? "gemv_mma" : "gemm"; }

 private:
  // The GEMV's largest step when LLAMA2_GEMV_MAX_T=0..8 is set (A/B runs), else -1: kind()'s choice.
  const int gemv_max_t_ = env_int("LLAMA2_GEMV_MAX_T", 0, kernels::kGemvMaxT, -1);
  // LLAMA2_GEMV_MMA: unset = kind()'s choice, 0 = never gemv_mma, 1 = gemv_mma for every 2..32 tokens.
  const int gemv_mma_env_ = env_int("LLAMA2_GEMV_MMA", 0, 1, -1);
  const bool split_k_off_ = env_int("LLAMA2_GEMM_SPLITK", 0, 1, 0) == 1;
  const bool gemv_mma_t1_ = env_int("LLAMA2_GEMV_MMA_T1", 0, 1, 0) == 1;
};

}  // namespace l2
