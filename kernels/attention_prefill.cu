// Flash-attention style causal prefill over the paged KV cache, on tensor cores (FlashAttention-2 loop
// order: one CTA owns 64 query rows of one head and streams the K/V tiles of its sequence through shared
// memory; 4 warps, each 16 query rows; fp32 online softmax in registers; S = Q K^T and O += P V with
// mma.sync m16n8k16, P reused from the S accumulators as the A operand without a trip through smem).
//
// K/V tiles of 64 positions = 4 cache blocks of kKvBlock = 16, gathered through the block table with
// cp.async (double buffered: tile j + 1 loads while tile j is computed). Positions past the last one any
// row of the CTA needs are zero-filled and never read (their blocks may not exist). Tiles wholly after the
// CTA's last query position are skipped; the causal mask is applied only on tiles that reach past the
// first query position of the CTA (the diagonal, which spans two tiles when pos0 % 64 != 0).
//
// int8 cache (Q8): each K/V tile's bytes and group scales land by cp.async in a staging area, and the
// CTA widens them into a single fp16 K/V tile (values q * scale) before computing it; the copy of tile
// j + 1 then overlaps the compute of tile j as in the fp16 path (staging, not the fp16 tile, is double
// buffered by the conversion). One more barrier per tile; the tensor-core loop is the same.
//
// Grid: (q tiles of the longest segment, heads, segments); CTAs past their segment's end, and every CTA of
// a segment with count <= 1 (decode tokens: attention_decode's job), exit at once. q tiles are visited in
// reverse order so the longest (causal) tiles start first.
// Requirements: head_dim 64 or 128; q, ldq, out, ldo 16-byte aligned (multiples of 8 halves); n_heads a
// multiple of n_kv_heads.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "kernels.h"
#include "launch.cuh"
#include "mma.cuh"

