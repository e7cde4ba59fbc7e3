// A small JSON reader for model metadata (config.json, safetensors headers, shard indexes).
// Parse errors throw l2::Error(ERR_MODEL_CORRUPT) naming the source.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace l2 {

struct Json {
  enum class Type { Null, Bool, Number, String, Array, Object };
  Type type = Type::Null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<Json> arr;
  std::map<std::string, Json> obj;

  bool is_object() const { return type == Type::Object; }
  bool is_number() const { return type == Type::Number; }
  bool is_string() const { return type == Type::String; }
  bool is_array() const { return type == Type::Array; }
  // Member lookup; nullptr when absent or when this is not an object.
  const Json* get(const std::string& key) const;

  static Json parse(const std::string& text, const std::string& source);
};

}  // namespace l2
