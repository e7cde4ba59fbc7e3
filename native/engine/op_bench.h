// Single native operations at real shapes, for micro-benchmarks (`llama2 micro`): the matrix-vector
// product of a decode step and decode attention over a KV cache, on the CPU or the GPU, run with the
// same code the backends run. Inputs are seeded random data; only the time matters.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace l2 {

struct OpBenchSpec {
  std::string op;      // "matvec" | "attention"
  std::string device;  // "cpu" | "cuda"
  std::string dtype;   // matvec weights: "f32" (cpu) | "f16" | "int8"; attention: the cache's own type
  // matvec: out[batch][rows] = in[batch][cols] . W[rows][cols]^T
  int rows = 0, cols = 0;
  // attention: `batch` sequences each decoding one token over `context` cached positions
  int context = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int batch = 1;
  int threads = 0;       // cpu
  std::string cpu_activations = "f32";  // cpu matvec: "f32" | "int8" (cpu::Activations)
  int device_index = 0;  // cuda
};

class OpBench {
 public:
  virtual ~OpBench() = default;
  // Runs the op `iters` times back to back; returns the seconds they took (the GPU: to completion).
  virtual double run(int iters) = 0;
  // The last run's result where the op has one to compare (the CPU matvec's [batch][rows]), else empty.
  virtual std::vector<float> output() const { return {}; }
  uint64_t bytes = 0;  // bytes one run must move (weights or KV cache, plus activations)
  double flops = 0;    // floating-point operations of one run
  std::string description;
};

// Validates the spec (ERR_INVALID_ARGUMENT naming the field) and allocates the op's data.
std::unique_ptr<OpBench> make_op_bench(const OpBenchSpec& spec);
std::unique_ptr<OpBench> make_cpu_op_bench(const OpBenchSpec& spec);
// ERR_DEVICE_UNAVAILABLE without CUDA.
std::unique_ptr<OpBench> make_cuda_op_bench(const OpBenchSpec& spec);

}  // namespace l2
