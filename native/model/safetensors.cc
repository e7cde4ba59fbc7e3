// Hugging Face directory: config.json + model.safetensors (or shards + model.safetensors.index.json)
// + tokenizer.model. Q/K rows are in HF's rotary layout (RopeLayout::Halves).
#include <cfloat>
#include <cmath>
#include <cstring>
#include <functional>
#include <set>

#include "../common/error.h"
#include "../common/json.h"
#include "model_source.h"

namespace l2 {

namespace {

double num(const Json& cfg, const char* key, const std::string& src, double def, bool required) {
  const Json* v = cfg.get(key);
  if (!v || v->type == Json::Type::Null) {
    if (required) fail(code::kConfig, src + ": '" + key + "' is missing");
    return def;
  }
  if (!v->is_number()) fail(code::kConfig, src + ": '" + key + "' must be a number");
  return v->num;
}

int integer(const Json& cfg, const char* key, const std::string& src, int def, bool required) {
  double v = num(cfg, key, src, def, required);
  // Range first: casting NaN, inf or a huge double to an integer is undefined.
  if (!(v >= -1e9 && v <= 1e9) || v != std::floor(v)) fail(code::kConfig, src + ": '" + key + "' must be an integer (got " + number_str(v) + ")");
  return (int)v;
}

// double -> float without UB: values beyond float range become +-inf (rejected by validation).
float to_float(double v) {
  return std::isfinite(v) && std::fabs(v) > FLT_MAX ? (float)std::copysign(INFINITY, v) : (float)v;
}

// A whole number in [0, max] (a shape dimension, a byte offset), or -1.
int64_t whole(const Json& j, double max) {
  return j.is_number() && j.num >= 0 && j.num <= max && j.num == std::floor(j.num) ? (int64_t)j.num : -1;
}

// rope_scaling / rope_parameters: {rope_type (or type), factor, original_max_position_embeddings, beta_fast,
// beta_slow, attention_factor}. The factor is used as written (llama.cpp's reading; transformers derives
// YaRN's from max_position_embeddings / original_max_position_embeddings when both are given, the same
// number in consistent files). Types or options that change the arithmetic in ways not built are refused.
void parse_rope_params(const Json& rp, const std::string& src, ModelConfig* c) {
  if (!rp.is_object()) fail(code::kConfig, src + " must be an object");
  const Json* t = rp.get("rope_type") ? rp.get("rope_type") : rp.get("type");
  if (!t) {
    if (rp.get("factor")) fail(code::kConfig, src + ": 'factor' without 'rope_type'");
    return;  // rope_parameters holding only rope_theta
  }
  RopeScaling type = RopeScaling::None;
  if (!t->is_string() || !parse_rope_scaling(t->str, &type))
    fail(code::kFormatUnsupported, src + ": rope type " + (t->is_string() ? "'" + t->str + "'" : std::string("(not a string)")) +
                                       " is not supported (supported: default, linear, yarn)");
  if (type == RopeScaling::None) return;  // "default" leaves a scaling read from the other field
  RopeScalingConfig& rs = c->rope_scaling;
  rs.type = type;
  rs.factor = to_float(num(rp, "factor", src, 1.0, true));
  if (rs.type == RopeScaling::Yarn) {
    rs.original_ctx = integer(rp, "original_max_position_embeddings", src, 0, false);
    rs.beta_fast = to_float(num(rp, "beta_fast", src, 32.0, false));
    rs.beta_slow = to_float(num(rp, "beta_slow", src, 1.0, false));
    rs.mscale = to_float(num(rp, "attention_factor", src, 0.0, false));
    for (const char* k : {"mscale", "mscale_all_dim"})
      if (num(rp, k, src, 0.0, false) != 0.0) fail(code::kFormatUnsupported, src + ": YaRN's '" + k + "' is not supported");
    if (const Json* tr = rp.get("truncate"); tr && tr->type == Json::Type::Bool && !tr->b)
      fail(code::kFormatUnsupported, src + ": YaRN with truncate: false is not supported");
  }
}

ModelConfig parse_config(const std::string& path) {
  Json cfg = Json::parse(read_text_file(path, 1 << 20), path);
  if (!cfg.is_object()) fail(code::kConfig, path + ": expected a JSON object");
  if (const Json* mt = cfg.get("model_type"); mt && mt->is_string() && mt->str != "llama")
    fail(code::kFormatUnsupported, path + ": model_type '" + mt->str + "' is not supported (only 'llama')");
  ModelConfig c;
  c.dim = integer(cfg, "hidden_size", path, 0, true);
  c.n_layers = integer(cfg, "num_hidden_layers", path, 0, true);
  c.n_heads = integer(cfg, "num_attention_heads", path, 0, true);
  c.n_kv_heads = integer(cfg, "num_key_value_heads", path, c.n_heads, false);
  c.head_dim = integer(cfg, "head_dim", path, c.n_heads > 0 ? c.dim / c.n_heads : 0, false);
  c.ffn_dim = integer(cfg, "intermediate_size", path, 0, true);
  c.vocab_size = integer(cfg, "vocab_size", path, 0, true);
  c.max_seq_len = integer(cfg, "max_position_embeddings", path, 4096, false);
  c.rms_eps = to_float(num(cfg, "rms_norm_eps", path, 1e-5, false));
  // Older checkpoints put rope_theta at the top level (or omit it) and scaling in rope_scaling; transformers
  // 5 puts both in rope_parameters.
  double theta = num(cfg, "rope_theta", path, 10000.0, false);
  if (const Json* rs = cfg.get("rope_scaling"); rs && rs->type != Json::Type::Null) parse_rope_params(*rs, path + ": rope_scaling", &c);
  if (const Json* rp = cfg.get("rope_parameters"); rp && rp->type != Json::Type::Null) {
    theta = num(*rp, "rope_theta", path + ": rope_parameters", theta, false);
    parse_rope_params(*rp, path + ": rope_parameters", &c);
  }
  c.rope_theta = to_float(theta);
  const Json* tie = cfg.get("tie_word_embeddings");
  c.tied_output = tie && tie->type == Json::Type::Bool && tie->b;
  c.rope_layout = RopeLayout::Halves;
  return c;
}

bool parse_dtype(const std::string& s, DType* out) {
  if (s == "F32") *out = DType::F32;
  else if (s == "F16") *out = DType::F16;
  else if (s == "BF16") *out = DType::BF16;
  else return false;
  return true;
}

}  // namespace

std::string hf_canonical_name(const std::string& n) {
  static const std::pair<const char*, const char*> kLayer[] = {
      {"input_layernorm.weight", "attn_norm"}, {"self_attn.q_proj.weight", "wq"},
      {"self_attn.k_proj.weight", "wk"},       {"self_attn.v_proj.weight", "wv"},
      {"self_attn.o_proj.weight", "wo"},       {"post_attention_layernorm.weight", "ffn_norm"},
      {"mlp.gate_proj.weight", "w1"},          {"mlp.down_proj.weight", "w2"},
      {"mlp.up_proj.weight", "w3"}};
  if (n == "model.embed_tokens.weight") return "tok_embeddings";
  if (n == "model.norm.weight") return "output_norm";
  if (n == "lm_head.weight") return "output";
  const std::string prefix = "model.layers.";
  if (n.compare(0, prefix.size(), prefix) != 0) return "";
  size_t dot = n.find('.', prefix.size());
  if (dot == std::string::npos) return "";
  std::string idx = n.substr(prefix.size(), dot - prefix.size());
  if (idx.empty() || idx.size() > 5 || idx.find_first_not_of("0123456789") != std::string::npos) return "";
  std::string rest = n.substr(dot + 1);
  for (auto& [hf, canon] : kLayer)
    if (rest == hf) return "layers." + idx + "." + canon;
  return "";
}

void read_safetensors(ModelSource& src, const std::string& path, const std::function<std::string(const std::string&)>& canonical_name) {
  src.files.push_back(std::make_unique<MappedFile>(path));
  const MappedFile& f = *src.files.back();
  src.file_bytes += f.size();
  if (f.size() < 8) fail(code::kFormatCorrupt, path + ": truncated safetensors file (" + std::to_string(f.size()) + " bytes)");
  uint64_t header_len;
  std::memcpy(&header_len, f.data(), 8);
  if (header_len > f.size() - 8 || header_len > (100u << 20))
    fail(code::kFormatCorrupt, path + ": safetensors header length " + std::to_string(header_len) + " exceeds the file");
  const uint8_t* base = f.data() + 8 + header_len;
  size_t data_size = f.size() - 8 - header_len;
  Json h = Json::parse(std::string(reinterpret_cast<const char*>(f.data() + 8), header_len), path);
  if (!h.is_object()) fail(code::kFormatCorrupt, path + ": safetensors header is not an object");
  for (auto& [name, info] : h.obj) {
    if (name == "__metadata__") continue;
    std::string canon = canonical_name(name);
    if (canon.empty()) continue;
    const Json* dt = info.get("dtype");
    const Json* shape = info.get("shape");
    const Json* offs = info.get("data_offsets");
    if (!dt || !dt->is_string() || !shape || !shape->is_array() || !offs || !offs->is_array() || offs->arr.size() != 2)
      fail(code::kFormatCorrupt, path + ": tensor '" + name + "' has a malformed header entry");
    TensorView t;
    t.name = canon;
    t.file_name = name;
    t.file = &f;
    if (!parse_dtype(dt->str, &t.dtype))
      fail(code::kTensorDtype, path + ": tensor '" + name + "' has dtype " + dt->str + " (supported: F32, F16, BF16)");
    for (const Json& d : shape->arr) {
      int64_t v = whole(d, 1e9);
      if (v < 0) fail(code::kFormatCorrupt, path + ": tensor '" + name + "' has a bad shape");
      t.shape.push_back(v);
    }
    const int64_t b = whole(offs->arr[0], 9.0e15), e = whole(offs->arr[1], 9.0e15);
    if (b < 0 || e < b || (uint64_t)e > data_size)
      fail(code::kFormatCorrupt, path + ": tensor '" + name + "' data lies outside the file (truncated?)");
    t.data = base + b;
    t.nbytes = (size_t)(e - b);
    int64_t numel;
    uint64_t nbytes;
    if (t.shape.empty() || !tensor_size(t.dtype, t.shape, &numel, &nbytes) || t.nbytes != nbytes)
      fail(code::kFormatCorrupt, path + ": tensor '" + name + "' byte size does not match its shape");
    if (src.tensors.count(canon)) fail(code::kFormatCorrupt, path + ": tensor '" + name + "' appears twice");
    // Files written without header padding (safetensors < 0.3, some other writers) can leave tensors
    // misaligned for their element type; the backends read in place, so those get an aligned copy.
    if (reinterpret_cast<uintptr_t>(t.data) % dtype_align(t.dtype) != 0 && t.nbytes > 0) {
      src.owned.push_back(std::make_unique<uint8_t[]>(t.nbytes));
      std::memcpy(src.owned.back().get(), t.data, t.nbytes);
      t.data = src.owned.back().get();
    }
    src.tensors[canon] = t;
  }
}

std::unique_ptr<ModelSource> open_safetensors_dir(const std::string& dir_in) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  auto src = std::make_unique<ModelSource>();
  src->format = "hf";
  src->path = dir;
  std::string cfg_path = dir + "/config.json";
  if (!file_exists(cfg_path)) fail(code::kFileNotFound, dir + ": no config.json (expected a Hugging Face model directory)");
  src->config = parse_config(cfg_path);
  std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  if (file_exists(single)) {
    read_safetensors(*src, single, hf_canonical_name);
  } else if (file_exists(index)) {
    Json idx = Json::parse(read_text_file(index), index);
    const Json* wm = idx.get("weight_map");
    if (!wm || !wm->is_object()) fail(code::kFormatCorrupt, index + ": 'weight_map' is missing");
    std::set<std::string> shards;
    for (auto& [name, file] : wm->obj) {
      if (!file.is_string() || file.str.find('/') != std::string::npos || file.str.find("..") != std::string::npos)
        fail(code::kFormatCorrupt, index + ": bad shard name for '" + name + "'");
      shards.insert(file.str);
    }
    for (auto& s : shards) {
      std::string p = dir + "/" + s;
      if (!file_exists(p)) fail(code::kFileNotFound, index + " names shard " + s + ", which is missing");
      read_safetensors(*src, p, hf_canonical_name);
    }
  } else {
    fail(code::kFileNotFound, dir + ": no model.safetensors or model.safetensors.index.json (.bin PyTorch checkpoints are not supported)");
  }
  if (!src->find("output")) src->config.tied_output = true;
  // SentencePiece's own file when present; a folder saved from a "fast" tokenizer has only tokenizer.json.
  if (file_exists(dir + "/tokenizer.model")) src->tokenizer_path = dir + "/tokenizer.model";
  else if (file_exists(dir + "/tokenizer.json")) src->tokenizer_path = dir + "/tokenizer.json";
  src->name = dir.substr(dir.find_last_of('/') + 1);
  return src;
}

}  // namespace l2
