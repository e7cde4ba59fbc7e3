// CUDA op micro-benchmarks: the backend's decode kernels on seeded random device data at the shapes asked
// for, timed with CUDA events over back-to-back runs. A matrix runs on the kernel the engine picks for a step
// of `batch` tokens (mat_dispatch.cuh: GEMV, gemv_mma or GEMM with split-K); attention is the decode kernel
// (kernels/attention_decode.cu) for `batch` sequences.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "../../../kernels/kernels.h"
#include "../../../kernels/launch.cuh"
#include "../../common/error.h"
#include "../backend.h"
#include "../op_bench.h"
#include "cuda_util.cuh"
#include "mat_dispatch.cuh"

namespace l2 {

namespace k = kernels;

namespace {

#define CK(x) check_cuda((x), #x)

__device__ float hash_uniform(size_t i, uint32_t seed) {  // in [-1, 1)
  uint32_t x = (uint32_t)i * 2654435761u ^ (uint32_t)(i >> 32) * 40503u ^ seed * 2246822519u;
  x ^= x >> 15;
  x *= 2246822519u;
  x ^= x >> 13;
  x *= 3266489917u;
  x ^= x >> 16;
  return (float)(x >> 8) * (2.f / 16777216.f) - 1.f;
}
__global__ void fill_half(half* p, size_t n, float scale, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = __float2half(hash_uniform(i, seed) * scale);
}
__global__ void fill_int8(int8_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = (int8_t)(hash_uniform(i, seed) * 127.f);
}

// Device allocations freed together.
class DeviceArena {
 public:
  ~DeviceArena() {
    for (void* p : ptrs_) cudaFree(p);
  }
  template <typename T>
  T* alloc(size_t n) {
    void* p = nullptr;
    CK(cudaMalloc(&p, n * sizeof(T)));
    ptrs_.push_back(p);
    bytes += n * sizeof(T);
    return static_cast<T*>(p);
  }
  size_t bytes = 0;

 private:
  std::vector<void*> ptrs_;
};

class CudaOpBench final : public OpBench {
 public:
  explicit CudaOpBench(const OpBenchSpec& s) : s_(s) {
    std::string why;
    if (!cuda_available(&why)) fail(code::kDeviceUnavailable, why);
    const cudaDeviceProp props = use_cuda_device(s.device_index);
    CK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CK(cudaEventCreate(&e0_));
    CK(cudaEventCreate(&e1_));
    if (s.op == "matvec") setup_matvec(props.name);
    else setup_attention(props.name);
    CK(cudaStreamSynchronize(stream_));
    run(1);  // warm-up: module load, first-touch
  }
  ~CudaOpBench() override {
    cudaSetDevice(s_.device_index);
    if (stream_) cudaStreamSynchronize(stream_);
    if (e0_) cudaEventDestroy(e0_);
    if (e1_) cudaEventDestroy(e1_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  double run(int iters) override {
    CK(cudaSetDevice(s_.device_index));
    CK(cudaEventRecord(e0_, stream_));
    for (int i = 0; i < iters; ++i) launch();
    CK(cudaGetLastError());
    CK(cudaEventRecord(e1_, stream_));
    CK(cudaEventSynchronize(e1_));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0_, e1_));
    return ms * 1e-3;
  }

 private:
  void grid_fill(half* p, size_t n, float scale, uint32_t seed) { k::launch_plain(fill_half, 1024, 256, 0, stream_, p, n, scale, seed); }

  void setup_matvec(const std::string& gpu) {
    m_.fmt = s_.dtype == "int8" ? CudaFmt::W8 : s_.dtype == "q4" ? CudaFmt::W4 : CudaFmt::F16;
    m_.n = s_.rows;
    m_.k = s_.cols;
    m_.npad = round_up(s_.rows, k::kPadN);
    m_.ldw = round_up(s_.cols, k::kPadK);
    const size_t wn = (size_t)m_.npad * m_.ldw;
    if (m_.int8()) {
      m_.q = arena_.alloc<int8_t>(wn);
      m_.s = arena_.alloc<half>(wn / 32);
      k::launch_plain(fill_int8, 1024, 256, 0, stream_, m_.q, wn, 3);
      grid_fill(m_.s, wn / 32, 0.0002f, 5);
    } else if (m_.fmt == CudaFmt::W4) {  // random nibbles, (scale, bias) pairs
      m_.q4 = arena_.alloc<uint8_t>(wn / 2);
      m_.m = arena_.alloc<half2>(wn / 32);
      k::launch_plain(fill_int8, 1024, 256, 0, stream_, reinterpret_cast<int8_t*>(m_.q4), wn / 2, 3);
      grid_fill(reinterpret_cast<half*>(m_.m), wn / 16, 0.002f, 5);
    } else {
      m_.w = arena_.alloc<half>(wn);
      grid_fill(m_.w, wn, 0.02f, 3);
    }
    a_ = arena_.alloc<half>((size_t)s_.batch * m_.ldw);
    grid_fill(a_, (size_t)s_.batch * m_.ldw, 1.f, 7);
    out_ = arena_.alloc<float>((size_t)s_.batch * m_.npad);
    // The GEMM's split-K workspace, as the backend allocates it (counters start at zero).
    sk_.ws = arena_.alloc<float>(k::kGemmSplitKBytes / sizeof(float));
    sk_.ws_bytes = k::kGemmSplitKBytes;
    sk_.counters = arena_.alloc<int>(k::kGemmSplitKCounters);
    sk_.n_counters = k::kGemmSplitKCounters;
    CK(cudaMemsetAsync(sk_.counters, 0, k::kGemmSplitKCounters * sizeof(int), stream_));
    const uint64_t wbytes = m_.bytes();
    bytes = wbytes + (uint64_t)s_.batch * m_.ldw * 2 + (uint64_t)s_.batch * m_.npad * 4;
    flops = 2.0 * s_.rows * s_.cols * s_.batch;
    const char* kernel = MatDispatch::name(mats_.kind(m_.fmt, s_.batch, m_.npad));
    description = std::string("cuda ") + kernel + " " + s_.dtype + " [" + std::to_string(s_.batch) + "x" + std::to_string(s_.cols) + "] . [" +
                  std::to_string(s_.rows) + "x" + std::to_string(s_.cols) + "]^T on " + gpu;
  }

