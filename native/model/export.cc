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
  // The classifier (output, or the embedding when tied) stays at 8 bits under q4_1: llama-quantize keeps it at
  // 6 bits (Q6_K, which has no quantizer here) for every 4-bit type, as it weighs most on the logits.
  auto add_matrix = [&](const std::string& name, const Matrix& m, bool rope_rows, bool classifier = false) {
    const DType want = to == DType::Q4_1 && classifier ? DType::Q8_0 : to;
    ExportTensor t;
    t.name = name;
    t.dtype = keep ? m.dtype : ((want == DType::Q8_0 || want == DType::Q4_1) && m.cols % kQ8Block != 0 ? DType::F16 : want);
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
  add_matrix("token_embd.weight", e->w_.tok_embeddings, false, c.tied_output);
  add_vector("output_norm.weight", e->w_.output_norm);
  if (!c.tied_output) add_matrix("output.weight", e->w_.output, false, true);  // absent: llama.cpp ties it too
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
