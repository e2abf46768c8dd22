// A small JSON value (null/bool/int64/double/string/array/object with ordered
// keys), a strict parser with limits and a serializer.
//
// The parser is nlohmann-json 3.11's lexer and parser (sax_parse) driving a
// handler that builds Json directly and adds the depth bound, duplicate-key
// refusal and byte offsets. The serializer stays hand-written: nlohmann's dump
// spells doubles and pretty arrays differently from what weightd prints, and
// refuses strings that are not UTF-8 where Dump passes bytes through.
#ifndef WEIGHTD_LOADER_COMMON_JSON_H_
#define WEIGHTD_LOADER_COMMON_JSON_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weightd {

// Appends code point `cp` (at most 0x10FFFF) encoded as UTF-8.
void AppendUtf8(uint32_t cp, std::string* out);

class Json {
 public:
  enum class Type { kNull, kBool, kInt, kDouble, kString, kArray, kObject };
  using Array = std::vector<Json>;
  // Keys keep insertion order; the parser refuses duplicate keys.
  using Object = std::vector<std::pair<std::string, Json>>;

  Json() = default;
  Json(std::nullptr_t) {}
  Json(bool b) : type_(Type::kBool), bool_(b) {}
  Json(int v) : type_(Type::kInt), int_(v) {}
  Json(long v) : type_(Type::kInt), int_(v) {}       // NOLINT
  Json(long long v) : type_(Type::kInt), int_(v) {}  // NOLINT
  Json(unsigned v) : type_(Type::kInt), int_(v) {}   // NOLINT
  Json(unsigned long v)                              // NOLINT
      : type_(Type::kInt), int_(static_cast<int64_t>(v)) {}
  Json(unsigned long long v)  // NOLINT
      : type_(Type::kInt), int_(static_cast<int64_t>(v)) {}
  Json(double v) : type_(Type::kDouble), double_(v) {}
  Json(const char* s) : type_(Type::kString), string_(s) {}
  Json(std::string s) : type_(Type::kString), string_(std::move(s)) {}
  Json(absl::string_view s) : type_(Type::kString), string_(s) {}

  static Json MakeArray() {
    Json j;
    j.type_ = Type::kArray;
    return j;
  }
  static Json MakeObject() {
    Json j;
    j.type_ = Type::kObject;
    return j;
  }

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_int() const { return type_ == Type::kInt; }
  bool is_double() const { return type_ == Type::kDouble; }
  bool is_number() const { return is_int() || is_double(); }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }

  bool bool_value() const { return bool_; }
  int64_t int_value() const { return int_; }
  double double_value() const {
    return type_ == Type::kInt ? static_cast<double>(int_) : double_;
  }
  const std::string& string_value() const { return string_; }
  const Array& array() const { return array_; }
  Array& array() { return array_; }
  const Object& object() const { return object_; }
  Object& object() { return object_; }

  // Arrays: appends. Objects: sets (replacing an existing key).
  void Append(Json value);
  void Set(absl::string_view key, Json value);
  // Objects: the value for `key`, or nullptr.
  const Json* Find(absl::string_view key) const;
  size_t size() const;

  // Compact ("{"a":1}") or pretty (two-space indent) text.
  std::string Dump(bool pretty = false) const;

  bool operator==(const Json& other) const;
  bool operator!=(const Json& other) const { return !(*this == other); }

 private:
  void DumpTo(std::string* out, bool pretty, int indent) const;

  Type type_ = Type::kNull;
  bool bool_ = false;
  int64_t int_ = 0;
  double double_ = 0;
  std::string string_;
  Array array_;
  Object object_;
};

struct JsonParseOptions {
  int max_depth = 64;
  size_t max_size = 100 << 20;  // bytes of input
  bool allow_duplicate_keys = false;
};

// Strict RFC 8259: one value, optional surrounding whitespace, no comments, no
// trailing commas, no byte order mark, no raw NUL, valid UTF-8 in strings,
// surrogate pairs checked. Integers that fit int64 become kInt, other numbers
// kDouble (rounded to nearest); numbers beyond double's range (1e400) are
// refused. Depth counts every value: the top one is at 0, and one nested in
// more than max_depth arrays/objects is refused. Errors (InvalidArgument)
// read "invalid JSON at byte N: reason", except the size check's.
absl::StatusOr<Json> ParseJson(absl::string_view text,
                               const JsonParseOptions& options = {});

// Appends `s` as a JSON string literal (quoted, escaped) to `out`.
void AppendJsonString(absl::string_view s, std::string* out);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_COMMON_JSON_H_
