#include "weight_pages.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace l2::cpu {

namespace {

constexpr size_t kHuge = size_t{2} << 20;

// Whether the kernel's THP switch lets madvise(MADV_HUGEPAGE) work: "always" or "madvise" (read once; a
// load asks for every converted matrix).
bool thp_available() {
  static const bool on = [] {
    std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string s;
    std::getline(f, s);
    const size_t a = s.find('['), b = s.find(']');
    const std::string mode = a == std::string::npos || b == std::string::npos || b < a ? "" : s.substr(a + 1, b - a - 1);
    return mode == "always" || mode == "madvise";
  }();
  return on;
}

// A /proc/meminfo field in bytes (0 when unknown).
uint64_t meminfo(const std::string& field) {
  std::ifstream f("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (f >> key >> kb) {
    std::getline(f, unit);
    if (key == field) return kb * 1024;
  }
  return 0;
}

}  // namespace

WeightPages::~WeightPages() {
  if (base_) munmap(base_, size_);
}

LlamaWeights::Owned WeightPages::allocate(size_t bytes) {
  // Converted weights are written once and then streamed by every step: straight into huge pages, so that
  // neither a copy nor a page fault per 4 KB (~11 us each on a 2-core VM: 18 s of a 7B Q4_K_M load) is paid.
  const char* env = std::getenv("LLAMA2_CPU_HUGEPAGES");
  if ((env && std::string(env) == "0") || bytes < kHuge || !thp_available()) return heap_owned(bytes);
  const size_t size = (bytes + 2 * kHuge - 1) / kHuge * kHuge;
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return heap_owned(bytes);  // the heap fails the same way, as a bad_alloc the load reports
  uint8_t* start = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(p) + kHuge - 1) / kHuge * kHuge);
  LlamaWeights::Owned o;
  o.huge_pages = madvise(start, size - (size_t)(start - static_cast<uint8_t*>(p)), MADV_HUGEPAGE) == 0;
  o.bytes = {start, [p, size](uint8_t*) { munmap(p, size); }};
  o.size = bytes;
  return o;
}

void WeightPages::place(LlamaWeights& w, ThreadPool& pool, const std::function<void(uint64_t)>& progress) {
  const char* env = std::getenv("LLAMA2_CPU_HUGEPAGES");
  const std::string force = env ? env : "";
  if (force == "0") return;
  const std::vector<Matrix*> ms = w.matrices();
  // The converted buffer holding a matrix, if any: those allocate() put in huge pages stay where they are;
  // others are freed as soon as their matrix is copied, so that a converted model is not held twice.
  auto owned_of = [&](const Matrix& m) -> LlamaWeights::Owned* {
    for (auto& o : w.owned)
      if (o.holds(m.data)) return &o;
    return nullptr;
  };
  size_t total = 0, kept = 0;
  for (Matrix* m : ms) {
    const LlamaWeights::Owned* o = owned_of(*m);
    if (o && o->huge_pages) kept += m->bytes();
    else total += (m->bytes() + 63) / 64 * 64;
  }
  auto describe = [&](bool thp, size_t bytes) {
    description_ = std::string(thp ? "weights in huge pages" : "weights copied (huge pages not available)") + ", " +
                   std::to_string((bytes + (size_t{1} << 20) - 1) >> 20) + " MiB";
  };
  if (kept) describe(true, kept);
  if (total == 0) return;
  if (force != "1") {
    if (!thp_available()) return;
    if (total + kept < (size_t{256} << 20)) return;
    // Free memory only, not MemAvailable: getting the region by reclaiming page cache (and compacting
    // it into 2 MiB pages) took a 7 GB model 10-11 s to load on a 23 GB VM, against 2.4 s from free
    // memory, and a 13 GB one 22-40 s (its own file pages were reclaimed mid-copy and read again).
    if (meminfo("MemFree:") < (uint64_t)total + (uint64_t{1} << 30)) return;
  }
  // Map with a huge page of slack so the region can start on a 2 MiB boundary. Without MAP_NORESERVE, so
  // that a region the kernel cannot promise fails here (the weights stay where they are) instead of faulting
  // in the copy.
  const size_t size = (total + 2 * kHuge - 1) / kHuge * kHuge;
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  uint8_t* region = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(p) + kHuge - 1) / kHuge * kHuge);
  const bool thp = madvise(region, size - (size_t)(region - static_cast<uint8_t*>(p)), MADV_HUGEPAGE) == 0;
  base_ = p, size_ = size;

  const long page = sysconf(_SC_PAGESIZE);
  const bool tied = w.output.data == w.tok_embeddings.data;  // matrices() lists the tied classifier once
  uint8_t* dst = region;
  uint64_t done = 0;
  for (Matrix* mp : ms) {
    Matrix& m = *mp;
    const size_t bytes = m.bytes(), chunk = size_t{1} << 20;
    done += bytes;
    LlamaWeights::Owned* o = owned_of(m);
    if (o && o->huge_pages) {
      if (progress) progress(done);
      continue;
    }
    pool.parallel_for((int64_t)((bytes + chunk - 1) / chunk), 1, [&](int64_t b, int64_t e) {
      const size_t lo = (size_t)b * chunk, hi = std::min(bytes, (size_t)e * chunk);
      std::memcpy(dst + lo, m.data + lo, hi - lo);
    });
    if (o) {
      o->bytes.reset();
      o->size = 0;
    } else if (page > 0) {
      const uintptr_t a = (reinterpret_cast<uintptr_t>(m.data) + page - 1) / page * page;
      const uintptr_t z = (reinterpret_cast<uintptr_t>(m.data) + bytes) / page * page;
      if (z > a) madvise(reinterpret_cast<void*>(a), z - a, MADV_DONTNEED);
    }
    m.data = dst;
    dst += (bytes + 63) / 64 * 64;
    if (progress) progress(done);
  }
  if (tied) w.output = w.tok_embeddings;
  w.owned.erase(std::remove_if(w.owned.begin(), w.owned.end(), [](const LlamaWeights::Owned& o) { return !o.bytes; }), w.owned.end());
  describe(thp, total + kept);
}

}  // namespace l2::cpu
