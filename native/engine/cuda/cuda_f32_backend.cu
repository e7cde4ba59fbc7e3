// The CUDA fp32 path (dtype 'f32'; engine/f32_backend.h): each operation of kernels/f32_ops.h is a
// kernel with one thread per element. Compiled WITHOUT --use_fast_math (CMakeLists.txt) and with
// --fmad=false, so its arithmetic is IEEE as on the host (f32_ops.h uses rounding intrinsics anyway).
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "../../../kernels/launch.cuh"
#include "../f32_backend.h"
#include "cuda_util.cuh"

namespace l2 {

namespace {

template <class F>
__global__ void __launch_bounds__(128) each_kernel(const F f, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) f(i);
}

#define CKF(x) check_cuda((x), #x, ": try dtype 'f16' or 'int8', a smaller contextLength or maxSequences, or device 'cpu'")

class CudaDev {
 public:
  explicit CudaDev(int index) : index_(index) {
    props_ = use_cuda_device(index);
    CKF(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~CudaDev() {
    cudaSetDevice(index_);
    if (stream_) cudaStreamSynchronize(stream_);
    for (void* p : allocs_) cudaFree(p);
    if (stream_) cudaStreamDestroy(stream_);
  }
  CudaDev(const CudaDev&) = delete;
  CudaDev& operator=(const CudaDev&) = delete;

  void* alloc(uint64_t bytes) {
    void* p = nullptr;
    CKF(cudaMalloc(&p, std::max<uint64_t>(bytes, 256)));
    allocs_.push_back(p);
    CKF(cudaMemsetAsync(p, 0, bytes, stream_));
    return p;
  }
  uint64_t free_bytes() const {
    size_t f = 0, t = 0;
    CKF(cudaMemGetInfo(&f, &t));
    return f;
  }
  uint64_t total_bytes() const { return props_.totalGlobalMem; }
  std::string name() const {
    return std::string(props_.name) + " (sm_" + std::to_string(props_.major * 10 + props_.minor) + ", " + std::to_string(props_.multiProcessorCount) +
           " SMs, fp32 path)";
  }
  void activate() { CKF(cudaSetDevice(index_)); }
  void upload(void* dst, const void* src, size_t n) { CKF(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, stream_)); }
  void download(void* dst, const void* src, size_t n) { CKF(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, stream_)); }
  void copy(void* dst, const void* src, size_t n) { CKF(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream_)); }
  template <class F>
  void run(int64_t n, const F& f) {
    if (n <= 0) return;
    const int64_t blocks = std::min<int64_t>((n + 127) / 128, (int64_t)props_.multiProcessorCount * 64);
    kernels::launch_plain(each_kernel<F>, (unsigned)blocks, 128, 0, stream_, f, n);
    CKF(cudaGetLastError());
  }
  void sync() { CKF(cudaStreamSynchronize(stream_)); }

 private:
  int index_;
  cudaDeviceProp props_{};
  cudaStream_t stream_ = nullptr;
  std::vector<void*> allocs_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_f32_backend(const ModelConfig& c, LlamaWeights weights, const BackendOptions& o) {
  return std::make_unique<F32Backend<CudaDev>>(c, weights, o, o.device_index);
}

}  // namespace l2
