// The CUDA fp32 path (engine/f32_backend.h) with the host standing in for the GPU: each operation of
// kernels/f32_ops.h runs as a loop over its elements. It exists so that the fp32 path's logic (paging,
// batching, rotary layouts, llama2.c's order of operations) is tested on machines without a GPU; a GPU
// run must give the same bits. Selected by LLAMA2_CUDA_F32_EMULATE=1 with device 'cuda' and dtype 'f32'.
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include "../../common/error.h"
#include "../../common/thread_pool.h"
#include "../f32_backend.h"

namespace l2 {

namespace {

class HostDev {
 public:
  explicit HostDev(int threads) : pool_(default_threads(threads)) {}

  void* alloc(uint64_t bytes) {
    try {
      mem_.emplace_back(new uint8_t[bytes]());
    } catch (const std::bad_alloc&) {
      fail(code::kOutOfMemory, "out of host memory emulating the CUDA fp32 path (" + std::to_string(bytes) + " bytes)");
    }
    return mem_.back().get();
  }
  uint64_t free_bytes() const { return UINT64_MAX / 4; }
  uint64_t total_bytes() const { return 0; }
  std::string name() const { return "host emulation of the CUDA fp32 path (LLAMA2_CUDA_F32_EMULATE=1)"; }
  void activate() {}
  void upload(void* dst, const void* src, size_t n) { std::memcpy(dst, src, n); }
  void download(void* dst, const void* src, size_t n) { std::memcpy(dst, src, n); }
  void copy(void* dst, const void* src, size_t n) { std::memcpy(dst, src, n); }
  template <class F>
  void run(int64_t n, const F& f) {
    pool_.parallel_for(n, 16, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) f(i);
    });
  }
  void sync() {}

 private:
  ThreadPool pool_;
  std::vector<std::unique_ptr<uint8_t[]>> mem_;
};

}  // namespace

std::unique_ptr<Backend> make_f32_emulated_backend(const ModelConfig& c, LlamaWeights weights, const BackendOptions& o) {
  return std::make_unique<F32Backend<HostDev>>(c, weights, o, o.threads);
}

}  // namespace l2
