// Shared by the CUDA backend and the CUDA op benches: CUDA results as typed errors, and choosing a
// device (it must exist and be sm_80 or newer).
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "../../common/error.h"

namespace l2 {

// Throws ERR_OUT_OF_MEMORY (with `oom_hint` appended when given) or ERR_CUDA naming the call.
inline void check_cuda(cudaError_t e, const char* what, const char* oom_hint = nullptr) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error
  if (e == cudaErrorMemoryAllocation) fail(code::kOutOfMemory, std::string("out of GPU memory (") + what + ")" + (oom_hint ? oom_hint : ""));
  fail(code::kCuda, std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ") in " + what);
}

inline int round_up(int v, int m) { return (v + m - 1) / m * m; }

// Makes device `index` current after checking that it exists and is supported; returns its properties.
inline cudaDeviceProp use_cuda_device(int index) {
  int count = 0;
  check_cuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (index < 0 || index >= count)
    fail(code::kInvalidArgument, "deviceIndex: " + std::to_string(index) + " is out of range (" + std::to_string(count) + " CUDA devices)");
  check_cuda(cudaSetDevice(index), "cudaSetDevice");
  cudaDeviceProp props;
  check_cuda(cudaGetDeviceProperties(&props, index), "cudaGetDeviceProperties");
  if (props.major < 8)
    fail(code::kDeviceUnavailable, std::string(props.name) + " (sm_" + std::to_string(props.major * 10 + props.minor) +
                                       ") is not supported: llama2-native needs compute capability 8.0 or newer (A100, A10, L4, H100...)");
  return props;
}

}  // namespace l2
