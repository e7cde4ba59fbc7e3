// l2emu self-test: kernels with planted bugs, each of which the emulator must report, plus the tensor-core
// operations against a plain product. Usage: emu_selftest CASE (exit 0 when the emulator behaved as
// expected; the "oob" case instead dies with the emulator's fault message and exit code 3).
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common.cuh"
#include "launch.cuh"
#include "mma.cuh"

using namespace l2::kernels;

namespace {

// Missing barrier: thread 0 writes a shared value that the others read without waiting.
__global__ void race_kernel(int* out) {
  __shared__ int s;
  if (threadIdx.x == 0) s = 7;
  out[threadIdx.x] = s;
}

// Reads a cp.async destination before waiting for it.
__global__ void early_read_kernel(const half* src, float* out) {
  __shared__ __align__(16) half buf[8];
  mma::cp_async_16(mma::smem_u32(buf), src, true);
  mma::cp_async_commit();
  out[0] = __half2float(buf[0]);  // no cp_async_wait<0>() before this
  mma::cp_async_wait<0>();
  out[1] = __half2float(buf[0]);
}

__global__ void oob_kernel(const float* p, int n, float* out) { out[0] = p[n + 64]; }

// Half the warp leaves, the other half shuffles with a full mask.
__global__ void exited_lane_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = warp_sum(1.f);
}

__global__ void misaligned_kernel(const half* p, float* out) {
  uint4 v = ld_stream(p + 4);  // 8 bytes past a 256-byte-aligned buffer
  out[0] = (float)v.x;
}

// One m16n8k16 through ldmatrix (A row-major, B stored [n][k]) and mma.sync; D = A . B^T.
__global__ void mma_kernel(const half* A, const half* B, float* D) {
  __shared__ __align__(16) half sA[16 * 16], sB[8 * 16];
  for (int i = threadIdx.x; i < 256; i += 32) sA[i] = A[i];
  for (int i = threadIdx.x; i < 128; i += 32) sB[i] = B[i];
  __syncthreads();
  const int lane = threadIdx.x;
  uint32_t a[4], b[2];
  // A: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
  mma::ldsm_x4(a, mma::smem_u32(sA + (lane & 15) * 16 + (lane >> 4) * 8));
  // B [n][k]: matrices (n 0-7, k 0-7), (n 0-7, k 8-15).
  mma::ldsm_x2(b, mma::smem_u32(sB + (lane & 7) * 16 + ((lane >> 3) & 1) * 8));
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  mma::mma_f16f32(c, a, b);
  const int g = lane / 4, q = lane % 4;
  D[g * 8 + 2 * q] = c[0];
  D[g * 8 + 2 * q + 1] = c[1];
  D[(g + 8) * 8 + 2 * q] = c[2];
  D[(g + 8) * 8 + 2 * q + 1] = c[3];
}

// One wgmma m64n128k16 (a warpgroup: 128 threads) from 128-byte-swizzled K-major tiles in dynamic shared memory:
// A 64 x 16 at offset 0, B 128 x 16 at 8192, each row 128 bytes apart (64 halves: the first 16 used), row r of
// an 8-row group at r % 8, 16-byte chunk c stored at chunk c ^ (r % 8), groups 1024 bytes apart. mode 1: A is
// overwritten after the wgmma is issued, before its wait (the ISA leaves the result undefined; the emulator
// reads at the wait, so the product changes); mode 2: the kernel exits without waiting.
__device__ uint64_t wg_desc(uint32_t saddr) {
  return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}
__global__ void wgmma_kernel(const half* A, const half* B, float* D, int mode) {
  L2_DYNAMIC_SMEM(smem);
  half* s = reinterpret_cast<half*>(smem);
  auto at = [](int r, int k) { return (r / 8) * 512 + (r % 8) * 64 + (((k / 8) ^ (r % 8)) * 8) + k % 8; };  // halves
  for (int i = threadIdx.x; i < 64 * 16; i += 128) s[at(i / 16, i % 16)] = A[i];
  for (int i = threadIdx.x; i < 128 * 16; i += 128) s[4096 + at(i / 16, i % 16)] = B[i];
  __syncthreads();
  float d[64];
  for (float& x : d) x = 0.f;
  const uint32_t base = mma::smem_u32(smem);
  l2emu::wgmma_f16(d, 64, wg_desc(base), wg_desc(base + 8192), true);
  l2emu::wgmma_commit();
  if (mode == 2) return;
  __syncthreads();
  if (mode == 1) {
    for (int i = threadIdx.x; i < 64 * 16; i += 128) s[at(i / 16, i % 16)] = __float2half(0.f);
    __syncthreads();
  }
  l2emu::wgmma_wait(0);
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane / 4, q = lane % 4;
  for (int i = 0; i < 64; ++i) D[(16 * w + g + 8 * ((i >> 1) & 1)) * 128 + 8 * (i >> 2) + 2 * q + (i & 1)] = d[i];
}

template <class T>
T* dev(size_t n) {
  void* p = nullptr;
  cudaMalloc(&p, n * sizeof(T));
  return static_cast<T*>(p);
}

int fail(const char* what) {
  std::printf("selftest: %s\n", what);
  return 1;
}

