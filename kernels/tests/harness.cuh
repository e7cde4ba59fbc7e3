// Standalone kernel test / benchmark harness: shared utilities. Each test family (test_<name>.cu) defines
// `void test_<name>(l2test::Context&)` and is registered by one line in main.cu.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#define CK(x)                                                                                          \
  do {                                                                                                 \
    cudaError_t e_ = (x);                                                                              \
    if (e_ != cudaSuccess) {                                                                           \
      std::fprintf(stderr, "CUDA error '%s' at %s:%d: %s\n", #x, __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(2);                                                                                    \
    }                                                                                                  \
  } while (0)

namespace l2test {

struct Options {
  bool bench = false;  // --bench: timings after the checks
  bool quick = false;  // --quick: small shapes only (compute-sanitizer)
  bool tune = false;   // --tune: time every kernel configuration per bench shape
  bool no_check = false;  // --no-check: benchmarks only
  bool host_only = false; // --host-only: only the host-side emulation checks (no GPU needed)
  std::string only;    // --only=family[,family]
  uint64_t seed = 0x5eed1234abcdull;
  int reps = 25;
};

// ---------------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------------
struct CheckRow {
  std::string family, name;
  bool ok;
  double rel_l2, max_norm;  // ||out - ref|| / ||ref||, max |out - ref| / (|ref| + rms(ref))
  std::string detail;
};
struct BenchRow {
  std::string family, name;
  double ms, tflops, gbs;
  std::string note;
};

struct Context {
  Options opt;
  std::vector<CheckRow> checks;
  std::vector<BenchRow> benches;
  std::vector<std::string> summary;  // extra lines printed at the very end (estimates)
  std::map<std::string, double> metrics;  // named timings (ms) shared between families
  std::vector<std::function<void(Context&)>> finalizers;  // run by main after every family (estimates)
  std::string family;
  uint64_t seed_counter = 0;
  cudaStream_t stream = nullptr;
  int sms = 0, cc_major = 0, cc_minor = 0;
  size_t l2_bytes = 0;
  std::string device_name;

  uint64_t next_seed() { return opt.seed * 0x9E3779B97F4A7C15ull + (++seed_counter) * 0xD1B54A32D192ED03ull; }
  bool check(const std::string& name, bool ok, double rel_l2, double max_norm, const std::string& detail) {
    checks.push_back({family, name, ok, rel_l2, max_norm, detail});
    std::printf("  [%s] %-58s rel_l2 %.2e  max %.2e  %s\n", ok ? " ok " : "FAIL", name.c_str(), rel_l2, max_norm,
                detail.c_str());
    std::fflush(stdout);
    return ok;
  }
  void bench(const std::string& name, double ms, double flops, double bytes, const std::string& note = "") {
    double tf = flops / (ms * 1e-3) / 1e12, gb = bytes / (ms * 1e-3) / 1e9;
    benches.push_back({family, name, ms, tf, gb, note});
    std::printf("  bench %-52s %9.4f ms %8.1f TFLOP/s %8.1f GB/s  %s\n", name.c_str(), ms, tf, gb, note.c_str());
    std::fflush(stdout);
  }
};

// ---------------------------------------------------------------------------------------------------
// Random numbers (splitmix64): deterministic per seed.
// ---------------------------------------------------------------------------------------------------
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() { return (float)((next() >> 40) * (1.0 / 16777216.0)); }   // [0, 1)
  float sym(float a = 1.f) { return (2.f * uniform() - 1.f) * a; }           // [-a, a)
  int below(int n) { return (int)(next() % (uint64_t)n); }
};

inline half f2h(float f) { return __float2half_rn(f); }
inline float h2f(half h) { return __half2float(h); }
inline uint16_t hbits(half h) {
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}
inline uint32_t fbits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
constexpr uint16_t kPoisonH = 0xFFFF;      // NaN; kernels never produce this exact pattern
constexpr uint32_t kPoisonF = 0xFFFFFFFFu;  // NaN
inline half poison_h() {
  half h;
  uint16_t u = kPoisonH;
  std::memcpy(&h, &u, 2);
  return h;
}
inline float poison_f() {
  float f;
  uint32_t u = kPoisonF;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---------------------------------------------------------------------------------------------------
// Device buffers
// ---------------------------------------------------------------------------------------------------
template <class T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  DevBuf() = default;
  explicit DevBuf(size_t count) { alloc(count); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr, o.n = 0; }
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  void alloc(size_t count) {
    if (p) cudaFree(p);
    n = count;
    CK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)));
  }
  size_t bytes() const { return n * sizeof(T); }
  // Both complete before returning: a pageable cudaMemcpy / cudaMemset runs on the legacy stream, which does
  // not order against the tests' non-blocking stream.
  void upload(const std::vector<T>& h) {
    CK(cudaMemcpy(p, h.data(), std::min(h.size(), n) * sizeof(T), cudaMemcpyHostToDevice));
    CK(cudaDeviceSynchronize());
  }
  std::vector<T> download() const {
    std::vector<T> h(n);
    CK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  void poison() {
    CK(cudaMemset(p, 0xFF, bytes()));
    CK(cudaDeviceSynchronize());
  }
};

