#include "weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "../common/error.h"
#include "../common/half.h"
#include "../common/half_row.h"
#include "../common/q8_row.h"
#include "../common/thread_pool.h"
#include "ggml_blocks.h"

namespace l2 {

std::vector<Matrix*> LlamaWeights::matrices() {
  std::vector<Matrix*> out{&tok_embeddings};
  for (auto& l : layers) out.insert(out.end(), {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3});
  if (output.data != tok_embeddings.data || output.dtype != tok_embeddings.dtype) out.push_back(&output);
  return out;
}

uint64_t LlamaWeights::matrix_bytes() {
  uint64_t n = 0;
  for (Matrix* m : matrices()) n += m->bytes();
  return n;
}

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

Matrix matrix(const ModelSource& src, const std::string& name, int64_t rows, int64_t cols) {
  const TensorView& t = src.get(name);
  if (t.shape.size() != 2 || t.shape[0] != rows || t.shape[1] != cols)
    fail(code::kTensorShape, src.path + ": tensor " + t.describe() + " should have shape " + shape_str({rows, cols}));
  Matrix m;
  m.dtype = t.dtype;
  m.rows = rows;
  m.cols = cols;
  m.data = t.data;
  m.name = t.file_name;
  if (cols % block_layout(m.dtype).elements)
    fail(code::kTensorShape, src.path + ": " + t.describe() + " has rows that are not whole " + dtype_name(m.dtype) + " blocks");
  return m;
}

std::vector<float> vector_f32(const ModelSource& src, const std::string& name, int64_t n) {
  const TensorView& t = src.get(name);
  bool ok = (t.shape.size() == 1 && t.shape[0] == n) || (t.shape.size() == 2 && t.shape[0] == 1 && t.shape[1] == n);
  if (!ok) fail(code::kTensorShape, src.path + ": tensor " + t.describe() + " should have shape [" + std::to_string(n) + "]");
  if (block_layout(t.dtype).elements != 1)
    fail(code::kTensorDtype, src.path + ": norm tensor " + t.describe() + " cannot be " + dtype_name(t.dtype) + " (expected F32, F16 or BF16)");
  std::vector<float> v((size_t)n);
  convert_row(t.dtype, t.data, DType::F32, reinterpret_cast<uint8_t*>(v.data()), n);
  for (float x : v)
    if (!std::isfinite(x)) fail(code::kFormatCorrupt, src.path + ": tensor " + t.describe() + " holds non-finite values");
  return v;
}

}  // namespace

LlamaWeights map_weights(const ModelSource& src) {
  const ModelConfig& c = src.config;
  c.validate(src.path);
  const int64_t D = c.dim, Q = c.q_dim(), KV = c.kv_dim(), F = c.ffn_dim, V = c.vocab_size;
  LlamaWeights w;
  w.tok_embeddings = matrix(src, "tok_embeddings", V, D);
  w.output = c.tied_output ? w.tok_embeddings : matrix(src, "output", V, D);
  w.output_norm = vector_f32(src, "output_norm", D);
  w.layers.resize((size_t)c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    std::string p = "layers." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[(size_t)i];
    l.attn_norm = vector_f32(src, p + "attn_norm", D);
    l.ffn_norm = vector_f32(src, p + "ffn_norm", D);
    l.wq = matrix(src, p + "wq", Q, D);
    l.wk = matrix(src, p + "wk", KV, D);
    l.wv = matrix(src, p + "wv", KV, D);
    l.wo = matrix(src, p + "wo", D, Q);
    l.w1 = matrix(src, p + "w1", F, D);
    l.w2 = matrix(src, p + "w2", D, F);
    l.w3 = matrix(src, p + "w3", F, D);
  }
  return w;
}

void convert_row(DType from, const uint8_t* src, DType to, uint8_t* dst, int64_t cols) {
  if (from == to) {
    std::memcpy(dst, src, row_bytes(from, cols));
    return;
  }
  if (to == DType::Q8_0 && blocks_to_q8_0(from, src, dst, cols)) return;  // Q4_0 / Q5_0: the same values
  if (to == DType::Q4_1 && blocks_to_q4_1(from, src, dst, cols)) return;  // 4-bit groups already: rewritten, not requantized
  // Through fp32: simple and exact for every pair we need.
  std::vector<float> tmp;
  float* f;
  if (to == DType::F32) {
    f = reinterpret_cast<float*>(dst);
  } else {
    tmp.resize((size_t)cols);
    f = tmp.data();
  }
  switch (from) {
    default: decode_blocks(from, src, f, cols); break;  // the load-only block types
    case DType::F32: std::memcpy(f, src, (size_t)cols * 4); break;
    case DType::F16: fp16_row_to_f32(reinterpret_cast<const uint16_t*>(src), f, cols); break;
    case DType::BF16: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < cols; ++i) f[i] = bf16_to_f32(h[i]);
      break;
    }
    case DType::Q8_0:
      for (int64_t b = 0; b < cols / kQ8Block; ++b) {
        const uint8_t* blk = src + b * kQ8BlockBytes;
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        float d = fp16_to_f32(dh);
        for (int i = 0; i < kQ8Block; ++i) f[b * kQ8Block + i] = d * (float)(int8_t)blk[2 + i];
      }
      break;
  }
  if (to == DType::F32) return;
  uint16_t* h = reinterpret_cast<uint16_t*>(dst);
  switch (to) {
    case DType::F16: f32_row_to_fp16(f, h, cols); break;
    case DType::BF16: for (int64_t i = 0; i < cols; ++i) h[i] = f32_to_bf16(f[i]); break;
    case DType::Q8_0: q8_quantize_row(f, cols, dst); break;
    case DType::Q4_1: q4_1_quantize_row(f, cols, dst); break;
    default: fail(code::kInternal, std::string("convert_row: cannot encode ") + dtype_name(to));
  }
}

