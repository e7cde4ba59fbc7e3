// Host-side bookkeeping of the paged KV cache: a pool of fixed-size blocks with reference counts
// (blocks are shared between forked sequences, copied on write) and each sequence's block list.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace l2 {

class KvBlockPool {
 public:
  explicit KvBlockPool(int n_blocks);
  int capacity() const { return (int)refs_.size(); }
  int free_count() const { return (int)free_.size(); }
  // -1 when none is free.
  int32_t alloc();
  void retain(int32_t b) { ++refs_[(size_t)b]; }
  void release(int32_t b);
  int refs(int32_t b) const { return refs_[(size_t)b]; }

 private:
  std::vector<int32_t> free_;
  std::vector<int32_t> refs_;
};

}  // namespace l2