// Device-side random fill (bench data; checks use host-generated data): hash-based, never zero-heavy.
__global__ void fill_rand_half_kernel(half* p, size_t n, uint64_t seed, float amp);
__global__ void fill_rand_i8_kernel(int8_t* p, size_t n, uint64_t seed);
void fill_rand_half(half* p, size_t n, uint64_t seed, float amp, cudaStream_t s);
void fill_rand_i8(int8_t* p, size_t n, uint64_t seed, cudaStream_t s);

// ---------------------------------------------------------------------------------------------------
// CPU helpers
// ---------------------------------------------------------------------------------------------------
// Runs fn(i) for i in [0, n) on all hardware threads.
inline void parallel_for(int n, const std::function<void(int)>& fn) {
  int nt = (int)std::max(1u, std::thread::hardware_concurrency());
  nt = std::min(nt, n);
  if (nt <= 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int> next{0};
  std::vector<std::thread> th;
  for (int t = 0; t < nt; ++t)
    th.emplace_back([&] {
      for (int i; (i = next.fetch_add(1)) < n;) fn(i);
    });
  for (auto& t : th) t.join();
}

// Accumulates the error statistics of (out, ref) pairs; NaN / unwritten outputs are counted separately.
struct ErrStats {
  double se = 0, sr = 0;  // sum (out-ref)^2, sum ref^2
  double max_abs_err = 0;
  std::vector<std::pair<double, double>> pairs;  // kept for the normalized max (needs rms first)
  long n = 0, nan = 0, unwritten = 0, clobbered = 0;
  void add(double out, double ref) {
    if (std::isnan(out) || std::isinf(out)) {
      ++nan;
      return;
    }
    double d = out - ref;
    se += d * d;
    sr += ref * ref;
    pairs.emplace_back(out, ref);
    ++n;
  }
  double rel_l2() const { return sr > 0 ? std::sqrt(se / sr) : (se > 0 ? 1e30 : 0.0); }
  double max_norm() const {
    double rms = n ? std::sqrt(sr / n) : 0;
    double m = 0;
    for (auto& pr : pairs) m = std::max(m, std::fabs(pr.first - pr.second) / (std::fabs(pr.second) + rms + 1e-30));
    return m;
  }
  // fp16 outputs: rel L2 <= 1e-2 (brief); the per-element bound catches a wrong tile that the global L2 dilutes.
  bool ok(double tol = 1e-2) const {
    return nan == 0 && unwritten == 0 && clobbered == 0 && n > 0 && rel_l2() <= tol && max_norm() <= 2 * tol;
  }
  std::string detail() const {
    char b[160];
    std::snprintf(b, sizeof b, "n=%ld nan=%ld unwritten=%ld clobbered=%ld", n, nan, unwritten, clobbered);
    return b;
  }
};

// Median time (ms) of `reps` runs of fn (after `warm` warm-up runs), timed with CUDA events on the stream.
inline double time_ms(cudaStream_t s, int reps, const std::function<void(int)>& fn, int warm = 3) {
  for (int i = 0; i < warm; ++i) fn(i);
  CK(cudaGetLastError());
  CK(cudaStreamSynchronize(s));
  std::vector<cudaEvent_t> ev(reps + 1);
  for (auto& e : ev) CK(cudaEventCreate(&e));
  CK(cudaEventRecord(ev[0], s));
  for (int i = 0; i < reps; ++i) {
    fn(warm + i);
    CK(cudaEventRecord(ev[i + 1], s));
  }
  CK(cudaEventSynchronize(ev[reps]));
  CK(cudaGetLastError());
  std::vector<double> t(reps);
  for (int i = 0; i < reps; ++i) {
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, ev[i], ev[i + 1]));
    t[i] = ms;
  }
  for (auto& e : ev) cudaEventDestroy(e);
  std::sort(t.begin(), t.end());
  return t[reps / 2];
}

inline std::string fmt(const char* f, ...) {
  char b[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(b, sizeof b, f, ap);
  va_end(ap);
  return b;
}

}  // namespace l2test
