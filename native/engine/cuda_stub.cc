// Linked when the addon is built without CUDA (no nvcc found): the CUDA entry points say so.
#include "../common/error.h"
#include "backend.h"
#include "op_bench.h"

namespace l2 {

static const char* kWhy = "this build of llama2-native has no CUDA backend (nvcc was not found when it was built)";

bool cuda_available(std::string* why) {
  if (why) *why = kWhy;
  return false;
}

std::vector<CudaDeviceInfo> cuda_devices() { return {}; }

double cuda_copy_bandwidth(int, size_t) { return 0; }

std::unique_ptr<Backend> make_cuda_backend(const ModelConfig&, LlamaWeights, const BackendOptions&) {
  fail(code::kDeviceUnavailable, kWhy);
}

std::unique_ptr<OpBench> make_cuda_op_bench(const OpBenchSpec&) { fail(code::kDeviceUnavailable, kWhy); }

}  // namespace l2