void dequantize_row(const Matrix& m, int64_t r, float* out) {
  convert_row(m.dtype, m.row(r), DType::F32, reinterpret_cast<uint8_t*>(out), m.cols);
}

namespace {

// Converts one matrix into owned storage of `to` (parallel over rows).
void convert_matrix(LlamaWeights& w, Matrix& m, DType to, ThreadPool& pool, const OwnedAlloc& alloc) {
  const size_t dst_stride = row_bytes(to, m.cols);
  LlamaWeights::Owned buf = alloc(dst_stride * (size_t)m.rows);
  uint8_t* dst = buf.bytes.get();
  const Matrix src = m;
  pool.parallel_for(m.rows, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) convert_row(src.dtype, src.row(r), to, dst + dst_stride * (size_t)r, src.cols);
  });
  m.dtype = to;
  m.data = dst;
  w.owned.push_back(std::move(buf));
}

// Like llama.cpp's converter, a matrix whose rows do not split into 32-blocks stays fp16 in int8 (or 4-bit) mode.
DType target_for(const Matrix& m, DType to) { return (to == DType::Q8_0 || to == DType::Q4_1) && m.cols % 32 ? DType::F16 : to; }

}  // namespace

LlamaWeights::Owned heap_owned(size_t bytes) {
  LlamaWeights::Owned o;
  o.bytes = {new uint8_t[bytes], [](uint8_t* p) { delete[] p; }};
  o.size = bytes;
  return o;
}

namespace {

// Converts each matrix into the type `target` gives it (itself: left as it is). `progress` gets the bytes of
// the matrices visited so far, counted after conversion or, with `source_bytes`, as they were (decoding 4-bit
// blocks is work on the file's bytes).
template <typename Target>
void convert_where(LlamaWeights& w, ThreadPool& pool, const ConvertProgress& progress, const OwnedAlloc& alloc, Target target, bool source_bytes) {
  const bool tied = w.output.data == w.tok_embeddings.data;
  uint64_t done = 0;
  for (Matrix* m : w.matrices()) {
    if (source_bytes) done += m->bytes();
    const DType to = target(*m);
    if (to != m->dtype) convert_matrix(w, *m, to, pool, alloc);
    if (!source_bytes) done += m->bytes();
    if (progress) progress(done);
  }
  if (tied) w.output = w.tok_embeddings;
}

}  // namespace

MatrixTarget uniform_target(DType to) {
  return [to](const Matrix& m) { return target_for(m, to); };
}

void convert_weights(LlamaWeights& w, const MatrixTarget& to, ThreadPool& pool, const ConvertProgress& progress, const OwnedAlloc& alloc) {
  convert_where(w, pool, progress, alloc, to, false);
}

MatrixTarget q4_targets(const LlamaWeights& w) {
  const bool tied = w.output.data == w.tok_embeddings.data;
  return [&w, tied](const Matrix& m) {
    const bool classifier = &m == &w.output || (tied && &m == &w.tok_embeddings);
    return target_for(m, classifier ? DType::Q8_0 : DType::Q4_1);
  };
}

bool has_load_only(LlamaWeights& w) {
  for (Matrix* m : w.matrices())
    if (is_load_only(m->dtype)) return true;
  return false;
}

void decode_load_only(LlamaWeights& w, const MatrixTarget& to, ThreadPool& pool, const ConvertProgress& progress, const OwnedAlloc& alloc) {
  convert_where(w, pool, progress, alloc, [&](const Matrix& m) { return is_load_only(m.dtype) ? to(m) : m.dtype; }, true);
}

void decode_keeping_q4(LlamaWeights& w, ThreadPool& pool, const ConvertProgress& progress, const OwnedAlloc& alloc) {
  convert_where(
      w, pool, progress, alloc,
      [](const Matrix& m) { return runs_as_w4(m.dtype) ? DType::Q4_1 : is_load_only(m.dtype) ? target_for(m, DType::Q8_0) : m.dtype; }, true);
}

}  // namespace l2
