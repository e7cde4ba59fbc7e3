// Spec validation shared by both devices, then the device's implementation.
#include "op_bench.h"

#include "../common/error.h"

namespace l2 {

namespace {
void check_range(const char* field, int v, int lo, int hi) {
  if (v < lo || v > hi)
    fail(code::kInvalidArgument, std::string(field) + ": expected " + std::to_string(lo) + ".." + std::to_string(hi) + ", got " + std::to_string(v));
}
}  // namespace

std::unique_ptr<OpBench> make_op_bench(const OpBenchSpec& s) {
  if (s.device != "cpu" && s.device != "cuda") fail(code::kInvalidArgument, "device: expected 'cpu' or 'cuda', got '" + s.device + "'");
  check_range("batch", s.batch, 1, 256);
  check_range("threads", s.threads, 0, 1024);
  if (s.cpu_activations != "f32" && s.cpu_activations != "int8")
    fail(code::kInvalidArgument, "cpuActivations: expected 'f32' or 'int8', got '" + s.cpu_activations + "'");
  if (s.op == "matvec") {
    check_range("rows", s.rows, 1, 1 << 18);
    check_range("cols", s.cols, 32, 1 << 16);
    if (s.cols % 32 != 0) fail(code::kInvalidArgument, "cols: must be a multiple of 32 (int8 groups), got " + std::to_string(s.cols));
    if (s.dtype != "f32" && s.dtype != "f16" && s.dtype != "int8" && s.dtype != "q4")
      fail(code::kInvalidArgument, "dtype: expected f32, f16, int8 or q4, got '" + s.dtype + "'");
    if (s.device == "cuda" && s.dtype == "f32") fail(code::kInvalidArgument, "dtype: the CUDA matvec takes f16, int8 or q4 weights");
  } else if (s.op == "attention") {
    check_range("context", s.context, 1, 1 << 17);
    check_range("heads", s.heads, 1, 256);
    check_range("kvHeads", s.kv_heads, 1, s.heads);
    if (s.heads % s.kv_heads != 0) fail(code::kInvalidArgument, "kvHeads: must divide heads");
    if (s.head_dim != 64 && s.head_dim != 128) fail(code::kInvalidArgument, "headDim: expected 64 or 128, got " + std::to_string(s.head_dim));
  } else {
    fail(code::kInvalidArgument, "op: expected 'matvec' or 'attention', got '" + s.op + "'");
  }
  return s.device == "cpu" ? make_cpu_op_bench(s) : make_cuda_op_bench(s);
}

}  // namespace l2
