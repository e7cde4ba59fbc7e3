#include "model_source.h"

#include <cmath>
#include <cstdio>
#include <cstring>

#include "../common/error.h"
#include "ggml_blocks.h"

namespace l2 {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::Q8_0: return "Q8_0";
    case DType::Q4_0: return "Q4_0";
    case DType::Q4_1: return "Q4_1";
    case DType::Q5_0: return "Q5_0";
    case DType::Q5_1: return "Q5_1";
    case DType::Q2_K: return "Q2_K";
    case DType::Q3_K: return "Q3_K";
    case DType::Q4_K: return "Q4_K";
    case DType::Q5_K: return "Q5_K";
    case DType::Q6_K: return "Q6_K";
  }
  return "?";
}

size_t row_bytes(DType t, int64_t cols) {
  const BlockLayout b = block_layout(t);
  return (size_t)(cols / b.elements) * (size_t)b.bytes;
}

size_t dtype_align(DType t) {
  return t == DType::F32 ? 4 : 2;
}

bool tensor_size(DType t, const std::vector<int64_t>& shape, int64_t* numel, uint64_t* bytes) {
  constexpr uint64_t kMax = 1ull << 62;
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > kMax / (uint64_t)d) return false;
    n *= (uint64_t)d;
  }
  // Bytes row by row (Q8_0 stores 34 bytes per 32 elements): rows * row_bytes(cols) <= 2^62.
  const int64_t cols = shape.empty() ? 1 : shape.back();
  if ((uint64_t)cols > kMax / 4) return false;
  const uint64_t rows = cols > 0 ? n / (uint64_t)cols : 0;
  const uint64_t row = row_bytes(t, cols);
  if (rows != 0 && row > kMax / rows) return false;
  *numel = (int64_t)n;
  *bytes = row * rows;
  return true;
}

std::string number_str(double v) {
  if (v == std::floor(v) && std::fabs(v) < 1e18) return std::to_string((long long)v);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string TensorView::describe() const {
  std::string s = file_name + " (" + dtype_name(dtype) + " [";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  s += "])";
  if (file) s += " in " + file->path();
  return s;
}

bool is_layer_matrix(const std::string& canon) {
  const size_t dot = canon.find_last_of('.');
  if (canon.compare(0, 7, "layers.") != 0 || dot == std::string::npos) return false;
  const std::string m = canon.substr(dot + 1);
  return m == "wq" || m == "wk" || m == "wv" || m == "wo" || m == "w1" || m == "w2" || m == "w3";
}

const TensorView* ModelSource::find(const std::string& name) const {
  auto it = tensors.find(name);
  return it == tensors.end() ? nullptr : &it->second;
}

const TensorView& ModelSource::get(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) fail(code::kTensorMissing, path + ": tensor '" + name + "' is missing");
  return *t;
}

static bool ends_with(const std::string& s, const char* suffix) {
  size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

std::unique_ptr<ModelSource> open_model(const std::string& path) {
  if (path.empty()) fail(code::kInvalidArgument, "model path is empty");
  if (is_directory(path)) return open_safetensors_dir(path);
  if (!file_exists(path)) fail(code::kFileNotFound, "model not found: " + path);
  if (ends_with(path, "config.json")) return open_safetensors_dir(path.substr(0, path.size() - 11));
  // Sniff the magic rather than trusting the extension.
  MappedFile f(path);
  if (f.size() >= 4 && std::memcmp(f.data(), "GGUF", 4) == 0) return open_gguf(path);
  if (ends_with(path, ".safetensors"))
    fail(code::kFormatUnsupported, path + ": pass the model directory (with config.json), not a .safetensors file");
  if (ends_with(path, ".bin") || ends_with(path, ".llama2c")) return open_llama2c(path);
  if (ends_with(path, ".gguf")) fail(code::kFormatCorrupt, path + ": not a GGUF file (bad magic)");
  fail(code::kFormatUnsupported, path + ": unrecognised model format (expected a Hugging Face directory, .gguf or llama2.c .bin)");
}

}  // namespace l2
