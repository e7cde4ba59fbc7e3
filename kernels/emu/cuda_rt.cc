// l2emu: the CUDA runtime API calls our kernels, their test harness and the CUDA backend make, on host
// memory. Everything runs synchronously (a launch returns when the grid has run), except under stream
// capture: then launches, async copies and memsets are recorded, and a graph launch replays them (reading
// host buffers when it runs, as a GPU's copy node does).
// Device allocations sit between PROT_NONE guard pages (the end of a buffer is at most 255 bytes before
// the page after it), so an out-of-bounds access faults; the fault handler names the kernel's block and
// thread and the nearest allocation.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "simt.h"

namespace l2emu {
const char* last_error();
namespace {

struct Alloc {
  unsigned char* region;
  size_t region_size, size;
};
std::map<uintptr_t, Alloc> g_allocs;  // by user pointer
std::mutex g_mu;
cudaError_t g_sticky = cudaSuccess;
std::string g_launch_error;
size_t g_page = 0;
size_t g_allocated = 0;
constexpr size_t kEmuMemory = (size_t)8 << 30;  // the emulated device's memory (cudaMemGetInfo)

// Stream capture: the recorded operations of the graph being captured.
struct Graph {
  std::vector<std::function<void()>> ops;
};
Graph* g_capture = nullptr;
bool g_capture_failed = false;
// Runs op now, or records it while a stream is being captured.
void run_or_record(std::function<void()> op) {
  if (g_capture) g_capture->ops.push_back(std::move(op));
  else op();
}

int emu_cc() {
  const char* v = std::getenv("L2EMU_CC");
  const int cc = v ? std::atoi(v) : 80;
  return cc == 86 || cc == 90 ? cc : 80;
}

void on_fault(int sig, siginfo_t* si, void*) {
  char buf[512];
  const uintptr_t a = reinterpret_cast<uintptr_t>(si->si_addr);
  const char* what = "outside every allocation";
  long off = 0;
  uintptr_t base = 0;
  size_t size = 0;
  for (auto& [p, al] : g_allocs) {
    const uintptr_t lo = reinterpret_cast<uintptr_t>(al.region), hi = lo + al.region_size;
    if (a >= lo && a < hi) {
      base = p;
      size = al.size;
      off = (long)(a - p);
      what = a < p ? "before the start of" : "past the end of";
      break;
    }
  }
  int n = std::snprintf(buf, sizeof buf,
                        "l2emu: invalid memory access (signal %d) at %p, %s allocation %p (%zu bytes, offset %ld), in block (%u,%u,%u) thread (%u,%u,%u)\n",
                        sig, si->si_addr, what, (void*)base, size, off, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y,
                        threadIdx.z);
  if (n > 0) (void)!write(2, buf, (size_t)n);
  _exit(3);
}

void install_handler() {
  static bool done = false;
  if (done) return;
  done = true;
  g_page = (size_t)sysconf(_SC_PAGESIZE);
  static unsigned char alt[1 << 16];
  stack_t ss{};
  ss.ss_sp = alt;
  ss.ss_size = sizeof alt;
  sigaltstack(&ss, nullptr);
  struct sigaction sa{};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);
}

}  // namespace

// Launch entry used by kernels/launch.cuh in emulation builds.
void launch_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& fn) {
  install_handler();
  run_or_record([grid, block, smem, fn] {
    if (g_sticky != cudaSuccess) return;
    if (!run_grid(grid, block, smem, fn)) {
      g_launch_error = last_error();
      std::fprintf(stderr, "l2emu: kernel failed: %s\n", g_launch_error.c_str());
      g_sticky = cudaErrorLaunchFailure;
    }
  });
}

}  // namespace l2emu

using namespace l2emu;

