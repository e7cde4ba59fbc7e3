// Kernel test / benchmark driver. Usage:
//   kernel_tests [--quick] [--bench] [--tune] [--no-check] [--host-only] [--no-pdl] [--only=gemm,attention_prefill] [--seed=N] [--reps=N]
// Exit code: 0 when every check passed, 1 when any failed, 2 on a CUDA error.
#include "harness.cuh"
#include "../launch.cuh"

// ---- Test families: one line each. test_<name>.cu defines void test_<name>(l2test::Context&). ----
#define L2_TEST_FAMILIES(X) \
  X(gemm)                   \
  X(gemv)                   \
  X(attention_prefill)      \
  X(kv_int8)                \
  X(w4)

#define L2_DECLARE_FAMILY(name) void test_##name(l2test::Context&);
L2_TEST_FAMILIES(L2_DECLARE_FAMILY)

namespace l2test {

__global__ void fill_rand_half_kernel(half* p, size_t n, uint64_t seed, float amp) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint64_t z = seed + i * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    float u = (float)(z >> 40) * (1.f / 16777216.f);
    p[i] = __float2half_rn((2.f * u - 1.f) * amp);
  }
}
__global__ void fill_rand_i8_kernel(int8_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint64_t z = seed + i * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    p[i] = (int8_t)((int)(z % 255) - 127);
  }
}
void fill_rand_half(half* p, size_t n, uint64_t seed, float amp, cudaStream_t s) {
  l2::kernels::launch_plain(fill_rand_half_kernel, 1024, 256, 0, s, p, n, seed, amp);
  CK(cudaGetLastError());
}
void fill_rand_i8(int8_t* p, size_t n, uint64_t seed, cudaStream_t s) {
  l2::kernels::launch_plain(fill_rand_i8_kernel, 1024, 256, 0, s, p, n, seed);
  CK(cudaGetLastError());
}

}  // namespace l2test

int main(int argc, char** argv) {
  using namespace l2test;
  Context ctx;
  bool no_pdl = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--bench") ctx.opt.bench = true;
    else if (a == "--quick") ctx.opt.quick = true;
    else if (a == "--tune") ctx.opt.tune = ctx.opt.bench = true;
    else if (a == "--no-check") ctx.opt.no_check = true;
    else if (a == "--host-only") ctx.opt.host_only = true;
    else if (a == "--no-pdl") no_pdl = true;
    else if (a.rfind("--only=", 0) == 0) ctx.opt.only = "," + a.substr(7) + ",";
    else if (a.rfind("--seed=", 0) == 0) ctx.opt.seed = std::strtoull(a.c_str() + 7, nullptr, 0);
    else if (a.rfind("--reps=", 0) == 0) ctx.opt.reps = std::max(3, std::atoi(a.c_str() + 7));
    else {
      std::printf("usage: %s [--quick] [--bench] [--tune] [--no-check] [--host-only] [--no-pdl] [--only=fam1,fam2] [--seed=N] [--reps=N]\n", argv[0]);
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  int dev = 0;
  cudaDeviceProp prop{};
  if (ctx.opt.host_only) {
    std::snprintf(prop.name, sizeof prop.name, "host only");
  } else {
    CK(cudaSetDevice(dev));
    CK(cudaGetDeviceProperties(&prop, dev));
  }
  // Kernels launch as in the engine: with programmatic dependent launch on sm_90+ (--no-pdl: without).
  l2::kernels::set_pdl(!ctx.opt.host_only && prop.major >= 9 && !no_pdl);
  ctx.sms = prop.multiProcessorCount;
  ctx.cc_major = prop.major;
  ctx.cc_minor = prop.minor;
  ctx.l2_bytes = prop.l2CacheSize;
  ctx.device_name = prop.name;
  if (!ctx.opt.host_only) CK(cudaStreamCreateWithFlags(&ctx.stream, cudaStreamNonBlocking));
  std::printf("device: %s (sm_%d%d, %d SMs, L2 %.0f MB, smem/block opt-in %zu KB), seed %#llx%s%s\n", prop.name,
              prop.major, prop.minor, prop.multiProcessorCount, prop.l2CacheSize / 1048576.0,
              prop.sharedMemPerBlockOptin / 1024, (unsigned long long)ctx.opt.seed, ctx.opt.quick ? ", quick" : "",
              ctx.opt.bench ? ", bench" : "");

  struct Family {
    const char* name;
    void (*fn)(Context&);
  };
#define L2_FAMILY_ENTRY(name) {#name, &test_##name},
  const Family families[] = {L2_TEST_FAMILIES(L2_FAMILY_ENTRY)};
  for (const Family& f : families) {
    if (!ctx.opt.only.empty() && ctx.opt.only.find("," + std::string(f.name) + ",") == std::string::npos) continue;
    std::printf("=== %s ===\n", f.name);
    std::fflush(stdout);
    ctx.family = f.name;
    f.fn(ctx);
    if (!ctx.opt.host_only) {
      CK(cudaDeviceSynchronize());
      CK(cudaGetLastError());
    }
  }

  for (auto& fin : ctx.finalizers) fin(ctx);

  // Compact table last.
  int fails = 0;
  for (auto& c : ctx.checks) fails += !c.ok;
  if (!ctx.benches.empty()) {
    std::printf("\n%-18s %-52s %10s %9s %9s  %s\n", "family", "benchmark", "ms", "TFLOP/s", "GB/s", "note");
    for (auto& b : ctx.benches)
      std::printf("%-18s %-52s %10.4f %9.1f %9.1f  %s\n", b.family.c_str(), b.name.c_str(), b.ms, b.tflops, b.gbs,
                  b.note.c_str());
  }
  if (fails) {
    std::printf("\nFAILED checks:\n");
    for (auto& c : ctx.checks)
      if (!c.ok)
        std::printf("  %-18s %-58s rel_l2 %.2e max %.2e %s\n", c.family.c_str(), c.name.c_str(), c.rel_l2, c.max_norm,
                    c.detail.c_str());
  }
  for (auto& s : ctx.summary) std::printf("%s\n", s.c_str());
  std::printf("\n%zu checks, %d failed, %zu benchmarks on %s -> %s\n", ctx.checks.size(), fails, ctx.benches.size(),
              ctx.device_name.c_str(), fails ? "FAIL" : "PASS");
  return fails ? 1 : 0;
}
