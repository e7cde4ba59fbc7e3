// CPU op micro-benchmarks: cpu::matmul over a weight matrix of the given dtype, and cpu::attend over
// an fp32 KV cache, parallel over (sequence, head) as the CPU backend runs them.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>
#include <random>
#include <vector>

#include "../../common/half.h"
#include "../../common/thread_pool.h"
#include "../../model/weights.h"
#include "../op_bench.h"
#include "cpu_ops.h"

namespace l2 {

namespace {

int pool_size(int threads) { return default_threads(threads); }

std::vector<float> random_floats(size_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

class CpuMatvec final : public OpBench {
 public:
  explicit CpuMatvec(const OpBenchSpec& s)
      : pool_(pool_size(s.threads)), batch_(s.batch), act_(s.cpu_activations == "int8" ? cpu::Activations::Int8 : cpu::Activations::F32) {
    // q4: Q4_1 blocks, the form the backend runs a GGUF's 4-bit matrices in (random nibbles, scale, minimum).
    DType dt = s.dtype == "f32" ? DType::F32 : s.dtype == "f16" ? DType::F16 : s.dtype == "q4" ? DType::Q4_1 : DType::Q8_0;
    w_.dtype = dt;
    w_.rows = s.rows;
    w_.cols = s.cols;
    w_.name = "bench";
    storage_.resize(w_.bytes());
    std::vector<float> row;
    for (int r = 0; r < s.rows; ++r) {
      uint8_t* dst = storage_.data() + w_.row_stride() * (size_t)r;
      row = random_floats((size_t)s.cols, 0.02f, 1234u + (uint32_t)r);
      if (dt == DType::Q4_1) {
        for (int b = 0; b < s.cols / 32; ++b) {
          uint8_t* blk = dst + (size_t)b * 20;
          const uint16_t d = f32_to_fp16(std::fabs(row[(size_t)b * 32]) / 8 + 1e-3f), m = f32_to_fp16(-std::fabs(row[(size_t)b * 32 + 1]));
          std::memcpy(blk, &d, 2);
          std::memcpy(blk + 2, &m, 2);
          for (int i = 0; i < 16; ++i) blk[4 + i] = (uint8_t)((int)(row[(size_t)b * 32 + 2 * i % 32] * 1e4f) & 0xFF);
        }
        continue;
      }
      convert_row(DType::F32, reinterpret_cast<const uint8_t*>(row.data()), dt, dst, s.cols);
    }
    w_.data = storage_.data();
    in_ = random_floats((size_t)s.batch * s.cols, 1.f, 7);
    out_.resize((size_t)s.batch * s.rows);
    bytes = w_.bytes() + (in_.size() + out_.size()) * sizeof(float);
    flops = 2.0 * s.rows * s.cols * s.batch;
    description = "cpu matvec " + s.dtype + " [" + std::to_string(s.batch) + "x" + std::to_string(s.cols) + "] . [" + std::to_string(s.rows) + "x" +
                  std::to_string(s.cols) + "]^T, " + std::to_string(pool_.size()) + " threads (" + cpu::simd_name() +
                  (act_ == cpu::Activations::Int8 ? ", int8 activations" : "") + ")";
  }
  double run(int iters) override {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) cpu::matmul(w_, in_.data(), batch_, out_.data(), pool_, act_);
    return seconds_since(t0);
  }
  std::vector<float> output() const override { return out_; }

 private:
  ThreadPool pool_;
  int batch_;
  cpu::Activations act_;
  Matrix w_;
  std::vector<uint8_t> storage_;
  std::vector<float> in_, out_;
};

class CpuAttention final : public OpBench {
 public:
  explicit CpuAttention(const OpBenchSpec& s) : pool_(pool_size(s.threads)), s_(s) {
    // One cache per sequence, [context][kv_heads][head_dim] for K then V (what kv_at returns rows of).
    const size_t per_seq = (size_t)s.context * s.kv_heads * s.head_dim;
    kv_ = random_floats(2 * per_seq * s.batch, 1.f, 11);
    q_ = random_floats((size_t)s.batch * s.heads * s.head_dim, 1.f, 13);
    out_.resize(q_.size());
    bytes = kv_.size() * sizeof(float) + 2 * q_.size() * sizeof(float);
    flops = 4.0 * s.batch * s.heads * (double)s.context * s.head_dim;
    description = "cpu decode attention, " + std::to_string(s.batch) + " seq x " + std::to_string(s.context) + " positions, " +
                  std::to_string(s.heads) + "/" + std::to_string(s.kv_heads) + " heads of " + std::to_string(s.head_dim) + ", fp32 cache, " +
                  std::to_string(pool_.size()) + " threads";
  }
  double run(int iters) override {
    const size_t per_seq = (size_t)s_.context * s_.kv_heads * s_.head_dim, row = (size_t)s_.kv_heads * s_.head_dim;
    const float* kv = kv_.data();
    auto t0 = std::chrono::steady_clock::now();
    for (int it = 0; it < iters; ++it) {
      cpu::attention(
          pool_, s_.batch, s_.heads, s_.heads / s_.kv_heads, s_.head_dim, q_.data(), out_.data(), [&](int) { return s_.context; },
          [&](int b, int p) { return kv + 2 * per_seq * b + p * row; }, [&](int b, int p) { return kv + 2 * per_seq * b + per_seq + p * row; });
    }
    return seconds_since(t0);
  }

 private:
  ThreadPool pool_;
  OpBenchSpec s_;
  std::vector<float> kv_, q_, out_;
};

}  // namespace

std::unique_ptr<OpBench> make_cpu_op_bench(const OpBenchSpec& s) {
  if (s.op == "matvec") return std::make_unique<CpuMatvec>(s);
  return std::make_unique<CpuAttention>(s);
}

}  // namespace l2