extern "C" {

cudaError_t cudaMalloc(void** p, size_t size) {
  install_handler();
  std::lock_guard<std::mutex> lk(g_mu);
  const size_t body = (size + 255) / 256 * 256;
  const size_t pages = (body + g_page - 1) / g_page * g_page;
  const size_t region_size = pages + 2 * g_page;
  auto* r = static_cast<unsigned char*>(mmap(nullptr, region_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (r == MAP_FAILED) return cudaErrorMemoryAllocation;
  mprotect(r, g_page, PROT_NONE);
  mprotect(r + g_page + pages, g_page, PROT_NONE);
  unsigned char* user = r + g_page + pages - body;
  std::memset(user, 0xa5, body);  // garbage, as cudaMalloc leaves it
  g_allocs[reinterpret_cast<uintptr_t>(user)] = {r, region_size, size};
  g_allocated += size;
  *p = user;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = g_allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_allocs.end()) return cudaErrorInvalidValue;
  munmap(it->second.region, it->second.region_size);
  g_allocated -= it->second.size;
  g_allocs.erase(it);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind) {
  if (g_capture) {
    g_capture_failed = true;
    return cudaErrorStreamCaptureUnsupported;
  }
  std::memmove(dst, src, n);
  return g_sticky;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  run_or_record([=] { std::memmove(dst, src, n); });
  return g_sticky;
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height, cudaMemcpyKind,
                              cudaStream_t) {
  run_or_record([=] {
    for (size_t r = 0; r < height; ++r) std::memmove(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
  });
  return g_sticky;
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
  std::memset(p, v, n);
  return g_sticky;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  run_or_record([=] { std::memset(p, v, n); });
  return g_sticky;
}

// Pinned host memory: plain host memory (no guard pages: the host writes it).
cudaError_t cudaMallocHost(void** p, size_t n) {
  *p = std::aligned_alloc(256, (n + 255) / 256 * 256);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaHostAlloc(void** p, size_t n, unsigned int) { return cudaMallocHost(p, n); }
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  *total_b = kEmuMemory;
  *free_b = g_allocated < kEmuMemory ? kEmuMemory - g_allocated : 0;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}

// Graphs: capture records the stream's operations; instantiate copies them; launch replays them in order.
cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) {
  if (g_capture) return cudaErrorIllegalState;
  g_capture = new Graph;
  g_capture_failed = false;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t* out) {
  if (!g_capture) return cudaErrorIllegalState;
  Graph* gr = g_capture;
  g_capture = nullptr;
  if (g_capture_failed) {
    delete gr;
    *out = nullptr;
    return cudaErrorStreamCaptureInvalidated;
  }
  *out = reinterpret_cast<cudaGraph_t>(gr);
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t g, unsigned long long) {
  if (!g) return cudaErrorInvalidValue;
  *exec = reinterpret_cast<cudaGraphExec_t>(new Graph(*reinterpret_cast<Graph*>(g)));
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  delete reinterpret_cast<Graph*>(g);
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
  delete reinterpret_cast<Graph*>(e);
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t) {
  if (g_capture) return cudaErrorStreamCaptureUnsupported;
  for (auto& op : reinterpret_cast<Graph*>(e)->ops) op();
  return g_sticky;
}

cudaError_t cudaGetLastError() {
  cudaError_t e = g_sticky;
  return e;
}
cudaError_t cudaPeekAtLastError() { return g_sticky; }
const char* cudaGetErrorString(cudaError_t e) {
  if (e == cudaSuccess) return "no error";
  if (e == cudaErrorLaunchFailure && !g_launch_error.empty()) return g_launch_error.c_str();
  return "l2emu error";
}
const char* cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorLaunchFailure"; }

cudaError_t cudaDeviceSynchronize() { return g_sticky; }
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  if (g_capture) {
    g_capture_failed = true;
    return cudaErrorStreamCaptureUnsupported;
  }
  return g_sticky;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  *s = reinterpret_cast<cudaStream_t>(new int(0));
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<int*>(s);
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}

// An sm_80 (A100-like: 108 SMs, 163 KB of shared memory per block), with L2EMU_CC=86 an sm_86 (A10-like), with
// L2EMU_CC=90 an sm_90 (H100 SXM-like: 132 SMs, 227 KB per block; it runs the sm_90a wgmma code too).
struct EmuDevice {
  const char* name;
  int major, minor, sms, smem_optin, smem_per_sm, l2;
};
EmuDevice emu_device() {
  switch (emu_cc()) {
    case 86: return {"sm_86", 8, 6, 72, 99 * 1024, 100 * 1024, 6 << 20};
    case 90: return {"sm_90", 9, 0, 132, 227 * 1024, 228 * 1024, 50 << 20};
    default: return {"sm_80", 8, 0, 108, 163 * 1024, 164 * 1024, 40 << 20};
  }
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  const EmuDevice d = emu_device();
  switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = d.sms; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = d.smem_optin; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *v = d.smem_per_sm; break;
    case cudaDevAttrComputeCapabilityMajor: *v = d.major; break;
    case cudaDevAttrComputeCapabilityMinor: *v = d.minor; break;
    case cudaDevAttrL2CacheSize: *v = d.l2; break;
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    default: *v = 0; break;
  }
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int dev) {
  std::memset(p, 0, sizeof *p);
  const EmuDevice d = emu_device();
  std::snprintf(p->name, sizeof p->name, "l2emu host SIMT emulation (%s model)", d.name);
  cudaDeviceGetAttribute(&p->multiProcessorCount, cudaDevAttrMultiProcessorCount, dev);
  p->major = d.major;
  p->minor = d.minor;
  p->sharedMemPerBlockOptin = (size_t)d.smem_optin;
  p->sharedMemPerMultiprocessor = (size_t)d.smem_per_sm;
  p->sharedMemPerBlock = 48 * 1024;
  cudaDeviceGetAttribute(&p->l2CacheSize, cudaDevAttrL2CacheSize, dev);
  p->totalGlobalMem = (size_t)8 << 30;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }

// Events: wall-clock time (meaningless for performance; the harness's bench mode still runs).
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(new double(0));
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<double*>(e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  run_or_record([e] { *reinterpret_cast<double*>(e) = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count(); });
  return g_sticky;
}
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return g_sticky; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = (float)(*reinterpret_cast<double*>(b) - *reinterpret_cast<double*>(a));
  return cudaSuccess;
}

}  // extern "C"
