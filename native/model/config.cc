#include "config.h"

#include <cmath>

#include "../common/error.h"

namespace l2 {

void ModelConfig::validate(const std::string& source) const {
  auto bad = [&](const std::string& field, long long v, const std::string& why) {
    fail(code::kConfig, source + ": " + field + " = " + std::to_string(v) + " " + why);
  };
  auto positive = [&](const char* field, long long v, long long max) {
    if (v <= 0 || v > max) bad(field, v, "is out of range (1.." + std::to_string(max) + ")");
  };
  positive("dim", dim, 1 << 16);
  positive("n_layers", n_layers, 1024);
  positive("n_heads", n_heads, 1024);
  positive("n_kv_heads", n_kv_heads, 1024);
  positive("head_dim", head_dim, 1024);
  positive("ffn_dim", ffn_dim, 1 << 20);
  positive("vocab_size", vocab_size, 1 << 22);
  positive("max_seq_len", max_seq_len, 1 << 22);
  if (n_heads % n_kv_heads != 0) bad("n_kv_heads", n_kv_heads, "does not divide n_heads = " + std::to_string(n_heads));
  if (head_dim % 2 != 0) bad("head_dim", head_dim, "must be even for rotary embeddings");
  if (!(rms_eps > 0.f && rms_eps < 1.f)) fail(code::kConfig, source + ": rms_norm_eps = " + std::to_string(rms_eps) + " is out of range");
  if (!(rope_theta > 1.f && rope_theta < 1e9f)) fail(code::kConfig, source + ": rope_theta = " + std::to_string(rope_theta) + " is out of range");
  const RopeScalingConfig& rs = rope_scaling;
  if (rs.type != RopeScaling::None) {
    auto real = [&](const char* field, float v, float lo, float hi) {
      if (!(v >= lo && v <= hi))
        fail(code::kConfig, source + ": rope scaling " + field + " = " + std::to_string(v) + " is out of range (" +
                                std::to_string(lo) + ".." + std::to_string(hi) + ")");
    };
    real("factor", rs.factor, rs.type == RopeScaling::Yarn ? 1.f : 1e-3f, 1024.f);
    if (rs.original_ctx < 0 || rs.original_ctx > (1 << 22)) bad("rope scaling original context", rs.original_ctx, "is out of range");
    if (rs.type == RopeScaling::Yarn) {
      real("beta_fast", rs.beta_fast, 1e-3f, 1e4f);
      real("beta_slow", rs.beta_slow, 1e-3f, rs.beta_fast);
    }
    if (rs.mscale != 0.f) real("attention factor", rs.mscale, 1e-3f, 100.f);
  }
}

float yarn_mscale(float factor) { return factor <= 1.f ? 1.f : 0.1f * logf(factor) + 1.f; }

bool parse_rope_scaling(const std::string& name, RopeScaling* out) {
  if (name == "none" || name == "default") *out = RopeScaling::None;
  else if (name == "linear") *out = RopeScaling::Linear;
  else if (name == "yarn") *out = RopeScaling::Yarn;
  else return false;
  return true;
}

const char* rope_scaling_name(RopeScaling t) {
  switch (t) {
    case RopeScaling::Linear: return "linear";
    case RopeScaling::Yarn: return "yarn";
    default: return "none";
  }
}

}  // namespace l2
