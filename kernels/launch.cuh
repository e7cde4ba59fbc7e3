// Kernel launches with programmatic dependent launch (PDL, sm_90+): a kernel lets its successor be
// scheduled early (pdl_trigger) and the successor does work that needs nothing from it (address math,
// loading its weights) before pdl_wait(), which returns once the predecessor's writes are visible.
// Every kernel launched through `launch` must call pdl_wait() before touching any activation, cache
// or output (reading or writing); weights and other constants may be read before it.
#pragma once
#include <cuda_runtime.h>

#include <utility>

namespace l2::kernels {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Set once per process by the backend (compute capability 9.0+); off elsewhere.
bool pdl_enabled();
void set_pdl(bool on);

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  if (pdl_enabled()) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace l2::kernels