// 0 when the launch just made left an error (printed under `name`), else the failure `what`.
int expect_launch_error(const char* name, const char* what) {
  const cudaError_t e = cudaGetLastError();
  std::printf("%s: %s\n", name, cudaGetErrorString(e));
  return e != cudaSuccess ? 0 : fail(what);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string c = argc > 1 ? argv[1] : "";
  if (c == "race") {  // caught by running the threads of an interval in reverse order
    int* out = dev<int>(64);
    setenv("L2EMU_ORDER", "forward", 1);
    launch(race_kernel, 1, 64, 0, nullptr, out);
    const bool fwd_ok = out[63] == 7;
    setenv("L2EMU_ORDER", "reverse", 1);
    std::memset(out, 0, 64 * sizeof(int));
    launch(race_kernel, 1, 64, 0, nullptr, out);
    const bool rev_wrong = out[63] != 7;
    std::printf("race: forward order %s, reverse order %s\n", fwd_ok ? "hides it" : "shows it", rev_wrong ? "shows it" : "hides it");
    return rev_wrong ? 0 : fail("the missing barrier went unnoticed");
  }
  if (c == "early") {
    half* src = dev<half>(8);
    for (int i = 0; i < 8; ++i) src[i] = __float2half(3.f);
    float* out = dev<float>(2);
    launch(early_read_kernel, 1, 1, 0, nullptr, src, out);
    std::printf("early: before the wait %g, after %g\n", out[0], out[1]);
    return out[0] != 3.f && out[1] == 3.f ? 0 : fail("a cp.async destination read before its wait held the data");
  }
  if (c == "oob") {
    float* p = dev<float>(1024);
    float* out = dev<float>(1);
    launch(oob_kernel, 1, 1, 0, nullptr, p, 1024, out);
    return fail("an out-of-bounds read did not fault");
  }
  if (c == "exited") {
    float* out = dev<float>(32);
    launch(exited_lane_kernel, 1, 32, 0, nullptr, out);
    return expect_launch_error("exited", "a full-mask shuffle with exited lanes passed");
  }
  if (c == "misaligned") {
    half* p = dev<half>(64);
    float* out = dev<float>(1);
    launch(misaligned_kernel, 1, 1, 0, nullptr, p, out);
    return expect_launch_error("misaligned", "a misaligned 16-byte load passed");
  }
  if (c == "mma") {
    half* A = dev<half>(256);
    half* B = dev<half>(128);
    float* D = dev<float>(128);
    std::vector<float> a(256), b(128);
    for (int i = 0; i < 256; ++i) a[i] = (float)((i * 7) % 11 - 5), A[i] = __float2half(a[i]);
    for (int i = 0; i < 128; ++i) b[i] = (float)((i * 5) % 9 - 4), B[i] = __float2half(b[i]);
    launch(mma_kernel, 1, 32, 0, nullptr, A, B, D);
    int bad = 0;
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        float ref = 0.f;
        for (int k = 0; k < 16; ++k) ref += a[m * 16 + k] * b[n * 16 + k];
        bad += D[m * 8 + n] != ref;
      }
    std::printf("mma: %d of 128 outputs wrong\n", bad);
    return bad == 0 && cudaGetLastError() == cudaSuccess ? 0 : fail("ldmatrix + mma.sync do not compute A . B^T");
  }
  if (c == "wgmma" || c == "wgmma-late" || c == "wgmma-exit") {
    half* A = dev<half>(64 * 16);
    half* B = dev<half>(128 * 16);
    float* D = dev<float>(64 * 128);
    std::vector<float> a(64 * 16), b(128 * 16);
    for (int i = 0; i < 64 * 16; ++i) a[i] = (float)((i * 7) % 11 - 5), A[i] = __float2half(a[i]);
    for (int i = 0; i < 128 * 16; ++i) b[i] = (float)((i * 5) % 9 - 4), B[i] = __float2half(b[i]);
    const int mode = c == "wgmma" ? 0 : c == "wgmma-late" ? 1 : 2;
    launch(wgmma_kernel, 1, 128, 24576, nullptr, A, B, D, mode);
    if (mode == 2) return expect_launch_error("wgmma-exit", "a kernel that exited with a wgmma in flight passed");
    int bad = 0, zero = 0;
    for (int m = 0; m < 64; ++m)
      for (int n = 0; n < 128; ++n) {
        float ref = 0.f;
        for (int k = 0; k < 16; ++k) ref += a[m * 16 + k] * b[n * 16 + k];
        bad += D[m * 128 + n] != ref;
        zero += D[m * 128 + n] == 0.f;
      }
    std::printf("%s: %d of 8192 outputs differ from A . B^T (%d zero)\n", c.c_str(), bad, zero);
    if (mode == 0) return bad == 0 && cudaGetLastError() == cudaSuccess ? 0 : fail("wgmma does not compute A . B^T");
    return zero == 8192 ? 0 : fail("a wgmma whose A was overwritten before its wait kept the old A");
  }
  std::printf("usage: emu_selftest race|early|oob|exited|misaligned|mma|wgmma|wgmma-late|wgmma-exit\n");
  return 2;
}
