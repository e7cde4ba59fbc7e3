// GGUF v2/v3 as written by llama.cpp: llama metadata, the tokenizer in tokenizer.ggml.*, and
// F32 / F16 / BF16 / Q8_0 tensors and the 4-6 bit block types (decoded at load). Q/K rows are in Meta's
// interleaved rotary layout.
// Every read is bounds-checked: a truncated or corrupt file gives ERR_MODEL_CORRUPT with the offset.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "../common/error.h"
#include "ggml_blocks.h"
#include "model_source.h"

namespace l2 {

namespace {

enum GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

struct Value {
  uint32_t type = 0;
  double number = 0;  // any scalar numeric/bool
  std::string str;
  uint32_t elem_type = 0;  // arrays
  uint64_t count = 0;
  std::vector<std::string> strings;
  std::vector<double> numbers;
};

// Most elements of a metadata array we materialize (the vocabulary; ModelConfig allows 2^22 tokens).
constexpr uint64_t kMaxArray = 1u << 22;

struct Reader {
  const uint8_t* data;
  size_t size;
  size_t pos = 0;
  const std::string& path;

  [[noreturn]] void corrupt(const std::string& what) {
    fail(code::kFormatCorrupt, path + ": " + what + " at byte " + std::to_string(pos) + " (truncated or corrupt GGUF)");
  }
  void need(uint64_t n) {
    if (n > size - pos) corrupt("unexpected end of file");
  }
  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, data + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string string() {
    uint64_t n = get<uint64_t>();
    need(n);
    std::string s(reinterpret_cast<const char*>(data + pos), n);
    pos += n;
    return s;
  }
  static size_t scalar_size(uint32_t t) {
    switch (t) {
      case kU8: case kI8: case kBool: return 1;
      case kU16: case kI16: return 2;
      case kU32: case kI32: case kF32: return 4;
      case kU64: case kI64: case kF64: return 8;
      default: return 0;
    }
  }
  double scalar(uint32_t t) {
    switch (t) {
      case kU8: return get<uint8_t>();
      case kI8: return get<int8_t>();
      case kBool: return get<uint8_t>() ? 1 : 0;
      case kU16: return get<uint16_t>();
      case kI16: return get<int16_t>();
      case kU32: return get<uint32_t>();
      case kI32: return get<int32_t>();
      case kF32: return get<float>();
      case kU64: return (double)get<uint64_t>();
      case kI64: return (double)get<int64_t>();
      case kF64: return get<double>();
    }
    corrupt("unknown metadata type " + std::to_string(t));
  }
  // Reads a value. Arrays are materialized only when `keep` (the tokenizer's), and then hold at most
  // kMaxArray elements: the memory a file can make us allocate is bounded by what we use.
  Value value(uint32_t type, bool keep, const std::string& key) {
    Value v;
    v.type = type;
    if (type == kString) {
      v.str = string();
    } else if (type == kArray) {
      v.elem_type = get<uint32_t>();
      v.count = get<uint64_t>();
      const size_t es = v.elem_type == kString ? 8 : scalar_size(v.elem_type);  // a string is at least its length
      if (es != 0 && v.count > (size - pos) / es)
        corrupt("array '" + key + "' claims " + std::to_string(v.count) + " elements, more than the rest of the file holds");
      if (keep && v.count > kMaxArray)
        corrupt("array '" + key + "' has " + std::to_string(v.count) + " elements (at most " + std::to_string(kMaxArray) + " are supported)");
      if (v.elem_type == kString) {
        if (keep) v.strings.reserve(v.count);
        for (uint64_t i = 0; i < v.count; ++i) {
          if (keep) v.strings.push_back(string());
          else { uint64_t n = get<uint64_t>(); need(n); pos += n; }
        }
      } else if (es != 0) {
        need(v.count * es);
        if (keep) {
          v.numbers.reserve(v.count);
          for (uint64_t i = 0; i < v.count; ++i) v.numbers.push_back(scalar(v.elem_type));
        } else {
          pos += v.count * es;
        }
      } else {
        corrupt("unsupported array element type " + std::to_string(v.elem_type));
      }
    } else {
      v.number = scalar(type);
    }
    return v;
  }
};

// double -> float without UB: values beyond float range become +-inf (NaN stays NaN).
float to_float(double v) {
  return std::isfinite(v) && std::fabs(v) > FLT_MAX ? (float)std::copysign(INFINITY, v) : (float)v;
}

// ggml_type ids.
bool ggml_dtype(uint32_t t, DType* out) {
  switch (t) {
    case 0: *out = DType::F32; return true;
    case 1: *out = DType::F16; return true;
    case 2: *out = DType::Q4_0; return true;
    case 3: *out = DType::Q4_1; return true;
    case 6: *out = DType::Q5_0; return true;
    case 7: *out = DType::Q5_1; return true;
    case 8: *out = DType::Q8_0; return true;
    case 10: *out = DType::Q2_K; return true;
    case 11: *out = DType::Q3_K; return true;
    case 12: *out = DType::Q4_K; return true;
    case 13: *out = DType::Q5_K; return true;
    case 14: *out = DType::Q6_K; return true;
    case 30: *out = DType::BF16; return true;
    default: return false;
  }
}

// Names of the ggml types we do not read, for the message.
std::string ggml_type_name(uint32_t t) {
  static const char* kNames[] = {"F32", "F16", "Q4_0", "Q4_1", "Q4_2 (removed)", "Q4_3 (removed)", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
                                 "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
                                 "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16"};
  if (t < sizeof kNames / sizeof kNames[0]) return kNames[t];
  if (t == 34) return "TQ1_0";
  if (t == 35) return "TQ2_0";
  if (t == 39) return "MXFP4";
  return "unknown";
}

std::string canonical_name(const std::string& n) {
  static const std::pair<const char*, const char*> kLayer[] = {
      {"attn_norm.weight", "attn_norm"}, {"attn_q.weight", "wq"},   {"attn_k.weight", "wk"},
      {"attn_v.weight", "wv"},           {"attn_output.weight", "wo"}, {"ffn_norm.weight", "ffn_norm"},
      {"ffn_gate.weight", "w1"},         {"ffn_down.weight", "w2"}, {"ffn_up.weight", "w3"}};
  if (n == "token_embd.weight") return "tok_embeddings";
  if (n == "output_norm.weight") return "output_norm";
  if (n == "output.weight") return "output";
  if (n.compare(0, 4, "blk.") != 0) return "";
  size_t dot = n.find('.', 4);
  if (dot == std::string::npos) return "";
  std::string idx = n.substr(4, dot - 4);
  if (idx.empty() || idx.size() > 5 || idx.find_first_not_of("0123456789") != std::string::npos) return "";
  std::string rest = n.substr(dot + 1);
  for (auto& [g, canon] : kLayer)
    if (rest == g) return "layers." + idx + "." + canon;
  return "";
}

}  // namespace

namespace {

// llama.cpp's LoRA adapter tensors ("blk.3.attn_q.weight.lora_a" -> "layers.3.wq.A"), "" for others.
std::string lora_canonical_name(const std::string& n) {
  for (const char* ab : {".lora_a", ".lora_b"}) {
    const size_t len = std::strlen(ab);
    if (n.size() <= len || n.compare(n.size() - len, len, ab) != 0) continue;
    const std::string canon = canonical_name(n.substr(0, n.size() - len));
    return is_layer_matrix(canon) ? canon + (ab[6] == 'a' ? ".A" : ".B") : "";
  }
  return "";
}

// A model file, or with `lora_alpha` a LoRA adapter file (general.type "adapter"): then only the
// adapter's tensors and its alpha are read.
std::unique_ptr<ModelSource> open_gguf_impl(const std::string& path, float* lora_alpha) {
  auto src = std::make_unique<ModelSource>();
  src->format = "gguf";
  src->path = path;
  src->files.push_back(std::make_unique<MappedFile>(path));
  const MappedFile& f = *src->files.back();
  src->file_bytes = f.size();
  Reader r{f.data(), f.size(), 0, path};
  r.need(4);
  if (std::memcmp(f.data(), "GGUF", 4) != 0) r.corrupt("bad magic (not a GGUF file)");
  r.pos = 4;
  uint32_t version = r.get<uint32_t>();
  if (version < 2 || version > 3)
    fail(code::kFormatUnsupported, path + ": GGUF version " + std::to_string(version) + " is not supported (2 or 3)");
  uint64_t n_tensors = r.get<uint64_t>(), n_kv = r.get<uint64_t>();
  if (n_tensors > 1000000 || n_kv > 1000000) r.corrupt("implausible tensor/metadata count");

  std::map<std::string, Value> kv;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.string();
    uint32_t type = r.get<uint32_t>();
    // Of the arrays, only the vocabulary is used: others (BPE merges, ...) are skipped.
    bool keep = key == "tokenizer.ggml.tokens" || key == "tokenizer.ggml.scores" || key == "tokenizer.ggml.token_type";
    kv[key] = r.value(type, keep, key);
  }
  auto find = [&](const std::string& k) -> const Value* {
    auto it = kv.find(k);
    return it == kv.end() ? nullptr : &it->second;
  };
  auto str = [&](const std::string& k) -> std::string {
    const Value* v = find(k);
    return v && v->type == kString ? v->str : "";
  };
  auto number = [&](const std::string& k, double def, bool required) -> double {
    const Value* v = find(k);
    if (!v) {
      if (required) fail(code::kConfig, path + ": metadata '" + k + "' is missing");
      return def;
    }
    if (v->type == kString || v->type == kArray) fail(code::kConfig, path + ": metadata '" + k + "' must be a number");
    return v->number;
  };
  // An integer field: a whole number in int32 range (ModelConfig::validate checks the real bounds).
  auto integer = [&](const std::string& k, double def, bool required) -> int {
    double v = number(k, def, required);
    if (!(v == std::floor(v) && v >= INT32_MIN && v <= INT32_MAX))
      fail(code::kConfig, path + ": metadata '" + k + "' = " + number_str(v) + " is not an integer in range");
    return (int)v;
  };
  auto real = [&](const std::string& k, double def) -> float { return to_float(number(k, def, false)); };

