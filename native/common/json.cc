#include "json.h"

#include <cstdlib>
#include <cstring>

#include "error.h"

namespace l2 {

const Json* Json::get(const std::string& key) const {
  if (type != Type::Object) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &it->second;
}

namespace {

struct Parser {
  const char* begin;
  const char* p;
  const char* end;
  const std::string& source;
  int depth = 0;

  [[noreturn]] void error(const std::string& what) {
    fail(code::kFormatCorrupt, "invalid JSON in " + source + ": " + what + " at offset " + std::to_string(p - begin));
  }
  void ws() {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
  }
  bool lit(const char* s) {
    size_t n = std::strlen(s);
    if ((size_t)(end - p) >= n && std::memcmp(p, s, n) == 0) {
      p += n;
      return true;
    }
    return false;
  }
  static void put_utf8(std::string& out, uint32_t c) {
    if (c < 0x80) {
      out += (char)c;
    } else if (c < 0x800) {
      out += (char)(0xc0 | (c >> 6));
      out += (char)(0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
      out += (char)(0xe0 | (c >> 12));
      out += (char)(0x80 | ((c >> 6) & 0x3f));
      out += (char)(0x80 | (c & 0x3f));
    } else {
      out += (char)(0xf0 | (c >> 18));
      out += (char)(0x80 | ((c >> 12) & 0x3f));
      out += (char)(0x80 | ((c >> 6) & 0x3f));
      out += (char)(0x80 | (c & 0x3f));
    }
  }
  uint32_t hex4() {
    if (end - p < 4) error("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = *p++;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
      else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
      else error("bad \\u escape");
    }
    return v;
  }
  std::string string() {
    if (p >= end || *p != '"') error("expected string");
    ++p;
    std::string out;
    while (p < end && *p != '"') {
      char c = *p++;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (p >= end) error("truncated escape");
      char e = *p++;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t c1 = hex4();
          if (c1 >= 0xd800 && c1 < 0xdc00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
            const char* back = p;
            p += 2;
            uint32_t c2 = hex4();
            if (c2 >= 0xdc00 && c2 < 0xe000) c1 = 0x10000 + ((c1 - 0xd800) << 10) + (c2 - 0xdc00);
            else p = back;  // not a pair: the lone surrogate stands alone, the next escape is read on its own
          }
          put_utf8(out, c1);
          break;
        }
        default: error("bad escape");
      }
    }
    if (p >= end) error("unterminated string");
    ++p;
    return out;
  }
  Json value() {
    if (++depth > 64) error("nesting too deep");
    ws();
    if (p >= end) error("unexpected end");
    Json j;
    char c = *p;
    if (c == '{') {
      ++p;
      j.type = Json::Type::Object;
      ws();
      if (p < end && *p == '}') {
        ++p;
      } else {
        for (;;) {
          ws();
          std::string k = string();
          ws();
          if (p >= end || *p != ':') error("expected ':'");
          ++p;
          j.obj[k] = value();
          ws();
          if (p < end && *p == ',') { ++p; continue; }
          if (p < end && *p == '}') { ++p; break; }
          error("expected ',' or '}'");
        }
      }
    } else if (c == '[') {
      ++p;
      j.type = Json::Type::Array;
      ws();
      if (p < end && *p == ']') {
        ++p;
      } else {
        for (;;) {
          j.arr.push_back(value());
          ws();
          if (p < end && *p == ',') { ++p; continue; }
          if (p < end && *p == ']') { ++p; break; }
          error("expected ',' or ']'");
        }
      }
    } else if (c == '"') {
      j.type = Json::Type::String;
      j.str = string();
    } else if (lit("true")) {
      j.type = Json::Type::Bool;
      j.b = true;
    } else if (lit("false")) {
      j.type = Json::Type::Bool;
    } else if (lit("null")) {
      j.type = Json::Type::Null;
    } else if (c == '-' || (c >= '0' && c <= '9') || c == 'N' || c == 'I') {
      // strtod accepts NaN/Infinity, which Python's json writer may emit.
      std::string tok;
      while (p < end && std::strchr("+-0123456789.eEaNINFinfty", *p) && tok.size() < 64) tok += *p++;
      char* e = nullptr;
      j.type = Json::Type::Number;
      j.num = std::strtod(tok.c_str(), &e);
      if (tok.empty() || *e != '\0') error("bad number");
    } else {
      error(std::string("unexpected character '") + c + "'");
    }
    --depth;
    return j;
  }
};

}  // namespace

Json Json::parse(const std::string& text, const std::string& source) {
  Parser ps{text.data(), text.data(), text.data() + text.size(), source};
  Json j = ps.value();
  ps.ws();
  if (ps.p != ps.end) ps.error("trailing characters");
  return j;
}

}  // namespace l2
