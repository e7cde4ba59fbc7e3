// l2emu: the CUDA runtime API calls our kernels and their test harness make, on host memory. Streams and
// events are recorded but everything runs synchronously (a launch returns when the grid has run).
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

int emu_cc() {
  const char* v = std::getenv("L2EMU_CC");
  return v && std::atoi(v) == 86 ? 86 : 80;
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
  if (g_sticky != cudaSuccess) return;
  if (!run_grid(grid, block, smem, fn)) {
    g_launch_error = last_error();
    std::fprintf(stderr, "l2emu: kernel failed: %s\n", g_launch_error.c_str());
    g_sticky = cudaErrorLaunchFailure;
  }
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
  *p = user;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = g_allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_allocs.end()) return cudaErrorInvalidValue;
  munmap(it->second.region, it->second.region_size);
  g_allocs.erase(it);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind) {
  std::memmove(dst, src, n);
  return g_sticky;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, n);
  return g_sticky;
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
  std::memset(p, v, n);
  return g_sticky;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
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
cudaError_t cudaStreamSynchronize(cudaStream_t) { return g_sticky; }
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

// An sm_80 (A100-like: 108 SMs, 163 KB of shared memory per block) or, with L2EMU_CC=86, an sm_86 (A10-like).
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  const bool a10 = emu_cc() == 86;
  switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = a10 ? 72 : 108; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = a10 ? 99 * 1024 : 163 * 1024; break;
    case cudaDevAttrComputeCapabilityMajor: *v = 8; break;
    case cudaDevAttrComputeCapabilityMinor: *v = a10 ? 6 : 0; break;
    case cudaDevAttrL2CacheSize: *v = a10 ? 6 << 20 : 40 << 20; break;
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    default: *v = 0; break;
  }
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int dev) {
  std::memset(p, 0, sizeof *p);
  const bool a10 = emu_cc() == 86;
  std::snprintf(p->name, sizeof p->name, "l2emu host SIMT emulation (%s model)", a10 ? "sm_86" : "sm_80");
  cudaDeviceGetAttribute(&p->multiProcessorCount, cudaDevAttrMultiProcessorCount, dev);
  p->major = 8;
  p->minor = a10 ? 6 : 0;
  int v = 0;
  cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  p->sharedMemPerBlockOptin = (size_t)v;
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
  *reinterpret_cast<double*>(e) = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
  return g_sticky;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return g_sticky; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = (float)(*reinterpret_cast<double*>(b) - *reinterpret_cast<double*>(a));
  return cudaSuccess;
}

}  // extern "C"