  std::string arch = str("general.architecture");
  if (arch != "llama")
    fail(code::kFormatUnsupported, path + ": general.architecture '" + arch + "' is not supported (only 'llama')");
  const bool is_adapter = str("general.type") == "adapter";
  if (lora_alpha) {
    if (!is_adapter || str("adapter.type") != "lora")
      fail(code::kFormatUnsupported, path + ": not a LoRA adapter (general.type '" + str("general.type") + "', adapter.type '" + str("adapter.type") + "')");
    *lora_alpha = real("adapter.lora.alpha", 0.0);
  } else if (is_adapter) {
    fail(code::kFormatUnsupported, path + ": a LoRA adapter, not a model: load its base model with lora: '" + path + "'");
  }
  ModelConfig& c = src->config;
  if (!lora_alpha) {
    c.dim = integer("llama.embedding_length", 0, true);
    c.n_layers = integer("llama.block_count", 0, true);
    c.n_heads = integer("llama.attention.head_count", 0, true);
    c.n_kv_heads = integer("llama.attention.head_count_kv", c.n_heads, false);
    c.head_dim = c.n_heads > 0 ? integer("llama.attention.key_length", c.dim / c.n_heads, false) : 0;
    c.ffn_dim = integer("llama.feed_forward_length", 0, true);
    c.max_seq_len = integer("llama.context_length", 4096, false);
    c.rms_eps = real("llama.attention.layer_norm_rms_epsilon", 1e-5);
    c.rope_theta = real("llama.rope.freq_base", 10000.0);
    c.rope_layout = RopeLayout::Interleaved;
    // Rope scaling as llama.cpp reads it: a factor (or the older rope.scale_linear) with a type that
    // defaults to linear; type "none" turns a factor off.
    const float factor = real("llama.rope.scaling.factor", real("llama.rope.scale_linear", 0.0));
    const std::string scaling = find("llama.rope.scaling.type") ? str("llama.rope.scaling.type") : "linear";
    RopeScalingConfig& rs = c.rope_scaling;
    if (!parse_rope_scaling(scaling, &rs.type))
      fail(code::kFormatUnsupported, path + ": rope scaling '" + scaling + "' is not supported (supported: none, linear, yarn)");
    if (factor == 0.f && rs.type == RopeScaling::Linear) rs.type = RopeScaling::None;  // no factor: nothing to scale
    if (rs.type != RopeScaling::None) {
      rs.factor = factor == 0.f ? 1.f : factor;
      rs.original_ctx = integer("llama.rope.scaling.original_context_length", 0, false);
      rs.beta_fast = real("llama.rope.scaling.yarn_beta_fast", 32.0);
      rs.beta_slow = real("llama.rope.scaling.yarn_beta_slow", 1.0);
      // llama.cpp scales cos/sin by attn_factor, times YaRN's derived 0.1 ln(factor) + 1.
      const float attn = real("llama.rope.scaling.attn_factor", 1.0);
      if (attn != 1.f)
        rs.mscale = rs.type == RopeScaling::Yarn ? attn * yarn_mscale(rs.factor) : attn;
      if (real("llama.rope.scaling.yarn_ext_factor", 1.0) != 1.f && rs.type == RopeScaling::Yarn)
        fail(code::kFormatUnsupported, path + ": rope.scaling.yarn_ext_factor other than 1 is not supported");
    }
    int rope_dims = integer("llama.rope.dimension_count", c.head_dim, false);
    if (rope_dims != c.head_dim)
      fail(code::kFormatUnsupported, path + ": partial rotary embeddings (rope.dimension_count " + std::to_string(rope_dims) + ") are not supported");
    src->name = str("general.name");

    if (const Value* toks = find("tokenizer.ggml.tokens"); toks && toks->type == kArray && toks->elem_type == kString) {
      TokenizerData t;
      t.model = str("tokenizer.ggml.model");
      t.tokens = toks->strings;
      const Value* scores = find("tokenizer.ggml.scores");
      const Value* types = find("tokenizer.ggml.token_type");
      if (scores && scores->type == kArray && scores->numbers.size() == t.tokens.size())
        for (double s : scores->numbers) t.scores.push_back(to_float(s));
      else
        t.scores.assign(t.tokens.size(), 0.f);
      if (types && types->type == kArray && types->numbers.size() == t.tokens.size()) {
        for (size_t i = 0; i < types->numbers.size(); ++i) {
          double s = types->numbers[i];
          if (!(s == std::floor(s) && s >= INT32_MIN && s <= INT32_MAX))
            fail(code::kFormatCorrupt, path + ": tokenizer.ggml.token_type[" + std::to_string(i) + "] = " + number_str(s) + " is not a token type");
          t.types.push_back((int32_t)s);
        }
      } else {
        t.types.assign(t.tokens.size(), 1);
      }
      t.bos_id = integer("tokenizer.ggml.bos_token_id", 1, false);
      t.eos_id = integer("tokenizer.ggml.eos_token_id", 2, false);
      t.unk_id = integer("tokenizer.ggml.unknown_token_id", 0, false);
      t.pad_id = integer("tokenizer.ggml.padding_token_id", -1, false);
      t.add_bos = number("tokenizer.ggml.add_bos_token", 1, false) != 0;
      t.add_space_prefix = number("tokenizer.ggml.add_space_prefix", 1, false) != 0;
      t.chat_template = str("tokenizer.chat_template");
      src->tokenizer = std::move(t);
    }

  }  // the model's config and tokenizer