namespace l2::kernels {
namespace {

using namespace l2::kernels::mma;

constexpr int kBQ = 64;    // query rows per CTA
constexpr int kBKV = 64;   // positions per K/V tile (4 cache blocks)
constexpr int kWarps = 4;  // 16 query rows each
constexpr int kThreads = kWarps * 32;
static_assert(kBKV % kKvBlock == 0, "K/V tile = whole cache blocks");

template <int D>
struct AttnCfg {
  static constexpr int C = D / 8;  // 16-byte chunks per row
  static constexpr int TILE_ELEMS = 64 * D;
  static constexpr int Q_OFF = 0;                     // [64][D]
  static constexpr int K_OFF = TILE_ELEMS;            // [2][64][D]
  static constexpr int V_OFF = 3 * TILE_ELEMS;        // [2][64][D]
  static constexpr int SMEM = 5 * TILE_ELEMS * 2;     // bytes: 40 KB (D 64), 80 KB (D 128)
  // int8 cache: Q, one fp16 K and V tile, then the staging of the int8 tiles [2][64][D] bytes and their
  // scales [2][64][D / 32] halves (K, then V).
  static constexpr int SCALES = D / 32;                   // per row
  static constexpr int V_OFF_Q8 = 2 * TILE_ELEMS;          // the single fp16 V tile (halves), right after K
  static constexpr int Q8_STAGE = 3 * TILE_ELEMS * 2;     // byte offset of the staging
  static constexpr int Q8_SCALES = Q8_STAGE + 2 * TILE_ELEMS;
  static constexpr int SMEM_Q8 = Q8_SCALES + 2 * 64 * SCALES * 2;  // 32.5 KB (D 64), 65 KB (D 128)
  static_assert((V_OFF_Q8 + TILE_ELEMS) * 2 <= Q8_STAGE, "int8 path: the fp16 K/V tiles end before the staging");
};

// Issues the cp.async copies of K and V tile `kv_tile` (positions 64 kv_tile ...) into buffer `buf`.
template <int D>
__device__ __forceinline__ void load_kv(const AttentionParams& p, half* smem, int buf, int kv_tile, int pos_last,
                                        const int32_t* bt, int kvh, int tid) {
  using CF = AttnCfg<D>;
  const uint32_t sK = smem_u32(smem + CF::K_OFF + buf * CF::TILE_ELEMS);
  const uint32_t sV = smem_u32(smem + CF::V_OFF + buf * CF::TILE_ELEMS);
  constexpr int kChunks = kBKV * CF::C;
  static_assert(kChunks % kThreads == 0, "chunks per thread");
  const int kv0 = kv_tile * kBKV;
#pragma unroll
  for (int j = 0; j < kChunks / kThreads; ++j) {
    int i = tid + j * kThreads;
    int row = i / CF::C, ch = i % CF::C;
    int pos = kv0 + row;
    bool ok = pos <= pos_last;
    size_t off = 0;
    if (ok) {
      off = kv_cache_row(__ldg(bt + pos / kKvBlock), pos % kKvBlock, p.n_kv_heads, kvh) * D + ch * 8;
    }
    uint32_t so = swz<CF::C>(row, ch) * 2;
    cp_async_16(sK + so, p.k_cache + off, ok);
    cp_async_16(sV + so, p.v_cache + off, ok);
  }
}

// int8 cache: issues the cp.async copies of tile `kv_tile`'s bytes and scales into the staging area.
template <int D>
__device__ __forceinline__ void load_kv_q8(const AttentionParams& p, unsigned char* smem, int kv_tile, int pos_last, const int32_t* bt, int kvh,
                                           int tid) {
  using CF = AttnCfg<D>;
  constexpr int RC = D / 16;  // 16-byte chunks per int8 row
  const uint32_t sK = smem_u32(smem + CF::Q8_STAGE);
  const uint32_t sV = sK + CF::TILE_ELEMS;
  const uint32_t sKs = smem_u32(smem + CF::Q8_SCALES);
  const uint32_t sVs = sKs + 64 * CF::SCALES * 2;
  const int kv0 = kv_tile * kBKV;
  static_assert((kBKV * RC) % kThreads == 0, "chunks per thread");
#pragma unroll
  for (int j = 0; j < kBKV * RC / kThreads; ++j) {
    int i = tid + j * kThreads;
    int row = i / RC, ch = i % RC;
    int pos = kv0 + row;
    bool ok = pos <= pos_last;
    size_t off = 0;
    if (ok) off = kv_cache_row(__ldg(bt + pos / kKvBlock), pos % kKvBlock, p.n_kv_heads, kvh) * D + ch * 16;
    cp_async_16(sK + row * D + ch * 16, p.k_q + off, ok);
    cp_async_16(sV + row * D + ch * 16, p.v_q + off, ok);
  }
  // Scales: a row's D / 32 halves (4 or 8 bytes), 4 bytes per copy.
  constexpr int SW = CF::SCALES / 2;  // 4-byte words per row
  for (int i = tid; i < kBKV * SW; i += kThreads) {
    int row = i / SW, w = i % SW;
    int pos = kv0 + row;
    bool ok = pos <= pos_last;
    size_t off = 0;
    if (ok) off = kv_cache_row(__ldg(bt + pos / kKvBlock), pos % kKvBlock, p.n_kv_heads, kvh) * CF::SCALES + w * 2;
    cp_async_4(sKs + (row * SW + w) * 4, p.k_scale + off, ok);
    cp_async_4(sVs + (row * SW + w) * 4, p.v_scale + off, ok);
  }
}

// int8 cache: widens the staged tile into the fp16 K and V tiles (swizzled as load_kv lays them out).
template <int D>
__device__ __forceinline__ void widen_kv_q8(unsigned char* smem, int tid) {
  using CF = AttnCfg<D>;
  half* sK = reinterpret_cast<half*>(smem) + CF::K_OFF;
  half* sV = reinterpret_cast<half*>(smem) + CF::V_OFF_Q8;
  const int8_t* qK = reinterpret_cast<const int8_t*>(smem + CF::Q8_STAGE);
  const int8_t* qV = qK + CF::TILE_ELEMS;
  const half* scK = reinterpret_cast<const half*>(smem + CF::Q8_SCALES);
  const half* scV = scK + 64 * CF::SCALES;
  constexpr int kChunks = kBKV * CF::C;  // 8-value chunks per tile
#pragma unroll
  for (int j = 0; j < kChunks / kThreads; ++j) {
    int i = tid + j * kThreads;
    int row = i / CF::C, ch = i % CF::C;
#pragma unroll
    for (int kv = 0; kv < 2; ++kv) {
      const int8_t* q = (kv ? qV : qK) + row * D + ch * 8;
      const float d = __half2float((kv ? scV : scK)[row * CF::SCALES + ch / 4]);
      uint2 raw = *reinterpret_cast<const uint2*>(q);
      const int8_t* b = reinterpret_cast<const int8_t*>(&raw);
      uint4 out;
      out.x = pack_half2((float)b[0] * d, (float)b[1] * d);
      out.y = pack_half2((float)b[2] * d, (float)b[3] * d);
      out.z = pack_half2((float)b[4] * d, (float)b[5] * d);
      out.w = pack_half2((float)b[6] * d, (float)b[7] * d);
      *reinterpret_cast<uint4*>((kv ? sV : sK) + swz<CF::C>(row, ch)) = out;
    }
  }
}

template <int D, bool Q8>
__global__ void __launch_bounds__(kThreads, 2) attn_prefill_kernel(const __grid_constant__ AttentionParams p) {
  using CF = AttnCfg<D>;
  constexpr int C = CF::C;
  constexpr int KD = D / 16;  // k16 steps over head_dim (S = Q K^T)
  constexpr int ND = D / 8;   // n8 tiles over head_dim (O)
  L2_DYNAMIC_SMEM(smem_raw);
  half* smem = reinterpret_cast<half*>(smem_raw);

  const int s = blockIdx.z, h = blockIdx.y;
  const int count = p.seg_count[s];
  if (count <= 1) return;
  const int qt = gridDim.x - 1 - blockIdx.x;
  const int q_begin = qt * kBQ;
  if (q_begin >= count) return;
  const int start = p.seg_start[s], pos0 = p.seg_pos0[s];
  const int q_rows = min(kBQ, count - q_begin);
  const int kvh = h / (p.n_heads / p.n_kv_heads);
  const int p_first = pos0 + q_begin;           // position of query row 0
  const int p_last = pos0 + q_begin + q_rows - 1;  // last position any valid row attends to
  const int n_kv = p_last / kBKV + 1;
  const int32_t* bt = p.block_tables + (size_t)s * p.max_blocks;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gq = lane >> 2, qq = lane & 3;

  // Q tile (rows past the segment: zeros) and K/V tile 0: one commit group.
  {
    const uint32_t sQ = smem_u32(smem + CF::Q_OFF);
    constexpr int kChunks = kBQ * C;
#pragma unroll
    for (int j = 0; j < kChunks / kThreads; ++j) {
      int i = tid + j * kThreads;
      int row = i / C, ch = i % C;
      bool ok = row < q_rows;
      const half* src = p.q + (size_t)(start + q_begin + (ok ? row : 0)) * p.ldq + h * D + ch * 8;
      cp_async_16(sQ + swz<C>(row, ch) * 2, src, ok);
    }
  }
  if constexpr (Q8) load_kv_q8<D>(p, smem_raw, 0, p_last, bt, kvh, tid);
  else load_kv<D>(p, smem, 0, 0, p_last, bt, kvh, tid);
  cp_async_commit();

  const float sl2 = p.scale * 1.4426950408889634f;  // softmax in base 2
  uint32_t qf[KD][4];
  float o[ND][4];
#pragma unroll
  for (int i = 0; i < ND; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};  // rows gq and gq + 8 (already scaled to base 2)
  float l_run[2] = {0.f, 0.f};              // this thread's partial row sums (quad-reduced at the end)
  const int row_pos0 = p_first + warp * 16 + gq;  // query position of row gq (row gq + 8: + 8)

  for (int j = 0; j < n_kv; ++j) {
    cp_async_wait<0>();
    __syncthreads();  // tile j (and Q) visible to all; everyone finished tile j - 1 (its buffer is free)
    if (j == 0) {
      const uint32_t sQ = smem_u32(smem + CF::Q_OFF);
#pragma unroll
      for (int ks = 0; ks < KD; ++ks)
        ldsm_x4(qf[ks], sQ + swz<C>(warp * 16 + ldsm_a_row(lane), 2 * ks + ldsm_a_chunk(lane)) * 2);
    }
    if constexpr (Q8) {
      widen_kv_q8<D>(smem_raw, tid);
      __syncthreads();  // the fp16 tile is visible; the staging is free for tile j + 1
      if (j + 1 < n_kv) {
        load_kv_q8<D>(p, smem_raw, j + 1, p_last, bt, kvh, tid);
        cp_async_commit();
      }
    } else if (j + 1 < n_kv) {
      load_kv<D>(p, smem, (j + 1) & 1, j + 1, p_last, bt, kvh, tid);
      cp_async_commit();
    }
    const int buf = Q8 ? 0 : (j & 1);
    const uint32_t sK = smem_u32(smem + CF::K_OFF + buf * CF::TILE_ELEMS);
    const uint32_t sV = smem_u32(smem + (Q8 ? CF::V_OFF_Q8 : CF::V_OFF + buf * CF::TILE_ELEMS));

    // S = Q K^T: 16 x 64 per warp = 8 n8 tiles.
    float sc[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KD; ++ks) {
#pragma unroll
      for (int nj = 0; nj < 4; ++nj) {
        uint32_t r[4];
        ldsm_x4(r, sK + swz<C>(nj * 16 + ldsm_b_row(lane), 2 * ks + ldsm_b_chunk(lane)) * 2);
        mma_f16f32(sc[2 * nj], qf[ks], r[0], r[1]);
        mma_f16f32(sc[2 * nj + 1], qf[ks], r[2], r[3]);
      }
    }

    // Scale to base 2, causal mask (only where the tile reaches past the CTA's first query position).
    const int kv0 = j * kBKV;
    const bool need_mask = kv0 + kBKV - 1 > p_first;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = sc[nt][e] * sl2;
        if (need_mask) {
          int kpos = kv0 + nt * 8 + 2 * qq + (e & 1);
          int qpos = row_pos0 + ((e >> 1) << 3);
          if (kpos > qpos) v = -INFINITY;
        }
        sc[nt][e] = v;
      }
    }

