#include "loader/common/json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace weightd {

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

void Json::Append(Json value) {
  if (type_ == Type::kNull) type_ = Type::kArray;
  array_.push_back(std::move(value));
}

void Json::Set(absl::string_view key, Json value) {
  if (type_ == Type::kNull) type_ = Type::kObject;
  for (auto& kv : object_) {
    if (kv.first == key) {
      kv.second = std::move(value);
      return;
    }
  }
  object_.emplace_back(std::string(key), std::move(value));
}

const Json* Json::Find(absl::string_view key) const {
  for (const auto& kv : object_) {
    if (kv.first == key) return &kv.second;
  }
  return nullptr;
}

size_t Json::size() const {
  if (type_ == Type::kArray) return array_.size();
  if (type_ == Type::kObject) return object_.size();
  return 0;
}

bool Json::operator==(const Json& o) const {
  if (is_number() && o.is_number()) {
    if (is_int() && o.is_int()) return int_ == o.int_;
    return double_value() == o.double_value();
  }
  if (type_ != o.type_) return false;
  switch (type_) {
    case Type::kNull:
      return true;
    case Type::kBool:
      return bool_ == o.bool_;
    case Type::kString:
      return string_ == o.string_;
    case Type::kArray:
      return array_ == o.array_;
    case Type::kObject:
      return object_ == o.object_;
    default:
      return false;
  }
}

void AppendJsonString(absl::string_view s, std::string* out) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      default:
        if (c < 0x20) {
          absl::StrAppendFormat(out, "\\u%04x", c);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

namespace {

void AppendDouble(double v, std::string* out) {
  if (!std::isfinite(v)) {
    // JSON has no NaN/Infinity; emit null like many serializers.
    out->append("null");
    return;
  }
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (strtod(buf, nullptr) == v) break;
  }
  out->append(buf);
  // Keep it recognizably a double.
  if (strpbrk(buf, ".eEn") == nullptr) out->append(".0");
}

void Newline(std::string* out, int indent) {
  out->push_back('\n');
  out->append(indent * 2, ' ');
}

}  // namespace

void Json::DumpTo(std::string* out, bool pretty, int indent) const {
  switch (type_) {
    case Type::kNull:
      out->append("null");
      break;
    case Type::kBool:
      out->append(bool_ ? "true" : "false");
      break;
    case Type::kInt:
      absl::StrAppend(out, int_);
      break;
    case Type::kDouble:
      AppendDouble(double_, out);
      break;
    case Type::kString:
      AppendJsonString(string_, out);
      break;
    case Type::kArray: {
      // Pretty output keeps arrays of scalars on one line: [2, 3].
      bool flat = true;
      for (const Json& v : array_) {
        if (v.is_array() || v.is_object()) flat = false;
      }
      out->push_back('[');
      bool first = true;
      for (const Json& v : array_) {
        if (!first) out->append(pretty && flat ? ", " : ",");
        first = false;
        if (pretty && !flat) Newline(out, indent + 1);
        v.DumpTo(out, pretty, indent + 1);
      }
      if (pretty && !flat && !array_.empty()) Newline(out, indent);
      out->push_back(']');
      break;
    }
    case Type::kObject: {
      out->push_back('{');
      bool first = true;
      for (const auto& kv : object_) {
        if (!first) out->push_back(',');
        first = false;
        if (pretty) Newline(out, indent + 1);
        AppendJsonString(kv.first, out);
        out->append(pretty ? ": " : ":");
        kv.second.DumpTo(out, pretty, indent + 1);
      }
      if (pretty && !object_.empty()) Newline(out, indent);
      out->push_back('}');
      break;
    }
  }
}

std::string Json::Dump(bool pretty) const {
  std::string out;
  DumpTo(&out, pretty, 0);
  return out;
}

namespace {

class Parser {
 public:
  Parser(absl::string_view text, const JsonParseOptions& options)
      : text_(text), options_(options) {}

  absl::StatusOr<Json> Parse() {
    if (text_.size() > options_.max_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("JSON text is ", text_.size(), " bytes, limit is ",
                       options_.max_size));
    }
    Json value;
    SkipSpace();
    absl::Status s = ParseValue(&value, 0);
    if (!s.ok()) return s;
    SkipSpace();
    if (pos_ != text_.size())
      return Error("trailing characters after JSON value");
    return value;
  }

