#include "export.h"

#include <cstring>

#include "../common/error.h"

namespace l2 {

namespace {

bool parse_export_dtype(const std::string& s, bool* keep, DType* to) {
  *keep = s == "auto";
  if (s == "f32") *to = DType::F32;
  else if (s == "f16") *to = DType::F16;
  else if (s == "bf16") *to = DType::BF16;
  else if (s == "q8_0") *to = DType::Q8_0;
  else if (s == "q4_1") *to = DType::Q4_1;
  else return *keep;
  return true;
}

}  // namespace

std::unique_ptr<ModelExport> ModelExport::open(const std::string& path, const ExportOptions& o) {
  bool keep = false;
  DType to = DType::F16;
  if (!parse_export_dtype(o.dtype, &keep, &to))
    fail(code::kInvalidArgument, "dtype: expected auto, f32, f16, bf16, q8_0 or q4_1, got '" + o.dtype + "'");
  if (o.threads < 0 || o.threads > 1024) fail(code::kInvalidArgument, "threads: " + std::to_string(o.threads) + " is out of range");
  auto e = std::unique_ptr<ModelExport>(new ModelExport());
  e->src_ = open_model(path);
  if (o.rope_override) e->src_->config.rope_scaling = o.rope_scaling;
  const ModelConfig& c = e->src_->config;
  e->w_ = map_weights(*e->src_);  // validates the config and every tensor's shape and type
  e->lora_ = apply_lora(e->w_, c, o.lora, o.threads);
  e->pool_ = std::make_unique<ThreadPool>(default_threads(o.threads));

  const bool halves = c.rope_layout == RopeLayout::Halves;
  // The load's own rules: q4_1 is dtype "q4"'s mix (the classifier in Q8_0, as llama-quantize keeps it at 6+
  // bits), the others one type (rows that do not split into 32-groups F16 under q8_0).
  const MatrixTarget target = to == DType::Q4_1 ? q4_targets(e->w_) : uniform_target(to);
  auto add_matrix = [&](const std::string& name, const Matrix& m, bool rope_rows) {
    ExportTensor t;
    t.name = name;
    t.dtype = keep ? m.dtype : target(m);
    t.rows = m.rows;
    t.cols = m.cols;
    t.matrix = &m;
    t.rope_rows = rope_rows && halves;
    e->tensors_.push_back(t);
  };
  auto add_vector = [&](const std::string& name, const std::vector<float>& v) {
    ExportTensor t;
    t.name = name;
    t.dtype = DType::F32;
    t.cols = (int64_t)v.size();
    t.vector = &v;
    e->tensors_.push_back(t);
  };
  // convert_hf_to_gguf.py's order: the embedding, the final norm and classifier, then each block.
  add_matrix("token_embd.weight", e->w_.tok_embeddings, false);
  add_vector("output_norm.weight", e->w_.output_norm);
  if (!c.tied_output) add_matrix("output.weight", e->w_.output, false);  // absent: llama.cpp ties it too
  for (size_t i = 0; i < e->w_.layers.size(); ++i) {
    const LayerWeights& l = e->w_.layers[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    add_vector(p + "attn_norm.weight", l.attn_norm);
    add_matrix(p + "attn_q.weight", l.wq, true);
    add_matrix(p + "attn_k.weight", l.wk, true);
    add_matrix(p + "attn_v.weight", l.wv, false);
    add_matrix(p + "attn_output.weight", l.wo, false);
    add_vector(p + "ffn_norm.weight", l.ffn_norm);
    add_matrix(p + "ffn_gate.weight", l.w1, false);
    add_matrix(p + "ffn_down.weight", l.w2, false);
    add_matrix(p + "ffn_up.weight", l.w3, false);
  }
  return e;
}

void ModelExport::read(size_t i, int64_t row0, int64_t n, uint8_t* out) {
  if (i >= tensors_.size()) fail(code::kInvalidArgument, "tensor index " + std::to_string(i) + " is out of range");
  const ExportTensor& t = tensors_[i];
  if (row0 < 0 || n < 0 || row0 > t.rows || n > t.rows - row0)
    fail(code::kInvalidArgument, t.name + ": rows " + std::to_string(row0) + ".." + std::to_string(row0 + n) + " are out of range (0.." +
                                     std::to_string(t.rows) + ")");
  const size_t stride = row_bytes(t.dtype, t.cols);
  if (t.vector) {
    if (n > 0) std::memcpy(out, t.vector->data(), stride);
    return;
  }
  const Matrix& m = *t.matrix;
  const int64_t hd = src_->config.head_dim;
  auto src_row = [&](int64_t r) { return t.rope_rows ? halves_row_of_interleaved(r, hd) : r; };
  std::lock_guard<std::mutex> lk(mu_);
  pool_->parallel_for(n, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) convert_row(m.dtype, m.row(src_row(row0 + r)), t.dtype, out + stride * (size_t)r, m.cols);
  });
}

}  // namespace l2
