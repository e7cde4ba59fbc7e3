// Kernel launches with programmatic dependent launch (PDL, sm_90+): a kernel lets its successor be
// scheduled early (pdl_trigger) and the successor does work that needs nothing from it (address math,
// loading its weights) before pdl_wait(), which returns once the predecessor's writes are visible.
// Every kernel launched through `launch` must call pdl_wait() before touching any activation, cache
// or output (reading or writing); weights and other constants may be read before it.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#ifdef L2_SIMT_EMU
#include <functional>
#endif

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

// The current device's SM count, cached per device (launch shapes that size themselves to the GPU).
inline int device_sm_count() {
  constexpr int kMaxDev = 64;
  static std::atomic<int> cached[kMaxDev];
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= kMaxDev) dev = 0;
  int n = cached[dev].load(std::memory_order_relaxed);
  if (n == 0) {
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    if (n < 1) n = 1;
    cached[dev].store(n, std::memory_order_relaxed);  // benign race: every writer stores the same value
  }
  return n;
}

// A kernel-level A/B switch (LLAMA2_* variables read by the kernels, not the backend): `slot` starts at
// kKnobUnread; the first call stores parse(getenv(name)) (value nullptr when unset), unless a test hook has
// stored a setting first, which then wins. Returns the slot's value.
constexpr int kKnobUnread = -2;
inline int env_knob(std::atomic<int>& slot, const char* name, int (*parse)(const char* value)) {
  const int v = slot.load(std::memory_order_relaxed);
  if (v != kKnobUnread) return v;
  int expected = kKnobUnread;
  slot.compare_exchange_strong(expected, parse(std::getenv(name)));
  return slot.load(std::memory_order_relaxed);
}

// Grid-stride decode kernels (gemv.cu, gemv_mma.cu) walk row groups with a grid capped at what fits the SMs
// at once, loading a block's next group before they reduce and store the current one. The cap, one switch
// for both files: kKnobUnread until read, 0 = fit the SMs (the default), -1 = a block per row group
// (LLAMA2_GEMV_PERSIST=0, the launch before the walk, for A/B runs), > 0 = that many blocks (tests).
inline std::atomic<int> g_walk_cap{kKnobUnread};
inline void set_walk_cap(int blocks) { g_walk_cap.store(blocks); }

// Blocks of `kernel` (`threads` each, `smem` bytes of dynamic shared memory) resident per SM, cached per
// kernel and device (a kernel's occupancy depends on its own registers, so not per signature).
template <typename... Params>
int resident_blocks_per_sm(void (*kernel)(Params...), int threads, size_t smem = 0) {
  struct Entry {
    const void* kernel;
    int dev, threads;
    size_t smem;
    int blocks;
  };
  static std::mutex mu;
  static std::vector<Entry> cache;
  int dev = 0;
  cudaGetDevice(&dev);
  std::lock_guard<std::mutex> lock(mu);
  for (const Entry& e : cache)
    if (e.kernel == reinterpret_cast<const void*>(kernel) && e.dev == dev && e.threads == threads && e.smem == smem) return e.blocks;
  int bps = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bps, kernel, threads, smem) != cudaSuccess || bps < 1) bps = 1;
  cache.push_back({reinterpret_cast<const void*>(kernel), dev, threads, smem, bps});
  return bps;
}

// The grid of a walk over n_groups row groups: with `walk` and the default cap, as many blocks as fit the
// SMs; every block takes the same number of groups (the last share may be short by one block's).
template <typename... Params>
int walk_grid(void (*kernel)(Params...), int threads, int n_groups, bool walk, size_t smem = 0) {
  int cap = env_knob(g_walk_cap, "LLAMA2_GEMV_PERSIST", [](const char* e) { return e && *e == '0' ? -1 : 0; });
  if (n_groups < 1) return n_groups;
  if (cap < 0 || (cap == 0 && !walk)) return n_groups;
  if (cap == 0) cap = resident_blocks_per_sm(kernel, threads, smem) * device_sm_count();
  const int per = (n_groups + cap - 1) / cap;
  return (n_groups + per - 1) / per;
}

#ifdef L2_SIMT_EMU
}  // namespace l2::kernels
namespace l2emu {
void launch_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& fn);
}
namespace l2::kernels {
// Host emulation (kernels/emu): the grid runs on the host before this returns.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t, Args&&... args) {
  // The parameters are copied into the closure, which a stream capture keeps for graph replays.
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  l2emu::launch_grid(grid, block, smem, [kernel, params] { std::apply(kernel, params); });
}
template <typename... Params, typename... Args>
void launch_plain(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  launch(kernel, grid, block, smem, stream, std::forward<Args>(args)...);
}
#else
// A kernel launch without PDL (for kernels that do not call pdl_wait()).
template <typename... Params, typename... Args>
void launch_plain(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
}

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

#endif

}  // namespace l2::kernels
