// Where the CPU backend's weights live. Used in place, they sit in the model file's page-cache mapping
// (4 KB pages) or in heap buffers (converted dtypes). A decode step streams all of them, and with 4 KB
// pages a 13 GB model needs a page walk every 4 KB whose page-table entries miss the caches: on a 2-core
// Zen 4 VM, a matvec over 9 GB of fp16 rows ran at 20-21 GB/s from the file mapping and 29-32 GB/s from
// the same bytes copied into transparent-huge-page memory. So large models are copied once, at load,
// into one THP-advised anonymous region.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "../../common/thread_pool.h"
#include "../../model/weights.h"

namespace l2::cpu {

class WeightPages {
 public:
  WeightPages() = default;
  ~WeightPages();
  WeightPages(const WeightPages&) = delete;
  WeightPages& operator=(const WeightPages&) = delete;

  // Storage for converted matrices (convert_weights' allocator): transparent-huge-page memory unless
  // LLAMA2_CPU_HUGEPAGES=0, THP is disabled or the buffer is under 2 MiB (then the heap). place() leaves
  // matrices there, so converted weights are neither copied nor faulted in 4 KB at a time.
  static LlamaWeights::Owned allocate(size_t bytes);
  // Copies every other matrix of `w` into the region (freeing converted heap buffers) when the policy says so:
  // LLAMA2_CPU_HUGEPAGES=0 never, =1 always, unset: when transparent huge pages are not disabled, the
  // matrices total >= 256 MiB and free memory (MemFree) holds them plus 1 GiB, so that the load does not
  // wait for page-cache reclaim and compaction. Otherwise, or when the mapping fails, nothing changes.
  // Values are copied bit for bit; `progress` gets the bytes copied so far, after each matrix.
  void place(LlamaWeights& w, ThreadPool& pool, const std::function<void(uint64_t bytes_done)>& progress);
  // For messages: "" when the weights are used in place, else a short description.
  const std::string& description() const { return description_; }

 private:
  void* base_ = nullptr;
  size_t size_ = 0;
  std::string description_;
};

}  // namespace l2::cpu