  struct Info {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t offset;
  };
  std::vector<Info> infos;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    Info in;
    in.name = r.string();
    uint32_t n_dims = r.get<uint32_t>();
    if (n_dims == 0 || n_dims > 4) r.corrupt("tensor '" + in.name + "' has " + std::to_string(n_dims) + " dimensions");
    std::vector<int64_t> ne(n_dims);
    for (auto& d : ne) {
      uint64_t v = r.get<uint64_t>();
      if (v > (1ull << 32)) r.corrupt("tensor '" + in.name + "' has an implausible dimension");
      d = (int64_t)v;
    }
    uint32_t type = r.get<uint32_t>();
    in.offset = r.get<uint64_t>();
    in.shape.assign(ne.rbegin(), ne.rend());  // ggml lists the innermost dimension first
    std::string canon = lora_alpha ? lora_canonical_name(in.name) : canonical_name(in.name);
    if (canon.empty()) {
      if (lora_alpha)
        fail(code::kFormatUnsupported, path + ": tensor '" + in.name + "' is not a LoRA matrix of an attention or MLP projection");
      continue;
    }
    if (!ggml_dtype(type, &in.dtype))
      fail(code::kTensorDtype, path + ": tensor '" + in.name + "' has ggml type " + std::to_string(type) + " (" + ggml_type_name(type) +
                                   "; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)");
    in.name = in.name + "\n" + canon;  // keep both names
    infos.push_back(std::move(in));
  }
  const double align_v = number("general.alignment", 32, false);
  if (!(align_v >= 1 && align_v <= 65536)) r.corrupt("bad general.alignment " + number_str(align_v));
  const uint64_t alignment = (uint64_t)align_v;
  if (alignment != align_v || (alignment & (alignment - 1))) r.corrupt("bad general.alignment " + number_str(align_v));
  uint64_t data_start = (r.pos + alignment - 1) / alignment * alignment;
  if (data_start > f.size()) r.corrupt("tensor data section is missing");
  for (auto& in : infos) {
    size_t nl = in.name.find('\n');
    TensorView t;
    t.file_name = in.name.substr(0, nl);
    t.name = in.name.substr(nl + 1);
    t.dtype = in.dtype;
    t.shape = in.shape;
    t.file = &f;
    int64_t cols = t.shape.back();
    const int block = block_layout(t.dtype).elements;
    if (cols % block != 0)
      fail(code::kFormatCorrupt, path + ": " + dtype_name(t.dtype) + " tensor '" + t.file_name + "' has a row length (" + std::to_string(cols) +
                                     ") not divisible by its block of " + std::to_string(block));
    int64_t numel;
    uint64_t nbytes;
    if (!tensor_size(t.dtype, t.shape, &numel, &nbytes))
      fail(code::kFormatCorrupt, path + ": tensor '" + t.file_name + "' has an implausible size (" + t.describe() + ")");
    t.nbytes = nbytes;
    if (in.offset > f.size() - data_start || t.nbytes > f.size() - data_start - in.offset)
      fail(code::kFormatCorrupt, path + ": tensor '" + t.file_name + "' data lies outside the file (truncated?)");
    // GGUF requires aligned offsets; the backends read elements in place, so they must be aligned.
    if (in.offset % alignment != 0 || (data_start + in.offset) % dtype_align(t.dtype) != 0)
      fail(code::kFormatCorrupt, path + ": tensor '" + t.file_name + "' data offset " + std::to_string(in.offset) + " is not aligned (general.alignment " +
                                     std::to_string(alignment) + ", " + dtype_name(t.dtype) + " elements)");
    t.data = f.data() + data_start + in.offset;
    if (src->tensors.count(t.name)) fail(code::kFormatCorrupt, path + ": tensor '" + t.file_name + "' appears twice");
    src->tensors[t.name] = t;
  }
  if (lora_alpha) return src;
  const TensorView* emb = src->find("tok_embeddings");
  c.vocab_size = integer("llama.vocab_size", emb && emb->shape.size() == 2 ? (double)std::min<int64_t>(emb->shape[0], INT32_MAX)
                                              : (src->tokenizer ? (double)src->tokenizer->tokens.size() : 0), false);
  c.tied_output = src->find("output") == nullptr;
  return src;
}

}  // namespace

std::unique_ptr<ModelSource> open_gguf(const std::string& path) { return open_gguf_impl(path, nullptr); }

std::unique_ptr<ModelSource> open_gguf_lora(const std::string& path, float* alpha) { return open_gguf_impl(path, alpha); }

}  // namespace l2
