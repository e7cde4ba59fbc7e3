#include "kv_blocks.h"

namespace l2 {

KvBlockPool::KvBlockPool(int n_blocks) : refs_((size_t)n_blocks, 0) {
  free_.reserve((size_t)n_blocks);
  for (int i = n_blocks - 1; i >= 0; --i) free_.push_back(i);  // hand out low ids first
}

int32_t KvBlockPool::alloc() {
  if (free_.empty()) return -1;
  int32_t b = free_.back();
  free_.pop_back();
  refs_[(size_t)b] = 1;
  return b;
}

void KvBlockPool::release(int32_t b) {
  if (--refs_[(size_t)b] == 0) free_.push_back(b);
}

}  // namespace l2
