// PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors), merged at load. Tensor names as
// PEFT saves them: base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight ([r, in]) and lora_B
// ([out, r]), rows in Hugging Face's order; for a base in the interleaved rotary layout (GGUF, llama2.c)
// the q/k deltas' rows are permuted as llama.cpp's converter permutes the base's.
#include "lora.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <memory>

#include "../common/error.h"
#include "../common/json.h"
#include "../common/thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace l2 {

namespace {

// The projections' names in Hugging Face checkpoints (ModelInfo.lora's modules) by canonical name.
struct Module {
  const char* canon;  // "wq"
  const char* hf;     // "q_proj"
};
constexpr Module kModules[] = {{"wq", "q_proj"}, {"wk", "k_proj"}, {"wv", "v_proj"}, {"wo", "o_proj"},
                               {"w1", "gate_proj"}, {"w2", "down_proj"}, {"w3", "up_proj"}};

Matrix& layer_matrix(LayerWeights& l, const std::string& canon) {
  if (canon == "wq") return l.wq;
  if (canon == "wk") return l.wk;
  if (canon == "wv") return l.wv;
  if (canon == "wo") return l.wo;
  if (canon == "w1") return l.w1;
  if (canon == "w2") return l.w2;
  return l.w3;
}

// "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight" (or ...lora_A.default.weight)
// -> "layers.3.wq.A"; "" when the name is not a LoRA matrix of a layer's projection.
std::string lora_name(const std::string& n) {
  const std::string peft = "base_model.model.";
  std::string s = n.compare(0, peft.size(), peft) == 0 ? n.substr(peft.size()) : n;
  if (s.compare(0, 6, "model.") != 0) s = "model." + s;
  for (const char* ab : {"A", "B"}) {
    for (const std::string& suffix : {std::string(".lora_") + ab + ".weight", std::string(".lora_") + ab + ".default.weight"}) {
      if (s.size() <= suffix.size() || s.compare(s.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
      const std::string canon = hf_canonical_name(s.substr(0, s.size() - suffix.size()) + ".weight");
      return is_layer_matrix(canon) ? canon + "." + ab : "";
    }
  }
  return "";
}

// row[0..n) += sum_k s[k] A[k][0..n) (A row-major with `lda`): the row stays in registers across the rank's
// rows, 32 columns at a time. An AVX2 + FMA version where the CPU has it (2-4x the portable loop on a 7B
// layer; its fused rounding differs from the portable loop's in the last bit of the fp32 sum).
void add_delta_portable(float* row, const float* A, int64_t lda, const float* s, int r, int64_t n) {
  for (int64_t x0 = 0; x0 < n; x0 += 32) {
    const int64_t m = std::min<int64_t>(32, n - x0);
    float acc[32];
    for (int64_t j = 0; j < m; ++j) acc[j] = row[x0 + j];
    for (int k = 0; k < r; ++k) {
      const float* a = A + (size_t)k * lda + x0;
      for (int64_t j = 0; j < m; ++j) acc[j] += s[k] * a[j];
    }
    for (int64_t j = 0; j < m; ++j) row[x0 + j] = acc[j];
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void add_delta_avx2(float* row, const float* A, int64_t lda, const float* s, int r, int64_t n) {
  int64_t x0 = 0;
  for (; x0 + 32 <= n; x0 += 32) {
    __m256 a0 = _mm256_loadu_ps(row + x0), a1 = _mm256_loadu_ps(row + x0 + 8), a2 = _mm256_loadu_ps(row + x0 + 16), a3 = _mm256_loadu_ps(row + x0 + 24);
    for (int k = 0; k < r; ++k) {
      const float* a = A + (size_t)k * lda + x0;
      const __m256 sk = _mm256_set1_ps(s[k]);
      a0 = _mm256_fmadd_ps(sk, _mm256_loadu_ps(a), a0);
      a1 = _mm256_fmadd_ps(sk, _mm256_loadu_ps(a + 8), a1);
      a2 = _mm256_fmadd_ps(sk, _mm256_loadu_ps(a + 16), a2);
      a3 = _mm256_fmadd_ps(sk, _mm256_loadu_ps(a + 24), a3);
    }
    _mm256_storeu_ps(row + x0, a0), _mm256_storeu_ps(row + x0 + 8, a1), _mm256_storeu_ps(row + x0 + 16, a2), _mm256_storeu_ps(row + x0 + 24, a3);
  }
  if (x0 < n) add_delta_portable(row + x0, A + x0, lda, s, r, n - x0);
}
#endif

void add_delta(float* row, const float* A, int64_t lda, const float* s, int r, int64_t n) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return add_delta_avx2(row, A, lda, s, r, n);
#endif
  add_delta_portable(row, A, lda, s, r, n);
}

// The largest magnitude a merged weight may have in `t`: more would round to Inf (F16, BF16) or, in Q8_0, to an
// Inf block scale (amax / 127 stored as F16).
float max_representable(DType t) {
  switch (t) {
    case DType::F16: return 65504.f;
    case DType::BF16: return 3.38e38f;
    case DType::Q8_0: return 65504.f * 127.f;
    default: return std::numeric_limits<float>::max();
  }
}

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> v((size_t)t.numel());
  convert_row(t.dtype, t.data, DType::F32, reinterpret_cast<uint8_t*>(v.data()), t.numel());
  for (float x : v)
    if (!std::isfinite(x)) fail(code::kFormatCorrupt, t.describe() + " holds non-finite values");
  return v;
}

// An adapter's tensors (layers.N.<matrix>.A / .B), rank, alpha, B A's factor at scale 1, and the row order of
// its B matrices (PEFT: Hugging Face's; llama.cpp's GGUF adapters: the interleaved order of its GGUF bases).
struct Adapter {
  std::unique_ptr<ModelSource> src;
  int rank = 0;
  float alpha = 0.f;
  float scale = 1.f;
  bool interleaved = false;
};

Adapter open_peft(const std::string& path) {
  std::string dir = path;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::string file = dir + "/adapter_model.safetensors";
  if (dir.size() > 12 && dir.compare(dir.size() - 12, 12, ".safetensors") == 0) {
    file = dir;
    const size_t slash = dir.find_last_of('/');
    dir = slash == std::string::npos ? "." : dir.substr(0, slash);
  }
  const std::string cfg_path = dir + "/adapter_config.json";
  if (!file_exists(cfg_path)) fail(code::kFileNotFound, path + ": no adapter_config.json (expected a PEFT LoRA adapter directory, or a llama.cpp .gguf adapter)");
  if (!file_exists(file)) {
    fail(code::kFileNotFound, file_exists(dir + "/adapter_model.bin")
                                  ? dir + ": adapter_model.bin (a PyTorch pickle) is not supported; save the adapter with safe_serialization (adapter_model.safetensors)"
                                  : dir + ": no adapter_model.safetensors");
  }
  // The adapter's settings; anything that changes the arithmetic beyond W + s B A is refused by name.
  const Json cfg = Json::parse(read_text_file(cfg_path, 1 << 20), cfg_path);
  if (!cfg.is_object()) fail(code::kConfig, cfg_path + ": expected a JSON object");
  if (const Json* t = cfg.get("peft_type"); t && !(t->is_string() && t->str == "LORA"))
    fail(code::kFormatUnsupported, cfg_path + ": peft_type " + (t->is_string() ? "'" + t->str + "'" : std::string("?")) + " is not supported (only LORA)");
  auto flag = [&](const char* k) {
    const Json* v = cfg.get(k);
    return v && v->type == Json::Type::Bool && v->b;
  };
  for (const char* k : {"use_dora", "fan_in_fan_out"})
    if (flag(k)) fail(code::kFormatUnsupported, cfg_path + ": '" + k + "': true is not supported");
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (const Json* v = cfg.get(k); v && v->is_object() && !v->obj.empty())
      fail(code::kFormatUnsupported, cfg_path + ": per-module '" + k + "' is not supported");
  const Json* rj = cfg.get("r");
  if (!rj || !rj->is_number() || !(rj->num >= 1 && rj->num <= 65536) || rj->num != std::floor(rj->num))
    fail(code::kConfig, cfg_path + ": 'r' must be a whole number in 1..65536");
  Adapter ad;
  ad.rank = (int)rj->num;
  const Json* aj = cfg.get("lora_alpha");
  if (aj && !(aj->is_number() && std::isfinite(aj->num) && std::fabs(aj->num) <= 1e6)) fail(code::kConfig, cfg_path + ": 'lora_alpha' must be a number");
  ad.alpha = aj ? (float)aj->num : 8.f;  // PEFT's default
  ad.scale = flag("use_rslora") ? ad.alpha / std::sqrt((float)ad.rank) : ad.alpha / (float)ad.rank;

  ad.src = std::make_unique<ModelSource>();
  ad.src->format = "lora";
  ad.src->path = file;
  std::vector<std::string> unknown;
  read_safetensors(*ad.src, file, [&](const std::string& n) {
    std::string canon = lora_name(n);
    if (canon.empty()) unknown.push_back(n);
    return canon;
  });
  if (!unknown.empty())
    fail(code::kFormatUnsupported, file + ": tensor '" + unknown.front() +
                                       "' is not a LoRA matrix of an attention or MLP projection (adapters of embeddings, the classifier or "
                                       "modules_to_save are not supported)");
  if (ad.src->tensors.empty()) fail(code::kFormatCorrupt, file + ": no LoRA tensors");
  return ad;
}

// llama.cpp's adapter files (convert_lora_to_gguf.py): the rank is the tensors' and alpha / rank scales B A
// (alpha 0: 1, as llama.cpp).
Adapter open_gguf_adapter(const std::string& path) {
  Adapter ad;
  ad.src = open_gguf_lora(path, &ad.alpha);
  if (ad.src->tensors.empty()) fail(code::kFormatCorrupt, path + ": no LoRA tensors");
  const TensorView& a = ad.src->tensors.begin()->second;
  if (a.shape.size() != 2 || a.shape[0] < 1 || a.shape[0] > 65536) fail(code::kTensorShape, path + ": " + a.file_name + " is not a LoRA matrix");
  ad.rank = (int)(a.name.back() == 'A' ? a.shape[0] : a.shape[1]);
  if (!(std::isfinite(ad.alpha) && std::fabs(ad.alpha) <= 1e6)) fail(code::kConfig, path + ": adapter.lora.alpha is out of range");
  ad.scale = ad.alpha != 0.f ? ad.alpha / (float)ad.rank : 1.f;
  ad.interleaved = true;
  return ad;
}

}  // namespace

std::vector<LoraInfo> apply_lora(LlamaWeights& w, const ModelConfig& c, const std::vector<LoraSpec>& adapters, int threads, const OwnedAlloc& alloc) {
  std::vector<LoraInfo> infos;
  if (adapters.empty()) return infos;
  ThreadPool pool(default_threads(threads));
  for (const LoraSpec& spec : adapters) {
    Adapter ad = spec.path.size() > 5 && spec.path.compare(spec.path.size() - 5, 5, ".gguf") == 0 ? open_gguf_adapter(spec.path) : open_peft(spec.path);
    const ModelSource& src = *ad.src;
    const std::string& file = src.path;
    const int r = ad.rank;
    const float alpha = ad.alpha;
    const float scale = spec.scale * ad.scale;

    LoraInfo info;
    info.path = spec.path;
    info.rank = r;
    info.alpha = alpha;
    info.scale = scale;
    std::set<std::string> modules;  // "q_proj", ...
    for (const auto& [name, t] : src.tensors)
      if (name.back() == 'B' && !src.find(name.substr(0, name.size() - 1) + "A")) fail(code::kTensorMissing, file + ": " + t.file_name + " has no lora_A");
    for (const auto& [name, a] : src.tensors) {
      if (name.back() != 'A') continue;
      const std::string stem = name.substr(0, name.size() - 2);  // "layers.3.wq"
      const TensorView* b = src.find(stem + ".B");
      if (!b) fail(code::kTensorMissing, file + ": " + a.file_name + " has no lora_B");
      const size_t d1 = stem.find('.'), d2 = stem.find('.', d1 + 1);
      const int layer = std::stoi(stem.substr(d1 + 1, d2 - d1 - 1));
      const std::string canon = stem.substr(d2 + 1);
      if (layer >= c.n_layers)
        fail(code::kTensorShape, file + ": " + a.file_name + " is for layer " + std::to_string(layer) + " but the model has " + std::to_string(c.n_layers));
      Matrix& m = layer_matrix(w.layers[(size_t)layer], canon);
      if (a.shape.size() != 2 || b->shape.size() != 2 || a.shape[0] != r || b->shape[1] != r || a.shape[1] != m.cols || b->shape[0] != m.rows) {
        auto dims = [](const TensorView& t) {
          std::string s;
          for (int64_t d : t.shape) s += (s.empty() ? "" : ", ") + std::to_string(d);
          return "[" + s + "]";
        };
        fail(code::kTensorShape, file + ": " + a.file_name + " " + dims(a) + " / lora_B " + dims(*b) + " do not fit " + m.name + " [" +
                                     std::to_string(m.rows) + ", " + std::to_string(m.cols) + "] at rank " + std::to_string(r));
      }
      const std::vector<float> A = to_f32(a), B = to_f32(*b);
      if (scale == 0.f) continue;  // validated, nothing to merge (and the base's bits, -0 included, stay)
      // The adapter's row for the base's row o: q/k rows differ where the two rotary layouts differ (config.h).
      const bool base_interleaved = c.rope_layout == RopeLayout::Interleaved;
      const bool permute = base_interleaved != ad.interleaved && (canon == "wq" || canon == "wk");
      auto src_row = [&](int64_t o) -> int64_t {
        if (!permute) return o;
        return base_interleaved ? halves_row_of_interleaved(o, c.head_dim) : interleaved_row_of_halves(o, c.head_dim);
      };
      const DType from = m.dtype;
      const DType to = from == DType::F32 || from == DType::F16 || from == DType::BF16 || from == DType::Q8_0 ? from
                       : m.cols % kQ8Block == 0                                                                ? DType::Q8_0
                                                                                                               : DType::F16;
      const size_t stride = row_bytes(to, m.cols);
      LlamaWeights::Owned out = alloc(stride * (size_t)m.rows);
      uint8_t* dst = out.bytes.get();
      const Matrix base = m;
      // Finite A and B can still give weights the merged type cannot hold (an adapter with huge values):
      // refused here, naming the adapter, rather than found as NaN logits of the base model at generation.
      const float limit = max_representable(to);
      std::atomic<int64_t> bad_row{m.rows};
      pool.parallel_for(m.rows, 16, [&](int64_t lo, int64_t hi) {
        std::vector<float> row((size_t)base.cols), s((size_t)r);
        for (int64_t o = lo; o < hi; ++o) {
          dequantize_row(base, o, row.data());
          const float* bo = &B[(size_t)src_row(o) * r];
          for (int k = 0; k < r; ++k) s[(size_t)k] = scale * bo[k];
          add_delta(row.data(), A.data(), base.cols, s.data(), r, base.cols);
          bool fits = true;
          for (float x : row) fits &= std::fabs(x) <= limit;  // false for NaN too
          if (!fits) {
            int64_t cur = bad_row.load();
            while (o < cur && !bad_row.compare_exchange_weak(cur, o)) {
            }
          }
          convert_row(DType::F32, reinterpret_cast<const uint8_t*>(row.data()), to, dst + stride * (size_t)o, base.cols);
        }
      });
      if (const int64_t o = bad_row.load(); o < m.rows)
        fail(code::kFormatCorrupt, file + ": merging " + a.file_name + " (scale " + std::to_string(scale) + ") into " + m.name +
                                       " gives weights that " + dtype_name(to) + " cannot hold (row " + std::to_string(o) +
                                       "): the adapter's values are too large");
      // A matrix merged by an earlier adapter: its buffer is replaced, not kept beside the new one.
      for (LlamaWeights::Owned& o : w.owned)
        if (o.holds(base.data)) o.bytes.reset(), o.size = 0;
      m.dtype = to;
      m.data = dst;
      w.owned.push_back(std::move(out));
      for (const Module& mod : kModules)
        if (canon == mod.canon) modules.insert(mod.hf);
      ++info.matrices;
    }
    info.modules.assign(modules.begin(), modules.end());
    infos.push_back(std::move(info));
  }
  w.owned.erase(std::remove_if(w.owned.begin(), w.owned.end(), [](const LlamaWeights::Owned& o) { return !o.bytes; }), w.owned.end());
  return infos;
}

}  // namespace l2