  void setup_attention(const std::string& gpu) {
    const int B = s_.batch, H = s_.heads, KH = s_.kv_heads, hd = s_.head_dim, ctx = s_.context;
    const int max_blocks = (ctx + k::kKvBlock - 1) / k::kKvBlock;
    const size_t pool = (size_t)B * max_blocks * KH * k::kKvBlock * hd;
    half* kc = arena_.alloc<half>(pool);
    half* vc = arena_.alloc<half>(pool);
    grid_fill(kc, pool, 1.f, 11);
    grid_fill(vc, pool, 1.f, 12);
    half* q = arena_.alloc<half>((size_t)B * H * hd);
    grid_fill(q, (size_t)B * H * hd, 1.f, 13);
    half* out = arena_.alloc<half>((size_t)B * H * hd);
    std::vector<int32_t> tables((size_t)B * max_blocks), start(B), count(B, 1), pos0(B, ctx - 1);
    for (size_t i = 0; i < tables.size(); ++i) tables[i] = (int32_t)i;  // each sequence its own blocks
    for (int b = 0; b < B; ++b) start[b] = b;
    int32_t* d_tables = arena_.alloc<int32_t>(tables.size());
    int32_t* d_seg = arena_.alloc<int32_t>(3 * (size_t)B);
    // On the bench's stream (a non-blocking one: work on the legacy default stream would not be ordered
    // before its kernels); pageable sources are staged before the calls return.
    CK(cudaMemcpyAsync(d_tables, tables.data(), tables.size() * 4, cudaMemcpyHostToDevice, stream_));
    CK(cudaMemcpyAsync(d_seg, start.data(), (size_t)B * 4, cudaMemcpyHostToDevice, stream_));
    CK(cudaMemcpyAsync(d_seg + B, count.data(), (size_t)B * 4, cudaMemcpyHostToDevice, stream_));
    CK(cudaMemcpyAsync(d_seg + 2 * B, pos0.data(), (size_t)B * 4, cudaMemcpyHostToDevice, stream_));
    ap_.q = q;
    ap_.ldq = H * hd;
    ap_.out = out;
    ap_.ldo = H * hd;
    ap_.k_cache = kc;
    ap_.v_cache = vc;
    ap_.block_tables = d_tables;
    ap_.max_blocks = max_blocks;
    ap_.seg_start = d_seg;
    ap_.seg_count = d_seg + B;
    ap_.seg_pos0 = d_seg + 2 * B;
    ap_.n_segments = B;
    ap_.n_heads = H;
    ap_.n_kv_heads = KH;
    ap_.head_dim = hd;
    ap_.scale = 1.f / sqrtf((float)hd);
    max_ctx_ = ctx;
    ws_ = arena_.alloc<uint8_t>(k::attention_decode_workspace(B, H, hd, ctx));
    CK(cudaMemsetAsync(ws_, 0, k::attention_decode_workspace(B, H, hd, ctx), stream_));  // merge counters start at 0
    bytes = 2ull * B * ctx * KH * hd * 2 + 2ull * B * H * hd * 2;
    flops = 4.0 * B * H * (double)ctx * hd;
    description = "cuda flash-decoding, " + std::to_string(B) + " seq x " + std::to_string(ctx) + " positions, " + std::to_string(H) + "/" +
                  std::to_string(KH) + " heads of " + std::to_string(hd) + ", fp16 cache, on " + gpu;
  }

  void launch() {
    if (s_.op == "attention") {
      k::attention_decode(ap_, s_.batch, max_ctx_, ws_, stream_);
      return;
    }
    k::Epilogue epi;
    epi.kind = k::Epi::StoreF32;
    epi.out = out_;
    epi.ldo = m_.npad;
    mats_.run(m_, a_, m_.ldw, s_.batch, epi, &sk_, stream_);
  }

  OpBenchSpec s_;
  DeviceArena arena_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t e0_ = nullptr, e1_ = nullptr;
  // matvec
  const MatDispatch mats_;
  DevMat m_;
  k::GemmSplitK sk_;
  half* a_ = nullptr;
  float* out_ = nullptr;
  // attention
  k::AttentionParams ap_;
  int max_ctx_ = 0;
  void* ws_ = nullptr;
};

}  // namespace

std::unique_ptr<OpBench> make_cuda_op_bench(const OpBenchSpec& s) { return std::make_unique<CudaOpBench>(s); }

}  // namespace l2
