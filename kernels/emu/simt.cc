// l2emu: the fibers, the scheduler, the warp collectives, shared memory, cp.async and device memory
// (see simt.h for what is and is not modelled).
#include "simt.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

extern "C" void l2emu_switch(void** save_sp, void* load_sp);  // switch_x86_64.S
// The section of static __shared__ arrays (simt.h), bounded by the linker.
extern "C" unsigned char __start_l2emu_shared[] __attribute__((weak));
extern "C" unsigned char __stop_l2emu_shared[] __attribute__((weak));

namespace l2emu {
namespace {

constexpr size_t kStack = 256 * 1024;  // per fiber, plus a guard page below
constexpr int kMaxThreads = 1024;
constexpr size_t kDynSmem = 256 * 1024;

enum class St { Run, Bar, Warp, Done };

struct CpOp {
  unsigned char* dst;
  const void* src;
  int bytes;
  bool valid;
};

struct WgOp {  // one wgmma.mma_async of this thread, waiting for its wait_group
  float* d;
  int n;  // accumulator registers (N / 2)
  uint64_t da, db;
  bool scale_d;
};

struct Fiber {
  void* sp = nullptr;
  St st = St::Done;
  uint3 tid{};
  int warp_gen = 0;  // warp collectives this thread has entered
  std::vector<std::vector<CpOp>> cp_groups;  // committed, oldest first
  std::vector<CpOp> cp_open;
  std::vector<std::vector<WgOp>> wg_groups;  // committed wgmma groups, oldest first
  std::vector<WgOp> wg_open;
};

struct Warp {
  unsigned arrived[2] = {0, 0};
  int gen_of[2] = {-1, -1};
  unsigned lanes = 0, live = 0;  // lanes the block has in this warp; those not exited yet
  unsigned char slots[2][32][kSlot];
};

struct State {
  std::vector<unsigned char*> stacks;
  Fiber fibers[kMaxThreads];
  std::vector<Warp> warps;
  int n = 0, live = 0, at_bar = 0, cur = -1;
  void* sched_sp = nullptr;
  const std::function<void()>* fn = nullptr;
  bool aborted = false;
  std::string error;
  unsigned char* dyn = nullptr;
  size_t dyn_size = 0;
  std::mt19937 rng{12345};
  int order = 0;  // 0 forward, 1 reverse, 2 shuffle
  bool cp_early = false;  // L2EMU_CP_ASYNC=early: cp.async copies at issue instead of at the covering wait
};
State g;

Fiber& me() { return g.fibers[g.cur]; }

void yield() { l2emu_switch(&me().sp, g.sched_sp); }

void release_warp(int w) {
  for (int i = w * 32; i < std::min(g.n, w * 32 + 32); ++i)
    if (g.fibers[i].st == St::Warp) g.fibers[i].st = St::Run;
}

void check_bar() {
  if (g.at_bar > 0 && g.at_bar == g.live) {
    for (int i = 0; i < g.n; ++i)
      if (g.fibers[i].st == St::Bar) g.fibers[i].st = St::Run;
    g.at_bar = 0;
  }
}

extern "C" void l2emu_fiber_main() {
  (*g.fn)();
  Fiber& f = me();
  if (!f.wg_groups.empty() || !f.wg_open.empty())
    fail("thread %d exited with wgmma operations in flight (no wgmma.wait_group 0 after them)", g.cur);
  f.st = St::Done;
  --g.live;
  const int w = g.cur / 32;
  g.warps[(size_t)w].live &= ~(1u << (g.cur % 32));
  // Lanes still waiting in a collective this lane never joined: a kernel bug (a full-mask collective with an
  // exited lane), reported rather than hung.
  for (int i = w * 32; i < std::min(g.n, w * 32 + 32); ++i)
    if (g.fibers[i].st == St::Warp)
      fail("thread %d exited while lane %d of its warp waits in a warp collective (full mask with an exited lane)", g.cur, i % 32);
  check_bar();
  l2emu_switch(&f.sp, g.sched_sp);
  std::abort();  // never resumed
}

void* fresh_stack(int i) {
  if ((size_t)i >= g.stacks.size()) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    auto* p = static_cast<unsigned char*>(mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (p == MAP_FAILED) std::abort();
    mprotect(p, page, PROT_NONE);  // overflow guard
    g.stacks.push_back(p + page);
  }
  auto* top = reinterpret_cast<uint64_t*>(g.stacks[(size_t)i] + kStack);  // 16-byte aligned
  // l2emu_switch pops r15 r14 r13 r12 rbx rbp, then returns into l2emu_fiber_main with rsp = top - 8
  // (as after a call: rsp % 16 == 8), whose own return address is 0.
  top[-1] = 0;
  top[-2] = reinterpret_cast<uint64_t>(&l2emu_fiber_main);
  for (int k = 3; k <= 8; ++k) top[-k] = 0;
  return top - 8;
}

}  // namespace

int lane() { return g.cur % 32; }
int warp_in_block() { return g.cur / 32; }

void fail(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  char where[160];
  std::snprintf(where, sizeof where, " [block (%u,%u,%u) thread (%u,%u,%u)]", blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  g.error = std::string(buf) + where;
  g.aborted = true;
  if (g.cur >= 0) l2emu_switch(&me().sp, g.sched_sp);  // abandoned: never resumed
  std::fprintf(stderr, "l2emu: %s\n", g.error.c_str());
  std::abort();
}

void syncthreads() {
  me().st = St::Bar;
  ++g.at_bar;
  check_bar();
  if (me().st == St::Bar) yield();
}

const unsigned char* warp_exchange(unsigned mask, const void* mine, int bytes) {
  Fiber& f = me();
  const int w = g.cur / 32, l = g.cur % 32;
  Warp& W = g.warps[(size_t)w];
  if (mask != 0xffffffffu && mask != W.live) fail("warp collective with mask %#x (live lanes %#x): partial masks are not emulated", mask, W.live);
  if (mask & W.lanes & ~W.live) fail("warp collective with mask %#x names exited lanes (live %#x)", mask, W.live);
  const int gen = f.warp_gen++;
  const int b = gen & 1;
  if (W.gen_of[b] != gen) {
    W.gen_of[b] = gen;
    W.arrived[b] = 0;
  }
  std::memcpy(W.slots[b][l], mine, (size_t)bytes);
  W.arrived[b] |= 1u << l;
  if ((W.arrived[b] & W.live) != W.live) {
    f.st = St::Warp;
    yield();
  } else {
    release_warp(w);
  }
  return &W.slots[b][0][0];
}

// ---- shared memory addresses: dynamic smem at [kDynBase, +size); statics at kStaticBias + their section offset ----
namespace {
constexpr uint32_t kDynBase = 0x10000000u;
constexpr uint32_t kStaticBias = 0x80000000u;
}  // namespace

uint32_t smem_addr(const void* p) {
  auto* c = static_cast<const unsigned char*>(p);
  if (g.dyn && c >= g.dyn && c <= g.dyn + kDynSmem) return kDynBase + (uint32_t)(c - g.dyn);
  if (!(c >= __start_l2emu_shared && c <= __stop_l2emu_shared)) fail("cvta.to.shared of %p: not a shared-memory object", p);
  return (uint32_t)(kStaticBias + (uint32_t)(c - __start_l2emu_shared));
}

void* smem_ptr(uint32_t a, int bytes) {
  if (a >= kDynBase && a < kDynBase + kDynSmem) {
    const size_t off = a - kDynBase;
    if (off + (size_t)bytes > g.dyn_size) fail("shared access [%zu, +%d) past the %zu bytes of dynamic shared memory", off, bytes, g.dyn_size);
    return g.dyn + off;
  }
  const size_t off = (size_t)(a - kStaticBias);
  if (a < kStaticBias || off + (size_t)bytes > (size_t)(__stop_l2emu_shared - __start_l2emu_shared))
    fail("shared address %#x (+%d bytes) is outside every shared-memory object", a, bytes);
  return __start_l2emu_shared + off;
}

unsigned char* dynamic_smem() { return g.dyn; }

// A cp.async may land any time between its issue and the wait that covers it. Late (the default) exposes reads
// before the wait; early (L2EMU_CP_ASYNC=early) exposes refills of a buffer that is still being read (by other
// threads without a barrier in between, or by a wgmma not yet retired).
void cp_async(uint32_t dst, const void* src, int bytes, bool valid) {
  auto* d = static_cast<unsigned char*>(smem_ptr(dst, bytes));
  if (!g.cp_early) {
    me().cp_open.push_back({d, src, bytes, valid});
  } else if (valid) {
    std::memcpy(d, src, (size_t)bytes);
  } else {
    std::memset(d, 0, (size_t)bytes);
  }
}
void cp_async_commit() {
  Fiber& f = me();
  f.cp_groups.push_back(std::move(f.cp_open));
  f.cp_open.clear();
}
void cp_async_wait(int n_pending) {
  Fiber& f = me();
  while ((int)f.cp_groups.size() > n_pending) {
    for (const CpOp& op : f.cp_groups.front()) {
      if (op.valid) std::memcpy(op.dst, op.src, (size_t)op.bytes);
      else std::memset(op.dst, 0, (size_t)op.bytes);
    }
    f.cp_groups.erase(f.cp_groups.begin());
  }
}

// ---- wgmma (sm_90a), by the PTX ISA: m64nNk16, f16 inputs, f32 accumulators, A and B from shared memory
// through matrix descriptors, both K-major (no transpose), 128-byte swizzle. Performed at the
// wgmma.wait_group that retires its group (the latest moment the ISA allows), reading shared memory then: a
// kernel that refills a stage or touches the accumulators before that wait gets wrong numbers.
namespace {
// Descriptor: bits 0-13 start address >> 4 (an 18-bit shared address), 16-29 leading byte offset >> 4 (unused
// for swizzled K-major operands whose K extent fits one swizzle row), 32-45 stride byte offset >> 4 (between
// 8-row groups), 49-51 base offset, 62-63 swizzle (1 = 128-byte).
struct Desc {
  uint32_t start, sbo;
};
Desc decode_desc(uint64_t d) {
  const int swizzle = (int)(d >> 62), base_off = (int)((d >> 49) & 7);
  if (swizzle != 1) fail("wgmma descriptor %#llx: swizzle mode %d is not modelled (only 128-byte)", (unsigned long long)d, swizzle);
  if (base_off != 0) fail("wgmma descriptor %#llx: base offset %d is not modelled", (unsigned long long)d, base_off);
  // The emulator's dynamic shared memory sits at kDynBase, whose low 18 bits are zero (256 KB window).
  return {kDynBase + (uint32_t)((d & 0x3FFF) << 4), (uint32_t)(((d >> 32) & 0x3FFF) << 4)};
}
// Element (row, k) of a K-major 128-byte-swizzled operand: row r at (r / 8) * SBO + (r % 8) * 128 bytes, k at
// 2 k bytes, then address bits 4-6 XOR bits 7-9 (the hardware swizzle of the absolute address).
float operand(const Desc& m, int r, int k) {
  uint32_t a = m.start + (uint32_t)(r / 8) * m.sbo + (uint32_t)(r % 8) * 128u + 2u * (uint32_t)k;
  a ^= ((a >> 7) & 7u) << 4;
  uint16_t bits;
  std::memcpy(&bits, smem_ptr(a, 2), 2);
  return __half2float(__ushort_as_half(bits));
}
void exec_wgmma(const WgOp& op, int warp, int lane) {
  const Desc A = decode_desc(op.da), B = decode_desc(op.db);
  const int gq = lane / 4, q = lane % 4;
  for (int i = 0; i < op.n; ++i) {
    // Accumulator register i: row 16 w + g + 8 ((i >> 1) & 1), column 8 (i >> 2) + 2 q + (i & 1).
    const int row = 16 * warp + gq + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + 2 * q + (i & 1);
    double acc = op.scale_d ? op.d[i] : 0.0;
    for (int k = 0; k < 16; ++k) acc += (double)operand(A, row, k) * (double)operand(B, col, k);
    op.d[i] = (float)acc;
  }
}
}  // namespace

void wgmma_f16(float* d, int n, uint64_t da, uint64_t db, bool scale_d) {
  if (n != 64 && n != 128) fail("wgmma: %d accumulator registers (N = %d) is not modelled", n, 2 * n);
  // .sync.aligned: every lane of the warp issues the same wgmma (checked per warp).
  struct In {
    uint64_t da, db;
  } in{da, db};
  const unsigned char* sl = warp_exchange(0xffffffffu, &in, (int)sizeof in);
  for (int l = 0; l < 32; ++l) {
    In x;
    std::memcpy(&x, sl + l * kSlot, sizeof x);
    if (x.da != da || x.db != db) fail("wgmma: lane %d of the warp passed other descriptors than lane %d", l, lane());
  }
  me().wg_open.push_back({d, n, da, db, scale_d});
}
void wgmma_commit() {
  Fiber& f = me();
  f.wg_groups.push_back(std::move(f.wg_open));
  f.wg_open.clear();
}
void wgmma_wait(int n_pending) {
  Fiber& f = me();
  const int warp = (g.cur / 32) % 4, l = g.cur % 32;  // warp rank in its warpgroup, lane
  while ((int)f.wg_groups.size() > n_pending) {
    for (const WgOp& op : f.wg_groups.front()) exec_wgmma(op, warp, l);
    f.wg_groups.erase(f.wg_groups.begin());
  }
}

std::string g_last_error;
const char* last_error() { return g_last_error.c_str(); }

bool run_grid(dim3 grid, dim3 block, size_t dyn_smem, const std::function<void()>& fn) {
  const int n = (int)(block.x * block.y * block.z);
  if (n <= 0 || n > kMaxThreads) {
    g_last_error = "invalid block size " + std::to_string(n);
    return false;
  }
  if (dyn_smem > kDynSmem) {
    g_last_error = "dynamic shared memory of " + std::to_string(dyn_smem) + " bytes exceeds the emulator's " + std::to_string(kDynSmem);
    return false;
  }
  if (!g.dyn) g.dyn = static_cast<unsigned char*>(std::aligned_alloc(128, kDynSmem));
  if (const char* o = std::getenv("L2EMU_ORDER")) g.order = !std::strcmp(o, "reverse") ? 1 : !std::strcmp(o, "shuffle") ? 2 : 0;
  if (const char* c = std::getenv("L2EMU_CP_ASYNC")) g.cp_early = !std::strcmp(c, "early");
  g.dyn_size = dyn_smem;
  g.fn = &fn;
  gridDim = grid;
  blockDim = block;
  std::vector<int> order((size_t)n);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = uint3{bx, by, bz};
        std::memset(g.dyn, 0xff, dyn_smem);  // NaN poison: nothing reads shared memory it did not write
        if (__start_l2emu_shared && __stop_l2emu_shared > __start_l2emu_shared)
          std::memset(__start_l2emu_shared, 0xff, (size_t)(__stop_l2emu_shared - __start_l2emu_shared));
        g.n = g.live = n;
        g.at_bar = 0;
        g.warps.assign((size_t)(n + 31) / 32, Warp{});
        for (int w = 0; w * 32 < n; ++w) {
          Warp& W = g.warps[(size_t)w];
          W.lanes = W.live = n - w * 32 >= 32 ? 0xffffffffu : ((1u << (n - w * 32)) - 1);
        }
        for (int i = 0; i < n; ++i) {
          Fiber& f = g.fibers[i];
          f.sp = fresh_stack(i);
          f.st = St::Run;
          f.tid = uint3{(unsigned)(i % block.x), (unsigned)((i / block.x) % block.y), (unsigned)(i / (block.x * block.y))};
          f.warp_gen = 0;
          f.cp_groups.clear();
          f.cp_open.clear();
          f.wg_groups.clear();
          f.wg_open.clear();
          order[(size_t)i] = g.order == 1 ? n - 1 - i : i;
        }
        while (g.live > 0) {
          if (g.order == 2) std::shuffle(order.begin(), order.end(), g.rng);
          bool ran = false;
          for (int i : order) {
            if (g.fibers[i].st != St::Run) continue;
            ran = true;
            g.cur = i;
            threadIdx = g.fibers[i].tid;
            l2emu_switch(&g.sched_sp, g.fibers[i].sp);
            g.cur = -1;
            if (g.aborted) {
              g.aborted = false;
              g_last_error = g.error;
              return false;
            }
          }
          if (!ran) {
            int bar = 0, warp = 0;
            for (int i = 0; i < n; ++i) bar += g.fibers[i].st == St::Bar, warp += g.fibers[i].st == St::Warp;
            char buf[200];
            std::snprintf(buf, sizeof buf, "deadlock in block (%u,%u,%u): %d threads at __syncthreads, %d in warp collectives, %d exited", bx, by, bz, bar,
                          warp, n - g.live);
            g_last_error = buf;
            return false;
          }
        }
      }
  return true;
}

}  // namespace l2emu