    // Online softmax: rows gq (e = 0, 1) and gq + 8 (e = 2, 3); a row's 64 scores live in the 4 lanes of a quad.
    float mx[2] = {m_run[0], m_run[1]};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      mx[0] = fmaxf(mx[0], fmaxf(sc[nt][0], sc[nt][1]));
      mx[1] = fmaxf(mx[1], fmaxf(sc[nt][2], sc[nt][3]));
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    }
    float alpha[2], base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      base[r] = mx[r] == -INFINITY ? 0.f : mx[r];  // a row with nothing visible yet: keep exp2 finite
      alpha[r] = fast_exp2(m_run[r] - base[r]);    // m_run = -inf -> 0
      m_run[r] = mx[r];
      l_run[r] *= alpha[r];
    }
#pragma unroll
    for (int i = 0; i < ND; ++i) {
      o[i][0] *= alpha[0];
      o[i][1] *= alpha[0];
      o[i][2] *= alpha[1];
      o[i][3] *= alpha[1];
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      sc[nt][0] = fast_exp2(sc[nt][0] - base[0]);
      sc[nt][1] = fast_exp2(sc[nt][1] - base[0]);
      sc[nt][2] = fast_exp2(sc[nt][2] - base[1]);
      sc[nt][3] = fast_exp2(sc[nt][3] - base[1]);
      l_run[0] += sc[nt][0] + sc[nt][1];
      l_run[1] += sc[nt][2] + sc[nt][3];
    }

    // O += P V: P (16 x 64) as A fragments straight from the S accumulators: k16 step kk takes n8 tiles
    // 2kk (a0 = row g, a1 = row g + 8) and 2kk + 1 (a2, a3). V [pos][d] via ldmatrix.trans.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4];
      a[0] = pack_half2(sc[2 * kk][0], sc[2 * kk][1]);
      a[1] = pack_half2(sc[2 * kk][2], sc[2 * kk][3]);
      a[2] = pack_half2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      a[3] = pack_half2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
      for (int dj = 0; dj < D / 16; ++dj) {
        uint32_t r[4];
        ldsm_x4_trans(r, sV + swz<C>(kk * 16 + ldsm_bt_row(lane), 2 * dj + ldsm_bt_chunk(lane)) * 2);
        mma_f16f32(o[2 * dj], a, r[0], r[1]);
        mma_f16f32(o[2 * dj + 1], a, r[2], r[3]);
      }
    }
  }

  // Finish: full row sums across the quad, normalize, store rows that belong to the segment.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
  }
  const float inv0 = 1.f / l_run[0], inv1 = 1.f / l_run[1];
  const int r0 = warp * 16 + gq;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int row = r0 + hr * 8;
    if (row < q_rows) {
      const float inv = hr ? inv1 : inv0;
      half* dst = p.out + (size_t)(start + q_begin + row) * p.ldo + h * D + 2 * qq;
#pragma unroll
      for (int i = 0; i < ND; ++i)
        *reinterpret_cast<__half2*>(dst + i * 8) = __floats2half2_rn(o[i][2 * hr] * inv, o[i][2 * hr + 1] * inv);
    }
  }
}

