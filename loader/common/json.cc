#include "loader/common/json.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

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

// The library's iterator adapter keeps its own copy of the position; this
// iterator keeps it in `*cursor` instead, where the handler can read how far
// the lexer has got and so name byte offsets in the errors it raises itself.
// Copies share the cursor, which suffices for the adapter (it only reads and
// increments one iterator and compares it with the end).
class SharedCursorIterator {
 public:
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;

  explicit SharedCursorIterator(const char** cursor) : cursor_(cursor) {}
  reference operator*() const { return **cursor_; }
  SharedCursorIterator& operator++() {
    ++*cursor_;
    return *this;
  }
  bool operator==(const SharedCursorIterator& other) const {
    return *cursor_ == *other.cursor_;
  }
  bool operator!=(const SharedCursorIterator& other) const {
    return !(*this == other);
  }

 private:
  const char** cursor_;
};

bool IsJsonSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

// At most the first 64 bytes of `key`, cut at a UTF-8 boundary, for messages.
absl::string_view KeyForMessage(absl::string_view key) {
  if (key.size() <= 64) return key;
  size_t n = 64;
  while (n > 0 && (static_cast<unsigned char>(key[n]) & 0xC0) == 0x80) --n;
  return key.substr(0, n);
}

// Builds the Json tree straight from nlohmann's SAX events and adds what the
// library does not check itself: the depth bound and duplicate keys.
class JsonBuilder {
 public:
  using number_integer_t = nlohmann::json::number_integer_t;
  using number_unsigned_t = nlohmann::json::number_unsigned_t;
  using number_float_t = nlohmann::json::number_float_t;
  using string_t = nlohmann::json::string_t;
  using binary_t = nlohmann::json::binary_t;

  JsonBuilder(absl::string_view text, const char* const* cursor,
              const JsonParseOptions& options)
      : text_(text), cursor_(cursor), options_(options) {}

  bool null() { return SetScalar(Json()); }
  bool boolean(bool value) { return SetScalar(Json(value)); }
  bool number_integer(number_integer_t value) {
    return SetNumber(Json(static_cast<int64_t>(value)));
  }
  bool number_unsigned(number_unsigned_t value) {
    // Json holds int64; larger integers become doubles, as strtod would.
    if (value <= static_cast<uint64_t>(INT64_MAX)) {
      return SetNumber(Json(static_cast<int64_t>(value)));
    }
    return SetNumber(Json(static_cast<double>(value)));
  }
  bool number_float(number_float_t value, const string_t& /*text*/) {
    return SetNumber(Json(static_cast<double>(value)));
  }
  bool string(string_t& value) { return SetScalar(Json(std::move(value))); }
  bool binary(binary_t& /*value*/) {
    // Only the binary formats (CBOR, MessagePack, ...) produce these.
    return Fail(NextValueStart(), "binary value");
  }

  bool start_object(size_t /*elements*/) {
    return OpenContainer(Json::MakeObject());
  }
  bool start_array(size_t /*elements*/) {
    return OpenContainer(Json::MakeArray());
  }
  bool end_object() { return CloseContainer(); }
  bool end_array() { return CloseContainer(); }

  bool key(string_t& key) {
    OpenValue& object = open_.back();
    if (!options_.allow_duplicate_keys && IsDuplicate(&object, key)) {
      return Fail(NextValueStart(),
                  absl::StrCat("duplicate key ", QuotedKey(key)));
    }
    object.value->object().emplace_back(std::move(key), Json());
    MarkEnd();
    return true;
  }