 private:
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid JSON at byte ", pos_, ": ", what));
  }

  void SkipSpace() {
    while (pos_ < text_.size()) {
      char c = text_[pos_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        ++pos_;
      } else {
        break;
      }
    }
  }

  bool Consume(absl::string_view word) {
    if (text_.substr(pos_, word.size()) == word) {
      pos_ += word.size();
      return true;
    }
    return false;
  }

  absl::Status ParseValue(Json* out, int depth) {
    if (depth > options_.max_depth) {
      return Error(absl::StrCat("nesting deeper than ", options_.max_depth));
    }
    if (pos_ >= text_.size()) return Error("unexpected end of input");
    char c = text_[pos_];
    switch (c) {
      case '{':
        return ParseObject(out, depth);
      case '[':
        return ParseArray(out, depth);
      case '"': {
        std::string s;
        absl::Status st = ParseString(&s);
        if (!st.ok()) return st;
        *out = Json(std::move(s));
        return absl::OkStatus();
      }
      case 't':
        if (Consume("true")) {
          *out = Json(true);
          return absl::OkStatus();
        }
        return Error("invalid literal");
      case 'f':
        if (Consume("false")) {
          *out = Json(false);
          return absl::OkStatus();
        }
        return Error("invalid literal");
      case 'n':
        if (Consume("null")) {
          *out = Json();
          return absl::OkStatus();
        }
        return Error("invalid literal");
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber(out);
        return Error(absl::StrFormat("unexpected character 0x%02x",
                                     static_cast<unsigned char>(c)));
    }
  }

  absl::Status ParseNumber(Json* out) {
    size_t start = pos_;
    bool is_int = true;
    if (text_[pos_] == '-') ++pos_;
    if (pos_ >= text_.size()) return Error("truncated number");
    if (text_[pos_] == '0') {
      ++pos_;
    } else if (text_[pos_] >= '1' && text_[pos_] <= '9') {
      while (pos_ < text_.size() &&
             isdigit(static_cast<unsigned char>(text_[pos_])))
        ++pos_;
    } else {
      return Error("invalid number");
    }
    if (pos_ < text_.size() && text_[pos_] == '.') {
      is_int = false;
      ++pos_;
      size_t digits = pos_;
      while (pos_ < text_.size() &&
             isdigit(static_cast<unsigned char>(text_[pos_])))
        ++pos_;
      if (pos_ == digits) return Error("digit expected after '.'");
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      is_int = false;
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-'))
        ++pos_;
      size_t digits = pos_;
      while (pos_ < text_.size() &&
             isdigit(static_cast<unsigned char>(text_[pos_])))
        ++pos_;
      if (pos_ == digits) return Error("digit expected in exponent");
    }
    std::string num(text_.substr(start, pos_ - start));
    if (is_int) {
      errno = 0;
      char* end = nullptr;
      long long v = strtoll(num.c_str(), &end, 10);
      if (errno == 0 && end == num.c_str() + num.size()) {
        *out = Json(static_cast<int64_t>(v));
        return absl::OkStatus();
      }
    }
    char* end = nullptr;
    double d = strtod(num.c_str(), &end);
    *out = Json(d);
    return absl::OkStatus();
  }

  absl::Status ParseHex4(uint32_t* v) {
    if (text_.size() - pos_ < 4) return Error("truncated \\u escape");
    *v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = text_[pos_++];
      *v <<= 4;
      if (c >= '0' && c <= '9') {
        *v |= c - '0';
      } else if (c >= 'a' && c <= 'f') {
        *v |= c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        *v |= c - 'A' + 10;
      } else {
        return Error("invalid \\u escape");
      }
    }
    return absl::OkStatus();
  }

  // Validates one UTF-8 sequence starting at pos_ and copies it.
  absl::Status CopyUtf8(std::string* out) {
    unsigned char c = static_cast<unsigned char>(text_[pos_]);
    int len;
    uint32_t min;
    if (c < 0x80) {
      out->push_back(static_cast<char>(c));
      ++pos_;
      return absl::OkStatus();
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      min = 0x10000;
    } else {
      return Error("invalid UTF-8 in string");
    }
    if (text_.size() - pos_ < static_cast<size_t>(len)) {
      return Error("truncated UTF-8 in string");
    }
    uint32_t cp = c & (0x7F >> len);
    for (int i = 1; i < len; ++i) {
      unsigned char cc = static_cast<unsigned char>(text_[pos_ + i]);
      if ((cc & 0xC0) != 0x80) return Error("invalid UTF-8 in string");
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return Error("invalid UTF-8 in string");
    }
    out->append(text_.data() + pos_, len);
    pos_ += len;
    return absl::OkStatus();
  }

  absl::Status ParseString(std::string* out) {
    ++pos_;  // opening quote
    while (true) {
      if (pos_ >= text_.size()) return Error("unterminated string");
      char c = text_[pos_];
      if (c == '"') {
        ++pos_;
        return absl::OkStatus();
      }
      if (static_cast<unsigned char>(c) < 0x20) {
        return Error("control character in string");
      }
      if (c != '\\') {
        absl::Status s = CopyUtf8(out);
        if (!s.ok()) return s;
        continue;
      }
      ++pos_;
      if (pos_ >= text_.size()) return Error("unterminated string");
      char e = text_[pos_++];
      switch (e) {
        case '"':
          out->push_back('"');
          break;
        case '\\':
          out->push_back('\\');
          break;
        case '/':
          out->push_back('/');
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          uint32_t cp = 0;
          absl::Status s = ParseHex4(&cp);
          if (!s.ok()) return s;
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (!Consume("\\u")) return Error("unpaired surrogate");
            uint32_t lo = 0;
            s = ParseHex4(&lo);
            if (!s.ok()) return s;
            if (lo < 0xDC00 || lo > 0xDFFF) return Error("unpaired surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return Error("unpaired surrogate");
          }
          AppendUtf8(cp, out);
          break;
        }
        default:
          --pos_;
          return Error("invalid escape");
      }
    }
  }

  absl::Status ParseArray(Json* out, int depth) {
    ++pos_;
    *out = Json::MakeArray();
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == ']') {
      ++pos_;
      return absl::OkStatus();
    }
    while (true) {
      SkipSpace();
      Json v;
      absl::Status s = ParseValue(&v, depth + 1);
      if (!s.ok()) return s;
      out->array().push_back(std::move(v));
      SkipSpace();
      if (pos_ >= text_.size()) return Error("unterminated array");
      if (text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (text_[pos_] == ']') {
        ++pos_;
        return absl::OkStatus();
      }
      return Error("expected ',' or ']'");
    }
  }

  absl::Status ParseObject(Json* out, int depth) {
    ++pos_;
    *out = Json::MakeObject();
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == '}') {
      ++pos_;
      return absl::OkStatus();
    }
    absl::flat_hash_set<std::string> seen;
    while (true) {
      SkipSpace();
      if (pos_ >= text_.size() || text_[pos_] != '"') {
        return Error("expected string key");
      }
      size_t key_pos = pos_;
      std::string key;
      absl::Status s = ParseString(&key);
      if (!s.ok()) return s;
      SkipSpace();
      if (pos_ >= text_.size() || text_[pos_] != ':')
        return Error("expected ':'");
      ++pos_;
      SkipSpace();
      Json v;
      s = ParseValue(&v, depth + 1);
      if (!s.ok()) return s;
      if (!options_.allow_duplicate_keys && !seen.insert(key).second) {
        pos_ = key_pos;
        return Error(absl::StrCat("duplicate key \"", key, "\""));
      }
      out->object().emplace_back(std::move(key), std::move(v));
      SkipSpace();
      if (pos_ >= text_.size()) return Error("unterminated object");
      if (text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (text_[pos_] == '}') {
        ++pos_;
        return absl::OkStatus();
      }
      return Error("expected ',' or '}'");
    }
  }

  absl::string_view text_;
  const JsonParseOptions& options_;
  size_t pos_ = 0;
};

}  // namespace

absl::StatusOr<Json> ParseJson(absl::string_view text,
                               const JsonParseOptions& options) {
  return Parser(text, options).Parse();
}

}  // namespace weightd