constexpr int kMaxDevices = 64;
template <int D, bool Q8>
struct AttnLauncher {
  static constexpr int kSmem = Q8 ? AttnCfg<D>::SMEM_Q8 : AttnCfg<D>::SMEM;
  static std::atomic<int> attr_set[kMaxDevices];
  static void launch(const AttentionParams& p, int max_seg_count, cudaStream_t stream) {
    int dev = 0;
    cudaGetDevice(&dev);
    if (dev < 0 || dev >= kMaxDevices) dev = 0;
    if (!attr_set[dev].load(std::memory_order_acquire)) {
      cudaFuncSetAttribute(attn_prefill_kernel<D, Q8>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
      attr_set[dev].store(1, std::memory_order_release);
    }
    dim3 grid((max_seg_count + kBQ - 1) / kBQ, p.n_heads, p.n_segments);
    launch_plain(attn_prefill_kernel<D, Q8>, grid, kThreads, kSmem, stream, p);
  }
};
template <int D, bool Q8>
std::atomic<int> AttnLauncher<D, Q8>::attr_set[kMaxDevices];

}  // namespace

bool attention_prefill(const AttentionParams& p, int max_seg_count, cudaStream_t stream) {
  if (p.head_dim != 64 && p.head_dim != 128) return false;
  if (p.n_heads <= 0 || p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads != 0) return false;
  if (p.n_segments <= 0 || max_seg_count <= 1) return true;  // nothing with count > 1
  if (p.k_q && p.kv_group != 32) return false;  // int8 cache: groups of 32 (head_dim 64 and 128)
  if (p.head_dim == 64)
    p.k_q ? AttnLauncher<64, true>::launch(p, max_seg_count, stream) : AttnLauncher<64, false>::launch(p, max_seg_count, stream);
  else
    p.k_q ? AttnLauncher<128, true>::launch(p, max_seg_count, stream) : AttnLauncher<128, false>::launch(p, max_seg_count, stream);
  return true;
}

}  // namespace l2::kernels