  bool parse_error(size_t position, const std::string& last_token,
                   const nlohmann::detail::exception& error) {
    // `position` counts characters read, including one read of the end.
    const bool at_end = position > text_.size();
    absl::string_view what = error.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 4: ..."
    if (size_t p = what.find("] "); p != absl::string_view::npos) {
      what.remove_prefix(p + 2);
    }
    if (absl::StartsWith(what, "parse error at line ")) {
      if (size_t p = what.find(": "); p != absl::string_view::npos) {
        what.remove_prefix(p + 2);
      }
    }
    // "syntax error while parsing array - unexpected ','; expected ']'"
    if (absl::StartsWith(what, "syntax error ")) {
      if (size_t p = what.find(" - "); p != absl::string_view::npos) {
        what.remove_prefix(p + 3);
      }
    }
    // The lexer quotes the raw input it read: unbounded and maybe not UTF-8.
    if (size_t p = what.find("; last read: "); p != absl::string_view::npos) {
      what = what.substr(0, p);
    }
    if (root_complete_) {
      // Whatever the library made of it, the value had already ended.
      return Fail(SkipSpace(last_end_), "trailing characters after JSON value");
    }
    if (error.id == 406) {
      // "number overflow parsing '<the whole number>'": not worth quoting.
      return Fail(TokenStart(position, last_token),
                  "number out of the range of a double");
    }
    if (!absl::StartsWith(what, "unexpected ")) {
      // The lexer refused the character it read last.
      return Fail(at_end ? text_.size() : position - 1, what);
    }
    // The parser got a whole token it did not expect there.
    const size_t offset =
        at_end ? text_.size() : TokenStart(position, last_token);
    if (!at_end && text_[position - 1] == '\0') {
      // The lexer takes a NUL byte for the end of the input.
      return Fail(offset, "unexpected character 0x00");
    }
    return Fail(offset, what);
  }

  // After sax_parse succeeded: nlohmann stops at a NUL byte as if at the end.
  absl::StatusOr<Json> Finish() {
    const size_t read = *cursor_ - text_.data();
    if (read > 0 && text_[read - 1] == '\0') {
      status_ = Error(read - 1, "trailing characters after JSON value");
      return status_;
    }
    return std::move(root_);
  }

  const absl::Status& status() const { return status_; }

 private:
  struct OpenValue {
    Json* value;
    // Keys of a large object, for the duplicate check; small ones scan.
    std::unique_ptr<absl::flat_hash_set<std::string>> keys;
  };
  static constexpr size_t kKeysScannedLinearly = 16;

  absl::Status Error(size_t offset, absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid JSON at byte ", offset, ": ", what));
  }

  bool Fail(size_t offset, absl::string_view what) {
    status_ = Error(offset, what);
    return false;
  }

  static std::string QuotedKey(absl::string_view key) {
    std::string out;
    AppendJsonString(KeyForMessage(key), &out);
    if (key.size() > 64) out.append(" (truncated)");
    return out;
  }

  // Records where the token of the last event ended: how far the lexer has
  // read. Not for numbers, where the lexer has read a byte ahead unless the
  // input ended.
  void MarkEnd() {
    last_end_ = *cursor_ - text_.data();
    root_complete_ = open_.empty();
  }
  void MarkNumberEnd() {
    last_end_ = NumberEnd(NextValueStart());
    root_complete_ = open_.empty();
  }

  bool IsDigit(size_t i) const {
    return i < text_.size() && text_[i] >= '0' && text_[i] <= '9';
  }

