// Top-k candidates on the device, so sampling in JS touches k values instead of the whole vocabulary.
// Exact: a 4-pass radix select (8 bits per pass over order-preserving keys) finds the k-th largest
// key; everything above it plus the lowest ids equal to it are gathered and bitonic-sorted by
// (logit desc, id asc). k == 1 is a plain argmax. NaN counts as -inf. One CTA per row.
#include <cfloat>

#include "common.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace l2::kernels {

namespace {

constexpr int kThreads = 512;
constexpr int kMaxK = 256;

__device__ __forceinline__ uint32_t key_of(float f) {
  if (f != f) f = -INFINITY;
  uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ void better(uint32_t k, int i, uint32_t& best, int& best_id) {
  if (k > best || (k == best && i < best_id)) {
    best = k;
    best_id = i;
  }
}

// One pass of 16-byte loads, 4 in flight per thread, then a block reduction.
__global__ void __launch_bounds__(kThreads) argmax_kernel(const float* __restrict__ logits, int ld, int vocab, int32_t* ids, float* vals) {
  pdl_trigger();
  pdl_wait();
  const float* row = logits + (size_t)blockIdx.x * ld;
  uint32_t best = 0;
  int best_id = 0x7fffffff;
  const int n4 = vocab / 4;
  const float4* r4 = reinterpret_cast<const float4*>(row);
  for (int base = threadIdx.x; base < n4; base += kThreads * 4) {
    float4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int j = base + u * kThreads;
      v[u] = j < n4 ? r4[j] : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int i = 4 * (base + u * kThreads);
      if (i < vocab) {
        better(key_of(v[u].x), i, best, best_id);
        better(key_of(v[u].y), i + 1, best, best_id);
        better(key_of(v[u].z), i + 2, best, best_id);
        better(key_of(v[u].w), i + 3, best, best_id);
      }
    }
  }
  for (int i = n4 * 4 + threadIdx.x; i < vocab; i += kThreads) better(key_of(row[i]), i, best, best_id);
  __shared__ uint32_t sk[kThreads];
  __shared__ int si[kThreads];
  sk[threadIdx.x] = best;
  si[threadIdx.x] = best_id;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) {
      uint32_t k2 = sk[threadIdx.x + o];
      int i2 = si[threadIdx.x + o];
      if (k2 > sk[threadIdx.x] || (k2 == sk[threadIdx.x] && i2 < si[threadIdx.x])) {
        sk[threadIdx.x] = k2;
        si[threadIdx.x] = i2;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    ids[blockIdx.x] = si[0];
    vals[blockIdx.x] = row[si[0]];
  }
}

__global__ void __launch_bounds__(kThreads) topk_kernel(const float* __restrict__ logits, int ld, int vocab, int k, int32_t* out_ids,
                                                        float* out_vals) {
  pdl_trigger();
  pdl_wait();
  const float* row = logits + (size_t)blockIdx.x * ld;
  __shared__ uint32_t hist[256];
  __shared__ uint32_t prefix, prefix_mask;
  __shared__ int need;  // how many of the k are still to be found at or below the current prefix
  if (threadIdx.x == 0) {
    prefix = 0;
    prefix_mask = 0;
    need = k;
  }
  // Radix select from the most significant byte: after 4 passes `prefix` is the k-th largest key.
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      uint32_t key = key_of(row[i]);
      if ((key & prefix_mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int remaining = need;
      int b = 255;
      for (; b > 0; --b) {
        if ((int)hist[b] >= remaining) break;
        remaining -= (int)hist[b];
      }
      prefix |= (uint32_t)b << shift;
      prefix_mask |= 255u << shift;
      need = remaining;
    }
    __syncthreads();
  }
  const uint32_t thr = prefix;
  const int take_equal = need;  // keys == thr to take, lowest ids first
  __shared__ uint32_t ck[kMaxK];
  __shared__ int ci[kMaxK];
  __shared__ int n_gt;
  __shared__ int eq_count[kThreads];
  if (threadIdx.x == 0) n_gt = 0;
  for (int i = threadIdx.x; i < kMaxK; i += kThreads) {
    ck[i] = 0;
    ci[i] = 0x7fffffff;
  }
  __syncthreads();
  // Contiguous chunks per thread so that equal keys can be ranked by id with a scan.
  const int chunk = (vocab + kThreads - 1) / kThreads;
  const int lo = threadIdx.x * chunk, hi = min(vocab, lo + chunk);
  int eq = 0;
  for (int i = lo; i < hi; ++i) {
    uint32_t key = key_of(row[i]);
    if (key > thr) {
      int slot = atomicAdd(&n_gt, 1);
      ck[slot] = key;
      ci[slot] = i;
    } else if (key == thr) {
      ++eq;
    }
  }
  eq_count[threadIdx.x] = eq;
  __syncthreads();
  if (threadIdx.x == 0) {  // exclusive scan (512 entries, once per row)
    int run = 0;
    for (int i = 0; i < kThreads; ++i) {
      int c = eq_count[i];
      eq_count[i] = run;
      run += c;
    }
  }
  __syncthreads();
  const int base = k - take_equal;  // == n_gt
  int rank = eq_count[threadIdx.x];
  for (int i = lo; i < hi && rank < take_equal; ++i) {
    if (key_of(row[i]) == thr) {
      ck[base + rank] = thr;
      ci[base + rank] = i;
      ++rank;
    }
  }
  __syncthreads();
  // Bitonic sort of kMaxK entries: key descending, id ascending (padding sorts last).
  for (int size = 2; size <= kMaxK; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < kMaxK; i += kThreads) {
        int j = i ^ stride;
        if (j > i) {
          bool up = (i & size) == 0;
          bool i_before_j = ck[i] > ck[j] || (ck[i] == ck[j] && ci[i] < ci[j]);
          if (i_before_j != up) {
            uint32_t tk = ck[i];
            ck[i] = ck[j];
            ck[j] = tk;
            int ti = ci[i];
            ci[i] = ci[j];
            ci[j] = ti;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < k; i += kThreads) {
    out_ids[(size_t)blockIdx.x * k + i] = ci[i];
    out_vals[(size_t)blockIdx.x * k + i] = row[ci[i]];
  }
}

}  // namespace

size_t topk_workspace(int, int, int) { return 0; }

void topk(const float* logits, int ld, int n, int vocab, int k, int32_t* ids, float* vals, void*, cudaStream_t s) {
  if (n <= 0 || k <= 0) return;
  if (k == 1) launch(argmax_kernel, n, kThreads, 0, s, logits, ld, vocab, ids, vals);
  else launch(topk_kernel, n, kThreads, 0, s, logits, ld, vocab, k > kMaxK ? kMaxK : k, ids, vals);
}

}  // namespace l2::kernels