  // The end of the number that the lexer accepted at `i`:
  // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  size_t NumberEnd(size_t i) const {
    if (i < text_.size() && text_[i] == '-') ++i;
    if (i < text_.size() && text_[i] == '0') {
      ++i;
    } else {
      while (IsDigit(i)) ++i;
    }
    if (i < text_.size() && text_[i] == '.') {
      ++i;
      while (IsDigit(i)) ++i;
    }
    if (i < text_.size() && (text_[i] == 'e' || text_[i] == 'E')) {
      ++i;
      if (i < text_.size() && (text_[i] == '+' || text_[i] == '-')) ++i;
      while (IsDigit(i)) ++i;
    }
    return i;
  }

  size_t SkipSpace(size_t i) const {
    while (i < text_.size() && IsJsonSpace(text_[i])) ++i;
    return i;
  }

  // Where the value (or key) of the current event starts: after the previous
  // event's token, whitespace and the one separator the parser has checked.
  size_t NextValueStart() const {
    size_t i = SkipSpace(last_end_);
    if (i < text_.size() && (text_[i] == ',' || text_[i] == ':')) ++i;
    return SkipSpace(i);
  }

  // The start of the complete token that ends at `end` (the lexer's count,
  // read-ahead excluded). nlohmann restarts its token text at numbers and
  // strings (which hold no raw control characters, so the text is raw), not
  // at literals or punctuation.
  size_t TokenStart(size_t end, const std::string& token) const {
    end = std::min(end, text_.size());
    if (end == 0) return 0;
    const char last = text_[end - 1];
    if (last == '"' || (last >= '0' && last <= '9')) {
      return token.size() <= end ? end - token.size() : 0;
    }
    if (last == 'e') {
      return end >= 5 && text_.substr(end - 5, 5) == "false" ? end - 5
                                                             : end - 4;
    }
    if (last == 'l') return end >= 4 ? end - 4 : 0;
    return end - 1;
  }

  // Too deep: the value would sit inside more than max_depth containers.
  bool TooDeep() const {
    return static_cast<int64_t>(open_.size()) > options_.max_depth;
  }

  // Where the next value goes: the root, the end of the open array, or the
  // member the last key added to the open object.
  Json* NextSlot() {
    if (open_.empty()) return &root_;
    Json* parent = open_.back().value;
    if (parent->is_array()) {
      parent->array().emplace_back();
      return &parent->array().back();
    }
    return &parent->object().back().second;
  }

  bool SetScalar(Json value) {
    if (TooDeep()) return FailTooDeep();
    *NextSlot() = std::move(value);
    MarkEnd();
    return true;
  }

  bool SetNumber(Json value) {
    if (TooDeep()) return FailTooDeep();
    *NextSlot() = std::move(value);
    MarkNumberEnd();
    return true;
  }

  bool OpenContainer(Json empty) {
    if (TooDeep()) return FailTooDeep();
    Json* slot = NextSlot();
    *slot = std::move(empty);
    // The slot stays put: only the innermost open container grows.
    open_.push_back(OpenValue{slot, nullptr});
    MarkEnd();
    return true;
  }

  bool CloseContainer() {
    open_.pop_back();
    MarkEnd();
    return true;
  }

  bool FailTooDeep() {
    return Fail(NextValueStart(),
                absl::StrCat("nesting deeper than ", options_.max_depth));
  }

  static bool IsDuplicate(OpenValue* object, const std::string& key) {
    const Json::Object& members = object->value->object();
    if (object->keys == nullptr) {
      if (members.size() < kKeysScannedLinearly) {
        for (const auto& member : members) {
          if (member.first == key) return true;
        }
        return false;
      }
      object->keys = std::make_unique<absl::flat_hash_set<std::string>>();
      object->keys->reserve(members.size() * 2);
      for (const auto& member : members) object->keys->insert(member.first);
    }
    return !object->keys->insert(key).second;
  }

  absl::string_view text_;
  const char* const* cursor_;
  const JsonParseOptions& options_;
  Json root_;
  std::vector<OpenValue> open_;
  size_t last_end_ = 0;
  bool root_complete_ = false;
  absl::Status status_;
};

}  // namespace

absl::StatusOr<Json> ParseJson(absl::string_view text,
                               const JsonParseOptions& options) {
  if (text.size() > options.max_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "JSON text is ", text.size(), " bytes, limit is ", options.max_size));
  }
  // nlohmann skips a UTF-8 byte order mark; RFC 8259 forbids sending one.
  if (absl::StartsWith(text, "\xEF\xBB\xBF")) {
    return absl::InvalidArgumentError(
        "invalid JSON at byte 0: unexpected character 0xef");
  }
  const char* cursor = text.data();
  const char* end = text.data() + text.size();
  JsonBuilder builder(text, &cursor, options);
  const bool ok = nlohmann::json::sax_parse(
      SharedCursorIterator(&cursor), SharedCursorIterator(&end), &builder,
      nlohmann::json::input_format_t::json, /*strict=*/true,
      /*ignore_comments=*/false);
  if (!ok) return builder.status();
  return builder.Finish();
}

}  // namespace weightd
